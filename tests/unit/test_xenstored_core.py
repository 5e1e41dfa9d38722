"""The reference xenstored's core (issue 8): quotas, read-only connections, special-watch permissions,
dead-domain cleanup and the advisories the core must not repeat. Tables of (connection, request, reply)
over ``ServerCore``, as in test_xenstore_server.py."""

from __future__ import annotations

from typing import Any

import pytest
from xscore import ask, watch_events

from xenpure.xenstore import _wire as W
from xenpure.xenstore._server_core import DEFAULT_QUOTAS, ServerCore
from xenpure.xenstore._wire import Perm, PermAccess

N, R, B = PermAccess.NONE, PermAccess.READ, PermAccess.BOTH


def guest_server(**quotas: int) -> tuple[ServerCore, int, int]:
    """dom0 and a dom5 connection; dom5 owns /local/domain/5 (as libxl leaves a guest's home)."""
    s = ServerCore(quotas=quotas)
    dom0, dom5 = s.connect(0), s.connect(5)
    s.call(dom0, W.Introduce(5, 1, 1))
    s.call(dom0, W.Mkdir("/local/domain/5"))
    s.call(dom0, W.SetPerms("/local/domain/5", (Perm(5, N),)))
    return s, dom0, dom5


def test_defaults_are_c_xenstoreds() -> None:
    s = ServerCore()
    dom0 = s.connect(0)
    expect = {"nodes": 1000, "watches": 128, "transactions": 10, "outstanding": 20, "permissions": 5}
    for name, value in expect.items():
        assert ask(s, dom0, W.GetQuota(name)) == ("ok", value)
    assert set(ask(s, dom0, W.ListQuotas())[1]) == set(DEFAULT_QUOTAS)
    with pytest.raises(ValueError):
        ServerCore(quotas={"bogus": 1})


def test_a_read_only_connection_reads_and_watches_but_changes_nothing() -> None:
    s = ServerCore()
    dom0, ro = s.connect(0), s.connect(0, readonly=True)
    s.call(dom0, W.Write("/a", b"1"))
    assert ask(s, ro, W.Read("/a")) == ("ok", b"1")
    assert ask(s, ro, W.Watch("/a", "t")) == ("ok", None)
    for req in (
        W.Write("/a", b"2"),
        W.Mkdir("/b"),
        W.Rm("/a"),
        W.SetPerms("/a", (Perm(0, R),)),
        W.Introduce(3, 1, 1),
        W.SetQuota("nodes", 1),
    ):
        assert ask(s, ro, req) == ("err", "EROFS"), req
    _, tid = ask(s, ro, W.TransactionStart())
    assert ask(s, ro, W.Write("/a", b"3"), tx_id=tid) == ("err", "EROFS")
    assert ask(s, dom0, W.Read("/a")) == ("ok", b"1")


QUOTA_TABLE: list[tuple[str, dict[str, int], list[W.Request[Any]], W.Request[Any], tuple[str, Any]]] = [
    # name, quotas, setup as dom5, request as dom5, expected
    ("nodes: home + 2 fit", {"nodes": 3}, [W.Write("a", b"")], W.Write("b", b""), ("ok", None)),
    (
        "nodes: a 4th does not",
        {"nodes": 3},
        [W.Write("a", b""), W.Write("b", b"")],
        W.Write("c", b""),
        ("err", "ENOSPC"),
    ),
    ("nodes: parents count", {"nodes": 3}, [], W.Write("x/y/z", b""), ("err", "ENOSPC")),
    ("nodes: 0 disables", {"nodes": 0}, [W.Write(f"n{i}", b"") for i in range(20)], W.Write("z", b""), ("ok", None)),
    ("node-size", {"node-size": 10}, [], W.Write("a", b"x" * 11), ("err", "ENOSPC")),
    ("node-size ok", {"node-size": 10}, [], W.Write("a", b"x" * 10), ("ok", None)),
    ("memory", {"memory": 500}, [], W.Write("a", b"x" * 600), ("err", "ENOSPC")),
    (
        "permissions",
        {"permissions": 1},
        [W.Write("a", b"")],
        W.SetPerms("a", (Perm(5, N), Perm(6, R), Perm(7, R))),
        ("err", "ENOSPC"),
    ),
    (
        "permissions ok",
        {"permissions": 2},
        [W.Write("a", b"")],
        W.SetPerms("a", (Perm(5, N), Perm(6, R), Perm(7, R))),
        ("ok", None),
    ),
    ("watches", {"watches": 2}, [W.Watch("a", "1"), W.Watch("a", "2")], W.Watch("a", "3"), ("err", "E2BIG")),
    ("transactions", {"transactions": 1}, [W.TransactionStart()], W.TransactionStart(), ("err", "ENOSPC")),
]


@pytest.mark.parametrize(("name", "quotas", "setup", "req", "expect"), QUOTA_TABLE, ids=[t[0] for t in QUOTA_TABLE])
def test_quotas(
    name: str, quotas: dict[str, int], setup: list[W.Request[Any]], req: W.Request[Any], expect: tuple[str, Any]
) -> None:
    s, dom0, dom5 = guest_server(**quotas)
    for r in setup:
        assert ask(s, dom5, r)[0] == "ok", r
    assert ask(s, dom5, req) == expect
    for r in [*setup, req]:  # dom0 is never limited
        if isinstance(r, W.Write):
            assert ask(s, dom0, W.Write("/local/domain/5/" + r.path + "-dom0", r.value))[0] == "ok"


def test_per_domain_quota_and_transactions_are_checked_at_commit() -> None:
    s, dom0, dom5 = guest_server()
    assert ask(s, dom0, W.SetQuota("nodes", 4, 5)) == ("ok", None)
    assert ask(s, dom0, W.GetQuota("nodes", 5)) == ("ok", 4)
    _, t1 = ask(s, dom5, W.TransactionStart())
    _, t2 = ask(s, dom5, W.TransactionStart())
    assert ask(s, dom5, W.Write("a", b""), tx_id=t1) == ("ok", None)
    assert ask(s, dom5, W.Write("b", b""), tx_id=t1) == ("ok", None)
    assert ask(s, dom5, W.Write("c", b""), tx_id=t2) == ("ok", None)
    assert ask(s, dom5, W.Write("d", b""), tx_id=t2) == ("ok", None)
    assert ask(s, dom5, W.TransactionEnd(True), tx_id=t1) == ("ok", None)
    # each transaction fit alone; together they would own 5 nodes (XSA-326/421)
    assert ask(s, dom5, W.TransactionEnd(True), tx_id=t2) == ("err", "ENOSPC")
    assert ask(s, dom0, W.Directory("/local/domain/5")) == ("ok", ("a", "b"))


def test_transaction_nodes_quota() -> None:
    s, _dom0, dom5 = guest_server(**{"transaction-nodes": 3})
    _, tid = ask(s, dom5, W.TransactionStart())
    for leaf in ("a", "b", "c"):
        assert ask(s, dom5, W.Read(leaf), tx_id=tid) == ("err", "ENOENT")
    assert ask(s, dom5, W.Read("d"), tx_id=tid) == ("err", "ENOSPC")


def test_release_cleans_up_and_a_reused_domid_starts_afresh() -> None:
    # XSA-322/417 (perm entries of a dead domain), XSA-419 (its nodes), XSA-324 (its watches), XSA-483
    # (usage counts across domid reuse).
    s, dom0, dom5 = guest_server(nodes=4)
    for leaf in ("a", "b", "c"):
        assert ask(s, dom5, W.Write(f"/local/domain/5/{leaf}", b""))[0] == "ok"
    assert ask(s, dom5, W.Write("d", b"")) == ("err", "ENOSPC")
    s.call(dom0, W.Write("/shared", b"s"))
    s.call(dom0, W.SetPerms("/shared", (Perm(0, N), Perm(5, R))))
    ask(s, dom5, W.Watch("/shared", "t"))
    watcher = s.connect(0)
    ask(s, watcher, W.Watch("/local/domain/5/a", "w"))
    _, out = s.call(dom0, W.Release(5))
    assert ("/local/domain/5/a", "w") in watch_events(out, watcher)  # the removal fires
    assert ask(s, dom0, W.Read("/local/domain/5")) == ("err", "ENOENT")
    assert ask(s, dom0, W.GetPerms("/shared")) == ("ok", (Perm(0, N),))
    s.call(dom0, W.Introduce(5, 2, 2))  # a new domain 5
    assert ask(s, dom5, W.Read("/shared")) == ("err", "EACCES")
    _, out = s.call(dom0, W.Write("/shared", b"x"))
    assert watch_events(out, dom5) == []  # the old domain's watch is gone
    s.call(dom0, W.Mkdir("/local/domain/5"))
    s.call(dom0, W.SetPerms("/local/domain/5", (Perm(5, N),)))
    for leaf in ("a", "b", "c"):
        assert ask(s, dom5, W.Write(leaf, b"")) == ("ok", None)


def test_no_orphans_from_a_transaction_whose_parent_was_removed() -> None:
    # XSA-415: nodes created in a transaction under a parent removed outside it.
    s = ServerCore()
    a, b = s.connect(0), s.connect(0)
    s.call(a, W.Mkdir("/p"))
    _, tid = ask(s, a, W.TransactionStart())
    ask(s, a, W.Write("/p/x/y", b"1"), tx_id=tid)
    ask(s, b, W.Rm("/p"))
    assert ask(s, a, W.TransactionEnd(True), tx_id=tid) == ("err", "EAGAIN")
    assert not [p for p in s.store.nodes if p.startswith("/p")]


def test_special_watches_need_permission_and_per_domain_form() -> None:
    s, dom0, dom5 = guest_server()
    ask(s, dom5, W.Watch("@releaseDomain", "r"))
    ask(s, dom0, W.Watch("@releaseDomain/7", "seven"))
    ask(s, dom0, W.Watch("@releaseDomain", "all", 1))
    s.call(dom0, W.Introduce(7, 1, 1))
    s.call(dom0, W.Introduce(8, 1, 1))
    out = s.fire_special("@releaseDomain", 8)
    assert watch_events(out, dom5) == []
    assert watch_events(out, dom0) == [("@releaseDomain/8", "all")]
    assert ask(s, dom5, W.SetPerms("@releaseDomain", (Perm(0, N), Perm(5, R)))) == ("err", "EACCES")
    s.call(dom0, W.SetPerms("@releaseDomain", (Perm(0, N), Perm(5, R))))
    assert ask(s, dom5, W.GetPerms("@releaseDomain")) == ("ok", (Perm(0, N), Perm(5, R)))
    _, out = s.call(dom0, W.Release(7))
    assert watch_events(out, dom5) == [("@releaseDomain", "r")]
    assert sorted(watch_events(out, dom0)) == [("@releaseDomain/7", "all"), ("@releaseDomain/7", "seven")]


def test_removal_of_an_unreadable_node_is_not_reported() -> None:
    # XSA-115, removals: the node is gone when the event fires; its permissions at removal decide.
    s, dom0, dom5 = guest_server()
    s.call(dom0, W.Write("/local/domain/5/secret", b"s"))
    s.call(dom0, W.SetPerms("/local/domain/5/secret", (Perm(0, N),)))
    ask(s, dom5, W.Watch("/local/domain/5", "t", None))
    _, out = s.call(dom0, W.Rm("/local/domain/5/secret"))
    assert watch_events(out, dom5) == []
    s.call(dom0, W.Write("/local/domain/5/open", b""))
    _, out = s.call(dom0, W.Rm("/local/domain/5/open"))
    assert watch_events(out, dom5) == [("/local/domain/5/open", "t")]


def test_a_deep_tree_is_removed_without_recursion() -> None:
    # XSA-418: depth costs no stack.
    s = ServerCore()
    dom0 = s.connect(0)
    path = "/d" + "/x" * 1500
    assert ask(s, dom0, W.Write(path, b"")) == ("ok", None)
    assert ask(s, dom0, W.Rm("/d")) == ("ok", None)
    assert len(s.store.nodes) == 1


def test_reset_watches_inside_a_transaction() -> None:
    # XSA-484: answered, and the connection goes on.
    s = ServerCore()
    dom0 = s.connect(0)
    ask(s, dom0, W.Watch("/w", "t"))
    _, tid = ask(s, dom0, W.TransactionStart())
    assert ask(s, dom0, W.ResetWatches(), tx_id=tid) == ("ok", None)
    assert ask(s, dom0, W.TransactionEnd(True), tx_id=tid) == ("err", "EIO")
    assert ask(s, dom0, W.Unwatch("/w", "t")) == ("err", "ENOENT")
    assert ask(s, dom0, W.Write("/w", b"")) == ("ok", None)


def test_usage_and_journal_follow_the_store() -> None:
    s, _dom0, dom5 = guest_server()
    s.store.journal = []
    ask(s, dom5, W.Write("a", b"12345"))
    _, tid = ask(s, dom5, W.TransactionStart())
    ask(s, dom5, W.Write("b", b""), tx_id=tid)
    ask(s, dom5, W.Rm("a"), tx_id=tid)
    ask(s, dom5, W.TransactionEnd(True), tx_id=tid)
    recount = type(s.store).from_nodes(dict(s.store.nodes))
    assert s.store.used(5) == recount.used(5) and s.store.used(5)[0] == 2
    changed = {p for p, _ in s.store.journal}
    assert {"/local/domain/5/a", "/local/domain/5/b", "/local/domain/5"} <= changed


def test_a_change_between_start_and_first_read_conflicts() -> None:
    # Found by the conformance suite: the transaction reads its snapshot's value, so a change made outside
    # after TRANSACTION_START (even before the first read) must fail the commit.
    s = ServerCore()
    a, b = s.connect(0), s.connect(0)
    s.call(a, W.Write("/s", b"old"))
    _, tid = ask(s, a, W.TransactionStart())
    ask(s, b, W.Write("/s", b"new"))
    assert ask(s, a, W.Read("/s"), tx_id=tid) == ("ok", b"old")
    assert ask(s, a, W.TransactionEnd(True), tx_id=tid) == ("err", "EAGAIN")


def test_a_readable_watched_node_removed_with_an_unreadable_parent_is_reported() -> None:
    # docs/misc/xenstore.txt: "an application may rely on being sent a watch when a path which it _is_ able
    # to read is deleted even if that leaves only a nonexistent unreadable parent".
    s, dom0, dom5 = guest_server()
    s.call(dom0, W.Write("/p/mine", b""))
    s.call(dom0, W.SetPerms("/p", (Perm(0, N),)))
    s.call(dom0, W.SetPerms("/p/mine", (Perm(0, N), Perm(5, R))))
    ask(s, dom5, W.Watch("/p/mine", "m"))
    ask(s, dom5, W.Watch("/p", "p"))
    _, out = s.call(dom0, W.Rm("/p"))
    assert watch_events(out, dom5) == [("/p/mine", "m")]
