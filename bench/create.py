#!/usr/bin/env python3
"""Create-to-paused time of a PV guest: xenpure's pure-Python builder against `xl create -p`.

Rule 1: same kernel, same ramdisk, same memory, same run; only the ratio means anything (QEMU/TCG).

    tools/xenlab -- python3 bench/create.py -n 3

For the lab guest's ELF kernel (vmlinux) and its xz bzImage (vmlinuz), best of ``-n`` rounds each of
`xl create -p` (then `xl destroy`) and ``Host.create`` (then ``Domain.destroy``); the clock covers the
command / call only, up to a paused domain ready to unpause.
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
from xenpure.domain import load_xl_config

GUEST = Path("/var/lib/xenpure-lab/guest")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3, help="rounds per side and kernel (best is kept)")
    args = ap.parse_args()
    if not (GUEST / "guest.cfg").exists():
        print(f"no lab guest in {GUEST}: run inside tools/xenlab", file=sys.stderr)
        return 2
    base = load_xl_config(GUEST / "guest.cfg")
    rows = []
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
                d = host.create(cfg)
                t_xp.append(time.monotonic() - t0)
                d.destroy()
            rows.append((kernel, min(t_xl), min(t_xp)))
    print(f"create -> paused, {base.memory} MiB, ramdisk {GUEST / 'initrd.cpio.gz'}; best of {args.n}")
    print("| kernel | xl create -p s | xenpure Host.create s | xenpure / xl |")
    print("| --- | ---: | ---: | ---: |")
    for kernel, a, b in rows:
        print(f"| {kernel} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
