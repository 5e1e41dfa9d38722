"""The raw ring transport in a real dom0: xenstore over a ``xenstore_domain_interface`` page shared through
real grants and rung through a real event channel.

Rule 1: nothing here is simulated but the other domain. The page is granted with gntalloc (to domid 0) and
mapped back with gntdev, so the two ends see each other only through Xen's grant mapping; the doorbells are
the two ends of a loopback interdomain event channel in dom0 (``bind_unbound_port(0)`` on one
/dev/xen/evtchn handle, ``bind_interdomain(0, port)`` on another). xenpure's xenstored serves the mapped
side (``Xenstored.add_ring``, speaking for a made-up unprivileged domain 4), and xenpure's ``Client`` drives
the granted side (``RingDevice``), as a guest kernel would its ring.

The ring's indices start near 2**32, so the traffic wraps the 32-bit counters as well as the 1024-byte
buffers. dom0's own xenstored (oxenstored or C) is not involved: this runs the same under either.

Runs inside the lab's dom0 only: ``tools/xenlab -- python3 -m pytest -v tests/lab/test_xenstore_ring_lab.py``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from xenpure import errors as E
from xenpure.evtchn import EventChannels
from xenpure.gnttab import GrantAllocator, GrantDevice
from xenpure.kernel import LinuxKernel
from xenpure.xenstore import AsyncClient, Client, EvtchnDoorbell, RingDevice, WatchEvent, XenstoreRing
from xenpure.xenstore import _wire as W
from xenpure.xenstore._ring import LAYOUT, XENSTORE_RING_SIZE, RingErrorCode, ServerFeature
from xenpure.xenstore.server import ServerCore, Xenstored

TIMEOUT = 60.0  # TCG is slow
DOMID = 4  # the domain the ring speaks for (xenpure's daemon trusts the ring's domid; no such domain exists)
HOME = f"/local/domain/{DOMID}"
START = 2**32 - 700  # the indices' first value: the traffic crosses 2**32
BIG = bytes(range(256)) * 15 + b"0123456789" * 4  # 3880 bytes: a reply almost four rings long


def _u32(view: memoryview, off: int) -> int:
    value: int = struct.unpack_from("<I", view, off)[0]
    return value


@dataclass
class Loop:
    """One ring: the granted page (the guest's side), its mapping (xenstored's side), the daemon, the client."""

    front_view: memoryview  # the granted page, as the guest has it
    back_view: memoryview  # the same page through gntdev, as xenstored has it
    front_bell: EvtchnDoorbell
    back_bell: EvtchnDoorbell
    daemon: Xenstored
    thread: threading.Thread
    xs: Client
    device: RingDevice
    dom0: socket.socket  # a privileged connection to the same daemon, over a socketpair

    def dom0_call(self, request: W.Request[object], req_id: int = 1) -> W.Message:
        """One request over the dom0 connection, raw; its reply message."""
        self.dom0.sendall(request.encode(req_id))
        framer = W.Framer()
        while (m := framer.next_message()) is None:
            data = self.dom0.recv(65536)
            assert data, "xenpure's xenstored closed the dom0 connection"
            framer.receive_data(data)
        return m


@pytest.fixture
def loop() -> Iterator[Loop]:
    kernel = LinuxKernel()
    gntshr = GrantAllocator.open(kernel)
    gnttab = GrantDevice.open(kernel)
    back_evt = EventChannels.open(kernel)
    front_evt = EventChannels.open(kernel)
    share = gntshr.share_pages(0, 1)  # the guest's ring page, granted to dom0 (xenstored)
    mapping = gnttab.map_grant_ref(0, share.refs[0])  # xenstored maps the grant
    unbound = back_evt.bind_unbound_port(0)
    back_bell = EvtchnDoorbell(unbound)
    front_bell = EvtchnDoorbell(front_evt.bind_interdomain(0, unbound.port))

    core = ServerCore()
    dom0 = core.connect(0)
    core.call(dom0, W.Introduce(DOMID, 1, 1))
    core.call(dom0, W.Mkdir(HOME))
    core.call(dom0, W.SetPerms(HOME, (W.Perm(DOMID, W.PermAccess.NONE),)))
    core.call(dom0, W.Write(f"{HOME}/big", BIG))  # dom0 is not bound by the node-size quota
    daemon = Xenstored(core)
    back = XenstoreRing(mapping.view, back=True)
    back.reset(START)  # before the daemon serves it: both halves empty, at START
    ready = threading.Event()
    thread = threading.Thread(target=daemon.serve, kwargs={"ready": ready}, daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT)
    daemon.add_ring(DOMID, back, back_bell)
    dom0_sock = daemon.connect_as(0)
    dom0_sock.settimeout(TIMEOUT)
    device = RingDevice(XenstoreRing(share.view), front_bell, path="granted ring")
    xs = Client(device, timeout=TIMEOUT)  # type: ignore[arg-type]
    try:
        yield Loop(share.view, mapping.view, front_bell, back_bell, daemon, thread, xs, device, dom0_sock)
    finally:
        xs.close()
        dom0_sock.close()
        daemon.stop()
        thread.join(TIMEOUT)
        back.close()  # the rings' views of the page go first: an mmap with live views cannot be unmapped
        device.ring.close()
        front_bell.close()
        back_bell.close()
        mapping.close()
        share.close()
        for dev in (gnttab, gntshr, back_evt, front_evt):
            dev.close()
        kernel.close()
    assert not thread.is_alive(), "xenpure's xenstored did not stop"


def test_server_features_cross_the_grant(loop: Loop) -> None:
    assert loop.xs.get_domain_path(DOMID) == HOME  # answered: the daemon serves the ring (add_ring is queued)
    front = loop.device.ring
    # What xenpure's daemon advertises on a ring, written through the mapping, read through the grant.
    assert front.server_features == ServerFeature.ERROR | ServerFeature.WATCHDEPTH
    assert front.connection == 0 and front.error == RingErrorCode.NONE
    assert bytes(loop.front_view[LAYOUT.server_features : LAYOUT.server_features + 4]) == bytes(
        loop.back_view[LAYOUT.server_features : LAYOUT.server_features + 4]
    )
    with pytest.raises(E.XenstoreNotSupported, match="RECONNECTION"):
        loop.device.reconnect(timeout=TIMEOUT)  # not advertised: not asked for
    assert front.connection == 0
    request = 16 + len(f"{DOMID}\0")  # GET_DOMAIN_PATH "4": the only traffic so far
    reply = 16 + len(f"{HOME}\0")
    assert _u32(loop.front_view, LAYOUT.req_prod) == START + request
    assert _u32(loop.back_view, LAYOUT.rsp_prod) == START + reply
    # The advertised WATCHDEPTH works: a depth-0 watch sees the node itself, not what is below it.
    loop.xs.write("d", "")
    loop.xs.watch("d", "depth", depth=0)
    assert loop.xs.next_watch_event() == WatchEvent("d", "depth")
    loop.xs.write("d/below", "1")
    loop.xs.write("d", "2")
    assert loop.xs.next_watch_event() == WatchEvent("d", "depth")


def test_messages_that_wrap_the_ring(loop: Loop) -> None:
    xs = loop.xs
    assert xs.read(f"{HOME}/big") == BIG  # a 3896-byte reply through a 1024-byte ring
    assert xs.read("big") == BIG  # the same, by the guest's relative path
    for size in (1000, 1500, 2000):  # requests one to two rings long (2048 is the node-size quota)
        value = bytes((i * 7 + size) % 256 for i in range(size))
        xs.write(f"w{size}", value)
        assert xs.read(f"w{size}") == value
    assert sorted(xs.directory(HOME)) == ["big", "w1000", "w1500", "w2000"]
    # Every byte went through the page: the indices moved far past 2**32 and each half is drained.
    for prod, cons in ((LAYOUT.req_prod, LAYOUT.req_cons), (LAYOUT.rsp_prod, LAYOUT.rsp_cons)):
        p, c = _u32(loop.front_view, prod), _u32(loop.front_view, cons)
        assert p == c and (p - START) % 2**32 > 4 * XENSTORE_RING_SIZE, (p, c)


@pytest.mark.parametrize("size", [1023, 1024])
def test_messages_of_exactly_1023_and_1024_bytes(loop: Loop, size: int) -> None:
    xs = loop.xs
    xs.write("pad", b"p" * 333)  # shift the ring's phase, so the message does not start at offset 0
    path = "m"
    header = 16
    value = b"v" * (size - header - len(path) - 1)  # WRITE: header, "m\0", value
    before = _u32(loop.front_view, LAYOUT.req_prod)
    xs.write(path, value)
    assert (_u32(loop.front_view, LAYOUT.req_prod) - before) % 2**32 == size  # the request was `size` bytes
    reply_value = b"r" * (size - header)  # READ's reply: header, value
    xs.write(path, reply_value)
    before = _u32(loop.front_view, LAYOUT.rsp_prod)
    assert xs.read(path) == reply_value
    assert (_u32(loop.front_view, LAYOUT.rsp_prod) - before) % 2**32 == size  # the reply was `size` bytes
    assert xs.read("pad") == b"p" * 333  # and the stream is still in step


def test_watch_events_over_the_ring(loop: Loop) -> None:
    xs = loop.xs
    xs.write("data", "")
    xs.watch("data", "tok")
    assert xs.next_watch_event() == WatchEvent("data", "tok")  # relative, as the guest registered it
    xs.write("data/mine", "1")
    assert xs.next_watch_event() == WatchEvent("data/mine", "tok")
    reply = loop.dom0_call(W.Write(f"{HOME}/data/dom0s", b"2"))  # another connection changes it
    assert reply.type == W.XsType.WRITE, reply
    assert xs.next_watch_event() == WatchEvent("data/dom0s", "tok")
    xs.unwatch("data", "tok")
    loop.dom0_call(W.Write(f"{HOME}/data/after", b"3"), req_id=2)
    with pytest.raises(E.Timeout):
        xs.next_watch_event(timeout=2.0)


def test_asyncio_client_pipelines_over_the_ring(loop: Loop) -> None:
    async def main() -> list[bytes]:
        async with AsyncClient(loop.device, timeout=TIMEOUT) as axs:  # type: ignore[arg-type]
            await asyncio.gather(*(axs.write(f"a/{i}", str(i) * 100) for i in range(30)))  # ~3 KiB in flight
            return await asyncio.gather(*(axs.read(f"a/{i}") for i in range(30)))

    assert asyncio.run(main()) == [(str(i) * 100).encode() for i in range(30)]


def test_a_hostile_index_sets_error_and_the_client_is_told(loop: Loop) -> None:
    xs = loop.xs
    assert xs.read("big") == BIG
    waited: list[BaseException] = []

    def wait_for_an_event() -> None:
        try:
            xs.next_watch_event(timeout=TIMEOUT * 2)
        except BaseException as e:  # handed to the test thread
            waited.append(e)

    waiter = threading.Thread(target=wait_for_an_event)
    waiter.start()
    # The guest's side claims 2000 bytes of requests: more than the ring holds (XSA-72).
    cons = _u32(loop.front_view, LAYOUT.req_cons)
    struct.pack_into("<I", loop.front_view, LAYOUT.req_prod, (cons + 2000) % 2**32)
    loop.front_bell.notify()
    waiter.join(TIMEOUT * 3)
    assert not waiter.is_alive()
    assert len(waited) == 1 and isinstance(waited[0], E.ConnectionClosed), waited
    assert "XENSTORE_ERROR_RINGIDX" in str(waited[0])  # the waiting client was woken and told why
    assert loop.device.ring.error == RingErrorCode.RINGIDX  # written through the mapping
    with pytest.raises(E.ConnectionClosed, match="RINGIDX"):
        xs.read("big")  # refused at once, nothing written to a ring nobody serves
    # The daemon dropped only that ring: its other connections are served.
    reply = loop.dom0_call(W.Read(f"{HOME}/big"), req_id=7)
    assert reply.type == W.XsType.READ and reply.req_id == 7 and reply.payload == BIG
    assert loop.thread.is_alive()
