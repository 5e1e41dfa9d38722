"""Out-of-range arguments through the public API: ``ArgumentOutOfRange`` naming what did not fit, raised
before anything reaches Xen or the kernel, and the handle still works afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import xenpure
import xenpure.evtchn._handle as evtchn_handle
from xenpure import ArgumentOutOfRange, Domain, NoSuchDomain
from xenpure.evtchn import EventChannels
from xenpure.foreignmemory import ForeignMemory
from xenpure.gnttab import GrantAllocator, GrantDevice
from xenpure.hypercall.abi.xen import DomId
from xenpure.testing import SimXen


@pytest.fixture
def hypercalls(sim_host: xenpure.Host, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every hypercall the host's privcmd issues from now on."""
    calls: list[Any] = []
    real = sim_host._privcmd.hypercall

    def spy(*args: Any, **kw: Any) -> int:
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(sim_host._privcmd, "hypercall", spy)
    return calls


@pytest.mark.parametrize("domid", [70000, -1, 0x7FF0, 0x7FF4, 0x7FFF, 0x8000, 0xFFFF])
def test_host_domain_refuses_an_id_no_domain_can_have(
    sim_host: xenpure.Host, hypercalls: list[Any], domid: int
) -> None:
    with pytest.raises(ArgumentOutOfRange) as ei:
        sim_host.domain(domid)
    e = ei.value
    assert (e.record, e.field, e.value, e.lo, e.hi) == (None, "domid", domid, 0, 0x7FEF)
    assert str(e).startswith(f"domid = {domid} is out of range for a domain id (0..32751, 0x0..0x7fef): ")
    assert "Host.domains(), or `xenpure list`, shows them" in str(e)
    assert hypercalls == []  # refused before getdomaininfo


def test_a_reserved_id_is_named(sim_host: xenpure.Host) -> None:
    with pytest.raises(ArgumentOutOfRange, match="0x7ff0 is DOMID_SELF, a reserved id"):
        sim_host.domain(DomId.SELF)
    with pytest.raises(ArgumentOutOfRange, match="0x7ff2 is DOMID_XEN"):
        sim_host.domain(0x7FF2)
    with pytest.raises(ArgumentOutOfRange, match="ids from 0x7ff0 up are reserved"):
        sim_host.domain("70000")  # a digit string is an id too


def test_in_range_ids_still_reach_xen(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    with pytest.raises(NoSuchDomain):
        sim_host.domain(0x7FEF)
    assert sim_host.domain(0).id == 0
    guest = sim_xen.add_domain()
    assert sim_host.domain(guest.domid).info().domid == guest.domid


@pytest.mark.parametrize("domid", [70000, -1])
def test_a_domain_made_by_hand_is_refused_by_the_encoder(
    sim_host: xenpure.Host, hypercalls: list[Any], domid: int
) -> None:
    """``Domain(host, id)`` does not check its id; the domctl record does, before the hypercall."""
    with pytest.raises(ArgumentOutOfRange, match=rf"^xen_domctl\.domain = {domid} is out of range for uint16_t"):
        Domain(sim_host, domid).pause()
    assert hypercalls == []
    assert sim_host.domain(0).info().domid == 0


@pytest.fixture
def evt(sim_host: xenpure.Host, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[EventChannels, list[Any]]]:
    ioctls: list[Any] = []
    real = evtchn_handle.device_ioctl

    def spy(*args: Any, **kw: Any) -> int:
        ioctls.append(args[1].name)
        return real(*args, **kw)

    monkeypatch.setattr(evtchn_handle, "device_ioctl", spy)
    with EventChannels.open(sim_host.kernel) as e:
        yield e, ioctls


def test_evtchn_ports_and_domids(evt: tuple[EventChannels, list[Any]]) -> None:
    e, ioctls = evt
    with pytest.raises(ArgumentOutOfRange, match=r"^ioctl_evtchn_notify\.port = -1 is out of range for uint32_t"):
        e.notify(-1)
    with pytest.raises(ArgumentOutOfRange, match=r"^ioctl_evtchn_bind_interdomain\.remote_port = 4294967296 "):
        e.bind_interdomain(0, 1 << 32)
    with pytest.raises(ArgumentOutOfRange, match=r"^ioctl_evtchn_bind_unbound_port\.remote_domain = -1 "):
        e.bind_unbound_port(-1)
    # uint32_t fields the driver narrows to domid_t: 70000 would bind to domain 4464, so it is refused
    with pytest.raises(ArgumentOutOfRange, match=r"^ioctl_evtchn_bind_unbound_port\.remote_domain = 70000 .* domid_t"):
        e.bind_unbound_port(70000)
    with pytest.raises(ArgumentOutOfRange, match=r"^ioctl_evtchn_bind_interdomain\.remote_domain = 65536 .* domid_t"):
        e.bind_interdomain(65536, 1)
    with pytest.raises(ArgumentOutOfRange, match=r"^ioctl_evtchn_restrict_domid\.domid = 70000 "):
        e.restrict(70000)
    with pytest.raises(ArgumentOutOfRange, match=r"^write\(/dev/xen/evtchn\)\.port = -1 is out of range"):
        e.unmask(-1)
    assert ioctls == []
    with e.bind_unbound_port(0) as ch:  # the handle is untouched
        ch.notify()
    assert ioctls[0] == "IOCTL_EVTCHN_BIND_UNBOUND_PORT"


def test_gntdev_gntalloc_and_foreign_memory(sim_host: xenpure.Host) -> None:
    with GrantDevice.open(sim_host.kernel) as g:
        with pytest.raises(ArgumentOutOfRange, match=r"^ioctl_gntdev_grant_ref\.ref = -1 is out of range for uint32"):
            g.map_grant_ref(0, -1)
        with pytest.raises(ArgumentOutOfRange, match=r"^ioctl_gntdev_grant_ref\.domid = 4294967296 "):
            g.map_grant_refs([(0, 1), (1 << 32, 1)])
        with pytest.raises(ArgumentOutOfRange, match=r"^ioctl_gntdev_grant_ref\.domid = 70000 .* domid_t"):
            g.map_grant_refs([(0, 1), (70000, 1)])  # fits the uint32_t, not the domid_t the driver narrows to
        with pytest.raises(ArgumentOutOfRange, match=r"^ioctl_gntdev_set_max_grants\.count = -1 "):
            g.set_max_grants(-1)
        with GrantAllocator.open(sim_host.kernel) as a:
            with pytest.raises(ArgumentOutOfRange, match=r"^ioctl_gntalloc_alloc_gref\.domid = 70000 "):
                a.share_pages(70000, 1)
            with a.share_pages(0, 1) as share, g.map_grant_ref(0, share.refs[0]) as m:  # both still work
                assert len(m.view) == 4096
    with ForeignMemory.open(sim_host.kernel) as fm:
        with pytest.raises(ArgumentOutOfRange, match=r"^privcmd_mmapbatch_v2\.arr\[1\] = -1 .* for xen_pfn_t"):
            fm.map(0, [1, -1])
        with pytest.raises(ArgumentOutOfRange, match=r"^privcmd_mmapbatch_v2\.dom = 70000 "):
            fm.map(70000, [1])


def test_a_raw_hypercall_argument_that_does_not_fit(sim_host: xenpure.Host) -> None:
    from xenpure.hypercall.abi.xen import Hypercall

    with pytest.raises(ArgumentOutOfRange, match=r"^privcmd_hypercall\.arg\[1\] = -1 is out of range for uint64_t"):
        sim_host.privcmd.hypercall(Hypercall.xen_version, 0, -1)
    assert sim_host.version()  # the device still answers
