"""Declarations from Linux's uapi xen/privcmd.h: the ioctls of /dev/xen/privcmd.

Rule 1: an ioctl number is computed from its record's size exactly as the kernel's ``_IOC`` macro does,
so a layout error shows up as a wrong ioctl number (ENOTTY), never as silent corruption.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .._layout import Array, Constants, Decl, F, constants_registry, handle, u16, u32, u64

__all__ = [
    "IOCTLS",
    "PRIVCMD_DM_OP",
    "PRIVCMD_DM_OP_BUF",
    "PRIVCMD_HYPERCALL",
    "PRIVCMD_MMAPBATCH_V2",
    "PRIVCMD_MMAP_RESOURCE",
    "Ioctl",
    "MmapBatchError",
    "ioc",
]

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
    """An ioctl: its C macro name, number, and the C type of the argument passed by pointer."""

    name: str
    request: int
    argtype: str
    header: str


PRIVCMD_HYPERCALL = Decl(
    "privcmd_hypercall", "linux:xen/privcmd.h", (F("op", u64), F("arg", Array(u64, 5))),
    doc="One hypercall: number and five arguments; the ioctl returns the hypercall's result.",
)
PRIVCMD_MMAPBATCH_V2 = Decl(
    "privcmd_mmapbatch_v2",
    "linux:xen/privcmd.h",
    (F("num", u32), F("dom", u16), F("addr", u64), F("arr", handle), F("err", handle)),
    doc="Map num foreign frames of dom at addr; per-frame errors land in err[].",
)
PRIVCMD_DM_OP_BUF = Decl("privcmd_dm_op_buf", "linux:xen/privcmd.h", (F("uptr", handle), F("size", u64)))
PRIVCMD_DM_OP = Decl(
    "privcmd_dm_op", "linux:xen/privcmd.h", (F("dom", u16), F("num", u16), F("ubufs", handle)),
)
PRIVCMD_MMAP_RESOURCE = Decl(
    "privcmd_mmap_resource",
    "linux:xen/privcmd.h",
    (F("dom", u16), F("type", u32), F("id", u32), F("idx", u32), F("num", u64), F("addr", u64)),
    doc="Map num frames of a domain's resource (type/id, from idx) at addr; num=0 addr=0 queries the size.",
)


def _ioctl(name: str, nr: int, arg: Decl) -> Ioctl:
    return Ioctl(name, ioc(IOC_NONE, "P", nr, arg.layout().size), f"struct {arg.cname}", "linux:xen/privcmd.h")


IOCTL_PRIVCMD_HYPERCALL = _ioctl("IOCTL_PRIVCMD_HYPERCALL", 0, PRIVCMD_HYPERCALL)
IOCTL_PRIVCMD_MMAPBATCH_V2 = _ioctl("IOCTL_PRIVCMD_MMAPBATCH_V2", 4, PRIVCMD_MMAPBATCH_V2)
IOCTL_PRIVCMD_DM_OP = _ioctl("IOCTL_PRIVCMD_DM_OP", 5, PRIVCMD_DM_OP)
IOCTL_PRIVCMD_RESTRICT = Ioctl("IOCTL_PRIVCMD_RESTRICT", ioc(IOC_NONE, "P", 6, 2), "domid_t", "linux:xen/privcmd.h")
IOCTL_PRIVCMD_MMAP_RESOURCE = _ioctl("IOCTL_PRIVCMD_MMAP_RESOURCE", 7, PRIVCMD_MMAP_RESOURCE)

#: Every declared ioctl, by C macro name (other device modules append theirs).
IOCTLS: dict[str, Ioctl] = {
    i.name: i
    for i in (
        IOCTL_PRIVCMD_HYPERCALL,
        IOCTL_PRIVCMD_MMAPBATCH_V2,
        IOCTL_PRIVCMD_DM_OP,
        IOCTL_PRIVCMD_RESTRICT,
        IOCTL_PRIVCMD_MMAP_RESOURCE,
    )
}


class MmapBatchError(IntEnum):
    """``PRIVCMD_MMAPBATCH_*_ERROR``: markers the v1 batch ORs into failed frames."""

    MFN_ERROR = 0xF0000000
    PAGED_ERROR = 0x80000000


constants_registry().append(Constants(MmapBatchError, "PRIVCMD_MMAPBATCH_", "linux:xen/privcmd.h"))
