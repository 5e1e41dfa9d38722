"""Event channels on the simulated host, where only the simulator can look: a guest's side of a channel,
and VIRQ_DOM_EXC as domains come and go. The scenarios both backends share are in tests/scenarios."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import pytest

import xenpure
from xenpure.errors import AlreadyExists, InvalidArgument, NoSuchDomain
from xenpure.evtchn import EventChannels, EvtchnOps, EvtchnStat, Virq
from xenpure.hypercall.abi.domctl import DomctlCmd
from xenpure.hypercall.abi.sched import ShutdownReason
from xenpure.hypercall.abi.xen import DomId
from xenpure.testing import SimXen
from xenpure.testing._evtchn import SimPortDoorbell

WAIT = 2.0


@pytest.fixture
def evt(sim_host: xenpure.Host) -> Iterator[EventChannels]:
    with EventChannels.open(sim_host.kernel) as e:
        yield e


def test_hypercall_ops_for_a_guest(sim_host: xenpure.Host, sim_xen: SimXen, evt: EventChannels) -> None:
    """The toolstack's way: alloc_unbound in the guest for dom0, then dom0 binds to it."""
    ops = EvtchnOps(sim_host.privcmd)
    guest = sim_xen.add_domain()
    gport = ops.alloc_unbound(guest.domid, 0)
    st = ops.status(guest.domid, gport)
    assert (st.state, st.remote_domid) == (EvtchnStat.unbound, 0)
    ch = evt.bind_interdomain(guest.domid, gport)
    st = ops.status(guest.domid, gport)
    assert (st.state, st.remote_domid, st.remote_port) == (EvtchnStat.interdomain, 0, ch.port)
    ch.notify()
    assert sim_xen.evtchn.port(guest.domid, gport).pending
    with pytest.raises(NoSuchDomain):
        ops.alloc_unbound(999, 0)


def test_virq_dom_exc_fires_when_a_domain_goes(sim_host: xenpure.Host, sim_xen: SimXen, evt: EventChannels) -> None:
    with evt.bind_virq(Virq.DOM_EXC) as virq:
        with pytest.raises(AlreadyExists):
            evt.bind_virq(Virq.DOM_EXC)
        assert EvtchnOps(sim_host.privcmd).status(0, virq.port).virq is Virq.DOM_EXC
        guest = sim_xen.add_domain()
        sim_host.domain(guest.domid).remote_shutdown(ShutdownReason.poweroff)
        assert evt.wait(WAIT) == [virq.port]
        virq.unmask()
        sim_host.privcmd.domctl(sim_host.interface, DomctlCmd.destroydomain, guest.domid)
        assert evt.wait(WAIT) == [virq.port]
    assert evt.channels == {}


def _rang(bell: SimPortDoorbell) -> bool:
    """Whether the port behind ``bell`` fired since the last look (and forget that it did)."""
    if not select.select([bell.fileno()], [], [], 0)[0]:
        return False
    os.eventfd_read(bell.fileno())
    return True


def test_hypercall_bind_interdomain_to_a_guest(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    """EVTCHNOP_bind_interdomain to a guest's offered port: the new local port starts pending (Xen's guard
    against a notification lost while the other end was unbound), sends reach the guest's kernel, and a
    port offered to another domain cannot be taken."""
    ops = EvtchnOps(sim_host.privcmd)
    guest = sim_xen.add_domain()
    gport = ops.alloc_unbound(guest.domid, 0)
    lp = ops.bind_interdomain(guest.domid, gport)
    assert sim_xen.evtchn.port(0, lp).pending
    st = ops.status(0, lp)
    assert (st.state, st.remote_domid, st.remote_port) == (EvtchnStat.interdomain, guest.domid, gport)
    st = ops.status(guest.domid, gport)
    assert (st.state, st.remote_domid, st.remote_port) == (EvtchnStat.interdomain, 0, lp)
    bell = SimPortDoorbell(sim_xen, guest.domid, gport)
    try:
        assert not _rang(bell)
        ops.send(lp)
        assert _rang(bell)
    finally:
        bell.close()
    elsewhere = ops.alloc_unbound(guest.domid, 5)
    with pytest.raises(InvalidArgument):
        ops.bind_interdomain(guest.domid, elsewhere)  # offered to domain 5, not to us
    ops.close(lp)
    assert ops.status(guest.domid, gport).state is EvtchnStat.unbound


def test_hypercall_unmask_delivers_a_pending_event(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    """EVTCHNOP_unmask on a port dom0's kernel handles: an event that came while the port was masked is
    delivered by the unmask, and an unmask with nothing pending delivers nothing."""
    ops = EvtchnOps(sim_host.privcmd)
    hp = ops.alloc_unbound(DomId.SELF, 0)
    lp = ops.bind_interdomain(0, hp)
    bell = SimPortDoorbell(sim_xen, 0, hp)  # dom0's kernel, handling hp
    try:
        ops.send(lp)
        assert _rang(bell)  # the upcall masks hp
        ops.send(lp)
        assert not _rang(bell) and sim_xen.evtchn.port(0, hp).pending  # held back while masked
        ops.unmask(hp)
        assert _rang(bell)
        ops.unmask(hp)
        assert not _rang(bell)
    finally:
        bell.close()
        ops.close(lp)
        ops.close(hp)


def test_reset_closes_a_paused_guests_ports(sim_host: xenpure.Host, sim_xen: SimXen, evt: EventChannels) -> None:
    """EVTCHNOP_reset of a guest: refused (EINVAL) while the guest runs, as Xen resets another domain's
    ports only while the toolstack holds it paused; then every port of the guest closes, dom0's end of a
    channel to it is left unbound, and the guest can have ports again."""
    ops = EvtchnOps(sim_host.privcmd)
    guest = sim_xen.add_domain()
    dom = sim_host.domain(guest.domid)
    bound = ops.alloc_unbound(guest.domid, 0)
    offered = ops.alloc_unbound(guest.domid, 0)
    ch = evt.bind_interdomain(guest.domid, bound)
    assert evt.wait(WAIT) == [ch.port]
    ch.unmask()
    with pytest.raises(InvalidArgument):
        ops.reset(guest.domid)
    assert ops.status(guest.domid, bound).state is EvtchnStat.interdomain
    dom.pause()
    ops.reset(guest.domid)
    assert ops.status(guest.domid, bound).state is EvtchnStat.closed
    assert ops.status(guest.domid, offered).state is EvtchnStat.closed
    st = ops.status(0, ch.port)
    assert (st.state, st.remote_domid) == (EvtchnStat.unbound, guest.domid)
    ch.notify()  # dropped by Xen: nobody is at the other end
    assert evt.wait(0.2) == []
    assert ops.alloc_unbound(guest.domid, 0) == bound  # the lowest free port again
    dom.unpause()
    with pytest.raises(NoSuchDomain):
        ops.reset(999)
