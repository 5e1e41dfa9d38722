#!/usr/bin/env python3
"""Listing domains and noticing deaths: xenpure against the C binding, as ratios from one lab run.

    tools/xenlab -- python3 bench/lifecycle.py --guests 5 -n 200

1. list: with N guests of 128 MiB running (plus Domain-0), ``Host.domain_infos()`` (one XEN_SYSCTL_getdomaininfolist
   batch) and ``Host.domains()`` against ``xen.lowlevel.xc.xc().domain_getinfo()`` (libxenctrl), best of 3
   rounds of n calls each (interleaved), once the guests have finished booting.
2. death to event: each guest is destroyed with the C binding (``xc.domain_destroy``), and we time how long
   until (a) xenpure's ``Host.events()`` yields DESTROYED and (b) the C binding ``xen.lowlevel.xs`` sees its
   ``@releaseDomain`` watch fire (the notification C toolstacks wait on). Medians over the guests. For the C
   half we also note whether the domain was still listed (dying) when the watch fired, and when it left
   getdomaininfolist: what DESTROYED waits for, and which no notification announces.
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import xenpure
from xenpure import EventKind

sys.path.insert(0, "/usr/lib/xen-4.17/lib/python")
import xen.lowlevel.xc as xc_mod  # type: ignore[import-not-found]
import xen.lowlevel.xs as xs_mod  # type: ignore[import-not-found]

GUEST_CFG = "/var/lib/xenpure-lab/guest/guest.cfg"


def best(fns: dict[str, Callable[[], object]], n: int, rounds: int = 3) -> dict[str, float]:
    """Seconds per call of each function, best of ``rounds`` rounds of ``n`` calls; the rounds are interleaved
    (each round times every function) so that a slower stretch of the lab does not land on one of them."""
    out = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out[name] = min(out[name], (time.perf_counter() - t0) / n)
    return out


def settle(xc, domids: set[int], limit: float = 90.0) -> float:  # type: ignore[no-untyped-def]
    """Wait (up to ``limit`` s) until the guests have finished booting, i.e. used less than 2% of a CPU each
    over one second: under TCG a booting guest takes dom0's CPUs from whatever is measured first. Returns the
    seconds waited."""
    t0 = time.monotonic()
    prev = None
    while time.monotonic() - t0 < limit:
        cpu = sum(i["cpu_time"] for i in xc.domain_getinfo() if i["domid"] in domids)
        if prev is not None and cpu - prev < 0.02e9 * len(domids):
            break
        prev = cpu
        time.sleep(1.0)
    return time.monotonic() - t0


def listed(xc, domid: int) -> bool:  # type: ignore[no-untyped-def]
    """Whether getdomaininfo still lists ``domid`` (dying or not)."""
    try:
        infos = xc.domain_getinfo(domid, 1)
    except xc_mod.Error as e:  # ESRCH when no domain from domid up is left
        if e.args[0] == errno.ESRCH:
            return False
        raise
    return bool(infos) and infos[0]["domid"] == domid


def c_release_latency(xc, domid: int) -> tuple[float, bool, float | None]:  # type: ignore[no-untyped-def]
    """Destroy ``domid`` with the C binding: (seconds until @releaseDomain fired, whether the domain was still
    listed then, seconds until it left getdomaininfolist (polled every ms; None: not within 10 s))."""
    xs = xs_mod.xs()
    xs.watch("@releaseDomain", "bench")
    xs.read_watch()  # the registration's own firing
    t0 = time.perf_counter()
    xc.domain_destroy(domid)
    xs.read_watch()
    latency = time.perf_counter() - t0
    still = listed(xc, domid)
    gone: float | None = latency if not still else None
    while gone is None and time.perf_counter() - t0 < 10:
        time.sleep(0.001)
        if not listed(xc, domid):
            gone = time.perf_counter() - t0
    xs.unwatch("@releaseDomain", "bench")
    xs.close()
    return latency, still, gone


#: Seconds one `xl create` may take (a healthy one takes 3-20 s under TCG) before it counts as hung.
XL_CREATE_TIMEOUT = 60
XL_ATTEMPTS = 3


def xl_destroy(name: str) -> None:
    try:
        subprocess.run(["xl", "destroy", name], capture_output=True, timeout=XL_CREATE_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"  xl destroy {name}: no answer within {XL_CREATE_TIMEOUT} s", flush=True)


def xl_create(name: str) -> None:
    """`xl create -e` one guest, retried when xl dies of a signal or hangs.

    In the lab, native processes crash or hang now and then under TCG (xl has died of SIGABRT and SIGSEGV, and
    hung after the domain was fully built, never returning): a hung attempt is killed after XL_CREATE_TIMEOUT
    and whatever it left is destroyed before the next. ``-e``: no monitoring daemon per guest stays behind (we
    destroy the guests ourselves), so none wakes on every @releaseDomain while deaths are being timed.
    """
    argv = ["xl", "create", "-e", GUEST_CFG, f'name="{name}"', "memory=128"]
    for attempt in range(1, XL_ATTEMPTS + 1):
        t0 = time.monotonic()
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=XL_CREATE_TIMEOUT)
        except subprocess.TimeoutExpired:
            why = f"hung for {XL_CREATE_TIMEOUT} s"
        else:
            if out.returncode == 0:
                print(f"  xl create {name}: {time.monotonic() - t0:.1f} s", flush=True)
                return
            if out.returncode > 0:  # xl's own verdict (config, memory...): retrying would not help
                raise SystemExit(f"xl create {name} failed (exit {out.returncode}): {out.stderr.strip()}")
            why = f"died of signal {-out.returncode}"
        print(f"  xl create {name}: {why} (attempt {attempt} of {XL_ATTEMPTS}); destroying what it left", flush=True)
        xl_destroy(name)
    raise SystemExit(f"xl create {name}: no success in {XL_ATTEMPTS} attempts")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--guests", type=int, default=5)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--deadline", type=float, default=600, help="seconds before the bench gives up, printing "
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
            waited = settle(xc, {i.domid for i in host.domain_infos()} - {0})
            print(f"  guests idle after {waited:.0f} s", flush=True)
            t = best({"infos": host.domain_infos, "domains": host.domains, "xc": xc.domain_getinfo}, args.n)
            ours, ours_objs, theirs = t["infos"], t["domains"], t["xc"]
            print(f"list: {doms} domains, n={args.n}", flush=True)
            print(f"  xc.domain_getinfo()     {theirs * 1e6:9.1f} us/call")
            print(f"  Host.domain_infos()     {ours * 1e6:9.1f} us/call  ({ours / theirs:.2f}x C)")
            print(f"  Host.domains()          {ours_objs * 1e6:9.1f} us/call  ({ours_objs / theirs:.2f}x C)")
            sys.stdout.flush()

            domids = {i.domid for i in host.domain_infos()} - {0}
            half = sorted(domids)[: len(domids) // 2]
            rest = sorted(domids)[len(domids) // 2 :]
            py_lat, c_lat, c_gone, c_still = [], [], [], 0
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
                lat, still, gone = c_release_latency(xc, domid)
                c_lat.append(lat)
                c_still += still
                if gone is not None:
                    c_gone.append(gone)
            if py_lat and c_lat:
                p, c = statistics.median(py_lat), statistics.median(c_lat)
                print(f"death to notification (median of {len(py_lat)} / {len(c_lat)} guests):")
                print(f"  xs @releaseDomain watch {c * 1e3:9.1f} ms")
                print(f"  Host.events() DESTROYED {p * 1e3:9.1f} ms  ({p / c:.2f}x C)")
            if c_gone:
                # Xen raises no notification when a dying domain finally leaves the list, so DESTROYED (which
                # needs it gone) can only come from a snapshot taken after this point.
                g = statistics.median(c_gone)
                print(f"  (C half: still listed, dying, when @releaseDomain fired: {c_still} of {len(c_lat)}; "
                      f"gone from getdomaininfolist {g * 1e3:.1f} ms after destroy, median of {len(c_gone)})")
    finally:
        for name in names:
            xl_destroy(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
