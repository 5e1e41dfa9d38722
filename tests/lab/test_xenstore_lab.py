"""xenstore against the real thing: Xen 4.17's oxenstored and C xenstored, and xenpure's own xenstored as
dom0's daemon, over the Unix socket and over /dev/xen/xenbus, checked against the C tools (xenstore-read,
-write, -list, -ls, -exists, -chmod).

Rule 1: where the daemons answer differently, the test asserts each one's answer (``DAEMON`` says which one
dom0 runs), never a looser assertion that all would pass; the differences between the two 4.17 daemons are
listed in tests/xenstored_conformance/README.md, with xenpure's choice.

Runs inside the lab's dom0 only (tests/lab/conftest.py skips it elsewhere and provides ``xl``,
``make_guest`` and ``wait``), once per daemon::

    tools/xenlab -- python3 -m pytest -v tests/lab/test_xenstore_lab.py                  # oxenstored
    tools/xenlab --xenstored c -- python3 -m pytest -v tests/lab/test_xenstore_lab.py    # C xenstored
    tools/xenlab --xenstored xenpure -- python3 -m pytest -v tests/lab/test_xenstore_lab.py
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from xenpure import errors as E
from xenpure.kernel import LinuxKernel
from xenpure.xenstore import DEFAULT_SOCKET, AsyncClient, Client, Perm, PermAccess, WatchEvent, _ops
from xenpure.xenstore import _wire as W
from xenpure.xenstore._server_core import DEFAULT_QUOTAS, SUPPORTED_FEATURES

TIMEOUT = 20.0  # TCG is slow
#: dom0's xenstore daemon in this boot: "oxenstored", "c" or "xenpure" (tools/xenlab --xenstored).
DAEMON = os.environ.get("XENPURE_LAB_XENSTORED", "oxenstored")
THIS = "tests/lab/test_xenstore_lab.py"


def recorded_daemon() -> str:
    """dom0's daemon, for a test whose expected answers differ by daemon; an unknown name is an error here,
    not a skip: every daemon the harness can boot has its answers recorded."""
    if DAEMON not in ("oxenstored", "c", "xenpure"):
        raise AssertionError(f"XENPURE_LAB_XENSTORED={DAEMON!r}: this file records oxenstored, c and xenpure")
    return DAEMON


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=60).stdout


def open_device(kernel: LinuxKernel, transport: str) -> Any:
    return kernel.connect_socket(DEFAULT_SOCKET) if transport == "socket" else kernel.open("xenbus")


@pytest.fixture(scope="module")
def kernel() -> Iterator[LinuxKernel]:
    k = LinuxKernel()
    yield k
    k.close()


@pytest.fixture(params=["socket", "xenbus"])
def transport(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def xs(kernel: LinuxKernel, transport: str) -> Iterator[Client]:
    with Client(open_device(kernel, transport), timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
def base(xs: Client, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh subtree for the test, removed afterwards."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)
    path = f"/xenpure-lab/{name}-{os.getpid()}"
    yield path
    sh("xenstore-rm", path, check=False)


def test_open_prefers_the_socket(kernel: LinuxKernel) -> None:
    with Client.open(kernel, timeout=TIMEOUT) as xs:
        assert xs.device.path == DEFAULT_SOCKET
        assert xs.read("/local/domain/0/name") == b"Domain-0"


def test_read_matches_xenstore_read(xs: Client) -> None:
    for path in ("/local/domain/0/name", "/local/domain/0/domid"):
        assert xs.read(path).decode() == sh("xenstore-read", path).rstrip("\n")


def test_write_read_round_trips_with_the_c_tools(xs: Client, base: str) -> None:
    xs.write(f"{base}/ours", "written by xenpure")
    assert sh("xenstore-read", f"{base}/ours") == "written by xenpure\n"
    sh("xenstore-write", f"{base}/theirs", "written by xenstore-write")
    assert xs.read(f"{base}/theirs") == b"written by xenstore-write"
    xs.write(f"{base}/empty", b"")
    assert xs.read(f"{base}/empty") == b""
    xs.write(f"{base}/bin", b"\x00\x01\xffz")
    assert xs.read(f"{base}/bin") == b"\x00\x01\xffz"


def test_directory_matches_xenstore_list(xs: Client, base: str) -> None:
    for leaf in ("c", "a", "b"):
        xs.write(f"{base}/{leaf}", leaf)
    assert list(xs.directory(base)) == sh("xenstore-list", base).split()
    assert list(xs.directory("/local/domain/0")) == sh("xenstore-list", "/local/domain/0").split()
    xs.mkdir(f"{base}/leaf")
    assert xs.directory(f"{base}/leaf") == ()


def _walk(xs: Client, path: str) -> list[str]:
    lines = []
    for leaf in xs.directory(path):
        child = f"{path}/{leaf}"
        lines.append(f'{child} = "{xs.read(child).decode()}"')
        lines.extend(_walk(xs, child))
    return lines


def test_tree_matches_xenstore_ls(xs: Client, base: str) -> None:
    xs.write(f"{base}/vm/name", "guest")
    xs.write(f"{base}/vm/memory/target", "524288")
    xs.write(f"{base}/vm/device/vif/0/mac", "00:16:3e:00:00:01")
    xs.mkdir(f"{base}/vm/empty")
    expect = [line.rstrip() for line in sh("xenstore-ls", "-f", base).splitlines()]
    assert _walk(xs, base) == expect


def test_mkdir_rm_and_xenstore_exists(xs: Client, base: str) -> None:
    xs.mkdir(f"{base}/d/e")
    assert subprocess.run(["xenstore-exists", f"{base}/d/e"]).returncode == 0
    xs.write(f"{base}/d", "kept")
    xs.mkdir(f"{base}/d")
    assert xs.read(f"{base}/d") == b"kept"
    xs.rm(f"{base}/d")
    assert subprocess.run(["xenstore-exists", f"{base}/d/e"]).returncode != 0
    xs.rm(f"{base}/d")  # already gone: fine
    with pytest.raises(E.NoEntry):
        xs.rm(f"{base}/no/such")
    with pytest.raises(E.NoEntry):
        xs.read(f"{base}/d")


def test_perms_match_the_c_tools(xs: Client, base: str) -> None:
    node = f"{base}/p"
    xs.write(node, "x")
    xs.set_perms(node, [Perm(0, PermAccess.NONE), Perm(5, PermAccess.READ), Perm(6, PermAccess.BOTH)])
    assert xs.get_perms(node) == (
        Perm(0, PermAccess.NONE),
        Perm(5, PermAccess.READ),
        Perm(6, PermAccess.BOTH),
    )
    listing = sh("xenstore-ls", "-p", base)
    assert re.search(r"\(n0,r5,b6\)", listing), listing
    sh("xenstore-chmod", node, "b0", "w7")
    assert xs.get_perms(node) == (Perm(0, PermAccess.BOTH), Perm(7, PermAccess.WRITE))


def test_errors_are_named_by_errno(xs: Client, base: str) -> None:
    with pytest.raises(E.NoEntry):
        xs.read(f"{base}/missing")
    with pytest.raises(E.XenstoreInvalid):
        xs.write(f"{base}//bad", "x")
    with pytest.raises(E.TooBig, match="not sent"):
        xs.write(f"{base}/huge", b"x" * 5000)
    assert xs.read("/local/domain/0/name") == b"Domain-0"  # still usable


def test_watch_fires_on_xenstore_write(xs: Client, base: str) -> None:
    xs.write(base, "")
    xs.watch(base, "tok")
    assert xs.next_watch_event() == WatchEvent(base, "tok")
    sh("xenstore-write", f"{base}/changed", "1")
    assert xs.next_watch_event() == WatchEvent(f"{base}/changed", "tok")
    sh("xenstore-rm", base)
    assert xs.next_watch_event() == WatchEvent(base, "tok")
    xs.unwatch(base, "tok")
    sh("xenstore-write", f"{base}/after", "1")
    with pytest.raises(E.Timeout):
        xs.next_watch_event(timeout=1.0)


def test_transaction_conflict_and_retry(kernel: LinuxKernel, xs: Client, transport: str, base: str) -> None:
    counter = f"{base}/counter"
    xs.write(counter, "0")
    with Client(open_device(kernel, transport), timeout=TIMEOUT) as other:
        with pytest.raises(E.TransactionConflict), xs.transaction() as tx:
            n = int(tx.read(counter))
            other.write(counter, "100")
            tx.write(counter, str(n + 1))
        assert xs.read(counter) == b"100"
        attempts = 0

        def bump(tx: Any) -> int:
            nonlocal attempts
            attempts += 1
            n = int(tx.read(counter)) + 1
            if attempts == 1:
                sh("xenstore-write", counter, "200")
            tx.write(counter, str(n))
            return n

        assert xs.retry(bump) == 201 and attempts == 2
        assert sh("xenstore-read", counter) == "201\n"


def test_domain_messages(xs: Client) -> None:
    assert xs.get_domain_path(0) == "/local/domain/0"
    assert xs.get_domain_path(7) == "/local/domain/7"
    assert xs.is_domain_introduced(0) is True
    assert xs.is_domain_introduced(31000) is False


def test_xenstored_control_and_optional_messages(xs: Client) -> None:
    assert xs.control("check") == b"OK"
    if recorded_daemon() == "xenpure":
        # xenpure's daemon has the 4.21 messages, and dom0's xenbus device passes them on (seen in the lab).
        assert xs.get_feature(0) == SUPPORTED_FEATURES
        assert "nodes" in xs.quota_names(timeout=5)
        assert xs.get_quota("nodes", 0) == DEFAULT_QUOTAS["nodes"]
        xs.set_feature(31000, 0)  # a domain not introduced yet: its features for when it is
        return
    # Xen 4.17 has none of the 4.21 messages: the client says so instead of failing obscurely.
    with pytest.raises(E.XenstoreNotSupported, match="GET_FEATURE"):
        xs.get_feature(0)
    with pytest.raises(E.XenstoreNotSupported, match="GET_FEATURE"):
        xs.get_feature(timeout=5)  # an empty payload: answered thanks to the nudge that follows it
    with pytest.raises(E.XenstoreNotSupported, match="GET_QUOTA"):
        xs.quota_names(timeout=5)
    with pytest.raises(E.XenstoreNotSupported, match="GET_QUOTA"):
        xs.get_quota("nodes", 0)
    with pytest.raises(E.XenstoreNotSupported, match="SET_QUOTA"):
        xs.set_quota("nodes", 10, 0)
    with pytest.raises(E.XenstoreNotSupported, match="SET_FEATURE"):
        xs.set_feature(31000, 0)


def test_watch_with_a_depth_is_refused_and_says_why(xs: Client, transport: str, base: str) -> None:
    """Neither 4.17 daemon has watch depths (Xen 4.19's WATCHDEPTH). On the socket both answer EINVAL (seen in
    the lab), and the client's error names the depth as the likely cause. The xenbus device instead accepts
    the WATCH and registers it without the depth (the raw request below: it fires for a grandchild), so the
    client refuses a depth there before sending anything."""
    daemon = recorded_daemon()
    xs.write(base, "")
    if transport == "socket" and daemon == "xenpure":
        xs.watch(base, "deep", depth=1)  # xenpure's daemon has watch depths: children fire, grandchildren not
        assert xs.next_watch_event() == WatchEvent(base, "deep")
        sh("xenstore-write", f"{base}/a/b", "1")
        sh("xenstore-write", f"{base}/c", "1")
        assert xs.next_watch_event() == WatchEvent(f"{base}/c", "deep")  # a/b, two below, did not fire
        xs.unwatch(base, "deep")
    elif transport == "socket":
        with pytest.raises(E.XenstoreInvalid, match=r"with a depth \(1\).*WATCHDEPTH"):
            xs.watch(base, "deep", depth=1)
    else:
        with pytest.raises(E.XenstoreNotSupported, match="drops a watch's depth"):
            xs.watch(base, "deep", depth=0)
        xs._run(_ops.call(W.Watch(base, "raw", 0)), None)  # what the client refuses to send
        assert xs.next_watch_event() == WatchEvent(base, "raw")
        sh("xenstore-write", f"{base}/a/b", "1")
        _wait_for(xs, WatchEvent(f"{base}/a/b", "raw"), 30)  # depth 0 would not fire here
        xs.unwatch(base, "raw")
    xs.watch(base, "plain")
    assert xs.next_watch_event() == WatchEvent(base, "plain")


def test_reset_watches(kernel: LinuxKernel) -> None:
    """RESET_WATCHES drops this connection's watches (and only its own). Over the socket only: through the
    xenbus device it resets dom0's kernel's own connection, dropping the kernel's watches too (seen once:
    dmesg then says "xenbus: Failed to release watch ...: -2"), so the client refuses it there."""
    base = f"/xenpure-lab/reset-watches-{os.getpid()}"
    with (
        Client(kernel.connect_socket(DEFAULT_SOCKET), timeout=TIMEOUT) as xs,
        Client(kernel.connect_socket(DEFAULT_SOCKET), timeout=TIMEOUT) as other,
    ):
        xs.write(base, "")
        xs.watch(base, "mine")
        other.watch(base, "theirs")
        assert xs.next_watch_event() == WatchEvent(base, "mine")
        assert other.next_watch_event() == WatchEvent(base, "theirs")
        xs.reset_watches()
        sh("xenstore-write", f"{base}/x", "1")
        assert other.next_watch_event() == WatchEvent(f"{base}/x", "theirs")
        with pytest.raises(E.Timeout):
            xs.next_watch_event(timeout=2.0)
        with pytest.raises(E.NoEntry):
            xs.unwatch(base, "mine")  # gone
        xs.watch(base, "again")  # and the connection is usable
        assert xs.next_watch_event() == WatchEvent(base, "again")
        xs.rm(base)
    with Client(kernel.open("xenbus"), timeout=TIMEOUT) as bus:
        with pytest.raises(E.XenstoreNotSupported, match="kernel's own connection"):
            bus.reset_watches()
        assert bus.read("/local/domain/0/name") == b"Domain-0"


def _raw_directory(xs: Client, path: str) -> tuple[str, ...]:
    """One DIRECTORY, without the client's DIRECTORY_PART fallback: what the daemon itself answers."""
    return xs._run(_ops.call(W.Directory(path)), None)


def test_big_directories(xs: Client, transport: str, base: str) -> None:
    names = [f"a-fairly-long-child-name-{i:04d}" for i in range(300)]  # ~9 KiB of names: over 4096
    with xs.transaction() as tx:
        for n in names:
            tx.write(f"{base}/{n}", "")
    if recorded_daemon() in ("c", "xenpure"):
        # C xenstored (and xenpure's) refuse the over-long DIRECTORY (E2BIG) and implement DIRECTORY_PART,
        # which the client walks: the whole list, over either transport.
        with pytest.raises(E.TooBig):
            _raw_directory(xs, base)
        assert sorted(xs.directory(base)) == names
    elif transport == "socket":
        # oxenstored answers with one over-long DIRECTORY reply, which the client accepts (bounded).
        assert sorted(_raw_directory(xs, base)) == names
        assert sorted(xs.directory(base)) == names
    else:
        # Through the xenbus device the same list comes back E2BIG, and 4.17's oxenstored has no
        # DIRECTORY_PART.
        with pytest.raises(E.TooBig, match="does not implement DIRECTORY_PART"):
            xs.directory(base)
    assert xs.read("/local/domain/0/name") == b"Domain-0"  # the connection is fine either way


def test_relative_paths_over_xenbus(kernel: LinuxKernel) -> None:
    with Client(kernel.open("xenbus"), timeout=TIMEOUT) as xs:
        xs.write("xenpure-lab-relative", "rel")
        assert sh("xenstore-read", "/local/domain/0/xenpure-lab-relative") == "rel\n"
        xs.watch("xenpure-lab-relative", "r")
        assert xs.next_watch_event() == WatchEvent("xenpure-lab-relative", "r")
        xs.rm("xenpure-lab-relative")
        assert xs.next_watch_event() == WatchEvent("xenpure-lab-relative", "r")


def _wait_for(xs: Client, want: WatchEvent, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want} within {seconds}s")
        try:
            if xs.next_watch_event(timeout=left) == want:
                return
        except E.Timeout:
            continue


def test_special_watches_fire_when_xl_creates_and_destroys_a_guest(
    kernel: LinuxKernel, make_guest: Callable[..., Any], xl: Any, wait: Callable[..., None]
) -> None:
    with Client.open(kernel, timeout=TIMEOUT) as xs:
        xs.watch("@introduceDomain", "in")
        xs.watch("@releaseDomain", "out")
        guest = make_guest()  # the lab's fixture: xl create, destroyed in teardown
        _wait_for(xs, WatchEvent("@introduceDomain", "in"), 60)
        assert xs.is_domain_introduced(guest.domid)
        path = xs.get_domain_path(guest.domid)
        assert xs.read(f"{path}/name") == guest.name.encode()
        perms = xs.get_perms(path)  # libxl: dom0 owns the guest's home, the guest may read it
        assert perms[0] == Perm(0, PermAccess.NONE) and Perm(guest.domid, PermAccess.READ) in perms, perms
        xl("destroy", guest.name)
        _wait_for(xs, WatchEvent("@releaseDomain", "out"), 60)
        wait(lambda: not xs.is_domain_introduced(guest.domid), 30, "xenstored to forget the guest")


def test_release_resume_introduce_and_set_target_on_a_real_guest(
    kernel: LinuxKernel, make_guest: Callable[..., Any], wait: Callable[..., None]
) -> None:
    """The domain messages on a guest ``xl create`` made: RESUME, SET_TARGET, then RELEASE (xenstored lets go
    of its ring; @releaseDomain) and INTRODUCE again with the ring and event channel libxl recorded in
    ``store/``: C xenstored takes the guest back (@introduceDomain), and so does xenpure's (mapping the ring
    through the grant again), oxenstored 4.17 answers EINVAL and the guest stays released (seen in the
    lab). The guest's nodes are kept throughout."""
    recorded_daemon()
    guest = make_guest()
    with Client.open(kernel, timeout=TIMEOUT) as xs:
        path = xs.get_domain_path(guest.domid)
        gfn = int(xs.read(f"{path}/store/ring-ref"))
        port = int(xs.read(f"{path}/store/port"))
        xs.watch("@introduceDomain", "in")
        xs.watch("@releaseDomain", "out")
        assert {xs.next_watch_event(), xs.next_watch_event()} == {
            WatchEvent("@introduceDomain", "in"),
            WatchEvent("@releaseDomain", "out"),
        }
        xs.resume(guest.domid)
        xs.set_target(guest.domid, 0)
        xs.release(guest.domid)
        _wait_for(xs, WatchEvent("@releaseDomain", "out"), 60)
        wait(lambda: not xs.is_domain_introduced(guest.domid), 30, "xenstored to let go of the guest")
        assert xs.read(f"{path}/name") == guest.name.encode()  # released, not removed
        if DAEMON == "oxenstored":
            with pytest.raises(E.XenstoreInvalid):
                xs.introduce(guest.domid, gfn, port)
            assert not xs.is_domain_introduced(guest.domid)
            assert xs.read(f"{path}/name") == guest.name.encode()
            return
        xs.introduce(guest.domid, gfn, port)
        _wait_for(xs, WatchEvent("@introduceDomain", "in"), 60)
        assert xs.is_domain_introduced(guest.domid)
        assert xs.get_domain_path(guest.domid) == path


def test_where_the_daemons_differ(kernel: LinuxKernel) -> None:
    """The answers in which C xenstored and oxenstored differ (seen in the lab; the conformance README lists
    them with xenpure's choice, which here is oxenstored's each time): each daemon is held to its own."""
    base = f"/xenpure-lab/differ-{os.getpid()}"
    c = recorded_daemon() == "c"
    with (
        Client(kernel.connect_socket(DEFAULT_SOCKET), timeout=TIMEOUT) as xs,
        Client(kernel.connect_socket(DEFAULT_SOCKET), timeout=TIMEOUT) as other,
    ):
        try:
            # RELEASE and RESUME of a domain never introduced.
            for call in (xs.release, xs.resume):
                with pytest.raises(E.NoEntry if c else E.XenstoreInvalid):
                    call(31000)
            # The order DIRECTORY lists children in: creation order (C), sorted (oxenstored).
            for leaf in ("zz", "aa", "mm"):
                xs.write(f"{base}/o/{leaf}", "")
            assert xs.directory(f"{base}/o") == (("zz", "aa", "mm") if c else ("aa", "mm", "zz"))
            # A transaction creates a child while another connection creates a sibling: C xenstored sees
            # the parent changed (EAGAIN), oxenstored commits.
            xs.mkdir(f"{base}/s")

            def create_beside_a_sibling() -> None:
                with xs.transaction() as tx:
                    tx.write(f"{base}/s/mine", "1")
                    other.write(f"{base}/s/theirs", "2")

            if c:
                with pytest.raises(E.TransactionConflict):
                    create_beside_a_sibling()
                assert xs.directory(f"{base}/s") == ("theirs",)
            else:
                create_beside_a_sibling()
                assert xs.directory(f"{base}/s") == ("mine", "theirs")
        finally:
            xs.rm(base)


def _script(xs: Client, other: Client, base: str) -> list[tuple[str, object]]:
    """A fixed sequence of calls (``other`` is a second connection); each gives ("ok", value) or
    ("err", error name)."""
    n0, r5 = Perm(0, PermAccess.NONE), Perm(5, PermAccess.READ)

    def siblings_in_transactions() -> object:
        xs.mkdir(f"{base}/s")
        with xs.transaction() as tx:
            tx.write(f"{base}/s/mine", "1")
            other.write(f"{base}/s/theirs", "2")
        return sorted(xs.directory(f"{base}/s"))

    def conflict() -> object:
        with xs.transaction() as tx:
            tx.read(f"{base}/a")
            other.write(f"{base}/a", "changed")
            tx.write(f"{base}/a", "mine")
        return None

    def order() -> object:
        for leaf in ("zz", "aa", "mm"):
            xs.write(f"{base}/o/{leaf}", "")
        return xs.directory(f"{base}/o")

    def watch_events() -> object:
        xs.watch(f"{base}/w", "w")
        first = xs.next_watch_event()
        xs.write(f"{base}/w/x/y", "")
        xs.rm(f"{base}/w")
        got = [first, xs.next_watch_event(), xs.next_watch_event()]
        xs.unwatch(f"{base}/w", "w")
        return got

    calls: list[tuple[str, Callable[[], object]]] = [
        ("write", lambda: xs.write(f"{base}/a", "1")),
        ("read", lambda: xs.read(f"{base}/a")),
        ("read implicit parent", lambda: xs.read(base)),
        ("read missing", lambda: xs.read(f"{base}/missing")),
        ("mkdir", lambda: xs.mkdir(f"{base}/d/e")),
        ("mkdir existing", lambda: xs.mkdir(f"{base}/a")),
        ("read after mkdir", lambda: xs.read(f"{base}/a")),
        ("directory", lambda: xs.directory(base)),
        ("directory leaf", lambda: xs.directory(f"{base}/a")),
        ("directory missing", lambda: xs.directory(f"{base}/missing")),
        ("get_perms", lambda: xs.get_perms(f"{base}/a")),
        ("set_perms", lambda: xs.set_perms(f"{base}/a", [n0, r5])),
        ("get_perms after", lambda: xs.get_perms(f"{base}/a")),
        ("inherited perms", lambda: (xs.write(f"{base}/a/child", ""), xs.get_perms(f"{base}/a/child"))[1]),
        ("set_perms missing", lambda: xs.set_perms(f"{base}/missing", [n0])),
        ("rm missing", lambda: xs.rm(f"{base}/missing")),
        ("rm missing parent", lambda: xs.rm(f"{base}/no/such")),
        ("rm subtree", lambda: xs.rm(f"{base}/d")),
        ("read removed", lambda: xs.read(f"{base}/d/e")),
        ("write double slash", lambda: xs.write(f"{base}//x", "")),
        ("write trailing slash", lambda: xs.write(f"{base}/x/", "")),
        ("write bad char", lambda: xs.write(f"{base}/x y", "")),
        ("get_domain_path", lambda: xs.get_domain_path(3)),
        ("dom0 introduced", lambda: xs.is_domain_introduced(0)),
        ("unknown introduced", lambda: xs.is_domain_introduced(31000)),
        ("release unknown", lambda: xs.release(31000)),
        ("resume unknown", lambda: xs.resume(31000)),
        ("introduce dom0", lambda: xs.introduce(0, 1, 1)),
        ("unwatch unknown", lambda: xs.unwatch(base, "nope")),
        ("watch", lambda: xs.watch(base, "t")),
        ("watch again", lambda: xs.watch(base, "t")),
        ("watch event", lambda: xs.next_watch_event()),
        ("unwatch", lambda: xs.unwatch(base, "t")),
        ("control check", lambda: xs.control("check")),
        ("siblings in transactions", siblings_in_transactions),
        ("conflict", conflict),
        ("after conflict", lambda: xs.read(f"{base}/a")),
        ("children order", order),
        ("watch events", watch_events),
        (
            "big directory",
            lambda: (
                [xs.write(f"{base}/big/child-{i:04d}", "") for i in range(300)]
                and xs.directory(f"{base}/big") == tuple(f"child-{i:04d}" for i in range(300))
            ),
        ),
        ("get_feature", lambda: xs.get_feature(0)),
    ]
    out: list[tuple[str, object]] = []
    for name, fn in calls:
        try:
            out.append((name, ("ok", fn())))
        except E.XenstoreError as e:
            out.append((name, ("err", e.error)))
    return out


# Where the simulator knowingly answers differently from Xen 4.17's oxenstored (it plays a newer, C-style
# xenstored there); everything else must match.
SIM_DEVIATIONS = {
    "get_feature": "the simulator implements the Xen 4.21 feature messages; 4.17 answers ENOSYS",
}


@pytest.mark.skipif(
    DAEMON != "oxenstored",
    reason=f"the simulator plays Xen 4.17's oxenstored, and dom0 runs {DAEMON}: tools/xenlab -- python3 -m pytest "
    f"-v {THIS}",
)
def test_the_simulator_answers_as_oxenstored_does(kernel: LinuxKernel) -> None:
    """oxenstored only: the simulator's xenstored is modelled on the one Debian's Xen 4.17 runs by default.
    (Against the C xenstored the script differs in five places, see the conformance README, and its
    "introduce dom0" is answered OK and re-introduces dom0 with the script's bogus ring, which cuts dom0's
    kernel off from xenstore for the rest of the boot.)"""
    from xenpure.testing._xenstored import SimXenstored

    base = f"/xenpure-lab/differential-{os.getpid()}"
    with (
        Client(kernel.connect_socket(DEFAULT_SOCKET), timeout=TIMEOUT) as real,
        Client(kernel.connect_socket(DEFAULT_SOCKET), timeout=TIMEOUT) as real2,
    ):
        try:
            truth = _script(real, real2, base)
        finally:
            real.rm(base)
    sim_store = SimXenstored()
    with (
        Client(sim_store.connect_socket(), timeout=TIMEOUT) as sim,  # type: ignore[arg-type]
        Client(sim_store.connect_socket(), timeout=TIMEOUT) as sim2,  # type: ignore[arg-type]
    ):
        simulated = _script(sim, sim2, base)
    diffs = [
        (name, want, got)
        for (name, want), (_, got) in zip(truth, simulated, strict=True)
        if want != got and name not in SIM_DEVIATIONS
    ]
    assert diffs == [], "\n".join(f"{n}: oxenstored {w!r}, simulator {g!r}" for n, w, g in diffs)


def test_asyncio_client(kernel: LinuxKernel, transport: str) -> None:
    base = f"/xenpure-lab/asyncio-{transport}-{os.getpid()}"

    async def main() -> None:
        async with AsyncClient(open_device(kernel, transport), timeout=TIMEOUT) as xs:
            assert await xs.read("/local/domain/0/name") == b"Domain-0"
            await asyncio.gather(*(xs.write(f"{base}/{i}", str(i)) for i in range(20)))  # pipelined
            values = await asyncio.gather(*(xs.read(f"{base}/{i}") for i in range(20)))
            assert values == [str(i).encode() for i in range(20)]
            await xs.watch(base, "t")
            assert await xs.next_watch_event() == WatchEvent(base, "t")
            await asyncio.to_thread(sh, "xenstore-write", f"{base}/w", "1")
            assert await xs.next_watch_event() == WatchEvent(f"{base}/w", "t")
            async with xs.transaction() as tx:
                await tx.write(f"{base}/tx", "1")
            assert await xs.read(f"{base}/tx") == b"1"
            await xs.rm(base)

    asyncio.run(main())
