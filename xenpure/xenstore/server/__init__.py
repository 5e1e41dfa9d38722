"""xenpure's xenstored: the sans-I/O server core, its state file, and the daemon around them.

Rule 1: a reply is a pure function of (store, connection, request) -- ``ServerCore``; everything else here
moves bytes (``Xenstored``: Unix sockets, rings), saves them (``StateFile``), or maps and binds the rings of
a real Xen host's domains for the daemon (``XenDomains``, ``--xen``; the core reaches it only through the
``DomainRings`` it was given).

::

    xenpure xenstored --socket /tmp/xs.sock --state /tmp/xs.state --trace -
    xenpure xenstored --xen --socket /run/xenstored/socket --ro-socket /run/xenstored/socket_ro   # in dom0
    XENSTORED_PATH=/tmp/xs.sock xenstore-ls /
"""

from __future__ import annotations

from .._server_core import DEFAULT_QUOTAS, Connection, DomainRings, Drop, Node, Output, Send, ServerCore, Store
from ._daemon import DEFAULT_MAX_BACKLOG, Xenstored, main
from ._state import StateFile
from ._xen import DOM0_NODES, XenDomains, seed_dom0_store

__all__ = [
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_QUOTAS",
    "DOM0_NODES",
    "Connection",
    "DomainRings",
    "Drop",
    "Node",
    "Output",
    "Send",
    "ServerCore",
    "StateFile",
    "Store",
    "XenDomains",
    "Xenstored",
    "main",
    "seed_dom0_store",
]
