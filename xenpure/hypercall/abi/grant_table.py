"""Declarations from Xen's public/grant_table.h: grant entries and ``__HYPERVISOR_grant_table_op``.

Rule 1: a grant is the granting domain's entry (``grant_entry_v1``) naming who may access which frame;
every GNTTABOP_* sub-op takes an array of its own record and reports per-entry ``GNTST_*`` status codes
in the records, not in the hypercall's return value. grant_table.h is not interface-versioned.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from .._layout import Constants, Decl, F, Union, constants_registry, handle, i16, u16, u32, u64, ulong

__all__ = [
    "CACHE_FLUSH",
    "COPY",
    "COPY_PTR",
    "DUMP_TABLE",
    "GET_STATUS_FRAMES",
    "GET_VERSION",
    "GRANT_ENTRY_HEADER",
    "GRANT_ENTRY_V1",
    "MAP_GRANT_REF",
    "QUERY_SIZE",
    "SETUP_TABLE",
    "SET_VERSION",
    "SWAP_GRANT_REF",
    "TRANSFER",
    "UNMAP_AND_REPLACE",
    "UNMAP_GRANT_REF",
    "CacheFlushFlag",
    "CopyFlag",
    "GntMap",
    "GntSt",
    "GnttabOp",
    "GnttabReserved",
    "GrantFlag",
    "GrantTransferFlag",
    "GrantType",
    "NrReservedEntries",
]


class GnttabOp(IntEnum):
    """``GNTTABOP_*``: sub-ops of ``__HYPERVISOR_grant_table_op``."""

    map_grant_ref = 0
    unmap_grant_ref = 1
    setup_table = 2
    dump_table = 3
    transfer = 4
    copy = 5
    query_size = 6
    unmap_and_replace = 7
    set_version = 8
    get_status_frames = 9
    get_version = 10
    swap_grant_ref = 11
    cache_flush = 12


class GnttabReserved(IntEnum):
    """``GNTTAB_RESERVED_*``: grant refs the toolstack fills in for a new guest (console, xenstore rings)."""

    CONSOLE = 0
    XENSTORE = 1


class NrReservedEntries(IntEnum):
    """``GNTTAB_NR_RESERVED_ENTRIES``: entries preserved for the toolstack across a guest's table reset."""

    NR_RESERVED_ENTRIES = 8


class GrantType(IntEnum):
    """``GTF_*`` grant types: the low two bits (``GTF_type_mask``) of a grant entry's flags."""

    invalid = 0
    permit_access = 1
    accept_transfer = 2
    transitive = 3


class GrantFlag(IntFlag):
    """``GTF_*`` flags of a ``GTF_permit_access`` entry (``type_mask`` selects the GrantType bits)."""

    type_mask = 3
    readonly = 1 << 2
    reading = 1 << 3
    writing = 1 << 4
    PWT = 1 << 5
    PCD = 1 << 6
    PAT = 1 << 7
    sub_page = 1 << 8


class GrantTransferFlag(IntFlag):
    """``GTF_*`` flags of a ``GTF_accept_transfer`` entry (same bits as readonly/reading, other meaning)."""

    transfer_committed = 1 << 2
    transfer_completed = 1 << 3


class GntMap(IntFlag):
    """``GNTMAP_*``: ``gnttab_map_grant_ref.flags``."""

    device_map = 1 << 0
    host_map = 1 << 1
    readonly = 1 << 2
    application_map = 1 << 3
    contains_pte = 1 << 4
    guest_avail_mask = 0xFFFF0000


class CopyFlag(IntFlag):
    """``GNTCOPY_*``: ``gnttab_copy.flags``: whether source/dest name a grant ref (else a local gmfn)."""

    source_gref = 1 << 0
    dest_gref = 1 << 1


class CacheFlushFlag(IntFlag):
    """``GNTTAB_CACHE_*``: ``gnttab_cache_flush.op``."""

    CLEAN = 1 << 0
    INVAL = 1 << 1
    SOURCE_GREF = 1 << 31


class GntSt(IntEnum):
    """``GNTST_*``: per-entry status codes (0 or negative) written into each sub-op's ``status``."""

    okay = 0
    general_error = -1
    bad_domain = -2
    bad_gntref = -3
    bad_handle = -4
    bad_virt_addr = -5
    bad_dev_addr = -6
    no_device_space = -7
    permission_denied = -8
    bad_page = -9
    bad_copy_arg = -10
    address_too_big = -11
    eagain = -12
    no_space = -13


GRANT_ENTRY_V1 = Decl(
    "grant_entry_v1",
    "grant_table.h",
    (F("flags", u16), F("domid", u16), F("frame", u32)),
    doc="A v1 grant table entry: GTF_* type and flags, the grantee domid, the granted frame.",
)

GRANT_ENTRY_HEADER = Decl(
    "grant_entry_header",
    "grant_table.h",
    (F("flags", u16), F("domid", u16)),
    doc="The flags/domid header every v2 grant entry starts with.",
)

MAP_GRANT_REF = Decl(
    "gnttab_map_grant_ref",
    "grant_table.h",
    (
        F("host_addr", u64),
        F("flags", u32),
        F("ref", u32),
        F("dom", u16),
        F("status", i16),
        F("handle", u32),
        F("dev_bus_addr", u64),
    ),
    doc="GNTTABOP_map_grant_ref: map dom's grant ref at host_addr (GNTMAP_* flags); OUT status, handle.",
)

UNMAP_GRANT_REF = Decl(
    "gnttab_unmap_grant_ref",
    "grant_table.h",
    (F("host_addr", u64), F("dev_bus_addr", u64), F("handle", u32), F("status", i16)),
    doc="GNTTABOP_unmap_grant_ref: undo a mapping by its handle.",
)

SETUP_TABLE = Decl(
    "gnttab_setup_table",
    "grant_table.h",
    (F("dom", u16), F("nr_frames", u32), F("status", i16), F("frame_list", handle)),
    doc="GNTTABOP_setup_table: grow dom's table to nr_frames; frame_list receives its frame numbers.",
)

DUMP_TABLE = Decl(
    "gnttab_dump_table",
    "grant_table.h",
    (F("dom", u16), F("status", i16)),
    doc="GNTTABOP_dump_table: print dom's grant table on Xen's console.",
)

TRANSFER = Decl(
    "gnttab_transfer",
    "grant_table.h",
    (F("mfn", ulong), F("domid", u16), F("ref", u32), F("status", i16)),
    doc="GNTTABOP_transfer: give page mfn to domid through its accept-transfer grant ref.",
)

COPY_PTR = Decl(
    "gnttab_copy_ptr",
    "grant_table.h",
    (F("u", Union((F("ref", u32), F("gmfn", ulong)))), F("domid", u16), F("offset", u16)),
    doc="One end of a gnttab_copy: a grant ref (GNTCOPY_*_gref) or a gmfn of domid, and a byte offset.",
)

COPY = Decl(
    "gnttab_copy",
    "grant_table.h",
    (
        F("source", COPY_PTR),
        F("dest", COPY_PTR),
        F("len", u16),
        F("flags", u16),
        F("status", i16),
    ),
    doc="GNTTABOP_copy: Xen copies len bytes from source to dest (each a grant ref or a local frame).",
)

QUERY_SIZE = Decl(
    "gnttab_query_size",
    "grant_table.h",
    (F("dom", u16), F("nr_frames", u32), F("max_nr_frames", u32), F("status", i16)),
    doc="GNTTABOP_query_size: dom's current and maximum number of grant table frames.",
)

UNMAP_AND_REPLACE = Decl(
    "gnttab_unmap_and_replace",
    "grant_table.h",
    (F("host_addr", u64), F("new_addr", u64), F("handle", u32), F("status", i16)),
    doc="GNTTABOP_unmap_and_replace: unmap handle at host_addr, moving new_addr's mapping there.",
)

SET_VERSION = Decl(
    "gnttab_set_version",
    "grant_table.h",
    (F("version", u32),),
    doc="GNTTABOP_set_version: switch the caller's grant table to v1 or v2; OUT the version in force.",
)

GET_STATUS_FRAMES = Decl(
    "gnttab_get_status_frames",
    "grant_table.h",
    (F("nr_frames", u32), F("dom", u16), F("status", i16), F("frame_list", handle)),
    doc="GNTTABOP_get_status_frames: the frames of dom's v2 status array.",
)

GET_VERSION = Decl(
    "gnttab_get_version",
    "grant_table.h",
    (F("dom", u16), F("pad", u16), F("version", u32)),
    doc="GNTTABOP_get_version: the grant table version dom uses.",
)

SWAP_GRANT_REF = Decl(
    "gnttab_swap_grant_ref",
    "grant_table.h",
    (F("ref_a", u32), F("ref_b", u32), F("status", i16)),
    doc="GNTTABOP_swap_grant_ref: swap two of the caller's grant entries.",
)

CACHE_FLUSH = Decl(
    "gnttab_cache_flush",
    "grant_table.h",
    (
        F("a", Union((F("dev_bus_addr", u64), F("ref", u32)))),
        F("offset", u16),
        F("length", u16),
        F("op", u32),
    ),
    doc="GNTTABOP_cache_flush: clean/invalidate (GNTTAB_CACHE_*) length bytes at offset of a grant or "
    "an address.",
)

constants_registry().extend(
    [
        Constants(GnttabOp, "GNTTABOP_", "grant_table.h"),
        Constants(GnttabReserved, "GNTTAB_RESERVED_", "grant_table.h"),
        Constants(NrReservedEntries, "GNTTAB_", "grant_table.h"),
        Constants(GrantType, "GTF_", "grant_table.h"),
        Constants(GrantFlag, "GTF_", "grant_table.h"),
        Constants(GrantTransferFlag, "GTF_", "grant_table.h"),
        Constants(GntMap, "GNTMAP_", "grant_table.h"),
        Constants(CopyFlag, "GNTCOPY_", "grant_table.h"),
        Constants(CacheFlushFlag, "GNTTAB_CACHE_", "grant_table.h"),
        Constants(GntSt, "GNTST_", "grant_table.h"),
    ]
)
