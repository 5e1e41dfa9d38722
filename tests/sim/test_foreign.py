"""Foreign memory on the simulated host: the lab's scenarios (tests/lab/test_foreign_lab.py). The simulated
PV domain is laid out as a builder leaves it (start_info, page tables, vcpu 0's rsi and cr3), so finding
start_info goes the same way as in the lab: vcpu context, then a walk of the guest's own page tables."""

from __future__ import annotations

import errno
import gc
import os
from collections.abc import Iterator

import pytest

import xenpure
from xenpure.errors import InvalidArgument, NoSuchDomain, OperationNotPermitted
from xenpure.foreignmemory import ForeignMemory, FramesUnmapped, ResourceType
from xenpure.hypercall.abi.arch_x86 import VCPU_GUEST_CONTEXT
from xenpure.hypercall.abi.domctl import DomctlCmd
from xenpure.hypercall.abi.grant_table import GRANT_ENTRY_V1, GnttabReserved, GrantFlag, GrantType
from xenpure.hypercall.abi.xen import START_INFO
from xenpure.testing import SimKernel, SimXen

PAGE = 4096


@pytest.fixture
def fm(sim_host: xenpure.Host) -> Iterator[ForeignMemory]:
    with ForeignMemory.open(sim_host.kernel) as f:
        yield f


def start_info_mfn(host: xenpure.Host, fm: ForeignMemory, domid: int) -> int:
    """A not-yet-run PV domain's start_info frame: vcpu 0's rsi through its cr3 (the lab does the same)."""
    lay = VCPU_GUEST_CONTEXT.layout()
    _, _, raw = host.privcmd.domctl(
        host.interface, DomctlCmd.getvcpucontext, domid, lambda addr: {"vcpu": 0, "ctxt": addr}, extra=lay.size
    )
    ctx = lay.parse(raw)
    return fm.translate(domid, ctx.ctrlreg[3], ctx.user_regs.rsi)


def test_start_info_of_a_pv_domain(sim_host: xenpure.Host, sim_xen: SimXen, fm: ForeignMemory) -> None:
    guest = sim_xen.add_domain()
    layout = sim_xen.memory.build_pv(guest.domid, nr_pages=80)
    mfn = start_info_mfn(sim_host, fm, guest.domid)
    assert mfn == layout["start_info"]
    with fm.map(guest.domid, [mfn], readonly=True) as m:
        assert m.view.readonly
        info = START_INFO.layout().parse(m.view)
        assert info.magic.startswith(b"xen-3.0")
        assert info.nr_pages == 80 and info.store_mfn == layout["store"]
        assert info.console.domU.mfn == layout["console"]
    assert m.closed


def test_writes_through_a_foreign_mapping_reach_the_frame(sim_xen: SimXen, fm: ForeignMemory) -> None:
    guest = sim_xen.add_domain()
    layout = sim_xen.memory.build_pv(guest.domid)
    with fm.map(guest.domid, [layout["store"], layout["console"]]) as m:
        m.view[:4] = b"ring"
        m.page(1)[:4] = b"cons"
    assert bytes(sim_xen.memory.page(layout["store"])[:4]) == b"ring"
    assert bytes(sim_xen.memory.page(layout["console"])[:4]) == b"cons"


def test_per_frame_errors(sim_xen: SimXen, fm: ForeignMemory) -> None:
    guest = sim_xen.add_domain()
    other = sim_xen.add_domain()
    layout = sim_xen.memory.build_pv(guest.domid)
    theirs = sim_xen.memory.build_pv(other.domid)["start_info"]
    frames = [layout["start_info"], theirs, layout["store"], 0xFFFFF]
    with pytest.raises(FramesUnmapped) as ei:
        fm.map(guest.domid, frames)
    assert [(e.index, e.frame) for e in ei.value.errors] == [(1, theirs), (3, 0xFFFFF)]
    assert all(isinstance(e.error, OperationNotPermitted) and e.error.errno == errno.EPERM for e in ei.value.errors)
    with fm.map(guest.domid, frames, partial=True) as m:
        assert [e.index for e in m.errors] == [1, 3]
        assert START_INFO.layout().parse(m.page(0)).magic.startswith(b"xen-3.0")
    with pytest.raises(NoSuchDomain):
        fm.map(999, [1])


def test_grant_table_resource(sim_xen: SimXen, fm: ForeignMemory) -> None:
    """A guest's grant table as a resource: the toolstack's xenstore entry names the store page."""
    guest = sim_xen.add_domain()
    layout = sim_xen.memory.build_pv(guest.domid)
    assert fm.resource_size(guest.domid, ResourceType.grant_table) == 64
    lay = GRANT_ENTRY_V1.layout()
    with fm.map_grant_table(guest.domid, 1) as table:
        assert table.view.readonly
        e = lay.parse(table.view[GnttabReserved.XENSTORE * lay.size :])
    assert e.flags & GrantFlag.type_mask == GrantType.permit_access
    assert (e.domid, e.frame) == (0, layout["store"])
    with pytest.raises(InvalidArgument):
        fm.map_resource(guest.domid, ResourceType.grant_table, 0, 64, 1)


def test_dom0_cannot_acquire_its_own_grant_table(fm: ForeignMemory) -> None:
    with pytest.raises(OperationNotPermitted):
        fm.map_grant_table(0, 1)


def test_ten_thousand_map_unmap_cycles_leak_nothing(sim_xen: SimXen) -> None:
    guest = sim_xen.add_domain()
    mfn = sim_xen.memory.build_pv(guest.domid)["start_info"]
    kernel = SimKernel(sim_xen)
    gc.collect()
    fds = set(os.listdir("/proc/self/fd"))
    with xenpure.connect(kernel=kernel) as host, ForeignMemory.open(host.kernel) as fm:
        for _ in range(10_000):
            with fm.map(guest.domid, [mfn], readonly=True) as m:
                assert m.view[0] == ord("x")
    assert set(os.listdir("/proc/self/fd")) == fds
    assert not kernel.open_devices and kernel.live_mappings == 0
