"""Which Xen headers this machine has, per release, and what to do when a release has none.

Rule 1: a release that cannot be checked is skipped with the reason shown, never passed; under
``XENPURE_REQUIRE_CONFORMANCE=1`` (CI) every skip that installing packages cures is a failure instead.

Headers come from two places, each mapped to a release row by its Debian package version:

* the system's ``libxen-dev`` (``dpkg-query``), compiled without extra ``-I``;
* the cache ``tools/fetch-xen-headers`` fills (``$XENPURE_HEADERS_CACHE``, default
  ``~/.cache/xenpure-headers/<version>/usr/include``), put first on the include path so ``<xen/...>`` is
  that release's, while Linux's uapi headers still come from the system.

The system wins when both have a release.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

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
    if shutil.which("dpkg-query") is None:
        return None
    q = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", "libxen-dev"],
        capture_output=True,
        text=True,
        check=False,
    )
    status, _, version = q.stdout.partition(" ")
    # "config-files" (removed, not purged) still has a version but no headers.
    return version.strip() if q.returncode == 0 and status == "installed" else None


@functools.cache
def headers() -> dict[str, Headers]:
    """Every release that has headers on this machine."""
    found = {rel: Headers(rel, ver, inc) for rel, (ver, inc) in fetcher.cached().items()}
    version = _system_version()
    release = fetcher.release_of(version) if version else None
    if version and release:
        found[release] = Headers(release, version, None)
    return found


@functools.cache
def gcc() -> str | None:
    return shutil.which("gcc")


@functools.cache
def gcc_target() -> str:
    path = gcc()
    if path is None:
        return "none"
    return subprocess.run([path, "-dumpmachine"], capture_output=True, text=True, check=False).stdout.strip()


def missing(release: str | None = None) -> tuple[str, bool] | None:
    """Why ``release`` (or, for None, anything) can't be checked here, and whether installing packages
    cures that; None if it can be checked."""
    if gcc() is None:
        return "gcc not found (apt-get install gcc)", True
    if not gcc_target().startswith("x86_64-"):
        # The catalogue is x86_64's ABI; another target's layouts would differ for good reasons.
        return f"gcc targets {gcc_target()}, the catalogue describes x86_64", False
    if release is None:
        return None if headers() else ("no Xen headers (apt-get install libxen-dev)", True)
    if release not in headers():
        if release in fetcher.SUITES:
            return f"no Xen {release} headers: run tools/fetch-xen-headers {release}", True
        return (
            f"no Xen {release} headers here, and no Debian suite ships them (tools/fetch-xen-headers --list): "
            f"unpack Xen {release}'s xen/include/public into "
            f"{fetcher.cache_root()}/{release}.<patch>/usr/include/xen to check it",
            False,
        )
    return None


def skip_or_fail(reason: str, curable: bool) -> NoReturn:
    """Skip with ``reason``, or fail when CI promised the cure (XENPURE_REQUIRE_CONFORMANCE=1)."""
    if REQUIRE and curable:
        pytest.fail(f"XENPURE_REQUIRE_CONFORMANCE=1 but {reason}", pytrace=False)
    pytest.skip(reason)
