"""The conformance tier's plumbing: which Xen headers exist here, and one gcc probe per release per session.

Rule 1: a release whose headers (or gcc) are missing is skipped with the reason shown, never passed; with
``XENPURE_REQUIRE_CONFORMANCE=1`` (CI) every skip that installing packages could cure is a failure instead.

Headers come from two places, each mapped to a release row by its Debian package version:

* the system's ``libxen-dev`` (``dpkg-query``), compiled without extra ``-I``;
* the cache ``tools/fetch-xen-headers`` fills (``$XENPURE_HEADERS_CACHE``, default
  ``~/.cache/xenpure-headers/<version>/usr/include``), put first on the include path so ``<xen/...>`` is that
  release's while Linux's uapi headers still come from the system.

The system wins when both have a release. Releases with neither are still listed (``test_interface_version``
skips them, naming the reason) so a missing release is visible, not silently untested.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cprobe
import pytest

from xenpure.hypercall.abi import RELEASES, catalogue

REQUIRE = os.environ.get("XENPURE_REQUIRE_CONFORMANCE") == "1"
ROOT = Path(__file__).resolve().parents[2]


def _load_fetcher() -> ModuleType:
    # The fetch script is the one place that knows the cache layout and which releases can be fetched.
    path = ROOT / "tools" / "fetch-xen-headers"
    loader = importlib.machinery.SourceFileLoader("fetch_xen_headers", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


fetcher = _load_fetcher()


@dataclass(frozen=True)
class Headers:
    """One release's Xen public headers: the package version and the include dir (None: the system's)."""

    release: str
    version: str
    include: Path | None

    @property
    def cflags(self) -> list[str]:
        # domctl.h and sysctl.h #error unless the includer declares itself a toolstack.
        flags = ["-D__XEN_TOOLS__"]
        return flags if self.include is None else [*flags, "-I", str(self.include)]

    def __str__(self) -> str:
        return f"libxen-dev {self.version} ({self.include or 'system'})"


def _system_version() -> str | None:
    if shutil.which("dpkg-query") is None or not Path("/usr/include/xen/xen.h").is_file():
        return None
    q = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libxen-dev"], capture_output=True, text=True, check=False)
    return q.stdout.strip() or None if q.returncode == 0 else None


@functools.cache
def headers() -> dict[str, Headers]:
    """Every release that has headers on this machine."""
    found = {rel: Headers(rel, ver, inc) for rel, (ver, inc) in fetcher.cached().items()}
    system = _system_version()
    if system and fetcher.release_of(system):
        found[fetcher.release_of(system)] = Headers(fetcher.release_of(system), system, None)
    return found


@functools.cache
def gcc() -> str | None:
    return shutil.which("gcc")


def missing(release: str) -> tuple[str, bool] | None:
    """Why ``release`` can't be checked here and whether CI is expected to have cured that; None if it can."""
    if gcc() is None:
        return "gcc not found (apt-get install gcc)", True
    if release not in headers():
        if release in fetcher.SUITES:
            return f"no Xen {release} headers: run tools/fetch-xen-headers {release}", True
        return (
            f"no Xen {release} headers: no Debian suite packages {release} "
            f"(tools/fetch-xen-headers --list); unpack its public headers into "
            f"{fetcher.cache_root()}/{release}.<patch>/usr/include/xen to check it",
            False,
        )
    return None


def skip_or_fail(reason: str, curable: bool) -> None:
    if REQUIRE and curable:
        pytest.fail(f"XENPURE_REQUIRE_CONFORMANCE=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@functools.cache
def cat(release: str) -> dict[str, Any]:
    return catalogue(release)


@functools.cache
def checks(release: str) -> list[cprobe.Check]:
    return cprobe.checks(cat(release))


def _checkable() -> list[str]:
    return [r.name for r in RELEASES if missing(r.name) is None]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test per release (``release``), per record (``cname``), per header of constants or ioctls
    (``const_header``/``ioctl_header``). Only releases with headers get the per-record tests."""
    names = metafunc.fixturenames
    if "cname" in names:
        params = [(rel, r["cname"]) for rel in _checkable() for r in cat(rel)["records"]]
        metafunc.parametrize(("release", "cname"), params, ids=[f"{r}-{c}" for r, c in params])
    elif "const_header" in names or "ioctl_header" in names:
        arg, kind = ("const_header", "constants") if "const_header" in names else ("ioctl_header", "ioctls")
        params = [(rel, h) for rel in _checkable() for h in sorted({c["header"] for c in cat(rel)[kind].values()})]
        metafunc.parametrize(("release", arg), params, ids=[f"{r}-{h}" for r, h in params])
    elif "release" in names:
        metafunc.parametrize("release", [r.name for r in RELEASES])


@pytest.fixture(scope="session")
def prober(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], cprobe.Probe]:
    """``prober(release)``: gcc's answers for that release, compiled and run once per session."""
    done: dict[str, cprobe.Probe | str] = {}

    def get(release: str) -> cprobe.Probe:
        if release not in done:
            h = headers()[release]
            build = tmp_path_factory.mktemp(f"xen-{release}")
            try:
                done[release] = cprobe.probe(cat(release), build, h.cflags, gcc() or "gcc")
            except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
                # Remember the failure: every test of this release fails with it, without recompiling.
                done[release] = f"probing Xen {release} with {h} failed: {e}"
        result = done[release]
        if isinstance(result, str):
            pytest.fail(result, pytrace=False)
        return result

    return get


# pytest asks for report headers before collecting, so this shows when the tier is run on its own
# (pytest tests/conformance); a whole-suite run names the headers in each failure instead.
def pytest_report_header(config: pytest.Config) -> list[str]:
    found = headers()
    lines = [f"conformance: gcc {gcc() or 'missing'}; require={int(REQUIRE)}"]
    for r in RELEASES:
        lines.append(f"  Xen {r.name}: {found[r.name] if r.name in found else 'no headers'}")
    return lines
