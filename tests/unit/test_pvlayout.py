"""PV layout planning: the start-of-day order, the 4 MiB end with padding, and page tables that map every
bootstrap page to the right frame (walked like an MMU would)."""

from __future__ import annotations

import random
import struct

import pytest

from xenpure.domain._kernel_image import load_kernel
from xenpure.domain._pvlayout import (
    PAGE,
    LayoutError,
    Pte,
    page_tables,
    plan,
    regions_by_pfn,
    start_info,
    vcpu_context,
    walk,
)
from xenpure.hypercall.abi.xen import START_INFO
from xenpure.testing._kernels import PADDR, VIRT_BASE, make_elf

KERNEL = load_kernel(make_elf())


def test_order_and_alignment() -> None:
    lay = plan(KERNEL, nr_pages=32768, ramdisk_len=3 * PAGE + 1)
    names = [r.name for r in lay.regions()]
    assert names == ["kernel", "ramdisk", "p2m", "start_info", "xenstore", "console", "page_tables", "stack"]
    for a, b in zip(lay.regions(), lay.regions()[1:], strict=False):
        assert a.end_pfn == b.pfn  # packed together, page aligned
    assert lay.kernel.pfn == PADDR // PAGE and lay.kernel.va == VIRT_BASE + PADDR
    assert lay.ramdisk is not None and lay.ramdisk.count == 4
    assert lay.p2m.count == 32768 * 8 // PAGE
    assert lay.virt_end % (4 << 20) == 0
    assert lay.virt_end - lay.va(lay.stack.end_pfn) >= 512 << 10
    assert lay.stack_top == lay.va(lay.stack.end_pfn)
    assert lay.entry == KERNEL.entry
    assert [lv for lv, _ in lay.tables][:1] == [4] and lay.page_tables.count == len(lay.tables)


def test_padding_rule_extends_by_4mb() -> None:
    # Find a ramdisk size that leaves less than 512 KiB before the 4 MiB boundary: the region must grow.
    base = plan(KERNEL, nr_pages=65536)
    slack = base.virt_end - base.va(base.stack.end_pfn)
    grown = plan(KERNEL, nr_pages=65536, ramdisk_len=slack - 256 * 1024)
    assert grown.virt_end - grown.va(grown.stack.end_pfn) >= 512 << 10
    assert grown.virt_end == base.virt_end + (4 << 20)


def test_too_little_memory() -> None:
    with pytest.raises(LayoutError, match="give it more memory"):
        plan(KERNEL, nr_pages=4096)  # 16 MiB: the kernel itself sits at 16 MiB


def _p2m(n: int, seed: int = 1) -> list[int]:
    mfns = list(range(0x10000, 0x10000 + n))
    random.Random(seed).shuffle(mfns)  # machine frames are anywhere: the tables must use the p2m
    return mfns


def test_walk_every_bootstrap_page() -> None:
    lay = plan(KERNEL, nr_pages=32768, ramdisk_len=5 * PAGE)
    p2m = _p2m(32768)
    tables = page_tables(lay, p2m)
    frames = {p2m[pfn]: data for pfn, data in tables.items()}

    def frame(mfn: int) -> bytes:
        return frames.get(mfn, bytes(PAGE))  # every non-table frame is zero: walking into one fails

    l4 = p2m[lay.l4_pfn]
    pt = lay.page_tables
    for pfn in range(lay.bootstrap_pages):
        t = walk(l4, lay.va(pfn), frame)
        assert t is not None, f"pfn {pfn:#x} unmapped"
        assert t.mfn == p2m[pfn] and t.user
        assert t.writable == (not pt.pfn <= pfn < pt.end_pfn)  # page tables read-only
    assert walk(l4, lay.virt_end, frame) is None
    assert walk(l4, lay.virt_base - PAGE, frame) is None
    # By hand, for the entry point: L4 slot 511, L3 slot 510 for 0xffffffff8xxxxxxx.
    (e4,) = struct.unpack_from("<Q", frame(l4), 511 * 8)
    assert e4 & Pte.PRESENT and (e4 >> 12) & 0xFFFFFFFFFF == p2m[pt.pfn + 1]
    (e3,) = struct.unpack_from("<Q", frame(p2m[pt.pfn + 1]), 510 * 8)
    assert e3 & Pte.PRESENT


def test_start_info_and_context() -> None:
    lay = plan(KERNEL, nr_pages=32768, ramdisk_len=10000)
    p2m = _p2m(32768)
    raw = start_info(lay, p2m, shared_info_mfn=0x1234, store_evtchn=3, console_evtchn=4, cmdline="console=hvc0")
    si = START_INFO.layout().parse(raw)
    assert si.magic.rstrip(b"\0") == b"xen-3.0-x86_64"
    assert si.nr_pages == 32768 and si.shared_info == 0x1234000
    assert si.store_mfn == p2m[lay.xenstore.pfn] and si.store_evtchn == 3
    assert si.console.domU.mfn == p2m[lay.console.pfn] and si.console.domU.evtchn == 4
    assert si.pt_base == lay.page_tables.va and si.nr_pt_frames == lay.page_tables.count
    assert si.mfn_list == lay.p2m.va
    assert lay.ramdisk is not None and (si.mod_start, si.mod_len) == (lay.ramdisk.va, 10000)
    assert si.cmd_line.rstrip(b"\0") == b"console=hvc0"
    ctx = vcpu_context(lay, p2m)
    assert ctx["user_regs"]["rsi"] == lay.start_info.va and ctx["user_regs"]["rip"] == KERNEL.entry
    assert ctx["ctrlreg"][3] == p2m[lay.l4_pfn] << 12
    assert ctx["user_regs"]["cs"] == 0xE033 and ctx["kernel_ss"] == 0xE02B
    with pytest.raises(LayoutError):
        start_info(lay, p2m, shared_info_mfn=0, store_evtchn=0, console_evtchn=0, cmdline="x" * 1024)


def test_regions_by_pfn() -> None:
    lay = plan(KERNEL, nr_pages=32768)
    m = regions_by_pfn(lay)
    assert m[lay.start_info.pfn] == "start_info" and m[lay.kernel.pfn] == "kernel"
    assert lay.kernel.pfn - 1 not in m


@pytest.mark.parametrize("mib", [64, 128, 512, 2048, 8192])
def test_sizes(mib: int) -> None:
    lay = plan(KERNEL, nr_pages=mib * 256)
    assert lay.p2m.count == (mib * 256 * 8 + PAGE - 1) // PAGE
    assert lay.bootstrap_pages <= mib * 256


def test_low_virt_base_crosses_table_boundaries() -> None:
    """A kernel at virtual 0 whose region spans several L2 and L1 tables still walks correctly."""
    notes = {3: struct.pack("<Q", 0), 1: struct.pack("<Q", PADDR + 0x40), 6: b"linux\0"}
    k = load_kernel(make_elf(notes=notes, paddr=PADDR))
    lay = plan(k, nr_pages=300_000, ramdisk_len=(1 << 30))  # region crosses the 1 GiB line
    p2m = _p2m(300_000, seed=3)
    tables = page_tables(lay, p2m)
    frames = {p2m[pfn]: data for pfn, data in tables.items()}
    assert sum(1 for lv, _ in lay.tables if lv == 2) == 2
    for pfn in [*range(0, lay.bootstrap_pages, 997), lay.bootstrap_pages - 1]:
        t = walk(p2m[lay.l4_pfn], lay.va(pfn), lambda m: frames.get(m, bytes(PAGE)))
        assert t is not None and t.mfn == p2m[pfn]


def _init_p2m_kernel() -> object:
    from xenpure.testing._kernels import XEN_NOTES

    return load_kernel(make_elf(notes={**XEN_NOTES, 15: struct.pack("<Q", 0x8000000000)}))


def test_init_p2m_relocates_the_p2m() -> None:
    k = _init_p2m_kernel()
    lay = plan(k, nr_pages=32768, ramdisk_len=3 * PAGE)  # type: ignore[arg-type]
    assert lay.p2m_relocated and lay.p2m.va == 0x8000000000
    assert lay.p2m.pfn == lay.bootstrap_pages  # right after the bootstrap region
    assert lay.p2m_tables is not None and lay.p2m_tables.pfn == lay.p2m.end_pfn
    assert lay.ramdisk is not None and lay.start_info.pfn == lay.ramdisk.end_pfn  # no p2m in between
    p2m = _p2m(32768, seed=5)
    tables = page_tables(lay, p2m)
    frames = {p2m[pfn]: data for pfn, data in tables.items()}

    def frame(m: int) -> bytes:
        return frames.get(m, bytes(PAGE))

    l4 = p2m[lay.l4_pfn]
    for i in range(lay.p2m.count):
        t = walk(l4, lay.p2m.va + i * PAGE, frame)
        assert t is not None and t.mfn == p2m[lay.p2m.pfn + i] and t.writable
    for pfn in range(lay.bootstrap_pages):
        t = walk(l4, lay.va(pfn), frame)
        assert t is not None and t.mfn == p2m[pfn]
    # the p2m's tables are not reachable through any virtual address (only through the L4's links)
    si = START_INFO.layout().parse(start_info(lay, p2m, shared_info_mfn=1, store_evtchn=1, console_evtchn=2))
    assert si.mfn_list == 0x8000000000
    assert (si.first_p2m_pfn, si.nr_p2m_frames) == (lay.p2m.pfn, lay.p2m.count + lay.p2m_tables.count)
    assert lay.used_pages == lay.p2m_tables.end_pfn <= 32768


def test_init_p2m_can_be_declined() -> None:
    lay = plan(_init_p2m_kernel(), nr_pages=32768, relocate_p2m=False)  # type: ignore[arg-type]
    assert not lay.p2m_relocated and lay.p2m.va == lay.va(lay.p2m.pfn)
    with pytest.raises(LayoutError, match="INIT_P2M"):
        plan(KERNEL, nr_pages=32768, relocate_p2m=True)
