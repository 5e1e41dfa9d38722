"""Event channels on the simulated host, where only the simulator can look: a guest's side of a channel,
and VIRQ_DOM_EXC as domains come and go. The scenarios both backends share are in tests/scenarios."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import xenpure
from xenpure.errors import AlreadyExists, NoSuchDomain
from xenpure.evtchn import EventChannels, EvtchnOps, EvtchnStat, Virq
from xenpure.hypercall.abi.domctl import DomctlCmd
from xenpure.hypercall.abi.sched import ShutdownReason
from xenpure.testing import SimXen

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
