"""The simulated kernel: the seam's other implementation, with the simulated hypervisor behind it.

Rule 1: it accepts exactly what Linux accepts (the same device names, ioctl numbers and argument bytes) and
fails the way Linux fails (ENOENT for a missing node, EACCES for a non-root open, ENOTTY for an unknown
ioctl, EFAULT for an address nobody mapped). No layer above it is replaced or short-circuited.

Memory: every buffer it hands out gets a made-up but unique address, recorded in an address table; the
hypervisor reaches argument memory only by resolving addresses through that table, as Xen does through the
page tables. Descriptors are real (``eventfd``, or a socketpair for xenstore) so select/poll/asyncio work.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from ..errors import DeviceUnavailable, NotPrivileged
from ..hypercall.abi.privcmd import IOCTL_PRIVCMD_HYPERCALL, IOCTLS, PRIVCMD_HYPERCALL
from ._hypervisor import SimXen, XenErrno

__all__ = ["SimBuffer", "SimDevice", "SimKernel"]

log = logging.getLogger("xenpure.testing")

PAGE = 4096
_DEVICES = ("privcmd", "hypercall", "xenbus", "evtchn", "gntdev", "gntalloc", "xenbus_backend", "xsd_kva", "xsd_port")
#: Nodes that only /proc/xen has (xenfs); the others are found in /dev/xen first.
_PROC_ONLY = ("xsd_kva", "xsd_port")
_HYPERCALL = PRIVCMD_HYPERCALL.layout()
_IOCTL_NAMES = {i.request: i.name for i in IOCTLS.values()}
_M = TypeVar("_M")


def _driver(kernel: SimKernel, name: str) -> Any:
    """The simulated Linux driver behind device ``name`` (None: the device only hands out a descriptor)."""
    if name == "evtchn":
        from ._evtchn import SimEvtchnFile

        return SimEvtchnFile(kernel)
    if name in ("gntdev", "gntalloc"):
        from ._gnttab import SimGntallocFile, SimGntdevFile

        return SimGntdevFile(kernel) if name == "gntdev" else SimGntallocFile(kernel)
    if name == "privcmd":
        from ._memory import SimPrivcmdFile

        return SimPrivcmdFile(kernel)
    if name == "xenbus_backend":
        from ._xenstored import SimXenbusBackendFile

        return SimXenbusBackendFile(kernel)
    if name in _PROC_ONLY:
        from ._xenstored import SimXsdFile

        return SimXsdFile(kernel, name)
    return None


class SimBuffer:
    """Simulated hypercall-safe memory: a bytearray with an address in the kernel's table."""

    def __init__(self, kernel: SimKernel, address: int, size: int, source: str) -> None:
        self._kernel = kernel
        self._data: bytearray | None = bytearray(size)
        self._view: memoryview | None = memoryview(self._data)
        self.address = address
        self.source = source
        self.size = size

    @property
    def view(self) -> memoryview:
        if self._view is None:
            raise ValueError("mapping is closed")
        return self._view

    def close(self) -> None:
        if self._view is None:
            return
        self._kernel._unmap(self)
        self._view.release()
        self._view = None
        self._data = None

    def __len__(self) -> int:
        return self.size

    def __enter__(self) -> SimBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimDevice:
    """An open simulated device node with a real descriptor behind ``fileno()``."""

    def __init__(self, kernel: SimKernel, name: str, path: str, backend: Any = None) -> None:
        self._kernel = kernel
        self.name = name
        self.path = path
        self._backend = backend
        self._fd = backend.fileno() if backend is not None else os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._closed = False

    def fileno(self) -> int:
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        return self._fd

    def ioctl(self, request: int, arg: bytearray) -> int:
        self.fileno()
        log.debug("ioctl %s %s (%d bytes)", self.path, _IOCTL_NAMES.get(request, hex(request)), len(arg))
        if self.name == "privcmd" and request == IOCTL_PRIVCMD_HYPERCALL.request:
            return self._kernel._hypercall(arg)
        handler = getattr(self._backend, "ioctl", None)
        if handler is not None:  # the simulated driver of this device (evtchn, gntdev, gntalloc, privcmd)
            try:
                ret: int = handler(request, arg)
            except XenErrno as e:
                raise OSError(e.errno, os.strerror(e.errno)) from None
            return ret
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))

    def read(self, n: int) -> bytes:
        if self._backend is None:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        data: bytes = self._backend.read(n)
        return data

    def write(self, data: bytes) -> int:
        if self._backend is None:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        n: int = self._backend.write(data)
        return n

    def mmap(self, length: int, offset: int = 0, *, readonly: bool = False) -> Any:
        self.fileno()
        if self.name == "hypercall":
            return self._kernel._map(length, "/dev/xen/hypercall")
        handler = getattr(self._backend, "mmap", None)
        if handler is not None:
            return handler(length, offset, readonly)
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._backend is not None:
            self._backend.close()
        else:
            os.close(self._fd)
        self._kernel._closed(self)

    def __enter__(self) -> SimDevice:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SimKernel:
    """A kernel with a simulated Xen behind it.

    ``root=False`` makes device opens fail as for a non-root user; ``privileged=False`` makes the calling
    domain unprivileged (control hypercalls answer EPERM); ``devices`` limits which device nodes exist
    (leave out ``"hypercall"`` to exercise the locked-memory fallback path).
    """

    def __init__(
        self,
        xen: SimXen | None = None,
        *,
        root: bool = True,
        privileged: bool = True,
        devices: tuple[str, ...] = _DEVICES,
        dirs: tuple[str, ...] = ("/dev/xen", "/proc/xen"),
    ) -> None:
        self.xen = xen if xen is not None else SimXen()
        self.root = root
        self.privileged = privileged
        self.devices = devices
        self.dirs = dirs
        self._lock = threading.Lock()
        self._next = 0x7F00_0000_0000
        self._starts: list[int] = []
        self._maps: dict[int, Any] = {}  # SimBuffers and the device drivers' mappings
        self.open_devices: set[SimDevice] = set()

    # -- the seam ---------------------------------------------------------------------------------------
    def open(self, name: str) -> SimDevice:
        tried = [f"{d}/{name}" for d in self.dirs]
        if name not in self.devices:
            raise DeviceUnavailable(name, tried)
        path = next((p for p in tried if p.startswith("/proc/")), tried[0]) if name in _PROC_ONLY else tried[0]
        if not self.root:
            raise NotPrivileged(path)
        backend = self._xenstored().connect(0) if name == "xenbus" else _driver(self, name)
        dev = SimDevice(self, name, path, backend)
        with self._lock:
            self.open_devices.add(dev)
        return dev

    def connect_socket(self, path: str) -> SimDevice:
        if not self.root:
            raise NotPrivileged(path)
        dev = SimDevice(self, "xenstored", path, self._xenstored().connect(0))
        with self._lock:
            self.open_devices.add(dev)
        return dev

    @property
    def buffer_source(self) -> str:
        return "/dev/xen/hypercall" if "hypercall" in self.devices else "locked anonymous memory"

    def alloc_buffer(self, size: int) -> SimBuffer:
        length = max(PAGE, -(-size // PAGE) * PAGE)
        return self._map(length, self.buffer_source)

    def close(self) -> None:
        pass

    # -- what the simulated hypervisor uses ---------------------------------------------------------------
    def resolve(self, address: int, length: int) -> memoryview:
        with self._lock:
            i = bisect.bisect_right(self._starts, address) - 1
            if i >= 0:
                buf = self._maps[self._starts[i]]
                off = address - buf.address
                if off + length <= buf.size:
                    view: memoryview = buf.view[off : off + length]
                    return view
        raise XenErrno(errno.EFAULT, f"{length} bytes at {address:#x} are not mapped")

    def mapping_at(self, address: int) -> Any:
        """The buffer or mapping that starts exactly at ``address``, or None (what a driver looks a VMA up by)."""
        with self._lock:
            return self._maps.get(address)

    @property
    def live_mappings(self) -> int:
        """How many buffers and mappings are still mapped (leak checks)."""
        return len(self._maps)

    def _xenstored(self) -> Any:
        return self.xen.xenstored

    def _map(self, length: int, source: str) -> SimBuffer:
        return self._place(length, lambda addr: SimBuffer(self, addr, length, source))

    def _place(self, length: int, make: Callable[[int], _M]) -> _M:
        """Give ``make(address)``'s object (``.address``, ``.size``, ``.view``) an address in the table."""
        with self._lock:
            addr = self._next
            self._next += length + PAGE  # a guard page between mappings, as mmap would leave unmapped
            buf = make(addr)
            bisect.insort(self._starts, addr)
            self._maps[addr] = buf
            return buf

    def _unmap(self, buf: Any) -> None:
        with self._lock:
            self._maps.pop(buf.address, None)
            i = bisect.bisect_left(self._starts, buf.address)
            if i < len(self._starts) and self._starts[i] == buf.address:
                del self._starts[i]

    def _closed(self, dev: SimDevice) -> None:
        with self._lock:
            self.open_devices.discard(dev)

    def _hypercall(self, arg: bytearray) -> int:
        req = _HYPERCALL.parse(arg)
        try:
            return self.xen.hypercall(self, int(req.op), list(req.arg), privileged=self.privileged)
        except XenErrno as e:
            log.debug("hypercall %d -> errno %d (%s)", req.op, e.errno, e.args[1])
            raise OSError(e.errno, os.strerror(e.errno)) from None

    def __repr__(self) -> str:
        return f"<SimKernel Xen {self.xen.major}.{self.xen.minor} (simulated)>"
