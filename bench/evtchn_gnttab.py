#!/usr/bin/env python3
"""xenpure against libxenevtchn/libxengnttab, as ratios measured in one run inside the lab's dom0.

    gcc -O2 -o bench/.build/peers bench/c/peers.c -lxenevtchn -lxengnttab   # on the host (Debian's libxen-dev)
    tools/xenlab -- python3 bench/evtchn_gnttab.py -n 2000

Two loops, the same in C (bench/c/peers.c) and here:
  evtchn  notify on one end of a dom0 loopback channel, wait for the fd, read the pending port, unmask it;
  gnttab  map one page dom0 granted to itself (gntshr), write a byte, unmap.
Each is run three times per side; the best of each is compared (TCG timing is noisy).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import xenpure
from xenpure.evtchn import EventChannels
from xenpure.gnttab import GrantAllocator, GrantDevice

PEERS = Path(__file__).resolve().parent / ".build" / "peers"


def py_evtchn(host: xenpure.Host, n: int) -> float:
    with EventChannels.open(host.kernel) as evt:
        a = evt.bind_unbound_port(0)
        b = evt.bind_interdomain(0, a.port)
        assert evt.pending(10.0) == b.port  # the bind's own event
        b.unmask()
        t0 = time.perf_counter()
        for _ in range(n):
            b.notify()
            if evt.pending(10.0) != a.port:
                raise RuntimeError("wrong or no port")
            a.unmask()
        return time.perf_counter() - t0


def py_gnttab(host: xenpure.Host, n: int) -> float:
    with GrantAllocator.open(host.kernel) as gntshr, GrantDevice.open(host.kernel) as gnttab:
        with gntshr.share_pages(0, 1) as share:
            ref = share.refs[0]
            t0 = time.perf_counter()
            for i in range(n):
                with gnttab.map_grant_ref(0, ref) as m:
                    m.view[0] = i & 0xFF
            return time.perf_counter() - t0


def c_peer(what: str, n: int) -> float:
    out = subprocess.run([str(PEERS), what, str(n)], check=True, capture_output=True, text=True).stdout.split()
    assert out[0] == what and int(out[1]) == n
    return float(out[2])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=2000, help="iterations per loop")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not PEERS.exists():
        print(f"no C peers at {PEERS}: build them first (see the docstring)", file=sys.stderr)
        return 2
    with xenpure.connect() as host:
        rows = []
        for what, py in (("evtchn", py_evtchn), ("gnttab", py_gnttab)):
            c_best = min(c_peer(what, args.n) for _ in range(args.rounds))
            py_best = min(py(host, args.n) for _ in range(args.rounds))
            rows.append((what, args.n, c_best, py_best))
    print(f"{'loop':8} {'n':>6} {'C us/op':>10} {'xenpure us/op':>14} {'ratio':>7}")
    for what, n, c, py in rows:
        print(f"{what:8} {n:6d} {c / n * 1e6:10.1f} {py / n * 1e6:14.1f} {py / c:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
