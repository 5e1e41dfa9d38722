"""The xenstore ring page: one implementation for both ends, checked against the C layout, wrap-around,
hostile indices, and a whole client <-> server conversation carried over it."""

from __future__ import annotations

import asyncio
import select
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenpure import errors as E
from xenpure.testing import SocketDoorbell
from xenpure.xenstore import AsyncClient, Client, WatchEvent
from xenpure.xenstore import _wire as W
from xenpure.xenstore._client_core import ClientCore, Reply
from xenpure.xenstore._ring import (
    LAYOUT,
    XENSTORE_RING_SIZE,
    RingDevice,
    RingErrorCode,
    ServerFeature,
    XenstoreRing,
)
from xenpure.xenstore._server_core import Send, ServerCore

_C = r"""
#include <stdio.h>
#include <stdint.h>
#include <stddef.h>
#include <xen/io/xs_wire.h>
#define O(f) printf(#f " %zu\n", offsetof(struct xenstore_domain_interface, f))
int main(void) {
    O(req); O(rsp); O(req_cons); O(req_prod); O(rsp_cons); O(rsp_prod); O(server_features); O(connection);
    O(error);
    printf("size %zu\nring %d\n", sizeof(struct xenstore_domain_interface), XENSTORE_RING_SIZE);
    printf("mask %u\n", MASK_XENSTORE_IDX(4294967295u));
    return 0;
}
"""


@pytest.mark.skipif(
    shutil.which("cc") is None or not Path("/usr/include/xen/io/xs_wire.h").exists(),
    reason="needs a C compiler and Xen's public headers",
)
def test_layout_matches_the_c_header(tmp_path: Path) -> None:
    (tmp_path / "p.c").write_text(_C)
    subprocess.run(["cc", "-o", str(tmp_path / "p"), str(tmp_path / "p.c")], check=True, capture_output=True)
    out = dict(
        line.split()
        for line in subprocess.run([str(tmp_path / "p")], capture_output=True, text=True).stdout.splitlines()
    )
    for field in ("req", "rsp", "req_cons", "req_prod", "rsp_cons", "rsp_prod", "server_features", "connection",
                  "error"):  # fmt: skip
        assert int(out[field]) == getattr(LAYOUT, field), field
    assert int(out["size"]) in (LAYOUT.size_417, LAYOUT.size_421)
    assert int(out["ring"]) == XENSTORE_RING_SIZE
    assert int(out["mask"]) == 4294967295 % XENSTORE_RING_SIZE


def page(start: int = 0) -> bytearray:
    buf = bytearray(4096)
    for off in (LAYOUT.req_cons, LAYOUT.req_prod, LAYOUT.rsp_cons, LAYOUT.rsp_prod):
        struct.pack_into("<I", buf, off, start % 2**32)
    return buf


def test_front_and_back_are_mirror_images() -> None:
    buf = page()
    front, back = XenstoreRing(buf), XenstoreRing(buf, back=True)
    assert front.write(b"request") == 7
    assert buf[0:7] == b"request" and struct.unpack_from("<I", buf, LAYOUT.req_prod)[0] == 7
    assert back.readable() == 7 and back.read() == b"request"
    assert back.write(b"reply") == 5
    assert buf[1024:1029] == b"reply"
    assert front.read(3) == b"rep" and front.read() == b"ly"
    assert front.readable() == 0 and front.writable() == XENSTORE_RING_SIZE


@pytest.mark.parametrize("start", [0, 1000, 2**32 - 3, 2**32 - 1024])
def test_wraps_around_the_buffer_and_the_index(start: int) -> None:
    buf = page(start)
    front, back = XenstoreRing(buf), XenstoreRing(buf, back=True)
    data = bytes(range(256)) * 12  # 3072 bytes: three times round the ring
    got = bytearray()
    sent = 0
    while sent < len(data):
        sent += front.write(data[sent : sent + 700])
        got += back.read(333)
    while back.readable():
        got += back.read()
    assert bytes(got) == data


def test_a_full_ring_takes_what_fits() -> None:
    buf = page()
    front = XenstoreRing(buf)
    assert front.write(b"x" * 2000) == XENSTORE_RING_SIZE
    assert front.write(b"y") == 0 and front.writable() == 0


@pytest.mark.parametrize(("prod", "cons"), [(1025, 0), (0, 1), (2**31, 0), (5, 2**32 - 1020)])
def test_hostile_indices_raise_protocol_error(prod: int, cons: int) -> None:
    buf = page()
    struct.pack_into("<I", buf, LAYOUT.req_prod, prod)
    struct.pack_into("<I", buf, LAYOUT.req_cons, cons)
    back = XenstoreRing(buf, back=True)
    with pytest.raises(E.ProtocolError, match="ahead of consumer"):
        back.read()
    with pytest.raises(E.ProtocolError):
        XenstoreRing(buf).write(b"x")


def test_signalling_fields() -> None:
    buf = page()
    back, front = XenstoreRing(buf, back=True), XenstoreRing(buf)
    back.server_features = ServerFeature.RECONNECTION | ServerFeature.ERROR
    assert front.server_features == ServerFeature.RECONNECTION | ServerFeature.ERROR
    with pytest.raises(PermissionError):
        front.error = 1
    front.connection = 1
    back.reset(77)
    back.connection = 0
    assert front.readable() == 0 and front.writable() == XENSTORE_RING_SIZE and front.connection == 0
    with pytest.raises(ValueError):
        XenstoreRing(bytearray(100))


@given(
    st.integers(min_value=0, max_value=2**32 - 1),
    st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=1500)), max_size=40),
)
def test_any_interleaving_delivers_the_stream_in_order(start: int, ops: list[tuple[bool, int]]) -> None:
    buf = page(start)
    front, back = XenstoreRing(buf), XenstoreRing(buf, back=True)
    stream = bytes(i % 251 for i in range(20000))
    sent, got = 0, bytearray()
    for is_write, n in ops:
        if is_write:
            sent += front.write(stream[sent : sent + n])
        else:
            got += back.read(n)
    got += back.read()
    assert bytes(got) == stream[:sent]


def test_a_conversation_over_the_ring() -> None:
    """Client core -> ring -> server core -> ring -> client core, as a guest talks to xenstored."""
    buf = page(2**32 - 10)
    front, back = XenstoreRing(buf), XenstoreRing(buf, back=True)
    client, server = ClientCore(), ServerCore()
    conn = server.connect(5)
    dom0 = server.connect(0)
    server.call(dom0, W.Introduce(5, 1, 1))
    server.call(dom0, W.Mkdir("/local/domain/5"))
    server.call(dom0, W.SetPerms("/local/domain/5", (W.Perm(5, W.PermAccess.NONE),)))
    pending = client.send(W.Write("data/x", b"v" * 1500)) + client.send(W.Read("data/x"))  # > one ring
    replies: list[Reply[object]] = []
    answers = b""
    for _ in range(20):
        pending = pending[front.write(pending) :]
        request = back.read()
        for out in server.receive_data(conn, request) if request else []:  # b"" would mean end of stream
            assert isinstance(out, Send)
            answers += out.data
        answers = answers[back.write(answers) :]
        reply = front.read()
        if reply:
            client.receive_data(reply)
        while (ev := client.next_event()) is not None:
            assert isinstance(ev, Reply)
            replies.append(ev)
    assert [r.value for r in replies] == [None, b"v" * 1500]


def serve(dev: RingDevice, server: ServerCore, conn: int, stop: threading.Event) -> None:
    """A minimal xenstored loop over the back end of a ring."""
    while not stop.is_set():
        r, _, _ = select.select([dev.fileno()], [], [], 0.05)
        if not r:
            continue
        try:
            data = dev.read(4096)
        except BlockingIOError:
            continue
        for out in server.receive_data(conn, data):
            assert isinstance(out, Send)
            view = memoryview(out.data)
            while view:
                view = view[dev.write(bytes(view)) :]


def test_a_client_over_a_ring_device() -> None:
    buf = page(2**32 - 100)
    a, b = socket.socketpair()
    front = RingDevice(XenstoreRing(buf), SocketDoorbell(a), path="ring:front")
    back = RingDevice(XenstoreRing(buf, back=True), SocketDoorbell(b), path="ring:back")
    server = ServerCore()
    conn = server.connect(0)
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(back, server, conn, stop), daemon=True)
    t.start()
    try:
        with Client(front, timeout=5) as xs:  # type: ignore[arg-type]
            xs.write("/r/big", b"x" * 4000)  # a message four times the ring
            assert xs.read("/r/big") == b"x" * 4000
            xs.watch("/r", "t")
            assert xs.next_watch_event() == WatchEvent("/r", "t")
            with xs.transaction() as tx:
                for i in range(50):
                    tx.write(f"/r/{i}", str(i))
            assert len(xs.directory("/r")) == 51
            events = [xs.next_watch_event().path for _ in range(50)]  # fired at commit
            assert sorted(events) == sorted(f"/r/{i}" for i in range(50))
            with pytest.raises(E.Timeout):  # a deadline holds while woken for nothing
                xs.next_watch_event(timeout=0.2)

            async def main() -> None:
                async with AsyncClient(front, timeout=5) as axs:  # type: ignore[arg-type]
                    values = await asyncio.gather(*(axs.read(f"/r/{i}") for i in range(50)))
                    assert values == [str(i).encode() for i in range(50)]

            asyncio.run(main())
    finally:
        stop.set()
        t.join(5)
        a.close()
        b.close()


class Backend:
    """A xenstored loop over the back end of a ring that also does what docs/misc/xenstore-ring.txt asks of a
    server on a reconnection request (empty both halves, forget the connection, say connected, ring)."""

    def __init__(self, buf: bytearray, bell: SocketDoorbell, features: ServerFeature) -> None:
        self.ring = XenstoreRing(buf, back=True)
        self.ring.server_features = features
        self.dev = RingDevice(self.ring, bell, path="ring:back")
        self.server = ServerCore()
        self.conn = self.server.connect(0)
        self.resets = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            select.select([self.dev.fileno()], [], [], 0.05)
            if self.ring.connection == 1:
                self.server.disconnect(self.conn)
                self.conn = self.server.connect(0)
                self.ring.reset(12345)
                self.ring.connection = 0
                self.resets += 1
                self.dev.bell.notify()
                continue
            try:
                data = self.dev.read(4096)
            except BlockingIOError:
                continue
            for out in self.server.receive_data(self.conn, data):
                assert isinstance(out, Send)
                view = memoryview(out.data)
                while view:
                    view = view[self.dev.write(bytes(view)) :]

    def __enter__(self) -> Backend:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def test_the_front_end_honours_the_error_indicator_only_when_advertised() -> None:
    buf = page(2**32 - 7)
    a, b = socket.socketpair()
    with Backend(buf, SocketDoorbell(b), ServerFeature(0)) as back:
        back.ring.error = RingErrorCode.RINGIDX  # not advertised: meaningless, the front end ignores it
        front = RingDevice(XenstoreRing(buf), SocketDoorbell(a), path="ring:front")
        with Client(front, timeout=5) as xs:  # type: ignore[arg-type]
            xs.write("/e", "1")
            assert xs.read("/e") == b"1"
            back.ring.server_features = ServerFeature.ERROR  # advertised now: the error counts
            with pytest.raises(E.ConnectionClosed, match=r"ring:front.*2 \(XENSTORE_ERROR_RINGIDX\)"):
                xs.read("/e")  # refused before anything is written
            back.dev.bell.notify()  # a waiting reader is woken and told, not left to its timeout
            with pytest.raises(E.ConnectionClosed, match="RINGIDX"):
                xs.next_watch_event(timeout=5)
            back.ring.error = 99
            with pytest.raises(E.ConnectionClosed, match="99 \\(not a XENSTORE_ERROR_"):
                xs.read("/e")
    a.close()
    b.close()


def test_reconnection() -> None:
    buf = page(500)
    a, b = socket.socketpair()
    with Backend(buf, SocketDoorbell(b), ServerFeature.RECONNECTION | ServerFeature.ERROR) as back:
        front = RingDevice(XenstoreRing(buf), SocketDoorbell(a), path="ring:front")
        xs = Client(front, timeout=5)  # type: ignore[arg-type]
        xs.write("/r", "kept")
        xs.watch("/r", "t")
        assert xs.next_watch_event() == WatchEvent("/r", "t")
        front.reconnect(timeout=5)
        assert back.resets == 1 and front.ring.connection == 0
        assert front.ring.readable() == 0 and front.ring.writable() == XENSTORE_RING_SIZE
        xs = Client(front, timeout=5)  # type: ignore[arg-type]
        assert xs.read("/r") == b"kept"  # the store is kept; the connection's watch is gone
        xs.write("/r", "changed")
        with pytest.raises(E.Timeout):
            xs.next_watch_event(timeout=0.3)
        # Someone else asked for a reconnection (a previous kernel, a crash kernel): the front end waits
        # for xenstored instead of reading a ring that is being reset.
        back.stop.set()
        back.thread.join(5)
        front.ring.connection = 1
        front.bell.notify()
        with pytest.raises(BlockingIOError, match="reconnection is in progress"):
            front.read(10)
        with pytest.raises(E.Timeout, match="did not reset"):
            front.reconnect(timeout=0.2)
    a.close()
    b.close()


def test_reconnection_needs_the_feature() -> None:
    buf = page()
    a, b = socket.socketpair()
    front = RingDevice(XenstoreRing(buf), SocketDoorbell(a))
    with pytest.raises(E.XenstoreNotSupported, match="RECONNECTION"):
        front.reconnect(timeout=1)
    assert front.ring.connection == 0  # nothing was asked
    with pytest.raises(PermissionError):
        RingDevice(XenstoreRing(buf, back=True), SocketDoorbell(b)).reconnect(timeout=1)
    a.close()
    b.close()


def test_a_write_to_a_ring_nobody_reads_times_out() -> None:
    """``RingDevice.write`` waits while the ring is full, but not forever: a peer that stopped reading gives
    ``Timeout`` after ``write_timeout``, and what fitted before is not lost."""
    buf = page(0)
    a, b = socket.socketpair()
    try:
        front = RingDevice(XenstoreRing(buf), SocketDoorbell(a), path="ring:front", write_timeout=0.05)
        assert front.write(b"x" * 1500) == XENSTORE_RING_SIZE
        with pytest.raises(E.Timeout, match=r"ring:front.*stayed full.*not reading"):
            front.write(b"y")
        back = XenstoreRing(buf, back=True)
        assert back.read(4096) == b"x" * XENSTORE_RING_SIZE
        assert front.write(b"y") == 1  # room again
    finally:
        a.close()
        b.close()
