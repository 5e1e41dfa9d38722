"""Helpers for the unit tests of the sans-I/O xenstore server core (test_xenstore_server.py,
test_xenstored_core.py): one request in, its decoded reply out, and the watch events a batch of outputs
carries for one connection."""

from __future__ import annotations

from typing import Any

from xenpure.xenstore import _wire as W
from xenpure.xenstore._server_core import Send, ServerCore
from xenpure.xenstore._wire import XsType


def ask(s: ServerCore, conn: int, req: W.Request[Any], tx_id: int = 0) -> tuple[str, Any]:
    """("ok", value) or ("err", name) for the reply to ``req``; watch events are returned separately."""
    out = s.receive_data(conn, req.encode(req_id=42, tx_id=tx_id))
    first = out[0]
    assert isinstance(first, Send)
    (m,) = W.iter_messages(first.data)
    assert m.req_id == 42 and m.tx_id == tx_id
    if m.type is XsType.ERROR:
        return "err", W.parse_error(m.payload)
    assert m.type is req.TYPE
    return "ok", req.parse_reply(m.payload)


def watch_events(out: list[Any], conn: int) -> list[tuple[str, str]]:
    """The (path, token) of every WATCH_EVENT in ``out`` addressed to ``conn``, in order."""
    return [
        W.parse_watch_event(m.payload)
        for o in out
        if isinstance(o, Send) and o.conn == conn
        for m in W.iter_messages(o.data)
        if m.type is XsType.WATCH_EVENT
    ]
