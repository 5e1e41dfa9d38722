"""What each client call does, written once as a procedure that yields requests and receives replies.

Rule 1: a procedure never does I/O and never knows whether it runs under the sync or the asyncio client. It
yields ``(request, tx_id)``, is sent back the ``Reply``/``ErrorReply`` event, and returns the call's result
(or raises the errno-named ``XenstoreError``). Each face has one small loop that drives procedures; the
logic of a call (DIRECTORY falling back to DIRECTORY_PART, what "unsupported" means) lives here only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

from ..errors import ProtocolError, TooBig, XenstoreBusy, XenstoreInvalid, XenstoreNotSupported
from ._client_core import ErrorReply, Reply
from ._wire import Directory, DirectoryPart, Request, Watch

__all__ = ["Proc", "call", "directory", "optional", "run_async", "run_sync", "watch"]

T = TypeVar("T")

#: A procedure: yields (request, tx_id), receives the reply event, returns the result.
Proc = Generator[tuple[Request[Any], int], Reply[Any] | ErrorReply, T]

#: How many times a DIRECTORY_PART walk restarts because the directory changed under it.
_DIRECTORY_PART_RESTARTS = 8


def _value(ev: Reply[T] | ErrorReply) -> T:
    if isinstance(ev, ErrorReply):
        raise ev.exception()
    return ev.value


def call(request: Request[T], tx_id: int = 0) -> Proc[T]:
    """One request, one reply."""
    ev = yield request, tx_id
    result: T = _value(ev)
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
    result: T = _value(ev)
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
    _value(ev)


def directory(path: str, tx_id: int = 0) -> Proc[tuple[str, ...]]:
    """DIRECTORY; when the list would not fit in one reply (E2BIG), walk it with DIRECTORY_PART.

    DIRECTORY_PART returns the node's generation count with every chunk; if it changes mid-walk the
    directory changed, and the walk starts over (a few times, then ``XenstoreBusy``).
    """
    ev = yield Directory(path), tx_id
    if not (isinstance(ev, ErrorReply) and ev.error == "E2BIG"):
        return _value(ev)
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
