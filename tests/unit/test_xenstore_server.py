"""The sans-I/O server core, as tables of (connection, request, expected reply): the reply is a function of
(store, connection, request) alone."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from xscore import ask, watch_events

from xenpure.xenstore import _wire as W
from xenpure.xenstore._server_core import Drop, Send, ServerCore
from xenpure.xenstore._wire import Perm, PermAccess, XsType

N, R, Wr, B = PermAccess.NONE, PermAccess.READ, PermAccess.WRITE, PermAccess.BOTH


def seeded() -> tuple[ServerCore, int, int]:
    """A server with some nodes, a dom0 connection and a dom5 connection."""
    s = ServerCore()
    dom0 = s.connect(0)
    dom5 = s.connect(5)
    for req in (
        W.Write("/local/domain/0/name", b"Domain-0"),
        W.Introduce(5, 1, 1),
        W.Write("/local/domain/5/name", b"guest"),
        W.SetPerms("/local/domain/5", (Perm(5, N),)),
        W.SetPerms("/local/domain/5/name", (Perm(0, R), Perm(5, R))),
        W.Write("/vm/secret", b"s"),
        W.Write("/public", b"p"),
        W.SetPerms("/public", (Perm(0, R),)),
    ):
        s.call(dom0, req)
    return s, dom0, dom5


TABLE: list[tuple[str, int, W.Request[Any], tuple[str, Any]]] = [
    # who, domid of the connection, request, expected reply
    ("read", 0, W.Read("/local/domain/0/name"), ("ok", b"Domain-0")),
    ("read missing", 0, W.Read("/nope"), ("err", "ENOENT")),
    ("read relative", 5, W.Read("name"), ("ok", b"guest")),
    ("read relative from dom0", 0, W.Read("name"), ("ok", b"Domain-0")),
    ("read denied", 5, W.Read("/vm/secret"), ("err", "EACCES")),
    ("read granted", 5, W.Read("/public"), ("ok", b"p")),
    ("write denied", 5, W.Write("/public", b"x"), ("err", "EACCES")),
    ("write own", 5, W.Write("data", b"x"), ("ok", None)),
    ("write bad path", 0, W.Write("/a//b", b"x"), ("err", "EINVAL")),
    ("write trailing slash", 0, W.Write("/a/", b"x"), ("err", "EINVAL")),
    ("write bad char", 0, W.Write("/a b", b"x"), ("err", "EINVAL")),
    ("write special", 0, W.Write("@introduceDomain", b"x"), ("err", "EINVAL")),
    ("mkdir existing", 5, W.Mkdir("/local/domain/5"), ("ok", None)),
    ("directory", 0, W.Directory("/local/domain"), ("ok", ("0", "5"))),
    ("directory leaf", 0, W.Directory("/public"), ("ok", ())),
    ("directory missing", 0, W.Directory("/nope"), ("err", "ENOENT")),
    ("get perms", 0, W.GetPerms("/local/domain/5/name"), ("ok", (Perm(0, R), Perm(5, R)))),
    ("set owner as guest", 5, W.SetPerms("name", (Perm(5, N),)), ("err", "EACCES")),
    ("set perms as owner", 5, W.SetPerms("/local/domain/5", (Perm(5, N), Perm(7, R))), ("ok", None)),
    ("give away as guest", 5, W.SetPerms("/local/domain/5", (Perm(7, N),)), ("err", "EPERM")),
    ("rm root", 0, W.Rm("/"), ("err", "EINVAL")),
    ("rm missing", 0, W.Rm("/vm/nope"), ("ok", None)),
    ("rm missing parent", 0, W.Rm("/nope/nope"), ("err", "ENOENT")),
    ("rm denied", 5, W.Rm("/vm/secret"), ("err", "EACCES")),
    ("unwatch missing", 0, W.Unwatch("/x", "t"), ("err", "ENOENT")),
    ("tx end without tx", 0, W.TransactionEnd(True), ("err", "EIO")),  # what oxenstored 4.17 answers
    ("domain path", 5, W.GetDomainPath(9), ("ok", "/local/domain/9")),
    ("introduced 5", 5, W.IsDomainIntroduced(5), ("ok", True)),
    ("introduced 9", 0, W.IsDomainIntroduced(9), ("ok", False)),
    ("introduce as guest", 5, W.Introduce(9, 1, 1), ("err", "EACCES")),
    ("introduce dom0", 0, W.Introduce(0, 1, 1), ("err", "EINVAL")),
    ("introduce other ring", 0, W.Introduce(5, 2, 2), ("err", "EEXIST")),
    ("release missing", 0, W.Release(9), ("err", "EINVAL")),
    ("resume missing", 0, W.Resume(9), ("err", "EINVAL")),
    ("resume", 0, W.Resume(5), ("ok", None)),
    ("control check", 0, W.Control("check"), ("ok", b"OK")),
    ("control as guest", 5, W.Control("check"), ("err", "EACCES")),
    ("control unknown", 0, W.Control("frob"), ("err", "EINVAL")),
    ("features", 5, W.GetFeature(), ("ok", 4)),
    ("features of 5", 0, W.GetFeature(5), ("ok", 4)),
    ("features of 5 as 5", 5, W.GetFeature(5), ("err", "EACCES")),
    ("set features after introduce", 0, W.SetFeature(5, 0), ("err", "EBUSY")),
    ("quota", 0, W.GetQuota("nodes"), ("ok", 1000)),
    ("quota unknown", 0, W.GetQuota("bogus"), ("err", "EINVAL")),
    ("quota as guest", 5, W.GetQuota("nodes"), ("err", "EACCES")),
]


@pytest.mark.parametrize(("who", "domid", "req", "expect"), TABLE, ids=[t[0] for t in TABLE])
def test_reply_table(who: str, domid: int, req: W.Request[Any], expect: tuple[str, Any]) -> None:
    s, dom0, dom5 = seeded()
    assert ask(s, dom0 if domid == 0 else dom5, req) == expect


def test_the_reply_depends_on_store_connection_and_request_only() -> None:
    a, b = seeded(), seeded()
    for s, _dom0, dom5 in (a, b):
        ask(s, dom5, W.Write("x", b"1"))
    for req in (W.Read("x"), W.Directory("/local/domain/5"), W.GetPerms("x"), W.Read("/vm/secret")):
        assert ask(a[0], a[2], req) == ask(b[0], b[2], req)


def test_unknown_and_server_only_types() -> None:
    s, dom0, _ = seeded()
    for t in (20, 27, 0xFFFF, 1000):
        (out,) = s.receive_data(dom0, W.HEADER.pack(t, 3, 0, 1) + b"\0")
        assert isinstance(out, Send)
        (m,) = W.iter_messages(out.data)
        assert (m.type, m.req_id, W.parse_error(m.payload)) == (XsType.ERROR, 3, "ENOSYS")
    for t in (XsType.WATCH_EVENT, XsType.ERROR):
        (out,) = s.receive_data(dom0, W.Message(t, 4, 0, b"/a\0t\0").encode())
        assert isinstance(out, Send)
        (m,) = W.iter_messages(out.data)
        assert W.parse_error(m.payload) == "EINVAL"
    (out,) = s.receive_data(dom0, W.Message(XsType.READ, 5, 0, b"/no-nul").encode())
    assert isinstance(out, Send) and W.parse_error(next(W.iter_messages(out.data)).payload) == "EINVAL"


def test_a_payload_over_the_limit_drops_the_connection() -> None:
    s, dom0, _ = seeded()
    (out,) = s.receive_data(dom0, W.HEADER.pack(XsType.READ, 1, 0, 4097))
    assert isinstance(out, Drop) and out.conn == dom0
    assert dom0 not in s.connections
    assert s.receive_data(dom0, b"more") == []


def test_transactions() -> None:
    s, dom0, _dom5 = seeded()
    other = s.connect(0)
    _, tid = ask(s, dom0, W.TransactionStart())
    assert ask(s, dom0, W.TransactionStart(), tx_id=tid) == ("err", "EINVAL")
    assert ask(s, dom0, W.Write("/t/a", b"1"), tx_id=tid) == ("ok", None)
    assert ask(s, dom0, W.Read("/t/a"), tx_id=tid) == ("ok", b"1")
    assert ask(s, other, W.Read("/t/a")) == ("err", "ENOENT")  # not visible outside
    assert ask(s, other, W.Read("/t/a"), tx_id=tid) == ("err", "EIO")  # not another connection's
    assert ask(s, dom0, W.TransactionEnd(True), tx_id=tid) == ("ok", None)
    assert ask(s, other, W.Read("/t/a")) == ("ok", b"1")
    assert ask(s, dom0, W.Read("/t/a"), tx_id=tid) == ("err", "EIO")  # ended

    # A conflict: the other connection changes a node the transaction read.
    _, tid = ask(s, dom0, W.TransactionStart())
    ask(s, dom0, W.Read("/t/a"), tx_id=tid)
    ask(s, other, W.Write("/t/a", b"2"))
    ask(s, dom0, W.Write("/t/b", b"x"), tx_id=tid)
    assert ask(s, dom0, W.TransactionEnd(True), tx_id=tid) == ("err", "EAGAIN")
    assert ask(s, other, W.Read("/t/b")) == ("err", "ENOENT")

    # Abort throws the changes away; an untouched node changing meanwhile is no conflict.
    _, tid = ask(s, dom0, W.TransactionStart())
    ask(s, dom0, W.Write("/t/a", b"3"), tx_id=tid)
    assert ask(s, dom0, W.TransactionEnd(False), tx_id=tid) == ("ok", None)
    assert ask(s, other, W.Read("/t/a")) == ("ok", b"2")
    _, tid = ask(s, dom0, W.TransactionStart())
    ask(s, dom0, W.Write("/t/a", b"4"), tx_id=tid)
    ask(s, other, W.Write("/vm/other", b"x"))
    assert ask(s, dom0, W.TransactionEnd(True), tx_id=tid) == ("ok", None)
    assert ask(s, other, W.Read("/t/a")) == ("ok", b"4")


def test_transactions_creating_siblings_do_not_conflict() -> None:
    # As oxenstored (Xen 4.17) behaves in the lab: the parent's children list is merged at commit.
    s, dom0, _ = seeded()
    other = s.connect(0)
    ask(s, dom0, W.Mkdir("/p"))
    ask(s, dom0, W.Write("/p/gone", b""))
    _, tid = ask(s, dom0, W.TransactionStart())
    ask(s, dom0, W.Write("/p/mine/deep", b"1"), tx_id=tid)
    ask(s, dom0, W.Rm("/p/gone"), tx_id=tid)
    ask(s, other, W.Write("/p/theirs", b"2"))
    assert ask(s, dom0, W.TransactionEnd(True), tx_id=tid) == ("ok", None)
    assert ask(s, other, W.Directory("/p")) == ("ok", ("mine", "theirs"))  # byte order, as oxenstored
    assert ask(s, other, W.Directory("/p/mine")) == ("ok", ("deep",))
    assert ask(s, other, W.Read("/p/mine/deep")) == ("ok", b"1")
    # ... but a transaction that listed the parent does conflict.
    _, tid = ask(s, dom0, W.TransactionStart())
    ask(s, dom0, W.Directory("/p"), tx_id=tid)
    ask(s, dom0, W.Write("/p/x", b""), tx_id=tid)
    ask(s, other, W.Write("/p/y", b""))
    assert ask(s, dom0, W.TransactionEnd(True), tx_id=tid) == ("err", "EAGAIN")


def test_watch_fires_after_its_reply_and_on_commit_only() -> None:
    s, dom0, _ = seeded()
    out = s.receive_data(dom0, W.Watch("/w", "t").encode(1))
    msgs = [m for o in out if isinstance(o, Send) for m in W.iter_messages(o.data)]
    assert [m.type for m in msgs] == [XsType.WATCH, XsType.WATCH_EVENT]  # reply first, then the event
    _, tid = ask(s, dom0, W.TransactionStart())
    out = s.receive_data(dom0, W.Write("/w/x", b"").encode(2, tid))
    assert watch_events(out, dom0) == []
    out = s.receive_data(dom0, W.TransactionEnd(True).encode(3, tid))
    assert watch_events(out, dom0) == [("/w/x", "t")]


def test_unreadable_nodes_fire_no_watch_for_a_guest() -> None:
    s, dom0, dom5 = seeded()
    s.receive_data(dom5, W.Watch("/vm", "t").encode(1))
    _, out = s.call(dom0, W.Write("/vm/secret", b"new"))
    assert watch_events(out, dom5) == []
    _, out = s.call(dom0, W.Write("/vm/open", b""))
    assert watch_events(out, dom5) == []  # inherits /vm's perms: unreadable to dom5 too
    s.call(dom0, W.SetPerms("/vm/open", (Perm(0, R),)))
    _, out = s.call(dom0, W.Write("/vm/open", b"x"))
    assert watch_events(out, dom5) == [("/vm/open", "t")]


def test_directory_part_walks_a_big_directory() -> None:
    s, dom0, _ = seeded()
    names = tuple(f"child-with-a-long-name-{i:04d}" for i in range(500))
    for n in names:
        s.call(dom0, W.Write(f"/big/{n}", b""))
    assert ask(s, dom0, W.Directory("/big")) == ("err", "E2BIG")
    got: list[str] = []
    offset = 0
    while True:
        kind, chunk = ask(s, dom0, W.DirectoryPart("/big", offset))
        assert kind == "ok"
        got.extend(chunk.names)
        offset += chunk.size
        if chunk.complete:
            break
    assert tuple(got) == names
    assert ask(s, dom0, W.DirectoryPart("/big", offset + 1)) == ("err", "EINVAL")


@given(st.binary(max_size=300))
def test_garbage_from_a_client_never_crashes_the_server(data: bytes) -> None:
    s, dom0, dom5 = seeded()
    for conn in (dom0, dom5):
        for o in s.receive_data(conn, data):
            assert isinstance(o, Send | Drop)
            if isinstance(o, Send):
                list(W.iter_messages(o.data))  # every output is well formed


def test_children_are_listed_in_byte_order_as_oxenstored_does() -> None:
    s, dom0, _ = seeded()
    for leaf in ("zz", "aa", "mm", "B", "a-b"):
        ask(s, dom0, W.Write(f"/o/{leaf}", b""))
    assert ask(s, dom0, W.Directory("/o")) == ("ok", ("B", "a-b", "aa", "mm", "zz"))
