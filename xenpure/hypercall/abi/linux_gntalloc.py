"""Declarations from Linux's uapi xen/gntalloc.h: the ioctls of /dev/xen/gntalloc (grant our own pages).

Rule 1: sharing is two steps, as the driver defines it: ``IOCTL_GNTALLOC_ALLOC_GREF`` allocates ``count``
pages, grants them to ``domid`` and returns their refs and an ``index`` (an mmap offset);
``mmap(fd, count pages, offset=index)`` gives us the pages. ``IOCTL_GNTALLOC_DEALLOC_GREF`` and the last
munmap end the grant. ``gref_ids[1]`` is variable length: the argument carries ``count`` of them.
"""

from __future__ import annotations

from enum import IntFlag

from .._layout import Array, Constants, Decl, F, constants_registry, u16, u32, u64
from ._ioctl import ioctl

__all__ = [
    "ALLOC_GREF",
    "DEALLOC_GREF",
    "IOCTL_GNTALLOC_ALLOC_GREF",
    "IOCTL_GNTALLOC_DEALLOC_GREF",
    "IOCTL_GNTALLOC_SET_UNMAP_NOTIFY",
    "UNMAP_NOTIFY",
    "GntallocFlag",
]

_H = "linux:xen/gntalloc.h"


class GntallocFlag(IntFlag):
    """``GNTALLOC_FLAG_*``: ``ioctl_gntalloc_alloc_gref.flags``."""

    WRITABLE = 1


ALLOC_GREF = Decl(
    "ioctl_gntalloc_alloc_gref",
    _H,
    (F("domid", u16), F("flags", u16), F("count", u32), F("index", u64), F("gref_ids", Array(u32, 1))),
    doc="Allocate count pages granted to domid (GNTALLOC_FLAG_*); OUT the mmap index and gref_ids[count].",
)
DEALLOC_GREF = Decl(
    "ioctl_gntalloc_dealloc_gref",
    _H,
    (F("index", u64), F("count", u32)),
    doc="End the grants of count pages from index (they go once nobody maps them).",
)
UNMAP_NOTIFY = Decl(
    "ioctl_gntalloc_unmap_notify",
    _H,
    (F("index", u64), F("action", u32), F("event_channel_port", u32)),
    doc="When our mapping of the page holding byte index goes: clear that byte and/or notify a port.",
)

IOCTL_GNTALLOC_ALLOC_GREF = ioctl("IOCTL_GNTALLOC_ALLOC_GREF", "G", 5, ALLOC_GREF, _H)
IOCTL_GNTALLOC_DEALLOC_GREF = ioctl("IOCTL_GNTALLOC_DEALLOC_GREF", "G", 6, DEALLOC_GREF, _H)
IOCTL_GNTALLOC_SET_UNMAP_NOTIFY = ioctl("IOCTL_GNTALLOC_SET_UNMAP_NOTIFY", "G", 7, UNMAP_NOTIFY, _H)

constants_registry().append(Constants(GntallocFlag, "GNTALLOC_FLAG_", _H))
