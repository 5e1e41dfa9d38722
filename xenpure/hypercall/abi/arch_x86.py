"""Declarations from Xen's public/arch-x86/xen.h (and xen-x86_64.h) for an x86_64 toolstack.

Rule 1: only x86_64 layouts live here; every ``unsigned long`` is 8 bytes.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from .._layout import Array, Constants, Decl, F, char, constants_registry, u8, u16, u32, u64, ulong

__all__ = [
    "ARCH_DOMAINCONFIG",
    "ARCH_SHARED_INFO",
    "ARCH_VCPU_INFO",
    "CPU_USER_REGS",
    "TRAP_INFO",
    "VCPU_GUEST_CONTEXT",
    "XEN_LEGACY_MAX_VCPUS",
    "ArchLimit",
    "FlatSelector",
    "Vgcf",
]

ARCH_DOMAINCONFIG = Decl(
    "xen_arch_domainconfig",
    "arch-x86/xen.h",
    (F("emulation_flags", u32), F("misc_flags", u32)),
    doc="x86 part of createdomain: XEN_X86_EMU_* devices Xen emulates (0 for a PV guest), misc flags.",
)


class Vgcf(IntFlag):
    """``VGCF_*``: ``vcpu_guest_context.flags`` (upper-case spellings are the historical aliases)."""

    I387_VALID = 1 << 0
    IN_KERNEL = 1 << 2
    i387_valid = 1 << 0
    in_kernel = 1 << 2
    failsafe_disables_events = 1 << 3
    syscall_disables_events = 1 << 4
    online = 1 << 5
    in_syscall = 1 << 8
    IN_SYSCALL = 1 << 8


class FlatSelector(IntEnum):
    """``FLAT_*`` (xen-x86_64.h): the flat segment selectors Xen provides to 64-bit PV guests."""

    RING3_CS32 = 0xE023
    RING3_CS64 = 0xE033
    RING3_DS32 = 0xE02B
    RING3_DS64 = 0x0000
    RING3_SS32 = 0xE02B
    RING3_SS64 = 0xE02B
    KERNEL_DS64 = 0x0000
    KERNEL_DS32 = 0xE02B
    KERNEL_DS = 0x0000
    KERNEL_CS64 = 0xE033
    KERNEL_CS32 = 0xE023
    KERNEL_CS = 0xE033
    KERNEL_SS64 = 0xE02B
    KERNEL_SS32 = 0xE02B
    KERNEL_SS = 0xE02B
    USER_DS64 = 0x0000
    USER_DS32 = 0xE02B
    USER_DS = 0x0000
    USER_CS64 = 0xE033
    USER_CS32 = 0xE023
    USER_CS = 0xE033
    USER_SS64 = 0xE02B
    USER_SS32 = 0xE02B
    USER_SS = 0xE02B


class ArchLimit(IntEnum):
    """Sizes from arch-x86/xen.h."""

    XEN_LEGACY_MAX_VCPUS = 32


#: vcpu_info slots in the shared info page on x86.
XEN_LEGACY_MAX_VCPUS = int(ArchLimit.XEN_LEGACY_MAX_VCPUS)

# With __XEN_TOOLS__ every general register is an anonymous union of its 64/32/16/8-bit names, so C
# accepts the 64-bit name (rax, r15, rflags) at the struct level: that is the one declared here.
CPU_USER_REGS = Decl(
    "cpu_user_regs",
    "arch-x86/xen-x86_64.h",
    (
        F("r15", u64),
        F("r14", u64),
        F("r13", u64),
        F("r12", u64),
        F("rbp", u64),
        F("rbx", u64),
        F("r11", u64),
        F("r10", u64),
        F("r9", u64),
        F("r8", u64),
        F("rax", u64),
        F("rcx", u64),
        F("rdx", u64),
        F("rsi", u64),
        F("rdi", u64),
        F("error_code", u32),
        F("entry_vector", u32),
        F("rip", u64),
        F("cs", u16),
        F("_pad0", Array(u16, 1)),
        F("saved_upcall_mask", u8),
        F("_pad1", Array(u8, 3)),
        F("rflags", u64),
        F("rsp", u64),
        F("ss", u16),
        F("_pad2", Array(u16, 3)),
        F("es", u16),
        F("_pad3", Array(u16, 3)),
        F("ds", u16),
        F("_pad4", Array(u16, 3)),
        F("fs", u16),
        F("_pad5", Array(u16, 3)),
        F("gs", u16),
        F("_pad6", Array(u16, 3)),
    ),
    doc="A 64-bit PV vcpu's general registers, as set by setvcpucontext (rip = kernel entry, "
    "rsi = start_info).",
)

TRAP_INFO = Decl(
    "trap_info",
    "arch-x86/xen.h",
    (F("vector", u8), F("flags", u8), F("cs", u16), F("address", ulong)),
    doc="One virtual IDT entry of a PV guest: vector, DPL/IF flags, handler cs:address.",
)

_FPU_CTXT = Decl(
    "vcpu_guest_context_fpu_ctxt",
    "arch-x86/xen.h",
    (F("x", Array(char, 512)),),
    doc="The untagged struct of vcpu_guest_context.fpu_ctxt: an FXSAVE image.",
    register=False,
)

VCPU_GUEST_CONTEXT = Decl(
    "vcpu_guest_context",
    "arch-x86/xen.h",
    (
        F("fpu_ctxt", _FPU_CTXT),
        F("flags", ulong),
        F("user_regs", CPU_USER_REGS),
        F("trap_ctxt", Array(TRAP_INFO, 256)),
        F("ldt_base", ulong),
        F("ldt_ents", ulong),
        F("gdt_frames", Array(ulong, 16)),
        F("gdt_ents", ulong),
        F("kernel_ss", ulong),
        F("kernel_sp", ulong),
        F("ctrlreg", Array(ulong, 8)),
        F("debugreg", Array(ulong, 8)),
        F("event_callback_eip", ulong),
        F("failsafe_callback_eip", ulong),
        F("syscall_callback_eip", ulong),
        F("vm_assist", ulong),
        F("fs_base", u64),
        F("gs_base_kernel", u64),
        F("gs_base_user", u64),
    ),
    doc="A PV vcpu's full state for XEN_DOMCTL_{get,set}vcpucontext (passed by handle): FPU, registers, "
    "virtual IDT, GDT frames, cr3 in ctrlreg[3] (user cr3 in ctrlreg[1]), callbacks, VMASST_* bitmap.",
)

ARCH_VCPU_INFO = Decl(
    "arch_vcpu_info",
    "arch-x86/xen-x86_64.h",
    (F("cr2", ulong), F("pad", ulong)),
    doc="x86 part of vcpu_info: the guest's virtual %cr2.",
)

ARCH_SHARED_INFO = Decl(
    "arch_shared_info",
    "arch-x86/xen.h",
    (
        F("max_pfn", ulong),
        F("pfn_to_mfn_frame_list_list", ulong),
        F("nmi_reason", ulong),
        F("p2m_cr3", ulong),
        F("p2m_vaddr", ulong),
        F("p2m_generation", ulong),
    ),
    doc="x86 part of shared_info: where a PV guest publishes its P2M (3-level list or linear p2m_vaddr).",
)

constants_registry().extend(
    [
        Constants(Vgcf, "VGCF_", "arch-x86/xen.h"),
        Constants(FlatSelector, "FLAT_", "arch-x86/xen-x86_64.h"),
        Constants(ArchLimit, "", "arch-x86/xen.h"),
    ]
)
