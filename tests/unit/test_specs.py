"""The committed specs/abi-*.json are exactly what tools/gen-specs would write from the catalogue today.

Rule 1: a spec file is generated output; any difference from the catalogue (a changed offset, a missing
release, a release no longer declared) fails here, and the fix is always ``tools/gen-specs``.
"""

from __future__ import annotations

import difflib
import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from xenpure.hypercall.abi import RELEASES

ROOT = Path(__file__).resolve().parents[2]
FIX = "run tools/gen-specs and commit specs/"


def _gen_specs() -> ModuleType:
    # The generator's own render() defines the expected text, so the test and the tool cannot drift apart.
    loader = importlib.machinery.SourceFileLoader("gen_specs", str(ROOT / "tools" / "gen-specs"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


gen_specs = _gen_specs()
# Rendered at import, i.e. at collection, before any test body runs: the specs describe the package as
# imported, not whatever a test registers in the layout registry while it runs.
EXPECTED = {r.name: gen_specs.render(r.name) for r in RELEASES}


@pytest.mark.parametrize("release", [r.name for r in RELEASES])
def test_spec_matches_catalogue(release: str) -> None:
    path = ROOT / "specs" / f"abi-{release}.json"
    if not path.is_file():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: {FIX}", pytrace=False)
    want, have = EXPECTED[release], path.read_text()
    if have != want:
        diff = difflib.unified_diff(
            have.splitlines(), want.splitlines(), f"{path.name} (committed)", f"{path.name} (catalogue)",
            lineterm="", n=1,
        )  # fmt: skip
        shown = list(diff)
        more = f"\n… {len(shown) - 60} more diff lines" if len(shown) > 60 else ""
        pytest.fail(f"{path.relative_to(ROOT)} is stale: {FIX}\n" + "\n".join(shown[:60]) + more, pytrace=False)


def test_no_spec_for_an_undeclared_release() -> None:
    declared = {f"abi-{r.name}.json" for r in RELEASES}
    stale = sorted(p.name for p in (ROOT / "specs").glob("abi-*.json") if p.name not in declared)
    assert not stale, f"specs for releases not in RELEASES: {stale}; {FIX}"
