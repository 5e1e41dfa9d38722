"""The simulated hypervisor: Xen 4.17's answers to the hypercalls xenpure issues.

Rule 1: it sees only what real Xen sees, a hypercall number and raw argument addresses, reads and writes
argument memory through the simulated kernel's address table, decodes with the very declarations the
client encodes with, and answers with Xen's errno (ESRCH for a missing domain, EACCES for a wrong interface
version, EEXIST, EINVAL, EPERM, EFAULT for a bad address, ENOSYS for what it does not model).
"""

from __future__ import annotations

import errno
import functools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..hypercall._layout import Iface, Layout
from ..hypercall.abi import release
from ..hypercall.abi.arch_x86 import VCPU_GUEST_CONTEXT
from ..hypercall.abi.domctl import (
    DOMCTL,
    GETDOMAININFO,
    CreateFlag,
    DomctlCmd,
    DomInfoFlag,
    DomInfoShutdown,
    payload_member,
)
from ..hypercall.abi.sched import SCHED_REMOTE_SHUTDOWN, SchedOp, ShutdownReason
from ..hypercall.abi.sysctl import SYSCTL, PhysCap, SysctlCmd, sysctl_member
from ..hypercall.abi.version import (
    CAPABILITIES_INFO_LEN,
    CHANGESET_INFO_LEN,
    EXTRAVERSION_LEN,
    XenVer,
)
from ..hypercall.abi.xen import DOMID_FIRST_RESERVED, Hypercall

__all__ = ["GuestMemory", "SimDomain", "SimVcpu", "SimXen"]

PAGE = 4096


class GuestMemory(Protocol):
    """How the hypervisor reaches the caller's memory: the simulated kernel's address table."""

    def resolve(self, address: int, length: int) -> memoryview:
        """A view of ``length`` bytes at ``address``; raises OSError(EFAULT) if any byte is unmapped."""
        ...


class XenErrno(Exception):
    """A hypercall's -errno answer inside the simulator (turned into OSError by the simulated driver)."""

    def __init__(self, err: int, why: str = "") -> None:
        super().__init__(err, why)
        self.errno = err


@dataclass
class SimVcpu:
    online: bool = True
    cpu_time_ns: int = 0
    cpu: int = 0
    context: bytes = b""


@dataclass
class SimDomain:
    """A domain as the simulated hypervisor keeps it."""

    domid: int
    handle: uuid.UUID = field(default_factory=uuid.uuid4)
    tot_pages: int = 0
    max_pages: int = 0
    vcpus: list[SimVcpu] = field(default_factory=list)
    max_vcpus: int = 0
    pause_count: int = 0
    shutdown_code: int | None = None
    dying: bool = False
    hvm: bool = False
    ssidref: int = 0
    cpupool: int = 0
    time_offset: int = 0
    address_size: int = 64
    flags: int = 0
    blocked: bool = True
    destroy_calls: int = 0

    @property
    def paused(self) -> bool:
        return self.pause_count > 0

    def flag_word(self) -> int:
        f = DomInfoFlag(0)
        if self.dying:
            f |= DomInfoFlag.dying
        if self.hvm:
            f |= DomInfoFlag.hvm_guest
        if self.shutdown_code is not None:
            f |= DomInfoFlag.shutdown
        if self.paused:
            f |= DomInfoFlag.paused
        elif self.shutdown_code is None and self.vcpus:
            f |= DomInfoFlag.blocked if self.blocked else DomInfoFlag.running
        word = int(f)
        if self.shutdown_code is not None:
            word |= (self.shutdown_code & DomInfoShutdown.shutdownmask) << DomInfoShutdown.shutdownshift
        return word


class SimXen:
    """The hypervisor state: domains, host memory and CPUs, the console ring.

    ``tamper``, if set, may rewrite a reply's bytes before the caller sees them (``tamper(subop, data)``),
    so tests can feed the client malformed or oversized answers through the real decode path.
    """

    def __init__(self, release_name: str = "4.17", *, nr_cpus: int = 2, total_mib: int = 2048) -> None:
        self.release = release(release_name)
        self.iface: Iface = self.release.iface
        major, minor = (int(x) for x in release_name.split("."))
        self.major, self.minor, self.extra = major, minor, ".0-sim"
        self.capabilities = "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"
        self.changeset = "xenpure simulated hypervisor"
        self.nr_cpus = nr_cpus
        self.total_pages = total_mib * 1024 // 4
        self.cpu_khz = 2_400_000
        self.physcaps = PhysCap.hvm | PhysCap.pv | PhysCap.hap | PhysCap.shadow | PhysCap.gnttab_v1
        self.console = bytearray(b"(XEN) Xen version 4.17.0-sim (xenpure simulated hypervisor)\n")
        self.domains: dict[int, SimDomain] = {}
        self.lock = threading.RLock()
        self.tamper: Callable[[str, bytes], bytes] | None = None
        #: ``hook(event, domain)`` for "shutdown" and "destroyed": the models of other subsystems (event
        #: channels raise VIRQ_DOM_EXC, grant tables drop the domain's entries) follow domains from here.
        self.domain_hooks: list[Callable[[str, SimDomain], None]] = []
        #: How many times XEN_DOMCTL_destroydomain answers EAGAIN ("still tearing down, call again") before
        #: it completes, per domain; 0 (the default) completes at once. Toolstacks retry on EAGAIN.
        self.destroy_preemptions = 0
        self._last_domid = 0
        dom0 = self.add_domain(0, memory_mib=1024, vcpus=nr_cpus)
        dom0.handle = uuid.UUID(int=0)  # dom0 is built by Xen itself, with a zero handle
        dom0.blocked = False
        dom0.max_pages = dom0.tot_pages  # as with dom0_mem=1024M,max:1024M (the lab's command line)
        self.guests: dict[int, Any] = {}

    # -- toolstack-side helpers (what tests and the simulated kernel call directly) ----------------------
    def add_domain(self, domid: int | None = None, *, memory_mib: int = 64, vcpus: int = 1) -> SimDomain:
        """Create a domain directly (as if another toolstack had built it)."""
        with self.lock:
            if domid is None:
                domid = self._free_domid()
            d = SimDomain(domid, tot_pages=memory_mib * 256, max_pages=memory_mib * 256, max_vcpus=vcpus)
            d.vcpus = [SimVcpu(cpu=i % self.nr_cpus) for i in range(vcpus)]
            self.domains[domid] = d
            return d

    def add_guest(
        self, name: str, *, memory_mib: int = 128, vcpus: int = 1, listens: bool = True, obeys: bool = True
    ) -> SimDomain:
        """A running PV guest as ``xl create`` leaves it: a domain, its xenstore entries (introduced), a
        console ring with boot lines, and a kernel that answers control/shutdown (see ``_guest.SimGuest``)."""
        from ._guest import SimGuest

        with self.lock:
            d = self.add_domain(memory_mib=memory_mib, vcpus=vcpus)
            self.guests[d.domid] = SimGuest(self, d, name, listens=listens, obeys=obeys)
            return d

    def shutdown_domain(self, d: SimDomain, reason: int) -> None:
        """``d`` enters the shutdown state with ``reason`` (its own SCHEDOP_shutdown, or a remote one)."""
        d.shutdown_code = reason
        self._domain_event("shutdown", d)

    @functools.cached_property
    def xenstored(self) -> Any:
        """The simulated xenstored (``_xenstored.SimXenstored``), seeded with Domain-0's entries. It fires
        @releaseDomain as domains shut down and die, as xenstored does on VIRQ_DOM_EXC."""
        from ._xenstored import SimXenstored

        store = SimXenstored()
        store.write("/local/domain/0/name", "Domain-0")
        store.write("/local/domain/0/domid", "0")

        def follow(event: str, d: SimDomain) -> None:
            if event == "destroyed":
                guest = self.guests.pop(d.domid, None)
                if guest is not None:
                    guest.close()
                store.release(d.domid)
            else:
                store.domain_changed(d.domid)

        self.domain_hooks.append(follow)
        return store

    @property
    def free_pages(self) -> int:
        used = sum(d.tot_pages for d in self.domains.values())
        return max(0, self.total_pages - used)

    def _free_domid(self) -> int:
        # As Xen allocates them: the next id after the last one handed out (wrapping, skipping ids in use),
        # so a destroyed domain's id is not reused at once (a restarted guest gets a new domid).
        for step in range(1, DOMID_FIRST_RESERVED):
            candidate = (self._last_domid + step - 1) % (DOMID_FIRST_RESERVED - 1) + 1
            if candidate not in self.domains:
                self._last_domid = candidate
                return candidate
        raise XenErrno(errno.ENOMEM, "no free domain id")

    def _domain(self, domid: int) -> SimDomain:
        d = self.domains.get(domid)
        if d is None:
            raise XenErrno(errno.ESRCH, f"no domain {domid}")
        return d

    # -- the hypercall entry point -----------------------------------------------------------------------
    def hypercall(self, mem: GuestMemory, op: int, args: list[int], *, privileged: bool = True) -> int:
        """Execute hypercall ``op``; return its result or raise ``XenErrno``."""
        with self.lock:
            if op == Hypercall.xen_version:
                return self._xen_version(mem, args[0], args[1])
            if op == Hypercall.domctl:
                return self._domctl(mem, args[0], privileged)
            if op == Hypercall.sysctl:
                return self._sysctl(mem, args[0], privileged)
            if op == Hypercall.sched_op:
                return self._sched_op(mem, args[0], args[1], privileged)
            if op == Hypercall.event_channel_op:
                return int(self.evtchn.hypercall(mem, args, privileged))
            if op == Hypercall.grant_table_op:
                return int(self.gnttab.hypercall(mem, args, privileged))
            if op == Hypercall.memory_op:
                if args[0] in self.build.MEMORY_OPS:
                    return int(self.build.memory_op(mem, args, privileged))
                return int(self.memory.hypercall(mem, args, privileged))
            if op == Hypercall.mmuext_op:
                return int(self.build.mmuext_op(mem, args, privileged))
            raise XenErrno(errno.ENOSYS, f"hypercall {op} is not simulated")

    # -- subsystems modelled in their own modules, created on first use --------------------------------
    @functools.cached_property
    def evtchn(self) -> Any:
        """Event channels (``_evtchn.SimEventChannels``): ports, bindings, pending and mask bits."""
        from ._evtchn import SimEventChannels

        return SimEventChannels(self)

    @functools.cached_property
    def gnttab(self) -> Any:
        """Grant tables (``_gnttab.SimGrantTables``): entries, flags, map counts."""
        from ._gnttab import SimGrantTables

        return SimGrantTables(self)

    @functools.cached_property
    def memory(self) -> Any:
        """Machine memory (``_memory.SimMemory``): frames behind real shared pages, each domain's p2m."""
        from ._memory import SimMemory

        return SimMemory(self)

    @functools.cached_property
    def build(self) -> Any:
        """PV domain building (``_build.SimBuild``): populate_physmap, page-table pinning, vcpu contexts, and
        what a built guest would see (``guest_view``)."""
        from ._build import SimBuild

        return SimBuild(self)

    def _domain_event(self, event: str, d: SimDomain) -> None:
        for hook in list(self.domain_hooks):
            hook(event, d)

    def _reply(self, subop: str, view: memoryview, data: bytes) -> None:
        if self.tamper is not None:
            data = self.tamper(subop, data)
        view[: len(data)] = data

    # xen_version --------------------------------------------------------------------------------------
    def _xen_version(self, mem: GuestMemory, cmd: int, addr: int) -> int:
        if cmd == XenVer.version:
            return (self.major << 16) | self.minor
        strings = {
            XenVer.extraversion: (self.extra, EXTRAVERSION_LEN),
            XenVer.capabilities: (self.capabilities, CAPABILITIES_INFO_LEN),
            XenVer.changeset: (self.changeset, CHANGESET_INFO_LEN),
        }
        if cmd in strings:
            text, size = strings[XenVer(cmd)]
            self._reply(XenVer(cmd).name, mem.resolve(addr, size), text.encode().ljust(size, b"\0")[:size])
            return 0
        if cmd == XenVer.pagesize:
            return PAGE
        raise XenErrno(errno.ENOSYS, f"XENVER {cmd}")

    # domctl -------------------------------------------------------------------------------------------
    def _domctl(self, mem: GuestMemory, addr: int, privileged: bool) -> int:
        lay = DOMCTL.layout(self.iface)
        view = mem.resolve(addr, lay.size)
        # Xen reads the fixed header first: the interface version decides how to read the rest.
        version = int.from_bytes(view[4:8], "little")
        if version != self.iface.domctl:
            raise XenErrno(errno.EACCES, f"domctl interface {version:#x}, expected {self.iface.domctl:#x}")
        if not privileged:
            raise XenErrno(errno.EPERM, "domctl from an unprivileged domain")
        cmd_no = int.from_bytes(view[0:4], "little")
        domid = int.from_bytes(view[lay.offsets["domain"] : lay.offsets["domain"] + 2], "little")
        try:
            cmd = DomctlCmd(cmd_no)
        except ValueError:
            raise XenErrno(errno.ENOSYS, f"domctl {cmd_no}") from None
        member = payload_member(cmd)
        u_off = lay.offsetof("u")
        mlay = member.layout(self.iface) if member is not None else None
        req = mlay.parse(view[u_off : u_off + mlay.size]) if mlay is not None else None
        handler = getattr(self, f"_domctl_{cmd.name}", None)
        if handler is None:
            raise XenErrno(errno.ENOSYS, f"domctl {cmd.name} is not simulated")
        result = handler(mem, domid, req, view)
        if mlay is not None and result is not None:
            self._reply(cmd.name, view[u_off:], mlay.build(result))
        return 0

    def _domctl_getdomaininfo(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> dict[str, Any]:
        return self._info_record(self._domain(domid))

    def _info_record(self, d: SimDomain) -> dict[str, Any]:
        online = [v for v in d.vcpus if v.online]
        return {
            "domain": d.domid,
            "flags": d.flag_word(),
            "tot_pages": d.tot_pages,
            "max_pages": d.max_pages,
            "shared_info_frame": self.build.shared_info_frame(d.domid),
            "cpu_time": sum(v.cpu_time_ns for v in d.vcpus),
            "nr_online_vcpus": len(online),
            "max_vcpu_id": len(d.vcpus) - 1 if d.vcpus else 0xFFFFFFFF,
            "ssidref": d.ssidref,
            "handle": d.handle.bytes,
            "cpupool": d.cpupool,
            "gpaddr_bits": 52 if d.hvm else 0,
        }

    def _domctl_createdomain(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> dict[str, Any]:
        known = int(CreateFlag.hvm | CreateFlag.hap | CreateFlag.s3_integrity | CreateFlag.oos_off
                    | CreateFlag.xs_domain | CreateFlag.iommu | CreateFlag.nested_virt | CreateFlag.vpmu)
        if req.flags & ~known:
            raise XenErrno(errno.EINVAL, f"unknown createdomain flags {req.flags:#x}")
        if req.max_vcpus == 0 or req.max_vcpus > 128:
            raise XenErrno(errno.EINVAL, f"max_vcpus {req.max_vcpus}")
        if 0 < domid < DOMID_FIRST_RESERVED:
            if domid in self.domains:
                raise XenErrno(errno.EEXIST, f"domain {domid} exists")
        else:
            domid = self._free_domid()
        d = SimDomain(domid, handle=uuid.UUID(bytes=bytes(req.handle)), max_vcpus=req.max_vcpus)
        d.hvm = bool(req.flags & CreateFlag.hvm)
        d.ssidref = req.ssidref
        d.cpupool = req.cpupool_id
        d.pause_count = 1  # a new domain starts paused until the toolstack unpauses it
        self.domains[domid] = d
        view[8:10] = domid.to_bytes(2, "little")  # domctl.domain is IN/OUT
        return dict(req)

    def _domctl_destroydomain(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> None:
        d = self._domain(domid)
        if domid == 0:
            raise XenErrno(errno.EINVAL, "domain 0 cannot be destroyed")
        d.dying = True
        d.destroy_calls += 1
        if d.destroy_calls <= self.destroy_preemptions:
            raise XenErrno(errno.EAGAIN, "the domain is still being torn down: call again")
        del self.domains[domid]
        self._domain_event("destroyed", d)

    def _domctl_pausedomain(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> None:
        d = self._domain(domid)
        if domid == 0:
            raise XenErrno(errno.EINVAL, "a domain cannot pause itself")
        if d.dying:
            raise XenErrno(errno.EINVAL, "domain is dying")
        d.pause_count += 1

    def _domctl_unpausedomain(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> None:
        d = self._domain(domid)
        if d.pause_count == 0:
            raise XenErrno(errno.EINVAL, "domain is not paused by the controller")
        d.pause_count -= 1

    def _domctl_max_mem(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> None:
        self._domain(domid).max_pages = req.max_memkb // 4

    def _domctl_max_vcpus(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> None:
        d = self._domain(domid)
        if req.max > d.max_vcpus and d.max_vcpus:
            raise XenErrno(errno.EINVAL, f"max_vcpus {req.max} above createdomain's {d.max_vcpus}")
        while len(d.vcpus) < req.max:
            d.vcpus.append(SimVcpu(cpu=len(d.vcpus) % self.nr_cpus))

    def _domctl_getvcpuinfo(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> dict[str, Any]:
        d = self._domain(domid)
        if req.vcpu >= len(d.vcpus):
            raise XenErrno(errno.EINVAL if req.vcpu < d.max_vcpus else errno.ENOENT, f"vcpu {req.vcpu}")
        v = d.vcpus[req.vcpu]
        running = not d.paused and d.shutdown_code is None and not d.blocked
        return {"vcpu": req.vcpu, "online": v.online, "blocked": not running and d.blocked,
                "running": running, "cpu_time": v.cpu_time_ns, "cpu": v.cpu}

    def _domctl_getvcpucontext(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> None:
        d = self._domain(domid)
        if req.vcpu >= len(d.vcpus):
            raise XenErrno(errno.ESRCH if req.vcpu < d.max_vcpus else errno.EINVAL, f"vcpu {req.vcpu}")
        size = VCPU_GUEST_CONTEXT.layout().size
        if req.ctxt:  # a NULL handle only checks the vcpu exists
            mem.resolve(req.ctxt, size)[:] = d.vcpus[req.vcpu].context.ljust(size, b"\0")[:size]

    def _domctl_setvcpucontext(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> None:
        self.build.setvcpucontext(mem, domid, req)

    def _domctl_hypercall_init(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> None:
        self.build.hypercall_init(domid, int(req.gmfn))

    def _domctl_settimeoffset(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> None:
        self._domain(domid).time_offset = req.time_offset_seconds

    def _domctl_set_address_size(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> None:
        if req.size not in (32, 64):
            raise XenErrno(errno.EINVAL, f"address size {req.size}")
        self._domain(domid).address_size = req.size

    def _domctl_get_address_size(self, mem: GuestMemory, domid: int, req: Any, view: memoryview) -> dict[str, Any]:
        return {"size": self._domain(domid).address_size}

    # sysctl -------------------------------------------------------------------------------------------
    def _sysctl(self, mem: GuestMemory, addr: int, privileged: bool) -> int:
        lay = SYSCTL.layout(self.iface)
        view = mem.resolve(addr, lay.size)
        version = int.from_bytes(view[4:8], "little")
        if version != self.iface.sysctl:
            raise XenErrno(errno.EACCES, f"sysctl interface {version:#x}, expected {self.iface.sysctl:#x}")
        if not privileged:
            raise XenErrno(errno.EPERM, "sysctl from an unprivileged domain")
        try:
            cmd = SysctlCmd(int.from_bytes(view[0:4], "little"))
        except ValueError:
            raise XenErrno(errno.ENOSYS, "sysctl command not simulated") from None
        member = sysctl_member(cmd)
        assert member is not None
        mlay = member.layout(self.iface)
        u_off = lay.offsetof("u")
        req = mlay.parse(view[u_off : u_off + mlay.size])
        result = getattr(self, f"_sysctl_{cmd.name}")(mem, req)
        self._reply(cmd.name, view[u_off:], mlay.build(result))
        return 0

    def _sysctl_physinfo(self, mem: GuestMemory, req: Any) -> dict[str, Any]:
        return {
            "threads_per_core": 1,
            "cores_per_socket": self.nr_cpus,
            "nr_cpus": self.nr_cpus,
            "max_cpu_id": self.nr_cpus - 1,
            "nr_nodes": 1,
            "max_node_id": 0,
            "cpu_khz": self.cpu_khz,
            "capabilities": int(self.physcaps),
            "total_pages": self.total_pages,
            "free_pages": self.free_pages,
            "max_mfn": self.total_pages - 1,
        }

    def _sysctl_getdomaininfolist(self, mem: GuestMemory, req: Any) -> dict[str, Any]:
        lay: Layout = GETDOMAININFO.layout(self.iface)
        chosen = sorted(d for d in self.domains if d >= req.first_domain)[: req.max_domains]
        out = mem.resolve(req.buffer, lay.size * len(chosen)) if chosen else None
        for i, domid in enumerate(chosen):
            assert out is not None
            self._reply("getdomaininfolist", out[i * lay.size :], lay.build(self._info_record(self.domains[domid])))
        return dict(req, num_domains=len(chosen))

    def _sysctl_readconsole(self, mem: GuestMemory, req: Any) -> dict[str, Any]:
        start = req.index if req.incremental else 0
        data = bytes(self.console[start : start + req.count])
        if data:
            mem.resolve(req.buffer, len(data))[:] = data
        if req["clear"]:  # not req.clear: a parsed Container is a dict, and dict.clear would shadow it
            self.console.clear()
        return dict(req, count=len(data), index=start + len(data))

    # sched_op ----------------------------------------------------------------------------------------
    def _sched_op(self, mem: GuestMemory, cmd: int, addr: int, privileged: bool) -> int:
        if cmd != SchedOp.remote_shutdown:
            raise XenErrno(errno.ENOSYS, f"SCHEDOP {cmd}")
        if not privileged:
            raise XenErrno(errno.EPERM, "remote_shutdown from an unprivileged domain")
        lay = SCHED_REMOTE_SHUTDOWN.layout()
        req = lay.parse(mem.resolve(addr, lay.size))
        d = self._domain(req.domain_id)
        if req.reason > max(ShutdownReason):
            raise XenErrno(errno.EINVAL, f"shutdown reason {req.reason}")
        if d.domid == 0:
            raise XenErrno(errno.EINVAL, "dom0 cannot be remotely shut down")
        self.shutdown_domain(d, req.reason)
        return 0
