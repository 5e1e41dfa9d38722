"""The conformance tier's parametrization and its one gcc probe per release per session.

Rule 1: a release is compiled once per session, whatever the number of tests reading it; every test id
names the release and the record or header it checks (``test_record[4.17-struct xen_domctl]``).

Where the headers come from and when a missing one is a skip or a failure: ``xen_headers.py``. How a
catalogue becomes a C program and gcc's answers come back: ``cprobe.py``.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable
from typing import Any

import cprobe
import pytest
import xen_headers

from xenpure.hypercall.abi import RELEASES, catalogue


@functools.cache
def _catalogue(release: str) -> dict[str, Any]:
    # Cached from collection on: the tier checks the package as imported, not records a test registers
    # in the layout registry while it runs.
    cat: dict[str, Any] = catalogue(release)
    return cat


def _checkable() -> list[str]:
    return [r.name for r in RELEASES if xen_headers.missing(r.name) is None]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``release`` alone: every release in RELEASES, so one without headers shows up as a skip. With
    ``cname``, ``const_header`` or ``ioctl_header``: one test per record or header of each release that has
    headers here."""
    names = metafunc.fixturenames
    if "cname" in names:
        params = [(rel, r["cname"]) for rel in _checkable() for r in _catalogue(rel)["records"]]
        metafunc.parametrize(("release", "cname"), params, ids=[f"{r}-{c}" for r, c in params])
    elif "const_header" in names or "ioctl_header" in names:
        arg, kind = ("const_header", "constants") if "const_header" in names else ("ioctl_header", "ioctls")
        params = [
            (rel, h) for rel in _checkable() for h in sorted({c["header"] for c in _catalogue(rel)[kind].values()})
        ]
        metafunc.parametrize(("release", arg), params, ids=[f"{r}-{h}" for r, h in params])
    elif "release" in names:
        metafunc.parametrize("release", [r.name for r in RELEASES])


@pytest.fixture(scope="session")
def catalogue_of() -> Callable[[str], dict[str, Any]]:
    """``catalogue_of(release)``: the catalogue this session's probes measured."""
    return _catalogue


@pytest.fixture(scope="session")
def prober(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], cprobe.Probe]:
    """``prober(release)``: gcc's answers for that release's catalogue, compiled and run once per session."""
    done: dict[str, cprobe.Probe | str] = {}

    def get(release: str) -> cprobe.Probe:
        if release not in done:
            h = xen_headers.headers()[release]
            build = tmp_path_factory.mktemp(f"xen-{release}")
            try:
                done[release] = cprobe.probe(_catalogue(release), build, h.cflags, xen_headers.gcc() or "gcc")
            except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
                # Remember the failure: every test of this release fails with it, without recompiling.
                done[release] = f"probing Xen {release} with {h} failed: {e}"
        result = done[release]
        if isinstance(result, str):
            pytest.fail(result, pytrace=False)
        return result

    return get


# pytest asks for report headers before collecting, so this shows when the tier is run on its own
# (pytest tests/conformance); in a whole-suite run each failure names its headers instead.
def pytest_report_header(config: pytest.Config) -> list[str]:
    found = xen_headers.headers()
    lines = [f"conformance: gcc {xen_headers.gcc() or 'missing'}; require={int(xen_headers.REQUIRE)}"]
    for r in RELEASES:
        lines.append(f"  Xen {r.name}: {found.get(r.name, 'no headers')}")
    return lines
