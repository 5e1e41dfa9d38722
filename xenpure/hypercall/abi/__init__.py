"""The hypercall ABI xenpure speaks, declared once per C record, keyed by Xen release.

Rule 1: a Xen release is a row in ``RELEASES`` (its domctl and sysctl interface versions); everything
version-dependent is looked up through that row, never by comparing release strings in code.

Adding a release: add its row here; if a record changed, annotate the changed members with
``since=``/``until=`` in the module that declares them, and add the new interface version to
``DOMCTL_VERSIONS`` / ``SYSCTL_VERSIONS``. The catalogue, ``specs/``, the conformance tier and the
simulator all follow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .._layout import Iface, Layout, constants_registry, declarations
from . import (
    arch_x86,
    domctl,
    elfnote,
    event_channel,
    grant_table,
    io_console,
    linux_evtchn,
    linux_gntalloc,
    linux_gntdev,
    linux_xenbus,
    memory,
    privcmd,
    sched,
    sysctl,
    version,
    xen,
)
from ._ioctl import IOCTLS
from .domctl import DOMCTL_VERSIONS
from .sysctl import SYSCTL_VERSIONS

__all__ = [
    "DOMCTL_VERSIONS",
    "RELEASES",
    "SYSCTL_VERSIONS",
    "Release",
    "arch_x86",
    "catalogue",
    "domctl",
    "elfnote",
    "event_channel",
    "grant_table",
    "io_console",
    "layouts",
    "linux_evtchn",
    "linux_gntalloc",
    "linux_gntdev",
    "linux_xenbus",
    "memory",
    "privcmd",
    "release",
    "release_for",
    "sched",
    "sysctl",
    "version",
    "xen",
]


@dataclass(frozen=True)
class Release:
    """A Xen release as far as the ABI is concerned."""

    name: str
    iface: Iface


RELEASES: tuple[Release, ...] = (
    Release("4.17", Iface(domctl=0x15, sysctl=0x15)),
    Release("4.18", Iface(domctl=0x16, sysctl=0x15)),
    Release("4.19", Iface(domctl=0x17, sysctl=0x15)),
    Release("4.20", Iface(domctl=0x17, sysctl=0x15)),
    Release("4.21", Iface(domctl=0x17, sysctl=0x16)),
)


def release(name: str) -> Release:
    """The release row for ``"4.17"`` etc.; ``KeyError`` names the known ones."""
    for r in RELEASES:
        if r.name == name:
            return r
    raise KeyError(f"unknown Xen release {name!r}; known: {', '.join(r.name for r in RELEASES)}")


def release_for(iface: Iface) -> str:
    """The release name(s) that speak ``iface``, for messages (``"4.19/4.20"``)."""
    names = [r.name for r in RELEASES if r.iface == iface]
    return "/".join(names) if names else f"domctl {iface.domctl:#x}, sysctl {iface.sysctl:#x}"


def layouts(iface: Iface) -> Iterator[Layout]:
    """Every declared record materialised for ``iface``, in declaration order."""
    for decl in declarations().values():
        yield decl.layout(iface if decl.family else None)


def catalogue(name: str) -> dict[str, Any]:
    """The machine-readable ABI of one release: records with member offsets, constants, ioctl numbers.

    This is what ``python -m xenpure abi --json`` prints and what ``specs/abi-<release>.json`` holds.
    """
    rel = release(name)
    records = []
    for lay in layouts(rel.iface):
        records.append(
            {
                "cname": f"struct {lay.cname}",
                "header": lay.decl.header,
                "size": lay.size,
                "align": lay.align,
                "members": [
                    {"path": m.path, "offset": m.offset, "size": m.size, "ctype": m.ctype}
                    for m in lay.members()
                ],
            }
        )
    consts: dict[str, dict[str, Any]] = {}
    for group in constants_registry():
        for macro, value in group.macros():
            consts[macro] = {"value": value, "header": group.header}
    consts["XEN_DOMCTL_INTERFACE_VERSION"] = {"value": rel.iface.domctl, "header": "domctl.h"}
    consts["XEN_SYSCTL_INTERFACE_VERSION"] = {"value": rel.iface.sysctl, "header": "sysctl.h"}
    ioctls = {
        i.name: {"value": i.request, "header": i.header, "argtype": i.argtype}
        for i in IOCTLS.values()
    }
    return {
        "xen": rel.name,
        "interface": {"domctl": rel.iface.domctl, "sysctl": rel.iface.sysctl},
        "records": records,
        "constants": dict(sorted(consts.items())),
        "ioctls": ioctls,
    }
