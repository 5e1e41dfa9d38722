"""Typed results of the public API: frozen dataclasses built from decoded hypercall records.

Rule 1: a result is a snapshot; it never talks to Xen. Each ``from_*`` constructor is the single place a raw
record becomes a result, and it keeps Xen's units visible in the field names (``_kib``, ``_ns``, pages).
"""

from __future__ import annotations

import enum
import functools
import uuid
from dataclasses import dataclass
from typing import Any

from ..hypercall.abi.domctl import DomInfoFlag, DomInfoShutdown
from ..hypercall.abi.sched import ShutdownReason
from ..hypercall.abi.sysctl import PhysCap

__all__ = ["DomainInfo", "DomainState", "PhysInfo", "VcpuInfo", "XenVersion"]

PAGE_KIB = 4


@dataclass(frozen=True)
class XenVersion:
    """The hypervisor's version: ``XENVER_version``, ``_extraversion``, ``_capabilities``, ``_changeset``."""

    major: int
    minor: int
    extra: str
    capabilities: str = ""
    changeset: str = ""

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}{self.extra}"


@dataclass(frozen=True)
class PhysInfo:
    """The host, from ``XEN_SYSCTL_physinfo``. Memory is in pages of 4 KiB, as Xen counts it."""

    threads_per_core: int
    cores_per_socket: int
    nr_cpus: int
    max_cpu_id: int
    nr_nodes: int
    max_node_id: int
    cpu_khz: int
    capabilities: PhysCap
    total_pages: int
    free_pages: int
    scrub_pages: int
    outstanding_pages: int
    max_mfn: int

    @classmethod
    def from_record(cls, r: Any) -> PhysInfo:
        return cls(
            threads_per_core=r.threads_per_core,
            cores_per_socket=r.cores_per_socket,
            nr_cpus=r.nr_cpus,
            max_cpu_id=r.max_cpu_id,
            nr_nodes=r.nr_nodes,
            max_node_id=r.max_node_id,
            cpu_khz=r.cpu_khz,
            capabilities=PhysCap(r.capabilities),
            total_pages=r.total_pages,
            free_pages=r.free_pages,
            scrub_pages=r.scrub_pages,
            outstanding_pages=r.outstanding_pages,
            max_mfn=r.max_mfn,
        )

    @property
    def total_memory_mib(self) -> int:
        return self.total_pages * PAGE_KIB // 1024

    @property
    def free_memory_mib(self) -> int:
        return self.free_pages * PAGE_KIB // 1024

    @property
    def virt_caps(self) -> tuple[str, ...]:
        """The capability flags in bit order, spelled as ``xl info`` prints them (``gnttab-v1``)."""
        return tuple(str(f.name).replace("gnttab_v", "gnttab-v") for f in PhysCap if f in self.capabilities)


_SHUTDOWN_SHIFT = int(DomInfoShutdown.shutdownshift)
_SHUTDOWN_MASK = int(DomInfoShutdown.shutdownmask)
_FLAG_BITS = (1 << _SHUTDOWN_SHIFT) - 1


@functools.lru_cache(maxsize=256)
def _dominf_flags(bits: int) -> DomInfoFlag:
    """``DomInfoFlag(bits)``, remembered: a host shows a handful of flag combinations, and building an
    ``IntFlag`` costs more than the rest of a record's decoding."""
    return DomInfoFlag(bits)


@functools.lru_cache(maxsize=1024)
def _uuid_of(handle: bytes) -> uuid.UUID:
    """The UUID of a domain handle, remembered (``UUID`` is immutable): listings see the same domains again
    and again."""
    return uuid.UUID(bytes=handle)


class DomainState(enum.Enum):
    """One word for a domain's state, most significant first (dying > crashed > shutdown > paused > ...).

    ``DomainInfo.flags`` keeps every flag when more than one applies (a paused, blocked domain).
    """

    DYING = "dying"
    CRASHED = "crashed"
    SHUTDOWN = "shutdown"
    PAUSED = "paused"
    RUNNING = "running"
    BLOCKED = "blocked"
    #: None of running/blocked/paused is set: runnable, waiting for a physical CPU.
    RUNNABLE = "runnable"


@dataclass(frozen=True)
class DomainInfo:
    """One domain, from ``XEN_DOMCTL_getdomaininfo`` (or one entry of ``XEN_SYSCTL_getdomaininfolist``)."""

    domid: int
    flags: DomInfoFlag
    shutdown_code: int
    tot_pages: int
    max_pages: int
    shared_info_frame: int
    cpu_time_ns: int
    online_vcpus: int
    max_vcpu_id: int
    ssidref: int
    uuid: uuid.UUID
    cpupool: int
    gpaddr_bits: int
    #: xenstore ``/local/domain/<id>/name``: filled by ``Domain.info()``; ``None`` in batch listings
    #: (``Host.domain_infos``, event snapshots), which ask xenstore nothing, and for a domain without one.
    name: str | None = None

    @classmethod
    def from_record(cls, r: Any) -> DomainInfo:
        # Members by subscript: a decoded record is a dict, and construct's attribute access costs a Python
        # call per member (this runs for every domain of every listing, and every event snapshot).
        raw = int(r["flags"])
        return cls(
            domid=r["domain"],
            flags=_dominf_flags(raw & _FLAG_BITS),
            shutdown_code=(raw >> _SHUTDOWN_SHIFT) & _SHUTDOWN_MASK,
            tot_pages=r["tot_pages"],
            max_pages=r["max_pages"],
            shared_info_frame=r["shared_info_frame"],
            cpu_time_ns=r["cpu_time"],
            online_vcpus=r["nr_online_vcpus"],
            max_vcpu_id=r["max_vcpu_id"],
            ssidref=r["ssidref"],
            uuid=_uuid_of(bytes(r["handle"])),
            cpupool=r["cpupool"],
            gpaddr_bits=r["gpaddr_bits"],
        )

    # -- flags ------------------------------------------------------------------------------------------
    @property
    def dying(self) -> bool:
        return DomInfoFlag.dying in self.flags

    @property
    def hvm(self) -> bool:
        return DomInfoFlag.hvm_guest in self.flags

    @property
    def shutdown(self) -> bool:
        return DomInfoFlag.shutdown in self.flags

    @property
    def paused(self) -> bool:
        return DomInfoFlag.paused in self.flags

    @property
    def blocked(self) -> bool:
        return DomInfoFlag.blocked in self.flags

    @property
    def running(self) -> bool:
        return DomInfoFlag.running in self.flags

    @property
    def crashed(self) -> bool:
        return self.shutdown and self.shutdown_code == ShutdownReason.crash

    @property
    def shutdown_reason(self) -> ShutdownReason | int | None:
        """Why the domain shut down, or None while it has not. Unknown codes stay plain ints."""
        if not self.shutdown:
            return None
        try:
            return ShutdownReason(self.shutdown_code)
        except ValueError:
            return self.shutdown_code

    @property
    def state(self) -> DomainState:
        if self.dying:
            return DomainState.DYING
        if self.crashed:
            return DomainState.CRASHED
        if self.shutdown:
            return DomainState.SHUTDOWN
        if self.paused:
            return DomainState.PAUSED
        if self.running:
            return DomainState.RUNNING
        if self.blocked:
            return DomainState.BLOCKED
        return DomainState.RUNNABLE

    @property
    def state_letters(self) -> str:
        """The six-letter state column ``xl list`` prints: r b p s c d, or ``-`` for each flag not set."""
        bits = (
            ("r", self.running),
            ("b", self.blocked),
            ("p", self.paused),
            ("s", self.shutdown and not self.crashed),
            ("c", self.crashed),
            ("d", self.dying),
        )
        return "".join(ch if on else "-" for ch, on in bits)

    # -- memory -----------------------------------------------------------------------------------------
    @property
    def memory_kib(self) -> int:
        return self.tot_pages * PAGE_KIB

    @property
    def max_memory_kib(self) -> int:
        return self.max_pages * PAGE_KIB


@dataclass(frozen=True)
class VcpuInfo:
    """One virtual CPU, from ``XEN_DOMCTL_getvcpuinfo``."""

    vcpu: int
    online: bool
    blocked: bool
    running: bool
    cpu_time_ns: int
    cpu: int

    @classmethod
    def from_record(cls, r: Any) -> VcpuInfo:
        return cls(r.vcpu, bool(r.online), bool(r.blocked), bool(r.running), r.cpu_time, r.cpu)
