"""The READ fast path (``ClientCore.send_read``/``read_reply``, ``Client.read``) and request-id keyed
pipelining: the same protocol as the general path, with less machinery -- so every check the general path
makes must still hold: strict req_id matching, watch events apart, errors as errno exceptions, limits,
tracing."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import pytest

from xenpure import errors as E
from xenpure.xenstore import Client
from xenpure.xenstore import _wire as W
from xenpure.xenstore._client_core import ClientCore, Closed, ErrorReply, Reply, WatchEvent
from xenpure.xenstore._wire import XsType


def msg(t: XsType, req_id: int, payload: bytes, tx_id: int = 0) -> bytes:
    return W.Message(t, req_id, tx_id, payload).encode()


# -- the core ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/local/domain/0/name", "name", "@releaseDomain", "/" + "x" * 3071])
@pytest.mark.parametrize("tx_id", [0, 7, 2**32 - 1])
def test_send_read_is_byte_for_byte_what_read_encodes(path: str, tx_id: int) -> None:
    fast, slow = ClientCore(), ClientCore()
    for _ in range(2):  # the second time from the packer cache
        req_id, data = fast.send_read(path, tx_id)
        assert data == slow.send(W.Read(path), tx_id=tx_id)
        assert req_id == W.Header.unpack(data).req_id
    assert fast.outstanding == 2


def test_a_read_reply_is_taken_from_the_buffer() -> None:
    core = ClientCore()
    req_id, _ = core.send_read("/a")
    assert core.read_reply(msg(XsType.READ, req_id, b"v"), req_id) == b"v"
    assert core.outstanding == 0
    req_id, _ = core.send_read("/a")
    assert core.read_reply(msg(XsType.READ, req_id, b""), req_id) == b""  # an empty value is a value


def test_a_read_reply_with_a_mismatched_req_id_is_a_protocol_error() -> None:
    core = ClientCore()
    req_id, _ = core.send_read("/a")
    stray = msg(XsType.READ, req_id + 1, b"v")
    assert core.read_reply(stray, req_id) is None  # not taken: receive() judges it
    with pytest.raises(E.ProtocolError, match="never sent"):
        core.receive(stray)
    with pytest.raises(E.ProtocolError):  # broken for good
        core.send_read("/b")
    with pytest.raises(E.ProtocolError):
        core.read_reply(msg(XsType.READ, req_id, b"v"), req_id)


def test_a_reply_of_another_type_to_a_read_is_a_protocol_error() -> None:
    core = ClientCore()
    req_id, _ = core.send_read("/a")
    wrong = msg(XsType.WRITE, req_id, b"OK\0")
    assert core.read_reply(wrong, req_id) is None
    with pytest.raises(E.ProtocolError, match="answered READ req_id 1 with a WRITE"):
        core.receive(wrong)


def test_a_watch_event_before_the_reply_is_kept_apart() -> None:
    core = ClientCore()
    req_id, _ = core.send_read("/a")
    data = W.encode_watch_event("/a", "tok") + msg(XsType.READ, req_id, b"v")
    assert core.read_reply(data, req_id) is None
    ev = core.receive(data)
    assert ev[0] == WatchEvent("/a", "tok")
    assert isinstance(ev[1], Reply) and ev[1].req_id == req_id and ev[1].value == b"v"
    assert ev[1].request == W.Read("/a")  # made for the event: the fast path keeps only the path
    assert len(ev) == 2 and core.outstanding == 0


def test_a_reply_after_the_fast_path_s_reply_is_left_to_receive() -> None:
    core = ClientCore()
    a, _ = core.send_read("/a")
    b, _ = core.send_read("/b")
    data = msg(XsType.READ, a, b"A") + msg(XsType.READ, b, b"B")
    assert core.read_reply(data, a) is None  # two messages: not "exactly the reply"
    assert [(e.req_id, e.value) for e in core.receive(data)] == [(a, b"A"), (b, b"B")]  # type: ignore[union-attr]


def test_an_error_reply_raises_the_errno_exception_with_the_path() -> None:
    core = ClientCore()
    req_id, _ = core.send_read("/missing")
    with pytest.raises(E.NoEntry) as info:
        core.read_reply(msg(XsType.ERROR, req_id, b"ENOENT\0"), req_id)
    assert info.value.path == "/missing" and info.value.op == "READ"
    assert core.outstanding == 0
    req_id, _ = core.send_read("/x")  # the connection is still fine
    assert core.read_reply(msg(XsType.READ, req_id, b"v"), req_id) == b"v"


def test_a_malformed_error_reply_breaks_the_core() -> None:
    core = ClientCore()
    req_id, _ = core.send_read("/a")
    with pytest.raises(E.ProtocolError):
        core.read_reply(msg(XsType.ERROR, req_id, b"nonsense\0"), req_id)
    with pytest.raises(E.ProtocolError):
        core.send_read("/a")


def test_a_reply_cut_in_two_goes_through_the_framer() -> None:
    core = ClientCore()
    req_id, _ = core.send_read("/a")
    data = msg(XsType.READ, req_id, b"value")
    assert core.read_reply(data[:10], req_id) is None
    assert core.receive(data[:10]) == []
    assert core.read_reply(data[10:], req_id) is None  # the framer holds the start: not a whole message
    (ev,) = core.receive(data[10:])
    assert isinstance(ev, Reply) and ev.value == b"value"
    req_id, _ = core.send_read("/a")  # drained: the fast path is back
    assert core.read_reply(msg(XsType.READ, req_id, b"w"), req_id) == b"w"


def test_an_over_long_reply_is_left_to_the_framer_s_checks() -> None:
    core = ClientCore()
    req_id, _ = core.send_read("/a")
    bad = W.HEADER.pack(XsType.READ, req_id, 0, 5000) + b"x" * 5000
    assert core.read_reply(bad, req_id) is None
    with pytest.raises(E.ProtocolError, match="XENSTORE_PAYLOAD_MAX"):
        core.receive(bad)


@pytest.mark.parametrize("path", ["", "/a\0b", "/" + "x" * 3072, "x" * 2049])
def test_limits_are_checked_and_nothing_is_sent(path: str) -> None:
    core = ClientCore()
    with pytest.raises(E.XenstoreInvalid, match="not sent"):
        core.send_read(path)
    assert core.outstanding == 0
    assert core.send_read("/a")[0] == 1  # no id was used up


def test_send_read_refuses_after_the_end_of_the_stream_and_a_bad_tx_id() -> None:
    core = ClientCore()
    core.send_read("/a")  # cached packer: the state checks must still run
    with pytest.raises(ValueError, match="uint32"):
        core.send_read("/a", 2**32)
    (closed,) = core.receive(b"")
    assert isinstance(closed, Closed) and closed.outstanding == (W.Read("/a"),)
    with pytest.raises(E.ConnectionClosed):
        core.send_read("/a")


def test_ids_skip_outstanding_ones_and_zero_on_the_fast_path() -> None:
    core = ClientCore()
    core._next_id = 2**32 - 1
    assert core.send_read("/a")[0] == 2**32 - 1
    assert core.send_read("/a")[0] == 1  # wrapped, 0 skipped
    core._next_id = 1
    assert core.send_read("/a")[0] == 2  # 1 is still outstanding


def test_an_abandoned_fast_read_has_its_late_reply_dropped() -> None:
    core = ClientCore()
    req_id, _ = core.send_read("/a")
    core.abandon_id(req_id)
    assert core.receive(msg(XsType.READ, req_id, b"late")) == []
    assert core.outstanding == 0


def test_without_pipelining_a_fast_read_waits_its_turn() -> None:
    core = ClientCore(pipeline=False)
    a, first = core.send_read("/a")
    b, second = core.send_read("/b")
    assert first and second == b""  # held back
    assert core.read_reply(msg(XsType.READ, a, b"A"), a) == b"A"
    assert W.Header.unpack(core.data_to_send()).req_id == b


def test_reads_are_traced_only_when_debug_logging_is_on(caplog: pytest.LogCaptureFixture) -> None:
    core = ClientCore()
    with caplog.at_level(logging.INFO, logger="xenpure.xenstore"):
        req_id, _ = core.send_read("/a")
        core.read_reply(msg(XsType.READ, req_id, b"v"), req_id)
    assert not caplog.records
    with caplog.at_level(logging.DEBUG, logger="xenpure.xenstore"):
        req_id, _ = core.send_read("/a")
        core.read_reply(msg(XsType.READ, req_id, b"v"), req_id)
    assert [r.getMessage() for r in caplog.records] == [
        f"-> READ req_id={req_id} tx_id=0 path='/a'",
        f"<- READ req_id={req_id} tx_id=0 b'v'",
    ]


def test_send_request_gives_the_id_replies_carry() -> None:
    core = ClientCore()
    req = W.Write("/a", b"v")
    req_id, _ = core.send_request(req, 5)
    (ev,) = core.receive(msg(XsType.WRITE, req_id, b"OK\0", 5))
    assert isinstance(ev, Reply) and ev.req_id == req_id and ev.request is req and ev.tx_id == 5
    r = W.Read("/b")
    req_id, _ = core.send_request(r)
    (ev2,) = core.receive(msg(XsType.ERROR, req_id, b"EACCES\0"))
    assert isinstance(ev2, ErrorReply) and ev2.request is r  # the given object, not one made up


# -- the sync client over a scripted device ----------------------------------------------------------------


class Scripted:
    """A xenstored whose answers the test writes: ``answer(requests) -> bytes`` for each write; each read
    returns the next queued chunk."""

    path = "scripted"

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.chunks: deque[bytes] = deque()
        self.writes: list[bytes] = []

    def fileno(self) -> int:
        return -1

    def write(self, data: bytes) -> int:
        self.writes.append(data)
        self.chunks.extend(self.answer(list(W.iter_messages(data))))
        return len(data)

    def read_within(self, n: int, timeout: float | None) -> bytes | None:
        return self.chunks.popleft() if self.chunks else None

    def read(self, n: int) -> bytes:
        return self.chunks.popleft()

    def close(self) -> None:
        pass


def test_client_read_takes_a_watch_event_arriving_before_its_reply() -> None:
    def answer(reqs: list[W.Message]) -> list[bytes]:
        (m,) = reqs
        return [W.encode_watch_event("/w", "tok") + msg(XsType.READ, m.req_id, b"v")]

    xs = Client(Scripted(answer), timeout=1)  # type: ignore[arg-type]
    assert xs.read("/a") == b"v"
    assert xs.next_watch_event(timeout=0) == WatchEvent("/w", "tok")


def test_client_read_with_the_watch_event_and_the_reply_in_separate_reads() -> None:
    def answer(reqs: list[W.Message]) -> list[bytes]:
        (m,) = reqs
        return [W.encode_watch_event("/w", "tok"), msg(XsType.READ, m.req_id, b"v")]

    xs = Client(Scripted(answer), timeout=1)  # type: ignore[arg-type]
    assert xs.read("/a") == b"v"
    assert xs.next_watch_event(timeout=0) == WatchEvent("/w", "tok")


def test_client_read_raises_protocol_error_on_a_mismatched_req_id() -> None:
    xs = Client(Scripted(lambda reqs: [msg(XsType.READ, reqs[0].req_id + 7, b"v")]), timeout=1)  # type: ignore[arg-type]
    with pytest.raises(E.ProtocolError, match="never sent"):
        xs.read("/a")
    with pytest.raises(E.ProtocolError):
        xs.read("/a")


def test_client_read_maps_errors_and_carries_the_transaction_id() -> None:
    seen: list[W.Message] = []

    def answer(reqs: list[W.Message]) -> list[bytes]:
        (m,) = reqs
        seen.append(m)
        if m.type is XsType.TRANSACTION_START:
            return [msg(XsType.TRANSACTION_START, m.req_id, b"42\0")]
        if m.type is XsType.TRANSACTION_END:
            return [msg(XsType.TRANSACTION_END, m.req_id, b"OK\0", m.tx_id)]
        if m.payload == b"/missing\0":
            return [msg(XsType.ERROR, m.req_id, b"ENOENT\0", m.tx_id)]
        return [msg(XsType.READ, m.req_id, b"in-tx", m.tx_id)]

    xs = Client(Scripted(answer), timeout=1)  # type: ignore[arg-type]
    with pytest.raises(E.NoEntry, match="/missing"):
        xs.read("/missing")
    with xs.transaction() as tx:
        assert tx.read("/a") == b"in-tx"
    assert [(m.type, m.tx_id) for m in seen[1:]] == [
        (XsType.TRANSACTION_START, 0),
        (XsType.READ, 42),
        (XsType.TRANSACTION_END, 42),
    ]
    assert xs._core.outstanding == 0 and not xs._events


def test_client_read_times_out_then_drops_the_late_reply() -> None:
    late: list[bytes] = []

    def answer(reqs: list[W.Message]) -> list[bytes]:
        (m,) = reqs
        if m.payload == b"/slow\0":
            late.append(msg(XsType.READ, m.req_id, b"late"))
            return []
        return [*late, msg(XsType.READ, m.req_id, b"v")]

    xs = Client(Scripted(answer), timeout=0.01)  # type: ignore[arg-type]
    with pytest.raises(E.Timeout, match="reply to READ"):
        xs.read("/slow")
    assert xs.read("/a") == b"v"  # the late reply came first in the same read, and was dropped
    assert xs._core.outstanding == 0


def test_gather_may_be_given_the_same_request_twice() -> None:
    def answer(reqs: list[W.Message]) -> list[bytes]:
        return [b"".join(msg(XsType.READ, m.req_id, m.payload[:-1]) for m in reqs)]

    dev = Scripted(answer)
    xs = Client(dev, timeout=1)  # type: ignore[arg-type]
    r = W.Read("/a")
    assert xs.gather([r, r, W.Read("/b"), r]) == [b"/a", b"/a", b"/b", b"/a"]
    assert len(dev.writes) == 1 and xs._core.outstanding == 0


# -- a batch's READ values, without event objects ----------------------------------------------------------


def test_receive_puts_the_wanted_read_replies_into_values() -> None:
    core = ClientCore()
    a, _ = core.send_request(W.Read("/a"))
    b, _ = core.send_read("/b")
    c, _ = core.send_read("/c")  # not wanted: comes as an event
    d, _ = core.send_read("/d")  # an error: comes as an event
    values: dict[int, bytes] = {}
    data = (
        msg(XsType.READ, a, b"A")
        + W.encode_watch_event("/w", "t")
        + msg(XsType.READ, b, b"B")
        + msg(XsType.READ, c, b"C")
        + msg(XsType.ERROR, d, b"ENOENT\0")
    )
    events = core.receive(data, values, {a, b, d})
    assert values == {a: b"A", b: b"B"}
    assert events[0] == WatchEvent("/w", "t")
    assert isinstance(events[1], Reply) and events[1].req_id == c and events[1].value == b"C"
    assert isinstance(events[2], ErrorReply) and events[2].req_id == d and events[2].request == W.Read("/d")
    assert core.outstanding == 0


def test_receive_values_keep_strict_matching() -> None:
    core = ClientCore()
    w, _ = core.send_request(W.Write("/a", b"v"))
    with pytest.raises(E.ProtocolError, match="answered WRITE req_id 1 with a READ"):
        core.receive(msg(XsType.READ, w, b"x"), {}, {w})  # a READ reply to a WRITE is never a value
    core2 = ClientCore()
    r, _ = core2.send_read("/a")
    with pytest.raises(E.ProtocolError, match="never sent"):
        core2.receive(msg(XsType.READ, r + 1, b"x"), {}, {r, r + 1})


def test_receive_values_drop_abandoned_reads() -> None:
    core = ClientCore()
    r, _ = core.send_read("/a")
    core.abandon_id(r)
    values: dict[int, bytes] = {}
    assert core.receive(msg(XsType.READ, r, b"late"), values, {r}) == [] and values == {}
    assert core.outstanding == 0


def test_gather_replies_advance_a_procedure_too() -> None:
    sent: list[W.Request[Any]] = []

    def send(request: W.Request[Any], tx_id: int) -> int:
        sent.append(request)
        return len(sent)

    from xenpure.xenstore import _ops

    g = _ops.Gather([W.Read("/a"), W.Directory("/d")], send)
    g.fill()
    g.replies({1: b"A", 2: ("x", "y")})  # 2 is a DIRECTORY: its procedure gets a Reply made for it
    assert g.done and g.outcome(False) == [b"A", ("x", "y")]


def test_async_gather_writes_once_per_read_and_leaves_nothing_behind() -> None:
    import asyncio
    import socket

    from xenpure.xenstore import AsyncClient

    class Pair:
        path = "pair"

        def __init__(self) -> None:
            self.ours, self.theirs = socket.socketpair()
            self.ours.setblocking(False)
            self.writes = 0

        def fileno(self) -> int:
            return self.ours.fileno()

        def write(self, data: bytes) -> int:
            self.writes += 1
            out = b""
            for m in W.iter_messages(data):
                if m.payload == b"/missing\0":
                    out += msg(XsType.ERROR, m.req_id, b"ENOENT\0")
                else:
                    out += W.encode_watch_event("/w", "t") + msg(XsType.READ, m.req_id, m.payload[:-1])
            self.theirs.sendall(out)
            return len(data)

        def read(self, n: int) -> bytes:
            return self.ours.recv(n)

        def close(self) -> None:
            self.ours.close()
            self.theirs.close()

    async def main() -> None:
        dev = Pair()
        async with AsyncClient(dev, timeout=5) as axs:  # type: ignore[arg-type]
            reqs = [W.Read(f"/p{i}") for i in range(100)]
            reqs[50] = W.Read("/missing")
            got = await axs.gather(reqs, return_exceptions=True, window=10)
            assert got[:2] == [b"/p0", b"/p1"] and isinstance(got[50], E.NoEntry) and got[99] == b"/p99"
            assert dev.writes <= 10 + 1  # one per read of replies, at most: never one per reply
            assert not axs._runs and not axs._waiters and axs._core.outstanding == 0
            assert (await axs.next_watch_event(timeout=1)) == WatchEvent("/w", "t")

    asyncio.run(main())
