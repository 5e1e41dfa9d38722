"""Foreign memory against the real thing: privcmd's MMAPBATCH_V2 and MMAP_RESOURCE on Xen 4.17, the same
scenarios as tests/sim/test_foreign.py.

start_info's frame is found honestly: the guest is created paused (``xl create -p``), so vcpu 0 still holds
what the domain builder set: rsi = start_info's virtual address, cr3 = the guest's page table root. We walk
the guest's own page tables (one read-only foreign mapping per level) from cr3 to rsi's frame.

Runs inside the lab's dom0 only: ``tools/xenlab -- python3 -m pytest -v tests/lab/test_foreign_lab.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import xenpure
from xenpure.errors import OperationNotPermitted
from xenpure.foreignmemory import ForeignMemory, FramesUnmapped, ResourceType
from xenpure.hypercall.abi.arch_x86 import VCPU_GUEST_CONTEXT
from xenpure.hypercall.abi.domctl import DomctlCmd
from xenpure.hypercall.abi.grant_table import GRANT_ENTRY_V1, GnttabReserved, GrantFlag, GrantType
from xenpure.hypercall.abi.xen import START_INFO

GUEST_CFG = Path("/var/lib/xenpure-lab/guest/guest.cfg")


@pytest.fixture(scope="module")
def host() -> Iterator[xenpure.Host]:
    with xenpure.connect() as h:
        yield h


@pytest.fixture
def fm(host: xenpure.Host) -> Iterator[ForeignMemory]:
    with ForeignMemory.open(host.kernel) as f:
        yield f


@pytest.fixture
def paused_guest(xl: Any) -> Iterator[int]:
    """A PV guest built by ``xl create -p`` and never run."""
    name = f"xenpure-fm-{os.getpid()}"
    xl("create", "-p", str(GUEST_CFG), f'name="{name}"')
    try:
        domid = xl.domid(name)
        assert domid is not None
        yield domid
    finally:
        xl.run("destroy", name)


def start_info_mfn(host: xenpure.Host, fm: ForeignMemory, domid: int) -> int:
    lay = VCPU_GUEST_CONTEXT.layout()
    _, _, raw = host.privcmd.domctl(
        host.interface, DomctlCmd.getvcpucontext, domid, lambda addr: {"vcpu": 0, "ctxt": addr}, extra=lay.size
    )
    ctx = lay.parse(raw)
    return fm.translate(domid, ctx.ctrlreg[3], ctx.user_regs.rsi)


def test_start_info_of_a_pv_guest(host: xenpure.Host, fm: ForeignMemory, paused_guest: int, xl: Any) -> None:
    mfn = start_info_mfn(host, fm, paused_guest)
    with fm.map(paused_guest, [mfn], readonly=True) as m:
        assert m.view.readonly
        info = START_INFO.layout().parse(m.view)
    assert info.magic.startswith(b"xen-3.0"), info.magic
    assert info.nr_pages == 128 * 256  # guest.cfg: memory = 128
    # the xenstore page it names is the one xl told xenstored about
    ring_ref = int(os.popen(f"xenstore-read /local/domain/{paused_guest}/store/ring-ref").read())
    assert info.store_mfn == ring_ref


def test_per_frame_errors(host: xenpure.Host, fm: ForeignMemory, paused_guest: int) -> None:
    good = start_info_mfn(host, fm, paused_guest)
    with pytest.raises(FramesUnmapped) as ei:
        fm.map(paused_guest, [good, 0xFFFFFFFFF], readonly=True)
    assert [(e.index, e.frame) for e in ei.value.errors] == [(1, 0xFFFFFFFFF)]
    assert isinstance(ei.value.errors[0].error, OperationNotPermitted)  # EPERM, as observed
    with fm.map(paused_guest, [good, 0xFFFFFFFFF], readonly=True, partial=True) as m:
        assert [e.index for e in m.errors] == [1]
        assert START_INFO.layout().parse(m.page(0)).magic.startswith(b"xen-3.0")


def test_grant_table_resource(host: xenpure.Host, fm: ForeignMemory, paused_guest: int) -> None:
    """The guest's grant table as a resource: xl filled the xenstore entry with the store page."""
    assert fm.resource_size(paused_guest, ResourceType.grant_table) >= 1
    lay = GRANT_ENTRY_V1.layout()
    with fm.map_grant_table(paused_guest, 1) as table:
        e = lay.parse(table.view[GnttabReserved.XENSTORE * lay.size :])
    ring_ref = int(os.popen(f"xenstore-read /local/domain/{paused_guest}/store/ring-ref").read())
    assert e.flags & GrantFlag.type_mask == GrantType.permit_access
    assert (e.domid, e.frame) == (0, ring_ref)


def test_ten_thousand_map_unmap_cycles_leak_nothing(host: xenpure.Host, fm: ForeignMemory,
                                                    paused_guest: int) -> None:
    mfn = start_info_mfn(host, fm, paused_guest)

    def fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    def maps() -> list[str]:
        with open("/proc/self/maps") as f:
            return [line.split(None, 5)[-1] for line in f if "/dev/xen" in line]

    before_fds, before_maps = fds(), maps()
    for _ in range(10_000):
        with fm.map(paused_guest, [mfn], readonly=True) as m:
            assert m.view[0] == ord("x")
    assert fds() == before_fds
    assert maps() == before_maps
