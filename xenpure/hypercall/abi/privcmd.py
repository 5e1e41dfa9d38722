"""Declarations from Linux's uapi xen/privcmd.h: the ioctls of /dev/xen/privcmd.

Rule 1: an ioctl number is computed from its record's size exactly as the kernel's ``_IOC`` macro does,
so a layout error shows up as a wrong ioctl number (ENOTTY), never as silent corruption. ``Ioctl``,
``ioc`` and the ``IOCTLS`` registry live in ``abi._ioctl`` (shared by every device) and are re-exported.
"""

from __future__ import annotations

from enum import IntEnum

from .._layout import Array, Constants, Decl, F, constants_registry, handle, u16, u32, u64
from ._ioctl import IOCTLS, Ioctl, ioc, ioctl

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


_H = "linux:xen/privcmd.h"
IOCTL_PRIVCMD_HYPERCALL = ioctl("IOCTL_PRIVCMD_HYPERCALL", "P", 0, PRIVCMD_HYPERCALL, _H)
IOCTL_PRIVCMD_MMAPBATCH_V2 = ioctl("IOCTL_PRIVCMD_MMAPBATCH_V2", "P", 4, PRIVCMD_MMAPBATCH_V2, _H)
IOCTL_PRIVCMD_DM_OP = ioctl("IOCTL_PRIVCMD_DM_OP", "P", 5, PRIVCMD_DM_OP, _H)
IOCTL_PRIVCMD_RESTRICT = ioctl("IOCTL_PRIVCMD_RESTRICT", "P", 6, None, _H, argtype="domid_t", size=2)
IOCTL_PRIVCMD_MMAP_RESOURCE = ioctl("IOCTL_PRIVCMD_MMAP_RESOURCE", "P", 7, PRIVCMD_MMAP_RESOURCE, _H)


class MmapBatchError(IntEnum):
    """``PRIVCMD_MMAPBATCH_*_ERROR``: markers the v1 batch ORs into failed frames."""

    MFN_ERROR = 0xF0000000
    PAGED_ERROR = 0x80000000


constants_registry().append(Constants(MmapBatchError, "PRIVCMD_MMAPBATCH_", "linux:xen/privcmd.h"))
