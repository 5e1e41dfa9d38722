"""Lifecycle events: introduced, paused, unpaused, shut down (with reason), crashed, destroyed.

Rule 1: an event is only ever the difference between two getdomaininfo snapshots (``diff``), so none is
invented; notifications merely decide *when* to take the next snapshot, so none is lost to a slow reader.

What wakes the monitor:

* ``VIRQ_DOM_EXC``: Xen raises this virtual interrupt in dom0 when a domain shuts down, crashes or dies.
  Only one listener per domain may bind it, and in a dom0 xenstored usually has; when the bind answers
  EEXIST the monitor does without it.
* xenstored's ``@introduceDomain`` and ``@releaseDomain`` watches, which xenstored fires when a domain is
  introduced to it and when one shuts down or dies (it listens to VIRQ_DOM_EXC itself).
* a timer (``interval``): Xen sends no notification when a controller pauses or unpauses a domain, so those
  transitions are seen by the next periodic snapshot. A pause undone within one interval is not reported.
* a shorter timer while a domain is dying: VIRQ_DOM_EXC (and so @releaseDomain) comes when Xen has killed a
  domain, but the domain stays listed, dying, until the last reference to it goes (dom0's daemons unmapping
  its pages), and nothing announces that. DESTROYED needs it gone, so for up to ``SETTLE_LIMIT`` seconds
  after a domain is first seen dying, snapshots come every ``SETTLE_INTERVAL`` (when that is shorter than
  ``interval``); a domain that stays dying longer (a zombie) is left to the ordinary timer.

Pause and unpause are reported only while a domain is alive (not shut down or dying): a toolstack pauses a
shut-down domain as it tears it down.

A domain is *introduced* once it has been born: unpaused, or paused after having run. A toolstack builds a
domain paused and unpauses it when it is ready (``xl create``; ``xl create -p`` waits for ``xl unpause``),
so the builder's pause is part of creation, not a PAUSED event. A domain destroyed before it ever ran is
never reported at all.

``Host.events()`` returns an ``EventStream``: ``for`` and ``async for`` over it share this module's
``Monitor``; they differ only in how they wait for a file descriptor to become readable.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import selectors
import time
import uuid as _uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import AlreadyExists, DeviceUnavailable, Timeout
from ..hypercall.abi.sched import ShutdownReason
from ._types import DomainInfo

if TYPE_CHECKING:
    from ._host import Host

__all__ = ["DEFAULT_INTERVAL", "DomainEvent", "EventKind", "EventStream", "Monitor", "diff"]

log = logging.getLogger("xenpure.domain")

#: Seconds between snapshots when nothing wakes the monitor earlier.
DEFAULT_INTERVAL = 0.1
#: Seconds between snapshots while a domain is dying but still listed (see the module docstring)...
SETTLE_INTERVAL = 0.01
#: ...for at most this many seconds after it was first seen dying.
SETTLE_LIMIT = 2.0


class EventKind(enum.Enum):
    INTRODUCED = "introduced"
    PAUSED = "paused"
    UNPAUSED = "unpaused"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"
    DESTROYED = "destroyed"


@dataclass(frozen=True)
class DomainEvent:
    """Something that happened to a domain between two snapshots.

    ``reason`` is set for SHUTDOWN and CRASHED; ``info`` is the snapshot after the change (None once the
    domain is gone).
    """

    kind: EventKind
    domid: int
    uuid: _uuid.UUID
    reason: ShutdownReason | int | None = None
    info: DomainInfo | None = None

    def __str__(self) -> str:
        reason = f"({getattr(self.reason, 'name', self.reason)})" if self.reason is not None else ""
        return f"domain {self.domid} {self.kind.value}{reason}"


def diff(old: Mapping[int, DomainInfo], new: Mapping[int, DomainInfo]) -> list[DomainEvent]:
    """The events that turn snapshot ``old`` into ``new`` (both keyed by domid), in domid order.

    A domid whose uuid changed was destroyed and re-created in between: both events are reported.
    """
    events: list[DomainEvent] = []
    for domid in sorted(old.keys() | new.keys()):
        before, after = old.get(domid), new.get(domid)
        if before is not None and (after is None or after.uuid != before.uuid):
            events.append(DomainEvent(EventKind.DESTROYED, domid, before.uuid))
            before = None
        if after is None:
            continue
        if before is None:
            events.append(DomainEvent(EventKind.INTRODUCED, domid, after.uuid, info=after))
            continue
        # Once a domain has shut down, a pause is the toolstack tearing it down (xl pauses a domain before
        # destroying it, as seen in the lab), not a suspend: only a live domain is reported paused.
        live = not (after.shutdown or after.dying)
        if after.paused != before.paused and live:
            kind = EventKind.PAUSED if after.paused else EventKind.UNPAUSED
            events.append(DomainEvent(kind, domid, after.uuid, info=after))
        if after.shutdown and not before.shutdown:
            kind = EventKind.CRASHED if after.crashed else EventKind.SHUTDOWN
            events.append(DomainEvent(kind, domid, after.uuid, after.shutdown_reason, after))
    return events


class Monitor:
    """The shared core: notification sources, their file descriptors, and snapshot diffing.

    Use it as a context manager; ``fds()`` are what to wait on, ``poll()`` drains the notifications and
    returns the events since the last poll.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self._born: set[tuple[int, _uuid.UUID]] = set()
        #: Born domains seen dying (still listed), with when they were first seen so.
        self._dying: dict[tuple[int, _uuid.UUID], float] = {}
        self._snapshot = self._take()
        self._evt: Any = None
        self._virq: Any = None
        self._xs: Any = None

    def __enter__(self) -> Monitor:
        from ..evtchn import EventChannels, Virq
        from ..xenstore import Client

        try:
            try:
                self._evt = EventChannels.open(self.host.kernel)
                self._virq = self._evt.bind_virq(Virq.DOM_EXC)
            except (AlreadyExists, DeviceUnavailable) as e:
                log.debug("VIRQ_DOM_EXC unavailable (%s): relying on xenstored's watches", e)
                if self._evt is not None:
                    self._evt.close()
                    self._evt = None
            self._xs = Client.open(self.host.kernel)
            self._xs.watch("@introduceDomain", "xenpure-events")
            self._xs.watch("@releaseDomain", "xenpure-events")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for obj in (self._virq, self._evt, self._xs):
            if obj is not None:
                obj.close()
        self._virq = self._evt = self._xs = None

    @property
    def settling(self) -> bool:
        """Whether a domain of the last snapshot is dying, first seen so less than ``SETTLE_LIMIT`` s ago: its
        disappearance (DESTROYED) comes with no notification, so it is worth looking again soon."""
        if not self._dying:
            return False
        now = time.monotonic()
        return any(now - since < SETTLE_LIMIT for since in self._dying.values())

    @property
    def uses_virq(self) -> bool:
        """Whether VIRQ_DOM_EXC is bound (False when another listener, e.g. xenstored, holds it)."""
        return self._virq is not None

    def fds(self) -> list[int]:
        fds = [self._xs.device.fileno()]
        if self._evt is not None:
            fds.append(self._evt.fileno())
        return fds

    def _drain(self) -> None:
        if self._evt is not None:
            while (port := self._evt.pending(timeout=0)) is not None:
                self._evt.unmask(port)
        while True:
            try:
                self._xs.next_watch_event(timeout=0)
            except Timeout:
                break

    def _take(self) -> dict[int, DomainInfo]:
        """A snapshot of the born domains (see the module docstring)."""
        infos = self.host.domain_infos()
        snap = {}
        for i in infos:
            key = (i.domid, i.uuid)
            if key in self._born or not (i.paused and i.cpu_time_ns == 0):
                self._born.add(key)
                snap[i.domid] = i
        self._born &= {(i.domid, i.uuid) for i in infos}  # forget the dead
        dying = {(i.domid, i.uuid) for i in snap.values() if i.dying}
        if dying or self._dying:
            now = time.monotonic()
            self._dying = {key: self._dying.get(key, now) for key in dying}
        return snap

    def poll(self) -> list[DomainEvent]:
        """Drain notifications, take a snapshot, return what changed since the previous one."""
        self._drain()
        new = self._take()
        events = diff(self._snapshot, new)
        self._snapshot = new
        return events


class EventStream:
    """Events from the moment it was created: an iterator, an async iterator, and a context manager.

    ``for ev in stream`` waits with ``selectors``; ``async for ev in stream`` waits with the running asyncio
    loop; both run the same ``Monitor``. Iteration ends once ``timeout`` seconds have passed since creation
    (None: never). ``close()`` (or leaving ``with``) unbinds the VIRQ and closes the xenstore connection.
    """

    def __init__(self, host: Host, timeout: float | None = None, interval: float = DEFAULT_INTERVAL) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._interval = interval
        self._queue: collections.deque[DomainEvent] = collections.deque()
        self._mon = Monitor(host).__enter__()
        self._sel: selectors.BaseSelector | None = None

    @property
    def monitor(self) -> Monitor:
        return self._mon

    def _left(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _wait_time(self) -> float | None:
        """Seconds to wait before the next poll, or None when the stream has run out of time."""
        left = self._left()
        if left is not None and left <= 0:
            return None
        interval = min(self._interval, SETTLE_INTERVAL) if self._mon.settling else self._interval
        return interval if left is None else min(interval, left)

    # -- sync -------------------------------------------------------------------------------------------
    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> DomainEvent:
        while not self._queue:
            batch = self.poll_once()
            if batch is None:
                raise StopIteration
            self._queue.extend(batch)
        return self._queue.popleft()

    def poll_once(self) -> list[DomainEvent] | None:
        """One turn of the sync loop, for callers that act on every wake-up rather than on each event (e.g.
        ``Supervisor``): the events the monitor has now; if there are none, wait once (up to ``interval``, or
        what is left of ``timeout``) and return ``[]``. None when nothing came and the time is up."""
        events = self._mon.poll()
        if events:
            return events
        wait = self._wait_time()
        if wait is None:
            return None
        if self._sel is None:
            self._sel = selectors.DefaultSelector()
            for fd in self._mon.fds():
                self._sel.register(fd, selectors.EVENT_READ)
        self._sel.select(wait)
        return []

    # -- asyncio ----------------------------------------------------------------------------------------
    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> DomainEvent:
        loop = asyncio.get_running_loop()
        while not self._queue:
            self._queue.extend(self._mon.poll())
            if self._queue:
                break
            wait = self._wait_time()
            if wait is None:
                raise StopAsyncIteration
            woken = asyncio.Event()
            fds = self._mon.fds()
            for fd in fds:
                loop.add_reader(fd, woken.set)
            try:
                await asyncio.wait_for(woken.wait(), wait)
            except TimeoutError:
                pass
            finally:
                for fd in fds:
                    loop.remove_reader(fd)
        return self._queue.popleft()

    # -- lifetime ---------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        self._mon.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
