"""Declarations from Xen's public/arch-x86/xen.h (and xen-x86_64.h) for an x86_64 toolstack.

Rule 1: only x86_64 layouts live here; every ``unsigned long`` is 8 bytes.
"""

from __future__ import annotations

from .._layout import Decl, F, u32

__all__ = ["ARCH_DOMAINCONFIG"]

ARCH_DOMAINCONFIG = Decl(
    "xen_arch_domainconfig",
    "arch-x86/xen.h",
    (F("emulation_flags", u32), F("misc_flags", u32)),
    doc="x86 part of createdomain: XEN_X86_EMU_* devices Xen emulates (0 for a PV guest), misc flags.",
)
