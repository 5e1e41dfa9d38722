#!/usr/bin/env python3
"""Create-to-paused time of a PV guest: xenpure's pure-Python builder against `xl create -p`.

Rule 1: same kernel, same ramdisk, same memory, same run; only the ratio means anything (QEMU/TCG).

    tools/xenlab -- python3 bench/create.py -n 3

For the lab guest's ELF kernel (vmlinux) and its xz bzImage (vmlinuz), best of ``-n`` rounds each of
`xl create -p` (then `xl destroy`) and ``Host.create`` (then ``Domain.destroy``); the clock covers the
command / call only, up to a paused domain ready to unpause. ``--steps`` also prints where xenpure's time
goes in its best round: ``prepare`` (read, decompress, check the kernel; plan the layout) and each build step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import xenpure
from xenpure.domain import Domain, load_xl_config
from xenpure.domain._builder import build_pv, prepare

GUEST = Path("/var/lib/xenpure-lab/guest")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3, help="rounds per side and kernel (best is kept)")
    ap.add_argument("--steps", action="store_true", help="print xenpure's time per build step (best round)")
    args = ap.parse_args()
    if not (GUEST / "guest.cfg").exists():
        print(f"no lab guest in {GUEST}: run inside tools/xenlab", file=sys.stderr)
        return 2
    base = load_xl_config(GUEST / "guest.cfg")
    rows = []
    breakdown: dict[str, list[tuple[str, float]]] = {}
    with xenpure.connect() as host:
        for kernel in ("vmlinux", "vmlinuz"):
            t_xl, t_xp = [], []
            for i in range(args.n):
                name = f"bench-xl-{os.getpid()}-{kernel}-{i}"
                t0 = time.monotonic()
                subprocess.run(["xl", "create", "-p", str(GUEST / "guest.cfg"), f'name="{name}"',
                                f'kernel="{GUEST / kernel}"'], check=True, capture_output=True,
                               stdin=subprocess.DEVNULL)
                t_xl.append(time.monotonic() - t0)
                subprocess.run(["xl", "destroy", name], check=True, capture_output=True)
                cfg = dataclasses.replace(base, name=f"bench-xp-{os.getpid()}-{kernel}-{i}", kernel=GUEST / kernel)
                t0 = time.monotonic()
                p = prepare(cfg)  # what Host.create does: prepare, then build_pv
                t_prep = time.monotonic() - t0
                report = build_pv(host, cfg, prepared=p)
                t_xp.append(time.monotonic() - t0)
                del p
                Domain(host, report.domid).destroy()
                if t_xp[-1] == min(t_xp):
                    breakdown[kernel] = [("prepare", t_prep), *report.steps]
            rows.append((kernel, min(t_xl), min(t_xp)))
    print(f"create -> paused, {base.memory} MiB, ramdisk {GUEST / 'initrd.cpio.gz'}; best of {args.n}")
    print("| kernel | xl create -p s | xenpure Host.create s | xenpure / xl |")
    print("| --- | ---: | ---: | ---: |")
    for kernel, a, b in rows:
        print(f"| {kernel} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
    if args.steps:
        for kernel, steps in breakdown.items():
            print(f"xenpure {kernel}, best round: " + ", ".join(f"{name} {t:.2f}" for name, t in steps if t >= 0.005))
    return 0


if __name__ == "__main__":
    sys.exit(main())
