"""The scenario tier: one suite, two backends. Each test here runs unchanged against whichever Xen is present.

Rule 1: a scenario sees only ``host`` (a ``xenpure.Host``) and the backend-neutral helpers below; what it
asserts must hold on real Xen and on the simulator alike, so the simulator is held to Xen's answers.

- Inside a Xen control domain (the lab's dom0: ``tools/xenlab -- python3 -m pytest tests/scenarios``) the
  backend is the real kernel and hypervisor.
- Anywhere else it is the simulated host (``SimKernel`` over a fresh ``SimXen`` per test), through the same
  ioctl, mmap and hypercall encode/decode path.

Tests that need what only one backend has (the simulator's internals, or a guest started by ``xl``) stay in
tests/sim and tests/lab.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator

import pytest

import xenpure
from xenpure.domain import Host
from xenpure.testing import SimKernel, SimXen, in_control_domain

REAL = in_control_domain()


def pytest_report_header() -> str:
    return f"scenarios backend: {'real Xen (this is a dom0)' if REAL else 'the simulated host'}"


@pytest.fixture
def host() -> Iterator[Host]:
    if REAL:
        with xenpure.connect() as h:
            yield h
    else:
        xen = SimXen()
        assert xen.memory.fd >= 0  # the host's machine memory (a memfd) exists before any leak check counts
        with Host(SimKernel(xen)) as h:
            yield h


@pytest.fixture
def mappings(host: Host) -> Callable[[], int]:
    """How many Xen device mappings this process holds right now (a leak check, before and after)."""
    kernel = host.kernel
    if isinstance(kernel, SimKernel):
        return lambda: kernel.live_mappings

    def count() -> int:
        with open("/proc/self/maps") as f:
            return sum(1 for line in f if "/dev/xen" in line)

    return count


@pytest.fixture
def open_fds() -> Callable[[], set[str]]:
    """This process's open descriptors. Collects garbage first: an earlier test's simulated host closes its
    machine memory when it is collected, which must not count as this test's leak or cure."""

    def fds() -> set[str]:
        gc.collect()
        return set(os.listdir("/proc/self/fd"))

    return fds
