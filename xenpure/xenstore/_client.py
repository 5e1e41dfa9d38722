"""The blocking xenstore client: a ``ClientCore`` driven over a ``Device`` from the kernel seam.

Rule 1: this module only moves bytes. Which request a call sends, how its reply is decoded and what an error
means is decided by ``_ops`` and ``_client_core``, the same code the asyncio client runs; here we write
what the core returns, read with a deadline (``kernel.timed_reader``: on xenstored's socket one blocking
read that the kernel times out, elsewhere a wait on the descriptor, then a read), and feed what we read.

``gather`` pipelines a batch: up to a window of requests in one write, replies matched as they come
(``_ops.Gather`` decides what is sent next). A round trip costs its system calls, and in a PV dom0 each
one bounces through Xen: a plain call makes two (write, read), a batch of n about 2n/window.

Every blocking call takes ``timeout`` (seconds; ``None`` means the client's default) and raises ``Timeout``
when it runs out; a reply that arrives after its caller gave up is dropped, so the connection stays usable.
On the xenbus device the core holds each request back until the one before it is answered (the driver
cannot take two at once); the pump writes it when it is released.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from ..errors import (
    ConnectionClosed,
    DeviceUnavailable,
    NotPrivileged,
    Timeout,
    TransactionConflict,
    XenstoreError,
    XenstoreNotSupported,
)
from ..kernel import Device, Kernel, timed_reader
from . import _ops
from ._client_core import ClientCore, Closed, ErrorReply, Event, Reply, WatchEvent
from ._wire import (
    Control,
    GetDomainPath,
    GetFeature,
    GetPerms,
    GetQuota,
    Introduce,
    IsDomainIntroduced,
    ListQuotas,
    Mkdir,
    Perm,
    Read,
    Release,
    Request,
    ResetWatches,
    Resume,
    Rm,
    SetFeature,
    SetPerms,
    SetQuota,
    SetTarget,
    TransactionEnd,
    TransactionStart,
    Unwatch,
    Watch,
    Write,
)

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT",
    "Client",
    "Transaction",
    "can_pipeline",
    "check_reset_watches",
    "check_watch_depth",
    "is_xenbus",
    "send_gathered",
    "socket_candidates",
]

log = logging.getLogger("xenpure.xenstore")

T = TypeVar("T")

#: Where xenstored listens when ``$XENSTORED_PATH`` does not say otherwise.
DEFAULT_SOCKET = "/run/xenstored/socket"
#: Seconds a call waits for its reply unless told otherwise.
DEFAULT_TIMEOUT = 30.0
#: How many times ``retry`` runs a transaction that keeps conflicting.
DEFAULT_ATTEMPTS = 16

_READ_SIZE = 65536


_CLOCK_MONOTONIC_COARSE = 6  # linux/time.h; the time module does not name it


def _coarse_clock() -> tuple[Callable[[], float], float]:
    """A monotonic clock that costs no system call, and its resolution.

    CLOCK_MONOTONIC is read through the vDSO only when the clocksource allows it; a PV dom0's Xen clock
    may not (then every reading is a system call, which bounces through Xen). CLOCK_MONOTONIC_COARSE is
    always read from the vDSO, at the resolution of the kernel's tick (1-10 ms): plenty for deadlines of
    seconds, and each round trip reads the clock twice.
    """
    if not sys.platform.startswith("linux"):
        return time.monotonic, 0.0
    clock = _CLOCK_MONOTONIC_COARSE
    try:
        tick = time.clock_getres(clock)
    except OSError:
        return time.monotonic, 0.0
    return functools.partial(time.clock_gettime, clock), tick


#: Deadlines are kept on this clock; a deadline within ``_TICK`` of now counts as reached.
_now, _TICK = _coarse_clock()


def _waited(request: Request[Any] | str | None) -> str:
    """What a wait is for, in messages: ``None`` a watch event, else the reply to a request (or a type name)."""
    if request is None:
        return "watch event"
    return f"reply to {request if isinstance(request, str) else request.TYPE.name}"


def socket_candidates(path: str | None = None) -> list[str]:
    """The Unix sockets ``open`` tries, in order: ``path`` alone if given, else ``$XENSTORED_PATH`` and
    /run/xenstored/socket."""
    if path is not None:
        return [path]
    out = []
    env = os.environ.get("XENSTORED_PATH")
    if env:
        out.append(env)
    if DEFAULT_SOCKET not in out:
        out.append(DEFAULT_SOCKET)
    return out


def is_xenbus(device: Device) -> bool:
    """Whether ``device`` is the kernel's xenbus device (/dev/xen/xenbus, /proc/xen/xenbus)."""
    return device.path.rstrip("/").endswith("/xenbus")


def can_pipeline(device: Device) -> bool:
    """Whether requests may be pipelined on ``device``: not on the xenbus device (/dev/xen/xenbus,
    /proc/xen/xenbus), which mangles a request written while another is unanswered (Linux 6.1, lab)."""
    return not is_xenbus(device)


def check_reset_watches(device: Device) -> None:
    """Refuse RESET_WATCHES on the xenbus device: there it is the kernel's own connection that is reset, and
    every watch of the kernel (its drivers' too) is dropped, not only this process's (seen in the lab: the
    kernel then fails to release its watches, "xenbus: Failed to release watch ...: -2")."""
    if is_xenbus(device):
        raise XenstoreNotSupported(
            "ENOSYS",
            "RESET_WATCHES",
            None,
            f"on {device.path} it would reset the kernel's own connection (every driver's watches): unwatch "
            "yours, or close the device, which drops them; not sent",
        )


def check_watch_depth(device: Device, path: str, depth: int | None) -> None:
    """Refuse a watch depth the xenbus device would drop: the kernel registers a process's watches itself
    and passes no depth on (Linux 6.1 in the lab: a WATCH with a depth is accepted there, and fires for the
    whole subtree, even from a xenstored that refuses depths on its socket)."""
    if depth is not None and is_xenbus(device):
        raise XenstoreNotSupported(
            "ENOSYS",
            "WATCH",
            path,
            f"{device.path} drops a watch's depth (the kernel registers the watch itself): watch without a "
            "depth, or over xenstored's socket; not sent",
        )


def send_gathered(device: Device, core: ClientCore, request: Request[Any], tx_id: int) -> tuple[int, bytes]:
    """``(req_id, bytes)`` for one request of a ``gather`` on ``device`` (``ClientCore.send_request``), after
    the checks its own method makes first (a WATCH's depth on the xenbus device); raises what the method
    would, and sends nothing then."""
    if request.__class__ is Read:
        return core.send_read(request.path, tx_id, request)
    if isinstance(request, Watch):
        check_watch_depth(device, request.path, request.depth)
    return core.send_request(request, tx_id)


def open_device(kernel: Kernel, path: str | None = None) -> Device:
    """xenstored's Unix socket (see ``socket_candidates``), else the xenbus device (/dev/xen/xenbus, then
    /proc/xen/xenbus). Raises ``DeviceUnavailable`` naming everything tried, or ``NotPrivileged``."""
    tried: list[str] = []
    denied: NotPrivileged | None = None
    for p in socket_candidates(path):
        try:
            return kernel.connect_socket(p)
        except DeviceUnavailable as e:
            tried.extend(e.tried)
        except NotPrivileged as e:
            denied = denied or e
            tried.append(p)
    if path is not None:
        if denied is not None:
            raise denied
        raise DeviceUnavailable("xenstored socket", tried)
    try:
        return kernel.open("xenbus")
    except DeviceUnavailable as e:
        if denied is not None:
            raise denied from e
        raise DeviceUnavailable("xenstore (xenstored socket or xenbus device)", [*tried, *e.tried]) from e


class _NodeOps:
    """The calls that work both on a connection and inside a transaction."""

    _tx_id: int = 0

    def _run(self, proc: _ops.Proc[T], timeout: float | None) -> T:
        raise NotImplementedError

    def _call(self, request: Request[T], timeout: float | None) -> T:
        """One request, one reply (``_ops.call``); ``Client`` runs it without a generator."""
        return self._run(_ops.call(request, self._tx_id), timeout)

    def _gather(
        self, requests: list[Request[Any]], return_exceptions: bool, timeout: float | None, window: int
    ) -> list[Any]:
        raise NotImplementedError

    def gather(
        self,
        requests: Iterable[Request[Any]],
        *,
        return_exceptions: bool = False,
        timeout: float | None = None,
        window: int = _ops.DEFAULT_WINDOW,
    ) -> list[Any]:
        """Send many requests without waiting for each reply (pipelining), and return their results in order.

        ``requests`` are the wire requests (``Read(path)``, ``Write(path, b"v")``, ``Directory(path)``...);
        each result is what the matching method returns (``Read`` -> bytes, ``Write`` -> None...).
        Requests go out in order, at most ``window`` unanswered at a time, and xenstored answers a
        connection in order, so a ``Write`` then a ``Read`` of the same path reads the new value.

        Every request is answered before this returns or raises. A failed request (an error reply, or one
        refused locally for breaking a limit) raises its ``XenstoreError`` -- the first one by position --
        unless ``return_exceptions``, which puts the exception in its result's place. ``timeout`` bounds the
        whole batch. On the xenbus device, which takes one request at a time, this still works, one
        request after another. Transaction boundaries and RESET_WATCHES are refused (``ValueError``): use
        ``transaction()`` and ``reset_watches()``.
        """
        return self._gather(_ops.gatherable(requests), return_exceptions, timeout, window)

    def read(self, path: str, *, timeout: float | None = None) -> bytes:
        """The value at ``path`` (XS_READ). Raises ``NoEntry`` if there is no such node, ``PermissionDenied``
        if we may not read it."""
        return self._read(path, timeout)

    def _read(self, path: str, timeout: float | None) -> bytes:
        return self._call(Read(path), timeout)

    def write(self, path: str, value: bytes | str, *, timeout: float | None = None) -> None:
        """Set the value at ``path`` (XS_WRITE), creating missing parents with empty values. ``str`` values
        are written UTF-8 encoded. Raises ``PermissionDenied``, ``NoSpace`` (quota), ``XenstoreInvalid``."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        self._call(Write(path, data), timeout)

    def mkdir(self, path: str, *, timeout: float | None = None) -> None:
        """Make sure ``path`` exists (XS_MKDIR); an existing value is left alone."""
        self._call(Mkdir(path), timeout)

    def rm(self, path: str, *, timeout: float | None = None) -> None:
        """Remove ``path`` and everything below it (XS_RM). A missing node is fine; a missing parent raises
        ``NoEntry``."""
        self._call(Rm(path), timeout)

    def directory(self, path: str, *, timeout: float | None = None) -> tuple[str, ...]:
        """The names of ``path``'s children (XS_DIRECTORY; XS_DIRECTORY_PART when the list is over 4096
        bytes and xenstored supports it, else ``TooBig``)."""
        return self._run(_ops.directory(path, self._tx_id), timeout)

    def get_perms(self, path: str, *, timeout: float | None = None) -> tuple[Perm, ...]:
        """The permissions of ``path`` (XS_GET_PERMS): owner first."""
        return self._call(GetPerms(path), timeout)

    def set_perms(self, path: str, perms: tuple[Perm, ...] | list[Perm], *, timeout: float | None = None) -> None:
        """Replace the permissions of ``path`` (XS_SET_PERMS); the first entry names the owner. Only the
        owner may do this, and only a privileged domain may change the owner."""
        self._call(SetPerms(path, tuple(perms)), timeout)


class Transaction(_NodeOps):
    """A xenstore transaction (XS_TRANSACTION_START .. XS_TRANSACTION_END) on a ``Client``.

    Use it as a context manager: it commits when the block ends normally (``TransactionConflict`` if another
    writer got in first: run the whole block again, or use ``Client.retry``) and aborts if the block raises.
    """

    def __init__(self, client: Client, timeout: float | None = None) -> None:
        self._client = client
        self._timeout = timeout
        self._tx_id = 0
        self._done = False

    @property
    def tx_id(self) -> int:
        """The id xenstored gave this transaction (0 before it starts)."""
        return self._tx_id

    def _run(self, proc: _ops.Proc[T], timeout: float | None) -> T:
        if self._tx_id == 0 or self._done:
            raise RuntimeError("the transaction is not active (use it inside `with client.transaction()`)")
        return self._client._run(proc, self._timeout if timeout is None else timeout)

    def _gather(
        self, requests: list[Request[Any]], return_exceptions: bool, timeout: float | None, window: int
    ) -> list[Any]:
        if self._tx_id == 0 or self._done:
            raise RuntimeError("the transaction is not active (use it inside `with client.transaction()`)")
        t = self._timeout if timeout is None else timeout
        return self._client._gather_in(requests, self._tx_id, return_exceptions, t, window)

    def _read(self, path: str, timeout: float | None) -> bytes:
        if self._tx_id == 0 or self._done:
            raise RuntimeError("the transaction is not active (use it inside `with client.transaction()`)")
        return self._client._read_in(path, self._tx_id, self._timeout if timeout is None else timeout)

    def start(self) -> Transaction:
        if self._tx_id != 0:
            raise RuntimeError("the transaction has already started")
        self._tx_id = self._client._run(_ops.call(TransactionStart()), self._timeout)
        return self

    def commit(self, *, timeout: float | None = None) -> None:
        """XS_TRANSACTION_END T: raises ``TransactionConflict`` (EAGAIN) if another writer got in first."""
        self._end(True, timeout)

    def abort(self, *, timeout: float | None = None) -> None:
        """XS_TRANSACTION_END F: throw the transaction's changes away."""
        self._end(False, timeout)

    def _end(self, commit: bool, timeout: float | None) -> None:
        self._run(_ops.call(TransactionEnd(commit), self._tx_id), timeout)
        self._done = True

    def __enter__(self) -> Transaction:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._done:
            return
        if t is None:
            self.commit()
            return
        try:
            self.abort()
        except (XenstoreError, Timeout) as err:  # the original exception matters more
            log.debug("abort of transaction %d failed: %s", self._tx_id, err)
        finally:
            self._done = True


class Client(_NodeOps):
    """A connection to xenstored, over its Unix socket or the xenbus device.

    ``Client.open(kernel)`` finds one; ``Client(device)`` wraps a ``Device`` you opened. Use it as a context
    manager (or call ``close``). One thread at a time issues calls (a lock serialises them).

    ``pipeline`` (default: not on the xenbus device, which cannot take a request while another is
    unanswered) says whether requests may be written before earlier ones are answered.
    """

    def __init__(
        self, device: Device, *, timeout: float | None = DEFAULT_TIMEOUT, pipeline: bool | None = None
    ) -> None:
        self.device = device
        self.timeout = timeout
        self._core = ClientCore(pipeline=can_pipeline(device) if pipeline is None else pipeline)
        self._read_within = timed_reader(device)
        self._events: dict[int, Reply[Any] | ErrorReply] = {}  # req_id -> its reply, until its caller takes it
        self._watch_events: collections.deque[WatchEvent] = collections.deque()
        self._closed_event: Closed | None = None
        self._lock = threading.RLock()
        self._is_closed = False

    @classmethod
    def open(cls, kernel: Kernel, *, path: str | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> Client:
        """Connect to xenstored: its Unix socket (``path``, else ``$XENSTORED_PATH``, else
        /run/xenstored/socket), else the xenbus device (/dev/xen/xenbus, /proc/xen/xenbus).

        Raises ``DeviceUnavailable`` naming everything tried, or ``NotPrivileged``.
        """
        dev = open_device(kernel, path)
        log.debug("xenstore client on %s", dev.path)
        return cls(dev, timeout=timeout)

    # -- the byte pump ----------------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        t = self.timeout if timeout is None else timeout
        return None if t is None else _now() + t

    def _pump(
        self, deadline: float | None, waiting_for: Request[Any] | str | None, g: _ops.Gather | None = None
    ) -> None:
        """Wait for bytes (until ``deadline``), feed them to the core, and file the events it returns (the
        replies ``g`` waits for go straight to it).

        ``waiting_for`` is the request whose reply we wait for (``None``: a watch event; with ``g``, its
        oldest unanswered request), for messages.
        """
        if self._closed_event is not None:
            waited = _waited(g.oldest if g is not None else waiting_for)
            raise ConnectionClosed(f"xenstored closed the connection; {waited} will not come")
        remaining = None if deadline is None else max(0.0, deadline - _now())
        data = self._read_within(_READ_SIZE, remaining)
        if data is None:  # nothing in time (or woken for nothing: then wait again, while time is left)
            if deadline is not None and _now() + _TICK >= deadline:
                raise Timeout(
                    f"no {_waited(g.oldest if g is not None else waiting_for)} from xenstored on {self.device.path} "
                    f"within the timeout ({self._core.outstanding} requests unanswered, "
                    f"{len(self._watch_events)} watch events queued)"
                )
            return
        core = self._core
        if g is None:
            self._file(core.receive(data))
            return
        values: dict[int, bytes] = {}
        events = core.receive(data, values, g.keys)  # the batch's READ values apart, without event objects
        if events or not core.pipeline:
            self._file(events, g)
        if values:
            g.replies(values)

    def _file(self, events: list[Event], g: _ops.Gather | None = None) -> None:
        """Put each event where its taker looks: replies by request id (or into ``g``, the batch being
        gathered, if it waits for them), watch events in their queue."""
        for ev in events:
            if isinstance(ev, (Reply, ErrorReply)):
                if g is not None and g.waits_for(ev.req_id):
                    g.reply(ev.req_id, ev)
                else:
                    self._events[ev.req_id] = ev
            elif isinstance(ev, WatchEvent):
                self._watch_events.append(ev)
            else:
                self._closed_event = ev
        core = self._core
        if not core.pipeline:
            out = core.data_to_send()
            if out:
                self._write(out)

    def _write(self, data: bytes) -> None:
        write = self.device.write
        try:
            n = write(data)
            while n < len(data):  # a short write (a full socket buffer or ring): the rest
                data = data[n:]
                n = write(data)
        except ConnectionClosed:
            raise  # the device said why (a ring's error indicator)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ConnectionClosed(f"xenstored closed the connection on {self.device.path}") from e

    def _roundtrip(self, request: Request[Any], tx_id: int, deadline: float | None) -> Reply[Any] | ErrorReply:
        if self._is_closed:
            raise ConnectionClosed("the client is closed")
        req_id, data = self._core.send_request(request, tx_id)
        if data:
            self._write(data)
        return self._reply_to(req_id, request, deadline)

    def _reply_to(self, req_id: int, request: Request[Any] | str, deadline: float | None) -> Reply[Any] | ErrorReply:
        """Pump until the reply to ``req_id`` (already sent; ``request`` names it in messages) is in; on
        ``Timeout`` its reply is dropped."""
        events = self._events
        try:
            while req_id not in events:
                self._pump(deadline, request)
        except Timeout:
            self._core.abandon_id(req_id)
            raise
        return events.pop(req_id)

    def _run(self, proc: _ops.Proc[T], timeout: float | None) -> T:
        deadline = self._deadline(timeout)
        with self._lock:
            return _ops.run_sync(proc, lambda req, tx: self._roundtrip(req, tx, deadline))

    def _call(self, request: Request[T], timeout: float | None) -> T:
        # What _run(_ops.call(request)) does, without the generator: the path of every plain call. The
        # common case -- the first read is exactly the reply -- is taken as it comes, without filing it or
        # reading the clock again: in the lab's dom0 (PV, under emulation) what a round trip costs beyond
        # its two system calls grows with the code and data it touches (bench/README.md).
        t = self.timeout if timeout is None else timeout
        with self._lock:
            if self._is_closed:
                raise ConnectionClosed("the client is closed")
            core = self._core
            start = _now()
            req_id, data = core.send_request(request)
            if data:
                self._write(data)
            if core.pipeline and self._closed_event is None:
                got = self._read_within(_READ_SIZE, t)  # the whole timeout: this is the first wait
                if got is not None:
                    events = core.receive(got)
                    if len(events) == 1:
                        ev = events[0]
                        if ev.__class__ is Reply and ev.req_id == req_id:
                            result: T = ev.value
                            return result
                    self._file(events)
            ev2 = self._reply_to(req_id, request, None if t is None else start + t)
        value: T = _ops.value(ev2)
        return value

    def read(self, path: str, *, timeout: float | None = None) -> bytes:
        """The value at ``path`` (XS_READ). Raises ``NoEntry`` if there is no such node, ``PermissionDenied``
        if we may not read it."""
        return self._read_in(path, 0, timeout)

    def _read_in(self, path: str, tx_id: int, timeout: float | None) -> bytes:
        # The READ fast path, the call made most: the core packs the request with one precompiled struct and
        # keeps only its id outstanding (ClientCore.send_read), and takes a reply that is exactly the answer
        # from the read buffer (read_reply: the value, or the errno-named exception of an ERROR). Whatever
        # else comes -- a watch event first, a partial reply -- goes through receive() and is filed as
        # usual. Under the lab's emulation every object and line of Python a round trip touches costs
        # (bench/README.md), so this path builds no request or reply object.
        t = self.timeout if timeout is None else timeout
        with self._lock:
            if self._is_closed:
                raise ConnectionClosed("the client is closed")
            core = self._core
            start = _now()
            req_id, data = core.send_read(path, tx_id)
            if data:
                self._write(data)
            if self._closed_event is None:
                got = self._read_within(_READ_SIZE, t)  # the whole timeout: this is the first wait
                if got is not None:
                    value = core.read_reply(got, req_id)
                    if value is not None:
                        if not core.pipeline:
                            self._file([])  # writes what the core released (xenbus: one request at a time)
                        return value
                    self._file(core.receive(got))
            ev = self._reply_to(req_id, "READ", None if t is None else start + t)
        result: bytes = _ops.value(ev)
        return result

    def _gather(
        self, requests: list[Request[Any]], return_exceptions: bool, timeout: float | None, window: int
    ) -> list[Any]:
        return self._gather_in(requests, 0, return_exceptions, timeout, window)

    def _gather_in(
        self, requests: list[Request[Any]], tx_id: int, return_exceptions: bool, timeout: float | None, window: int
    ) -> list[Any]:
        core, device, out = self._core, self.device, list[bytes]()

        def send(request: Request[Any], tx: int) -> int:
            req_id, data = send_gathered(device, core, request, tx)
            if data:
                out.append(data)
            return req_id

        g = _ops.Gather(requests, send, tx_id=tx_id, window=window)
        deadline = self._deadline(timeout)
        with self._lock:
            if self._is_closed:
                raise ConnectionClosed("the client is closed")
            try:
                g.fill()
                while not g.done:
                    if out:
                        data = b"".join(out)
                        out.clear()
                        self._write(data)
                    self._pump(deadline, None, g)
                    g.fill()
            except BaseException:
                for k in g.outstanding_keys:
                    core.abandon_id(k)
                g.close()
                raise
        return g.outcome(return_exceptions)

    # -- watches ----------------------------------------------------------------------------------------

    def watch(self, path: str, token: str, *, depth: int | None = None, timeout: float | None = None) -> None:
        """Register a watch (XS_WATCH) on ``path`` (or ``@introduceDomain``/``@releaseDomain``).

        xenstored fires it once straight away, then on every change at or below ``path`` (``depth`` limits
        how far below, where xenstored supports it: ``XenstoreInvalid`` saying so where it does not, and
        ``XenstoreNotSupported`` on the xenbus device, which would drop it). Events are collected with
        ``next_watch_event`` or ``watch_events``.
        """
        check_watch_depth(self.device, path, depth)
        self._run(_ops.watch(path, token, depth), timeout)

    def unwatch(self, path: str, token: str, *, timeout: float | None = None) -> None:
        """Remove a watch (XS_UNWATCH). Raises ``NoEntry`` if there is no such watch."""
        self._call(Unwatch(path, token), timeout)

    def reset_watches(self, *, timeout: float | None = None) -> None:
        """Drop every watch and transaction of this connection (XS_RESET_WATCHES). Refused on the xenbus
        device (``XenstoreNotSupported``), where the connection is the kernel's."""
        check_reset_watches(self.device)
        self._call(ResetWatches(), timeout)
        self._watch_events.clear()

    def next_watch_event(self, *, timeout: float | None = None) -> WatchEvent:
        """The next watch event (queued ones first). Raises ``Timeout`` if none comes in time."""
        deadline = self._deadline(timeout)
        with self._lock:
            while not self._watch_events:
                self._pump(deadline, None)
            return self._watch_events.popleft()

    def watch_events(self, *, timeout: float | None = None) -> Iterator[WatchEvent]:
        """Watch events as they come; raises ``Timeout`` when none arrives within ``timeout`` of the last."""
        while True:
            yield self.next_watch_event(timeout=timeout)

    # -- transactions -----------------------------------------------------------------------------------

    def transaction(self, *, timeout: float | None = None) -> Transaction:
        """A transaction, started when its ``with`` block is entered (see ``Transaction``)."""
        return Transaction(self, timeout)

    def retry(
        self, fn: Callable[[Transaction], T], *, attempts: int = DEFAULT_ATTEMPTS, timeout: float | None = None
    ) -> T:
        """Run ``fn(tx)`` in a transaction, again from the start while the commit raises
        ``TransactionConflict`` (EAGAIN), at most ``attempts`` times; return what ``fn`` returned."""
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction(timeout=timeout) as tx:
                    result = fn(tx)
                return result
            except TransactionConflict:
                if attempt == attempts:
                    raise
                log.debug("transaction conflict, attempt %d of %d: running it again", attempt, attempts)
        raise AssertionError("unreachable")

    # -- domains ----------------------------------------------------------------------------------------

    def introduce(self, domid: int, gfn: int, evtchn: int, *, timeout: float | None = None) -> None:
        """Tell xenstored to serve ``domid`` through its ring page ``gfn`` and event channel ``evtchn``
        (XS_INTRODUCE; dom0 only). Fires ``@introduceDomain``."""
        self._call(Introduce(domid, gfn, evtchn), timeout)

    def release(self, domid: int, *, timeout: float | None = None) -> None:
        """Tell xenstored to forget ``domid`` (XS_RELEASE; dom0 only). Fires ``@releaseDomain``."""
        self._call(Release(domid), timeout)

    def resume(self, domid: int, *, timeout: float | None = None) -> None:
        """Re-arm ``@releaseDomain`` for ``domid`` after it was resumed (XS_RESUME; dom0 only)."""
        self._call(Resume(domid), timeout)

    def get_domain_path(self, domid: int, *, timeout: float | None = None) -> str:
        """``/local/domain/<domid>``, as xenstored computes it (XS_GET_DOMAIN_PATH)."""
        return self._call(GetDomainPath(domid), timeout)

    def is_domain_introduced(self, domid: int, *, timeout: float | None = None) -> bool:
        """Whether xenstored serves ``domid`` (XS_IS_DOMAIN_INTRODUCED)."""
        return self._call(IsDomainIntroduced(domid), timeout)

    def set_target(self, domid: int, target: int, *, timeout: float | None = None) -> None:
        """Let ``domid`` act on ``target``'s nodes as if it were privileged (XS_SET_TARGET; dom0 only)."""
        self._call(SetTarget(domid, target), timeout)

    # -- xenstored itself -------------------------------------------------------------------------------

    def control(self, command: str, *args: bytes | str, timeout: float | None = None) -> bytes:
        """XS_CONTROL ``command`` (``"check"``, ``"help"``, ``"log"``...): implementation-defined, optional.
        Raises ``XenstoreNotSupported`` if this xenstored has no CONTROL."""
        a = tuple(x.encode() if isinstance(x, str) else bytes(x) for x in args)
        return self._run(_ops.optional(Control(command, a)), timeout)

    def get_feature(self, domid: int | None = None, *, timeout: float | None = None) -> int:
        """The feature bitmap of ``domid``'s ring (or what xenstored supports, without ``domid``)
        (XS_GET_FEATURE, Xen >= 4.21). Raises ``XenstoreNotSupported`` on older xenstoreds."""
        return self._run(_ops.optional(GetFeature(domid), since="Xen 4.21"), timeout)

    def set_feature(self, domid: int, value: int, *, timeout: float | None = None) -> None:
        """Set ``domid``'s feature bitmap before it is introduced (XS_SET_FEATURE, Xen >= 4.21; dom0 only)."""
        self._run(_ops.optional(SetFeature(domid, value), since="Xen 4.21"), timeout)

    def get_quota(self, quota: str, domid: int | None = None, *, timeout: float | None = None) -> int:
        """Quota ``quota`` (``"nodes"``, ``"watches"``...) of ``domid``, or the global default
        (XS_GET_QUOTA, Xen >= 4.21; dom0 only). 0 means unlimited."""
        return self._run(_ops.optional(GetQuota(quota, domid), since="Xen 4.21"), timeout)

    def quota_names(self, *, timeout: float | None = None) -> tuple[str, ...]:
        """The quota names this xenstored knows (XS_GET_QUOTA without argument, Xen >= 4.21)."""
        return self._run(_ops.optional(ListQuotas(), since="Xen 4.21"), timeout)

    def set_quota(self, quota: str, value: int, domid: int | None = None, *, timeout: float | None = None) -> None:
        """Set quota ``quota`` of ``domid`` (or the global default) (XS_SET_QUOTA, Xen >= 4.21; dom0 only)."""
        self._run(_ops.optional(SetQuota(quota, value, domid), since="Xen 4.21"), timeout)

    # -- lifetime ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (xenstored drops our watches and open transactions). Idempotent."""
        if self._is_closed:
            return
        self._is_closed = True
        self.device.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<xenstore Client on {self.device.path}>"
