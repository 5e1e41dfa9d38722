"""Declarations from Xen's public/memory.h: the ``memory_op`` hypercall (``__HYPERVISOR_memory_op``).

Rule 1: memory.h is not interface-versioned; its records are the same in every release xenpure knows
(4.17 to 4.21), so none of them carries ``family``. The sub-op number decides which record the
hypercall's second argument points at.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

from .._layout import Constants, Decl, F, Union, constants_registry, handle, u16, u32, u64, ulong

__all__ = [
    "ADD_TO_PHYSMAP",
    "ADD_TO_PHYSMAP_BATCH",
    "E820_ENTRY",
    "E820_MAX_ENTRIES",
    "FOREIGN_MEMORY_MAP",
    "MACHPHYS_MAPPING",
    "MACHPHYS_MFN_LIST",
    "MEMORY_DOMAIN",
    "MEMORY_EXCHANGE",
    "MEMORY_MAP",
    "MEMORY_RESERVATION",
    "MEM_ACQUIRE_RESOURCE",
    "POD_TARGET",
    "REMOVE_FROM_PHYSMAP",
    "E820Type",
    "MapIdx",
    "MapSpace",
    "MemFlag",
    "MemOp",
    "ResourceGrantTableId",
    "ResourceIoreqServerFrame",
    "ResourceType",
]


class MemOp(IntEnum):
    """``XENMEM_*``: sub-ops of ``__HYPERVISOR_memory_op``."""

    increase_reservation = 0
    decrease_reservation = 1
    maximum_ram_page = 2
    current_reservation = 3
    maximum_reservation = 4
    machphys_mfn_list = 5
    populate_physmap = 6
    add_to_physmap = 7
    memory_map = 9
    machine_memory_map = 10
    exchange = 11
    machphys_mapping = 12
    set_memory_map = 13
    maximum_gpfn = 14
    remove_from_physmap = 15
    set_pod_target = 16
    get_pod_target = 17
    get_sharing_freed_pages = 18
    get_sharing_shared_pages = 19
    paging_op = 20
    access_op = 21
    sharing_op = 22
    add_to_physmap_batch = 23
    claim_pages = 24
    machphys_compat_mfn_list = 25
    get_vnumainfo = 26
    reserved_device_memory_map = 27
    acquire_resource = 28


class MemFlag(IntFlag):
    """``XENMEMF_*`` bits of ``xen_memory_reservation.mem_flags`` (the low byte holds address bits, bits
    8..15 a NUMA node + 1)."""

    populate_on_demand = 1 << 16
    exact_node_request = 1 << 17
    vnode = 1 << 18


class MapSpace(IntEnum):
    """``XENMAPSPACE_*``: where the frame ``xen_add_to_physmap`` maps comes from."""

    shared_info = 0
    grant_table = 1
    gmfn = 2
    gmfn_range = 3
    gmfn_foreign = 4
    dev_mmio = 5


class MapIdx(IntFlag):
    """``XENMAPIDX_*``: OR-ed into ``idx`` for ``XENMAPSPACE_grant_table`` to map a status frame."""

    grant_table_status = 0x80000000


class ResourceType(IntEnum):
    """``XENMEM_resource_*``: the ``type`` of ``xen_mem_acquire_resource``."""

    ioreq_server = 0
    grant_table = 1
    vmtrace_buf = 2


class ResourceGrantTableId(IntEnum):
    """``XENMEM_resource_grant_table_id_*``: the ``id`` for ``XENMEM_resource_grant_table``."""

    shared = 0
    status = 1


class ResourceIoreqServerFrame(IntEnum):
    """``XENMEM_resource_ioreq_server_frame_*``: frame 0 of an ioreq server (frame 1 + n is vcpu n's page)."""

    bufioreq = 0


MEMORY_RESERVATION = Decl(
    "xen_memory_reservation",
    "memory.h",
    (
        F("extent_start", handle),
        F("nr_extents", ulong),
        F("extent_order", u32),
        F("mem_flags", u32),
        F("domid", u16),
    ),
    doc="XENMEM_{increase,decrease}_reservation / populate_physmap: nr_extents extents of 2^extent_order "
    "pages for domid; extent_start lists the frames (IN and/or OUT by sub-op). Returns extents done.",
)

MEMORY_EXCHANGE = Decl(
    "xen_memory_exchange",
    "memory.h",
    (
        F("in", MEMORY_RESERVATION),
        F("out", MEMORY_RESERVATION),
        F("nr_exchanged", ulong),
    ),
    doc="XENMEM_exchange: trade the 'in' extents for freshly allocated 'out' extents; nr_exchanged (must be "
    "0 on entry) counts input extents exchanged.",
)

MEMORY_DOMAIN = Decl(
    "xen_memory_domain",
    "memory.h",
    (F("domid", u16),),
    doc="XENMEM_maximum_gpfn and friends: the domain queried.",
)

MACHPHYS_MFN_LIST = Decl(
    "xen_machphys_mfn_list",
    "memory.h",
    (F("max_extents", u32), F("extent_start", handle), F("nr_extents", u32)),
    doc="XENMEM_machphys_mfn_list: Xen fills extent_start with the MFNs backing the M2P table, 2MB each.",
)

MACHPHYS_MAPPING = Decl(
    "xen_machphys_mapping",
    "memory.h",
    (F("v_start", ulong), F("v_end", ulong), F("max_mfn", ulong)),
    doc="XENMEM_machphys_mapping: where the read-only M2P table is mapped and the largest MFN it covers.",
)

ADD_TO_PHYSMAP = Decl(
    "xen_add_to_physmap",
    "memory.h",
    (
        F("domid", u16),
        F("size", u16),
        F("space", u32),
        F("idx", ulong),
        F("gpfn", ulong),
    ),
    doc="XENMEM_add_to_physmap: map frame idx of a XENMAPSPACE_* space at gpfn in domid's physmap.",
)

ADD_TO_PHYSMAP_BATCH = Decl(
    "xen_add_to_physmap_batch",
    "memory.h",
    (
        F("domid", u16),
        F("space", u16),
        F("size", u16),
        F("u", Union((F("foreign_domid", u16), F("res0", u16)))),
        F("idxs", handle),
        F("gpfns", handle),
        F("errs", handle),
    ),
    doc="XENMEM_add_to_physmap_batch: size frames idxs[] of a space (foreign_domid's for gmfn_foreign) at "
    "gpfns[]; per-frame errors in errs[].",
)

REMOVE_FROM_PHYSMAP = Decl(
    "xen_remove_from_physmap",
    "memory.h",
    (F("domid", u16), F("gpfn", ulong)),
    doc="XENMEM_remove_from_physmap: unmap whatever is at gpfn in domid's physmap.",
)

MEMORY_MAP = Decl(
    "xen_memory_map",
    "memory.h",
    (F("nr_entries", u32), F("buffer", handle)),
    doc="XENMEM_{,machine_}memory_map: an E820 table of nr_entries entries in buffer (IN capacity, "
    "OUT count).",
)

class E820Type(IntEnum):
    """The ``type`` of an E820 entry (the BIOS INT 15h/E820h convention memory.h refers to); Xen's public
    headers spell the same numbers ``XEN_HVM_MEMMAP_TYPE_*`` (arch-x86/hvm/start_info.h)."""

    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5
    DISABLED = 6
    PMEM = 7


#: One entry of the table ``xen_memory_map.buffer`` points at: "the same format as returned by the BIOS INT
#: 0x15 EAX=0xE820 call" (memory.h), i.e. the Linux uapi's packed ``struct boot_e820_entry`` (asm/bootparam.h):
#: u64 addr, u64 size, u32 type, 20 bytes with no padding. A packed record has no ``Decl`` (the layout engine
#: aligns members), hence a plain ``struct`` format.
E820_ENTRY = struct.Struct("<QQI")
#: The most entries XENMEM_set_memory_map takes (Xen 4.17 answered EINVAL for 1025 in the lab, 0 for 1024).
E820_MAX_ENTRIES = 1024

FOREIGN_MEMORY_MAP = Decl(
    "xen_foreign_memory_map",
    "memory.h",
    (F("domid", u16), F("map", MEMORY_MAP)),
    doc="XENMEM_set_memory_map: set the E820 table a PV guest reads back with XENMEM_memory_map.",
)

POD_TARGET = Decl(
    "xen_pod_target",
    "memory.h",
    (
        F("target_pages", u64),
        F("tot_pages", u64),
        F("pod_cache_pages", u64),
        F("pod_entries", u64),
        F("domid", u16),
    ),
    doc="XENMEM_{set,get}_pod_target: IN the populate-on-demand target; OUT the domain's PoD accounting.",
)

MEM_ACQUIRE_RESOURCE = Decl(
    "xen_mem_acquire_resource",
    "memory.h",
    (
        F("domid", u16),
        F("type", u16),
        F("id", u32),
        F("nr_frames", u32),
        F("pad", u32),
        F("frame", u64),
        F("frame_list", handle),
    ),
    doc="XENMEM_acquire_resource: nr_frames frames of a domain's resource (type/id) from frame; a NULL "
    "frame_list with nr_frames 0 asks for the resource's size. pad must be zero.",
)

constants_registry().extend(
    [
        Constants(MemOp, "XENMEM_", "memory.h"),
        Constants(MemFlag, "XENMEMF_", "memory.h"),
        Constants(MapSpace, "XENMAPSPACE_", "memory.h"),
        Constants(MapIdx, "XENMAPIDX_", "memory.h"),
        Constants(ResourceType, "XENMEM_resource_", "memory.h"),
        Constants(ResourceGrantTableId, "XENMEM_resource_grant_table_id_", "memory.h"),
        Constants(ResourceIoreqServerFrame, "XENMEM_resource_ioreq_server_frame_", "memory.h"),
        Constants(E820Type, "XEN_HVM_MEMMAP_TYPE_", "arch-x86/hvm/start_info.h"),
    ]
)
