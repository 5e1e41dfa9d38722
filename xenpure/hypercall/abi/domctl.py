"""Declarations from Xen's public/domctl.h: the domain-control hypercall (``__HYPERVISOR_domctl``).

Rule 1: ``struct xen_domctl`` carries its own ``interface_version``; Xen refuses any other version with
EACCES, so every layout here is keyed by the domctl interface version (0x15 is Xen 4.17, 0x17 is 4.19-4.21).
Members that appeared or vanished carry ``since``/``until``.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from .._layout import Array, Constants, Decl, F, Union, constants_registry, handle, i32, i64, u8, u16, u32, u64
from .arch_x86 import ARCH_DOMAINCONFIG
from .xen import XENCTL_BITMAP

__all__ = [
    "ADDRESS_SIZE",
    "CREATEDOMAIN",
    "DOMCTL",
    "DOMCTL_VERSIONS",
    "GETDOMAININFO",
    "GETVCPUINFO",
    "HYPERCALL_INIT",
    "MAX_MEM",
    "MAX_VCPUS",
    "SETTIMEOFFSET",
    "VCPUAFFINITY",
    "VCPUCONTEXT",
    "CreateFlag",
    "DomInfoFlag",
    "DomctlCmd",
    "VcpuAffinityFlag",
    "payload_member",
]

#: Every domctl interface version xenpure has declarations for.
DOMCTL_VERSIONS = (0x15, 0x16, 0x17)


class DomctlCmd(IntEnum):
    """``XEN_DOMCTL_*`` commands used by xenpure."""

    createdomain = 1
    destroydomain = 2
    pausedomain = 3
    unpausedomain = 4
    getdomaininfo = 5
    setvcpuaffinity = 9
    max_mem = 11
    setvcpucontext = 12
    getvcpucontext = 13
    getvcpuinfo = 14
    max_vcpus = 15
    hypercall_init = 22
    settimeoffset = 24
    getvcpuaffinity = 25
    resumedomain = 27
    set_address_size = 35
    get_address_size = 36


class CreateFlag(IntFlag):
    """``XEN_DOMCTL_CDF_*``: createdomain flags."""

    hvm = 1 << 0
    hap = 1 << 1
    s3_integrity = 1 << 2
    oos_off = 1 << 3
    xs_domain = 1 << 4
    iommu = 1 << 5
    nested_virt = 1 << 6
    vpmu = 1 << 7


class DomInfoFlag(IntFlag):
    """``XEN_DOMINF_*``: getdomaininfo flags. Bits 16..23 hold the shutdown reason (``shutdownmask``)."""

    dying = 1 << 0
    hvm_guest = 1 << 1
    shutdown = 1 << 2
    paused = 1 << 3
    blocked = 1 << 4
    running = 1 << 5
    debugged = 1 << 6
    xs_domain = 1 << 7
    hap = 1 << 8


class DomInfoShutdown(IntEnum):
    """Where getdomaininfo's flags keep the guest-supplied shutdown code."""

    shutdownmask = 255
    shutdownshift = 16


class VcpuAffinityFlag(IntFlag):
    """``XEN_VCPUAFFINITY_*``."""

    HARD = 1 << 0
    SOFT = 1 << 1
    FORCE = 1 << 2


CREATEDOMAIN = Decl(
    "xen_domctl_createdomain",
    "domctl.h",
    (
        F("ssidref", u32),
        F("handle", Array(u8, 16)),
        F("flags", u32),
        F("iommu_opts", u32),
        F("max_vcpus", u32),
        F("max_evtchn_port", u32),
        F("max_grant_frames", i32),
        F("max_maptrack_frames", i32),
        F("grant_opts", u32),
        F("altp2m_opts", u32, since=0x17),
        F("vmtrace_size", u32),
        F("cpupool_id", u32),
        F("arch", ARCH_DOMAINCONFIG),
    ),
    family="domctl",
    doc="XEN_DOMCTL_createdomain: IN the domain's shape and limits; domctl.domain is IN/OUT (0 = allocate).",
)

GETDOMAININFO = Decl(
    "xen_domctl_getdomaininfo",
    "domctl.h",
    (
        F("domain", u16),
        F("pad1", u16),
        F("flags", u32),
        F("tot_pages", u64),
        F("max_pages", u64),
        F("outstanding_pages", u64),
        F("shr_pages", u64),
        F("paged_pages", u64),
        F("shared_info_frame", u64),
        F("cpu_time", u64),
        F("nr_online_vcpus", u32),
        F("max_vcpu_id", u32),
        F("ssidref", u32),
        F("handle", Array(u8, 16)),
        F("cpupool", u32),
        F("gpaddr_bits", u8),
        F("pad2", Array(u8, 7)),
        F("arch_config", ARCH_DOMAINCONFIG),
    ),
    family="domctl",
    doc="XEN_DOMCTL_getdomaininfo (and each entry of sysctl getdomaininfolist): OUT one domain's state.",
)

MAX_MEM = Decl("xen_domctl_max_mem", "domctl.h", (F("max_memkb", u64),), family="domctl")

VCPUCONTEXT = Decl(
    "xen_domctl_vcpucontext",
    "domctl.h",
    (F("vcpu", u32), F("ctxt", handle)),
    family="domctl",
    doc="XEN_DOMCTL_{get,set}vcpucontext: a vcpu number and a handle to a vcpu_guest_context.",
)

GETVCPUINFO = Decl(
    "xen_domctl_getvcpuinfo",
    "domctl.h",
    (
        F("vcpu", u32),
        F("online", u8),
        F("blocked", u8),
        F("running", u8),
        F("cpu_time", u64),
        F("cpu", u32),
    ),
    family="domctl",
)

MAX_VCPUS = Decl("xen_domctl_max_vcpus", "domctl.h", (F("max", u32),), family="domctl")

VCPUAFFINITY = Decl(
    "xen_domctl_vcpuaffinity",
    "domctl.h",
    (
        F("vcpu", u32),
        F("flags", u32),
        F("cpumap_hard", XENCTL_BITMAP),
        F("cpumap_soft", XENCTL_BITMAP),
    ),
    family="domctl",
)

HYPERCALL_INIT = Decl(
    "xen_domctl_hypercall_init",
    "domctl.h",
    (F("gmfn", u64),),
    family="domctl",
    doc="XEN_DOMCTL_hypercall_init: Xen fills the domain's page gmfn (a PV guest's MFN) with hypercall stubs, "
    "32 bytes per hypercall number (arch-x86/xen-x86_64.h).",
)

SETTIMEOFFSET = Decl(
    "xen_domctl_settimeoffset", "domctl.h", (F("time_offset_seconds", i64),), family="domctl"
)

ADDRESS_SIZE = Decl("xen_domctl_address_size", "domctl.h", (F("size", u32),), family="domctl")

DOMCTL = Decl(
    "xen_domctl",
    "domctl.h",
    (
        F("cmd", u32),
        F("interface_version", u32),
        F("domain", u16),
        F("_pad", Array(u16, 3)),
        F(
            "u",
            Union(
                (
                    F("createdomain", CREATEDOMAIN),
                    F("getdomaininfo", GETDOMAININFO),
                    F("vcpuaffinity", VCPUAFFINITY),
                    F("max_mem", MAX_MEM),
                    F("vcpucontext", VCPUCONTEXT),
                    F("getvcpuinfo", GETVCPUINFO),
                    F("max_vcpus", MAX_VCPUS),
                    F("hypercall_init", HYPERCALL_INIT),
                    F("settimeoffset", SETTIMEOFFSET),
                    F("address_size", ADDRESS_SIZE),
                ),
                size=128,
            ),
        ),
    ),
    family="domctl",
    doc="The domctl hypercall argument: command, interface version, target domain, per-command payload.",
)

constants_registry().extend(
    [
        Constants(DomctlCmd, "XEN_DOMCTL_", "domctl.h"),
        Constants(CreateFlag, "XEN_DOMCTL_CDF_", "domctl.h"),
        Constants(DomInfoFlag, "XEN_DOMINF_", "domctl.h"),
        Constants(DomInfoShutdown, "XEN_DOMINF_", "domctl.h"),
        Constants(VcpuAffinityFlag, "XEN_VCPUAFFINITY_", "domctl.h"),
    ]
)

#: Which union member of ``struct xen_domctl`` carries each command's payload (None: no payload).
_PAYLOAD: dict[DomctlCmd, Decl | None] = {
    DomctlCmd.createdomain: CREATEDOMAIN,
    DomctlCmd.destroydomain: None,
    DomctlCmd.pausedomain: None,
    DomctlCmd.unpausedomain: None,
    DomctlCmd.resumedomain: None,
    DomctlCmd.getdomaininfo: GETDOMAININFO,
    DomctlCmd.setvcpuaffinity: VCPUAFFINITY,
    DomctlCmd.getvcpuaffinity: VCPUAFFINITY,
    DomctlCmd.max_mem: MAX_MEM,
    DomctlCmd.setvcpucontext: VCPUCONTEXT,
    DomctlCmd.getvcpucontext: VCPUCONTEXT,
    DomctlCmd.getvcpuinfo: GETVCPUINFO,
    DomctlCmd.max_vcpus: MAX_VCPUS,
    DomctlCmd.hypercall_init: HYPERCALL_INIT,
    DomctlCmd.settimeoffset: SETTIMEOFFSET,
    DomctlCmd.set_address_size: ADDRESS_SIZE,
    DomctlCmd.get_address_size: ADDRESS_SIZE,
}


def payload_member(cmd: DomctlCmd) -> Decl | None:
    """The record in ``xen_domctl.u`` that ``cmd`` reads and writes."""
    return _PAYLOAD[cmd]
