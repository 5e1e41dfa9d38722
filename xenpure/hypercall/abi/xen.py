"""Declarations from Xen's public/xen.h: hypercall numbers, reserved domain ids, shared bitmaps.

Rule 1: every value here is the C macro of the same name in xen/include/public/xen.h, nothing derived.
"""

from __future__ import annotations

from enum import IntEnum

from .._layout import Constants, Decl, F, constants_registry, handle, u32

__all__ = ["DOMID_FIRST_RESERVED", "DomId", "Hypercall", "XENCTL_BITMAP"]


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
