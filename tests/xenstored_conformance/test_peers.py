"""Peers against the server under test: Debian's xenstore-utils (the C libxenstore, found through
XENSTORED_PATH) and xenpure's own client, over the socket."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from xsconf import Conn, Target

from xenpure.xenstore import _wire as W

TOOLS = ("xenstore-write", "xenstore-read", "xenstore-ls", "xenstore-watch", "xenstore-rm", "xenstore-list")
MISSING = [t for t in TOOLS if shutil.which(t) is None]
needs_tools = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (Debian package xenstore-utils)"
)


def tool(target: Target, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XENSTORED_PATH": target.path}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@needs_tools
def test_xenstore_utils_write_read_ls_rm(target: Target, xs: Conn, base: str) -> None:
    r = tool(target, "xenstore-write", f"{base}/a", "hello", f"{base}/b/c", "with space")
    assert r.returncode == 0, r.stderr
    assert xs(W.Read(f"{base}/b/c")) == b"with space"
    assert tool(target, "xenstore-read", f"{base}/a").stdout == "hello\n"
    ls = tool(target, "xenstore-ls", base)
    assert ls.returncode == 0, ls.stderr
    assert 'a = "hello"' in ls.stdout and 'c = "with space"' in ls.stdout
    assert sorted(tool(target, "xenstore-list", base).stdout.split()) == ["a", "b"]
    assert tool(target, "xenstore-rm", f"{base}/b").returncode == 0
    assert xs.err(W.Read(f"{base}/b")) == "ENOENT"
    r = tool(target, "xenstore-read", f"{base}/missing")
    assert r.returncode != 0


@needs_tools
def test_xenstore_watch(target: Target, xs: Conn, base: str) -> None:
    env = {**os.environ, "XENSTORED_PATH": target.path}
    p = subprocess.Popen(["xenstore-watch", "-n", "3", f"{base}/w"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # the first event comes when the watch is set
        xs(W.Write(f"{base}/w", b"1"))
        xs(W.Write(f"{base}/w/x", b"2"))
        out, _ = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert out.split() == [f"{base}/w", f"{base}/w", f"{base}/w/x"]


def test_xenpure_client_over_the_socket(target: Target, base: str) -> None:
    from xenpure.kernel import LinuxKernel
    from xenpure.xenstore import Client, WatchEvent

    with Client.open(LinuxKernel(), path=target.path, timeout=10) as c:
        c.write(f"{base}/x", "1")
        assert c.read(f"{base}/x") == b"1"
        c.watch(f"{base}/x", "tok")
        assert c.next_watch_event() == WatchEvent(f"{base}/x", "tok")
        c.retry(lambda tx: tx.write(f"{base}/y", tx.read(f"{base}/x") + b"2"))
        assert c.read(f"{base}/y") == b"12"
        assert c.directory(base) == ("x", "y") or sorted(c.directory(base)) == ["x", "y"]
        assert c.get_domain_path(3) == "/local/domain/3"
