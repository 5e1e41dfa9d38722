"""The asyncio xenstore client: the same ``ClientCore`` and ``_ops`` procedures as ``Client``, on an event loop.

Rule 1: this module only moves bytes. The loop tells us when the descriptor is readable; we read, feed the
core, and hand each reply to the future of the call that sent its request and each watch event to a queue.
Many calls may be in flight at once (pipelined on the one connection); each waits only for its own reply.

Writes are short (a message is at most 4112 bytes) and go straight to the device. On the xenbus device,
which cannot take a request while another is unanswered, the core queues requests and the reader writes
each one as the reply before it arrives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from ..errors import ConnectionClosed, ProtocolError, Timeout, TransactionConflict, XenstoreError
from ..kernel import Device, Kernel
from . import _ops
from ._client import (
    DEFAULT_ATTEMPTS,
    DEFAULT_TIMEOUT,
    can_pipeline,
    check_reset_watches,
    check_watch_depth,
    open_device,
    send_gathered,
)
from ._client_core import ClientCore, ErrorReply, Reply, WatchEvent
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
    Write,
)

__all__ = ["AsyncClient", "AsyncTransaction"]

log = logging.getLogger("xenpure.xenstore")

T = TypeVar("T")

_READ_SIZE = 65536


class _AsyncNodeOps:
    """The calls that work both on a connection and inside a transaction (see ``Client`` for each)."""

    _tx_id: int = 0

    async def _run(self, proc: _ops.Proc[T], timeout: float | None) -> T:
        raise NotImplementedError

    async def _gather(
        self, requests: list[Request[Any]], return_exceptions: bool, timeout: float | None, window: int
    ) -> list[Any]:
        raise NotImplementedError

    async def gather(
        self,
        requests: Iterable[Request[Any]],
        *,
        return_exceptions: bool = False,
        timeout: float | None = None,
        window: int = _ops.DEFAULT_WINDOW,
    ) -> list[Any]:
        """Many requests pipelined, their results in order (see ``Client.gather``). One future waits for
        the whole batch, where ``asyncio.gather`` of single calls would make a future and a task per request."""
        return await self._gather(_ops.gatherable(requests), return_exceptions, timeout, window)

    async def read(self, path: str, *, timeout: float | None = None) -> bytes:
        """XS_READ (see ``Client.read``)."""
        return await self._run(_ops.call(Read(path), self._tx_id), timeout)

    async def write(self, path: str, value: bytes | str, *, timeout: float | None = None) -> None:
        """XS_WRITE (see ``Client.write``)."""
        data = value.encode() if isinstance(value, str) else bytes(value)
        await self._run(_ops.call(Write(path, data), self._tx_id), timeout)

    async def mkdir(self, path: str, *, timeout: float | None = None) -> None:
        """XS_MKDIR (see ``Client.mkdir``)."""
        await self._run(_ops.call(Mkdir(path), self._tx_id), timeout)

    async def rm(self, path: str, *, timeout: float | None = None) -> None:
        """XS_RM (see ``Client.rm``)."""
        await self._run(_ops.call(Rm(path), self._tx_id), timeout)

    async def directory(self, path: str, *, timeout: float | None = None) -> tuple[str, ...]:
        """XS_DIRECTORY, falling back to XS_DIRECTORY_PART (see ``Client.directory``)."""
        return await self._run(_ops.directory(path, self._tx_id), timeout)

    async def get_perms(self, path: str, *, timeout: float | None = None) -> tuple[Perm, ...]:
        """XS_GET_PERMS (see ``Client.get_perms``)."""
        return await self._run(_ops.call(GetPerms(path), self._tx_id), timeout)

    async def set_perms(self, path: str, perms: tuple[Perm, ...] | list[Perm], *, timeout: float | None = None) -> None:
        """XS_SET_PERMS (see ``Client.set_perms``)."""
        await self._run(_ops.call(SetPerms(path, tuple(perms)), self._tx_id), timeout)


class AsyncTransaction(_AsyncNodeOps):
    """A transaction on an ``AsyncClient``: ``async with client.transaction() as tx:`` commits at the end of
    the block (``TransactionConflict`` if another writer got in first) and aborts if the block raises."""

    def __init__(self, client: AsyncClient, timeout: float | None = None) -> None:
        self._client = client
        self._timeout = timeout
        self._tx_id = 0
        self._done = False

    @property
    def tx_id(self) -> int:
        return self._tx_id

    async def _run(self, proc: _ops.Proc[T], timeout: float | None) -> T:
        if self._tx_id == 0 or self._done:
            raise RuntimeError("the transaction is not active (use it inside `async with client.transaction()`)")
        return await self._client._run(proc, self._timeout if timeout is None else timeout)

    async def _gather(
        self, requests: list[Request[Any]], return_exceptions: bool, timeout: float | None, window: int
    ) -> list[Any]:
        if self._tx_id == 0 or self._done:
            raise RuntimeError("the transaction is not active (use it inside `async with client.transaction()`)")
        t = self._timeout if timeout is None else timeout
        return await self._client._gather_in(requests, self._tx_id, return_exceptions, t, window)

    async def start(self) -> AsyncTransaction:
        if self._tx_id != 0:
            raise RuntimeError("the transaction has already started")
        self._tx_id = await self._client._run(_ops.call(TransactionStart()), self._timeout)
        return self

    async def commit(self, *, timeout: float | None = None) -> None:
        """XS_TRANSACTION_END T; ``TransactionConflict`` (EAGAIN) if another writer got in first."""
        await self._run(_ops.call(TransactionEnd(True), self._tx_id), timeout)
        self._done = True

    async def abort(self, *, timeout: float | None = None) -> None:
        """XS_TRANSACTION_END F."""
        await self._run(_ops.call(TransactionEnd(False), self._tx_id), timeout)
        self._done = True

    async def __aenter__(self) -> AsyncTransaction:
        return await self.start()

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._done:
            return
        if t is None:
            await self.commit()
            return
        try:
            await self.abort()
        except (XenstoreError, Timeout) as err:
            log.debug("abort of transaction %d failed: %s", self._tx_id, err)
        finally:
            self._done = True


class _GatherRun:
    """One ``gather`` on an ``AsyncClient``: the ``_ops.Gather`` driver, and one future for the whole batch.

    The client's table of batches maps each of its outstanding requests to it, so the reader hands it each
    reply (``take`` a READ value, ``set_result`` any other reply, ``set_exception`` a broken connection).
    Once the reader has handed out everything one read brought, it calls ``flush``: the batch then sends
    what it asks next, in one write, and resolves its future when the last reply is in.
    """

    def __init__(self, client: AsyncClient, requests: list[Request[Any]], tx_id: int, window: int) -> None:
        self._client = client
        self._out: list[bytes] = []
        self._dirty = False  # replies came since the last flush
        self._values: dict[int, bytes] = {}  # READ values taken since the last flush
        self.future: asyncio.Future[None] = client._loop.create_future()
        self.gather = _ops.Gather(requests, self._send, tx_id=tx_id, window=window)

    def _send(self, request: Request[Any], tx_id: int) -> int:
        client = self._client
        req_id, data = send_gathered(client.device, client._core, request, tx_id)
        if data:
            self._out.append(data)
        client._runs[req_id] = self
        return req_id

    def start(self) -> None:
        self.gather.fill()
        self._flush()

    def flush(self) -> None:
        """After a read's replies are in: start what the window has room for, and write it in one go."""
        self._dirty = False
        if self._values:
            values, self._values = self._values, {}
            self.gather.replies(values)
        if not self.future.done():
            self.gather.fill()
            self._flush()

    def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._client._write(data)
        if self.gather.done and not self.future.done():
            self.future.set_result(None)

    # -- what the reader calls --

    def done(self) -> bool:
        return self.future.done()

    def take(self, req_id: int, value: bytes) -> None:
        """The value of a READ of the batch (``ClientCore.receive``'s ``values``)."""
        self._values[req_id] = value
        if not self._dirty:
            self._dirty = True
            self._client._to_flush.append(self)

    def set_result(self, event: Reply[Any] | ErrorReply) -> None:
        self.gather.reply(event.req_id, event)
        if not self._dirty:
            self._dirty = True
            self._client._to_flush.append(self)

    def set_exception(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class AsyncClient(_AsyncNodeOps):
    """A connection to xenstored for asyncio code. Create it inside a running loop (``await
    AsyncClient.open(kernel)`` or ``AsyncClient(device)``); close it with ``close()`` or ``async with``."""

    def __init__(
        self, device: Device, *, timeout: float | None = DEFAULT_TIMEOUT, pipeline: bool | None = None
    ) -> None:
        self.device = device
        self.timeout = timeout
        self._core = ClientCore(pipeline=can_pipeline(device) if pipeline is None else pipeline)
        self._loop = asyncio.get_running_loop()
        # req_id -> what waits for its reply: a call's future, or the _GatherRun of a gather
        self._waiters: dict[int, asyncio.Future[Reply[Any] | ErrorReply]] = {}
        self._runs: dict[int, _GatherRun] = {}
        self._to_flush: list[_GatherRun] = []  # gathers that took replies in this read
        self._closers: set[asyncio.Future[Any]] = set()  # failed with the connection (watch event waits)
        self._watch_queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        self._failure: BaseException | None = None
        self._is_closed = False
        self._loop.add_reader(device.fileno(), self._on_readable)

    @classmethod
    async def open(
        cls, kernel: Kernel, *, path: str | None = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> AsyncClient:
        """Connect like ``Client.open`` (socket, then xenbus device)."""
        return cls(open_device(kernel, path), timeout=timeout)

    # -- the byte pump ----------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            try:
                data = self.device.read(_READ_SIZE)
            except BlockingIOError:
                return  # woken for nothing: the loop calls us again when there is more
            waiters, runs = self._waiters, self._runs
            if runs:
                values: dict[int, bytes] = {}
                events = self._core.receive(data, values, runs)  # the batches' READ values, and events
                for req_id, value in values.items():
                    runs.pop(req_id).take(req_id, value)
            else:
                events = self._core.receive(data)
            for ev in events:
                if isinstance(ev, (Reply, ErrorReply)):
                    fut = waiters.pop(ev.req_id, None)
                    if fut is not None:
                        if not fut.done():
                            fut.set_result(ev)
                    elif (run := runs.pop(ev.req_id, None)) is not None and not run.done():
                        run.set_result(ev)
                elif isinstance(ev, WatchEvent):
                    self._watch_queue.put_nowait(ev)
                else:
                    self._fail(ConnectionClosed("xenstored closed the connection"))
            if self._to_flush:
                touched, self._to_flush = self._to_flush, []
                for each in touched:
                    each.flush()
            if not self._core.pipeline:
                self._write(self._core.data_to_send())
        except (ProtocolError, OSError) as e:
            self._fail(e)

    def _fail(self, exc: BaseException) -> None:
        """The connection is unusable: every waiter, now and later, gets ``exc``."""
        if self._failure is None:
            self._failure = exc
        self._loop.remove_reader(self.device.fileno())
        waiting: list[asyncio.Future[Any] | _GatherRun] = [*self._waiters.values(), *self._runs.values()]
        for fut in [*waiting, *self._closers]:
            if not fut.done():
                fut.set_exception(exc)
        self._waiters.clear()
        self._runs.clear()
        self._closers.clear()

    async def _roundtrip(self, request: Request[Any], tx_id: int, deadline: float | None) -> Reply[Any] | ErrorReply:
        if self._is_closed:
            raise ConnectionClosed("the client is closed")
        if self._failure is not None:
            raise self._failure
        req_id, data = self._core.send_request(request, tx_id)
        fut: asyncio.Future[Reply[Any] | ErrorReply] = self._loop.create_future()
        self._waiters[req_id] = fut
        try:
            self._write(data)
        except ConnectionClosed:
            self._waiters.pop(req_id, None)
            raise
        remaining = None if deadline is None else max(0.0, deadline - self._loop.time())
        try:
            return await asyncio.wait_for(fut, remaining)
        except TimeoutError:
            self._waiters.pop(req_id, None)
            self._core.abandon_id(req_id)
            raise Timeout(
                f"no reply to {request.TYPE.name} from xenstored on {self.device.path} within the timeout"
            ) from None
        except asyncio.CancelledError:
            self._waiters.pop(req_id, None)
            self._core.abandon_id(req_id)
            raise

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = self.device.write(bytes(view))
                view = view[n:]
        except ConnectionClosed:
            raise  # the device said why (a ring's error indicator)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ConnectionClosed(f"xenstored closed the connection on {self.device.path}") from e

    async def _run(self, proc: _ops.Proc[T], timeout: float | None) -> T:
        t = self.timeout if timeout is None else timeout
        deadline = None if t is None else self._loop.time() + t
        return await _ops.run_async(proc, lambda req, tx: self._roundtrip(req, tx, deadline))

    async def _gather(
        self, requests: list[Request[Any]], return_exceptions: bool, timeout: float | None, window: int
    ) -> list[Any]:
        return await self._gather_in(requests, 0, return_exceptions, timeout, window)

    async def _gather_in(
        self, requests: list[Request[Any]], tx_id: int, return_exceptions: bool, timeout: float | None, window: int
    ) -> list[Any]:
        if self._is_closed:
            raise ConnectionClosed("the client is closed")
        if self._failure is not None:
            raise self._failure
        run = _GatherRun(self, requests, tx_id, window)
        run.start()
        t = self.timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(run.future, t)
        except (TimeoutError, asyncio.CancelledError) as e:
            unanswered = run.gather.outstanding_keys
            for k in unanswered:
                self._runs.pop(k, None)
                self._core.abandon_id(k)
            run.gather.close()
            if isinstance(e, TimeoutError):
                raise Timeout(
                    f"no reply to {len(unanswered)} of {len(requests)} gathered requests from xenstored on "
                    f"{self.device.path} within the timeout"
                ) from None
            raise
        return run.gather.outcome(return_exceptions)

    # -- watches ----------------------------------------------------------------------------------------

    async def watch(self, path: str, token: str, *, depth: int | None = None, timeout: float | None = None) -> None:
        """XS_WATCH (see ``Client.watch``)."""
        check_watch_depth(self.device, path, depth)
        await self._run(_ops.watch(path, token, depth), timeout)

    async def unwatch(self, path: str, token: str, *, timeout: float | None = None) -> None:
        """XS_UNWATCH."""
        await self._run(_ops.call(Unwatch(path, token)), timeout)

    async def reset_watches(self, *, timeout: float | None = None) -> None:
        """XS_RESET_WATCHES (refused on the xenbus device, see ``Client.reset_watches``)."""
        check_reset_watches(self.device)
        await self._run(_ops.call(ResetWatches()), timeout)

    async def next_watch_event(self, *, timeout: float | None = None) -> WatchEvent:
        """The next watch event; ``Timeout`` if none comes in time, ``ConnectionClosed`` if the connection
        ends first."""
        if not self._watch_queue.empty():
            return self._watch_queue.get_nowait()
        if self._failure is not None:
            raise self._failure
        t = self.timeout if timeout is None else timeout
        getter = asyncio.ensure_future(self._watch_queue.get())
        closed: asyncio.Future[Any] = self._loop.create_future()
        self._closers.add(closed)  # failed with the connection
        try:
            done, _ = await asyncio.wait({getter, closed}, timeout=t, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._closers.discard(closed)
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if closed in done:
            closed.result()  # raises the connection's failure
        raise Timeout(f"no watch event from xenstored on {self.device.path} within the timeout")

    async def watch_events(self, *, timeout: float | None = None) -> AsyncIterator[WatchEvent]:
        """Watch events as they come (``async for``); ``Timeout`` when none arrives within ``timeout``."""
        while True:
            yield await self.next_watch_event(timeout=timeout)

    # -- transactions -----------------------------------------------------------------------------------

    def transaction(self, *, timeout: float | None = None) -> AsyncTransaction:
        """A transaction, started when its ``async with`` block is entered."""
        return AsyncTransaction(self, timeout)

    async def retry(
        self,
        fn: Callable[[AsyncTransaction], Awaitable[T]],
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        timeout: float | None = None,
    ) -> T:
        """Run ``await fn(tx)`` in a transaction, again while the commit raises ``TransactionConflict``."""
        for attempt in range(1, attempts + 1):
            try:
                async with self.transaction(timeout=timeout) as tx:
                    result = await fn(tx)
                return result
            except TransactionConflict:
                if attempt == attempts:
                    raise
                log.debug("transaction conflict, attempt %d of %d: running it again", attempt, attempts)
        raise AssertionError("unreachable")

    # -- domains and xenstored itself (see ``Client`` for what each does) -------------------------------

    async def introduce(self, domid: int, gfn: int, evtchn: int, *, timeout: float | None = None) -> None:
        """XS_INTRODUCE."""
        await self._run(_ops.call(Introduce(domid, gfn, evtchn)), timeout)

    async def release(self, domid: int, *, timeout: float | None = None) -> None:
        """XS_RELEASE."""
        await self._run(_ops.call(Release(domid)), timeout)

    async def resume(self, domid: int, *, timeout: float | None = None) -> None:
        """XS_RESUME."""
        await self._run(_ops.call(Resume(domid)), timeout)

    async def get_domain_path(self, domid: int, *, timeout: float | None = None) -> str:
        """XS_GET_DOMAIN_PATH."""
        return await self._run(_ops.call(GetDomainPath(domid)), timeout)

    async def is_domain_introduced(self, domid: int, *, timeout: float | None = None) -> bool:
        """XS_IS_DOMAIN_INTRODUCED."""
        return await self._run(_ops.call(IsDomainIntroduced(domid)), timeout)

    async def set_target(self, domid: int, target: int, *, timeout: float | None = None) -> None:
        """XS_SET_TARGET."""
        await self._run(_ops.call(SetTarget(domid, target)), timeout)

    async def control(self, command: str, *args: bytes | str, timeout: float | None = None) -> bytes:
        """XS_CONTROL (optional)."""
        a = tuple(x.encode() if isinstance(x, str) else bytes(x) for x in args)
        return await self._run(_ops.optional(Control(command, a)), timeout)

    async def get_feature(self, domid: int | None = None, *, timeout: float | None = None) -> int:
        """XS_GET_FEATURE (Xen >= 4.21)."""
        return await self._run(_ops.optional(GetFeature(domid), since="Xen 4.21"), timeout)

    async def set_feature(self, domid: int, value: int, *, timeout: float | None = None) -> None:
        """XS_SET_FEATURE (Xen >= 4.21)."""
        await self._run(_ops.optional(SetFeature(domid, value), since="Xen 4.21"), timeout)

    async def get_quota(self, quota: str, domid: int | None = None, *, timeout: float | None = None) -> int:
        """XS_GET_QUOTA (Xen >= 4.21)."""
        return await self._run(_ops.optional(GetQuota(quota, domid), since="Xen 4.21"), timeout)

    async def quota_names(self, *, timeout: float | None = None) -> tuple[str, ...]:
        """XS_GET_QUOTA without argument (Xen >= 4.21)."""
        return await self._run(_ops.optional(ListQuotas(), since="Xen 4.21"), timeout)

    async def set_quota(
        self, quota: str, value: int, domid: int | None = None, *, timeout: float | None = None
    ) -> None:
        """XS_SET_QUOTA (Xen >= 4.21)."""
        await self._run(_ops.optional(SetQuota(quota, value, domid), since="Xen 4.21"), timeout)

    # -- lifetime ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; calls still waiting get ``ConnectionClosed``. Idempotent."""
        if self._is_closed:
            return
        self._is_closed = True
        if self._failure is None:
            self._fail(ConnectionClosed("the client was closed"))
        self.device.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<xenstore AsyncClient on {self.device.path}>"
