"""Declarations from Linux's uapi xen/gntdev.h: the ioctls of /dev/xen/gntdev (map other domains' grants).

Rule 1: mapping is two steps, as the driver defines it: ``IOCTL_GNTDEV_MAP_GRANT_REF`` reserves an
``index`` (an mmap offset) for ``count`` grants, and ``mmap(fd, count pages, offset=index)`` performs the
grant map; ``munmap`` undoes the map and ``IOCTL_GNTDEV_UNMAP_GRANT_REF`` releases the index. Records that
end in a one-element array (``refs[1]``) are variable length: the ioctl number uses the declared size, the
argument carries ``count`` elements.
"""

from __future__ import annotations

from enum import IntFlag

from .._layout import Array, Constants, Decl, F, Union, constants_registry, handle, i16, u16, u32, u64
from ._ioctl import ioctl

__all__ = [
    "DMABUF_EXP_FROM_REFS",
    "DMABUF_EXP_WAIT_RELEASED",
    "DMABUF_IMP_RELEASE",
    "DMABUF_IMP_TO_REFS",
    "GET_OFFSET_FOR_VADDR",
    "GRANT_COPY",
    "GRANT_COPY_SEGMENT",
    "GRANT_REF",
    "IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS",
    "IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED",
    "IOCTL_GNTDEV_DMABUF_IMP_RELEASE",
    "IOCTL_GNTDEV_DMABUF_IMP_TO_REFS",
    "IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR",
    "IOCTL_GNTDEV_GRANT_COPY",
    "IOCTL_GNTDEV_MAP_GRANT_REF",
    "IOCTL_GNTDEV_SET_MAX_GRANTS",
    "IOCTL_GNTDEV_SET_UNMAP_NOTIFY",
    "IOCTL_GNTDEV_UNMAP_GRANT_REF",
    "MAP_GRANT_REF",
    "SET_MAX_GRANTS",
    "UNMAP_GRANT_REF",
    "UNMAP_NOTIFY",
    "DmaFlag",
    "UnmapNotify",
]

_H = "linux:xen/gntdev.h"


class UnmapNotify(IntFlag):
    """``UNMAP_NOTIFY_*`` (gntdev.h and gntalloc.h alike): what the driver does when a page is unmapped."""

    CLEAR_BYTE = 0x1
    SEND_EVENT = 0x2


class DmaFlag(IntFlag):
    """``GNTDEV_DMA_FLAG_*``: how a dma-buf exported from grants is mapped."""

    WC = 1 << 0
    COHERENT = 1 << 1


GRANT_REF = Decl(
    "ioctl_gntdev_grant_ref", _H, (F("domid", u32), F("ref", u32)), doc="One grant to map: domain and ref."
)
MAP_GRANT_REF = Decl(
    "ioctl_gntdev_map_grant_ref",
    _H,
    (F("count", u32), F("pad", u32), F("index", u64), F("refs", Array(GRANT_REF, 1))),
    doc="Reserve an mmap offset (OUT index) for count grants refs[count].",
)
UNMAP_GRANT_REF = Decl(
    "ioctl_gntdev_unmap_grant_ref",
    _H,
    (F("index", u64), F("count", u32), F("pad", u32)),
    doc="Release the offset a MAP_GRANT_REF returned (after munmap).",
)
GET_OFFSET_FOR_VADDR = Decl(
    "ioctl_gntdev_get_offset_for_vaddr",
    _H,
    (F("vaddr", u64), F("offset", u64), F("count", u32), F("pad", u32)),
    doc="The mmap offset and page count of the grant mapping that starts at vaddr.",
)
SET_MAX_GRANTS = Decl(
    "ioctl_gntdev_set_max_grants",
    _H,
    (F("count", u32),),
    doc="Limit the grants this file may map (current kernels do not implement it: ENOTTY).",
)
UNMAP_NOTIFY = Decl(
    "ioctl_gntdev_unmap_notify",
    _H,
    (F("index", u64), F("action", u32), F("event_channel_port", u32)),
    doc="On unmap of the page holding byte index: clear that byte and/or notify event_channel_port.",
)
_COPY_FOREIGN = Decl(
    "gntdev_grant_copy_segment_foreign",
    _H,
    (F("ref", u32), F("offset", u16), F("domid", u16)),
    doc="The untagged struct of gntdev_grant_copy_segment.{source,dest}.foreign.",
    register=False,
)
_COPY_END = Union((F("virt", handle), F("foreign", _COPY_FOREIGN)))
GRANT_COPY_SEGMENT = Decl(
    "gntdev_grant_copy_segment",
    _H,
    (F("source", _COPY_END), F("dest", _COPY_END), F("len", u16), F("flags", u16), F("status", i16)),
    doc="One copy: each end a local address (virt) or a grant (foreign, GNTCOPY_*_gref in flags); OUT "
    "GNTST_* status.",
)
GRANT_COPY = Decl(
    "ioctl_gntdev_grant_copy",
    _H,
    (F("count", u32), F("segments", handle)),
    doc="Have Xen perform count gntdev_grant_copy_segment copies (GNTTABOP_copy underneath).",
)
DMABUF_EXP_FROM_REFS = Decl(
    "ioctl_gntdev_dmabuf_exp_from_refs",
    _H,
    (F("flags", u32), F("count", u32), F("fd", u32), F("domid", u32), F("refs", Array(u32, 1))),
    doc="Export count grants of domid as a dma-buf; OUT its fd.",
)
DMABUF_EXP_WAIT_RELEASED = Decl(
    "ioctl_gntdev_dmabuf_exp_wait_released",
    _H,
    (F("fd", u32), F("wait_to_ms", u32)),
    doc="Wait until an exported dma-buf is released.",
)
DMABUF_IMP_TO_REFS = Decl(
    "ioctl_gntdev_dmabuf_imp_to_refs",
    _H,
    (F("fd", u32), F("count", u32), F("domid", u32), F("reserved", u32), F("refs", Array(u32, 1))),
    doc="Grant a dma-buf's pages to domid; OUT the refs.",
)
DMABUF_IMP_RELEASE = Decl(
    "ioctl_gntdev_dmabuf_imp_release", _H, (F("fd", u32), F("reserved", u32)), doc="Release an imported dma-buf."
)

IOCTL_GNTDEV_MAP_GRANT_REF = ioctl("IOCTL_GNTDEV_MAP_GRANT_REF", "G", 0, MAP_GRANT_REF, _H)
IOCTL_GNTDEV_UNMAP_GRANT_REF = ioctl("IOCTL_GNTDEV_UNMAP_GRANT_REF", "G", 1, UNMAP_GRANT_REF, _H)
IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR = ioctl("IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR", "G", 2, GET_OFFSET_FOR_VADDR, _H)
IOCTL_GNTDEV_SET_MAX_GRANTS = ioctl("IOCTL_GNTDEV_SET_MAX_GRANTS", "G", 3, SET_MAX_GRANTS, _H)
IOCTL_GNTDEV_SET_UNMAP_NOTIFY = ioctl("IOCTL_GNTDEV_SET_UNMAP_NOTIFY", "G", 7, UNMAP_NOTIFY, _H)
IOCTL_GNTDEV_GRANT_COPY = ioctl("IOCTL_GNTDEV_GRANT_COPY", "G", 8, GRANT_COPY, _H)
IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS = ioctl("IOCTL_GNTDEV_DMABUF_EXP_FROM_REFS", "G", 9, DMABUF_EXP_FROM_REFS, _H)
IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED = ioctl(
    "IOCTL_GNTDEV_DMABUF_EXP_WAIT_RELEASED", "G", 10, DMABUF_EXP_WAIT_RELEASED, _H
)
IOCTL_GNTDEV_DMABUF_IMP_TO_REFS = ioctl("IOCTL_GNTDEV_DMABUF_IMP_TO_REFS", "G", 11, DMABUF_IMP_TO_REFS, _H)
IOCTL_GNTDEV_DMABUF_IMP_RELEASE = ioctl("IOCTL_GNTDEV_DMABUF_IMP_RELEASE", "G", 12, DMABUF_IMP_RELEASE, _H)

constants_registry().extend(
    [
        Constants(UnmapNotify, "UNMAP_NOTIFY_", _H),
        Constants(DmaFlag, "GNTDEV_DMA_FLAG_", _H),
    ]
)
