"""Grant tables against the real thing, where only the lab can go: grants to and the grant table of a guest
started by `xl`, and what Xen refuses dom0. The scenarios both backends share are in tests/scenarios.

Runs inside the lab's dom0 only: ``tools/xenlab -- python3 -m pytest -v tests/lab/test_gnttab_lab.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import xenpure
from xenpure.errors import InvalidArgument, OperationNotPermitted
from xenpure.foreignmemory import ForeignMemory
from xenpure.gnttab import GnttabOps, GrantAllocator, GrantDevice


@pytest.fixture(scope="module")
def host() -> Iterator[xenpure.Host]:
    with xenpure.connect() as h:
        yield h


@pytest.fixture
def gntshr(host: xenpure.Host) -> Iterator[GrantAllocator]:
    with GrantAllocator.open(host.kernel) as g:
        yield g


@pytest.fixture
def gnttab(host: xenpure.Host) -> Iterator[GrantDevice]:
    with GrantDevice.open(host.kernel) as g:
        yield g


def test_dom0_cannot_acquire_its_own_grant_table(host: xenpure.Host) -> None:
    """XENMEM_acquire_resource of the caller's own grant table answers EPERM (observed on Xen 4.17), so the
    entries gntalloc writes are checked through a guest's table instead (test_foreign_lab.py)."""
    with ForeignMemory.open(host.kernel) as fm, pytest.raises(OperationNotPermitted):
        fm.map_grant_table(0, 1)


def test_a_grant_to_another_domain_is_refused(gntshr: GrantAllocator, gnttab: GrantDevice, guest: Any) -> None:
    """Granted to the guest, not to dom0: gntdev's map fails with EINVAL (observed on Linux 6.1 / Xen 4.17),
    the same answer tests/sim/test_gnttab.py holds the simulator to."""
    with gntshr.share_pages(guest.domid, 1) as share, pytest.raises(InvalidArgument):
        gnttab.map_grant_ref(0, share.refs[0])


def test_gnttabop(host: xenpure.Host, guest: Any) -> None:
    ops = GnttabOps(host.privcmd)
    size = ops.query_size(0)
    assert 1 <= size.nr_frames <= size.max_nr_frames
    assert ops.get_version(0) == 1
    assert ops.set_version(1) == 1
    gsize = ops.query_size(guest.domid)
    frames = ops.setup_table(guest.domid, gsize.nr_frames)
    assert len(frames) == gsize.nr_frames and all(frames)
