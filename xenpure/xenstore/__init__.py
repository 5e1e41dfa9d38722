"""xenstore: the wire codec, a sans-I/O client core, and sync and asyncio clients that share it.

Rule 1: the protocol lives in sans-I/O cores (``ClientCore``, and the server core the simulator runs); the
clients only move bytes between a ``Device`` from the kernel seam and a core, so the sync and asyncio faces
can never disagree about what a message means. ``XenstoreRing`` is the shared ring page, for either end.

::

    from xenpure.kernel import LinuxKernel
    from xenpure.xenstore import Client, Read

    with Client.open(LinuxKernel()) as xs:
        xs.read("/local/domain/0/name")                  # b'Domain-0'
        xs.retry(lambda tx: tx.write("/tool/x", "1"))    # a transaction, re-run on EAGAIN
        xs.gather([Read(p) for p in paths])              # pipelined: one write, replies matched by id
"""

from __future__ import annotations

from ._aio import AsyncClient, AsyncTransaction
from ._client import DEFAULT_SOCKET, DEFAULT_TIMEOUT, Client, Transaction, socket_candidates
from ._client_core import ClientCore, Closed, ErrorReply, Event, Reply, WatchEvent
from ._doorbell import EvtchnDoorbell
from ._ring import (
    XENSTORE_RING_SIZE,
    ConnectionState,
    Doorbell,
    RingDevice,
    RingErrorCode,
    RingLayout,
    ServerFeature,
    XenstoreRing,
)
from ._wire import (
    HEADER_SIZE,
    XENSTORE_ABS_PATH_MAX,
    XENSTORE_PAYLOAD_MAX,
    XENSTORE_REL_PATH_MAX,
    XSD_ERRORS,
    Control,
    Directory,
    DirectoryChunk,
    DirectoryPart,
    Framer,
    GetDomainPath,
    GetFeature,
    GetPerms,
    GetQuota,
    Header,
    Introduce,
    IsDomainIntroduced,
    ListQuotas,
    Message,
    Mkdir,
    Perm,
    PermAccess,
    Read,
    Release,
    Request,
    ResetWatches,
    Resume,
    Rm,
    SetFeature,
    SetPerms,
    SetQuota,
    SetTarget,
    TransactionEnd,
    TransactionStart,
    Unwatch,
    Watch,
    Write,
    XsType,
)

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT",
    "HEADER_SIZE",
    "XENSTORE_ABS_PATH_MAX",
    "XENSTORE_PAYLOAD_MAX",
    "XENSTORE_REL_PATH_MAX",
    "XENSTORE_RING_SIZE",
    "XSD_ERRORS",
    "AsyncClient",
    "AsyncTransaction",
    "Client",
    "ClientCore",
    "Closed",
    "ConnectionState",
    "Control",
    "Directory",
    "DirectoryChunk",
    "DirectoryPart",
    "Doorbell",
    "ErrorReply",
    "Event",
    "EvtchnDoorbell",
    "Framer",
    "GetDomainPath",
    "GetFeature",
    "GetPerms",
    "GetQuota",
    "Header",
    "Introduce",
    "IsDomainIntroduced",
    "ListQuotas",
    "Message",
    "Mkdir",
    "Perm",
    "PermAccess",
    "Read",
    "Release",
    "Reply",
    "Request",
    "ResetWatches",
    "Resume",
    "RingDevice",
    "RingErrorCode",
    "RingLayout",
    "Rm",
    "ServerFeature",
    "SetFeature",
    "SetPerms",
    "SetQuota",
    "SetTarget",
    "Transaction",
    "TransactionEnd",
    "TransactionStart",
    "Unwatch",
    "Watch",
    "WatchEvent",
    "Write",
    "XenstoreRing",
    "XsType",
    "socket_candidates",
]
