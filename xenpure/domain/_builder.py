"""Building a 64-bit PV domain from Python: the hypercall sequence, with rollback.

Rule 1: every step is named, and a failure at any step undoes every earlier one -- xenstored forgets the
domain, its xenstore entries are removed, its event channels are closed (EVTCHNOP_reset), the domain is
destroyed -- before ``BuildError`` (naming the step and the cause) leaves. Everything that can be checked
without Xen (the config, the kernel, the layout) is checked before the first hypercall, so a broken kernel
never creates a domain.

The sequence (each a step name in ``BuildError`` and in the ``on_step`` trace)::

    load kernel        read + check the kernel (and the ramdisk size); plan the layout
    createdomain       XEN_DOMCTL_createdomain: a PV domain (no CDF_hvm), paused, with its vcpu, event
                       channel and grant table limits
    max_vcpus          XEN_DOMCTL_max_vcpus
    max_mem            XEN_DOMCTL_max_mem (maxmem, in KiB)
    address_size       XEN_DOMCTL_set_address_size 64: a 64-bit PV guest
    memory map         XENMEM_set_memory_map: one E820 RAM entry [0, maxmem), so the guest's balloon can grow
                       to maxmem (without it Xen 4.17 gave the lab's guest memory + 8 MiB)
    populate_physmap   XENMEM_populate_physmap of every pfn, in 2 MiB extents where Xen finds them (single
                       pages for the rest); Xen answers each extent's first MFN (the p2m)
    event channels     EVTCHNOP_alloc_unbound twice in the guest, for dom0: xenstore and console
    load memory        PRIVCMD_MMAPBATCH_V2 of the guest's frames; copy in the kernel, ramdisk, p2m list
                       (at INIT_P2M when the kernel asks), start_info, zeroed ring pages, page tables and
                       stack; unmap (Xen will not pin a table that dom0 still maps writable)
    hypercall page     only for a kernel with a HYPERCALL_PAGE note: XEN_DOMCTL_hypercall_init of that
                       page's MFN; Xen writes its hypercall stubs there (after the kernel's bytes are in)
    shared info        map the shared info page; mask event upcalls on every vcpu slot
    pin page tables    MMUEXT_PIN_L4_TABLE on the L4 (Xen validates every level; nothing maps a table RW)
    grant table        IOCTL_PRIVCMD_MMAP_RESOURCE of grant table frame 0 (else GNTTABOP_setup_table's frame
                       mapped with MMAPBATCH_V2); entries GNTTAB_RESERVED_CONSOLE and GNTTAB_RESERVED_XENSTORE
                       grant dom0 the two ring pages
    setvcpucontext     XEN_DOMCTL_setvcpucontext of vcpu 0 (rip, rsp, rsi, cr3)
    xenstore           the toolstack's entries (/local/domain/<id>/..., /vm/<uuid>, /libxl/<id>)
    introduce          XS_INTRODUCE: xenstored maps the ring and serves the guest; xenconsoled sees
                       @introduceDomain and attaches the console

The domain is left paused; ``Domain.start()`` (XEN_DOMCTL_unpausedomain) lets it run.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import XenError
from ..hypercall.abi.arch_x86 import VCPU_GUEST_CONTEXT, XEN_LEGACY_MAX_VCPUS
from ..hypercall.abi.domctl import DomctlCmd
from ..hypercall.abi.grant_table import GRANT_ENTRY_V1, GnttabReserved, GrantType
from ..hypercall.abi.memory import E820_ENTRY, FOREIGN_MEMORY_MAP, MEMORY_RESERVATION, E820Type, MemOp
from ..hypercall.abi.xen import MMUEXT_OP, SHARED_INFO, VCPU_INFO, Hypercall, MmuExtCmd
from ._config import DomainConfig
from ._domain import Domain
from ._kernel_image import KernelImage, load_kernel_file
from ._pvlayout import PAGE, LayoutError, PvLayout, p2m_bytes, page_tables, plan, start_info, vcpu_context

if TYPE_CHECKING:
    from ._host import Host

__all__ = ["BuildError", "BuildReport", "Prepared", "build_pv", "prepare"]

log = logging.getLogger("xenpure.domain.build")

#: Event channel ports a guest may use (createdomain's max_evtchn_port; 2-level ABI limit is 4095).
MAX_EVTCHN_PORT = 1023
#: Grant table and maptrack frames for the guest (createdomain's limits; xl's defaults are 64 and 1024).
MAX_GRANT_FRAMES = 64
MAX_MAPTRACK_FRAMES = 1024
#: The grant table version (XEN_DOMCTL_GRANT_version(1)) in createdomain's grant_opts.
GRANT_VERSION = 1
#: How many pfns one populate_physmap / one foreign mapping covers.
_POPULATE_BATCH = 4096
#: populate_physmap's extent order for the bulk of the guest's memory: 2 MiB superpages.
_SUPERPAGE_ORDER = 9
_MAP_BATCH = 4096
#: The largest ramdisk xenpure loads (it must fit in guest memory anyway).
MAX_RAMDISK_BYTES = 1 << 30


class BuildError(XenError):
    """Building a domain failed at ``step``; ``cause`` is the underlying exception. By the time this is
    raised, everything the build did has been undone (``rolled_back`` says what was, ``leftovers`` what could
    not be)."""

    def __init__(self, name: str, step: str, cause: BaseException, rolled_back: list[str],
                 leftovers: list[str]) -> None:
        self.step = step
        self.cause = cause
        self.rolled_back = rolled_back
        self.leftovers = leftovers
        msg = f"building domain {name!r} failed at step {step!r}: {cause}"
        if rolled_back:
            msg += f" (rolled back: {', '.join(rolled_back)})"
        if leftovers:
            msg += f"; NOT cleaned up: {'; '.join(leftovers)}"
        super().__init__(msg)


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` checked before any hypercall: the kernel, the ramdisk bytes and the layout."""

    config: DomainConfig
    kernel: KernelImage
    ramdisk: bytes
    layout: PvLayout


@dataclass
class _Progress:
    """What a build in progress has made so far (the mutable twin of ``BuildReport``)."""

    domid: int = 0
    steps: list[tuple[str, float]] = field(default_factory=list)
    p2m: list[int] = field(default_factory=list)
    store_evtchn: int = 0
    console_evtchn: int = 0


@dataclass(frozen=True)
class BuildReport:
    """What a build did, for tracing and tests: the domid, the steps run (with seconds each), the layout,
    the p2m (pfn -> mfn) and the xenstore and console event channels (ports of the guest)."""

    domid: int
    steps: tuple[tuple[str, float], ...]
    layout: PvLayout
    p2m: tuple[int, ...]
    store_evtchn: int
    console_evtchn: int


def prepare(config: DomainConfig) -> Prepared:
    """Load and check the kernel and ramdisk and plan the layout: every check that needs no hypervisor.

    Raises ``KernelImageError`` (a broken kernel), ``LayoutError`` (too little memory), ``OSError`` for an
    unreadable ramdisk.
    """
    kernel = load_kernel_file(config.kernel)
    ramdisk = b""
    if config.ramdisk is not None:
        ramdisk = _read_bounded(config.ramdisk, min(MAX_RAMDISK_BYTES, config.nr_pages * PAGE))
    layout = plan(kernel, config.nr_pages, len(ramdisk))
    return Prepared(config, kernel, ramdisk, layout)


def _read_bounded(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise LayoutError(f"ramdisk {path} is {size} bytes, larger than {limit} (the guest's memory)")
        return f.read(size)  # exactly: read(n) would first allocate all n bytes


class _Build:
    """One build in progress: the steps, and the undo actions registered as they succeed."""

    def __init__(self, host: Host, prepared: Prepared, on_step: Callable[[str], None] | None) -> None:
        self.host = host
        self._p: Prepared | None = prepared
        self.config = prepared.config
        self.on_step = on_step
        self.report = _Progress()
        self.undo: list[tuple[str, Callable[[], None]]] = []
        self.step = "start"

    @property
    def p(self) -> Prepared:
        if self._p is None:
            raise RuntimeError("the build is over: its kernel and ramdisk were released")
        return self._p

    def release(self) -> None:
        """Drop the kernel and ramdisk bytes: a failed build's traceback keeps this object alive."""
        self._p = None

    def run(self, name: str, fn: Callable[[], None]) -> None:
        self.step = name
        if self.on_step is not None:
            self.on_step(name)
        t0 = time.monotonic()
        fn()
        self.report.steps.append((name, time.monotonic() - t0))
        log.debug("build %s: %s done in %.3f s", self.config.name, name, time.monotonic() - t0)

    # -- the steps --------------------------------------------------------------------------------------
    @property
    def domid(self) -> int:
        return self.report.domid

    def createdomain(self) -> None:
        cfg = self.config
        payload = {
            "handle": cfg.uuid.bytes,
            "flags": 0,  # PV: no XEN_DOMCTL_CDF_hvm / hap
            "max_vcpus": cfg.vcpus,
            "max_evtchn_port": MAX_EVTCHN_PORT,
            "max_grant_frames": MAX_GRANT_FRAMES,
            "max_maptrack_frames": MAX_MAPTRACK_FRAMES,
            "grant_opts": GRANT_VERSION,
            "cpupool_id": 0,
            "arch": {"emulation_flags": 0, "misc_flags": 0},
        }
        domid, _, _ = self.host._domctl(DomctlCmd.createdomain, 0, payload)
        self.report.domid = domid
        self.undo.append((f"destroyed domain {domid}", self._destroy))

    def _destroy(self) -> None:
        Domain(self.host, self.domid)._destroydomain(timeout=60)

    def max_vcpus(self) -> None:
        self.host._domctl(DomctlCmd.max_vcpus, self.domid, {"max": self.config.vcpus})

    def max_mem(self) -> None:
        self.host._domctl(DomctlCmd.max_mem, self.domid, {"max_memkb": self.config.maxmem_kib})

    def address_size(self) -> None:
        self.host._domctl(DomctlCmd.set_address_size, self.domid, {"size": 64})

    def memory_map(self) -> None:
        lay = FOREIGN_MEMORY_MAP.layout()
        table = E820_ENTRY.pack(0, self.config.maxmem_kib * 1024, int(E820Type.RAM))
        pc = self.host.privcmd
        with pc.buffer(lay.size + len(table)) as buf:
            buf.view[lay.size : lay.size + len(table)] = table
            buf.view[: lay.size] = lay.build(domid=self.domid, map={"nr_entries": 1, "buffer": buf.address + lay.size})
            pc.hypercall(Hypercall.memory_op, int(MemOp.set_memory_map), buf.address, subop="set_memory_map")

    def populate(self) -> None:
        n = self.config.nr_pages
        p2m = [0] * n
        # 2 MiB extents first (Xen allocates them in one go: ~20x faster than 512 single pages in the lab),
        # then single pages for the tail and for any extent Xen could not find contiguous memory for.
        big = n >> _SUPERPAGE_ORDER
        starts = [i << _SUPERPAGE_ORDER for i in range(big)]
        singles: list[int] = []
        for first in range(0, big, _POPULATE_BATCH):
            batch = starts[first : first + _POPULATE_BATCH]
            mfns = self._populate(batch, _SUPERPAGE_ORDER, exact=False)
            for pfn, mfn in zip(batch, mfns, strict=False):
                p2m[pfn : pfn + (1 << _SUPERPAGE_ORDER)] = range(mfn, mfn + (1 << _SUPERPAGE_ORDER))
            for pfn in batch[len(mfns) :]:
                singles.extend(range(pfn, pfn + (1 << _SUPERPAGE_ORDER)))
        singles.extend(range(big << _SUPERPAGE_ORDER, n))
        for first in range(0, len(singles), _POPULATE_BATCH):
            batch = singles[first : first + _POPULATE_BATCH]
            for pfn, mfn in zip(batch, self._populate(batch, 0, exact=True), strict=True):
                p2m[pfn] = mfn
        self.report.p2m = p2m

    def _populate(self, pfns: list[int], order: int, *, exact: bool) -> tuple[int, ...]:
        """XENMEM_populate_physmap of one extent of ``2**order`` pages at each pfn of ``pfns``; the machine frame
        Xen answers for each extent done (a PV guest's pfns are not translated: written back in place). Fewer
        than asked is an error if ``exact``."""
        lay = MEMORY_RESERVATION.layout()
        pc = self.host.privcmd
        count = len(pfns)
        if not count:
            return ()
        with pc.buffer(lay.size + 8 * count) as buf:
            ext = buf.address + lay.size
            buf.view[: lay.size] = lay.build(extent_start=ext, nr_extents=count, extent_order=order, mem_flags=0,
                                             domid=self.domid)
            buf.view[lay.size : lay.size + 8 * count] = struct.pack(f"<{count}Q", *pfns)
            try:
                done = pc.hypercall(Hypercall.memory_op, int(MemOp.populate_physmap), buf.address,
                                    subop="populate_physmap")
            except XenError:
                if exact:
                    raise
                return ()
            if exact and done != count:
                raise XenError(f"populate_physmap gave {done} of {count} pages from pfn {pfns[0]:#x} (out of "
                               "memory?)")
            return struct.unpack(f"<{done}Q", bytes(buf.view[lay.size : lay.size + 8 * done]))

    def event_channels(self) -> None:
        from ..evtchn import EvtchnOps

        ops = EvtchnOps(self.host.privcmd)
        # Ports of the guest that dom0 (xenstored, xenconsoled) may bind. On rollback EVTCHNOP_reset closes
        # every port of the guest before the domain goes (destroying it would close them too).
        self.undo.append(("closed its event channels", lambda: ops.reset(self.domid)))
        self.report.store_evtchn = ops.alloc_unbound(self.domid, 0)
        self.report.console_evtchn = ops.alloc_unbound(self.domid, 0)

    def blobs(self) -> Iterator[tuple[int, bytes | bytearray | KernelImage]]:
        """What the bootstrap writes, as (first pfn, bytes) runs in pfn order; each run is zero-extended to
        whole pages (frames are scrubbed by Xen, but bss and rings must be zero whatever the pattern)."""
        lay = self.p.layout
        p2m = self.report.p2m
        yield lay.kernel.pfn, self.p.kernel  # copied batch by batch straight from the ELF's segments
        if lay.ramdisk is not None:
            yield lay.ramdisk.pfn, self.p.ramdisk
        yield lay.p2m.pfn, p2m_bytes(p2m)
        si = start_info(lay, p2m, shared_info_mfn=self._shared_info_mfn(), store_evtchn=self.report.store_evtchn,
                        console_evtchn=self.report.console_evtchn, cmdline=self.config.cmdline)
        yield lay.start_info.pfn, si.ljust(PAGE, b"\0")
        yield lay.xenstore.pfn, bytes(2 * PAGE)  # the xenstore and console rings, empty
        tables = page_tables(lay, p2m)
        for reg in (lay.page_tables, lay.p2m_tables):
            if reg is not None:
                yield reg.pfn, b"".join(tables[pfn] for pfn in range(reg.pfn, reg.end_pfn))
        yield lay.stack.pfn, bytes(PAGE)

    def _shared_info_mfn(self) -> int:
        _, rec, _ = self.host._domctl(DomctlCmd.getdomaininfo, self.domid)
        return int(rec.shared_info_frame)

    def load_memory(self) -> None:
        from ..foreignmemory import ForeignMemory

        p2m = self.report.p2m
        with ForeignMemory.open(self.host.kernel) as fm:
            for first, data in self.blobs():
                if isinstance(data, KernelImage):
                    pages = data.nr_kernel_pages
                    for i in range(0, pages, _MAP_BATCH):
                        n = min(_MAP_BATCH, pages - i)
                        with fm.map(self.domid, p2m[first + i : first + i + n]) as m:
                            data.copy_into(m.view, i * PAGE)
                    continue
                view = memoryview(data)
                pages = (len(data) + PAGE - 1) // PAGE
                for i in range(0, pages, _MAP_BATCH):
                    n = min(_MAP_BATCH, pages - i)
                    chunk = view[i * PAGE : (i + n) * PAGE]
                    with fm.map(self.domid, p2m[first + i : first + i + n]) as m:
                        m.view[: len(chunk)] = chunk
                        if len(chunk) < n * PAGE:
                            m.view[len(chunk) : n * PAGE] = bytes(n * PAGE - len(chunk))
                    chunk.release()
                view.release()

    def hypercall_page(self) -> None:
        # The note gives the page's virtual address; the bootstrap mapping is 1:1 from VIRT_BASE (pfn 0).
        va = self.p.kernel.hypercall_page
        assert va is not None
        mfn = self.report.p2m[(va - self.p.layout.virt_base) // PAGE]
        self.host._domctl(DomctlCmd.hypercall_init, self.domid, {"gmfn": mfn})

    def shared_info(self) -> None:
        from ..foreignmemory import ForeignMemory

        # A PV kernel starts with event upcalls masked on every vcpu: the shared info page (Xen's page,
        # shared with the guest) is the toolstack's to set up before the first instruction runs.
        lay = SHARED_INFO.layout()
        vi = VCPU_INFO.layout()
        mask_at = vi.offsetof("evtchn_upcall_mask")
        base = lay.offsetof("vcpu_info")
        with ForeignMemory.open(self.host.kernel) as fm, fm.map(self.domid, [self._shared_info_mfn()]) as m:
            for v in range(XEN_LEGACY_MAX_VCPUS):
                m.view[base + v * vi.size + mask_at] = 1

    def pin(self) -> None:
        lay = MMUEXT_OP.layout()
        pc = self.host.privcmd
        l4 = self.report.p2m[self.p.layout.l4_pfn]
        with pc.buffer(lay.size) as buf:
            buf.view[: lay.size] = lay.build(cmd=int(MmuExtCmd.PIN_L4_TABLE), arg1={"mfn": l4})
            # foreigndom: the guest owns the table frames being pinned.
            pc.hypercall(Hypercall.mmuext_op, buf.address, 1, 0, self.domid, subop="PIN_L4_TABLE")

    def grant_table(self) -> None:
        from ..foreignmemory import ForeignMemory

        lay = GRANT_ENTRY_V1.layout()
        p2m, layout = self.report.p2m, self.p.layout
        with ForeignMemory.open(self.host.kernel) as fm, self._map_grant_table(fm) as gt:
            for ref, pfn in ((GnttabReserved.CONSOLE, layout.console.pfn), (GnttabReserved.XENSTORE,
                                                                              layout.xenstore.pfn)):
                off = int(ref) * lay.size
                # Frame and grantee first, then the flags that make the entry valid.
                gt.view[off : off + lay.size] = lay.build(flags=0, domid=0, frame=p2m[pfn])
                gt.view[off : off + 2] = int(GrantType.permit_access).to_bytes(2, "little")

    def _map_grant_table(self, fm: Any) -> Any:
        """Frame 0 of the guest's grant table, writable: XENMEM_acquire_resource (MMAP_RESOURCE) where the
        kernel and Xen offer it, else GNTTABOP_setup_table's frame numbers mapped with MMAPBATCH_V2."""
        from ..errors import HypercallError
        from ..gnttab import GnttabOps

        try:
            return fm.map_grant_table(self.domid, 1, readonly=False)
        except HypercallError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTTY, errno.EINVAL, errno.EPERM,
                               errno.EACCES):
                raise
            log.debug("grant table resource not mappable (%s); mapping setup_table's frames", e)
        frames = GnttabOps(self.host.privcmd).setup_table(self.domid, 1)
        return fm.map(self.domid, frames[:1])

    def setvcpucontext(self) -> None:
        ctx = VCPU_GUEST_CONTEXT.layout()
        fields = vcpu_context(self.p.layout, self.report.p2m)
        # The domctl carries a handle to the context: it lives in a hypercall buffer of its own (the domctl
        # itself takes privcmd's scratch buffer).
        buf = self.host.kernel.alloc_buffer(ctx.size)
        try:
            buf.view[: ctx.size] = ctx.build(fields)
            self.host._domctl(DomctlCmd.setvcpucontext, self.domid, {"vcpu": 0, "ctxt": buf.address})
        finally:
            buf.close()

    def xenstore(self) -> None:
        from ..xenstore import Perm, PermAccess, Request, SetPerms, Write

        cfg, domid, lay = self.config, self.domid, self.p.layout
        xs = self.host.xenstore
        dom = f"/local/domain/{domid}"
        vm = f"/vm/{cfg.uuid}"
        libxl = f"/libxl/{domid}"
        self.undo.append((f"removed {dom}, {vm}, {libxl}", lambda: self._rm_xenstore(dom, vm, libxl)))
        # The permissions xl gives these nodes (observed on 4.17): dom0-owned and guest-readable, or owned by
        # the guest (the owner may always read and write) and invisible to others, or dom0's alone. A
        # directory such as memory/ or console/ is not written on its own: writing its first child creates
        # it, empty, with its parent's permissions, as an explicit empty write would (one request less each).
        ro = (Perm(0, PermAccess.NONE), Perm(domid, PermAccess.READ))
        rw = (Perm(domid, PermAccess.NONE),)
        priv = (Perm(0, PermAccess.NONE),)
        p2m = self.report.p2m
        entries: list[tuple[str, str, tuple[Perm, ...] | None]] = [
            (dom, "", ro),
            (f"{dom}/name", cfg.name, None),
            (f"{dom}/domid", str(domid), None),
            (f"{dom}/vm", vm, None),
            (f"{dom}/memory/static-max", str(cfg.maxmem_kib), None),
            (f"{dom}/memory/target", str(cfg.memory_kib), None),
            (f"{dom}/memory/videoram", "0", None),
            *[(f"{dom}/cpu/{v}/availability", "online", None) for v in range(cfg.vcpus)],
            (f"{dom}/store/port", str(self.report.store_evtchn), None),
            (f"{dom}/store/ring-ref", str(p2m[lay.xenstore.pfn]), None),
            (f"{dom}/console/port", str(self.report.console_evtchn), None),
            (f"{dom}/console/ring-ref", str(p2m[lay.console.pfn]), None),
            (f"{dom}/console/type", "xenconsoled", None),
            (f"{dom}/console/output", "pty", None),
            (f"{dom}/console/limit", "1048576", None),
            (f"{dom}/console/tty", "", None),
            (f"{dom}/control/shutdown", "", rw),
            (f"{dom}/control/sysrq", "", rw),
            (f"{dom}/control/feature-poweroff", "", rw),
            (f"{dom}/control/feature-reboot", "", rw),
            (f"{dom}/control/feature-suspend", "", rw),
            (f"{dom}/control/platform-feature-multiprocessor-suspend", "1", None),
            (f"{dom}/control/platform-feature-xs_reset_watches", "1", None),
            (f"{dom}/data", "", rw),
            (f"{dom}/drivers", "", rw),
            (f"{dom}/feature", "", rw),
            (f"{dom}/attr", "", rw),
            (f"{dom}/error", "", rw),
            (f"{dom}/device", "", ro),
            (f"{dom}/device/suspend", "", ro),
            (f"{dom}/device/suspend/event-channel", "", rw),
            (vm, "", ro),
            (f"{vm}/name", cfg.name, None),
            (f"{vm}/uuid", str(cfg.uuid), None),
            (f"{vm}/start_time", f"{time.time():.2f}", None),
            (f"{vm}/image/ostype", "linux", None),
            (f"{vm}/image/kernel", str(cfg.kernel), None),
            (f"{vm}/image/ramdisk", str(cfg.ramdisk or ""), None),
            (f"{vm}/image/cmdline", cfg.cmdline, None),
            (libxl, "", priv),
            (f"{libxl}/type", "pv", None),
            (f"{libxl}/dm-version", "qemu_xen", None),  # what xl records even for a PV guest without qemu
            (f"{libxl}/on_poweroff", cfg.on_poweroff.value, None),
            (f"{libxl}/on_reboot", cfg.on_reboot.value, None),
            (f"{libxl}/on_crash", cfg.on_crash.value, None),
        ]

        # One pipelined batch (tx.gather): requests leave in order and are answered in order, so each
        # SET_PERMS follows the WRITE that created its node; about 60 round trips become a few writes.
        requests: list[Request[Any]] = []
        for path, value, perms in entries:
            requests.append(Write(path, value.encode()))
            if perms is not None:
                requests.append(SetPerms(path, perms))

        xs.retry(lambda tx: tx.gather(requests))

    def _rm_xenstore(self, *paths: str) -> None:
        xs = self.host.xenstore
        for path in paths:
            try:
                xs.rm(path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise

    def introduce(self) -> None:
        xs = self.host.xenstore
        store_mfn = self.report.p2m[self.p.layout.xenstore.pfn]
        xs.introduce(self.domid, store_mfn, self.report.store_evtchn)
        self.undo.append(("released it in xenstored", self._release))

    def _release(self) -> None:
        try:
            self.host.xenstore.release(self.domid)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EINVAL, errno.ESRCH):
                raise

    def rollback(self) -> tuple[list[str], list[str]]:
        done: list[str] = []
        failed: list[str] = []
        for what, fn in reversed(self.undo):
            try:
                fn()
                done.append(what)
            except Exception as e:  # keep undoing the rest; report what stayed
                log.warning("rollback of %s: %s failed: %s", self.config.name, what, e)
                failed.append(f"{what}: {e}")
        self.undo.clear()
        return done, failed


def build_pv(
    host: Host,
    config: DomainConfig,
    *,
    on_step: Callable[[str], None] | None = None,
    prepared: Prepared | None = None,
) -> BuildReport:
    """Build ``config`` as a paused 64-bit PV domain on ``host``; return what was done (``report.domid``).

    ``on_step(name)`` is called before each step (tracing; a test may raise from it to inject a failure).
    Raises ``KernelImageError``/``LayoutError``/``OSError`` before anything exists (nothing to roll back),
    ``BuildError`` (after a complete rollback) for any failure once the domain exists.
    """
    if on_step is not None:
        on_step("load kernel")
    p = prepared or prepare(config)  # KernelImageError, LayoutError: nothing exists yet
    b = _Build(host, p, on_step)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("createdomain", b.createdomain),
        ("max_vcpus", b.max_vcpus),
        ("max_mem", b.max_mem),
        ("address_size", b.address_size),
        ("memory map", b.memory_map),
        ("populate_physmap", b.populate),
        ("event channels", b.event_channels),
        ("load memory", b.load_memory),
        *([("hypercall page", b.hypercall_page)] if p.kernel.hypercall_page is not None else []),
        ("shared info", b.shared_info),
        ("pin page tables", b.pin),
        ("grant table", b.grant_table),
        ("setvcpucontext", b.setvcpucontext),
        ("xenstore", b.xenstore),
        ("introduce", b.introduce),
    ]
    try:
        for name, fn in steps:
            b.run(name, fn)
    except BaseException as e:
        done, failed = b.rollback()
        b.release()
        del p, prepared
        raise BuildError(config.name, b.step, e, done, failed) from e
    log.info("built domain %d (%s) in %d steps", b.domid, config.name, len(steps))
    r = b.report
    layout = p.layout
    b.release()
    return BuildReport(r.domid, tuple(r.steps), layout, tuple(r.p2m), r.store_evtchn, r.console_evtchn)

