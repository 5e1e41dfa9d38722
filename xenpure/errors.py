"""Every exception xenpure raises, under one root.

Rule 1: an errno becomes an exception in exactly one place per seam (``HypercallError.from_errno`` for
hypercalls and ioctls, ``XenstoreError.from_reply`` for xenstore error strings), and the exception says
what failed, why, and what to do about it.

The tree::

    XenError
     |-- DeviceUnavailable      (also FileNotFoundError)  no Xen device at any path tried
     |-- NotPrivileged          (also PermissionError)    the device exists but we may not use it
     |-- UnsupportedInterface                             the hypervisor speaks an ABI we do not know
     |-- ProtocolError          (also ValueError)         malformed data from the other side
     |                                                    (reply buffer, wire message, ring)
     |-- ArgumentOutOfRange     (also ValueError)         a value does not fit the C field it is
     |                                                    encoded into (refused before anything is sent)
     |-- Timeout                (also TimeoutError)       a blocking call ran out of time
     |-- HypercallError         (also OSError)            Xen or the kernel answered -errno
     |    |-- NoSuchDomain           ESRCH   (also ProcessLookupError)
     |    |-- AccessDenied           EACCES  (also PermissionError); a wrong interface version answers this
     |    |-- OperationNotPermitted  EPERM   (also PermissionError)
     |    |-- AlreadyExists          EEXIST  (also FileExistsError)
     |    |-- InvalidArgument        EINVAL
     |    |-- OutOfMemory            ENOMEM
     |    |-- Busy                   EBUSY
     |    |-- TryAgain               EAGAIN  (also BlockingIOError)
     |    `-- NotSupported           ENOSYS, EOPNOTSUPP, ENOTTY
     `-- XenstoreError          (also OSError)            xenstored answered ERROR "E..." (or we refused
          |                                               to send a request that breaks a protocol limit)
          |-- XenstoreInvalid        EINVAL
          |-- PermissionDenied       EACCES  (also PermissionError)
          |-- Exists                 EEXIST  (also FileExistsError)
          |-- IsDirectory            EISDIR  (also IsADirectoryError)
          |-- NoEntry                ENOENT  (also FileNotFoundError)
          |-- XenstoreOutOfMemory    ENOMEM
          |-- NoSpace                ENOSPC  (a quota was hit)
          |-- XenstoreIOError        EIO
          |-- NotEmpty               ENOTEMPTY
          |-- XenstoreNotSupported   ENOSYS  (an optional message type this xenstored lacks)
          |-- ReadOnly               EROFS
          |-- XenstoreBusy           EBUSY
          |-- TransactionConflict    EAGAIN  (commit lost a race: run the transaction again)
          |-- AlreadyConnected       EISCONN
          |-- TooBig                 E2BIG   (also: a request over XENSTORE_PAYLOAD_MAX, refused locally)
          |-- XenstorePermission     EPERM   (also PermissionError)
          `-- ConnectionClosed       ECONNRESET (also ConnectionResetError) xenstored hung up

Because ``HypercallError`` and ``XenstoreError`` are ``OSError``s, ``except OSError`` and ``exc.errno``
keep working for code that thinks in errno. The xenstore classes are separate from the hypercall ones
(``Exists`` is not ``AlreadyExists``) because they come from a different seam: a message from xenstored,
not an ioctl.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Sequence

__all__ = [
    "AccessDenied",
    "AlreadyConnected",
    "AlreadyExists",
    "ArgumentOutOfRange",
    "Busy",
    "ConnectionClosed",
    "DeviceUnavailable",
    "Exists",
    "HypercallError",
    "InvalidArgument",
    "IsDirectory",
    "NoEntry",
    "NoSpace",
    "NoSuchDomain",
    "NotEmpty",
    "NotPrivileged",
    "NotSupported",
    "OperationNotPermitted",
    "OutOfMemory",
    "PermissionDenied",
    "ProtocolError",
    "ReadOnly",
    "Timeout",
    "TooBig",
    "TransactionConflict",
    "TryAgain",
    "UnsupportedInterface",
    "XenError",
    "XenstoreBusy",
    "XenstoreError",
    "XenstoreIOError",
    "XenstoreInvalid",
    "XenstoreNotSupported",
    "XenstoreOutOfMemory",
    "XenstorePermission",
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


class ArgumentOutOfRange(XenError, ValueError):
    """A value does not fit the C field it would be encoded into: a domid over 65535 (or a negative one) in a
    ``uint16_t domid_t``, a negative port in an ``evtchn_port_t``... Raised before anything reaches Xen or
    the kernel.

    ``record`` names the C record (``"xen_domctl"``), or is ``None`` when an API argument was checked before
    any record was built; ``field`` the member (``"domain"``, ``"refs[3].domid"``); ``value`` what was
    given; ``ctype`` the field's C type (or what the argument is); ``lo``..``hi`` the values it takes.
    ``todo`` replaces the default advice (pass a value in range) with a more specific one.
    """

    def __init__(
        self, record: str | None, field: str, value: int, ctype: str, lo: int, hi: int, todo: str = ""
    ) -> None:
        self.record = record
        self.field = field
        self.value = value
        self.ctype = ctype
        self.lo = lo
        self.hi = hi
        where = f"{record}.{field}" if record else field
        msg = (
            f"{where} = {value} is out of range for {ctype} ({lo}..{hi}, {_hex(lo)}..{_hex(hi)}): "
            f"{todo or 'pass an integer in that range'}"
        )
        super().__init__(msg)


def _hex(n: int) -> str:
    return f"-{-n:#x}" if n < 0 else f"{n:#x}"


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


# --------------------------------------------------------------------------------------------------------
# xenstore: errors travel as strings ("ENOENT") in an XS_ERROR reply; ``XenstoreError.from_reply`` is the
# one place such a string becomes a class.
# --------------------------------------------------------------------------------------------------------


class XenstoreError(XenError, OSError):
    """xenstored answered a request with an error (or the request was refused before it was sent).

    ``error`` is the name as it travelled (``"ENOENT"``); ``errno`` its number, or ``None`` when the name is
    not an errno this Python knows. ``op`` names the message type (``"READ"``), ``path`` the node, if any.
    """

    def __init__(self, error: str, op: str, path: str | None = None, detail: str = "", err: int | None = None) -> None:
        self.error = error
        self.op = op
        self.path = path
        if err is None:
            err = getattr(_errno, error, None) if error.startswith("E") else None
        where = f"xenstore {op} {path!r}" if path is not None else f"xenstore {op}"
        msg = f"{where} failed: {error}"
        if err is not None:
            msg = f"{msg} ({os.strerror(err)})"
        if detail:
            msg = f"{msg}: {detail}"
        super().__init__(err, msg)

    def __str__(self) -> str:
        return str(self.args[1])

    @staticmethod
    def from_reply(error: str, op: str, path: str | None = None, detail: str = "") -> XenstoreError:
        """Build the errno-named subclass for the error string ``error`` (``"EAGAIN"``)."""
        err = getattr(_errno, error, None) if error.startswith("E") else None
        cls = _XS_BY_ERRNO.get(err, XenstoreError) if isinstance(err, int) else XenstoreError
        return cls(error, op, path, detail, err if isinstance(err, int) else None)


class XenstoreInvalid(XenstoreError):
    """EINVAL: a malformed path, value, domid or argument (or a path over XENSTORE_*_PATH_MAX)."""


class PermissionDenied(XenstoreError, PermissionError):
    """EACCES: the node's permissions do not let this domain read or write it."""


class Exists(XenstoreError, FileExistsError):
    """EEXIST: the node, watch or domain already exists."""


class IsDirectory(XenstoreError, IsADirectoryError):
    """EISDIR."""


class NoEntry(XenstoreError, FileNotFoundError):
    """ENOENT: no such node (or transaction, or watch, or domain)."""


class XenstoreOutOfMemory(XenstoreError):
    """ENOMEM: xenstored could not allocate memory."""


class NoSpace(XenstoreError):
    """ENOSPC: a per-domain quota (nodes, node size, watches...) was hit."""


class XenstoreIOError(XenstoreError):
    """EIO: xenstored's own storage failed."""


class NotEmpty(XenstoreError):
    """ENOTEMPTY."""


class XenstoreNotSupported(XenstoreError):
    """ENOSYS: this xenstored does not implement the (optional) message type."""


class ReadOnly(XenstoreError):
    """EROFS: the connection is read-only."""


class XenstoreBusy(XenstoreError):
    """EBUSY: xenstored is busy (e.g. a live update is in progress)."""


class TransactionConflict(XenstoreError):
    """EAGAIN: another writer changed what this transaction touched; run the whole transaction again."""


class AlreadyConnected(XenstoreError):
    """EISCONN: the domain is already introduced."""


class TooBig(XenstoreError):
    """E2BIG: the reply would exceed XENSTORE_PAYLOAD_MAX, or our request would (then it was not sent)."""


class XenstorePermission(XenstoreError, PermissionError):
    """EPERM: the operation needs a privileged (control) domain."""


class ConnectionClosed(XenstoreError, ConnectionResetError):
    """xenstored (or the xenbus driver) closed the connection; requests still outstanding are lost."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("ECONNRESET", "connection", None, detail or "xenstored closed the connection")


_XS_BY_ERRNO: dict[int, type[XenstoreError]] = {
    _errno.EINVAL: XenstoreInvalid,
    _errno.EACCES: PermissionDenied,
    _errno.EEXIST: Exists,
    _errno.EISDIR: IsDirectory,
    _errno.ENOENT: NoEntry,
    _errno.ENOMEM: XenstoreOutOfMemory,
    _errno.ENOSPC: NoSpace,
    _errno.EIO: XenstoreIOError,
    _errno.ENOTEMPTY: NotEmpty,
    _errno.ENOSYS: XenstoreNotSupported,
    _errno.EROFS: ReadOnly,
    _errno.EBUSY: XenstoreBusy,
    _errno.EAGAIN: TransactionConflict,
    _errno.EISCONN: AlreadyConnected,
    _errno.E2BIG: TooBig,
    _errno.EPERM: XenstorePermission,
}
