"""Declarations from Xen's public/version.h: the ``xen_version`` hypercall's sub-ops and results.

Rule 1: the sub-op decides the argument; fixed-size string results are declared as char arrays.
"""

from __future__ import annotations

from enum import IntEnum

from .._layout import Array, Constants, Decl, F, char, constants_registry, u32, ulong

__all__ = [
    "CAPABILITIES_INFO_LEN",
    "CHANGESET_INFO_LEN",
    "COMMANDLINE_LEN",
    "COMPILE_INFO",
    "EXTRAVERSION_LEN",
    "FEATURE_INFO",
    "PLATFORM_PARAMETERS",
    "XenVer",
]


class XenVer(IntEnum):
    """``XENVER_*`` sub-ops of ``__HYPERVISOR_xen_version``."""

    version = 0
    extraversion = 1
    compile_info = 2
    capabilities = 3
    changeset = 4
    platform_parameters = 5
    get_features = 6
    pagesize = 7
    guest_handle = 8
    commandline = 9
    build_id = 10


#: sizeof(xen_extraversion_t), sizeof(xen_capabilities_info_t), ...: the result buffers of string sub-ops.
EXTRAVERSION_LEN = 16
CAPABILITIES_INFO_LEN = 1024
CHANGESET_INFO_LEN = 64
COMMANDLINE_LEN = 1024

COMPILE_INFO = Decl(
    "xen_compile_info",
    "version.h",
    (
        F("compiler", Array(char, 64)),
        F("compile_by", Array(char, 16)),
        F("compile_domain", Array(char, 32)),
        F("compile_date", Array(char, 32)),
    ),
)

PLATFORM_PARAMETERS = Decl("xen_platform_parameters", "version.h", (F("virt_start", ulong),))

FEATURE_INFO = Decl("xen_feature_info", "version.h", (F("submap_idx", u32), F("submap", u32)))

constants_registry().append(Constants(XenVer, "XENVER_", "version.h"))
