"""Quotas: what GET_QUOTA reports (Xen >= 4.21, optional) and their enforcement on an unprivileged domain."""

from __future__ import annotations

from collections.abc import Callable

from xsconf import Conn, optional

from xenpure.xenstore import _wire as W
from xenpure.xenstore._wire import Perm, PermAccess

Guest = Callable[[], tuple[int, Conn]]


def test_quota_names_and_c_xenstored_defaults(xs: Conn) -> None:
    # Probe with a payload: oxenstored 4.17 leaves an empty-payload request unanswered (seen in the lab).
    assert optional(xs, W.GetQuota("nodes")) == 1000
    names = xs(W.ListQuotas())
    assert {"nodes", "watches", "transactions", "node-size", "permissions"} <= set(names)
    assert xs(W.GetQuota("watches")) == 128
    assert xs(W.GetQuota("node-size")) == 2048
    assert xs.err(W.GetQuota("no-such-quota")) == "EINVAL"


def test_nodes(xs: Conn, guest: Guest) -> None:
    d, g = guest()
    optional(xs, W.SetQuota("nodes", 5, d))
    assert xs(W.GetQuota("nodes", d)) == 5
    made = 1  # its home
    while g.err(W.Write(f"n{made}", b"")) is None:
        made += 1
        assert made < 100
    assert made == 5
    assert g.err(W.Write("n99", b"")) == "ENOSPC"
    xs(W.Write(f"/local/domain/{d}/by-dom0", b""))  # dom0 is never limited


def test_watches(guest: Guest) -> None:
    _, g = guest()
    for i in range(128):
        assert g.err(W.Watch("w", f"t{i}")) is None, i
    assert g.err(W.Watch("w", "one-too-many")) in ("E2BIG", "ENOSPC")


def test_transactions(guest: Guest) -> None:
    _, g = guest()
    tids = [g(W.TransactionStart()) for _ in range(10)]
    assert g.err(W.TransactionStart()) in ("ENOSPC", "EQUOTA", "EBUSY")
    g(W.TransactionEnd(False), tids[0])
    assert g.err(W.TransactionStart()) is None


def test_node_size(guest: Guest) -> None:
    _, g = guest()
    assert g.err(W.Write("v", b"x" * 2048)) is None
    assert g.err(W.Write("v", b"x" * 2049)) in ("ENOSPC", "E2BIG")


def test_permissions_per_node(guest: Guest) -> None:
    d, g = guest()
    g(W.Write("p", b""))
    five = (Perm(d, PermAccess.NONE), *(Perm(100 + i, PermAccess.READ) for i in range(5)))
    assert g.err(W.SetPerms("p", five)) is None
    six = (*five, Perm(200, PermAccess.READ))
    assert g.err(W.SetPerms("p", six)) in ("ENOSPC", "E2BIG")


def test_transaction_nodes(xs: Conn, guest: Guest) -> None:
    d, g = guest()
    optional(xs, W.SetQuota("transaction-nodes", 10, d))
    tid = g(W.TransactionStart())
    errors = [g.err(W.Write(f"t{i}", b""), tid) for i in range(20)]
    assert "ENOSPC" in errors
    g(W.TransactionEnd(False), tid)
