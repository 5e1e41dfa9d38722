"""Where everything goes in a new 64-bit PV guest: pure planning, no hypercalls.

Rule 1: the layout is a pure function of (kernel, memory size, ramdisk size); the bytes of the page
tables, start_info and vcpu 0's registers are pure functions of (layout, p2m, event channels). The
builder only copies them into guest frames, and the simulator and the tests read them back with ``walk``.

The contract is public/xen.h's "Start-of-day memory layout" for x86_64:

1. the guest starts inside one contiguous virtual region, mapped 1:1 onto the first pseudo-physical
   frames (here: from ``VIRT_BASE``, pfn 0);
2. the region ends on a 4 MiB boundary, with at least 512 KiB of padding after the last bootstrap element
   (else it grows by 4 MiB);
3. in order, page aligned: the kernel image, the ramdisk (``mod_start``/``mod_len``), the p2m list
   (``mfn_list``: one 8-byte MFN per pfn), start_info (``%rsi``), the xenstore ring page, the console
   ring page, the bootstrap page tables (``pt_base`` and ``%cr3``: the L4 first), the bootstrap stack
   (``%rsp``);
4. every page is mapped read-write, except the page-table frames, which are mapped read-only (Xen
   refuses to pin a table that is writable through any mapping).

A PV guest's page tables hold *machine* frame numbers, hence ``p2m`` (pfn -> mfn) in every function
that produces table or start_info bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntFlag
from typing import Any

from ..hypercall.abi.arch_x86 import FlatSelector, Vgcf
from ..hypercall.abi.xen import MAX_GUEST_CMDLINE, START_INFO
from ._kernel_image import KernelImage

__all__ = [
    "PAGE",
    "LayoutError",
    "Pte",
    "PvLayout",
    "Region",
    "Translation",
    "p2m_bytes",
    "page_tables",
    "plan",
    "regions_by_pfn",
    "start_info",
    "vcpu_context",
    "walk",
]

PAGE = 4096
_MB4 = 4 << 20
_PAD = 512 << 10
_LEVEL_SHIFTS = (39, 30, 21, 12)  # L4, L3, L2, L1 index positions in a 48-bit virtual address
_ENTRIES = 512
#: start_info.magic for a 64-bit PV guest ("xen-<version>-<platform>").
START_INFO_MAGIC = b"xen-3.0-x86_64"


class LayoutError(ValueError):
    """The guest cannot be laid out: too little memory for the kernel, ramdisk and bootstrap pages."""


class Pte(IntFlag):
    """x86 page-table entry bits the bootstrap tables use (the architecture's, as Xen validates them)."""

    PRESENT = 1 << 0
    RW = 1 << 1
    USER = 1 << 2  # a 64-bit PV kernel runs in ring 3: its mappings are user mappings
    ACCESSED = 1 << 5
    DIRTY = 1 << 6
    PSE = 1 << 7


#: Entry flags: data pages, page-table pages (read-only), and table-to-table links.
L1_DATA = Pte.PRESENT | Pte.RW | Pte.USER | Pte.ACCESSED
L1_TABLE = Pte.PRESENT | Pte.USER | Pte.ACCESSED
LINK = Pte.PRESENT | Pte.RW | Pte.USER | Pte.ACCESSED
_ADDR_MASK = 0x000F_FFFF_FFFF_F000


@dataclass(frozen=True)
class Region:
    """``count`` consecutive pseudo-physical frames from ``pfn``, mapped at ``va``."""

    name: str
    pfn: int
    count: int
    va: int

    @property
    def end_pfn(self) -> int:
        return self.pfn + self.count


@dataclass(frozen=True)
class PvLayout:
    """Where each bootstrap element lives (pfns and virtual addresses) and the page-table shape.

    ``tables`` lists every page-table page by level and the virtual address range it covers, in the
    order of their frames from ``page_tables.pfn`` (the L4 first).
    """

    virt_base: int
    nr_pages: int
    kernel: Region
    ramdisk: Region | None
    p2m: Region
    start_info: Region
    xenstore: Region
    console: Region
    page_tables: Region
    stack: Region
    virt_end: int
    entry: int
    tables: tuple[tuple[int, int], ...]  # (level 4..1, first virtual address it covers)
    ramdisk_len: int = 0
    #: When the kernel's INIT_P2M note is honoured: the tables (levels 3..1) mapping the p2m list at its
    #: own virtual address, in frames right after the p2m's (``p2m`` then lies after the bootstrap region).
    p2m_tables: Region | None = None
    p2m_table_list: tuple[tuple[int, int], ...] = ()

    @property
    def p2m_relocated(self) -> bool:
        """Whether the p2m list lives outside the bootstrap region, at the kernel's INIT_P2M address."""
        return self.p2m_tables is not None

    @property
    def bootstrap_pages(self) -> int:
        """Frames the bootstrap region maps (pfn 0 up to ``virt_end``)."""
        return (self.virt_end - self.virt_base) // PAGE

    @property
    def l4_pfn(self) -> int:
        return self.page_tables.pfn

    @property
    def stack_top(self) -> int:
        """Initial ``%rsp``: the top of the bootstrap stack page."""
        return self.stack.va + self.stack.count * PAGE

    def va(self, pfn: int) -> int:
        """The bootstrap virtual address of ``pfn`` (only meaningful inside the region)."""
        return self.virt_base + pfn * PAGE

    def regions(self) -> tuple[Region, ...]:
        """Every element, in pfn order."""
        rs = [self.kernel] + ([self.ramdisk] if self.ramdisk else []) + [self.p2m, self.start_info,
                                                                         self.xenstore, self.console,
                                                                         self.page_tables, self.stack]
        if self.p2m_tables is not None:
            rs.append(self.p2m_tables)
        return tuple(sorted(rs, key=lambda r: r.pfn))

    @property
    def used_pages(self) -> int:
        """Frames from pfn 0 that the layout uses (the bootstrap region, and the relocated p2m after it)."""
        return max(self.bootstrap_pages, *(r.end_pfn for r in self.regions()))


def _tables_for(virt_base: int, virt_end: int, *, top: int = 4) -> list[tuple[int, int]]:
    """The page-table pages mapping [virt_base, virt_end): (level, covered start), from level ``top`` (the L4
    first) down, level by level."""
    out = [(4, 0)] if top == 4 else []
    for level, shift in ((3, 39), (2, 30), (1, 21)):
        span = 1 << shift
        first = virt_base & ~(span - 1)
        out += [(level, a) for a in range(first, virt_end, span)]
    return out


def plan(kernel: KernelImage, nr_pages: int, ramdisk_len: int = 0, *, relocate_p2m: bool | None = None) -> PvLayout:
    """Lay out a guest of ``nr_pages`` pages booting ``kernel`` with a ramdisk of ``ramdisk_len`` bytes.

    ``relocate_p2m``: place the p2m list at the kernel's INIT_P2M virtual address (mapped by tables of its
    own, in frames after the bootstrap region, reported through ``first_p2m_pfn``/``nr_p2m_frames``) instead
    of inside the bootstrap region. None: when the kernel has the note and its address can be mapped apart.

    Raises ``LayoutError`` when the bootstrap region does not fit in ``nr_pages``, or the kernel's
    virtual range cannot be mapped from ``VIRT_BASE``.
    """
    if nr_pages <= 0:
        raise LayoutError("a guest needs memory")
    vb = kernel.virt_base
    if vb % PAGE or vb >= 1 << 64:
        raise LayoutError(f"VIRT_BASE {vb:#x} is not a page-aligned address")

    def region(name: str, pfn: int, count: int) -> Region:
        return Region(name, pfn, count, vb + pfn * PAGE)

    kreg = region("kernel", kernel.kernel_pfn, kernel.nr_kernel_pages)
    nxt = kreg.end_pfn
    rd = None
    if ramdisk_len:
        rd = region("ramdisk", nxt, (ramdisk_len + PAGE - 1) // PAGE)
        nxt = rd.end_pfn
    p2m_count = (nr_pages * 8 + PAGE - 1) // PAGE
    init_p2m = kernel.notes.init_p2m
    can_relocate = init_p2m is not None and _apart(init_p2m, p2m_count, vb)
    if relocate_p2m and not can_relocate:
        raise LayoutError(f"the p2m cannot be placed at INIT_P2M {init_p2m!r}: no note, or its L4 slot is the "
                          "kernel's")
    relocate = can_relocate if relocate_p2m is None else relocate_p2m
    if relocate:
        p2m = Region("p2m", -1, p2m_count, 0)  # placed after the bootstrap region, below
        si = region("start_info", nxt, 1)
    else:
        p2m = region("p2m", nxt, p2m_count)
        si = region("start_info", p2m.end_pfn, 1)
    store = region("xenstore", si.end_pfn, 1)
    cons = region("console", store.end_pfn, 1)
    pt_pfn = cons.end_pfn
    nr_pt = 1
    while True:
        stack = region("stack", pt_pfn + nr_pt, 1)
        last = vb + stack.end_pfn * PAGE
        vend = (last + _MB4 - 1) & ~(_MB4 - 1)
        if vend - last < _PAD:
            vend += _MB4
        if vend > 1 << 64:
            raise LayoutError("the bootstrap region runs past the top of the address space")
        tables = _tables_for(vb, vend)
        if len(tables) <= nr_pt:
            break
        nr_pt = len(tables)
    pts = region("page_tables", pt_pfn, nr_pt)
    stack = region("stack", pts.end_pfn, 1)
    mapped = (vend - vb) // PAGE
    p2m_tables = None
    p2m_list: list[tuple[int, int]] = []
    if relocate:
        assert init_p2m is not None
        p2m = Region("p2m", mapped, p2m_count, init_p2m)
        p2m_list = _tables_for(init_p2m, init_p2m + p2m_count * PAGE, top=3)
        p2m_tables = Region("p2m_tables", p2m.end_pfn, len(p2m_list), 0)
        mapped = p2m_tables.end_pfn
    if mapped > nr_pages:
        raise LayoutError(
            f"the guest needs {mapped} pages ({mapped * PAGE >> 20} MiB) for its bootstrap region (kernel at pfn "
            f"{kreg.pfn:#x}, {kreg.count} pages; ramdisk {ramdisk_len} bytes) but has {nr_pages} "
            f"({nr_pages * PAGE >> 20} MiB): give it more memory")
    # The count only grows with the region and the region with the count, so the loop stops exactly.
    assert len(tables) == nr_pt
    return PvLayout(vb, nr_pages, kreg, rd, p2m, si, store, cons, pts, stack, vend, kernel.entry, tuple(tables),
                    ramdisk_len, p2m_tables, tuple(p2m_list))


def _apart(init_p2m: int, count: int, virt_base: int) -> bool:
    """Whether a p2m of ``count`` pages at ``init_p2m`` can have tables of its own: page aligned, in the lower
    canonical half, in L4 slots the bootstrap region (from ``virt_base``, at most 512 GiB) does not use."""
    end = init_p2m + count * PAGE
    if init_p2m % PAGE or end > 1 << 47:
        return False
    slots = set(range(init_p2m >> 39, ((end - 1) >> 39) + 1))
    return not slots & {(virt_base >> 39) & 511, ((virt_base >> 39) + 1) & 511}


def _index(va: int, level: int) -> int:
    return (va >> _LEVEL_SHIFTS[4 - level]) & (_ENTRIES - 1)


def page_tables(layout: PvLayout, p2m: Sequence[int]) -> dict[int, bytes]:
    """The bootstrap page tables' bytes, by pfn: every page of [virt_base, virt_end) mapped to its MFN,
    read-write, except the page-table frames, read-only."""
    if len(p2m) < layout.bootstrap_pages:
        raise LayoutError(f"p2m has {len(p2m)} entries, the bootstrap region maps {layout.bootstrap_pages}")
    pages = {layout.page_tables.pfn + i: bytearray(PAGE) for i in range(layout.page_tables.count)}
    # The table page covering (level, va): found by its slot in ``layout.tables``.
    where: dict[tuple[int, int], int] = {}
    for i, (level, start) in enumerate(layout.tables):
        where[(level, start)] = layout.page_tables.pfn + i
    vb, ve = layout.virt_base, layout.virt_end
    for level, shift in ((4, 39), (3, 30), (2, 21)):
        child_span = 1 << shift
        parent_span = 1 << (shift + 9)
        first = vb & ~(child_span - 1)
        for child in range(first, ve, child_span):
            parent_start = 0 if level == 4 else child & ~(parent_span - 1)
            parent = where[(level, parent_start)]
            child_pfn = where[(level - 1, child)]
            struct.pack_into("<Q", pages[parent], _index(child, level) * 8, (p2m[child_pfn] << 12) | int(LINK))
    pt = layout.page_tables
    data, table = int(L1_DATA), int(L1_TABLE)  # plain ints: IntFlag arithmetic per entry is slow
    for pfn in range(layout.bootstrap_pages):
        va = vb + pfn * PAGE
        l1 = where[(1, va & ~((1 << 21) - 1))]
        flags = table if pt.pfn <= pfn < pt.end_pfn else data
        struct.pack_into("<Q", pages[l1], ((va >> 12) & 511) * 8, (p2m[pfn] << 12) | flags)
    if layout.p2m_tables is not None:
        _p2m_tables(layout, p2m, pages, where[(4, 0)])
    return {pfn: bytes(b) for pfn, b in pages.items()}


def _p2m_tables(layout: PvLayout, p2m: Sequence[int], pages: dict[int, bytearray], l4: int) -> None:
    """The relocated p2m's own L3/L2/L1 tables, linked from the L4: the p2m pages mapped read-write."""
    reg, tabs = layout.p2m, layout.p2m_tables
    assert tabs is not None
    where = {key: tabs.pfn + i for i, key in enumerate(layout.p2m_table_list)}
    for pfn in where.values():
        pages[pfn] = bytearray(PAGE)
    lo, hi = reg.va, reg.va + reg.count * PAGE
    for level, shift in ((4, 39), (3, 30), (2, 21)):
        child_span, parent_span = 1 << shift, 1 << (shift + 9)
        for child in range(lo & ~(child_span - 1), hi, child_span):
            parent = l4 if level == 4 else where[(level, child & ~(parent_span - 1))]
            entry = (p2m[where[(level - 1, child)]] << 12) | int(LINK)
            struct.pack_into("<Q", pages[parent], _index(child, level) * 8, entry)
    data = int(L1_DATA)
    for i in range(reg.count):
        va = lo + i * PAGE
        l1 = where[(1, va & ~((1 << 21) - 1))]
        struct.pack_into("<Q", pages[l1], ((va >> 12) & 511) * 8, (p2m[reg.pfn + i] << 12) | data)


@dataclass(frozen=True)
class Translation:
    """Where a virtual address leads: the machine frame and the effective permissions."""

    mfn: int
    writable: bool
    user: bool


def walk(cr3_mfn: int, va: int, frame: Callable[[int], bytes]) -> Translation | None:
    """Translate ``va`` through 4-level tables rooted at ``cr3_mfn``, reading frames with ``frame(mfn)``;
    None if some level is not present. What the guest's MMU would do (large pages included)."""
    mfn, writable, user = cr3_mfn, True, True
    for level in (4, 3, 2, 1):
        (entry,) = struct.unpack_from("<Q", frame(mfn), _index(va, level) * 8)
        if not entry & Pte.PRESENT:
            return None
        writable &= bool(entry & Pte.RW)
        user &= bool(entry & Pte.USER)
        mfn = (entry & _ADDR_MASK) >> 12
        if level in (3, 2) and entry & Pte.PSE:
            pages_below = 1 << (9 * (level - 1))
            return Translation(mfn + ((va >> 12) & (pages_below - 1)), writable, user)
    return Translation(mfn, writable, user)


def start_info(
    layout: PvLayout,
    p2m: Sequence[int],
    *,
    shared_info_mfn: int,
    store_evtchn: int,
    console_evtchn: int,
    cmdline: str = "",
    flags: int = 0,
) -> bytes:
    """The start_info page's record (``struct start_info``): what ``%rsi`` points at when the guest starts."""
    raw = cmdline.encode("utf-8")
    if len(raw) >= MAX_GUEST_CMDLINE:
        raise LayoutError(f"command line of {len(raw)} bytes does not fit start_info.cmd_line")
    rd = layout.ramdisk
    return bytes(START_INFO.layout().build(
        magic=START_INFO_MAGIC,
        nr_pages=layout.nr_pages,
        shared_info=shared_info_mfn << 12,
        flags=flags,  # SIF_*: none for a domU whose mod_start is a virtual address
        store_mfn=p2m[layout.xenstore.pfn],
        store_evtchn=store_evtchn,
        console={"domU": {"mfn": p2m[layout.console.pfn], "evtchn": console_evtchn}},
        pt_base=layout.page_tables.va,
        nr_pt_frames=layout.page_tables.count,
        mfn_list=layout.p2m.va,
        mod_start=rd.va if rd else 0,
        mod_len=layout.ramdisk_len if rd else 0,
        cmd_line=raw,
        # The relocated p2m's frames and its tables' (the kernel may reuse them once it has its own p2m).
        first_p2m_pfn=layout.p2m.pfn if layout.p2m_tables else 0,
        nr_p2m_frames=layout.p2m.count + layout.p2m_tables.count if layout.p2m_tables else 0,
    ))


def p2m_bytes(p2m: Sequence[int]) -> bytes:
    """The p2m list as the guest reads it at ``mfn_list``: one little-endian 8-byte MFN per pfn."""
    return struct.pack(f"<{len(p2m)}Q", *p2m)


def vcpu_context(layout: PvLayout, p2m: Sequence[int]) -> dict[str, Any]:
    """vcpu 0's ``vcpu_guest_context`` fields for XEN_DOMCTL_setvcpucontext: online, in kernel mode, at
    the entry point with ``%rsi`` = start_info and ``%rsp`` = the bootstrap stack, flat 64-bit kernel
    segments, ``ctrlreg[3]`` = the L4's machine address (``xen_pfn_to_cr3`` is ``mfn << 12`` on x86_64)."""
    l4_mfn = p2m[layout.l4_pfn]
    return {
        "flags": int(Vgcf.in_kernel | Vgcf.online),
        "user_regs": {
            "rip": layout.entry,
            "rsp": layout.stack_top,
            "rsi": layout.start_info.va,
            "cs": int(FlatSelector.KERNEL_CS),
            "ss": int(FlatSelector.KERNEL_SS),
            "ds": int(FlatSelector.KERNEL_DS),
            "es": int(FlatSelector.KERNEL_DS),
            "fs": int(FlatSelector.KERNEL_DS),
            "gs": int(FlatSelector.KERNEL_DS),
            "rflags": 1 << 9,  # IF; Xen keeps the guest's events masked through evtchn_upcall_mask
        },
        "kernel_ss": int(FlatSelector.KERNEL_SS),
        "kernel_sp": layout.stack_top,
        "ctrlreg": [0, 0, 0, l4_mfn << 12, 0, 0, 0, 0],
    }


def regions_by_pfn(layout: PvLayout) -> Mapping[int, str]:
    """Which bootstrap element each pfn of the region belongs to (for messages and the simulator)."""
    out: dict[int, str] = {}
    for r in layout.regions():
        for pfn in range(r.pfn, r.end_pfn):
            out[pfn] = r.name
    return out
