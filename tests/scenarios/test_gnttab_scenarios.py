"""Grant tables, one suite for both backends: Linux 6.1's gntdev and gntalloc on Xen 4.17 in the lab, the
simulated host elsewhere (see conftest.py). dom0 grants pages to itself, then maps them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from xenpure.domain import Host
from xenpure.errors import InvalidArgument
from xenpure.evtchn import EventChannels
from xenpure.gnttab import GntSt, GnttabOps, GrantAllocator, GrantCopyError, GrantDevice, GrantRef, GrantTableError

PAGE = 4096
WAIT = 10.0  # seconds for an event that must come (TCG is slow)
NOTHING = 0.5  # seconds a wait that must come back empty lasts
BAD_REF = 60000  # beyond any grant table dom0 has


@pytest.fixture
def gntshr(host: Host) -> Iterator[GrantAllocator]:
    with GrantAllocator.open(host.kernel) as g:
        yield g


@pytest.fixture
def gnttab(host: Host) -> Iterator[GrantDevice]:
    with GrantDevice.open(host.kernel) as g:
        yield g


def test_bytes_cross_a_grant_both_ways(gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with gntshr.share_pages(0, 1) as share, gnttab.map_grant_ref(0, share.refs[0]) as m:
        share.view[:5] = b"hello"
        assert bytes(m.view[:5]) == b"hello"
        m.view[100:105] = b"world"
        assert bytes(share.view[100:105]) == b"world"


def test_many_pages_map_in_the_order_asked(gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with gntshr.share_pages(0, 3) as share:
        for i in range(3):
            share.view[i * PAGE] = 0x41 + i
        refs = list(reversed(share.refs))
        with gnttab.map_domain_grant_refs(0, refs) as m:
            assert [m.view[i * PAGE] for i in range(3)] == [0x43, 0x42, 0x41]
        with gnttab.map_grant_refs([GrantRef(0, share.refs[1]), (0, share.refs[0])]) as m:
            assert [m.view[0], m.view[PAGE]] == [0x42, 0x41]


def test_read_only_grants(gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with gntshr.share_pages(0, 1, writable=False) as share:
        share.view[0] = 0x5A
        with pytest.raises(InvalidArgument):
            gnttab.map_grant_ref(0, share.refs[0])  # a read-only grant cannot be mapped writable
        with gnttab.map_grant_ref(0, share.refs[0], readonly=True) as m:
            assert m.view.readonly and m.view[0] == 0x5A


def test_a_bad_ref_is_refused(gnttab: GrantDevice) -> None:
    with pytest.raises(InvalidArgument):
        gnttab.map_grant_ref(0, BAD_REF)


def test_grant_copy(gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with gntshr.share_pages(0, 1) as share:
        ref = share.refs[0]
        share.view[10:18] = b"copyme!!"
        assert gnttab.copy_from(GrantRef(0, ref, 10), 8) == b"copyme!!"
        gnttab.copy_to(GrantRef(0, ref, 200), b"written")
        assert bytes(share.view[200:207]) == b"written"
        results = gnttab.grant_copy([(GrantRef(0, ref, 10), 4), (GrantRef(0, BAD_REF), 4), (b"xy", GrantRef(0, ref))])
        assert [r.status for r in results] == [GntSt.okay, GntSt.bad_gntref, GntSt.okay]
        assert results[0].data == b"copy" and results[1].data is None
        with pytest.raises(GrantCopyError) as ei:
            gnttab.copy_from(GrantRef(0, BAD_REF), 1)
        assert ei.value.status is GntSt.bad_gntref
        with pytest.raises(InvalidArgument):
            gnttab.copy_from(GrantRef(0, ref, PAGE - 10), 20)  # crosses the granted page


def test_unmap_notify_clears_its_byte(gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with gntshr.share_pages(0, 1) as share:
        share.view[7] = 0xFF
        with gnttab.map_grant_ref(0, share.refs[0]) as m:
            m.notify_on_unmap(offset=7)
            assert share.view[7] == 0xFF
        assert share.view[7] == 0
        # the sharing side too: its munmap clears the byte the peer still sees
        share.view[9] = 0xEE
        peer = gnttab.map_grant_ref(0, share.refs[0])
        share.notify_on_unmap(offset=9)
    assert peer.view[9] == 0
    peer.close()


def test_unmap_notify_sends_an_event(host: Host, gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with EventChannels.open(host.kernel) as evt:
        a = evt.bind_unbound_port(0)
        b = evt.bind_interdomain(0, a.port)
        assert evt.wait(WAIT) == [b.port]
        b.unmask()
        with gntshr.share_pages(0, 1) as share:
            with gnttab.map_grant_refs([(0, share.refs[0])], notify_port=b.port):
                assert evt.wait(NOTHING) == []
            assert evt.wait(WAIT) == [a.port]  # the notify went out on b: its peer a fired
        with pytest.raises(InvalidArgument), gntshr.share_pages(0, 1, notify_port=4000):
            pass


def test_set_max_grants_has_nothing_to_limit(gnttab: GrantDevice) -> None:
    assert gnttab.set_max_grants(16) is False  # Linux answers ENOTTY: there is no limit to set


def test_an_exception_inside_leaves_nothing(
    gntshr: GrantAllocator, gnttab: GrantDevice, mappings: Callable[[], int]
) -> None:
    before = mappings()
    with pytest.raises(RuntimeError), gntshr.share_pages(0, 2) as share, gnttab.map_grant_refs(
        [(0, r) for r in share.refs]
    ):
        assert mappings() > before
        raise RuntimeError("interrupted")
    assert mappings() == before
    assert share.closed


def test_gnttabop_on_dom0(host: Host) -> None:
    ops = GnttabOps(host.privcmd)
    size = ops.query_size(0)
    assert 1 <= size.nr_frames <= size.max_nr_frames
    assert ops.get_version(0) == 1
    assert ops.set_version(1) == 1
    with pytest.raises(GrantTableError) as ei:
        ops.query_size(999)
    assert ei.value.status is GntSt.bad_domain


def test_ten_thousand_map_unmap_cycles_leak_nothing(
    host: Host, open_fds: Callable[[], set[str]], mappings: Callable[[], int]
) -> None:
    before_fds, before_maps = open_fds(), mappings()
    with GrantAllocator.open(host.kernel) as gntshr, GrantDevice.open(host.kernel) as gnttab:
        with gntshr.share_pages(0, 1) as share:
            for i in range(10_000):
                with gnttab.map_grant_ref(0, share.refs[0]) as m:
                    m.view[0] = i & 0xFF
            assert share.view[0] == 9_999 & 0xFF
    assert open_fds() == before_fds
    assert mappings() == before_maps
