"""Event channels, one suite for both backends: Linux 6.1's /dev/xen/evtchn and Xen 4.17's EVTCHNOP_* in the
lab, the simulated host elsewhere (see conftest.py). dom0 talks to itself through loopback channels."""

from __future__ import annotations

import asyncio
import errno
import select
import selectors
import threading
from collections.abc import Callable, Iterator

import pytest

from xenpure.domain import Host
from xenpure.errors import AccessDenied, HypercallError, InvalidArgument, NoSuchDomain
from xenpure.evtchn import Channel, EventChannels, EvtchnOps, EvtchnStat, Virq
from xenpure.hypercall.abi.xen import DomId

WAIT = 10.0  # seconds for an event that must come (TCG is slow)
NOTHING = 0.5  # seconds a wait that must come back empty lasts


@pytest.fixture
def evt(host: Host) -> Iterator[EventChannels]:
    with EventChannels.open(host.kernel) as e:
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
    b.notify()
    assert evt.wait(NOTHING) == []
    a.unmask()
    assert evt.wait(WAIT) == [a.port]
    a.unmask()
    assert evt.wait(NOTHING) == []


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
            asyncio.get_running_loop().call_later(0.05, b.notify)
            got.append(await asyncio.wait_for(anext(events), WAIT))
            a.unmask()
        await events.aclose()  # type: ignore[attr-defined]
        return got

    assert asyncio.run(run()) == [a.port] * 3


def test_a_thread_blocked_in_pending_wakes_on_notify(evt: EventChannels) -> None:
    a, b = loopback(evt)
    got: list[int | None] = []
    t = threading.Thread(target=lambda: got.append(evt.pending(None)))
    t.start()
    t.join(NOTHING)
    assert t.is_alive() and got == []  # it waits: nothing fired yet
    b.notify()
    t.join(WAIT)
    assert got == [a.port]


def test_status_of_both_ends_and_close(host: Host, evt: EventChannels) -> None:
    ops = EvtchnOps(host.privcmd)
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


def test_unbind_and_notify_refuse_ports_of_another_handle(host: Host, evt: EventChannels) -> None:
    a, _ = loopback(evt)
    with EventChannels.open(host.kernel) as other:
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
        evt.bind_interdomain(0, 4000)  # never allocated


def test_restrict(evt: EventChannels) -> None:
    evt.restrict(5)
    with pytest.raises(AccessDenied):
        evt.bind_unbound_port(0)
    with pytest.raises(AccessDenied):
        evt.bind_virq(Virq.DEBUG)
    with pytest.raises(AccessDenied):
        evt.bind_interdomain(0, 1)


def test_reset_forgets_fired_ports(evt: EventChannels) -> None:
    a, b = loopback(evt)
    b.notify()
    # Let the upcall land in the device's queue first (without reading it): otherwise the event may arrive
    # after the reset, as it did once under TCG, and the test would race the interrupt, not test reset.
    assert select.select([evt.fileno()], [], [], WAIT)[0]
    evt.reset()
    assert evt.wait(NOTHING) == []
    assert set(evt.channels) == {a.port, b.port}


def test_hypercall_send_reaches_the_device(host: Host, evt: EventChannels) -> None:
    """EVTCHNOP_send on a port allocated by hypercall (for DOMID_SELF's peer 0) fires dom0's bound end."""
    ops = EvtchnOps(host.privcmd)
    hp = ops.alloc_unbound(DomId.SELF, 0)
    try:
        ch = evt.bind_interdomain(0, hp)
        assert evt.wait(WAIT) == [ch.port]
        ch.unmask()
        ops.send(hp)
        assert evt.wait(WAIT) == [ch.port]
    finally:
        ops.close(hp)
    with pytest.raises(InvalidArgument):
        ops.send(hp)
    assert ops.status(0, ch.port).state is EvtchnStat.unbound


def test_hypercall_bind_interdomain_connects_to_a_device_port(host: Host, evt: EventChannels) -> None:
    """EVTCHNOP_bind_interdomain (no device underneath) to a port dom0's device offered: both ends read
    interdomain, EVTCHNOP_send on the new port fires the device's end, and closing it leaves that end
    unbound again. A port not offered is EINVAL, an unknown domain ESRCH."""
    ops = EvtchnOps(host.privcmd)
    with evt.bind_unbound_port(0) as a:
        lp = ops.bind_interdomain(0, a.port)
        try:
            sa, sl = ops.status(0, a.port), ops.status(0, lp)
            assert (sa.state, sa.remote_domid, sa.remote_port) == (EvtchnStat.interdomain, 0, lp)
            assert (sl.state, sl.remote_domid, sl.remote_port) == (EvtchnStat.interdomain, 0, a.port)
            ops.send(lp)
            assert evt.wait(WAIT) == [a.port]
            with pytest.raises(InvalidArgument):
                ops.bind_interdomain(0, a.port)  # connected now: no longer offered
        finally:
            ops.close(lp)
        sa = ops.status(0, a.port)
        assert (sa.state, sa.remote_domid) == (EvtchnStat.unbound, 0)
        assert ops.status(0, lp).state is EvtchnStat.closed
        with pytest.raises(InvalidArgument):
            ops.bind_interdomain(0, lp)  # a free port
        with pytest.raises(InvalidArgument):
            ops.bind_interdomain(0, 4000)  # beyond any port dom0 has had
        with pytest.raises(NoSuchDomain):
            ops.bind_interdomain(999, a.port)


def test_hypercall_unmask(host: Host) -> None:
    """EVTCHNOP_unmask on dom0's own port (one no device bound): accepted while it is allocated, and after it
    is closed too (a port once allocated stays valid to Xen); EINVAL only beyond any port dom0 has had."""
    ops = EvtchnOps(host.privcmd)
    hp = ops.alloc_unbound(DomId.SELF, 0)
    try:
        ops.unmask(hp)
        assert ops.status(0, hp).state is EvtchnStat.unbound  # unmasking changes no binding
    finally:
        ops.close(hp)
    ops.unmask(hp)
    assert ops.status(0, hp).state is EvtchnStat.closed
    with pytest.raises(InvalidArgument):
        ops.unmask(4000)


def test_status_edges(host: Host) -> None:
    """EVTCHNOP_status: port 0 is Xen's reserved port and reads closed; a port beyond any dom0 has had is
    EINVAL; an unknown domain is ESRCH."""
    ops = EvtchnOps(host.privcmd)
    assert ops.status(0, 0).state is EvtchnStat.closed
    with pytest.raises(InvalidArgument):
        ops.status(0, 4000)
    with pytest.raises(NoSuchDomain):
        ops.status(999, 1)


def test_fdopen_adopts_an_open_device(
    host: Host, open_fds: Callable[[], set[str]], mappings: Callable[[], int]
) -> None:
    """xenevtchn_fdopen's equivalent: a handle over a device opened elsewhere works as one from open(), and
    closing it closes that device (unbinding every port) and leaks nothing."""
    ops = EvtchnOps(host.privcmd)
    before_fds, before_maps = open_fds(), mappings()
    device = host.kernel.open("evtchn")
    evt = EventChannels.fdopen(device)
    try:
        assert evt.fileno() == device.fileno()
        a, b = loopback(evt)
        b.notify()
        assert evt.pending(WAIT) == a.port
    finally:
        evt.close()
    with pytest.raises(ValueError):
        device.fileno()  # the handle closed the device it adopted
    assert a.closed and b.closed
    assert ops.status(0, a.port).state is EvtchnStat.closed
    assert ops.status(0, b.port).state is EvtchnStat.closed
    assert open_fds() == before_fds
    assert mappings() == before_maps


def test_driver_edges(evt: EventChannels) -> None:
    """What Linux's driver and Xen answer at the edges (observed in the lab; the simulator must agree)."""
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


def test_closing_the_handle_unbinds_everything(host: Host) -> None:
    ops = EvtchnOps(host.privcmd)
    evt = EventChannels.open(host.kernel)
    a, b = loopback(evt)
    evt.close()
    assert a.closed and b.closed
    a.close()  # a no-op now
    assert ops.status(0, a.port).state is EvtchnStat.closed
    assert ops.status(0, b.port).state is EvtchnStat.closed


def test_ten_thousand_bind_unbind_cycles_leak_nothing(
    host: Host, open_fds: Callable[[], set[str]], mappings: Callable[[], int]
) -> None:
    before_fds, before_maps = open_fds(), mappings()
    with EventChannels.open(host.kernel) as evt:
        first = None
        for _ in range(10_000):
            with evt.bind_unbound_port(0) as a, evt.bind_interdomain(0, a.port) as b:
                first = first or (a.port, b.port)
        assert evt.channels == {}
        assert first is not None
        with evt.bind_unbound_port(0) as a:
            assert a.port == first[0]  # the same port again: nothing was left bound
    assert open_fds() == before_fds
    assert mappings() == before_maps
