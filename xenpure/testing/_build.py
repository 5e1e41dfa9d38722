"""The simulated hypervisor's side of building a PV domain: populate_physmap, set_memory_map, mmuext_op
pinning, hypercall_init and setvcpucontext, validated as Xen validates them, and a report of what the guest
would see when it starts.

Rule 1: the simulator checks the build, it does not trust it. Pinning walks the page tables from the L4
and refuses (EINVAL, as Xen does) a table frame the domain does not own, a table that maps a table frame
writable, or one that a dom0 mapping still holds writable; setvcpucontext refuses a cr3 that is not a
pinned L4 of the domain. hypercall_init writes the stubs Xen 4.17 wrote in the lab into a frame of the
domain, and refuses a frame it does not own (EINVAL) or one validated as a page table (EPERM).
``guest_view`` then answers the guest's questions -- what is at ``%rsi``, what
does this virtual address map to -- by reading the machine frames, never the builder's own plan.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..hypercall.abi.arch_x86 import VCPU_GUEST_CONTEXT, Vgcf
from ..hypercall.abi.grant_table import GRANT_ENTRY_V1
from ..hypercall.abi.memory import E820_ENTRY, E820_MAX_ENTRIES, FOREIGN_MEMORY_MAP, MEMORY_RESERVATION, MemOp
from ..hypercall.abi.xen import MMUEXT_OP, SHARED_INFO, START_INFO, DomId, MmuExtCmd

__all__ = ["GuestView", "SimBuild", "hypercall_stub"]

PAGE = 4096
_PRESENT, _RW, _PSE = 1, 2, 0x80
_ADDR = 0x000F_FFFF_FFFF_F000
_SHIFTS = {4: 39, 3: 30, 2: 21, 1: 12}
#: populate_physmap's most extents per call before Xen would use a continuation (the sim just refuses more).
_MAX_EXTENTS = 1 << 20
#: A 2 MiB extent (what Xen 4.17 populated for a PV domain in the lab: aligned, contiguous machine frames).
_SUPERPAGE_ORDER = 9
#: Hypercall numbers a hypercall page has a stub for (4096 bytes / 32 per stub).
_STUBS = PAGE // 32
#: __HYPERVISOR_iret: the one stub that does not return (the guest's iret continues where Xen resumes it).
_IRET = 23


def hypercall_stub(nr: int) -> bytes:
    """The 32 bytes Xen 4.17 wrote at ``nr * 32`` of a 64-bit PV guest's hypercall page, as read back in
    the lab: ``push %rcx; push %r11; mov $nr,%eax; syscall; pop %r11; pop %rcx; ret``, int3-padded; for
    iret, ``push %rcx; push %r11; push %rax; mov $23,%eax; syscall`` and no return."""
    mov = b"\xb8" + struct.pack("<I", nr)
    if nr == _IRET:
        code = b"\x51\x41\x53\x50" + mov + b"\x0f\x05"
    else:
        code = b"\x51\x41\x53" + mov + b"\x0f\x05\x41\x5b\x59\xc3"
    return code.ljust(32, b"\xcc")


def _err(code: int, why: str) -> Exception:
    from ._hypervisor import XenErrno

    return XenErrno(code, why)


@dataclass
class _PvState:
    p2m: dict[int, int] = field(default_factory=dict)  # pfn -> mfn
    pinned_l4: set[int] = field(default_factory=set)
    table_frames: set[int] = field(default_factory=set)  # every frame validated as a page table
    shared_info: int | None = None  # the shared info page's frame, owned by the domain
    memory_map: list[tuple[int, int, int]] | None = None  # set_memory_map's E820 (addr, size, type)


@dataclass(frozen=True)
class GuestView:
    """What a simulated PV guest sees at its first instruction."""

    domid: int
    rip: int
    rsp: int
    rsi: int
    cr3_mfn: int
    flags: int
    start_info: Any  # the parsed struct start_info at %rsi
    read_va: Callable[[int, int], bytes]
    translate: Callable[[int], tuple[int, bool] | None]
    p2m: dict[int, int]


class SimBuild:
    """Per-domain PV build state of one ``SimXen``."""

    #: memory_op sub-ops this model answers (the rest go to the machine memory model).
    MEMORY_OPS = frozenset({MemOp.populate_physmap, MemOp.set_memory_map})

    def __init__(self, xen: Any) -> None:
        self.xen = xen
        self.domains: dict[int, _PvState] = {}
        self._caller: Any = None
        xen.domain_hooks.append(self._domain_event)

    def _domain_event(self, event: str, d: Any) -> None:
        if event == "destroyed":
            self.domains.pop(d.domid, None)

    def _state(self, domid: int) -> _PvState:
        return self.domains.setdefault(domid, _PvState())

    def shared_info_frame(self, domid: int) -> int:
        """The frame getdomaininfo reports as ``shared_info_frame``: a real frame owned by the domain once it
        is being built here (so the toolstack can map it), a made-up number otherwise."""
        st = self.domains.get(domid)
        if st is None:
            return 0x1000 + domid
        if st.shared_info is None:
            (st.shared_info,) = self.xen.memory.alloc(domid, 1)
        return st.shared_info

    def upcall_masks(self, domid: int) -> list[int]:
        """``shared_info.vcpu_info[i].evtchn_upcall_mask`` for every legacy vcpu slot."""
        lay = SHARED_INFO.layout()
        page = bytes(self.xen.memory.page(self.shared_info_frame(domid)))
        return [int(v.evtchn_upcall_mask) for v in lay.parse(page).vcpu_info]

    # -- memory_op ----------------------------------------------------------------------------------------
    def memory_op(self, mem: Any, args: list[int], privileged: bool) -> int:
        if args[0] == MemOp.set_memory_map:
            return self._set_memory_map(mem, args[1], privileged)
        lay = MEMORY_RESERVATION.layout()
        req = lay.parse(mem.resolve(args[1], lay.size))
        domid = int(req.domid)
        if domid == DomId.SELF:
            raise _err(errno.EINVAL, "populate_physmap for dom0 itself is not simulated")
        if not privileged:
            raise _err(errno.EPERM, "populate_physmap for another domain")
        d = self.xen._domain(domid)
        if d.hvm:
            raise _err(errno.ENOSYS, "populate_physmap of an HVM domain is not simulated")
        order = int(req.extent_order)
        if order not in (0, _SUPERPAGE_ORDER):
            raise _err(errno.EINVAL, f"extent_order {order} is not simulated (PV builds use 0 or 9)")
        n = int(req.nr_extents)
        if n > _MAX_EXTENTS:
            raise _err(errno.EINVAL, f"{n} extents in one call")
        ext = mem.resolve(req.extent_start, 8 * n) if n else memoryview(b"")
        pfns = struct.unpack(f"<{n}Q", bytes(ext))
        st = self._state(domid)
        size = 1 << order
        done = 0
        for pfn in pfns:
            if any(p in st.p2m for p in range(pfn, pfn + size)):
                break  # Xen stops at a pfn already populated and reports how many it did
            if d.tot_pages + size > d.max_pages:
                break  # over max_mem: Xen allocates what fits and returns the count
            try:
                first = self.xen.memory.alloc(domid, 1)[0] if order == 0 else self.xen.memory.alloc_contiguous(
                    domid, order)
            except Exception:
                break
            for i in range(size):
                st.p2m[pfn + i] = first + i
            d.tot_pages += size
            # Not translated: each extent's first pfn becomes its first machine frame, written back in place.
            struct.pack_into("<Q", ext, done * 8, first)
            done += 1
        return done

    def _set_memory_map(self, mem: Any, addr: int, privileged: bool) -> int:
        lay = FOREIGN_MEMORY_MAP.layout()
        req = lay.parse(mem.resolve(addr, lay.size))
        domid = 0 if req.domid == DomId.SELF else int(req.domid)  # the caller is dom0
        if not privileged:
            raise _err(errno.EPERM, "set_memory_map for another domain")
        self.xen._domain(domid)
        n = int(req.map.nr_entries)
        if n > E820_MAX_ENTRIES:
            raise _err(errno.EINVAL, f"{n} E820 entries (at most {E820_MAX_ENTRIES})")
        raw = bytes(mem.resolve(req.map.buffer, n * E820_ENTRY.size)) if n else b""
        # Xen 4.17 stores the table as given: overlapping, unaligned or unknown-type entries were all accepted.
        self._state(domid).memory_map = [E820_ENTRY.unpack_from(raw, i * E820_ENTRY.size) for i in range(n)]
        return 0

    def memory_map(self, domid: int) -> list[tuple[int, int, int]] | None:
        """The E820 table a PV guest would read with XENMEM_memory_map (None: the toolstack set none)."""
        st = self.domains.get(domid)
        return None if st is None or st.memory_map is None else list(st.memory_map)

    # -- domctl hypercall_init --------------------------------------------------------------------------------
    def hypercall_init(self, domid: int, gmfn: int) -> None:
        d = self.xen._domain(domid)
        if d.hvm:
            raise _err(errno.ENOSYS, "hypercall_init of an HVM domain is not simulated")
        if self.xen.memory.owner.get(gmfn) != domid:
            raise _err(errno.EINVAL, f"frame {gmfn:#x} is not a frame of domain {domid}")
        if gmfn in self._state(domid).table_frames:
            raise _err(errno.EPERM, f"frame {gmfn:#x} is a page table of domain {domid}, not writable")
        self.xen.memory.page(gmfn)[:] = b"".join(hypercall_stub(nr) for nr in range(_STUBS))

    # -- mmuext_op ----------------------------------------------------------------------------------------
    def mmuext_op(self, mem: Any, args: list[int], privileged: bool) -> int:
        lay = MMUEXT_OP.layout()
        addr, count, pdone, foreigndom = args[0], args[1], args[2], args[3] & 0xFFFF
        if not privileged:
            raise _err(errno.EPERM, "mmuext_op on another domain's frames")
        if foreigndom == DomId.SELF:
            raise _err(errno.ENOSYS, "mmuext_op on dom0's own page tables is not simulated")
        self.xen._domain(foreigndom)
        self._caller = mem  # the simulated kernel of the calling process: its mappings are dom0's
        done = 0
        for i in range(count):
            op = lay.parse(mem.resolve(addr + i * lay.size, lay.size))
            cmd = int(op.cmd)
            mfn = int(op.arg1.mfn)
            if cmd == MmuExtCmd.PIN_L4_TABLE:
                self._pin(foreigndom, mfn)
            elif cmd == MmuExtCmd.UNPIN_TABLE:
                st = self._state(foreigndom)
                if mfn not in st.pinned_l4:
                    raise _err(errno.EINVAL, f"frame {mfn:#x} is not pinned")
                st.pinned_l4.discard(mfn)
            else:
                raise _err(errno.ENOSYS, f"MMUEXT {cmd} is not simulated")
            done += 1
        if pdone:
            struct.pack_into("<I", mem.resolve(pdone, 4), 0, done)
        return 0

    def _owned(self, domid: int, mfn: int, what: str) -> None:
        if self.xen.memory.owner.get(mfn) != domid:
            raise _err(errno.EINVAL, f"{what} {mfn:#x} is not a frame of domain {domid}")

    def _pin(self, domid: int, l4: int) -> None:
        st = self._state(domid)
        if l4 in st.pinned_l4:
            raise _err(errno.EINVAL, f"L4 {l4:#x} is already pinned")
        tables: set[int] = set()
        leaves: dict[int, bool] = {}  # mapped frame -> writable

        def visit(mfn: int, level: int) -> None:
            self._owned(domid, mfn, f"L{level} table")
            tables.add(mfn)
            page = bytes(self.xen.memory.page(mfn))
            for i in range(512):
                (e,) = struct.unpack_from("<Q", page, i * 8)
                if not e & _PRESENT:
                    continue
                child = (e & _ADDR) >> 12
                if level == 1:
                    self._owned(domid, child, "mapped frame")
                    leaves[child] = leaves.get(child, False) or bool(e & _RW)
                elif e & _PSE:
                    raise _err(errno.EINVAL, f"L{level} superpage entry in a PV page table")
                else:
                    visit(child, level - 1)

        visit(l4, 4)
        writable = sorted(m for m in tables if leaves.get(m))
        if writable:
            raise _err(errno.EINVAL, f"page-table frame(s) {[hex(m) for m in writable[:4]]} are mapped writable "
                       "by the tables themselves")
        held = self._writable_elsewhere(self._caller, tables)
        if held:
            raise _err(errno.EINVAL, f"page-table frame {held:#x} is still mapped writable by dom0")
        st.pinned_l4.add(l4)
        st.table_frames |= tables

    @staticmethod
    def _writable_elsewhere(caller: Any, frames: set[int]) -> int | None:
        """A frame of ``frames`` that the calling dom0 process still maps writable (privcmd, gntdev...)."""
        from ._memory import SimMapping

        for m in list(getattr(caller, "_maps", {}).values()):
            if isinstance(m, SimMapping) and not m.readonly:
                for f in m.frames:
                    if f is not None and f in frames:
                        return int(f)
        return None

    # -- domctl setvcpucontext ------------------------------------------------------------------------------
    def setvcpucontext(self, mem: Any, domid: int, req: Any) -> None:
        d = self.xen._domain(domid)
        if req.vcpu >= len(d.vcpus):
            raise _err(errno.EINVAL, f"vcpu {req.vcpu} of {len(d.vcpus)}")
        lay = VCPU_GUEST_CONTEXT.layout()
        raw = bytes(mem.resolve(req.ctxt, lay.size))
        ctx = lay.parse(raw)
        cr3 = (int(ctx.ctrlreg[3]) & _ADDR) >> 12
        if cr3 not in self._state(domid).pinned_l4:
            raise _err(errno.EINVAL, f"cr3 frame {cr3:#x} is not a pinned L4 of domain {domid}")
        if ctx.user_regs.cs & 3 != 3 or ctx.user_regs.ss & 3 != 3:
            raise _err(errno.EINVAL, "a 64-bit PV kernel runs in ring 3: cs/ss need RPL 3")
        d.vcpus[req.vcpu].context = raw
        d.vcpus[req.vcpu].online = bool(ctx.flags & Vgcf.online)

    # -- what the guest sees --------------------------------------------------------------------------------
    def translate(self, cr3_mfn: int, va: int) -> tuple[int, bool] | None:
        """(mfn, writable) for ``va`` through the tables at ``cr3_mfn``, read from machine memory."""
        mfn, writable = cr3_mfn, True
        for level in (4, 3, 2, 1):
            (e,) = struct.unpack_from("<Q", self.xen.memory.page(mfn), ((va >> _SHIFTS[level]) & 511) * 8)
            if not e & _PRESENT:
                return None
            writable = writable and bool(e & _RW)
            mfn = (e & _ADDR) >> 12
        return mfn, writable

    def read_va(self, cr3_mfn: int, va: int, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            t = self.translate(cr3_mfn, va + len(out))
            if t is None:
                raise _err(errno.EFAULT, f"{va + len(out):#x} is not mapped")
            off = (va + len(out)) % PAGE
            take = min(PAGE - off, n - len(out))
            out += self.xen.memory.page(t[0])[off : off + take]
        return bytes(out)

    def guest_view(self, domid: int, vcpu: int = 0) -> GuestView:
        """Registers of ``vcpu`` and the start_info the guest reads at ``%rsi``, through its own tables."""
        d = self.xen._domain(domid)
        raw = d.vcpus[vcpu].context
        if not raw:
            raise _err(errno.ENODATA, f"vcpu {vcpu} of domain {domid} has no context")
        ctx = VCPU_GUEST_CONTEXT.layout().parse(raw)
        cr3 = (int(ctx.ctrlreg[3]) & _ADDR) >> 12
        si_lay = START_INFO.layout()
        rsi = int(ctx.user_regs.rsi)
        si = si_lay.parse(self.read_va(cr3, rsi, si_lay.size))
        return GuestView(
            domid, int(ctx.user_regs.rip), int(ctx.user_regs.rsp), rsi, cr3, int(ctx.flags), si,
            lambda va, n: self.read_va(cr3, va, n), lambda va: self.translate(cr3, va),
            dict(self._state(domid).p2m),
        )

    def grant_entries(self, domid: int, count: int = 8) -> list[Any]:
        """The first ``count`` v1 grant entries of ``domid`` (what the toolstack seeded)."""
        lay = GRANT_ENTRY_V1.layout()
        frame = self.xen.gnttab.frames(domid)[0]
        page = bytes(self.xen.memory.page(frame))
        return [lay.parse(page[i * lay.size : (i + 1) * lay.size]) for i in range(count)]
