#!/usr/bin/env python3
"""Listing domains and noticing deaths: xenpure against the C binding, as ratios from one lab run.

    tools/xenlab -- python3 bench/lifecycle.py --guests 5 -n 200

1. list: with N guests of 128 MiB running (plus Domain-0), ``Host.domain_infos()`` (one XEN_SYSCTL_getdomaininfolist
   batch) and ``Host.domains()`` against ``xen.lowlevel.xc.xc().domain_getinfo()`` (libxenctrl), best of 3
   rounds of n calls each.
2. death to event: each guest is destroyed with the C binding (``xc.domain_destroy``), and we time how long
   until (a) xenpure's ``Host.events()`` yields DESTROYED and (b) the C binding ``xen.lowlevel.xs`` sees its
   ``@releaseDomain`` watch fire (the notification C toolstacks wait on). Medians over the guests.
"""

from __future__ import annotations

import argparse
import faulthandler
import statistics
import subprocess
import sys
import threading
import time

import xenpure
from xenpure import EventKind

sys.path.insert(0, "/usr/lib/xen-4.17/lib/python")
import xen.lowlevel.xc as xc_mod  # type: ignore[import-not-found]
import xen.lowlevel.xs as xs_mod  # type: ignore[import-not-found]

GUEST_CFG = "/var/lib/xenpure-lab/guest/guest.cfg"


def best(fn, n: int, rounds: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return min(times)


def c_release_latency(domid_destroy) -> float:  # type: ignore[no-untyped-def]
    xs = xs_mod.xs()
    xs.watch("@releaseDomain", "bench")
    xs.read_watch()  # the registration's own firing
    t0 = time.perf_counter()
    domid_destroy()
    xs.read_watch()
    latency = time.perf_counter() - t0
    xs.unwatch("@releaseDomain", "bench")
    xs.close()
    return latency


def xl_create(name: str) -> None:
    """`xl create` one guest; once more if xl itself died of a signal (seen under TCG now and then)."""
    argv = ["xl", "create", GUEST_CFG, f'name="{name}"', "memory=128"]
    for attempt in (1, 2):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if out.returncode == 0:
            return
        if out.returncode < 0 and attempt == 1:
            subprocess.run(["xl", "destroy", name], capture_output=True)
            continue
        raise SystemExit(f"xl create {name} failed (exit {out.returncode}): {out.stderr.strip()}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--guests", type=int, default=5)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--deadline", type=float, default=900, help="seconds before the bench gives up, printing "
                    "every thread's stack (a hung C watch or xl must not hold the lab)")
    args = ap.parse_args()
    faulthandler.dump_traceback_later(args.deadline, exit=True)
    xc = xc_mod.xc()
    names = [f"bench{i}" for i in range(args.guests)]
    try:
        for name in names:
            xl_create(name)
        with xenpure.connect() as host:
            doms = len(host.domain_infos())
            ours = best(host.domain_infos, args.n)
            ours_objs = best(host.domains, args.n)
            theirs = best(xc.domain_getinfo, args.n)
            print(f"list: {doms} domains, n={args.n}", flush=True)
            print(f"  xc.domain_getinfo()     {theirs * 1e6:9.1f} us/call")
            print(f"  Host.domain_infos()     {ours * 1e6:9.1f} us/call  ({ours / theirs:.2f}x C)")
            print(f"  Host.domains()          {ours_objs * 1e6:9.1f} us/call  ({ours_objs / theirs:.2f}x C)")
            sys.stdout.flush()

            domids = {i.domid for i in host.domain_infos()} - {0}
            half = sorted(domids)[: len(domids) // 2]
            rest = sorted(domids)[len(domids) // 2 :]
            py_lat, c_lat = [], []
            for domid in half:
                with host.events(timeout=60) as stream:
                    got = threading.Event()
                    t0 = time.perf_counter()
                    xc.domain_destroy(domid)
                    for ev in stream:
                        if ev.domid == domid and ev.kind is EventKind.DESTROYED:
                            py_lat.append(time.perf_counter() - t0)
                            got.set()
                            break
                    if not got.is_set():
                        print(f"  no DESTROYED event for {domid} within 60 s")
            for domid in rest:
                c_lat.append(c_release_latency(lambda d=domid: xc.domain_destroy(d)))
            if py_lat and c_lat:
                p, c = statistics.median(py_lat), statistics.median(c_lat)
                print(f"death to notification (median of {len(py_lat)} / {len(c_lat)} guests):")
                print(f"  xs @releaseDomain watch {c * 1e3:9.1f} ms")
                print(f"  Host.events() DESTROYED {p * 1e3:9.1f} ms  ({p / c:.2f}x C)")
    finally:
        for name in names:
            subprocess.run(["xl", "destroy", name], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
