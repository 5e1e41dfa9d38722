"""Grant tables on the simulated host: the lab's scenarios (tests/lab/test_gnttab_lab.py), through the real
ioctl, mmap and hypercall path. Mappings here are real shared pages, so /proc/self/maps tells the truth."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

import xenpure
from xenpure.errors import InvalidArgument
from xenpure.evtchn import EventChannels
from xenpure.gnttab import (
    GntSt,
    GnttabOps,
    GrantAllocator,
    GrantCopyError,
    GrantDevice,
    GrantRef,
    GrantTableError,
)
from xenpure.hypercall.abi.grant_table import GrantFlag, GrantType
from xenpure.testing import SimKernel, SimXen

PAGE = 4096


@pytest.fixture
def gntshr(sim_host: xenpure.Host) -> Iterator[GrantAllocator]:
    with GrantAllocator.open(sim_host.kernel) as g:
        yield g


@pytest.fixture
def gnttab(sim_host: xenpure.Host) -> Iterator[GrantDevice]:
    with GrantDevice.open(sim_host.kernel) as g:
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


def test_grant_copy(gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with gntshr.share_pages(0, 1) as share:
        ref = share.refs[0]
        share.view[10:18] = b"copyme!!"
        assert gnttab.copy_from(GrantRef(0, ref, 10), 8) == b"copyme!!"
        gnttab.copy_to(GrantRef(0, ref, 200), b"written")
        assert bytes(share.view[200:207]) == b"written"
        results = gnttab.grant_copy([(GrantRef(0, ref, 10), 4), (GrantRef(0, 9999), 4), (b"xy", GrantRef(0, ref))])
        assert [r.status for r in results] == [GntSt.okay, GntSt.bad_gntref, GntSt.okay]
        assert results[0].data == b"copy" and results[1].data is None
        with pytest.raises(GrantCopyError) as ei:
            gnttab.copy_from(GrantRef(0, 9999), 1)
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


def test_unmap_notify_sends_an_event(sim_host: xenpure.Host, gntshr: GrantAllocator, gnttab: GrantDevice) -> None:
    with EventChannels.open(sim_host.kernel) as evt:
        a = evt.bind_unbound_port(0)
        b = evt.bind_interdomain(0, a.port)
        assert evt.wait(1.0) == [b.port]
        b.unmask()
        with gntshr.share_pages(0, 1) as share:
            with gnttab.map_grant_refs([(0, share.refs[0])], notify_port=b.port):
                assert evt.wait(0.05) == []
            assert evt.wait(1.0) == [a.port]  # the notify went out on b: its peer a fired
        with pytest.raises(InvalidArgument), gntshr.share_pages(0, 1, notify_port=4000):
            pass


def test_set_max_grants_has_nothing_to_limit(gnttab: GrantDevice) -> None:
    assert gnttab.set_max_grants(16) is False


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


def maps_of(fd: int) -> int:
    """How many mappings of this process show pages of the file open as ``fd`` (by inode)."""
    inode = str(os.fstat(fd).st_ino)
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.split()[4:5] == [inode])


def test_ten_thousand_map_unmap_cycles_leak_nothing(sim_xen: SimXen) -> None:
    kernel = SimKernel(sim_xen)
    assert sim_xen.memory.fd >= 0  # the host's machine memory (a memfd, and the mmap's own dup) exists first
    gc.collect()  # earlier tests' simulated hosts close their memory when collected
    fds = set(os.listdir("/proc/self/fd"))
    with xenpure.connect(kernel=kernel) as host:
        with GrantAllocator.open(host.kernel) as gntshr, GrantDevice.open(host.kernel) as gnttab:
            with gntshr.share_pages(0, 1) as share:
                maps = maps_of(sim_xen.memory.fd)
                for i in range(10_000):
                    with gnttab.map_grant_ref(0, share.refs[0]) as m:
                        m.view[0] = i & 0xFF
                        if i == 0:
                            assert maps_of(sim_xen.memory.fd) == maps + 1  # the count sees a mapping
                assert share.view[0] == 9_999 & 0xFF
                assert maps_of(sim_xen.memory.fd) == maps
            assert kernel.live_mappings == 1  # privcmd's scratch buffer only
    assert set(os.listdir("/proc/self/fd")) == fds
    assert not kernel.open_devices and kernel.live_mappings == 0
