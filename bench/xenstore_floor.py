#!/usr/bin/env python3
"""How fast can a Python xenstore read be? The C binding, xenpure's ``Client.read``, and a raw client that
writes a hand-packed READ and takes the reply with one read (plainly blocking, with SO_RCVTIMEO, or after
select), interleaved, in the lab's dom0. The raw client is the floor a Python client could reach: what
xenpure spends above it is its own code (bench/README.md, "The xenstore client").

    tools/xenlab -- python3 -u bench/xenstore_floor.py
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable

PATH = "/local/domain/0/name"
SOCKET = "/run/xenstored/socket"
HEADER = struct.Struct("<IIII")  # struct xsd_sockmsg
XS_READ = 2


def raw(variant: str) -> Callable[[], None]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(SOCKET)
    fd = s.fileno()
    if variant == "SO_RCVTIMEO":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 28, 500000))
    payload = PATH.encode() + b"\0"
    req_id = 0

    def op() -> None:
        nonlocal req_id
        req_id += 1
        os.write(fd, HEADER.pack(XS_READ, req_id, 0, len(payload)) + payload)
        if variant == "select":
            select.select([fd], [], [], 30)
        reply = os.read(fd, 65536)
        # C xenstored writes a reply's header and payload separately: a read may bring the header alone.
        while len(reply) < HEADER.size or len(reply) < HEADER.size + HEADER.unpack_from(reply)[3]:
            reply += os.read(fd, 65536)
        if HEADER.unpack_from(reply)[1] != req_id:
            raise RuntimeError("reply to another request")

    op.sock = s  # type: ignore[attr-defined]  # keep the socket alive with the closure
    return op


def main() -> int:
    from xenpure.kernel import LinuxKernel
    from xenpure.xenstore import Client

    sys.path.insert(0, "/usr/lib/xen-4.17/lib/python")
    import xen.lowlevel.xs as cxs  # type: ignore[import-not-found]

    h = cxs.xs()
    xs = Client(LinuxKernel().connect_socket(SOCKET))
    cases: dict[str, Callable[[], object]] = {
        "C binding xen.lowlevel.xs": lambda: h.read("", PATH),
        "xenpure Client.read": lambda: xs.read(PATH),
        "raw: write, blocking read": raw("blocking"),
        "raw: write, read with SO_RCVTIMEO": raw("SO_RCVTIMEO"),
        "raw: write, select, read": raw("select"),
    }
    n, rounds = 500, 5
    best = dict.fromkeys(cases, float("inf"))
    for fn in cases.values():
        fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            t = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t) / n * 1e6)
    c = best["C binding xen.lowlevel.xs"]
    print(f"{'client':36} {'us/read':>9} {'vs C':>6}   (n={n}, best of {rounds} interleaved rounds)")
    for name, us in best.items():
        print(f"{name:36} {us:9.1f} {us / c:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
