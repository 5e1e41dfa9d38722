"""Declarations from Xen's public/elfnote.h: the ``XEN_ELFNOTE_*`` note types of a Xen guest kernel.

Rule 1: these are the ``n_type`` values of ELF notes named "Xen"; a PV/PVH kernel describes itself with
them (entry point, hypercall page, virt base, features) and the domain builder reads them. Xen 4.17's
set; notes added later (XEN_ELFNOTE_PHYS32_RELOC = 19, Xen 4.19) are not declared here.
"""

from __future__ import annotations

from enum import IntEnum

from .._layout import Constants, constants_registry

__all__ = ["ElfNote", "ElfNoteCore"]


class ElfNote(IntEnum):
    """``XEN_ELFNOTE_*`` notes in a guest kernel image."""

    INFO = 0
    ENTRY = 1
    HYPERCALL_PAGE = 2
    VIRT_BASE = 3
    PADDR_OFFSET = 4
    XEN_VERSION = 5
    GUEST_OS = 6
    GUEST_VERSION = 7
    LOADER = 8
    PAE_MODE = 9
    FEATURES = 10
    BSD_SYMTAB = 11
    HV_START_LOW = 12
    L1_MFN_VALID = 13
    SUSPEND_CANCEL = 14
    INIT_P2M = 15
    MOD_START_PFN = 16
    SUPPORTED_FEATURES = 17
    PHYS32_ENTRY = 18


class ElfNoteCore(IntEnum):
    """``XEN_ELFNOTE_*`` notes in Xen crash dumps and in guest core files written by the toolstack."""

    CRASH_INFO = 0x1000001
    CRASH_REGS = 0x1000002
    DUMPCORE_NONE = 0x2000000
    DUMPCORE_HEADER = 0x2000001
    DUMPCORE_XEN_VERSION = 0x2000002
    DUMPCORE_FORMAT_VERSION = 0x2000003


constants_registry().extend(
    [Constants(ElfNote, "XEN_ELFNOTE_", "elfnote.h"), Constants(ElfNoteCore, "XEN_ELFNOTE_", "elfnote.h")]
)
