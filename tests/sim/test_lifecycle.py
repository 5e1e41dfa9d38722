"""The lifecycle verbs, events and console on the simulated host (guests modelled by testing._guest)."""

import asyncio

import pytest

import xenpure
from xenpure import DomainState, EventKind
from xenpure.hypercall.abi.io_console import XENCONS_INTERFACE
from xenpure.hypercall.abi.sched import ShutdownReason
from xenpure.testing import SimXen


def test_shutdown_asks_a_listening_guest_through_xenstore(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    g = sim_xen.add_guest("web")
    d = sim_host.domain("web")
    info = d.shutdown(wait=True, timeout=5)
    assert info is not None and info.state is DomainState.SHUTDOWN
    assert info.shutdown_reason is ShutdownReason.poweroff
    assert sim_xen.guests[g.domid].requests == ["poweroff"]  # it was asked, not forced


def test_reboot_reports_the_reboot_reason(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    sim_xen.add_guest("web")
    info = sim_host.domain("web").reboot(wait=True, timeout=5)
    assert info is not None and info.shutdown_reason is ShutdownReason.reboot


def test_a_guest_that_does_not_listen_is_shut_down_remotely(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    g = sim_xen.add_guest("old", listens=False)
    info = sim_host.domain("old").shutdown(wait=True, timeout=5)
    assert info is not None and info.shutdown_reason is ShutdownReason.poweroff
    assert sim_xen.guests[g.domid].requests == []  # never asked through xenstore


def test_a_guest_that_ignores_shutdown_times_out_with_its_state(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    sim_xen.add_guest("stubborn", obeys=False)
    with pytest.raises(xenpure.Timeout, match=r"did not shut down within 0.3 s: it is blocked \(-b----\)"):
        sim_host.domain("stubborn").shutdown(wait=True, timeout=0.3)


def test_destroy_removes_the_domain_and_its_xenstore_entries(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    g = sim_xen.add_guest("web")
    store = sim_xen.xenstored
    vm = store.read(f"/local/domain/{g.domid}/vm").decode()
    assert store.exists(vm)
    sim_host.domain("web").destroy()
    assert g.domid not in sim_xen.domains
    assert not store.exists(f"/local/domain/{g.domid}") and not store.exists(vm)
    assert not store.is_introduced(g.domid)
    with pytest.raises(xenpure.NoSuchDomain):
        sim_host.domain(g.domid).destroy()


def test_memory_target_and_maximum(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    g = sim_xen.add_guest("web", memory_mib=128)
    d = sim_host.domain("web")
    d.set_memory(64 * 1024)
    assert sim_xen.xenstored.read(f"/local/domain/{g.domid}/memory/target") == b"65536"
    with pytest.raises(ValueError, match="outside"):
        d.set_memory(256 * 1024)
    d.set_max_memory(256 * 1024)
    assert d.info().max_memory_kib == 256 * 1024
    d.set_memory(256 * 1024)


def test_console_ring_shows_boot_lines_then_new_output(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    sim_xen.add_guest("web")
    with sim_host.domain("web").console() as con:
        assert con.source == "ring"
        assert "XENPURE-GUEST-UP" in con.read()
        assert con.read() == ""  # consumed
        sim_host.domain("web").shutdown(wait=True, timeout=5)
        assert "Power down" in con.read(timeout=1)


def test_console_ring_with_a_lying_index_is_a_protocol_error(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    g = sim_xen.add_guest("web")
    page = sim_xen.memory.page(sim_xen.guests[g.domid].console_mfn)
    with sim_host.domain("web").console() as con:
        off = XENCONS_INTERFACE.layout().offsetof("out_prod")
        page[off : off + 4] = (10_000).to_bytes(4, "little")  # far beyond the 2048-byte ring
        with pytest.raises(xenpure.ProtocolError, match="claims"):
            con.read()


def test_events_in_order_exactly_once(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    with sim_host.events(timeout=10) as stream:
        domid = sim_xen.add_guest("web").domid
        d = sim_host.domain(domid)
        seen = []
        actions = [d.pause, d.unpause, lambda: d.shutdown(), d.destroy]
        for ev in stream:
            assert ev.domid == domid
            seen.append((ev.kind, ev.reason))
            if not actions:
                break
            actions.pop(0)()
    assert seen == [
        (EventKind.INTRODUCED, None),
        (EventKind.PAUSED, None),
        (EventKind.UNPAUSED, None),
        (EventKind.SHUTDOWN, ShutdownReason.poweroff),
        (EventKind.DESTROYED, None),
    ]


def test_a_crash_is_its_own_event(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    d = sim_host.domain(sim_xen.add_guest("web").domid)
    with sim_host.events(timeout=5) as stream:
        d.remote_shutdown(ShutdownReason.crash)
        ev = next(stream)
    assert ev.kind is EventKind.CRASHED and ev.reason is ShutdownReason.crash


def test_a_domain_being_built_is_introduced_when_it_starts(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    dom = sim_xen.add_domain()
    dom.pause_count = 1  # built paused and never run, as a toolstack leaves it before unpausing
    with sim_host.events(timeout=0.5) as stream:
        assert list(stream) == []
    with sim_host.events(timeout=5) as stream:
        sim_host.domain(dom.domid).unpause()
        ev = next(stream)
    assert ev.kind is EventKind.INTRODUCED and not ev.info.paused  # type: ignore[union-attr]


def test_async_events(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    async def run() -> list[EventKind]:
        kinds = []
        async with sim_host.events(timeout=5) as stream:
            domid = sim_xen.add_guest("web").domid
            async for ev in stream:
                kinds.append(ev.kind)
                if ev.kind is EventKind.INTRODUCED:
                    sim_host.domain(domid).shutdown()
                else:
                    break
        return kinds

    assert asyncio.run(run()) == [EventKind.INTRODUCED, EventKind.SHUTDOWN]


def test_events_leave_nothing_open(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    kernel = sim_host.kernel
    before = (len(kernel.open_devices), sim_xen.xenstored.connections)  # type: ignore[attr-defined]
    for _ in range(20):
        with sim_host.events(timeout=0):
            pass
    assert (len(kernel.open_devices), sim_xen.xenstored.connections) == before  # type: ignore[attr-defined]


def test_a_dying_domain_is_snapshotted_often_until_it_is_gone(
    sim_host: xenpure.Host, sim_xen: SimXen, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on real Xen: VIRQ_DOM_EXC (and @releaseDomain) come when the domain is killed, but it stays listed,
    # dying, until dom0 drops its last reference, and nothing announces that.
    from xenpure.domain import _events

    dom = sim_xen.add_guest("web")
    with sim_host.events(timeout=5, interval=1.0) as stream:
        assert not stream.monitor.settling
        dom.dying = True
        assert stream.poll_once() == []  # dying is not destroyed
        assert stream.monitor.settling
        assert stream._wait_time() == pytest.approx(_events.SETTLE_INTERVAL, abs=0.005)
        with sim_xen.lock:
            del sim_xen.domains[dom.domid]  # the last reference goes, silently
        ev = next(stream)
        assert (ev.kind, ev.domid) == (EventKind.DESTROYED, dom.domid)
        assert not stream.monitor.settling
        assert stream._wait_time() == pytest.approx(1.0, abs=0.05)

    zombie = sim_xen.add_guest("zombie")
    monkeypatch.setattr(_events, "SETTLE_LIMIT", 0.0)
    with sim_host.events(timeout=5, interval=1.0) as stream:
        zombie.dying = True
        assert stream.poll_once() == []
        assert not stream.monitor.settling  # dying for longer than SETTLE_LIMIT: the ordinary interval
        assert stream._wait_time() == pytest.approx(1.0, abs=0.05)


def test_info_carries_the_name_xenstore_gives_the_domain(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    g = sim_xen.add_guest("web")
    assert sim_host.domain("web").info().name == "web"
    assert sim_host.domain(0).info().name == "Domain-0"
    bare = sim_xen.add_domain()  # built by "another toolstack" that wrote nothing in xenstore
    assert sim_host.domain(bare.domid).info().name is None
    listed = {i.domid: i for i in sim_host.domain_infos()}
    assert listed[g.domid].name is None  # a batch listing asks xenstore nothing
    assert listed[g.domid] == sim_host.domain(g.domid)._info()


def test_info_without_the_name_asks_xenstore_nothing(
    sim_host: xenpure.Host, sim_xen: SimXen, monkeypatch: pytest.MonkeyPatch
) -> None:
    """info(name=False) answers while xenstored cannot (the lab stops it to take VIRQ_DOM_EXC)."""
    g = sim_xen.add_guest("web")
    dom = sim_host.domain(g.domid)

    def no_xenstore(*_: object, **__: object) -> None:
        raise AssertionError("xenstore was asked")

    monkeypatch.setattr(sim_host.xenstore, "read", no_xenstore)
    info = dom.info(name=False)
    assert info.name is None and info == dom._info()
    with pytest.raises(AssertionError, match="xenstore was asked"):
        dom.info()
