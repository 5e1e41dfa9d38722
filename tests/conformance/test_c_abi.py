"""The ABI catalogue against gcc and the real headers: every record, member, constant and ioctl number.

Rule 1: expected values are never written here; gcc measures them (see cprobe.py), the catalogue claims
them, and a test fails listing each field where the two disagree.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cprobe
import pytest
from xen_headers import headers, missing, skip_or_fail

from xenpure.hypercall.abi import release as release_row

Prober = Callable[[str], cprobe.Probe]


def _report(release: str, what: str, found: list[str]) -> None:
    if found:
        lines = "\n".join(f"  {m}" for m in found)
        pytest.fail(
            f"Xen {release} ({headers()[release]}), {what}: {len(found)} difference(s), ours vs gcc:\n{lines}",
            pytrace=False,
        )


def test_interface_version(release: str, prober: Prober) -> None:
    """The headers taken for a release speak that release row's domctl/sysctl interface versions.

    This checks the package version -> release mapping that every other test trusts. It is also where a
    release without headers here shows up: skipped, with the reason (failed under
    XENPURE_REQUIRE_CONFORMANCE=1 when installing packages would cure it).
    """
    why = missing(release)
    if why is not None:
        skip_or_fail(*why)
    p = prober(release)
    iface = release_row(release).iface
    found = []
    for macro, want in (("XEN_DOMCTL_INTERFACE_VERSION", iface.domctl), ("XEN_SYSCTL_INTERFACE_VERSION", iface.sysctl)):
        key = ("constants", macro)
        if key in p.errors:
            found.append(f"{macro}: {p.errors[key]}")
        elif key not in p.values:
            found.append(f"{macro}: not among the catalogue's constants, so not probed")
        elif p.values[key]["value"] != want:
            found.append(f"{macro}: RELEASES row {want:#x}, headers {p.values[key]['value']:#x}")
    _report(release, "interface versions", found)


def test_record(release: str, cname: str, prober: Prober) -> None:
    """sizeof/alignof of the record; offsetof, sizeof and element type of every member path."""
    _report(release, cname, prober(release).differences(lambda chk: chk.key[0] == cname))


def test_constants(release: str, const_header: str, prober: Prober) -> None:
    """The value of every constant macro the catalogue attributes to ``const_header``."""
    found = prober(release).differences(lambda chk: chk.key[0] == "constants" and chk.header == const_header)
    _report(release, f"constants of {const_header}", found)


def test_ioctls(release: str, ioctl_header: str, prober: Prober) -> None:
    """The number of every ioctl macro the catalogue attributes to ``ioctl_header``."""
    found = prober(release).differences(lambda chk: chk.key[0] == "ioctls" and chk.header == ioctl_header)
    _report(release, f"ioctls of {ioctl_header}", found)


def test_the_probe_catches_a_wrong_catalogue(tmp_path: Path, catalogue_of: Callable[[str], dict[str, Any]]) -> None:
    """The tier can fail: a catalogue with planted mistakes is caught, each one reported precisely."""
    why = missing()
    if why is not None:
        skip_or_fail(*why)
    rel = sorted(headers())[0]
    wrong = copy.deepcopy(catalogue_of(rel))
    rec = next(
        r for r in wrong["records"]
        if len(r["members"]) >= 3 and any(m["ctype"].startswith("uint") for m in r["members"][2:])
    )  # fmt: skip
    c, first, second = rec["cname"], rec["members"][0], rec["members"][1]
    unsigned = next(m for m in rec["members"][2:] if m["ctype"].startswith("uint"))
    first["offset"] += 1
    second["path"] = "no_such_member"
    unsigned["ctype"] = unsigned["ctype"][1:]  # uint32_t -> int32_t
    rec["size"] += 8
    macro = next(iter(wrong["constants"]))
    wrong["constants"][macro]["value"] += 1
    wrong["constants"]["XENPURE_NO_SUCH_MACRO"] = {"value": 0, "header": "xen.h"}

    report = "\n".join(cprobe.probe(wrong, tmp_path, headers()[rel].cflags).differences())
    planted = [
        f"{c}: size: ours {rec['size']}, gcc {rec['size'] - 8}",
        f"{c}: {first['path']}: offset: ours {first['offset']}, gcc {first['offset'] - 1}",
        f"{c}: no_such_member: does not compile against the headers: ",
        f"{c}: {unsigned['path']}: signed: ours 1, gcc 0",
        f"{macro}: value: ours {wrong['constants'][macro]['value']}",
        "XENPURE_NO_SUCH_MACRO: does not compile against the headers: ",
    ]
    for line in planted:
        assert line in report, f"{line!r} not reported; the report was:\n{report}"
    assert len(report.splitlines()) == len(planted), f"more than the planted mistakes reported:\n{report}"
