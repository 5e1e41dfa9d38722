"""pytest fixtures for testing code that uses xenpure, without Xen.

Rule 1: each test gets its own simulated hypervisor; nothing is shared between tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..domain import Host
from ._hypervisor import SimXen
from ._kernel import SimKernel


@pytest.fixture
def sim_xen() -> SimXen:
    """A fresh simulated Xen 4.17 with Domain-0."""
    return SimXen()


@pytest.fixture
def sim_host(sim_xen: SimXen) -> Iterator[Host]:
    """A ``Host`` connected to ``sim_xen`` through the simulated kernel."""
    with Host(SimKernel(sim_xen)) as host:
        yield host
