"""Watches: the first event, paths and subtrees, removals (also inside transactions), relative paths,
special watches."""

from __future__ import annotations

from xsconf import Conn, Target, accept

from xenpure.xenstore import _wire as W


def test_a_new_watch_fires_once_with_its_path(xs: Conn, base: str) -> None:
    xs(W.Watch(f"{base}/w", "tok"))
    assert xs.wait_events(1) == [(f"{base}/w", "tok")]
    assert xs.quiet() == []


def test_changes_at_and_below_fire(xs: Conn, xs2: Conn, base: str) -> None:
    xs(W.Watch(f"{base}/w", "t"))
    xs.wait_events(1)
    xs2(W.Write(f"{base}/w", b"1"))
    xs2(W.Write(f"{base}/w/a/b", b"2"))
    xs2(W.Write(f"{base}/other", b"3"))
    got = xs.wait_events(3, timeout=2)
    assert (f"{base}/w", "t") in got
    assert (f"{base}/w/a/b", "t") in got
    assert all(not p.startswith(f"{base}/other") for p, _ in got)


def test_removal_of_a_parent_fires_the_watched_path(xs: Conn, xs2: Conn, base: str) -> None:
    xs2(W.Write(f"{base}/p/w", b""))
    xs(W.Watch(f"{base}/p/w", "t"))
    xs.wait_events(1)
    xs2(W.Rm(f"{base}/p"))
    assert (f"{base}/p/w", "t") in xs.wait_events(1)


def test_events_of_a_transaction_fire_at_commit_only(xs: Conn, xs2: Conn, base: str) -> None:
    xs(W.Watch(f"{base}/w", "t"))
    xs.wait_events(1)
    tid = xs2(W.TransactionStart())
    xs2(W.Write(f"{base}/w/x", b""), tid)
    assert xs.quiet() == []
    xs2(W.TransactionEnd(True), tid)
    assert (f"{base}/w/x", "t") in xs.wait_events(1)
    tid = xs2(W.TransactionStart())
    xs2(W.Write(f"{base}/w/y", b""), tid)
    xs2(W.TransactionEnd(False), tid)
    assert xs.quiet() == []


def test_subtree_removal_inside_a_transaction(xs: Conn, xs2: Conn, base: str) -> None:
    xs2(W.Write(f"{base}/s/a/b", b""))
    xs(W.Watch(f"{base}/s/a/b", "deep"))
    xs(W.Watch(f"{base}/s", "top"))
    xs.wait_events(2)
    tid = xs2(W.TransactionStart())
    xs2(W.Rm(f"{base}/s/a"), tid)
    assert xs.quiet() == []
    xs2(W.TransactionEnd(True), tid)
    got = xs.wait_events(2)
    assert (f"{base}/s/a/b", "deep") in got  # the watched node went with its parent
    assert (f"{base}/s/a", "top") in got


def test_unwatch(xs: Conn, xs2: Conn, base: str) -> None:
    xs(W.Watch(f"{base}/u", "t"))
    xs.wait_events(1)
    xs(W.Unwatch(f"{base}/u", "t"))
    xs2(W.Write(f"{base}/u", b""))
    assert xs.quiet() == []
    assert xs.err(W.Unwatch(f"{base}/u", "t")) == "ENOENT"


def test_same_path_two_tokens_and_duplicates(xs: Conn, xs2: Conn, target: Target, base: str) -> None:
    xs(W.Watch(f"{base}/d", "one"))
    xs(W.Watch(f"{base}/d", "two"))
    xs.wait_events(2)
    accept(target, xs.err(W.Watch(f"{base}/d", "one")), xenpure="EEXIST", seen=(None,))
    xs.quiet()
    xs2(W.Write(f"{base}/d", b""))
    got = xs.wait_events(2)
    assert {t for _, t in got} >= {"one", "two"}


def test_relative_watch_reports_relative_paths(xs: Conn, xs2: Conn) -> None:
    leaf = "xenpure-conformance-relwatch"
    try:
        xs(W.Watch(leaf, "r"))
        assert xs.wait_events(1) == [(leaf, "r")]
        xs2(W.Write(f"/local/domain/0/{leaf}/x", b""))
        assert (f"{leaf}/x", "r") in xs.wait_events(1)
    finally:
        xs2(W.Rm(f"/local/domain/0/{leaf}"))


def test_special_watches_fire_when_set(xs: Conn) -> None:
    xs(W.Watch("@introduceDomain", "i"))
    xs(W.Watch("@releaseDomain", "r"))
    got = xs.wait_events(2)
    assert ("@introduceDomain", "i") in got and ("@releaseDomain", "r") in got


def test_reset_watches(xs: Conn, xs2: Conn, base: str) -> None:
    xs(W.Watch(f"{base}/r", "t"))
    xs.wait_events(1)
    xs(W.ResetWatches())
    xs2(W.Write(f"{base}/r", b""))
    assert xs.quiet() == []


def test_watch_depth_where_supported(xs: Conn, xs2: Conn, target: Target, base: str) -> None:
    kind, value = xs.ask(W.Watch(f"{base}/dp", "d", 1))
    if kind == "err":
        import pytest

        pytest.skip(f"WATCH with a depth answered {value}: XENSTORE_SERVER_FEATURE_WATCHDEPTH not offered")
    xs.wait_events(1)
    xs2(W.Write(f"{base}/dp/a", b""))
    xs2(W.Write(f"{base}/dp/a/b", b""))
    got = xs.wait_events(1, timeout=1)
    got += xs.quiet()
    assert (f"{base}/dp/a", "d") in got
    assert (f"{base}/dp/a/b", "d") not in got


def test_many_watches_and_a_flood_of_events(xs: Conn, xs2: Conn, base: str) -> None:
    for i in range(50):
        xs(W.Watch(f"{base}/f", f"t{i}"))
    assert len(xs.wait_events(50)) == 50
    for i in range(10):
        xs2(W.Write(f"{base}/f/{i}", b""))
    assert len(xs.wait_events(500, timeout=60)) == 500
