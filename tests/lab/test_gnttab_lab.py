"""Grant tables against the real thing: Linux 6.1's gntdev and gntalloc on Xen 4.17, the same scenarios as
tests/sim/test_gnttab.py (dom0 grants pages to itself, then maps them).

Runs inside the lab's dom0 only: ``tools/xenlab -- python3 -m pytest -v tests/lab/test_gnttab_lab.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import xenpure
from xenpure.errors import HypercallError, InvalidArgument, OperationNotPermitted
from xenpure.evtchn import EventChannels
from xenpure.foreignmemory import ForeignMemory
from xenpure.gnttab import GntSt, GnttabOps, GrantAllocator, GrantCopyError, GrantDevice, GrantRef

PAGE = 4096
WAIT = 10.0


@pytest.fixture(scope="module")
def host() -> Iterator[xenpure.Host]:
    with xenpure.connect() as h:
        yield h


@pytest.fixture
def gntshr(host: xenpure.Host) -> Iterator[GrantAllocator]:
    with GrantAllocator.open(host.kernel) as g:
        yield g


@pytest.fixture
def gnttab(host: xenpure.Host) -> Iterator[GrantDevice]:
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
        with gnttab.map_domain_grant_refs(0, list(reversed(share.refs))) as m:
            assert [m.view[i * PAGE] for i in range(3)] == [0x43, 0x42, 0x41]


def test_read_only_grants(gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with gntshr.share_pages(0, 1, writable=False) as share:
        share.view[0] = 0x5A
        with pytest.raises(HypercallError):
            gnttab.map_grant_ref(0, share.refs[0])  # a read-only grant cannot be mapped writable
        with gnttab.map_grant_ref(0, share.refs[0], readonly=True) as m:
            assert m.view.readonly and m.view[0] == 0x5A


def test_dom0_cannot_acquire_its_own_grant_table(host: xenpure.Host) -> None:
    """XENMEM_acquire_resource of the caller's own grant table answers EPERM (observed on Xen 4.17), so the
    entries gntalloc writes are checked through a guest's table instead (test_foreign_lab.py)."""
    with ForeignMemory.open(host.kernel) as fm, pytest.raises(OperationNotPermitted):
        fm.map_grant_table(0, 1)


def test_grant_to_another_domain_or_bad_ref_is_refused(gntshr: GrantAllocator, gnttab: GrantDevice,
                                                       guest: Any) -> None:
    with gntshr.share_pages(guest.domid, 1) as share, pytest.raises(HypercallError):
        gnttab.map_grant_ref(0, share.refs[0])
    with pytest.raises(HypercallError):
        gnttab.map_grant_ref(0, 60000)


def test_grant_copy(gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with gntshr.share_pages(0, 1) as share:
        ref = share.refs[0]
        share.view[10:18] = b"copyme!!"
        assert gnttab.copy_from(GrantRef(0, ref, 10), 8) == b"copyme!!"
        gnttab.copy_to(GrantRef(0, ref, 200), b"written")
        assert bytes(share.view[200:207]) == b"written"
        results = gnttab.grant_copy([(GrantRef(0, ref, 10), 4), (GrantRef(0, 60000), 4), (b"xy", GrantRef(0, ref))])
        assert [r.status for r in results] == [GntSt.okay, GntSt.bad_gntref, GntSt.okay]
        assert results[0].data == b"copy"
        with pytest.raises(GrantCopyError):
            gnttab.copy_from(GrantRef(0, 60000), 1)
        with pytest.raises(InvalidArgument):
            gnttab.copy_from(GrantRef(0, ref, PAGE - 10), 20)


def test_unmap_notify_clears_its_byte(gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with gntshr.share_pages(0, 1) as share:
        share.view[7] = 0xFF
        with gnttab.map_grant_ref(0, share.refs[0]) as m:
            m.notify_on_unmap(offset=7)
            assert share.view[7] == 0xFF
        assert share.view[7] == 0


def test_unmap_notify_sends_an_event(host: xenpure.Host, gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with EventChannels.open(host.kernel) as evt:
        a = evt.bind_unbound_port(0)
        b = evt.bind_interdomain(0, a.port)
        assert evt.wait(WAIT) == [b.port]
        b.unmask()
        with gntshr.share_pages(0, 1) as share:
            with gnttab.map_grant_refs([(0, share.refs[0])], notify_port=b.port):
                assert evt.wait(0.5) == []
            assert evt.wait(WAIT) == [a.port]


def test_set_max_grants_has_nothing_to_limit(gnttab: GrantDevice) -> None:
    assert gnttab.set_max_grants(16) is False  # Linux answers ENOTTY: there is no limit to set


def test_an_exception_inside_leaves_nothing(gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    def maps() -> list[str]:
        with open("/proc/self/maps") as f:
            return [line for line in f if "/dev/xen" in line]

    before = maps()
    with pytest.raises(RuntimeError), gntshr.share_pages(0, 2) as share, gnttab.map_grant_refs(
        [(0, r) for r in share.refs]
    ):
        assert len(maps()) > len(before)
        raise RuntimeError("interrupted")
    assert maps() == before


def test_gnttabop(host: xenpure.Host, guest: Any) -> None:
    ops = GnttabOps(host.privcmd)
    size = ops.query_size(0)
    assert 1 <= size.nr_frames <= size.max_nr_frames
    assert ops.get_version(0) == 1
    assert ops.set_version(1) == 1
    gsize = ops.query_size(guest.domid)
    frames = ops.setup_table(guest.domid, gsize.nr_frames)
    assert len(frames) == gsize.nr_frames and all(frames)


def test_ten_thousand_map_unmap_cycles_leak_nothing(host: xenpure.Host) -> None:
    def fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    def maps() -> list[str]:
        with open("/proc/self/maps") as f:
            return [line.split(None, 5)[-1] for line in f if "/dev/xen" in line]

    before_fds, before_maps = fds(), maps()
    with GrantAllocator.open(host.kernel) as gntshr, GrantDevice.open(host.kernel) as gnttab:
        with gntshr.share_pages(0, 1) as share:
            for i in range(10_000):
                with gnttab.map_grant_ref(0, share.refs[0]) as m:
                    m.view[0] = i & 0xFF
            assert share.view[0] == 9_999 & 0xFF
    assert fds() == before_fds
    assert maps() == before_maps
