"""Grant tables on the simulated host, where only the simulator can look: the entries and their flags as
grants are mapped, a guest's table, and what an interrupted mapping leaves in them. The scenarios both
backends share are in tests/scenarios."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import xenpure
from xenpure.errors import InvalidArgument
from xenpure.gnttab import GntSt, GnttabOps, GrantAllocator, GrantDevice, GrantTableError
from xenpure.hypercall.abi.grant_table import GrantFlag, GrantType
from xenpure.testing import SimKernel, SimXen


@pytest.fixture
def gntshr(sim_host: xenpure.Host) -> Iterator[GrantAllocator]:
    with GrantAllocator.open(sim_host.kernel) as g:
        yield g


@pytest.fixture
def gnttab(sim_host: xenpure.Host) -> Iterator[GrantDevice]:
    with GrantDevice.open(sim_host.kernel) as g:
        yield g


def test_entries_and_map_flags(sim_xen: SimXen, gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with gntshr.share_pages(0, 1, writable=False) as share:
        ref = share.refs[0]
        flags, grantee, _ = sim_xen.gnttab.entry(0, ref)
        assert flags & GrantFlag.type_mask == GrantType.permit_access and flags & GrantFlag.readonly
        assert grantee == 0
        with pytest.raises(InvalidArgument):
            gnttab.map_grant_ref(0, ref)  # a read-only grant cannot be mapped writable
        with gnttab.map_grant_ref(0, ref, readonly=True) as m:
            assert m.view.readonly
            flags, _, _ = sim_xen.gnttab.entry(0, ref)
            assert flags & GrantFlag.reading and not flags & GrantFlag.writing
        flags, _, _ = sim_xen.gnttab.entry(0, ref)
        assert not flags & (GrantFlag.reading | GrantFlag.writing)
    assert sim_xen.gnttab.entry(0, ref) == (0, 0, 0)  # unshared: the entry is invalid again


def test_a_grant_to_another_domain_is_refused(sim_xen: SimXen, gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    guest = sim_xen.add_domain()
    with gntshr.share_pages(guest.domid, 1) as share, pytest.raises(InvalidArgument):
        gnttab.map_grant_ref(0, share.refs[0])
    with pytest.raises(InvalidArgument):
        gnttab.map_grant_ref(0, 5000)


def test_an_exception_inside_leaves_nothing(sim_host: xenpure.Host, sim_xen: SimXen, gntshr: GrantAllocator,
                                            gnttab: GrantDevice) -> None:
    kernel = sim_host.kernel
    assert isinstance(kernel, SimKernel)
    before = kernel.live_mappings
    with pytest.raises(RuntimeError), gntshr.share_pages(0, 2) as share, gnttab.map_grant_refs(
        [(0, r) for r in share.refs]
    ):
        raise RuntimeError("interrupted")
    assert kernel.live_mappings == before
    assert all(sim_xen.gnttab.entry(0, r) == (0, 0, 0) for r in share.refs)
    assert share.closed


def test_gnttabop(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    ops = GnttabOps(sim_host.privcmd)
    size = ops.query_size(0)
    assert (size.nr_frames, size.max_nr_frames) == (1, 64)
    assert ops.get_version(0) == 1
    assert ops.set_version(1) == 1
    guest = sim_xen.add_domain()
    frames = ops.setup_table(guest.domid, 2)
    assert frames == sim_xen.gnttab.frames(guest.domid) and len(frames) == 2
    assert ops.query_size(guest.domid).nr_frames == 2
    with pytest.raises(GrantTableError) as ei:
        ops.query_size(999)
    assert ei.value.status is GntSt.bad_domain
