#!/usr/bin/env python3
"""Per-operation cost of xenstore clients: xenpure (sync; asyncio with pipelining; socket and xenbus) next
to pyxs and Xen's C binding (xen.lowlevel.xs), in the lab's dom0; or xenpure alone on the simulator.

Rule 1: compare ratios taken in the same run, never absolute times (the lab runs under TCG, 10-50x slower
than hardware).

    tools/xenlab -- python3 bench/xenstore.py          # real oxenstored
    python bench/xenstore.py --sim                     # the simulator: the cost of xenpure's own code
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable

PATH = "/local/domain/0/name"
SOCKET = "/run/xenstored/socket"


def timed(n: int, fn: Callable[[int], object], rounds: int = 3) -> float:
    """Best of ``rounds`` runs of n calls, in us per call."""
    fn(0)  # warm up
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def timed_batch(n: int, fn: Callable[[], object], rounds: int = 3) -> float:
    """Best of ``rounds`` runs of one call doing n operations, in us per operation."""
    fn()  # warm up
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def bench_xenpure(kernel: object, transport: str, n: int, rows: list[tuple[str, str, float]]) -> None:
    from xenpure.xenstore import AsyncClient, Client, Read

    def device() -> object:
        return kernel.connect_socket(SOCKET) if transport == "socket" else kernel.open("xenbus")  # type: ignore[attr-defined]

    with Client(device()) as xs:  # type: ignore[arg-type]
        rows.append((f"xenpure sync ({transport})", "read", timed(n, lambda i: xs.read(PATH))))
        rows.append((f"xenpure sync ({transport})", "write", timed(n, lambda i: xs.write("/bench/x", str(i)))))
        reads = [Read(PATH) for _ in range(n)]
        gathered = timed_batch(n, lambda: xs.gather(reads))
        rows.append((f"xenpure sync gather, {n} pipelined ({transport})", "read", gathered))

    async def pipelined() -> tuple[float, float]:
        async with AsyncClient(device()) as xs:  # type: ignore[arg-type]
            await xs.read(PATH)
            best_gather = best_calls = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                await xs.gather([Read(PATH) for _ in range(n)])
                best_gather = min(best_gather, (time.perf_counter() - t) / n * 1e6)
                t = time.perf_counter()
                await asyncio.gather(*(xs.read(PATH) for _ in range(n)))
                best_calls = min(best_calls, (time.perf_counter() - t) / n * 1e6)
            return best_gather, best_calls

    g, c = asyncio.run(pipelined())
    rows.append((f"xenpure asyncio gather, {n} pipelined ({transport})", "read", g))
    rows.append((f"xenpure asyncio, {n} read() calls at once ({transport})", "read", c))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300, help="operations per measurement")
    ap.add_argument("--sim", action="store_true", help="run against the simulated xenstored")
    args = ap.parse_args()
    rows: list[tuple[str, str, float]] = []

    if args.sim:
        from xenpure.testing import SimKernel

        kernel: object = SimKernel()
        kernel._xenstored()  # type: ignore[attr-defined]
        bench_xenpure(kernel, "socket", args.n, rows)
    else:
        from xenpure.kernel import LinuxKernel

        kernel = LinuxKernel()
        for transport in ("socket", "xenbus"):
            bench_xenpure(kernel, transport, args.n, rows)
        sys.path.insert(0, "/usr/lib/xen-4.17/lib/python")
        try:
            import xen.lowlevel.xs as cxs  # type: ignore[import-not-found]

            h = cxs.xs()
            rows.append(("C binding xen.lowlevel.xs", "read", timed(args.n, lambda i: h.read("", PATH))))
            rows.append(
                ("C binding xen.lowlevel.xs", "write", timed(args.n, lambda i: h.write("", "/bench/x", str(i))))
            )
        except Exception as e:  # report, do not hide, a peer that cannot run
            print(f"C binding unavailable: {e!r}", file=sys.stderr)
        try:
            from pyxs import Client as PyxsClient  # type: ignore[import-not-found]

            with PyxsClient(unix_socket_path=SOCKET) as c:
                rows.append(("pyxs (socket)", "read", timed(args.n, lambda i: c.read(PATH.encode()))))
                rows.append(("pyxs (socket)", "write", timed(args.n, lambda i: c.write(b"/bench/x", str(i).encode()))))
        except Exception as e:
            print(f"pyxs unavailable: {e!r}", file=sys.stderr)

    base = {op: us for name, op, us in rows if name.startswith("C binding")}
    daemon = os.environ.get("XENPURE_LAB_XENSTORED", "sim" if args.sim else "?")
    print(f"{'client':56} {'op':6} {'us/op':>10} {'vs C':>7}   (n={args.n}, best of 3, xenstored: {daemon})")
    for name, op, us in rows:
        ratio = f"{us / base[op]:.2f}x" if op in base else "-"
        print(f"{name:56} {op:6} {us:10.1f} {ratio:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
