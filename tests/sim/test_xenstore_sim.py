"""xenstore end to end on the simulator: Client/AsyncClient <-> socketpair <-> SimXenstored's server core."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from xenpure import errors as E
from xenpure.testing import SimKernel, SimXen
from xenpure.testing._xenstored import SimXenstored
from xenpure.xenstore import AsyncClient, Client, Perm, PermAccess, WatchEvent, XsType
from xenpure.xenstore import _wire as W

R = PermAccess.READ
N = PermAccess.NONE
B = PermAccess.BOTH


@pytest.fixture
def xen() -> SimXen:
    return SimXen()


@pytest.fixture
def kernel(xen: SimXen) -> SimKernel:
    return SimKernel(xen)


@pytest.fixture
def xenstored(kernel: SimKernel) -> SimXenstored:
    store: SimXenstored = kernel._xenstored()
    return store


@pytest.fixture
def xs(kernel: SimKernel, xenstored: SimXenstored) -> Iterator[Client]:
    with Client.open(kernel, timeout=5) as c:
        yield c


def drain(c: Client) -> list[WatchEvent]:
    out = []
    while True:
        try:
            out.append(c.next_watch_event(timeout=0.05))
        except E.Timeout:
            return out


# -- every operation -------------------------------------------------------------------------------------


def test_open_uses_the_socket_and_sees_the_seeded_tree(xs: Client) -> None:
    assert xs.device.path == "/run/xenstored/socket"
    assert xs.read("/local/domain/0/name") == b"Domain-0"
    assert xs.read("/local/domain/0/domid") == b"0"
    assert "0" in xs.directory("/local/domain")


def test_node_operations_round_trip(xs: Client, xenstored: SimXenstored) -> None:
    xs.write("/tool/a/b", "text")
    xs.write("/tool/a/bin", b"\x00\xff\x00")
    assert xs.read("/tool/a/b") == b"text" and xs.read("/tool/a/bin") == b"\x00\xff\x00"
    assert xs.read("/tool/a") == b""  # implicit parent, empty
    assert xs.directory("/tool/a") == ("b", "bin")
    xs.mkdir("/tool/dir")
    xs.mkdir("/tool/a")  # exists: value kept
    assert xs.read("/tool/dir") == b"" and xs.directory("/tool") == ("a", "dir")
    xs.set_perms("/tool/a", [Perm(0, N), Perm(3, R)])
    assert xs.get_perms("/tool/a") == (Perm(0, N), Perm(3, R))
    assert xs.get_perms("/tool/a/b") == (Perm(0, N),)  # created before the change
    xs.write("/tool/a/new", "")
    assert xs.get_perms("/tool/a/new") == (Perm(0, N), Perm(3, R))  # inherited from the parent
    xs.rm("/tool/a")
    xs.rm("/tool/a")  # already gone: fine
    with pytest.raises(E.NoEntry):
        xs.read("/tool/a/b")
    with pytest.raises(E.NoEntry):
        xs.rm("/no/such/parent")
    assert xenstored.read("/tool/dir") == b""  # the toolstack sees the same tree


def test_errors_are_named_by_errno(xs: Client) -> None:
    with pytest.raises(E.NoEntry) as info:
        xs.read("/nope")
    assert info.value.errno == 2 and info.value.op == "READ" and info.value.path == "/nope"
    with pytest.raises(E.XenstoreInvalid):
        xs.write("/bad//path", "x")
    with pytest.raises(E.XenstoreInvalid):
        xs.write("/bad path", "x")
    with pytest.raises(E.XenstoreInvalid):
        xs.rm("/")


def test_domain_operations(xs: Client, xenstored: SimXenstored) -> None:
    assert xs.get_domain_path(7) == "/local/domain/7"
    assert xs.is_domain_introduced(0) and not xs.is_domain_introduced(7)
    xs.introduce(7, 0xFEFFF, 3)
    xs.introduce(7, 0xFEFFF, 3)  # again, same ring: fine
    with pytest.raises(E.Exists):
        xs.introduce(7, 1, 1)
    assert xs.is_domain_introduced(7) and xenstored.is_introduced(7)
    xs.resume(7)
    xs.introduce(8, 1, 1)
    xs.set_target(8, 7)
    xs.release(7)
    assert not xs.is_domain_introduced(7)
    with pytest.raises(E.XenstoreInvalid):  # what oxenstored 4.17 answers
        xs.release(7)
    with pytest.raises(E.XenstoreInvalid):
        xs.introduce(0, 1, 1)


def test_control_features_and_quotas(xs: Client) -> None:
    assert xs.control("check") == b"OK"
    assert b"check" in xs.control("help")
    with pytest.raises(E.XenstoreInvalid):
        xs.control("frobnicate")
    assert xs.get_feature() == 4
    xs.set_feature(9, 0)
    assert xs.get_feature(9) == 0
    with pytest.raises(E.XenstoreInvalid):
        xs.set_feature(9, 0x100)
    assert "nodes" in xs.quota_names()
    xs.set_quota("nodes", 50)
    assert xs.get_quota("nodes") == 50
    xs.introduce(9, 1, 1)
    with pytest.raises(E.XenstoreBusy):
        xs.set_feature(9, 4)
    xs.set_quota("watches", 3, 9)
    assert xs.get_quota("watches", 9) == 3 and xs.get_quota("watches") != 3


def test_an_older_xenstored_answers_optional_types_with_enosys(xen: SimXen, kernel: SimKernel) -> None:
    xen.xenstored = SimXenstored(  # type: ignore[attr-defined]
        unsupported={XsType.GET_FEATURE, XsType.SET_FEATURE, XsType.GET_QUOTA, XsType.SET_QUOTA,
                     XsType.CONTROL, XsType.DIRECTORY_PART}
    )  # fmt: skip
    xen.xenstored.write("/local/domain/0/name", "Domain-0")  # type: ignore[attr-defined]
    with Client.open(kernel, timeout=5) as xs:
        for call in (
            xs.get_feature,
            lambda: xs.set_feature(1, 0),
            lambda: xs.get_quota("nodes"),
            xs.quota_names,
            lambda: xs.set_quota("nodes", 1),
            lambda: xs.control("check"),
        ):
            with pytest.raises(E.XenstoreNotSupported, match="does not implement the optional"):
                call()
        for i in range(400):
            xen.xenstored.write(f"/big/a-fairly-long-child-name-{i:04d}", "")  # type: ignore[attr-defined]
        with pytest.raises(E.TooBig, match="does not implement DIRECTORY_PART"):
            xs.directory("/big")
        assert xs.read("/local/domain/0/name") == b"Domain-0"  # and the connection is fine


def test_big_directories_are_listed_with_directory_part(xs: Client, xenstored: SimXenstored) -> None:
    names = [f"a-fairly-long-child-name-{i:04d}" for i in range(700)]  # ~21 KiB of names
    with xs.transaction() as tx:
        for n in names:
            tx.write(f"/big/{n}", "")
    assert xs.directory("/big") == tuple(names)


# -- watches ---------------------------------------------------------------------------------------------


def test_watches_fire_with_the_right_paths(xs: Client, xenstored: SimXenstored) -> None:
    xs.watch("/vm", "tok")
    assert xs.next_watch_event() == WatchEvent("/vm", "tok")  # fired once when set
    xs.write("/vm/a/b", "1")
    xenstored.write("/vm/c", "2")  # the toolstack's writes fire watches too
    xs.write("/elsewhere", "3")
    assert drain(xs) == [WatchEvent("/vm/a/b", "tok"), WatchEvent("/vm/c", "tok")]
    xs.watch("/vm/a/b/deep", "deep")
    assert drain(xs) == [WatchEvent("/vm/a/b/deep", "deep")]
    xs.rm("/vm/a")  # removal of a parent fires the watched path itself
    assert sorted(drain(xs), key=lambda e: e.token) == [
        WatchEvent("/vm/a/b/deep", "deep"),
        WatchEvent("/vm/a", "tok"),
    ]
    xs.unwatch("/vm", "tok")
    with pytest.raises(E.NoEntry):
        xs.unwatch("/vm", "tok")
    xs.write("/vm/x", "")
    assert drain(xs) == []
    with pytest.raises(E.Timeout, match="watch event"):
        xs.next_watch_event(timeout=0.05)


def test_watch_depth(xs: Client) -> None:
    xs.watch("/d", "one", depth=1)
    xs.write("/d/a", "")
    xs.write("/d/a/b", "")
    assert drain(xs) == [WatchEvent("/d", "one"), WatchEvent("/d/a", "one")]


def test_watch_events_wait_while_replies_come(xs: Client, xenstored: SimXenstored) -> None:
    xs.watch("/w", "t")
    xs.write("/w/1", "")
    assert xs.read("/w/1") == b""  # the events arrived before this reply: queued, not lost
    got = []
    with pytest.raises(E.Timeout):
        for ev in xs.watch_events(timeout=0.05):
            got.append(ev)
    assert got == [WatchEvent("/w", "t"), WatchEvent("/w/1", "t")]


def test_introduce_and_release_domain_watches(xs: Client, xenstored: SimXenstored) -> None:
    xs.watch("@introduceDomain", "in")
    xs.watch("@releaseDomain", "out")
    xs.watch("@releaseDomain", "out-id", depth=1)
    assert len(drain(xs)) == 3
    xenstored.introduce(5)
    assert drain(xs) == [WatchEvent("@introduceDomain", "in")]
    xenstored.domain_changed(5)
    xenstored.release(5)
    got = drain(xs)
    assert got.count(WatchEvent("@releaseDomain", "out")) == 2
    assert got.count(WatchEvent("@releaseDomain/5", "out-id")) == 2
    xenstored.release(9)  # never introduced: the watch still fires, nothing raises
    assert drain(xs) == [WatchEvent("@releaseDomain", "out"), WatchEvent("@releaseDomain/9", "out-id")]


def test_reset_watches(xs: Client) -> None:
    xs.watch("/r", "t")
    xs.reset_watches()
    xs.write("/r/x", "")
    assert drain(xs) == []


# -- transactions ----------------------------------------------------------------------------------------


def test_transaction_commit_and_abort(xs: Client, xenstored: SimXenstored) -> None:
    with xs.transaction() as tx:
        tx.write("/t/a", "1")
        assert tx.read("/t/a") == b"1"
        assert not xenstored.exists("/t/a")  # invisible until committed
        assert tx.tx_id > 0
    assert xs.read("/t/a") == b"1"
    with pytest.raises(RuntimeError, match="boom"), xs.transaction() as tx:
        tx.write("/t/b", "2")
        raise RuntimeError("boom")
    assert not xenstored.exists("/t/b")


def test_transaction_conflict_between_two_connections(kernel: SimKernel, xs: Client) -> None:
    xs.write("/counter", "0")
    with Client.open(kernel, timeout=5) as other:
        with pytest.raises(E.TransactionConflict) as info, xs.transaction() as tx:
            value = int(tx.read("/counter"))
            other.write("/counter", "100")  # another writer gets in
            tx.write("/counter", str(value + 1))
        assert info.value.errno == 11
        assert xs.read("/counter") == b"100"

        calls = 0

        def bump(tx: Any) -> int:
            nonlocal calls
            calls += 1
            n = int(tx.read("/counter")) + 1
            if calls == 1:
                other.write("/counter", "200")  # conflict on the first attempt only
            tx.write("/counter", str(n))
            return n

        assert xs.retry(bump) == 201
        assert calls == 2 and xs.read("/counter") == b"201"


def test_transactions_on_unrelated_nodes_do_not_conflict(kernel: SimKernel, xs: Client) -> None:
    with Client.open(kernel, timeout=5) as other, xs.transaction() as tx:
        tx.write("/mine/x", "1")
        other.write("/theirs/y", "2")
    assert xs.read("/mine/x") == b"1"


def test_retry_gives_up_after_attempts(kernel: SimKernel, xs: Client) -> None:
    with Client.open(kernel, timeout=5) as other:

        def always(tx: Any) -> None:
            tx.write("/x", "a")
            other.write("/x", "b")

        with pytest.raises(E.TransactionConflict):
            xs.retry(always, attempts=3)


# -- domains' own connections ----------------------------------------------------------------------------


def test_unprivileged_domain_connection(xs: Client, xenstored: SimXenstored) -> None:
    xenstored.introduce(5)
    xenstored.write("/local/domain/5/data", "")
    xenstored.set_perms("/local/domain/5", [Perm(5, N)])
    xenstored.set_perms("/local/domain/5/data", [Perm(5, N)])
    xenstored.write("/secret", "s")
    with Client(xenstored.connect(5), timeout=5) as dom5:
        dom5.write("data/x", "rel")  # relative to /local/domain/5
        assert xs.read("/local/domain/5/data/x") == b"rel"
        assert dom5.read("/local/domain/5/data/x") == b"rel"
        assert xs.get_perms("/local/domain/5/data/x")[0].domid == 5
        with pytest.raises(E.PermissionDenied):
            dom5.read("/secret")
        with pytest.raises(E.PermissionDenied):
            dom5.write("/secret", "mine")
        with pytest.raises(E.PermissionDenied):
            dom5.introduce(6, 1, 1)
        with pytest.raises(E.XenstorePermission):
            dom5.set_perms("data/x", [Perm(6, N)])  # only dom0 may change the owner
        dom5.watch("data", "rel")
        assert dom5.next_watch_event() == WatchEvent("data", "rel")  # relative in, relative out
        xs.write("/local/domain/5/data/y", "")
        assert dom5.next_watch_event() == WatchEvent("data/y", "rel")
        xenstored.set_perms("/secret", [Perm(0, N), Perm(5, R)])
        assert dom5.read("/secret") == b"s"


# -- limits, timeouts, hang-ups --------------------------------------------------------------------------


def test_requests_over_limits_are_refused_locally(xs: Client) -> None:
    with pytest.raises(E.TooBig, match="not sent"):
        xs.write("/big", b"x" * 5000)
    with pytest.raises(E.XenstoreInvalid, match="XENSTORE_ABS_PATH_MAX"):
        xs.read("/" + "a" * 3100)
    assert xs.read("/local/domain/0/name") == b"Domain-0"  # nothing went out; the connection is fine


def test_a_client_that_breaks_the_payload_limit_is_dropped(xenstored: SimXenstored) -> None:
    conn = xenstored.connect(0)
    with Client(conn, timeout=5) as xs:
        conn.write(W.Message(XsType.READ, 99, 0, b"x").encode()[:12] + (5000).to_bytes(4, "little"))
        with pytest.raises(E.ConnectionClosed):
            xs.read("/local/domain/0/name")


class SilentDevice:
    """A xenstored that never answers (until the test says so): one end of a socketpair."""

    path = "silent"

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.sent = b""

    def fileno(self) -> int:
        return self.ours.fileno()

    def read(self, n: int) -> bytes:
        return self.ours.recv(n)

    def write(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


def test_timeouts_and_late_replies() -> None:
    dev = SilentDevice()
    with Client(dev, timeout=0.05) as xs:  # type: ignore[arg-type]
        with pytest.raises(E.Timeout, match="reply to READ"):
            xs.read("/a")
        (late,) = W.iter_messages(dev.sent)
        dev.sent = b""
        dev.theirs.sendall(W.Message(XsType.READ, late.req_id, 0, b"late").encode())
        # The next call's reply comes after the late one, which must be dropped, not taken for it.
        dev.theirs.sendall(W.Message(XsType.READ, late.req_id + 1, 0, b"fresh").encode())
        assert xs.read("/b", timeout=1) == b"fresh"
        dev.theirs.close()
        with pytest.raises(E.ConnectionClosed):
            xs.read("/c", timeout=1)


def test_messages_are_logged_decoded(xs: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="xenpure.xenstore"):
        xs.read("/local/domain/0/name")
    text = caplog.text
    assert "-> READ" in text and "/local/domain/0/name" in text and "<- READ" in text and "Domain-0" in text


def test_open_falls_back_to_xenbus_and_honours_xenstored_path(
    kernel: SimKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[str] = []

    class NoSocket:
        def connect_socket(self, path: str) -> Any:
            tried.append(path)
            raise E.DeviceUnavailable("xenstored socket", [path])

        def __getattr__(self, name: str) -> Any:
            return getattr(kernel, name)

    monkeypatch.setenv("XENSTORED_PATH", "/custom/socket")
    with Client.open(NoSocket(), timeout=5) as xs:  # type: ignore[arg-type]
        assert xs.device.path == "/dev/xen/xenbus" and not xs._core.pipeline
        assert xs.read("/local/domain/0/name") == b"Domain-0"
    assert tried == ["/custom/socket", "/run/xenstored/socket"]
    with pytest.raises(E.DeviceUnavailable) as info:
        Client.open(NoSocket(), path="/only/this")  # type: ignore[arg-type]
    assert info.value.tried == ("/only/this",)


def test_closing_the_server_side_is_seen_as_connection_closed(xs: Client, xenstored: SimXenstored) -> None:
    xenstored.close()
    with pytest.raises(E.ConnectionClosed):
        xs.read("/local/domain/0/name")


def test_many_watch_events_do_not_block_the_simulator(xs: Client, xenstored: SimXenstored) -> None:
    xs.watch("/storm", "s")
    conn = xenstored._conns[max(xenstored._conns)]
    peak = 0
    for i in range(6000):  # ~400 KiB of events queued before the client reads any: over the socket buffer
        xenstored.write(f"/storm/node-with-a-longish-name-{i}", "")
        peak = max(peak, len(conn._backlog))
    assert peak > 0
    assert len(drain(xs)) == 6001


# -- asyncio ---------------------------------------------------------------------------------------------


def test_asyncio_client(kernel: SimKernel, xenstored: SimXenstored) -> None:
    async def main() -> None:
        async with await AsyncClient.open(kernel, timeout=5) as xs:
            assert await xs.read("/local/domain/0/name") == b"Domain-0"
            # Pipelined: many calls in flight on one connection, each gets its own reply.
            await asyncio.gather(*(xs.write(f"/a/{i}", str(i)) for i in range(50)))
            values = await asyncio.gather(*(xs.read(f"/a/{i}") for i in range(50)))
            assert values == [str(i).encode() for i in range(50)]
            assert len(await xs.directory("/a")) == 50
            with pytest.raises(E.NoEntry):
                await xs.read("/nope")
            await xs.set_perms("/a", [Perm(0, N), Perm(2, B)])
            assert await xs.get_perms("/a") == (Perm(0, N), Perm(2, B))
            assert await xs.get_domain_path(3) == "/local/domain/3"

            await xs.watch("/a", "t")
            await xs.write("/a/new", "")
            got = []
            with pytest.raises(E.Timeout):
                async for ev in xs.watch_events(timeout=0.1):
                    got.append(ev)
            assert got == [WatchEvent("/a", "t"), WatchEvent("/a/new", "t")]

            async with xs.transaction() as tx:
                await tx.write("/a/tx", "1")
            assert await xs.read("/a/tx") == b"1"

            other = Client.open(kernel, timeout=5)
            attempts = 0

            async def bump(tx: Any) -> int:
                nonlocal attempts
                attempts += 1
                n = int(await tx.read("/a/tx")) + 1
                if attempts == 1:
                    other.write("/a/tx", "10")
                await tx.write("/a/tx", str(n))
                return n

            assert await xs.retry(bump) == 11 and attempts == 2
            other.close()
            with pytest.raises(E.TooBig):
                await xs.write("/x", b"x" * 5000)
            assert await xs.control("check") == b"OK"

    asyncio.run(main())


def test_asyncio_client_on_the_xenbus_device_does_not_pipeline(kernel: SimKernel) -> None:
    async def main() -> None:
        async with AsyncClient(kernel.open("xenbus"), timeout=5) as xs:
            assert xs.device.path == "/dev/xen/xenbus" and not xs._core.pipeline
            await asyncio.gather(*(xs.write(f"/x/{i}", str(i)) for i in range(30)))
            values = await asyncio.gather(*(xs.read(f"/x/{i}") for i in range(30)))
            assert values == [str(i).encode() for i in range(30)]

    asyncio.run(main())


def test_a_watch_depth_and_reset_watches_are_refused_on_the_xenbus_device(kernel: SimKernel) -> None:
    """The kernel's xenbus device keeps watches itself and drops a depth, and a RESET_WATCHES there resets the
    kernel's own connection (both seen in the lab): refused locally, nothing sent."""
    with Client(kernel.open("xenbus"), timeout=5) as xs:
        with pytest.raises(E.XenstoreNotSupported, match=r"drops a watch's depth.*not sent"):
            xs.watch("/d", "t", depth=1)
        assert xs._core.outstanding == 0
        xs.watch("/d", "t")  # without a depth: fine
        assert xs.next_watch_event() == WatchEvent("/d", "t")
        with pytest.raises(E.XenstoreNotSupported, match=r"kernel's own connection.*not sent"):
            xs.reset_watches()  # it would reset the kernel's connection, not ours
        assert xs._core.outstanding == 0

    async def main() -> None:
        async with AsyncClient(kernel.open("xenbus"), timeout=5) as axs:
            with pytest.raises(E.XenstoreNotSupported, match="drops a watch's depth"):
                await axs.watch("/d", "t", depth=0)
            with pytest.raises(E.XenstoreNotSupported, match="RESET_WATCHES"):
                await axs.reset_watches()
            assert axs._core.outstanding == 0

    asyncio.run(main())


def test_asyncio_timeout_and_hang_up() -> None:
    async def main() -> None:
        dev = SilentDevice()
        xs = AsyncClient(dev, timeout=0.05)  # type: ignore[arg-type]
        with pytest.raises(E.Timeout):
            await xs.read("/a")
        waiter = asyncio.ensure_future(xs.read("/b", timeout=5))
        watcher = asyncio.ensure_future(xs.next_watch_event(timeout=5))
        await asyncio.sleep(0.01)
        dev.theirs.close()
        with pytest.raises(E.ConnectionClosed):
            await waiter
        with pytest.raises(E.ConnectionClosed):
            await watcher
        xs.close()

    asyncio.run(main())
