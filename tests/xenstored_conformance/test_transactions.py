"""Transactions: isolation, conflicts (EAGAIN), abort, and their watch events."""

from __future__ import annotations

from xsconf import Conn, Target, accept

from xenpure.xenstore import _wire as W


def test_changes_are_invisible_until_commit(xs: Conn, xs2: Conn, base: str) -> None:
    tid = xs(W.TransactionStart())
    xs(W.Write(f"{base}/t", b"1"), tid)
    assert xs(W.Read(f"{base}/t"), tid) == b"1"
    assert xs2.err(W.Read(f"{base}/t")) == "ENOENT"
    assert xs.err(W.Read(f"{base}/t")) == "ENOENT"  # same connection, outside the transaction
    xs(W.TransactionEnd(True), tid)
    assert xs2(W.Read(f"{base}/t")) == b"1"


def test_a_transaction_sees_a_snapshot(xs: Conn, xs2: Conn, target: Target, base: str) -> None:
    xs(W.Write(f"{base}/s", b"old"))
    tid = xs(W.TransactionStart())
    xs2(W.Write(f"{base}/s", b"new"))
    # docs/misc/xenstore.txt: "When transaction is started whole db is copied". C xenstored 4.17 reads a
    # node's current value the first time the transaction touches it instead (seen in the lab).
    value = xs(W.Read(f"{base}/s"), tid)
    accept(target, value, xenpure=b"old", seen=(b"new",))
    result = xs.err(W.TransactionEnd(True), tid)
    if value == b"old":  # it read a node that changed meanwhile; oxenstored commits a read-only transaction
        accept(target, result, xenpure="EAGAIN", seen=(None,))
    else:
        assert result is None


def test_a_read_then_write_on_a_changed_node_conflicts(xs: Conn, xs2: Conn, base: str) -> None:
    xs(W.Write(f"{base}/c", b"0"))
    tid = xs(W.TransactionStart())
    value = xs(W.Read(f"{base}/c"), tid)
    xs2(W.Write(f"{base}/c", b"5"))
    xs(W.Write(f"{base}/c", value + b"+1"), tid)
    assert xs.err(W.TransactionEnd(True), tid) == "EAGAIN"  # a lost update otherwise
    assert xs2(W.Read(f"{base}/c")) == b"5"


def test_write_write_conflict(xs: Conn, xs2: Conn, target: Target, base: str) -> None:
    xs(W.Write(f"{base}/w", b"0"))
    tid = xs(W.TransactionStart())
    xs(W.Write(f"{base}/w", b"tx"), tid)
    xs2(W.Write(f"{base}/w", b"other"))
    # A blind write: oxenstored lets the transaction's value win (serialisable as "after"); xenpure fails it.
    result = xs.err(W.TransactionEnd(True), tid)
    accept(target, result, xenpure="EAGAIN", seen=(None,))
    assert xs2(W.Read(f"{base}/w")) == (b"other" if result else b"tx")


def test_unrelated_changes_do_not_conflict(xs: Conn, xs2: Conn, base: str) -> None:
    # XSA-206: another client's stream of writes elsewhere cannot starve a transaction.
    xs(W.Write(f"{base}/mine", b"0"))
    tid = xs(W.TransactionStart())
    assert xs(W.Read(f"{base}/mine"), tid) == b"0"
    xs(W.Write(f"{base}/mine", b"1"), tid)
    for i in range(50):
        xs2(W.Write(f"{base}/theirs", str(i).encode()))
    assert xs.err(W.TransactionEnd(True), tid) is None
    assert xs2(W.Read(f"{base}/mine")) == b"1"


def test_abort_discards(xs: Conn, base: str) -> None:
    tid = xs(W.TransactionStart())
    xs(W.Write(f"{base}/a", b"1"), tid)
    xs(W.TransactionEnd(False), tid)
    assert xs.err(W.Read(f"{base}/a")) == "ENOENT"


def test_an_ended_transaction_is_gone(xs: Conn, target: Target, base: str) -> None:
    tid = xs(W.TransactionStart())
    xs(W.TransactionEnd(False), tid)
    accept(target, xs.err(W.Read(base), tid), xenpure="EIO", seen=("ENOENT", "EINVAL"))
    accept(target, xs.err(W.TransactionEnd(True), tid), xenpure="EIO", seen=("ENOENT", "EINVAL"))


def test_another_connections_transaction_is_not_yours(xs: Conn, xs2: Conn, target: Target, base: str) -> None:
    tid = xs(W.TransactionStart())
    accept(target, xs2.err(W.Read(base), tid), xenpure="EIO", seen=("ENOENT", "EINVAL"))
    xs(W.TransactionEnd(False), tid)


def test_a_bogus_transaction_id(xs: Conn, target: Target, base: str) -> None:
    # XSA-420 (oxenstored truncated 32-bit values): ids with the top bit set are refused, not mangled.
    for tid in (0x80000000, 0xFFFFFFFF, 12345678):
        accept(target, xs.err(W.Read(base), tid), xenpure="EIO", seen=("ENOENT", "EINVAL"))
    assert xs(W.Read(base)) == b""


def test_transaction_start_inside_a_transaction(xs: Conn, target: Target) -> None:
    tid = xs(W.TransactionStart())
    accept(target, xs.err(W.TransactionStart(), tid), xenpure="EINVAL", seen=("EBUSY", None))
    xs(W.TransactionEnd(False), tid)


def test_rm_inside_a_transaction(xs: Conn, xs2: Conn, base: str) -> None:
    xs(W.Write(f"{base}/r/a/b", b""))
    tid = xs(W.TransactionStart())
    xs(W.Rm(f"{base}/r"), tid)
    assert xs.err(W.Read(f"{base}/r/a"), tid) == "ENOENT"
    assert xs2(W.Read(f"{base}/r/a")) == b""
    xs(W.TransactionEnd(True), tid)
    assert xs2.err(W.Read(f"{base}/r/a")) == "ENOENT"


def test_no_orphan_when_the_parent_goes_meanwhile(xs: Conn, xs2: Conn, base: str) -> None:
    # XSA-415: nodes created in a transaction whose parent was removed outside it.
    xs(W.Mkdir(f"{base}/p"))
    tid = xs(W.TransactionStart())
    xs(W.Write(f"{base}/p/x/y", b"1"), tid)
    xs2(W.Rm(f"{base}/p"))
    result = xs.err(W.TransactionEnd(True), tid)
    if result is None:  # committed: then the tree must be whole
        assert "x" in xs(W.Directory(f"{base}/p"))
        assert "y" in xs(W.Directory(f"{base}/p/x"))
    else:
        assert result == "EAGAIN"
        assert xs.err(W.Read(f"{base}/p/x/y")) == "ENOENT"
        assert xs.err(W.Read(f"{base}/p")) == "ENOENT"


def test_many_transactions_from_dom0(xs: Conn, base: str) -> None:
    tids = [xs(W.TransactionStart()) for _ in range(30)]
    assert len(set(tids)) == 30 and 0 not in tids
    for i, tid in enumerate(tids):
        xs(W.Write(f"{base}/m{i}", b""), tid)
        xs(W.TransactionEnd(True), tid)
    assert len(xs(W.Directory(base))) == 30
