"""A xenstore ring rung through real event-channel handles (the simulated /dev/xen/evtchn): xenpure's
client on the front end, xenpure's daemon on the back end, one page, two ``EvtchnDoorbell``s."""

from __future__ import annotations

import threading

import pytest

from xenpure import errors as E
from xenpure.domain import Host
from xenpure.evtchn import EventChannels
from xenpure.xenstore import Client, EvtchnDoorbell, RingDevice, WatchEvent, XenstoreRing
from xenpure.xenstore import _wire as W
from xenpure.xenstore.server import ServerCore, Xenstored


def test_client_and_daemon_over_one_page_and_a_loopback_channel(sim_host: Host) -> None:
    page = bytearray(4096)
    server_side = EventChannels.open(sim_host.kernel)
    client_side = EventChannels.open(sim_host.kernel)
    unbound = server_side.bind_unbound_port(0)
    back_bell = EvtchnDoorbell(unbound)
    front_bell = EvtchnDoorbell(client_side.bind_interdomain(0, unbound.port))
    d = Xenstored(ServerCore())
    dom0 = d.core.connect(0)
    d.core.call(dom0, W.Introduce(4, 1, 1))
    d.core.call(dom0, W.Mkdir("/local/domain/4"))
    d.core.call(dom0, W.SetPerms("/local/domain/4", (W.Perm(4, W.PermAccess.NONE),)))
    ready = threading.Event()
    t = threading.Thread(target=d.serve, kwargs={"ready": ready}, daemon=True)
    t.start()
    ready.wait(5)
    try:
        d.add_ring(4, XenstoreRing(page, back=True), back_bell)
        with Client(RingDevice(XenstoreRing(page), front_bell, path="ring"), timeout=5) as xs:  # type: ignore[arg-type]
            xs.write("big", b"z" * 2000)  # twice the ring (and under the node-size quota): both bells ring
            assert xs.read("/local/domain/4/big") == b"z" * 2000
            xs.watch("big", "tok")
            assert xs.next_watch_event() == WatchEvent("big", "tok")
            with pytest.raises(E.PermissionDenied):
                xs.read("/")
    finally:
        d.stop()
        t.join(10)
        front_bell.close()
        back_bell.close()
    assert not t.is_alive()


def test_a_doorbell_needs_a_handle_of_its_own(sim_host: Host) -> None:
    with EventChannels.open(sim_host.kernel) as evt:
        a = evt.bind_unbound_port(0)
        evt.bind_unbound_port(0)
        with pytest.raises(ValueError, match="give it its own"):
            EvtchnDoorbell(a)
