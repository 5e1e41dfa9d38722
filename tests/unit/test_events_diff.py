"""The pure event core: what a difference between two getdomaininfo snapshots means."""

import uuid

from xenpure.domain._events import EventKind, diff
from xenpure.domain._types import DomainInfo
from xenpure.hypercall.abi.domctl import DomInfoFlag
from xenpure.hypercall.abi.sched import ShutdownReason

U1, U2 = uuid.uuid4(), uuid.uuid4()


def info(domid: int = 1, flags: DomInfoFlag = DomInfoFlag.blocked, code: int = 0, u: uuid.UUID = U1) -> DomainInfo:
    return DomainInfo(domid, flags, code, 100, 100, 0, 0, 1, 0, 0, u, 0, 0)


def kinds(old: dict[int, DomainInfo], new: dict[int, DomainInfo]) -> list[tuple[EventKind, int]]:
    return [(e.kind, e.domid) for e in diff(old, new)]


def test_nothing_changed_nothing_reported() -> None:
    assert diff({1: info()}, {1: info()}) == []


def test_appear_and_disappear() -> None:
    assert kinds({}, {1: info()}) == [(EventKind.INTRODUCED, 1)]
    assert kinds({1: info()}, {}) == [(EventKind.DESTROYED, 1)]


def test_domid_reuse_is_destroyed_then_introduced() -> None:
    assert kinds({1: info()}, {1: info(u=U2)}) == [(EventKind.DESTROYED, 1), (EventKind.INTRODUCED, 1)]


def test_pause_unpause() -> None:
    assert kinds({1: info()}, {1: info(flags=DomInfoFlag.paused)}) == [(EventKind.PAUSED, 1)]
    assert kinds({1: info(flags=DomInfoFlag.paused)}, {1: info()}) == [(EventKind.UNPAUSED, 1)]


def test_shutdown_with_reason_and_crash() -> None:
    (ev,) = diff({1: info()}, {1: info(flags=DomInfoFlag.shutdown, code=ShutdownReason.reboot)})
    assert (ev.kind, ev.reason) == (EventKind.SHUTDOWN, ShutdownReason.reboot)
    (ev,) = diff({1: info()}, {1: info(flags=DomInfoFlag.shutdown, code=ShutdownReason.crash)})
    assert (ev.kind, ev.reason) == (EventKind.CRASHED, ShutdownReason.crash)


def test_teardown_pause_of_a_shut_down_domain_is_not_a_pause() -> None:
    down = DomInfoFlag.shutdown
    assert kinds({1: info()}, {1: info(flags=down | DomInfoFlag.paused)}) == [(EventKind.SHUTDOWN, 1)]
    assert kinds({1: info(flags=down)}, {1: info(flags=down | DomInfoFlag.paused)}) == []


def test_events_come_in_domid_order() -> None:
    assert kinds({}, {3: info(3), 1: info(1)}) == [(EventKind.INTRODUCED, 1), (EventKind.INTRODUCED, 3)]
