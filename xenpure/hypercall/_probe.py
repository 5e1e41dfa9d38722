"""Finding out which interface the running hypervisor speaks.

Rule 1: ask, don't assume. ``xen_version`` is unversioned and always answers; domctl and sysctl carry an
interface version that Xen checks before anything else and refuses with EACCES when it is not its own, so
trying a harmless command with each known version tells us which one it speaks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ..errors import AccessDenied, HypercallError, NotPrivileged, OperationNotPermitted, UnsupportedInterface
from ._layout import Iface
from ._privcmd import Privcmd
from .abi import RELEASES
from .abi.domctl import DOMCTL_VERSIONS, DomctlCmd
from .abi.sysctl import SYSCTL_VERSIONS, SysctlCmd
from .abi.version import XenVer

__all__ = ["probe_interface", "xen_version_numbers"]

log = logging.getLogger("xenpure.hypercall")


def xen_version_numbers(pc: Privcmd) -> tuple[int, int]:
    """(major, minor) from ``XENVER_version``, which packs them as ``major << 16 | minor``."""
    packed, _ = pc.xen_version(XenVer.version)
    return packed >> 16, packed & 0xFFFF


def _order(known: Iterable[int], guess: int | None) -> list[int]:
    rest = sorted(known, reverse=True)
    return ([guess] if guess is not None else []) + [v for v in rest if v != guess]


def probe_interface(pc: Privcmd, major: int, minor: int) -> Iface:
    """The domctl and sysctl interface versions the hypervisor accepts.

    The release table gives a first guess; every other known version is tried before giving up with
    ``UnsupportedInterface``. EPERM means we are not allowed to issue control hypercalls at all.
    """
    guess = next((r.iface for r in RELEASES if r.name == f"{major}.{minor}"), None)
    base = guess or Iface(DOMCTL_VERSIONS[-1], SYSCTL_VERSIONS[-1])
    domctl = _first_accepted(
        "domctl",
        _order(DOMCTL_VERSIONS, guess.domctl if guess else None),
        lambda v: pc.domctl(Iface(v, base.sysctl), DomctlCmd.getdomaininfo, 0, version=v),
        f"Xen {major}.{minor}",
    )
    sysctl = _first_accepted(
        "sysctl",
        _order(SYSCTL_VERSIONS, guess.sysctl if guess else None),
        lambda v: pc.sysctl(Iface(domctl, v), SysctlCmd.physinfo, version=v),
        f"Xen {major}.{minor}",
    )
    iface = Iface(domctl, sysctl)
    log.debug("Xen %d.%d speaks domctl %#x, sysctl %#x", major, minor, domctl, sysctl)
    return iface


def _first_accepted(what: str, versions: list[int], attempt: Callable[[int], object], release: str) -> int:
    for v in versions:
        try:
            attempt(v)
        except AccessDenied:
            log.debug("%s interface %#x refused (EACCES)", what, v)
            continue
        except OperationNotPermitted as e:
            raise NotPrivileged(
                "/dev/xen/privcmd", f"{release} refused {what} with EPERM: this domain has no control rights"
            ) from e
        except HypercallError:
            pass  # any other answer (ESRCH, ...) means the version itself was accepted
        return v
    raise UnsupportedInterface(what, sorted(versions), f"{release} refused every one with EACCES; upgrade xenpure")
