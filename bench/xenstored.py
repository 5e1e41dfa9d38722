"""xenstored throughput: xenpure's server against the real daemons, same client load, one lab run.

    tools/xenlab -- python3 bench/xenstored.py [-n 2000] [--c-xenstored]

For each server: ops/s for sequential write+read pairs on one connection, for pipelined reads (all sent,
then all replies taken), and for 50 concurrent clients each running transactions (start, read, write,
commit; retried on EAGAIN). Servers: dom0's oxenstored (/run/xenstored/socket), xenpure's xenstored
started here (``python -m xenpure xenstored``), and with --c-xenstored the C xenstored on a private run
directory (XENSTORED_RUNDIR) after stopping oxenstored (they cannot run side by side). The client is a
raw wire client (xenpure's codec), the same for all.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from xenpure.xenstore import _wire as W
from xenpure.xenstore._wire import XsType


class Raw:
    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = W.Framer()
        self.n = 0

    def send(self, req: W.Request[Any], tx: int = 0) -> None:
        self.n += 1
        self.s.sendall(req.encode(self.n, tx))

    def recv(self) -> W.Message:
        while True:
            m = self.f.next_message()
            if m is not None:
                if m.type is XsType.WATCH_EVENT:
                    continue
                return m
            select.select([self.s], [], [], 30)
            data = self.s.recv(65536)
            if not data:
                raise ConnectionError("server hung up")
            self.f.receive_data(data)

    def call(self, req: W.Request[Any], tx: int = 0) -> W.Message:
        self.send(req, tx)
        return self.recv()


def sequential(path: str, n: int, base: str) -> float:
    c = Raw(path)
    t0 = time.perf_counter()
    for i in range(n):
        c.call(W.Write(f"{base}/s{i % 50}", b"v"))
        c.call(W.Read(f"{base}/s{i % 50}"))
    return 2 * n / (time.perf_counter() - t0)


def pipelined(path: str, n: int, base: str) -> float:
    c = Raw(path)
    c.call(W.Write(f"{base}/p", b"v"))
    t0 = time.perf_counter()
    data = b"".join(W.Read(f"{base}/p").encode(i + 1) for i in range(n))
    sender = threading.Thread(target=c.s.sendall, args=(data,))
    sender.start()
    for _ in range(n):
        c.recv()
    sender.join()
    return n / (time.perf_counter() - t0)


def concurrent(path: str, clients: int, per: int, base: str) -> float:
    done = [0] * clients

    def work(k: int) -> None:
        c = Raw(path)
        for i in range(per):
            while True:
                tid = int(c.call(W.TransactionStart()).payload.rstrip(b"\0"))
                c.call(W.Read(f"{base}/c{k}"), tid)
                c.call(W.Write(f"{base}/c{k}", str(i).encode()), tid)
                if c.call(W.TransactionEnd(True), tid).type is not XsType.ERROR:
                    break
            done[k] += 4

    Raw(path).call(W.Mkdir(base))
    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def measure(name: str, path: str, n: int) -> dict[str, float]:
    base = f"/bench-{os.getpid()}"
    out = {
        "sequential": sequential(path, n, base),
        "pipelined": pipelined(path, n, base),
        "50 clients, transactions": concurrent(path, 50, max(1, n // 100), base),
    }
    Raw(path).call(W.Rm(base))
    print(f"{name}: " + ", ".join(f"{k} {v:.0f} ops/s" for k, v in out.items()), flush=True)
    return out


def wait_for(path: str) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.1)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--c-xenstored", action="store_true")
    args = p.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "xenpure")
        xp = subprocess.Popen([sys.executable, "-m", "xenpure", "xenstored", "--socket", sock])
        try:
            wait_for(sock)
            results["xenpure"] = measure("xenpure", sock, args.n)
        finally:
            xp.send_signal(signal.SIGTERM)
            xp.wait(30)
        if os.path.exists("/run/xenstored/socket"):
            results["oxenstored"] = measure("oxenstored", "/run/xenstored/socket", args.n)
        if args.c_xenstored:
            # It cannot run next to oxenstored (with -D it dies on the first socket request; without, it
            # needs dom0's xenbus backend): stop oxenstored, which is measured already. Lab only.
            with open("/run/xenstore.pid") as f:
                pid = int(f.read().split()[0])
            os.kill(pid, signal.SIGTERM)
            while os.path.exists(f"/proc/{pid}"):
                time.sleep(0.2)
            rundir = os.path.join(d, "c")
            os.makedirs(rundir)
            env = {**os.environ, "XENSTORED_RUNDIR": rundir}
            c = subprocess.Popen(["/usr/lib/xen-4.17/bin/xenstored", "-N"], env=env)
            try:
                wait_for(os.path.join(rundir, "socket"))
                results["C xenstored"] = measure("C xenstored", os.path.join(rundir, "socket"), args.n)
            finally:
                c.terminate()
                c.wait(30)
    for ref in ("C xenstored", "oxenstored"):
        if ref in results:
            for k in results["xenpure"]:
                print(f"xenpure / {ref}, {k}: {results['xenpure'][k] / results[ref][k]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
