"""The Linux backend of the kernel seam: /dev/xen first, /proc/xen as the fallback, stdlib only.

Rule 1: every OS error surfaces either as the typed seam errors (``DeviceUnavailable``, ``NotPrivileged``)
when a device cannot be opened, or as a plain ``OSError`` with the driver's errno from ``ioctl``; the layer
above maps errnos to exceptions once, and nothing here swallows one.

Hypercall buffers: Xen dereferences the addresses we pass while the hypercall runs, so the memory must be
present and must not be shared copy-on-write with a forked child. The kernel's /dev/xen/hypercall hands out
exactly such memory when mmap'ed; without it (older kernels, or the device hidden) we use anonymous memory
that is ``mlock``'ed and marked ``MADV_DONTFORK``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import mmap
import os
import select
import socket
import struct
import threading
from collections.abc import Sequence
from types import TracebackType

from ..errors import DeviceUnavailable, NotPrivileged, XenError

__all__ = ["DEVICE_DIRS", "LinuxDevice", "LinuxKernel", "LinuxMapping", "LinuxSocketDevice"]

log = logging.getLogger("xenpure.kernel")

#: Where Xen device nodes are looked for, in order.
DEVICE_DIRS: tuple[str, ...] = ("/dev/xen", "/proc/xen")

PAGE_SIZE = mmap.PAGESIZE

_TIMEVAL = struct.Struct("@ll")  # struct timeval: tv_sec, tv_usec

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return _libc


class _PyBuffer(ctypes.Structure):
    # CPython's Py_buffer, as far as the address: enough to ask a read-only mmap where it lives.
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def _address_of(m: mmap.mmap) -> int:
    if m.closed:
        raise ValueError("mmap is closed")
    try:
        # The ctypes object pins the mmap's buffer export; drop it at once so the mmap can be closed later.
        obj = ctypes.c_char.from_buffer(m)
    except TypeError:  # a read-only mapping: ask the buffer protocol itself (PyBUF_SIMPLE), then release
        pb = _PyBuffer()
        ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(m), ctypes.byref(pb), 0)
        try:
            return int(pb.buf or 0)
        finally:
            ctypes.pythonapi.PyBuffer_Release(ctypes.byref(pb))
    addr = ctypes.addressof(obj)
    del obj
    return addr


class LinuxMapping:
    """An ``mmap`` with its address; closing releases the view and unmaps."""

    def __init__(self, m: mmap.mmap, source: str, locked: bool = False) -> None:
        self._mmap: mmap.mmap | None = m
        self._address = _address_of(m)
        self._view: memoryview | None = memoryview(m)
        self._size = len(m)
        self._locked = locked
        self.source = source

    @property
    def address(self) -> int:
        return self._address

    @property
    def view(self) -> memoryview:
        if self._view is None:
            raise ValueError("mapping is closed")
        return self._view

    def __len__(self) -> int:
        return self._size

    def close(self) -> None:
        if self._mmap is None:
            return
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._locked:
            _c().munlock(self._address, self._size)
        self._mmap.close()
        self._mmap = None

    def __enter__(self) -> LinuxMapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class LinuxDevice:
    """An open /dev/xen/* (or /proc/xen/*) node."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{self.path} is closed")
        return self._fd

    def ioctl(self, request: int, arg: bytearray) -> int:
        ret: int = fcntl.ioctl(self.fileno(), request, arg, True)
        return ret

    def read(self, n: int) -> bytes:
        return os.read(self.fileno(), n)

    def write(self, data: bytes) -> int:
        return os.write(self.fileno(), data)

    def mmap(self, length: int, offset: int = 0, *, readonly: bool = False) -> LinuxMapping:
        prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
        m = mmap.mmap(self.fileno(), length, mmap.MAP_SHARED, prot, offset=offset)
        try:
            return LinuxMapping(m, self.path)
        except BaseException:
            m.close()
            raise

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> LinuxDevice:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LinuxDevice {self.path} fd={self._fd}>"


class LinuxSocketDevice(LinuxDevice):
    """A connected Unix stream socket (xenstored's), read with a kernel-enforced deadline.

    ``read_within`` reads the blocking socket with ``SO_RCVTIMEO`` set: one system call per read, where
    waiting on the descriptor first would make two. In a PV dom0 every system call bounces through Xen, so
    a request/reply round trip costs what its system calls cost.

    Callers pass what is left of their deadline, a little less each time, so the option is not set to each
    value: it is left alone while it lies between 90% and 100% of the timeout asked for, and otherwise set
    to 95% of it. A read may then give up early (``None``, which the contract allows: the caller asks again
    with what is left), never late -- apart from the kernel rounding the option up to its clock tick.
    """

    def __init__(self, path: str, sock: socket.socket) -> None:
        super().__init__(path, sock.fileno())
        self._sock = sock
        self._rcvtimeo: float | None = None  # what SO_RCVTIMEO is set to (None: no limit, the default)

    def read_within(self, n: int, timeout: float | None) -> bytes | None:
        fd = self.fileno()
        if timeout is not None and timeout <= 0.001:
            return os.read(fd, n) if select.select((fd,), (), (), max(timeout, 0))[0] else None
        cur = self._rcvtimeo
        if timeout is None:
            if cur is not None:
                self._set_rcvtimeo(None)
        elif cur is None or not 0.9 * timeout <= cur <= timeout:
            self._set_rcvtimeo(0.95 * timeout)
        try:
            return os.read(fd, n)
        except BlockingIOError:  # SO_RCVTIMEO ran out
            return None

    def _set_rcvtimeo(self, timeout: float | None) -> None:
        # A zero timeval means "no limit" to the kernel, so a positive timeout is at least 1 us.
        usec = 0 if timeout is None else max(1, int(timeout * 1e6))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(*divmod(usec, 1_000_000)))
        self._rcvtimeo = timeout

    def close(self) -> None:
        if self._fd >= 0:
            self._fd = -1
            self._sock.close()


class LinuxKernel:
    """The real kernel. ``dirs`` overrides where devices are looked for (tests hide devices this way)."""

    def __init__(self, dirs: Sequence[str] = DEVICE_DIRS) -> None:
        self.dirs = tuple(dirs)
        self._hypercall_dev: LinuxDevice | None = None
        self._hypercall_checked = False
        self._lock = threading.Lock()

    def open(self, name: str) -> LinuxDevice:
        tried: list[str] = []
        for d in self.dirs:
            path = os.path.join(d, name)
            tried.append(path)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except PermissionError as e:
                raise NotPrivileged(path) from e
            except OSError as e:
                if e.errno in (errno.ENXIO, errno.ENODEV):
                    continue  # the node exists but its driver is not loaded
                raise
            log.debug("open %s -> fd %d", path, fd)
            return LinuxDevice(path, fd)
        raise DeviceUnavailable(name, tried)

    def connect_socket(self, path: str) -> LinuxSocketDevice:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise DeviceUnavailable("xenstored socket", [path]) from e
        except PermissionError as e:
            sock.close()
            raise NotPrivileged(path) from e
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)  # blocking, whatever socket.setdefaulttimeout() says: read_within relies on it
        log.debug("connect %s -> fd %d", path, sock.fileno())
        return LinuxSocketDevice(path, sock)

    @property
    def buffer_source(self) -> str:
        """Where hypercall buffers come from on this machine (opens /dev/xen/hypercall once to find out)."""
        return "/dev/xen/hypercall" if self._hypercall_device() is not None else "locked anonymous memory"

    def _hypercall_device(self) -> LinuxDevice | None:
        with self._lock:
            if not self._hypercall_checked:
                self._hypercall_checked = True
                try:
                    self._hypercall_dev = self.open("hypercall")
                except DeviceUnavailable:
                    log.debug("no hypercall device under %s: using locked anonymous memory", self.dirs)
            return self._hypercall_dev

    def alloc_buffer(self, size: int) -> LinuxMapping:
        length = max(PAGE_SIZE, -(-size // PAGE_SIZE) * PAGE_SIZE)
        dev = self._hypercall_device()
        if dev is not None:
            mapping = dev.mmap(length)
            mapping.source = dev.path
            return mapping
        m = mmap.mmap(-1, length, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, mmap.PROT_READ | mmap.PROT_WRITE)
        m.madvise(mmap.MADV_DONTFORK)
        mapping = LinuxMapping(m, "locked anonymous memory")
        if _c().mlock(mapping.address, length) != 0:
            err = ctypes.get_errno()
            mapping.close()
            raise XenError(
                f"cannot lock {length} bytes for a hypercall buffer: {os.strerror(err)}; raise RLIMIT_MEMLOCK "
                "(ulimit -l) or load the xen-privcmd driver that provides /dev/xen/hypercall"
            )
        mapping._locked = True
        return mapping

    def close(self) -> None:
        with self._lock:
            if self._hypercall_dev is not None:
                self._hypercall_dev.close()
                self._hypercall_dev = None
            self._hypercall_checked = False

    def __repr__(self) -> str:
        return f"<LinuxKernel dirs={self.dirs}>"
