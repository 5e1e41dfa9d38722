"""Domain messages and the special watches they fire. INTRODUCE on a real daemon maps the domain's ring,
so introducing made-up domains is done only with xenpure's own server (the ``guest`` fixture)."""

from __future__ import annotations

from collections.abc import Callable

from xsconf import Conn, Target

from xenpure.xenstore import _wire as W

Guest = Callable[[], tuple[int, Conn]]


def test_introduce_and_release_fire_the_special_watches(xs: Conn, xs2: Conn, guest: Guest) -> None:
    xs2(W.Watch("@introduceDomain", "i"))
    xs2(W.Watch("@releaseDomain", "r"))
    xs2.wait_events(2)
    d, _ = guest()
    assert xs(W.IsDomainIntroduced(d)) is True
    assert ("@introduceDomain", "i") in xs2.wait_events(1)
    xs2(W.Watch(f"@releaseDomain/{d}", "mine"))
    xs2(W.Watch("@releaseDomain", "which", 1))
    xs2.wait_events(2)
    xs(W.Release(d))
    got = xs2.wait_events(3)
    assert ("@releaseDomain", "r") in got
    assert (f"@releaseDomain/{d}", "mine") in got
    assert (f"@releaseDomain/{d}", "which") in got
    assert xs(W.IsDomainIntroduced(d)) is False


def test_introduce_checks(xs: Conn, target: Target, guest: Guest) -> None:
    d, _ = guest()
    assert xs.err(W.Introduce(d, 1, 1)) is None  # the same ring again: fine
    assert xs.err(W.Introduce(d, 2, 2)) == "EEXIST"
    assert xs.err(W.Introduce(0, 1, 1)) == "EINVAL"
    assert xs.err(W.Resume(d)) is None


def test_special_watches_need_permission(xs: Conn, guest: Guest) -> None:
    d, g = guest()
    g(W.Watch("@releaseDomain", "r"))
    g.wait_events(1)
    other, _ = guest()
    xs(W.Release(other))
    assert g.quiet() == []
    xs(W.SetPerms("@releaseDomain", (W.Perm(0, W.PermAccess.NONE), W.Perm(d, W.PermAccess.READ))))
    try:
        third, _ = guest()
        xs(W.Release(third))
        assert ("@releaseDomain", "r") in g.wait_events(1)
    finally:
        xs(W.SetPerms("@releaseDomain", (W.Perm(0, W.PermAccess.NONE),)))
