"""Every exception xenpure raises, under one root.

Rule 1: an errno becomes an exception in exactly one place per seam (``HypercallError.from_errno`` for
hypercalls and ioctls), and the exception says what failed, why, and what to do about it.

The tree::

    XenError
     |-- DeviceUnavailable      (also FileNotFoundError)  no Xen device at any path tried
     |-- NotPrivileged          (also PermissionError)    the device exists but we may not use it
     |-- UnsupportedInterface                             the hypervisor speaks an ABI we do not know
     |-- ProtocolError          (also ValueError)         malformed data from the other side
     |                                                    (reply buffer, wire message, ring)
     |-- Timeout                (also TimeoutError)       a blocking call ran out of time
     `-- HypercallError         (also OSError)            Xen or the kernel answered -errno
          |-- NoSuchDomain           ESRCH   (also ProcessLookupError)
          |-- AccessDenied           EACCES  (also PermissionError); a wrong interface version answers this
          |-- OperationNotPermitted  EPERM   (also PermissionError)
          |-- AlreadyExists          EEXIST  (also FileExistsError)
          |-- InvalidArgument        EINVAL
          |-- OutOfMemory            ENOMEM
          |-- Busy                   EBUSY
          |-- TryAgain               EAGAIN  (also BlockingIOError)
          `-- NotSupported           ENOSYS, EOPNOTSUPP, ENOTTY

Because ``HypercallError`` is an ``OSError``, ``except OSError`` and ``exc.errno`` keep working for code
that thinks in errno.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Sequence

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "Busy",
    "DeviceUnavailable",
    "HypercallError",
    "InvalidArgument",
    "NoSuchDomain",
    "NotPrivileged",
    "NotSupported",
    "OperationNotPermitted",
    "OutOfMemory",
    "ProtocolError",
    "Timeout",
    "TryAgain",
    "UnsupportedInterface",
    "XenError",
]


class XenError(Exception):
    """Root of every exception raised by xenpure."""


class DeviceUnavailable(XenError, FileNotFoundError):
    """No Xen device node exists at any of the paths tried.

    ``tried`` lists every path, in the order they were tried.
    """

    def __init__(self, name: str, tried: Sequence[str]) -> None:
        self.device = name
        self.tried = tuple(tried)
        msg = (
            f"Xen device {name!r} not found (tried {', '.join(self.tried)}): this machine is not a Xen "
            "domain with the xen-privcmd/xenfs drivers loaded; use xenpure.connect('sim://') to work "
            "against the simulated hypervisor"
        )
        super().__init__(_errno.ENOENT, msg)

    def __str__(self) -> str:
        return str(self.args[1])


class NotPrivileged(XenError, PermissionError):
    """The Xen device exists, but this process may not use it (not root, or not dom0)."""

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        msg = f"permission denied on {path}: run as root in dom0 (or a domain with control rights)"
        if detail:
            msg = f"{msg}; {detail}"
        super().__init__(_errno.EACCES, msg)

    def __str__(self) -> str:
        return str(self.args[1])


class UnsupportedInterface(XenError):
    """The running hypervisor speaks an interface version xenpure has no declarations for."""

    def __init__(self, what: str, known: Sequence[int], detail: str = "") -> None:
        self.what = what
        self.known = tuple(known)
        versions = ", ".join(f"{v:#x}" for v in self.known)
        msg = f"the hypervisor speaks no {what} interface version xenpure knows (known: {versions})"
        if detail:
            msg = f"{msg}; {detail}"
        super().__init__(msg)


class ProtocolError(XenError, ValueError):
    """Malformed data arrived from the other side: a reply buffer, a wire message, or a ring."""


class Timeout(XenError, TimeoutError):
    """A blocking call ran out of time. The message says what was awaited and the state when it gave up."""


class HypercallError(XenError, OSError):
    """Xen (or the kernel driver in front of it) answered a hypercall or ioctl with -errno.

    ``op`` names the hypercall or ioctl (``"domctl"``, ``"IOCTL_PRIVCMD_MMAPBATCH_V2"``), ``subop`` the
    sub-operation (``"getdomaininfo"``) or ``None``.
    """

    def __init__(self, err: int, op: str, subop: str | None = None, detail: str = "") -> None:
        self.op = op
        self.subop = subop
        where = f"{op}/{subop}" if subop else op
        name = _errno.errorcode.get(err, f"errno {err}")
        msg = f"{where} failed: {name} ({os.strerror(err)})"
        if detail:
            msg = f"{msg}: {detail}"
        super().__init__(err, msg)

    def __str__(self) -> str:
        return str(self.args[1])

    @staticmethod
    def from_errno(err: int, op: str, subop: str | None = None, detail: str = "") -> HypercallError:
        """Build the errno-named subclass for ``err``: the one place an errno becomes a class."""
        cls = _BY_ERRNO.get(err, HypercallError)
        return cls(err, op, subop, detail)


class NoSuchDomain(HypercallError, ProcessLookupError):
    """ESRCH: no domain with that id exists (or it has finished dying)."""


class AccessDenied(HypercallError, PermissionError):
    """EACCES: refused by policy (XSM), or the request carried a wrong interface version."""


class OperationNotPermitted(HypercallError, PermissionError):
    """EPERM: the caller lacks the privilege for this operation."""


class AlreadyExists(HypercallError, FileExistsError):
    """EEXIST: the object (domain id, binding, mapping) already exists."""


class InvalidArgument(HypercallError):
    """EINVAL: Xen rejected an argument."""


class OutOfMemory(HypercallError):
    """ENOMEM: Xen or the kernel could not allocate memory."""


class Busy(HypercallError):
    """EBUSY: the resource is in use."""


class TryAgain(HypercallError, BlockingIOError):
    """EAGAIN: the operation should be retried (a preempted continuation, or a transient condition)."""


class NotSupported(HypercallError):
    """ENOSYS, EOPNOTSUPP or ENOTTY: this hypervisor or kernel does not implement the operation."""


_BY_ERRNO: dict[int, type[HypercallError]] = {
    _errno.ESRCH: NoSuchDomain,
    _errno.EACCES: AccessDenied,
    _errno.EPERM: OperationNotPermitted,
    _errno.EEXIST: AlreadyExists,
    _errno.EINVAL: InvalidArgument,
    _errno.ENOMEM: OutOfMemory,
    _errno.EBUSY: Busy,
    _errno.EAGAIN: TryAgain,
    _errno.ENOSYS: NotSupported,
    _errno.EOPNOTSUPP: NotSupported,
    _errno.ENOTTY: NotSupported,
}
