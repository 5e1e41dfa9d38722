"""xenpure's xenstored daemon: sockets (read-write, read-only, unprivileged pairs), rings, --state,
--trace, bounded backlogs, and a clean SIGTERM."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenpure import errors as E
from xenpure.kernel import LinuxKernel
from xenpure.testing import SocketDoorbell
from xenpure.xenstore import Client, RingDevice, WatchEvent, XenstoreRing
from xenpure.xenstore import _wire as W
from xenpure.xenstore._ring import RingErrorCode
from xenpure.xenstore.server import ServerCore, Xenstored


@contextlib.contextmanager
def running(d: Xenstored) -> Iterator[Xenstored]:
    ready = threading.Event()
    t = threading.Thread(target=d.serve, kwargs={"ready": ready}, daemon=True)
    t.start()
    ready.wait(5)
    try:
        yield d
    finally:
        d.stop()
        t.join(10)
        assert not t.is_alive()


def client(path: str) -> Client:
    return Client.open(LinuxKernel(), path=path, timeout=5)


def test_socket_ro_socket_and_an_unprivileged_pair(tmp_path: Path) -> None:
    sock, ro = str(tmp_path / "s"), str(tmp_path / "ro")
    trace = io.StringIO()
    with running(Xenstored(socket_path=sock, ro_socket_path=ro, trace=trace)) as d:
        with client(sock) as xs:
            xs.write("/a/b", "1")
            xs.introduce(5, 1, 1)
            xs.mkdir("/local/domain/5")
            xs.set_perms("/local/domain/5", [W.Perm(5, W.PermAccess.NONE)])
            with client(ro) as r:
                assert r.read("/a/b") == b"1"
                with pytest.raises(E.ReadOnly):
                    r.write("/a/b", "2")
            g = d.connect_as(5)
            g.sendall(W.Write("x", b"guest").encode(1) + W.Read("/a/b").encode(2))
            f = W.Framer()
            got: list[W.Message] = []
            while len(got) < 2:
                f.receive_data(g.recv(4096))
                while (m := f.next_message()) is not None:
                    got.append(m)
            assert [m.type for m in got] == [W.XsType.WRITE, W.XsType.ERROR]
            assert W.parse_error(got[1].payload) == "EACCES"
            assert xs.read("/local/domain/5/x") == b"guest"
            g.close()
    assert not os.path.exists(sock) and not os.path.exists(ro)  # removed on the way out
    assert "WRITE req" in trace.getvalue() and "Write(path='/a/b'" in trace.getvalue()


def test_state_survives_a_restart(tmp_path: Path) -> None:
    sock, state = str(tmp_path / "s"), str(tmp_path / "state")
    with running(Xenstored(socket_path=sock, state_path=state)), client(sock) as xs:
        xs.write("/keep/me", b"\0binary\xff")
        xs.introduce(3, 1, 1)
        with xs.transaction() as tx:
            tx.write("/keep/tx", "1")
        xs.set_quota("nodes", 77)
        xs.write("/gone", "x")
        xs.rm("/gone")
    with open(state, "a") as f:
        f.write('{"n": "/torn", "v": [')  # a crash in the middle of an append: never acknowledged
    with running(Xenstored(socket_path=sock, state_path=state)), client(sock) as xs:
        assert xs.read("/keep/me") == b"\0binary\xff"
        assert xs.read("/keep/tx") == b"1"
        assert xs.is_domain_introduced(3)
        assert xs.get_quota("nodes") == 77
        with pytest.raises(E.NoEntry):
            xs.read("/gone")
        with pytest.raises(E.NoEntry):
            xs.read("/torn")


def test_a_client_that_does_not_read_is_bounded(tmp_path: Path) -> None:
    sock = str(tmp_path / "s")
    with running(Xenstored(socket_path=sock, max_backlog=64 * 1024)), client(sock) as xs:
        xs.write("/big", b"x" * 4000)
        hog = socket.socket(socket.AF_UNIX)
        hog.connect(sock)
        hog.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
            for i in range(20000):  # 80 MB of replies if they were all kept
                sent += hog.send(W.Read("/big").encode(i))
        assert xs.read("/big") == b"x" * 4000  # others are still served
        hog.close()


def test_a_domain_over_an_in_process_ring(tmp_path: Path) -> None:
    page = bytearray(4096)
    a, b = socket.socketpair()
    with running(Xenstored(ServerCore())) as d:
        dom0 = d.core.connect(0)
        d.core.call(dom0, W.Introduce(4, 1, 1))
        d.core.call(dom0, W.Mkdir("/local/domain/4"))
        d.core.call(dom0, W.SetPerms("/local/domain/4", (W.Perm(4, W.PermAccess.NONE),)))
        d.add_ring(4, XenstoreRing(page, back=True), SocketDoorbell(b))
        with Client(RingDevice(XenstoreRing(page), SocketDoorbell(a), path="ring"), timeout=5) as xs:  # type: ignore[arg-type]
            xs.write("home", b"y" * 2000)  # twice the ring
            assert XenstoreRing(page).server_features == 6  # ERROR | WATCHDEPTH
            assert xs.read("/local/domain/4/home") == b"y" * 2000
            with pytest.raises(E.NoSpace):
                xs.write("home", b"y" * 2049)  # the node-size quota
            xs.watch("home", "t")
            assert xs.next_watch_event() == WatchEvent("home", "t")
            with pytest.raises(E.PermissionDenied):
                xs.read("/")  # dom0-owned root is n0: domain 4 may not read it
        # XSA-72: a hostile request index stops the ring, not the daemon
        ring = XenstoreRing(page)
        ring._set(2052, ring._get(2048) + 5000)
        SocketDoorbell(a).notify()
        deadline = time.monotonic() + 5
        while XenstoreRing(page, back=True).error != RingErrorCode.RINGIDX and time.monotonic() < deadline:
            time.sleep(0.01)
        assert XenstoreRing(page).error == RingErrorCode.RINGIDX
    a.close()
    b.close()


@contextlib.contextmanager
def daemon_process(*args: str, ready: tuple[Path, ...]) -> Iterator[subprocess.Popen[str]]:
    """``xenpure xenstored ARGS`` as a process, yielded once every path in ``ready`` exists; on the way out a
    SIGTERM must stop it with status 0 (it is killed if it does not)."""
    p = subprocess.Popen([sys.executable, "-m", "xenpure", "xenstored", *args], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield p
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_the_cli_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    sock = tmp_path / "s"
    with daemon_process("--socket", str(sock), "--trace", str(tmp_path / "t"), ready=(sock,)):
        with client(str(sock)) as xs:
            xs.write("/x", "1")
    assert not sock.exists()
    assert "WRITE" in (tmp_path / "t").read_text()


def test_the_pid_file_lives_while_the_daemon_serves(tmp_path: Path) -> None:
    sock, pid_file = tmp_path / "s", tmp_path / "xenstored.pid"
    with daemon_process("--socket", str(sock), "--pid-file", str(pid_file), ready=(sock, pid_file)) as p:
        assert pid_file.read_text() == f"{p.pid}\n"
    assert not pid_file.exists() and not sock.exists()
