"""/dev/xen/gntdev: map other domains' grants into this process, and grant copy.

Rule 1: a mapping is acquired in two steps that are undone in reverse, whatever interrupts them:
``IOCTL_GNTDEV_MAP_GRANT_REF`` reserves an mmap offset, ``mmap`` performs the grant map (Xen's
GNTTABOP_map_grant_ref, from the driver); ``close`` munmaps (the grant unmap, and the unmap notification if
one was set) and then releases the offset with ``IOCTL_GNTDEV_UNMAP_GRANT_REF``. If any step fails the
steps done are undone before the exception leaves, so nothing leaks.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from ..errors import HypercallError, NotSupported, ProtocolError, XenError
from ..hypercall._device import device_ioctl, flat_codec, member_codec
from ..hypercall._layout import check_domid
from ..hypercall.abi.grant_table import CopyFlag, GntSt
from ..hypercall.abi.linux_gntdev import (
    GRANT_COPY,
    GRANT_COPY_SEGMENT,
    GRANT_REF,
    IOCTL_GNTDEV_GRANT_COPY,
    IOCTL_GNTDEV_MAP_GRANT_REF,
    IOCTL_GNTDEV_SET_MAX_GRANTS,
    IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
    IOCTL_GNTDEV_UNMAP_GRANT_REF,
    MAP_GRANT_REF,
    SET_MAX_GRANTS,
    UNMAP_GRANT_REF,
    UNMAP_NOTIFY,
    UnmapNotify,
)
from ..kernel import Device, Kernel, Mapping

__all__ = ["CopyResult", "GrantCopyError", "GrantDevice", "GrantMapping", "GrantRef", "unmap_notify_args"]

PAGE = 4096


@dataclass(frozen=True)
class GrantRef:
    """A grant of another domain: ``domid``'s entry ``ref``; ``offset`` is a byte offset into the granted
    page (for grant copy)."""

    domid: int
    ref: int
    offset: int = 0


@dataclass(frozen=True)
class CopyResult:
    """One grant copy segment's outcome: Xen's GNTST_* status and, for a copy from a grant, the bytes."""

    status: GntSt
    data: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status == GntSt.okay


class GrantCopyError(XenError):
    """Xen refused a grant copy segment (a GNTST_* status other than okay): ``status`` says why."""

    def __init__(self, status: GntSt, what: str) -> None:
        self.status = status
        super().__init__(f"grant copy {what} failed: GNTST_{status.name} ({int(status)})")


def unmap_notify_args(offset: int | None, port: int | None) -> tuple[UnmapNotify, int, int]:
    """(action, byte offset, port) for an unmap notification: clear the byte at ``offset`` and/or notify
    event channel ``port``."""
    action = UnmapNotify(0)
    if offset is not None:
        if not 0 <= offset < PAGE * 0x100000:
            raise ValueError(f"notify offset {offset}")
        action |= UnmapNotify.CLEAR_BYTE
    if port is not None:
        action |= UnmapNotify.SEND_EVENT
    if not action:
        raise ValueError("an unmap notification needs an offset to clear, a port to notify, or both")
    return action, offset or 0, port or 0


class _MappedPages:
    """Pages a grant driver mapped at an mmap offset (``index``) of its device: what a gntdev mapping and a
    gntalloc share have in common. A subclass names its driver's unmap-notify ioctl and record, and says how
    to release the offset once the pages are unmapped."""

    _WHAT = "grant pages"
    _NOTIFY_IOCTL: Any = IOCTL_GNTDEV_SET_UNMAP_NOTIFY
    _NOTIFY_RECORD: Any = UNMAP_NOTIFY

    def __init__(self, index: int, pages: int, mapping: Mapping) -> None:
        self.index = index
        self._pages = pages
        self._mapping: Mapping | None = mapping

    def _live(self) -> Mapping:
        if self._mapping is None:
            raise ValueError(f"{self._WHAT} is closed")
        return self._mapping

    @property
    def view(self) -> memoryview:
        return self._live().view

    @property
    def closed(self) -> bool:
        return self._mapping is None

    def _device(self) -> Device:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def notify_on_unmap(self, offset: int | None = None, port: int | None = None) -> None:
        """When these pages are unmapped (close, or this process dying), have the driver clear the byte at
        ``offset`` and/or notify event channel ``port`` (``IOCTL_GNTDEV_SET_UNMAP_NOTIFY`` or
        ``IOCTL_GNTALLOC_SET_UNMAP_NOTIFY``): how the peer learns we are gone. Raises ``InvalidArgument`` for
        a port not bound in dom0."""
        self._live()
        action, off, p = unmap_notify_args(offset, port)
        if offset is not None and offset >= self._pages * PAGE:
            raise ValueError(f"offset {offset} is outside the {self._pages} pages of this {self._WHAT}")
        arg = self._NOTIFY_RECORD.layout().build(index=self.index + off, action=int(action), event_channel_port=p)
        device_ioctl(self._device(), self._NOTIFY_IOCTL, bytearray(arg))

    def close(self) -> None:
        """munmap (Xen unmaps the grants; a notification fires), then release the mmap offset. Idempotent."""
        mapping, self._mapping = self._mapping, None
        if mapping is None:
            return
        try:
            mapping.close()
        finally:
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class GrantMapping(_MappedPages):
    """Grants mapped into this process. ``view`` is the memoryview of the pages (read-only for a read-only
    mapping). ``close()`` (or ``with``) unmaps them; the view must not be used afterwards."""

    _WHAT = "grant mapping"

    def __init__(self, device: GrantDevice, grants: Sequence[GrantRef], index: int, mapping: Mapping,
                 readonly: bool) -> None:
        super().__init__(index, len(grants), mapping)
        self.device = device
        self.grants = tuple(grants)
        self.readonly = readonly

    @property
    def address(self) -> int:
        """Where the pages are mapped in this process."""
        return self._live().address

    def _device(self) -> Device:
        return self.device.device

    def _release(self) -> None:
        self.device._release(self.index, len(self.grants))

    def __repr__(self) -> str:
        state = "closed" if self._mapping is None else f"{len(self.grants)} page(s)"
        return f"<GrantMapping {state} of {[(g.domid, g.ref) for g in self.grants]}>"


class GrantDevice:
    """An open /dev/xen/gntdev: xengnttab_handle's equivalent. ``close()`` closes the device (the driver
    then unmaps whatever is still mapped). Thread-safe."""

    def __init__(self, device: Device, kernel: Kernel | None = None) -> None:
        self.device = device
        self.kernel = kernel
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, kernel: Kernel) -> GrantDevice:
        """Open /dev/xen/gntdev through ``kernel`` (``host.kernel``)."""
        return cls(kernel.open("gntdev"), kernel)

    def fileno(self) -> int:
        return self.device.fileno()

    def close(self) -> None:
        """Close the device. Idempotent."""
        if not self._closed:
            self._closed = True
            self.device.close()

    def __enter__(self) -> GrantDevice:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- mapping -----------------------------------------------------------------------------------------------
    def map_grant_ref(self, domid: int, ref: int, *, readonly: bool = False) -> GrantMapping:
        """Map one grant of ``domid`` (xengnttab_map_grant_ref). See ``map_grant_refs``."""
        return self.map_grant_refs([GrantRef(domid, ref)], readonly=readonly)

    def map_domain_grant_refs(self, domid: int, refs: Sequence[int], *, readonly: bool = False) -> GrantMapping:
        """Map grants ``refs`` of one domain, contiguously (xengnttab_map_domain_grant_refs)."""
        return self.map_grant_refs([GrantRef(domid, r) for r in refs], readonly=readonly)

    def map_grant_refs(self, grants: Sequence[GrantRef | tuple[int, int]], *, readonly: bool = False,
                       notify_offset: int | None = None, notify_port: int | None = None) -> GrantMapping:
        """Map ``grants`` (each a ``GrantRef`` or ``(domid, ref)``) as one contiguous range of pages
        (``IOCTL_GNTDEV_MAP_GRANT_REF`` then ``mmap``: GNTTABOP_map_grant_ref underneath); read-only if
        ``readonly`` (required for a grant given read-only). With ``notify_offset``/``notify_port`` the
        unmap notification is set before the mapping is returned (xengnttab_map_grant_ref_notify).

        Raises ``InvalidArgument`` (the driver's EINVAL) when Xen refuses a grant: wrong grantee, bad ref,
        a read-only grant mapped writable; ``OutOfMemory`` when the driver's limit is reached.
        """
        gs = [g if isinstance(g, GrantRef) else GrantRef(*g) for g in grants]
        if not gs:
            raise ValueError("no grants to map")
        # ioctl_gntdev_map_grant_ref with refs[len(gs)]: the header, then one ioctl_gntdev_grant_ref each
        lay = MAP_GRANT_REF.layout()
        ref_codec = flat_codec(GRANT_REF)
        refs_off = lay.offsets["refs"]
        arg = bytearray(max(lay.size, refs_off + ref_codec.size * len(gs)))
        count, count_off = member_codec(MAP_GRANT_REF, "count")
        count.pack_into(arg, count_off, len(gs))
        for i, g in enumerate(gs):
            check_domid(GRANT_REF.cname, "domid", g.domid)  # uint32_t here; the driver narrows it to domid_t
            ref_codec.pack_into(arg, refs_off + i * ref_codec.size, g.domid, g.ref)
        device_ioctl(self.device, IOCTL_GNTDEV_MAP_GRANT_REF, arg)
        index_codec, index_off = member_codec(MAP_GRANT_REF, "index")
        (index,) = index_codec.unpack_from(arg, index_off)
        try:
            mapping = self._mmap(len(gs) * PAGE, index, readonly)
        except BaseException:
            self._release(index, len(gs))
            raise
        m = GrantMapping(self, gs, index, mapping, readonly)
        if notify_offset is not None or notify_port is not None:
            try:
                m.notify_on_unmap(notify_offset, notify_port)
            except BaseException:
                m.close()
                raise
        return m

    def _mmap(self, length: int, index: int, readonly: bool) -> Mapping:
        try:
            return self.device.mmap(length, index, readonly=readonly)
        except OSError as e:
            if e.errno is None or isinstance(e, XenError):
                raise
            raise HypercallError.from_errno(e.errno, "mmap /dev/xen/gntdev", None, "Xen refused a grant map") from None

    def _release(self, index: int, count: int) -> None:
        if self._closed:
            return  # closing the device released everything
        arg = bytearray(flat_codec(UNMAP_GRANT_REF).pack(index, count, 0))
        device_ioctl(self.device, IOCTL_GNTDEV_UNMAP_GRANT_REF, arg)

    def set_max_grants(self, count: int) -> bool:
        """Ask the driver to limit this handle to ``count`` mapped grants (xengnttab_set_max_grants).

        Linux removed the limit (the ioctl answers ENOTTY): then there is no limit to set, and this returns
        False; True when a driver accepted it. Other errors raise.
        """
        arg = bytearray(SET_MAX_GRANTS.layout().build(count=count))
        try:
            device_ioctl(self.device, IOCTL_GNTDEV_SET_MAX_GRANTS, arg)
        except NotSupported:
            return False
        return True

    # -- grant copy ------------------------------------------------------------------------------------------------
    def grant_copy(self, segments: Sequence[tuple[GrantRef, int] | tuple[bytes, GrantRef]]) -> list[CopyResult]:
        """Have Xen copy between grants and this process (``IOCTL_GNTDEV_GRANT_COPY``, GNTTABOP_copy).

        Each segment is ``(GrantRef, length)`` to read ``length`` bytes from a grant (at its ``offset``), or
        ``(data, GrantRef)`` to write ``data`` into one. A segment may not cross its granted page. Returns one
        ``CopyResult`` per segment with Xen's status: a refused segment does not fail the others.
        Raises ``InvalidArgument`` for a malformed segment (the whole call).
        """
        if self.kernel is None:
            raise ValueError("grant copy needs the kernel (open the device with GrantDevice.open)")
        slay = GRANT_COPY_SEGMENT.layout()
        plan: list[tuple[GrantRef, int, bytes | None]] = []  # (grant, length, data to write or None: read)
        for s in segments:
            first, second = s
            if isinstance(first, GrantRef) and isinstance(second, int):
                plan.append((first, second, None))
            elif isinstance(second, GrantRef) and isinstance(first, (bytes, bytearray, memoryview)):
                plan.append((second, len(first), bytes(first)))
            else:
                raise TypeError(f"a grant copy segment is (GrantRef, length) or (data, GrantRef), not {s!r}")
            if not 0 < plan[-1][1] <= PAGE:
                raise ValueError(f"a grant copy segment is 1..{PAGE} bytes, not {plan[-1][1]}")
        data_off = len(plan) * slay.size
        buf = self.kernel.alloc_buffer(max(data_off + sum(n for _, n, _ in plan), 1))
        try:
            pos = data_off
            for i, (g, n, data) in enumerate(plan):
                local = {"virt": buf.address + pos}
                foreign = {"foreign": {"ref": g.ref, "offset": g.offset, "domid": g.domid}}
                if data is None:
                    fields = {"source": foreign, "dest": local, "flags": int(CopyFlag.source_gref)}
                else:
                    buf.view[pos : pos + n] = data
                    fields = {"source": local, "dest": foreign, "flags": int(CopyFlag.dest_gref)}
                buf.view[i * slay.size : (i + 1) * slay.size] = slay.build(fields, len=n)
                pos += n
            arg = bytearray(GRANT_COPY.layout().build(count=len(plan), segments=buf.address))
            device_ioctl(self.device, IOCTL_GNTDEV_GRANT_COPY, arg)
            out = []
            pos = data_off
            st_off = slay.offsets["status"]
            for i, (_, n, data) in enumerate(plan):
                raw = bytes(buf.view[i * slay.size + st_off : i * slay.size + st_off + 2])
                st = int.from_bytes(raw, "little", signed=True)
                try:
                    status = GntSt(st)
                except ValueError:
                    raise ProtocolError(f"grant copy segment {i}: unknown status {st}") from None
                got = bytes(buf.view[pos : pos + n]) if data is None and status == GntSt.okay else None
                out.append(CopyResult(status, got))
                pos += n
            return out
        finally:
            buf.close()

    def copy_from(self, grant: GrantRef, length: int) -> bytes:
        """``length`` bytes of a grant at its offset, by grant copy. Raises ``GrantCopyError``."""
        (r,) = self.grant_copy([(grant, length)])
        if r.data is None:
            raise GrantCopyError(r.status, f"from domain {grant.domid} ref {grant.ref}")
        return r.data

    def copy_to(self, grant: GrantRef, data: bytes) -> None:
        """Write ``data`` into a grant at its offset, by grant copy. Raises ``GrantCopyError``."""
        (r,) = self.grant_copy([(data, grant)])
        if not r.ok:
            raise GrantCopyError(r.status, f"to domain {grant.domid} ref {grant.ref}")
