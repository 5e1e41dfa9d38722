"""/dev/xen/gntalloc: share pages of this process with another domain (libxengntshr's equivalent).

Rule 1: a share is acquired in two steps undone in reverse, whatever interrupts them:
``IOCTL_GNTALLOC_ALLOC_GREF`` allocates the pages and writes the grant entries (this kernel's grant
table), ``mmap`` gives them to us; ``close`` munmaps (firing the unmap notification, if one was set) and
then ends the grants with ``IOCTL_GNTALLOC_DEALLOC_GREF``. A grantee that still maps a page keeps it until
it unmaps; the driver ends that grant then.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from types import TracebackType

from ..errors import HypercallError, XenError
from ..hypercall._device import device_ioctl
from ..hypercall.abi.linux_gntalloc import (
    ALLOC_GREF,
    DEALLOC_GREF,
    IOCTL_GNTALLOC_ALLOC_GREF,
    IOCTL_GNTALLOC_DEALLOC_GREF,
    IOCTL_GNTALLOC_SET_UNMAP_NOTIFY,
    UNMAP_NOTIFY,
    GntallocFlag,
)
from ..kernel import Device, Kernel, Mapping
from ._gntdev import PAGE, _MappedPages

__all__ = ["GrantAllocator", "GrantShare"]


class GrantShare(_MappedPages):
    """Pages of ours granted to ``domid``: ``refs`` to hand to the peer, ``view`` to fill. ``close()`` (or
    ``with``) munmaps them (the notification fires) and then ends the grants (xengntshr_unshare)."""

    _WHAT = "grant share"
    _NOTIFY_IOCTL = IOCTL_GNTALLOC_SET_UNMAP_NOTIFY
    _NOTIFY_RECORD = UNMAP_NOTIFY

    def __init__(self, alloc: GrantAllocator, domid: int, refs: Sequence[int], index: int, mapping: Mapping,
                 writable: bool) -> None:
        super().__init__(index, len(refs), mapping)
        self.allocator = alloc
        self.domid = domid
        self.refs = tuple(refs)
        self.writable = writable

    def _device(self) -> Device:
        return self.allocator.device

    def _release(self) -> None:
        self.allocator._dealloc(self.index, len(self.refs))

    def __repr__(self) -> str:
        state = "closed" if self._mapping is None else f"refs {list(self.refs)}"
        return f"<GrantShare to domain {self.domid} {state}>"


class GrantAllocator:
    """An open /dev/xen/gntalloc: xengntshr_handle's equivalent. Thread-safe."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, kernel: Kernel) -> GrantAllocator:
        """Open /dev/xen/gntalloc through ``kernel`` (``host.kernel``)."""
        return cls(kernel.open("gntalloc"))

    def fileno(self) -> int:
        return self.device.fileno()

    def close(self) -> None:
        """Close the device. Idempotent."""
        if not self._closed:
            self._closed = True
            self.device.close()

    def __enter__(self) -> GrantAllocator:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def share_pages(self, domid: int, count: int = 1, *, writable: bool = True,
                    notify_offset: int | None = None, notify_port: int | None = None) -> GrantShare:
        """Allocate ``count`` zeroed pages granted to ``domid`` (``IOCTL_GNTALLOC_ALLOC_GREF`` then ``mmap``;
        the kernel writes the grant entries: GTF_permit_access, GTF_readonly unless ``writable``). With
        ``notify_offset``/``notify_port`` the unmap notification is set before returning
        (xengntshr_share_page_notify).

        Raises ``InvalidArgument``, ``OutOfMemory`` (the driver's limit on shared pages).
        """
        if count <= 0:
            raise ValueError(f"count {count}")
        lay = ALLOC_GREF.layout()
        flags = GntallocFlag.WRITABLE if writable else GntallocFlag(0)
        arg = bytearray(lay.build(domid=domid, flags=int(flags), count=count))[:16] + bytes(4 * count)
        arg += bytes(max(0, lay.size - len(arg)))
        device_ioctl(self.device, IOCTL_GNTALLOC_ALLOC_GREF, arg)
        index = int(lay.parse(arg).index)
        refs = list(struct.unpack_from(f"<{count}I", arg, 16))
        try:
            try:
                mapping = self.device.mmap(count * PAGE, index)
            except OSError as e:
                if e.errno is None or isinstance(e, XenError):
                    raise
                raise HypercallError.from_errno(e.errno, "mmap /dev/xen/gntalloc") from None
        except BaseException:
            self._dealloc(index, count)
            raise
        share = GrantShare(self, domid, refs, index, mapping, writable)
        if notify_offset is not None or notify_port is not None:
            try:
                share.notify_on_unmap(notify_offset, notify_port)
            except BaseException:
                share.close()
                raise
        return share

    def _dealloc(self, index: int, count: int) -> None:
        if self._closed:
            return
        arg = DEALLOC_GREF.layout().build(index=index, count=count)
        device_ioctl(self.device, IOCTL_GNTALLOC_DEALLOC_GREF, bytearray(arg))
