"""The xenstored conformance suite inside the lab's dom0, against the real daemons and xenpure's.

Rule 1: the suite itself lives in tests/xenstored_conformance; these wrappers only start a server, run the
suite against its socket in a child pytest, and report its summary (a failure shows the child's output).

- dom0's own daemon at /run/xenstored/socket, whichever the boot started (``tools/xenlab --xenstored
  oxenstored|c|xenpure``, seen here as ``XENPURE_LAB_XENSTORED``): the oxenstored test runs when it is
  oxenstored (the default), the C xenstored test when it is C (``tools/xenlab --xenstored c -- python3 -m
  pytest -v tests/lab/test_xenstored_lab.py``); each skips with the command that runs it otherwise.
  The C xenstored test runs last: one of its known failures (XSA-484) kills dom0's daemon, after which
  nothing in that boot can use xenstore.
- xenpure's xenstored, started with ``xenpure xenstored`` in dom0 (as a separate process, over its socket),
  and in the suite's own mode (in process, with unprivileged connections), under any dom0 daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "tests" / "xenstored_conformance"
THIS = "tests/lab/test_xenstored_lab.py"
DOM0_SOCKET = "/run/xenstored/socket"
#: dom0's own xenstore daemon in this boot (tools/xenlab --xenstored; oxenstored unless told).
DOM0_XENSTORED = os.environ.get("XENPURE_LAB_XENSTORED", "oxenstored")
#: Suite failures of the lab's C xenstored (Debian 12's 4.17), each a finding, documented in the suite's
#: README.md; the suite runs them last.
C_XENSTORED_KNOWN = {
    "test_xsa_484_reset_watches_inside_a_transaction": "RESET_WATCHES in a transaction kills the daemon",
}


def run_suite(socket_path: str, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "pytest", "-q", "-rsfE", "--tb=short", "-p", "no:cacheprovider", str(SUITE)]
    args += ["--xenstored-socket", socket_path, *extra]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    print(proc.stdout[-6000:])
    return proc


def wait_for(path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.1)


def test_conformance_oxenstored() -> None:
    """dom0's oxenstored: every test that can run over its socket passes (the differences are in
    tests/xenstored_conformance/README.md and accepted there)."""
    if DOM0_XENSTORED != "oxenstored":
        pytest.skip(f"dom0 runs {DOM0_XENSTORED}, not oxenstored: tools/xenlab -- python3 -m pytest -v {THIS}")
    proc = run_suite(DOM0_SOCKET)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


@pytest.fixture
def xenpure_xenstored(tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "socket")
    p = subprocess.Popen(
        [sys.executable, "-m", "xenpure", "xenstored", "--socket", sock, "--ro-socket", f"{sock}_ro"],
        cwd=ROOT,
    )
    try:
        wait_for(sock)
        yield sock
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0


def test_conformance_xenpure_daemon_in_dom0(xenpure_xenstored: str) -> None:
    """xenpure's xenstored as a separate process in dom0, driven like the real daemons (and with the
    xenstore-utils installed in dom0 as peers)."""
    proc = run_suite(xenpure_xenstored)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_conformance_xenpure_in_process() -> None:
    """The suite's default mode in dom0: xenpure's server started by the suite, unprivileged tests included."""
    args = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(SUITE)]
    env = {k: v for k, v in os.environ.items() if k != "XENSTORED_PATH"}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False, env=env)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-6000:]


def test_conformance_c_xenstored() -> None:
    """dom0's own C xenstored (Xen 4.17's, started by Debian's init script in a ``--xenstored c`` boot): every
    test passes but the known failures, each a finding (C_XENSTORED_KNOWN). Keep it last in its boot."""
    if DOM0_XENSTORED != "c":
        pytest.skip(f"dom0 runs {DOM0_XENSTORED}, not C: tools/xenlab --xenstored c -- python3 -m pytest -v {THIS}")
    proc = run_suite(DOM0_SOCKET)
    failed = {
        line.split("::")[-1].split()[0] for line in proc.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))
    }
    assert failed <= set(C_XENSTORED_KNOWN), proc.stdout[-6000:] + proc.stderr[-2000:]
    for name in sorted(failed):
        print(f"known C xenstored failure: {name}: {C_XENSTORED_KNOWN[name]}")
    assert " passed" in proc.stdout, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode in (0, 1), proc.stdout[-6000:] + proc.stderr[-2000:]  # 1: only known failures
