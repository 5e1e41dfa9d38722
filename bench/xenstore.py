#!/usr/bin/env python3
"""Per-operation cost of xenstore clients: xenpure (sync and asyncio, one call at a time and pipelined with
``gather``; socket and xenbus) next to pyxs and Xen's C binding (xen.lowlevel.xs), in the lab's dom0; or
xenpure alone on the simulator.

Rule 1: compare ratios taken in the same run, never absolute times (the lab runs under TCG, 10-50x slower
than hardware, and drifts by tens of percent within minutes). So the measurements are interleaved: each
round times every client once, in turn, and each client keeps its best round.

    tools/xenlab -- python3 bench/xenstore.py          # dom0's xenstored (tools/xenlab --xenstored picks it)
    python bench/xenstore.py --sim                     # the simulator: the cost of xenpure's own code
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

PATH = "/local/domain/0/name"
SOCKET = "/run/xenstored/socket"

#: (client, op, ops per call, the call): one timed call does ``ops per call`` operations.
Case = tuple[str, str, int, Callable[[], object]]


def repeat(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> None:
        for _ in range(n):
            fn()

    return run


def xenpure_cases(kernel: Any, transport: str, n: int, loop: asyncio.AbstractEventLoop) -> list[Case]:
    from xenpure.xenstore import AsyncClient, Client, Read

    def device() -> Any:
        return kernel.connect_socket(SOCKET) if transport == "socket" else kernel.open("xenbus")

    xs = Client(device())
    axs = loop.run_until_complete(_async_client(AsyncClient, device))
    counter = iter(range(10**9))
    reads = [Read(PATH) for _ in range(n)]

    async def calls() -> None:
        await asyncio.gather(*(axs.read(PATH) for _ in range(n)))

    return [
        (f"xenpure sync ({transport})", "read", n, repeat(n, lambda: xs.read(PATH))),
        (f"xenpure sync ({transport})", "write", n, repeat(n, lambda: xs.write("/bench/x", str(next(counter))))),
        (f"xenpure sync gather, {n} pipelined ({transport})", "read", n, lambda: xs.gather(reads)),
        (
            f"xenpure asyncio gather, {n} pipelined ({transport})",
            "read",
            n,
            lambda: loop.run_until_complete(axs.gather([Read(PATH) for _ in range(n)])),
        ),
        (
            f"xenpure asyncio, {n} read() calls at once ({transport})",
            "read",
            n,
            lambda: loop.run_until_complete(calls()),
        ),
    ]


async def _async_client(cls: Any, device: Callable[[], Any]) -> Any:
    return cls(device())


class Counting:
    """A device that counts the reads and writes made through it (each one system call, or two for a
    ``read_within`` that waits with ``select`` first), to show how a batch's requests and replies travel."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.path = inner, inner.path
        self.reads = self.writes = 0
        if hasattr(inner, "read_within"):
            self.read_within = self._read_within

    def fileno(self) -> int:
        return int(self.inner.fileno())

    def write(self, data: bytes) -> int:
        self.writes += 1
        return int(self.inner.write(data))

    def read(self, n: int) -> bytes:
        self.reads += 1
        return bytes(self.inner.read(n))

    def _read_within(self, n: int, timeout: float | None) -> bytes | None:
        self.reads += 1
        data: bytes | None = self.inner.read_within(n, timeout)
        return data

    def close(self) -> None:
        self.inner.close()


def batch_syscalls(kernel: Any, n: int, loop: asyncio.AbstractEventLoop) -> None:
    """One more sync and one asyncio gather of n reads, untimed, through ``Counting``: how many writes and
    reads each batch took (the fewer, the more requests per system call)."""
    from xenpure.xenstore import AsyncClient, Client, Read

    dev = Counting(kernel.connect_socket(SOCKET))
    with Client(dev) as xs:
        xs.gather([Read(PATH) for _ in range(n)])
    adev = Counting(kernel.connect_socket(SOCKET))
    axs = loop.run_until_complete(_async_client(AsyncClient, lambda: adev))
    loop.run_until_complete(axs.gather([Read(PATH) for _ in range(n)]))
    axs.close()
    print(
        f"gather of {n} reads over the socket: sync {dev.writes} writes + {dev.reads} reads, "
        f"asyncio {adev.writes} writes + {adev.reads} reads"
    )


def peer_cases(n: int) -> list[Case]:
    out: list[Case] = []
    sys.path.insert(0, "/usr/lib/xen-4.17/lib/python")
    try:
        import xen.lowlevel.xs as cxs  # type: ignore[import-not-found]

        h = cxs.xs()
        counter = iter(range(10**9))
        out.append(("C binding xen.lowlevel.xs", "read", n, repeat(n, lambda: h.read("", PATH))))
        out.append(
            ("C binding xen.lowlevel.xs", "write", n, repeat(n, lambda: h.write("", "/bench/x", str(next(counter)))))
        )
    except Exception as e:  # report, do not hide, a peer that cannot run
        print(f"C binding unavailable: {e!r}", file=sys.stderr)
    try:
        from pyxs import Client as PyxsClient  # type: ignore[import-not-found]

        c = PyxsClient(unix_socket_path=SOCKET)
        c.connect()
        counter2 = iter(range(10**9))
        out.append(("pyxs (socket)", "read", n, repeat(n, lambda: c.read(PATH.encode()))))
        out.append(
            ("pyxs (socket)", "write", n, repeat(n, lambda: c.write(b"/bench/x", str(next(counter2)).encode())))
        )
    except Exception as e:
        print(f"pyxs unavailable: {e!r}", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300, help="operations per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each client keeps its best")
    ap.add_argument("--sim", action="store_true", help="run against the simulated xenstored")
    args = ap.parse_args()
    loop = asyncio.new_event_loop()

    if args.sim:
        from xenpure.testing import SimKernel

        kernel: Any = SimKernel()
        kernel._xenstored()
        cases = xenpure_cases(kernel, "socket", args.n, loop)
    else:
        from xenpure.kernel import LinuxKernel

        kernel = LinuxKernel()
        cases = [*xenpure_cases(kernel, "socket", args.n, loop), *xenpure_cases(kernel, "xenbus", args.n, loop)]
        cases += peer_cases(args.n)

    for _, _, _, fn in cases:
        fn()  # warm up
    best = [float("inf")] * len(cases)
    for _ in range(args.rounds):
        for i, (_, _, ops, fn) in enumerate(cases):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], (time.perf_counter() - t) / ops * 1e6)

    base = {op: us for (name, op, _, _), us in zip(cases, best, strict=True) if name.startswith("C binding")}
    daemon = os.environ.get("XENPURE_LAB_XENSTORED", "sim" if args.sim else "?")
    print(
        f"{'client':58} {'op':6} {'us/op':>10} {'vs C':>7}   "
        f"(n={args.n}, best of {args.rounds} interleaved rounds, xenstored: {daemon})"
    )
    for (name, op, _, _), us in zip(cases, best, strict=True):
        ratio = f"{us / base[op]:.2f}x" if op in base else "-"
        print(f"{name:58} {op:6} {us:10.1f} {ratio:>7}")
    if not args.sim:
        batch_syscalls(kernel, args.n, loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
