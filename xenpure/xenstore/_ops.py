"""What each client call does, written once as a procedure that yields requests and receives replies.

Rule 1: a procedure never does I/O and never knows whether it runs under the sync or the asyncio client. It
yields ``(request, tx_id)``, is sent back the ``Reply``/``ErrorReply`` event, and returns the call's result
(or raises the errno-named ``XenstoreError``). Each face has one small loop that drives procedures; the
logic of a call (DIRECTORY falling back to DIRECTORY_PART, what "unsupported" means) lives here only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Generator, Iterable
from typing import Any, TypeVar

from ..errors import ProtocolError, TooBig, XenstoreBusy, XenstoreError, XenstoreInvalid, XenstoreNotSupported
from ._client_core import ErrorReply, Reply
from ._wire import (
    Control,
    Directory,
    DirectoryPart,
    GetFeature,
    GetQuota,
    ListQuotas,
    Request,
    ResetWatches,
    SetFeature,
    SetQuota,
    TransactionEnd,
    TransactionStart,
    Watch,
)

__all__ = [
    "DEFAULT_WINDOW",
    "Gather",
    "Proc",
    "call",
    "directory",
    "for_request",
    "gatherable",
    "optional",
    "run_async",
    "run_sync",
    "value",
    "watch",
]

T = TypeVar("T")

#: A procedure: yields (request, tx_id), receives the reply event, returns the result.
Proc = Generator[tuple[Request[Any], int], Reply[Any] | ErrorReply, T]

#: How many times a DIRECTORY_PART walk restarts because the directory changed under it.
_DIRECTORY_PART_RESTARTS = 8


def value(ev: Reply[T] | ErrorReply) -> T:
    """The value of a reply event, or its errno-named exception raised."""
    if isinstance(ev, ErrorReply):
        raise ev.exception()
    return ev.value


def call(request: Request[T], tx_id: int = 0) -> Proc[T]:
    """One request, one reply."""
    ev = yield request, tx_id
    result: T = value(ev)
    return result


def optional(request: Request[T], tx_id: int = 0, since: str = "") -> Proc[T]:
    """A request of an optional type: ENOSYS (docs/misc/xenstore.txt: the answer to any type a xenstored does
    not support) becomes ``XenstoreNotSupported`` that says so."""
    ev = yield request, tx_id
    if isinstance(ev, ErrorReply) and ev.error == "ENOSYS":
        name = request.TYPE.name
        raise XenstoreNotSupported(
            ev.error,
            name,
            getattr(request, "path", None),
            f"this xenstored does not implement the optional {name} message"
            + (f" (added in {since})" if since else ""),
        )
    result: T = value(ev)
    return result


def watch(path: str, token: str, depth: int | None, tx_id: int = 0) -> Proc[None]:
    """WATCH. With a depth, EINVAL says why it is the likely cause: a xenstored without the watch-depth
    extension (XENSTORE_SERVER_FEATURE_WATCHDEPTH, Xen 4.19) takes the depth for a malformed request (both
    daemons of Xen 4.17 answer EINVAL, seen in the lab); the class stays the errno's (``XenstoreInvalid``)
    because a bad path answers the same."""
    ev = yield Watch(path, token, depth), tx_id
    if depth is not None and isinstance(ev, ErrorReply) and ev.error == "EINVAL":
        raise XenstoreInvalid(
            ev.error,
            "WATCH",
            path,
            f"refused with a depth ({depth}): a xenstored without watch depths (WATCHDEPTH, Xen 4.19) answers "
            "EINVAL to any depth; watch without one, or check the path",
        )
    value(ev)


def directory(path: str, tx_id: int = 0) -> Proc[tuple[str, ...]]:
    """DIRECTORY; when the list would not fit in one reply (E2BIG), walk it with DIRECTORY_PART.

    DIRECTORY_PART returns the node's generation count with every chunk; if it changes mid-walk the
    directory changed, and the walk starts over (a few times, then ``XenstoreBusy``).
    """
    ev = yield Directory(path), tx_id
    if not (isinstance(ev, ErrorReply) and ev.error == "E2BIG"):
        return value(ev)
    too_big = ev.exception()
    for _ in range(_DIRECTORY_PART_RESTARTS):
        names: list[str] = []
        offset = 0
        generation: int | None = None
        while True:
            part = yield DirectoryPart(path, offset), tx_id
            if isinstance(part, ErrorReply):
                if part.error in ("ENOSYS", "EINVAL"):
                    raise TooBig(
                        "E2BIG",
                        "DIRECTORY",
                        path,
                        "the children list is over XENSTORE_PAYLOAD_MAX and this xenstored does not "
                        "implement DIRECTORY_PART",
                    ) from too_big
                raise part.exception()
            chunk = part.value
            if generation is None:
                generation = chunk.generation
            elif chunk.generation != generation:
                break  # changed under us: start over
            names.extend(chunk.names)
            offset += chunk.size
            if chunk.complete:
                return tuple(names)
            if not chunk.names:
                raise ProtocolError(f"DIRECTORY_PART {path!r} at offset {offset} returned nothing and no end")
    raise XenstoreBusy("EBUSY", "DIRECTORY_PART", path, "the directory kept changing while it was listed")


_SINCE_4_21 = (GetFeature, SetFeature, GetQuota, SetQuota, ListQuotas)
#: The request types ``for_request`` gives a procedure to; every other one is a plain call.
_WITH_PROC = (Directory, Watch, *_SINCE_4_21, Control)


def for_request(request: Request[Any], tx_id: int = 0) -> Proc[Any] | None:
    """The procedure a client method would run for ``request``: DIRECTORY with its DIRECTORY_PART fallback,
    WATCH with its depth diagnosis, the optional types with their ENOSYS message; ``None`` for a plain one
    request, one reply call (``call``), which ``Gather`` runs without a generator."""
    if isinstance(request, Directory):
        return directory(request.path, tx_id)
    if isinstance(request, Watch):
        return watch(request.path, request.token, request.depth, tx_id)
    if isinstance(request, _SINCE_4_21):
        return optional(request, tx_id, since="Xen 4.21")
    if isinstance(request, Control):
        return optional(request, tx_id)
    return None


def gatherable(requests: Iterable[Request[Any]]) -> list[Request[Any]]:
    """``requests`` as ``Gather`` takes them: transaction boundaries and RESET_WATCHES refused
    (``ValueError``: they change the connection's state, which has methods of its own). The same object
    may be given twice: replies are matched by request id, not by object."""
    out = list(requests)
    for r in out:
        if isinstance(r, _NOT_GATHERABLE):
            raise ValueError(f"{r.TYPE.name} cannot be gathered: use transaction() or reset_watches()")
    return out


_NOT_GATHERABLE = (TransactionStart, TransactionEnd, ResetWatches)


#: How many requests ``Gather`` keeps outstanding at once, unless told otherwise.
DEFAULT_WINDOW = 64


class Gather:
    """Many requests driven at once, pipelined on one connection; still no I/O.

    ``fill()`` starts requests (in order) while fewer than ``window`` are outstanding, handing each to
    ``send(request, tx_id)``, which queues its bytes and returns the request's key (its ``req_id``: replies
    carry it); ``reply(key, event)`` files the reply to that request, and sends what its procedure
    (``for_request``) asks next. A ``XenstoreError`` -- an error reply, or a request ``send`` refused
    locally (over a limit) -- ends that request only and is kept as its outcome.

    The window is topped up when half of it is answered (``fill``). It bounds what is in flight: a writer
    that sent thousands of requests without reading could block on a full socket while xenstored blocks
    writing replies to it, or trip xenstored's quota of outstanding requests. Requests leave in order, and
    xenstored answers a connection in order, so a write followed by a read of the same path reads what was
    written (a procedure's later requests, such as DIRECTORY_PART's, go out when its earlier reply is in).
    """

    def __init__(
        self,
        requests: Iterable[Request[Any]],
        send: Callable[[Request[Any], int], int],
        *,
        tx_id: int = 0,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self._requests = list(requests)
        self._send = send
        self._tx_id = tx_id
        self._window = window
        self._started = 0
        # key (req_id) -> (position, its procedure or None for a plain call, the request)
        self._waiting: dict[int, tuple[int, Proc[Any] | None, Request[Any]]] = {}
        self._results: list[Any] = [None] * len(self._requests)
        self._errors: dict[int, XenstoreError] = {}
        self._finished = 0

    @property
    def done(self) -> bool:
        """Every request has its result or error."""
        return self._finished == len(self._requests)

    @property
    def outstanding_keys(self) -> list[int]:
        """The keys (``send``'s answers) of the requests sent and not yet answered."""
        return list(self._waiting)

    @property
    def oldest(self) -> Request[Any] | None:
        """The first request still unanswered (for messages), or ``None``."""
        return next(iter(self._waiting.values()))[2] if self._waiting else None

    @property
    def keys(self) -> Container[int]:
        """The keys of the requests awaiting their replies (live: it changes as replies come)."""
        return self._waiting

    def waits_for(self, key: int) -> bool:
        """Whether the request ``send`` gave ``key`` is one of ours, awaiting its reply."""
        return key in self._waiting

    def fill(self) -> None:
        """Start requests while the window has room -- once it has drained to half (``window // 2``
        unanswered), not after every reply: the requests then leave in fewer, fuller writes (each a system
        call, in a PV dom0 a bounce through Xen), while xenstored still has the other half to answer."""
        n = len(self._requests)
        if self._started and len(self._waiting) > self._window // 2:
            return
        while len(self._waiting) < self._window and self._started < n:
            i = self._started
            self._started += 1
            request = self._requests[i]
            proc = for_request(request, self._tx_id) if isinstance(request, _WITH_PROC) else None
            if proc is None:
                self._put(i, None, request, self._tx_id)
            else:
                self._advance(i, proc, None)

    def reply(self, key: int, event: Reply[Any] | ErrorReply) -> None:
        """The reply to the request ``send`` gave ``key``."""
        i, proc, _ = self._waiting.pop(key)
        if proc is not None:
            self._advance(i, proc, event)
        elif isinstance(event, ErrorReply):
            self._fail(i, event.exception())
        else:
            self._results[i] = event.value
            self._finished += 1

    def replies(self, values: dict[int, Any]) -> None:
        """Successful replies, as ``{key: value}`` (``ClientCore.receive``'s ``values``): what ``reply`` does
        with each, without a ``Reply`` object for a plain call."""
        waiting, results = self._waiting, self._results
        for key, value in values.items():
            i, proc, request = waiting.pop(key)
            if proc is None:
                results[i] = value
                self._finished += 1
            else:
                self._advance(i, proc, Reply(key, self._tx_id, request, value))

    def _fail(self, i: int, e: XenstoreError) -> None:
        self._errors[i] = e
        self._finished += 1

    def _advance(self, i: int, proc: Proc[Any], event: Reply[Any] | ErrorReply | None) -> None:
        try:
            request, tx_id = next(proc) if event is None else proc.send(event)
        except StopIteration as stop:
            self._results[i] = stop.value
            self._finished += 1
            return
        except XenstoreError as e:
            self._fail(i, e)
            return
        self._put(i, proc, request, tx_id)

    def _put(self, i: int, proc: Proc[Any] | None, request: Request[Any], tx_id: int) -> None:
        try:
            key = self._send(request, tx_id)
        except XenstoreError as e:  # refused locally, never sent
            if proc is not None:
                proc.close()
            self._fail(i, e)
            return
        self._waiting[key] = (i, proc, request)

    def close(self) -> None:
        """Give up (a timeout, a broken connection): close the procedures still running."""
        for _, proc, _ in self._waiting.values():
            if proc is not None:
                proc.close()
        self._waiting.clear()

    def outcome(self, return_exceptions: bool) -> list[Any]:
        """The results in order; with ``return_exceptions`` an error takes its result's place, without it the
        first error (by position) is raised."""
        if not return_exceptions and self._errors:
            first = min(self._errors)
            err = self._errors[first]
            if len(self._errors) > 1:
                n, total = len(self._errors), len(self._requests)
                err.add_note(f"{n} of the {total} gathered requests failed; this is #{first}")
            raise err
        out = list(self._results)
        for i, e in self._errors.items():
            out[i] = e
        return out


def run_sync(proc: Proc[T], roundtrip: Callable[[Request[Any], int], Reply[Any] | ErrorReply]) -> T:
    """Drive ``proc`` with ``roundtrip(request, tx_id) -> event`` (a blocking function)."""
    try:
        step = next(proc)
        while True:
            step = proc.send(roundtrip(*step))
    except StopIteration as stop:
        result: T = stop.value
        return result


async def run_async(proc: Proc[T], roundtrip: Callable[[Request[Any], int], Awaitable[Reply[Any] | ErrorReply]]) -> T:
    """Drive ``proc`` with ``await roundtrip(request, tx_id) -> event``."""
    try:
        step = next(proc)
        while True:
            step = proc.send(await roundtrip(*step))
    except StopIteration as stop:
        result: T = stop.value
        return result
