"""Declarations from Xen's public/sysctl.h: the host-control hypercall (``__HYPERVISOR_sysctl``).

Rule 1: like domctl, ``struct xen_sysctl`` carries ``interface_version`` and a wrong one answers EACCES;
sysctl is versioned independently of domctl (0x15 for Xen 4.17-4.20, 0x16 for 4.21).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from .._layout import Array, Constants, Decl, F, Union, constants_registry, handle, u8, u16, u32, u64

__all__ = [
    "GETDOMAININFOLIST",
    "PHYSINFO",
    "READCONSOLE",
    "SYSCTL",
    "SYSCTL_VERSIONS",
    "PhysCap",
    "SysctlCmd",
    "sysctl_member",
]

#: Every sysctl interface version xenpure has declarations for.
SYSCTL_VERSIONS = (0x15, 0x16)


class SysctlCmd(IntEnum):
    """``XEN_SYSCTL_*`` commands used by xenpure."""

    readconsole = 1
    physinfo = 3
    getdomaininfolist = 6


class PhysCap(IntFlag):
    """``XEN_SYSCTL_PHYSCAP_*``: what ``xl info`` prints as virt_caps."""

    hvm = 1 << 0
    pv = 1 << 1
    directio = 1 << 2
    hap = 1 << 3
    shadow = 1 << 4
    iommu_hap_pt_share = 1 << 5
    vmtrace = 1 << 6
    vpmu = 1 << 7
    gnttab_v1 = 1 << 8
    gnttab_v2 = 1 << 9


READCONSOLE = Decl(
    "xen_sysctl_readconsole",
    "sysctl.h",
    (
        F("clear", u8),
        F("incremental", u8),
        F("pad0", u8),
        F("pad1", u8),
        F("index", u32),
        F("buffer", handle),
        F("count", u32),
    ),
    family="sysctl",
    doc="XEN_SYSCTL_readconsole: copy the hypervisor's console ring (like `xl dmesg`).",
)

PHYSINFO = Decl(
    "xen_sysctl_physinfo",
    "sysctl.h",
    (
        F("threads_per_core", u32),
        F("cores_per_socket", u32),
        F("nr_cpus", u32),
        F("max_cpu_id", u32),
        F("nr_nodes", u32),
        F("max_node_id", u32),
        F("cpu_khz", u32),
        F("capabilities", u32),
        F("arch_capabilities", u32),
        F("pad", u32),
        F("total_pages", u64),
        F("free_pages", u64),
        F("scrub_pages", u64),
        F("outstanding_pages", u64),
        F("max_mfn", u64),
        F("hw_cap", Array(u32, 8)),
    ),
    family="sysctl",
)

GETDOMAININFOLIST = Decl(
    "xen_sysctl_getdomaininfolist",
    "sysctl.h",
    (F("first_domain", u16), F("max_domains", u32), F("buffer", handle), F("num_domains", u32)),
    family="sysctl",
    doc="XEN_SYSCTL_getdomaininfolist: up to max_domains getdomaininfo records from first_domain on.",
)

SYSCTL = Decl(
    "xen_sysctl",
    "sysctl.h",
    (
        F("cmd", u32),
        F("interface_version", u32),
        F(
            "u",
            Union(
                (
                    F("readconsole", READCONSOLE),
                    F("physinfo", PHYSINFO),
                    F("getdomaininfolist", GETDOMAININFOLIST),
                ),
                size=128,
            ),
        ),
    ),
    family="sysctl",
)

constants_registry().extend(
    [Constants(SysctlCmd, "XEN_SYSCTL_", "sysctl.h"), Constants(PhysCap, "XEN_SYSCTL_PHYSCAP_", "sysctl.h")]
)

#: Which union member of ``struct xen_sysctl`` carries each command's payload.
_PAYLOAD: dict[SysctlCmd, Decl | None] = {
    SysctlCmd.readconsole: READCONSOLE,
    SysctlCmd.physinfo: PHYSINFO,
    SysctlCmd.getdomaininfolist: GETDOMAININFOLIST,
}


def sysctl_member(cmd: SysctlCmd) -> Decl | None:
    """The record in ``xen_sysctl.u`` that ``cmd`` reads and writes."""
    return _PAYLOAD[cmd]
