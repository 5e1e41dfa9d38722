"""Fuzzing the reference xenstored's core with hostile messages: whatever arrives, the server answers with
well-formed messages, every rejection is an errno name from xs_wire.h, a connection breaking the framing
is dropped, and what a guest can make the server hold stays within its quotas."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenpure.xenstore import _wire as W
from xenpure.xenstore._server_core import Drop, Send, ServerCore
from xenpure.xenstore._wire import HEADER, XSD_ERRORS, Perm, PermAccess, XsType

SEGMENTS = st.sampled_from(["a", "b", "local", "domain", "5", "0", "@x", "", "..", "-_", "é", "x" * 200])
PATHS = st.one_of(
    st.lists(SEGMENTS, max_size=6).map(lambda s: "/" + "/".join(s)),
    st.lists(SEGMENTS, min_size=1, max_size=4).map("/".join),
    st.sampled_from(["@introduceDomain", "@releaseDomain", "@releaseDomain/5", "/", "/local/domain/", ""]),
    st.text(max_size=40),
)
PAYLOADS = st.one_of(
    st.binary(max_size=64),
    st.tuples(PATHS, st.binary(max_size=32)).map(lambda t: t[0].encode("utf-8", "replace") + b"\0" + t[1]),
    st.lists(
        st.one_of(PATHS, st.integers(-5, 2**40).map(str), st.sampled_from(["T", "F", "r5", "n0", "b9"])), max_size=4
    ).map(lambda xs: b"".join(x.encode("utf-8", "replace") + b"\0" for x in xs)),
)
TYPES = st.one_of(st.sampled_from(list(XsType)), st.integers(0, 40), st.just(0xFFFFFFFF))
TX_IDS = st.one_of(st.just(0), st.integers(1, 5), st.integers(0, 2**32 - 1))
MESSAGES = st.tuples(TYPES, st.integers(0, 2**32 - 1), TX_IDS, PAYLOADS).map(
    lambda m: HEADER.pack(int(m[0]), m[1], m[2], len(m[3])) + m[3]
)


def server() -> tuple[ServerCore, int, int]:
    s = ServerCore(quotas={"nodes": 20, "watches": 10, "transactions": 3, "transaction-nodes": 30})
    dom0, dom5 = s.connect(0), s.connect(5)
    s.call(dom0, W.Introduce(5, 1, 1))
    s.call(dom0, W.Mkdir("/local/domain/5"))
    s.call(dom0, W.SetPerms("/local/domain/5", (Perm(5, PermAccess.NONE),)))
    return s, dom0, dom5


def check_outputs(out: list[Any]) -> None:
    for o in out:
        assert isinstance(o, Send | Drop)
        if isinstance(o, Send):
            for m in W.iter_messages(o.data):
                if m.type is XsType.ERROR:
                    assert W.parse_error(m.payload) in XSD_ERRORS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), MESSAGES), max_size=30))
def test_hostile_message_streams(stream: list[tuple[bool, bytes]]) -> None:
    s, dom0, dom5 = server()
    for as_guest, data in stream:
        conn = dom5 if as_guest else dom0
        if conn in s.connections:
            check_outputs(s.receive_data(conn, data))
    # what the guest holds stays within its quotas
    assert s.store.used(5)[0] <= 20
    c5 = s.connections.get(dom5)
    if c5 is not None:
        assert len(c5.watches) <= 10 and len(c5.transactions) <= 3
    # the server still answers dom0
    fresh = s.connect(0)
    (out, *_) = s.receive_data(fresh, W.Read("/").encode(1))
    assert isinstance(out, Send)


@settings(max_examples=100, deadline=None)
@given(st.lists(MESSAGES, max_size=10), st.integers(1, 7))
def test_byte_by_byte_is_the_same_as_whole(messages: list[bytes], step: int) -> None:
    data = b"".join(messages)
    a, b = server()[0], server()[0]
    ca, cb = a.connect(0), b.connect(0)
    whole = a.receive_data(ca, data)
    pieces: list[Any] = []
    for i in range(0, len(data), step):
        pieces.extend(b.receive_data(cb, data[i : i + step]))
    assert [(type(o), getattr(o, "data", None)) for o in whole] == [(type(o), getattr(o, "data", None)) for o in pieces]


@given(st.integers(4097, 2**32 - 1), st.sampled_from(list(XsType)))
def test_oversized_lengths_drop_the_connection_at_once(length: int, t: XsType) -> None:
    s, _dom0, dom5 = server()
    out = s.receive_data(dom5, HEADER.pack(t, 1, 0, length))  # no payload needed to decide
    assert [type(o) for o in out] == [Drop]
    assert dom5 not in s.connections


def test_a_watch_flood_is_bounded() -> None:
    s, dom0, dom5 = server()
    answers = [s.receive_data(dom5, W.Watch("/local/domain/5", f"t{i}").encode(i)) for i in range(1000)]
    errors = [
        W.parse_error(m.payload)
        for out in answers
        for o in out
        if isinstance(o, Send)
        for m in W.iter_messages(o.data)
        if m.type is XsType.ERROR
    ]
    assert len(errors) == 990 and set(errors) == {"E2BIG"}
    # events a write fires: one per watch, never more
    _, out = s.call(dom0, W.Write("/local/domain/5/x", b""))
    assert len([o for o in out if o.conn == dom5]) == 10


def test_bad_transaction_ids() -> None:
    s, _dom0, dom5 = server()
    for tid in (1, 2**31, 2**32 - 1):
        (out,) = s.receive_data(dom5, W.Read("/local/domain/5").encode(1, tid))
        assert isinstance(out, Send)
        assert W.parse_error(next(W.iter_messages(out.data)).payload) == "EIO"
