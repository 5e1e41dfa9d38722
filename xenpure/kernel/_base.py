"""The shape of the kernel seam: what a kernel backend must offer, and nothing more.

Rule 1: these are Protocols; a backend is any object with these methods, and it is passed in (injected),
never selected by a global switch.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, runtime_checkable

__all__ = ["Device", "HypercallBuffer", "Kernel", "Mapping", "TimedReader", "read_within", "timed_reader"]


@runtime_checkable
class Mapping(Protocol):
    """Memory mapped from a device (or hypercall-safe memory): a view to fill and the address Xen sees."""

    @property
    def address(self) -> int:
        """The virtual address of the first byte, as the hypervisor and kernel dereference it."""
        ...

    @property
    def view(self) -> memoryview:
        """A writable view of the whole mapping."""
        ...

    def close(self) -> None:
        """Unmap. Idempotent. The view must not be used afterwards."""
        ...


@runtime_checkable
class HypercallBuffer(Mapping, Protocol):
    """Memory that Xen may read and write during a hypercall (it never faults or moves)."""

    @property
    def source(self) -> str:
        """Where the memory came from, e.g. ``/dev/xen/hypercall`` or ``locked anonymous memory``."""
        ...


class Device(Protocol):
    """An open Xen device node (privcmd, evtchn, gntdev, gntalloc, xenbus, hypercall)."""

    @property
    def path(self) -> str: ...

    def fileno(self) -> int:
        """A real file descriptor, pollable where the real device is."""
        ...

    def ioctl(self, request: int, arg: bytearray) -> int:
        """Issue ``request`` with ``arg`` as the in/out argument buffer; return the ioctl's result.

        Raises ``OSError`` with the errno the driver (or Xen behind it) answered.
        """
        ...

    def read(self, n: int) -> bytes: ...

    def write(self, data: bytes) -> int: ...

    def mmap(self, length: int, offset: int = 0, *, readonly: bool = False) -> Mapping:
        """Map ``length`` bytes of the device at ``offset``, shared; read-write unless ``readonly``.

        A read-only mapping's ``view`` is a read-only memoryview. Raises ``OSError`` with the driver's errno.
        """
        ...

    def close(self) -> None:
        """Close the descriptor. Idempotent."""
        ...

    def __enter__(self) -> Device: ...

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@runtime_checkable
class TimedReader(Protocol):
    """A device that can block in ``read`` with a deadline the kernel enforces (one system call per read).

    Optional: callers go through ``read_within``, which falls back to waiting on ``fileno()`` first.
    """

    def read_within(self, n: int, timeout: float | None) -> bytes | None:
        """Wait at most ``timeout`` seconds (``None``: no limit; ``0``: do not wait) for bytes, and read up to
        ``n`` of them; ``None`` if none came in time. ``b""`` is the end of the stream."""
        ...


def timed_reader(device: Device) -> Callable[[int, float | None], bytes | None]:
    """``device``'s ``read_within``, or the same contract built from ``select`` and ``read`` for a device
    that lacks it: wait at most ``timeout`` seconds (``None``: no limit) for bytes and read up to ``n``;
    ``None`` if nothing came in time, ``b""`` at the end of the stream.

    Look it up once per connection and keep it (checking a Protocol costs more than the read). The fallback
    also gives ``None`` when the device woke us for nothing (its read raises ``BlockingIOError``, as a
    xenstore ring's event channel does): the caller waits again with what is left of its deadline.
    """
    if isinstance(device, TimedReader):
        return device.read_within
    fileno, read = device.fileno, device.read

    def read_within(n: int, timeout: float | None) -> bytes | None:
        if not select.select((fileno(),), (), (), timeout)[0]:
            return None
        try:
            return read(n)
        except BlockingIOError:
            return None

    return read_within


def read_within(device: Device, n: int, timeout: float | None) -> bytes | None:
    """One ``timed_reader(device)(n, timeout)`` call."""
    return timed_reader(device)(n, timeout)


class Kernel(Protocol):
    """Everything xenpure needs from the OS."""

    def open(self, name: str) -> Device:
        """Open the Xen device ``name`` (``"privcmd"``, ``"evtchn"``, ...).

        Raises ``DeviceUnavailable`` naming every path tried, or ``NotPrivileged``.
        """
        ...

    def connect_socket(self, path: str) -> Device:
        """Connect to the Unix stream socket at ``path`` (xenstored's). ``ioctl``/``mmap`` are unsupported on it.

        Raises ``DeviceUnavailable`` if nothing listens there, ``NotPrivileged`` if we may not connect.
        """
        ...

    def alloc_buffer(self, size: int) -> HypercallBuffer:
        """Allocate at least ``size`` bytes (whole pages) of hypercall-safe memory."""
        ...

    def close(self) -> None:
        """Release what the kernel object itself holds open. Idempotent."""
        ...
