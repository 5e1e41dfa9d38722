"""Event channels on the simulated host: the lab's scenarios (tests/lab/test_evtchn_lab.py), through the real
ioctl and hypercall encode/decode path."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import selectors
import threading

import pytest

import xenpure
from xenpure.errors import AccessDenied, AlreadyExists, HypercallError, InvalidArgument, NoSuchDomain
from xenpure.evtchn import Channel, EventChannels, EvtchnOps, EvtchnStat, Virq
from xenpure.hypercall.abi.domctl import DomctlCmd
from xenpure.hypercall.abi.sched import ShutdownReason
from xenpure.testing import SimKernel, SimXen

WAIT = 2.0


@pytest.fixture
def evt(sim_host: xenpure.Host) -> EventChannels:
    with EventChannels.open(sim_host.kernel) as e:
        yield e


def loopback(evt: EventChannels) -> tuple[Channel, Channel]:
    """dom0 allocates an unbound port for itself and binds to it; the bind's own event is consumed."""
    a = evt.bind_unbound_port(0)
    b = evt.bind_interdomain(0, a.port)
    assert evt.wait(WAIT) == [b.port]  # Xen marks a freshly bound interdomain port pending
    b.unmask()
    return a, b


def test_notify_shows_up_pending_on_the_other_end(evt: EventChannels) -> None:
    a, b = loopback(evt)
    assert evt.pending() is None
    b.notify()
    assert evt.pending(WAIT) == a.port
    a.notify()
    assert evt.pending(WAIT) == b.port


def test_a_fired_port_stays_masked_until_unmasked(evt: EventChannels) -> None:
    a, b = loopback(evt)
    b.notify()
    assert evt.wait(WAIT) == [a.port]
    b.notify()  # a is masked: Xen keeps it pending
    assert evt.wait(0.05) == []
    a.unmask()  # unmasking a pending port delivers it again
    assert evt.wait(WAIT) == [a.port]
    a.unmask()
    assert evt.wait(0.05) == []


def test_waiting_with_selectors(evt: EventChannels) -> None:
    a, b = loopback(evt)
    with selectors.DefaultSelector() as sel:
        sel.register(evt, selectors.EVENT_READ)
        assert sel.select(0) == []
        b.notify()
        ready = sel.select(WAIT)
        assert [key.fileobj for key, _ in ready] == [evt]
        assert evt.pending() == a.port
        assert sel.select(0) == []


def test_waiting_with_asyncio(evt: EventChannels) -> None:
    a, b = loopback(evt)

    async def run() -> list[int]:
        got: list[int] = []
        events = evt.events()
        for _ in range(3):
            asyncio.get_running_loop().call_later(0.01, b.notify)
            got.append(await asyncio.wait_for(anext(events), WAIT))
            a.unmask()  # re-arm, or the next notify stays pending
        await events.aclose()
        return got

    assert asyncio.run(run()) == [a.port] * 3


def test_status_of_both_ends_and_close(sim_host: xenpure.Host, evt: EventChannels) -> None:
    ops = EvtchnOps(sim_host.privcmd)
    a, b = loopback(evt)
    sa, sb = ops.status(0, a.port), ops.status(0, b.port)
    assert (sa.state, sa.remote_domid, sa.remote_port) == (EvtchnStat.interdomain, 0, b.port)
    assert (sb.state, sb.remote_domid, sb.remote_port) == (EvtchnStat.interdomain, 0, a.port)
    with b:
        pass
    assert b.closed and b.port not in evt.channels
    assert ops.status(0, b.port).state is EvtchnStat.closed
    sa = ops.status(0, a.port)
    assert (sa.state, sa.remote_domid) == (EvtchnStat.unbound, 0)


def test_unbind_and_notify_refuse_ports_of_another_handle(sim_host: xenpure.Host, evt: EventChannels) -> None:
    a, _ = loopback(evt)
    with EventChannels.open(sim_host.kernel) as other:
        for call in (other.notify, other.unbind):
            with pytest.raises(HypercallError) as ei:
                call(a.port)
            assert ei.value.errno == errno.ENOTCONN
    a.close()
    a.close()  # idempotent
    with pytest.raises(HypercallError) as ei:
        evt.unbind(a.port)
    assert ei.value.errno == errno.ENOTCONN


def test_bind_interdomain_to_a_port_not_offered_is_einval(evt: EventChannels) -> None:
    a, _ = loopback(evt)
    with pytest.raises(InvalidArgument):
        evt.bind_interdomain(0, a.port)  # already connected
    with pytest.raises(InvalidArgument):
        evt.bind_interdomain(0, 4000)


def test_restrict(evt: EventChannels, sim_xen: SimXen) -> None:
    guest = sim_xen.add_domain()
    evt.restrict(guest.domid)
    with pytest.raises(AccessDenied):
        evt.bind_unbound_port(0)
    with pytest.raises(AccessDenied):
        evt.bind_virq(Virq.DEBUG)
    with pytest.raises(AccessDenied):
        evt.bind_interdomain(0, 1)


def test_reset_forgets_fired_ports(evt: EventChannels) -> None:
    a, b = loopback(evt)
    b.notify()
    evt.reset()
    assert evt.wait(0.05) == []
    assert set(evt.channels) == {a.port, b.port}


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


def test_hypercall_send_reaches_the_device(sim_host: xenpure.Host, evt: EventChannels) -> None:
    ops = EvtchnOps(sim_host.privcmd)
    hp = ops.alloc_unbound(0x7FF0, 0)
    ch = evt.bind_interdomain(0, hp)
    assert evt.wait(WAIT) == [ch.port]
    ch.unmask()
    ops.send(hp)
    assert evt.wait(WAIT) == [ch.port]
    ops.close(hp)
    with pytest.raises(InvalidArgument):
        ops.send(hp)
    assert ops.status(0, ch.port).state is EvtchnStat.unbound


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


def test_closing_the_handle_unbinds_everything(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    evt = EventChannels.open(sim_host.kernel)
    a, b = loopback(evt)
    evt.close()
    assert a.closed and b.closed
    a.close()  # a no-op now
    assert sim_xen.evtchn.ports.get(0, {}) == {}


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_ten_thousand_bind_unbind_cycles_leak_nothing(sim_xen: SimXen) -> None:
    kernel = SimKernel(sim_xen)
    gc.collect()  # earlier tests' simulated hosts release their descriptors when collected
    before = open_fds()
    with xenpure.connect(kernel=kernel) as host, EventChannels.open(host.kernel) as evt:
        for _ in range(10_000):
            with evt.bind_unbound_port(0) as a, evt.bind_interdomain(0, a.port):
                pass
        assert evt.channels == {}
        assert sim_xen.evtchn.ports[0] == {}
        with evt.bind_unbound_port(0) as a:
            assert a.port == 1  # ports are reused: none was left allocated
    assert open_fds() == before
    assert not kernel.open_devices and kernel.live_mappings == 0


def test_driver_edges_as_observed_in_the_lab(evt: EventChannels) -> None:
    with pytest.raises(InvalidArgument):
        evt.unbind(4000)  # beyond the FIFO ABI's first event page
    with pytest.raises(HypercallError) as ei:
        evt.notify(4000)
    assert ei.value.errno == errno.ENOTCONN
    evt.unmask(4000)  # a port the handle did not bind is ignored
    with pytest.raises(NoSuchDomain):
        evt.bind_interdomain(999, 1)
    with evt.bind_unbound_port(999) as ch:  # Xen does not check the remote domain of an unbound port
        assert ch.remote_domid == 999
    with pytest.raises(InvalidArgument):
        evt.bind_virq(99)
    with pytest.raises(InvalidArgument):
        evt.restrict(0x7FF0)
    evt.restrict(3)
    with pytest.raises(AccessDenied):
        evt.restrict(4)  # a restriction cannot be changed


def test_a_thread_blocked_in_pending_wakes_on_notify(evt: EventChannels) -> None:
    a, b = loopback(evt)
    got: list[int | None] = []
    t = threading.Thread(target=lambda: got.append(evt.pending(None)))
    t.start()
    t.join(0.1)
    assert t.is_alive() and got == []  # it waits: nothing fired yet
    b.notify()
    t.join(WAIT)
    assert got == [a.port]
