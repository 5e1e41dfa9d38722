"""Building a PV domain on the simulated host: the whole hypercall sequence through the real encode path,
checked by the simulator (populate, mapping, pinning, vcpu context, grants), and rollback on failure."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import xenpure
from xenpure.domain._builder import BuildError, build_pv
from xenpure.domain._config import DomainConfig
from xenpure.domain._kernel_image import KernelImageError
from xenpure.domain._pvlayout import LayoutError
from xenpure.hypercall.abi.grant_table import GrantType
from xenpure.testing import SimKernel, SimXen
from xenpure.testing._kernels import PADDR, VIRT_BASE, make_bzimage, make_elf


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    p = tmp_path / "vmlinux"
    p.write_bytes(make_elf())
    return p


@pytest.fixture
def ramdisk(tmp_path: Path) -> Path:
    p = tmp_path / "initrd"
    p.write_bytes(b"070701" + bytes(range(256)) * 40)
    return p


def config(kernel: Path, ramdisk: Path | None = None, **kw: object) -> DomainConfig:
    args: dict[str, object] = {"name": "g1", "kernel": kernel, "memory": 32, "cmdline": "console=hvc0"}
    args.update(kw)
    return DomainConfig(ramdisk=ramdisk, **args)  # type: ignore[arg-type]


def test_build_and_what_the_guest_sees(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path, ramdisk: Path) -> None:
    cfg = config(kernel, ramdisk, vcpus=2, maxmem=48)
    steps: list[str] = []
    report = build_pv(sim_host, cfg, on_step=steps.append)
    domid = report.domid
    assert steps[0] == "load kernel" and steps[-1] == "introduce" and "pin page tables" in steps
    info = sim_host.domain(domid).info()
    assert info.paused and info.memory_kib == 32 * 1024 and info.online_vcpus == 2
    assert info.uuid == cfg.uuid
    d = sim_xen.domains[domid]
    assert d.max_pages == 48 * 256

    view = sim_xen.build.guest_view(domid)
    lay = report.layout
    assert lay is not None
    si = view.start_info
    assert si.magic.rstrip(b"\0") == b"xen-3.0-x86_64"
    assert si.nr_pages == 32 * 256 and si.cmd_line.rstrip(b"\0") == b"console=hvc0"
    assert view.rip == VIRT_BASE + PADDR + 0x40 and view.rsi == lay.start_info.va
    # The kernel's bytes are where the guest will execute them.
    assert view.read_va(view.rip, 1) == b"\xf4"
    assert view.read_va(VIRT_BASE + PADDR, 4) == b"\x90" * 4
    # The ramdisk is at mod_start, whole.
    assert view.read_va(si.mod_start, si.mod_len) == ramdisk.read_bytes()
    # The p2m list at mfn_list matches the simulator's own record of populate_physmap.
    raw = view.read_va(si.mfn_list, 8 * 16)
    assert [int.from_bytes(raw[i * 8 : i * 8 + 8], "little") for i in range(16)] == [view.p2m[i] for i in range(16)]
    # Ring pages: the MFNs in start_info are the guest's own, zeroed, and mapped where the layout says.
    assert view.translate(lay.xenstore.va) == (si.store_mfn, True)
    assert view.translate(lay.console.va) == (si.console.domU.mfn, True)
    assert view.translate(si.pt_base) == (view.cr3_mfn, False)  # the L4, read-only
    assert view.rsp == lay.stack_top and view.translate(view.rsp - 8) is not None
    # Event upcalls start masked on every vcpu slot of the shared info page start_info points at.
    assert sim_xen.build.upcall_masks(domid) == [1] * 32
    assert si.shared_info == sim_xen.build.shared_info_frame(domid) << 12
    # Grant entries seeded for dom0 (console, xenstore).
    ents = sim_xen.build.grant_entries(domid)
    assert (ents[0].flags, ents[0].domid, ents[0].frame) == (GrantType.permit_access, 0, si.console.domU.mfn)
    assert (ents[1].flags, ents[1].domid, ents[1].frame) == (GrantType.permit_access, 0, si.store_mfn)
    # Event channels: unbound ports of the guest for dom0, as start_info says.
    st = sim_xen.evtchn.port(domid, si.store_evtchn)
    assert st is not None
    # xenstore layout.
    xs = sim_host.xenstore
    base = f"/local/domain/{domid}"
    assert xs.read(f"{base}/name") == b"g1"
    assert xs.read(f"{base}/console/ring-ref") == str(si.console.domU.mfn).encode()
    assert xs.read(f"{base}/store/port") == str(si.store_evtchn).encode()
    assert xs.read(f"{base}/memory/static-max") == b"49152"
    assert xs.read(f"/vm/{cfg.uuid}/name") == b"g1"
    assert sim_host.domain("g1").id == domid
    assert xs.is_domain_introduced(domid)


def test_bzimage_builds_too(sim_host: xenpure.Host, sim_xen: SimXen, tmp_path: Path) -> None:
    p = tmp_path / "vmlinuz"
    p.write_bytes(make_bzimage(make_elf(), "xz"))
    report = build_pv(sim_host, config(p))
    assert sim_xen.build.guest_view(report.domid).read_va(VIRT_BASE + PADDR + 0x40, 1) == b"\xf4"


def test_broken_kernel_rejected_before_createdomain(sim_host: xenpure.Host, sim_xen: SimXen, tmp_path: Path) -> None:
    p = tmp_path / "bad"
    before = set(sim_xen.domains)
    for data, match in ((make_elf(machine=183), "wrong architecture"), (make_elf()[:300], "truncated|past the end"),
                        (make_elf(notes={}), "no Xen ELF notes")):
        p.write_bytes(data)
        with pytest.raises(KernelImageError, match=match):
            build_pv(sim_host, config(p))
    assert set(sim_xen.domains) == before


def hypercall_page_kernel(tmp_path: Path) -> Path:
    from xenpure.testing._kernels import HYPERCALL_PAGE_NOTE, XEN_NOTES

    p = tmp_path / "vmlinux-hcall"
    p.write_bytes(make_elf(notes={**XEN_NOTES, **HYPERCALL_PAGE_NOTE}))
    return p


def test_hypercall_page_is_filled_by_xen(sim_host: xenpure.Host, sim_xen: SimXen, tmp_path: Path) -> None:
    """A HYPERCALL_PAGE kernel: after its bytes are loaded, XEN_DOMCTL_hypercall_init has Xen write the stubs
    into that page; the guest finds at page + nr * 32 code loading nr into %eax and entering Xen (syscall)."""
    import struct

    from xenpure.hypercall.abi.xen import Hypercall
    from xenpure.testing._kernels import HYPERCALL_PAGE_NOTE

    steps: list[str] = []
    report = build_pv(sim_host, config(hypercall_page_kernel(tmp_path)), on_step=steps.append)
    assert steps.index("load memory") < steps.index("hypercall page") < steps.index("pin page tables")
    (va,) = struct.unpack("<Q", HYPERCALL_PAGE_NOTE[2])
    view = sim_xen.build.guest_view(report.domid)
    page = view.read_va(va, 4096)
    for nr in (*(int(h) for h in Hypercall), 127):
        stub = page[nr * 32 : (nr + 1) * 32]
        mov = b"\xb8" + struct.pack("<I", nr)  # mov $nr, %eax
        assert mov in stub and stub.index(b"\x0f\x05") > stub.index(mov), (nr, stub.hex())  # then syscall
    # The pages around it are the kernel's own bytes, as loaded (make_elf: nops, hlt, then "K"s).
    assert view.read_va(va - 4096, 0x42) == b"\x90" * 0x40 + b"\xf4K" and view.read_va(va + 4096, 4) == b"K" * 4


def test_a_kernel_without_the_note_gets_no_hypercall_page(sim_host: xenpure.Host, kernel: Path) -> None:
    steps: list[str] = []
    build_pv(sim_host, config(kernel), on_step=steps.append)
    assert "hypercall page" not in steps


def test_hypercall_init_errors_as_xen_gives_them(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    """What Xen 4.17 answered in the lab: EINVAL for a frame the domain does not own, EPERM for one that is a
    pinned page table, ESRCH without the domain; the same page twice is fine."""
    from xenpure.hypercall.abi.domctl import DomctlCmd

    a = build_pv(sim_host, config(kernel))
    b = build_pv(sim_host, config(kernel, name="g2"))

    def init(domid: int, mfn: int) -> None:
        sim_host._domctl(DomctlCmd.hypercall_init, domid, {"gmfn": mfn})

    page = a.p2m[a.layout.kernel.pfn + 1]
    init(a.domid, page)
    init(a.domid, page)
    with pytest.raises(xenpure.InvalidArgument):
        init(a.domid, b.p2m[b.layout.kernel.pfn])
    with pytest.raises(xenpure.InvalidArgument):
        init(a.domid, 0xFFFFFFFFF)
    with pytest.raises(xenpure.OperationNotPermitted):
        init(a.domid, a.p2m[a.layout.l4_pfn])
    with pytest.raises(xenpure.NoSuchDomain):
        init(0x7000, page)


def test_the_guest_gets_an_e820_up_to_maxmem(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    from xenpure.hypercall.abi.memory import E820Type

    report = build_pv(sim_host, config(kernel, memory=32, maxmem=96))
    assert sim_xen.build.memory_map(report.domid) == [(0, 96 << 20, E820Type.RAM)]


def test_set_memory_map_errors_as_xen_gives_them(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    """Xen 4.17 in the lab: up to 1024 entries are stored as given, 1025 is EINVAL, a bad buffer EFAULT."""
    from xenpure.hypercall.abi.memory import E820_ENTRY, E820_MAX_ENTRIES, FOREIGN_MEMORY_MAP, MemOp
    from xenpure.hypercall.abi.xen import Hypercall

    domid = build_pv(sim_host, config(kernel)).domid
    lay = FOREIGN_MEMORY_MAP.layout()
    pc = sim_host.privcmd

    def set_map(target: int, n: int, bad_buffer: bool = False) -> None:
        table = b"".join(E820_ENTRY.pack(i << 21, 1 << 20, 1) for i in range(n))
        with pc.buffer(lay.size + len(table)) as buf:
            buf.view[lay.size : lay.size + len(table)] = table
            where = 0x1000 if bad_buffer else buf.address + lay.size
            buf.view[: lay.size] = lay.build(domid=target, map={"nr_entries": n, "buffer": where})
            pc.hypercall(Hypercall.memory_op, int(MemOp.set_memory_map), buf.address, subop="set_memory_map")

    set_map(domid, E820_MAX_ENTRIES)
    assert len(sim_xen.build.memory_map(domid) or []) == E820_MAX_ENTRIES
    with pytest.raises(xenpure.InvalidArgument):
        set_map(domid, E820_MAX_ENTRIES + 1)
    with pytest.raises(xenpure.HypercallError, match="EFAULT"):
        set_map(domid, 1, bad_buffer=True)
    with pytest.raises(xenpure.NoSuchDomain):
        set_map(0x7000, 1)
    set_map(domid, 0)
    assert sim_xen.build.memory_map(domid) == []


def test_failure_at_the_hypercall_page_rolls_back(sim_host: xenpure.Host, sim_xen: SimXen, tmp_path: Path) -> None:
    def fail(name: str) -> None:
        if name == "hypercall page":
            raise RuntimeError("injected")

    with pytest.raises(BuildError, match="failed at step 'hypercall page': injected") as ei:
        build_pv(sim_host, config(hypercall_page_kernel(tmp_path)), on_step=fail)
    assert not ei.value.leftovers and set(sim_xen.domains) == {0}


def test_too_little_memory_rejected_before_createdomain(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    with pytest.raises(LayoutError, match="more memory"):
        build_pv(sim_host, config(kernel, memory=16))
    assert set(sim_xen.domains) == {0}


@pytest.mark.parametrize(
    "step",
    ["createdomain", "max_mem", "memory map", "populate_physmap", "event channels", "load memory", "shared info",
     "pin page tables", "grant table", "setvcpucontext", "xenstore", "introduce"],
)
def test_failure_at_any_step_rolls_back(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path, step: str) -> None:
    frames_before = len(sim_xen.memory.owner)

    def fail(name: str) -> None:
        if name == step:
            raise RuntimeError("injected")

    with pytest.raises(BuildError, match=f"failed at step '{step}': injected") as ei:
        build_pv(sim_host, config(kernel), on_step=fail)
    assert ei.value.step == step and not ei.value.leftovers
    if step not in ("createdomain", "max_mem", "memory map", "populate_physmap", "event channels"):
        assert "closed its event channels" in ei.value.rolled_back
    assert set(sim_xen.domains) == {0}
    assert len(sim_xen.memory.owner) == frames_before  # the guest's frames went with it
    xs = sim_host.xenstore
    assert "1" not in xs.directory("/local/domain")
    assert xs.directory("/vm") == () if _exists(xs, "/vm") else True
    assert sim_host.kernel.live_mappings <= 1  # only privcmd's scratch buffer stays


def test_rollback_reissues_destroydomain_while_xen_answers_eagain(
    sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path
) -> None:
    """The rollback's destroy is Domain's: a teardown Xen preempts (EAGAIN) is called again until done."""
    sim_xen.destroy_preemptions = 2
    created: list[int] = []

    def fail(name: str) -> None:
        if name == "grant table":
            created.extend(d for d in sim_xen.domains if d)
            raise RuntimeError("injected")

    with pytest.raises(BuildError, match="failed at step 'grant table'") as ei:
        build_pv(sim_host, config(kernel), on_step=fail)
    assert not ei.value.leftovers and set(sim_xen.domains) == {0}
    assert created and any(f"destroyed domain {created[0]}" in r for r in ei.value.rolled_back)


def _exists(xs: object, path: str) -> bool:
    try:
        xs.directory(path)  # type: ignore[attr-defined]
        return True
    except FileNotFoundError:
        return False


def test_hypervisor_failure_names_step_and_cause(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    sim_xen.domains[0].max_pages = 0  # irrelevant to the guest; the guest's own max_mem is what counts
    cfg = config(kernel, memory=32)
    orig = sim_xen.build.memory_op

    def short(mem: object, args: list[int], privileged: bool) -> int:
        return max(0, orig(mem, args, privileged) - 1)

    sim_xen.build.memory_op = short  # type: ignore[method-assign]
    with pytest.raises(BuildError, match="failed at step 'populate_physmap': populate_physmap gave"):
        build_pv(sim_host, cfg)
    assert set(sim_xen.domains) == {0}


def test_pin_refuses_a_table_still_mapped_writable(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    """The simulator checks the build: keep the L4 mapped writable in dom0 and the pin fails, as on Xen."""
    from xenpure.domain._builder import prepare
    from xenpure.foreignmemory import ForeignMemory

    cfg = config(kernel)
    l4_pfn = prepare(cfg).layout.l4_pfn
    fm = ForeignMemory.open(sim_host.kernel)
    held = []

    def keep_l4(name: str) -> None:
        if name == "pin page tables":
            domid = max(sim_xen.domains)
            held.append(fm.map(domid, [sim_xen.build.domains[domid].p2m[l4_pfn]]))

    try:
        with pytest.raises(BuildError, match=r"pin page tables.*PIN_L4_TABLE failed: EINVAL"):
            build_pv(sim_host, cfg, on_step=keep_l4)
    finally:
        for m in held:
            m.close()
        fm.close()
    assert held and set(sim_xen.domains) == {0}
    build_pv(sim_host, cfg)  # the same build without the stray mapping pins fine


def test_two_builds_from_two_threads(kernel: Path) -> None:
    xen = SimXen()
    errors: list[BaseException] = []
    ids: list[int] = []

    def one(name: str) -> None:
        try:
            with xenpure.connect(kernel=SimKernel(xen)) as host:
                ids.append(build_pv(host, config(kernel, name=name)).domid)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(f"t{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(ids) == [1, 2]
    for domid in ids:
        assert xen.build.guest_view(domid).start_info.nr_pages == 32 * 256


def test_host_create_start_destroy(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    d = sim_host.create(config(kernel, name="web"))
    assert d.info().paused and d.name == "web"
    d.start()
    assert not d.info().paused
    d.destroy()
    assert set(sim_xen.domains) == {0}
    assert str(d.id) not in sim_host.xenstore.directory("/local/domain")


def test_xl_cfg_to_domain(sim_host: xenpure.Host, tmp_path: Path, kernel: Path) -> None:
    from xenpure.domain import load_xl_config

    cfg = tmp_path / "g.cfg"
    cfg.write_text(f'type="pv"\nname="fromcfg"\nmemory=32\nkernel="{kernel}"\nextra="console=hvc0"\n')
    d = sim_host.create(load_xl_config(cfg))
    assert d.name == "fromcfg" and d.info().memory_kib == 32 * 1024


def test_init_p2m_kernel_builds_with_the_p2m_at_its_address(sim_host: xenpure.Host, sim_xen: SimXen,
                                                             tmp_path: Path) -> None:
    import struct

    from xenpure.testing._kernels import XEN_NOTES

    p = tmp_path / "vmlinux-p2m"
    p.write_bytes(make_elf(notes={**XEN_NOTES, 15: struct.pack("<Q", 0x8000000000)}))
    report = build_pv(sim_host, config(p))
    assert report.layout.p2m_relocated
    view = sim_xen.build.guest_view(report.domid)  # the pin walked the p2m's tables too
    si = view.start_info
    assert si.mfn_list == 0x8000000000 and si.nr_p2m_frames > 0
    raw = view.read_va(si.mfn_list, 8 * 32 * 256)
    assert [int.from_bytes(raw[i * 8 : i * 8 + 8], "little") for i in range(32 * 256)] == [
        view.p2m[i] for i in range(32 * 256)]


def test_cli_create(tmp_path: Path, kernel: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xenpure.cli import main

    cfg = tmp_path / "g.cfg"
    cfg.write_text(f'name="cli1"\nmemory=32\nkernel="{kernel}"\n')
    assert main(["create", "--sim", str(cfg), "--paused"]) == 0
    assert "created domain cli1 (id 1) paused" in capsys.readouterr().out
    cfg.write_text(f'name="cli1"\nmemory=32\nkernel="{kernel}"\nvif=["bridge=xenbr0"]\n')
    assert main(["create", "--sim", str(cfg)]) == 1
    assert "vif is an xl.cfg key xenpure does not support" in capsys.readouterr().err
    cfg.write_text(f'name="cli1"\nmemory=32\nkernel="{cfg}"\n')
    assert main(["create", "--sim", str(cfg)]) == 1
    assert "neither an ELF image nor a bzImage" in capsys.readouterr().err


def test_memory_comes_in_2mib_extents_where_xen_has_them(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    report = build_pv(sim_host, config(kernel, memory=33))  # 16.5 extents: 16 superpages and 128 single pages
    p2m = report.p2m
    for first in range(0, 32 * 256, 512):
        assert p2m[first] % 512 == 0 and list(p2m[first : first + 512]) == list(range(p2m[first], p2m[first] + 512))
    assert len(set(p2m)) == len(p2m) == 33 * 256
    assert [sim_xen.build.domains[report.domid].p2m[pfn] for pfn in range(len(p2m))] == list(p2m)

    def no_contiguous_memory(domid: int, order: int) -> int:
        raise OSError(12, "no contiguous memory")

    monkeypatch.setattr(sim_xen.memory, "alloc_contiguous", no_contiguous_memory)
    report = build_pv(sim_host, config(kernel, name="g2"))  # falls back to single pages
    assert sim_xen.build.guest_view(report.domid).start_info.nr_pages == 32 * 256
    assert len(set(report.p2m)) == 32 * 256
