"""xenpure: control Xen from Python, with no C library underneath.

Rule 1: everything starts from ``connect()``, which returns a ``Host``; what kernel the host talks to is
decided by the URI (or an injected kernel object), never by a global switch.

    >>> import xenpure
    >>> with xenpure.connect("sim://") as host:
    ...     [d.id for d in host.domains()]
    [0]
"""

from __future__ import annotations

from .domain import Domain, DomainEvent, DomainInfo, DomainState, EventKind, Host, PhysInfo, VcpuInfo, XenVersion
from .errors import (
    AccessDenied,
    AlreadyExists,
    ArgumentOutOfRange,
    Busy,
    DeviceUnavailable,
    HypercallError,
    InvalidArgument,
    NoSuchDomain,
    NotPrivileged,
    NotSupported,
    OperationNotPermitted,
    OutOfMemory,
    ProtocolError,
    Timeout,
    TryAgain,
    UnsupportedInterface,
    XenError,
)
from .kernel import Kernel, LinuxKernel

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "ArgumentOutOfRange",
    "Busy",
    "DeviceUnavailable",
    "Domain",
    "DomainEvent",
    "DomainInfo",
    "DomainState",
    "EventKind",
    "Host",
    "HypercallError",
    "InvalidArgument",
    "Kernel",
    "LinuxKernel",
    "NoSuchDomain",
    "NotPrivileged",
    "NotSupported",
    "OperationNotPermitted",
    "OutOfMemory",
    "PhysInfo",
    "ProtocolError",
    "Timeout",
    "TryAgain",
    "UnsupportedInterface",
    "VcpuInfo",
    "XenError",
    "XenVersion",
    "connect",
]


def connect(uri: str | None = None, *, kernel: Kernel | None = None) -> Host:
    """Connect to a Xen host and return a ``Host`` (usable as a context manager).

    ``uri``: ``None`` or ``"xen:///system"`` for this machine's hypervisor through /dev/xen (or /proc/xen);
    ``"sim://"`` for a fresh simulated Xen 4.17 host (``"sim://4.20"`` for another release's ABI).
    ``kernel``: inject any object implementing ``xenpure.kernel.Kernel`` instead of a URI.

    Raises ``DeviceUnavailable`` when Xen is absent (naming the paths tried), ``NotPrivileged`` when this
    process may not use it, ``UnsupportedInterface`` when the hypervisor speaks an ABI xenpure does not know.
    """
    if kernel is not None:
        if uri is not None:
            raise ValueError("pass a uri or a kernel, not both")
        return Host(kernel)
    if uri is None or uri in ("xen://", "xen:///", "xen:///system"):
        return Host(LinuxKernel())
    if uri.startswith("sim://"):
        from .testing import SimKernel, SimXen

        release = uri[len("sim://") :].strip("/") or "4.17"
        return Host(SimKernel(SimXen(release)))
    raise ValueError(f"unknown URI {uri!r}: use None, 'xen:///system' or 'sim://'")
