"""xenpure's xenstored: the sans-I/O server core, its state file, and the daemon around them.

Rule 1: a reply is a pure function of (store, connection, request) -- ``ServerCore``; everything else here
moves bytes (``Xenstored``: Unix sockets, rings) or saves them (``StateFile``).

::

    xenpure xenstored --socket /tmp/xs.sock --state /tmp/xs.state --trace -
    XENSTORED_PATH=/tmp/xs.sock xenstore-ls /
"""

from __future__ import annotations

from .._server_core import DEFAULT_QUOTAS, Connection, Drop, Node, Output, Send, ServerCore, Store
from ._daemon import DEFAULT_MAX_BACKLOG, Xenstored, main
from ._state import StateFile

__all__ = [
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_QUOTAS",
    "Connection",
    "Drop",
    "Node",
    "Output",
    "Send",
    "ServerCore",
    "StateFile",
    "Store",
    "Xenstored",
    "main",
]
