"""Linux ioctl numbers, computed the way the kernel's ``_IOC`` macro computes them, and one registry of
every ioctl xenpure declares (privcmd, evtchn, gntdev, gntalloc, xenbus_backend).

Rule 1: an ioctl number is computed from its argument record's declared size, never written as a literal,
so a layout error shows up as a wrong ioctl number (ENOTTY), never as silent corruption; and every
``Ioctl`` is registered here once, which is what the catalogue, the specs, the conformance tier and the
simulated kernel read.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._layout import Decl

__all__ = ["IOCTLS", "IOC_NONE", "IOC_READ", "IOC_WRITE", "Ioctl", "ioc", "ioctl", "register"]

# asm-generic/ioctl.h, which x86 uses.
_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30
IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2


def ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """The kernel's ``_IOC(dir, type, nr, size)``."""
    if size >= 1 << 14:
        raise ValueError(f"ioctl argument size {size} does not fit in 14 bits")
    return (direction << _IOC_DIRSHIFT) | (size << _IOC_SIZESHIFT) | (ord(kind) << _IOC_TYPESHIFT) | nr


@dataclass(frozen=True)
class Ioctl:
    """An ioctl: its C macro name, number, the C type of the argument passed by pointer, and its header."""

    name: str
    request: int
    argtype: str
    header: str


#: Every declared ioctl, by C macro name. Two devices may share a number (gntdev's and gntalloc's
#: SET_UNMAP_NOTIFY are both _IOC(0, 'G', 7, 16)): the device decides, so entries are keyed by name.
IOCTLS: dict[str, Ioctl] = {}


def register(*ioctls: Ioctl) -> None:
    """Add ``ioctls`` to ``IOCTLS``; a name registered twice is a programming error."""
    for i in ioctls:
        if i.name in IOCTLS:
            raise ValueError(f"ioctl {i.name} declared twice")
        IOCTLS[i.name] = i


def ioctl(
    name: str, kind: str, nr: int, arg: Decl | None, header: str, *, argtype: str | None = None, size: int = 0
) -> Ioctl:
    """Declare and register ``_IOC(_IOC_NONE, kind, nr, sizeof(struct arg))``.

    Without ``arg``: ``argtype`` names the argument's C type (``domid_t``) and ``size`` is its size (0 for
    an ioctl that takes no argument).
    """
    if arg is not None:
        size = arg.layout().size
    if argtype is None:
        argtype = f"struct {arg.cname}" if arg is not None else "void"
    i = Ioctl(name, ioc(IOC_NONE, kind, nr, size), argtype, header)
    register(i)
    return i
