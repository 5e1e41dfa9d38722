"""Declarations from Xen's public/xen.h: hypercall numbers, reserved domain ids, shared bitmaps, the PV
memory-management ops (mmu_update, mmuext_op), the shared info page and start_info.

Rule 1: every value here is the C macro of the same name in xen/include/public/xen.h, nothing derived.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from .._layout import (
    Array,
    Constants,
    Decl,
    F,
    Union,
    char,
    constants_registry,
    handle,
    i8,
    u8,
    u32,
    u64,
    ulong,
)
from .arch_x86 import ARCH_SHARED_INFO, ARCH_VCPU_INFO, XEN_LEGACY_MAX_VCPUS

__all__ = [
    "DOMID_FIRST_RESERVED",
    "MAX_GUEST_CMDLINE",
    "MMUEXT_OP",
    "MMU_UPDATE",
    "MULTICALL_ENTRY",
    "SHARED_INFO",
    "START_INFO",
    "VCPU_INFO",
    "VCPU_TIME_INFO",
    "XENCTL_BITMAP",
    "DomId",
    "GuestLimit",
    "Hypercall",
    "MmuExtCmd",
    "MmuUpdate",
    "PvClockFlag",
    "StartInfoFlag",
    "VmAssistCmd",
    "VmAssistType",
]


class Hypercall(IntEnum):
    """``__HYPERVISOR_*``: the hypercall numbers privcmd passes as ``op``."""

    set_trap_table = 0
    mmu_update = 1
    set_gdt = 2
    stack_switch = 3
    set_callbacks = 4
    fpu_taskswitch = 5
    sched_op_compat = 6
    platform_op = 7
    set_debugreg = 8
    get_debugreg = 9
    update_descriptor = 10
    memory_op = 12
    multicall = 13
    update_va_mapping = 14
    set_timer_op = 15
    event_channel_op_compat = 16
    xen_version = 17
    console_io = 18
    physdev_op_compat = 19
    grant_table_op = 20
    vm_assist = 21
    update_va_mapping_otherdomain = 22
    iret = 23
    vcpu_op = 24
    set_segment_base = 25
    mmuext_op = 26
    xsm_op = 27
    nmi_op = 28
    sched_op = 29
    callback_op = 30
    xenoprof_op = 31
    event_channel_op = 32
    physdev_op = 33
    hvm_op = 34
    sysctl = 35
    domctl = 36
    kexec_op = 37
    argo_op = 39
    xenpmu_op = 40
    dm_op = 41
    hypfs_op = 42


class DomId(IntEnum):
    """Reserved domain ids (``DOMID_*``). Ids at or above ``FIRST_RESERVED`` are never ordinary domains."""

    FIRST_RESERVED = 0x7FF0
    SELF = 0x7FF0
    IO = 0x7FF1
    XEN = 0x7FF2
    COW = 0x7FF3
    INVALID = 0x7FF4
    IDLE = 0x7FFF


DOMID_FIRST_RESERVED = int(DomId.FIRST_RESERVED)

XENCTL_BITMAP = Decl(
    "xenctl_bitmap",
    "xen.h",
    (F("bitmap", handle), F("nr_bits", u32)),
    doc="A bitmap passed by reference (cpumaps, nodemaps): guest handle + number of bits.",
)

constants_registry().extend(
    [
        Constants(Hypercall, "__HYPERVISOR_", "xen.h"),
        Constants(DomId, "DOMID_", "xen.h"),
    ]
)


# --- PV guest memory management: mmu_update / mmuext_op -------------------------------------------------


class MmuUpdate(IntEnum):
    """``MMU_*``: the command in the low 2 bits of ``mmu_update.ptr``."""

    NORMAL_PT_UPDATE = 0
    MACHPHYS_UPDATE = 1
    PT_UPDATE_PRESERVE_AD = 2
    PT_UPDATE_NO_TRANSLATE = 3


class MmuExtCmd(IntEnum):
    """``MMUEXT_*``: ``mmuext_op.cmd`` (pinning page tables, switching base pointers, flushes)."""

    PIN_L1_TABLE = 0
    PIN_L2_TABLE = 1
    PIN_L3_TABLE = 2
    PIN_L4_TABLE = 3
    UNPIN_TABLE = 4
    NEW_BASEPTR = 5
    TLB_FLUSH_LOCAL = 6
    INVLPG_LOCAL = 7
    TLB_FLUSH_MULTI = 8
    INVLPG_MULTI = 9
    TLB_FLUSH_ALL = 10
    INVLPG_ALL = 11
    FLUSH_CACHE = 12
    SET_LDT = 13
    NEW_USER_BASEPTR = 15
    CLEAR_PAGE = 16
    COPY_PAGE = 17
    FLUSH_CACHE_GLOBAL = 18
    MARK_SUPER = 19
    UNMARK_SUPER = 20


class VmAssistCmd(IntEnum):
    """``VMASST_CMD_*``: first argument of ``__HYPERVISOR_vm_assist``."""

    enable = 0
    disable = 1


class VmAssistType(IntEnum):
    """``VMASST_TYPE_*``: PV assists; ``vcpu_guest_context.vm_assist`` is a bitmap of ``1 << type``.
    (``_4gb_segments`` is ``VMASST_TYPE_4gb_segments``: a name cannot start with a digit.)"""

    _4gb_segments = 0
    _4gb_segments_notify = 1
    writable_pagetables = 2
    pae_extended_cr3 = 3
    architectural_iopl = 4
    runstate_update_flag = 5
    m2p_strict = 32


MMU_UPDATE = Decl(
    "mmu_update",
    "xen.h",
    (F("ptr", u64), F("val", u64)),
    doc="One __HYPERVISOR_mmu_update request: ptr is a machine address ORed with an MMU_* command.",
)

MMUEXT_OP = Decl(
    "mmuext_op",
    "xen.h",
    (
        F("cmd", u32),
        F("arg1", Union((F("mfn", ulong), F("linear_addr", ulong)))),
        F("arg2", Union((F("nr_ents", u32), F("vcpumask", handle), F("src_mfn", ulong)))),
    ),
    doc="One __HYPERVISOR_mmuext_op request: an MMUEXT_* command with its frame/address and extra argument.",
)

MULTICALL_ENTRY = Decl(
    "multicall_entry",
    "xen.h",
    (F("op", ulong), F("result", ulong), F("args", Array(ulong, 6))),
    doc="One __HYPERVISOR_multicall entry: hypercall number, OUT its result, its arguments.",
)


# --- the shared info page -------------------------------------------------------------------------------


class PvClockFlag(IntFlag):
    """``XEN_PVCLOCK_*``: ``vcpu_time_info.flags``."""

    TSC_STABLE_BIT = 1 << 0
    GUEST_STOPPED = 1 << 1


VCPU_TIME_INFO = Decl(
    "vcpu_time_info",
    "xen.h",
    (
        F("version", u32),
        F("pad0", u32),
        F("tsc_timestamp", u64),
        F("system_time", u64),
        F("tsc_to_system_mul", u32),
        F("tsc_shift", i8),
        F("flags", u8),
        F("pad1", Array(u8, 2)),
    ),
    doc="A vcpu's system time (ns since boot) at tsc_timestamp and the TSC scale; odd version = updating.",
)

VCPU_INFO = Decl(
    "vcpu_info",
    "xen.h",
    (
        F("evtchn_upcall_pending", u8),
        F("evtchn_upcall_mask", u8),
        F("evtchn_pending_sel", ulong),
        F("arch", ARCH_VCPU_INFO),
        F("time", VCPU_TIME_INFO),
    ),
    doc="Per-vcpu slot of the shared info page: event upcall pending/mask, pending selector, time.",
)

SHARED_INFO = Decl(
    "shared_info",
    "xen.h",
    (
        F("vcpu_info", Array(VCPU_INFO, XEN_LEGACY_MAX_VCPUS)),
        F("evtchn_pending", Array(ulong, 64)),
        F("evtchn_mask", Array(ulong, 64)),
        F("wc_version", u32),
        F("wc_sec", u32),
        F("wc_nsec", u32),
        F("wc_sec_hi", u32),
        F("arch", ARCH_SHARED_INFO),
    ),
    doc="The page Xen shares with each guest: vcpu slots, 2-level event channel bitmaps, wallclock, p2m.",
)


# --- start_info: what the PV domain builder hands a PV kernel -------------------------------------------


class StartInfoFlag(IntFlag):
    """``SIF_*``: ``start_info.flags``."""

    PRIVILEGED = 1 << 0
    INITDOMAIN = 1 << 1
    MULTIBOOT_MOD = 1 << 2
    MOD_START_PFN = 1 << 3
    VIRT_P2M_4TOOLS = 1 << 4
    PM_MASK = 0xFF << 8


class GuestLimit(IntEnum):
    """Sizes from xen.h."""

    MAX_GUEST_CMDLINE = 1024


#: sizeof(start_info.cmd_line).
MAX_GUEST_CMDLINE = int(GuestLimit.MAX_GUEST_CMDLINE)

_CONSOLE_DOMU = Decl(
    "start_info_console_domU",
    "xen.h",
    (F("mfn", ulong), F("evtchn", u32)),
    doc="The untagged struct of start_info.console.domU: console ring frame and event channel.",
    register=False,
)

_CONSOLE_DOM0 = Decl(
    "start_info_console_dom0",
    "xen.h",
    (F("info_off", u32), F("info_size", u32)),
    doc="The untagged struct of start_info.console.dom0: where dom0's console_info is in start_info's page.",
    register=False,
)

START_INFO = Decl(
    "start_info",
    "xen.h",
    (
        F("magic", Array(char, 32)),
        F("nr_pages", ulong),
        F("shared_info", ulong),
        F("flags", u32),
        F("store_mfn", ulong),
        F("store_evtchn", u32),
        F("console", Union((F("domU", _CONSOLE_DOMU), F("dom0", _CONSOLE_DOM0)))),
        F("pt_base", ulong),
        F("nr_pt_frames", ulong),
        F("mfn_list", ulong),
        F("mod_start", ulong),
        F("mod_len", ulong),
        F("cmd_line", Array(i8, MAX_GUEST_CMDLINE)),
        F("first_p2m_pfn", ulong),
        F("nr_p2m_frames", ulong),
    ),
    doc="The page a PV kernel boots with (%rsi): magic 'xen-3.0-x86_64', memory, shared info, xenstore and "
    "console rings, initial page tables, P2M list, module and command line.",
)

constants_registry().extend(
    [
        Constants(MmuUpdate, "MMU_", "xen.h"),
        Constants(MmuExtCmd, "MMUEXT_", "xen.h"),
        Constants(VmAssistCmd, "VMASST_CMD_", "xen.h"),
        Constants(VmAssistType, "VMASST_TYPE_", "xen.h"),
        Constants(PvClockFlag, "XEN_PVCLOCK_", "xen.h"),
        Constants(StartInfoFlag, "SIF_", "xen.h"),
        Constants(GuestLimit, "", "xen.h"),
    ]
)
