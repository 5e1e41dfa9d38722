"""Pipelined batches (``Client.gather``, ``AsyncClient.gather``) against the simulated xenstored.

A batch must give each request the result its own method would, in order; keep at most ``window`` requests
unanswered; take every reply before it returns or raises (so the connection stays usable); and fail one
request without failing the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from test_xenstore_sim import SilentDevice

from xenpure import errors as E
from xenpure.testing import SimKernel
from xenpure.xenstore import (
    AsyncClient,
    Client,
    Directory,
    Framer,
    GetPerms,
    Mkdir,
    Perm,
    PermAccess,
    Read,
    ResetWatches,
    Rm,
    TransactionStart,
    Watch,
    WatchEvent,
    Write,
)
from xenpure.xenstore import _wire as W


class CountingDevice:
    """Passes everything to a real (simulated) connection and counts requests in flight on the wire."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.path = inner.path
        self.requests = 0
        self.replies = Framer()
        self.answered = 0
        self.max_in_flight = 0
        self.writes = 0

    def fileno(self) -> int:
        return int(self.inner.fileno())

    def write(self, data: bytes) -> int:
        self.writes += 1
        self.requests += len(list(W.iter_messages(data)))
        self.max_in_flight = max(self.max_in_flight, self.requests - self.answered)
        return int(self.inner.write(data))

    def read(self, n: int) -> bytes:
        data: bytes = self.inner.read(n)
        self.replies.receive_data(data)
        while (m := self.replies.next_message()) is not None:
            if m.type is not W.XsType.WATCH_EVENT:
                self.answered += 1
        return data

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def kernel() -> SimKernel:
    k = SimKernel()
    k._xenstored()
    return k


@pytest.fixture
def xs(kernel: SimKernel) -> Iterator[Client]:
    with Client.open(kernel, timeout=5) as c:
        yield c


def test_results_come_back_in_order_as_each_method_would_give_them(xs: Client) -> None:
    xs.mkdir("/g")
    out = xs.gather(
        [
            Write("/g/a", b"1"),
            Read("/g/a"),  # after the write: requests leave, and are answered, in order
            Mkdir("/g/b"),
            Directory("/g"),
            GetPerms("/g/a"),
            Rm("/g/b"),
            Directory("/g"),
        ]
    )
    assert out == [None, b"1", None, ("a", "b"), (Perm(0, PermAccess.NONE),), None, ("a",)]
    assert out[4] == xs.get_perms("/g/a")
    assert xs._core.outstanding == 0


def test_one_failure_does_not_fail_the_others(xs: Client) -> None:
    xs.write("/g/a", "1")
    out = xs.gather([Read("/g/nope"), Read("/g/a"), Read("/" + "x" * 3100)], return_exceptions=True)
    assert isinstance(out[0], E.NoEntry) and out[1] == b"1"
    assert isinstance(out[2], E.XenstoreInvalid) and "not sent" in str(out[2])  # refused locally
    with pytest.raises(E.NoEntry) as info:
        xs.gather([Read("/g/a"), Read("/g/nope"), Read("/g/nope2")])
    assert "2 of the 3 gathered requests failed; this is #1" in info.value.__notes__
    assert xs._core.outstanding == 0  # every reply was taken: the next call gets its own
    assert xs.read("/g/a") == b"1"


def test_the_window_bounds_what_is_in_flight(kernel: SimKernel) -> None:
    dev = CountingDevice(kernel.connect_socket("/run/xenstored/socket"))
    with Client(dev, timeout=5) as xs:  # type: ignore[arg-type]
        xs.write("/g/a", "v")
        paths = [Read("/g/a") for _ in range(200)]
        assert xs.gather(paths, window=16) == [b"v"] * 200
        assert dev.max_in_flight == 16
        assert dev.writes < 200 / 2  # batched: many requests per write
        assert xs.gather([Read("/g/a")] * 5, window=1) == [b"v"] * 5  # one object five times: copies
        assert dev.max_in_flight == 16
    with pytest.raises(ValueError, match="window"):
        Client(kernel.connect_socket("/run/xenstored/socket")).gather([], window=0)


def test_a_transaction_gathers_inside_itself(kernel: SimKernel, xs: Client) -> None:
    with xs.transaction() as tx:
        assert tx.gather([Write("/g/t", b"in"), Read("/g/t")]) == [None, b"in"]
        with Client.open(kernel, timeout=5) as other:
            with pytest.raises(E.NoEntry):
                other.read("/g/t")  # not visible outside before the commit
    assert xs.read("/g/t") == b"in"
    with pytest.raises(RuntimeError, match="not active"):
        tx.gather([Read("/g/t")])


def test_state_changing_messages_are_refused(xs: Client) -> None:
    for r in (TransactionStart(), ResetWatches(), W.TransactionEnd(True)):
        with pytest.raises(ValueError, match="cannot be gathered"):
            xs.gather([Read("/g"), r])
    assert xs._core.outstanding == 0


def test_watches_can_be_gathered_and_their_events_are_kept(xs: Client) -> None:
    assert xs.gather([Watch("/g/w", "t1"), Watch("/g/v", "t2"), Write("/g/w", b"x")]) == [None, None, None]
    events = {xs.next_watch_event(timeout=1) for _ in range(3)}
    assert events == {WatchEvent("/g/w", "t1"), WatchEvent("/g/v", "t2")}  # w fired twice: same value


def test_the_xenbus_device_takes_the_batch_one_request_at_a_time(kernel: SimKernel) -> None:
    dev = CountingDevice(kernel.open("xenbus"))
    with Client(dev, timeout=5) as xs:  # type: ignore[arg-type]
        assert xs.gather([Write(f"/g/{i}", str(i).encode()) for i in range(20)]) == [None] * 20
        assert xs.gather([Read(f"/g/{i}") for i in range(20)]) == [str(i).encode() for i in range(20)]
        assert dev.max_in_flight == 1


def test_a_batch_times_out_whole_and_late_replies_are_dropped() -> None:
    dev = SilentDevice()
    with Client(dev, timeout=0.05) as xs:  # type: ignore[arg-type]
        with pytest.raises(E.Timeout, match="reply to READ"):
            xs.gather([Read("/a"), Read("/b")])
        late = list(W.iter_messages(dev.sent))
        assert [m.type for m in late] == [W.XsType.READ] * 2
        dev.sent = b""
        for m in late:
            dev.theirs.sendall(W.Message(W.XsType.READ, m.req_id, 0, b"late").encode())
        dev.theirs.sendall(W.Message(W.XsType.READ, late[-1].req_id + 1, 0, b"fresh").encode())
        assert xs.read("/c", timeout=1) == b"fresh"


def test_asyncio_gather(kernel: SimKernel) -> None:
    async def main() -> None:
        dev = CountingDevice(kernel.connect_socket("/run/xenstored/socket"))
        async with AsyncClient(dev, timeout=5) as xs:  # type: ignore[arg-type]
            assert await xs.gather([Write("/g/a", b"1"), Read("/g/a"), Directory("/g")]) == [None, b"1", ("a",)]
            out = await xs.gather([Read("/g/nope"), Read("/g/a")] * 50, return_exceptions=True, window=8)
            assert [type(o) for o in out[:2]] == [E.NoEntry, bytes] and out[1::2] == [b"1"] * 50
            assert dev.max_in_flight == 8
            with pytest.raises(E.NoEntry):
                await xs.gather([Read("/g/a"), Read("/g/nope")])
            async with xs.transaction() as tx:
                assert await tx.gather([Write("/g/t", b"2"), Read("/g/t")]) == [None, b"2"]
            assert await xs.read("/g/t") == b"2"
            # a plain call and a batch in flight together each get their own replies
            one, many = await asyncio.gather(xs.read("/g/a"), xs.gather([Read("/g/t")] * 10))
            assert one == b"1" and many == [b"2"] * 10
            assert xs._core.outstanding == 0 and not xs._waiters and not xs._runs  # batches live in _runs

        silent = SilentDevice()
        async with AsyncClient(silent, timeout=0.05) as sxs:  # type: ignore[arg-type]
            with pytest.raises(E.Timeout, match="no reply to 3 of 3 gathered requests"):
                await sxs.gather([Read("/a"), Read("/b"), Read("/c")])
            # abandoned: their replies will be dropped
            assert not sxs._waiters and not sxs._runs and sxs._core.outstanding == 3

    asyncio.run(main())
