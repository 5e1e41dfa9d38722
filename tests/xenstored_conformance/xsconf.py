"""Helpers of the xenstored conformance suite: a raw wire connection, the server under test, and the
checks for documented differences. Fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from xenpure.xenstore import _wire as W
from xenpure.xenstore._wire import Message, XsType

TIMEOUT = 10.0


class XsError(Exception):
    """An ERROR reply: ``name`` is the errno name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Conn:
    """One raw connection: send requests, take replies by req_id, collect watch events apart."""

    def __init__(self, sock: socket.socket, domid: int = 0) -> None:
        self.sock = sock
        self.domid = domid
        self.framer = W.Framer()
        self.replies: dict[int, Message] = {}
        self.events: list[tuple[str, str]] = []
        self.eof = False
        self._req = 0

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, req: W.Request[Any], tx: int = 0) -> int:
        self._req += 1
        self.send_raw(req.encode(self._req, tx))
        return self._req

    def _pump(self, timeout: float) -> bool:
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.framer.receive_data(data)
        while (m := self.framer.next_message()) is not None:
            if m.type is XsType.WATCH_EVENT:
                self.events.append(W.parse_watch_event(m.payload))
            else:
                self.replies[m.req_id] = m
        return True

    def reply(self, req_id: int, timeout: float = TIMEOUT) -> Message:
        deadline = time.monotonic() + timeout
        while req_id not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise TimeoutError(f"no reply to req {req_id} ({'hung up' if self.eof else 'timeout'})")
            self._pump(left)
        return self.replies.pop(req_id)

    def ask(self, req: W.Request[Any], tx: int = 0, timeout: float = TIMEOUT) -> tuple[str, Any]:
        """("ok", value) or ("err", "ENAME")."""
        m = self.reply(self.send(req, tx), timeout)
        if m.type is XsType.ERROR:
            return "err", W.parse_error(m.payload)
        assert m.type is req.TYPE, f"reply of type {m.type.name} to {req.TYPE.name}"
        return "ok", req.parse_reply(m.payload)

    def __call__(self, req: W.Request[Any], tx: int = 0) -> Any:
        kind, value = self.ask(req, tx)
        if kind == "err":
            raise XsError(value)
        return value

    def err(self, req: W.Request[Any], tx: int = 0) -> str | None:
        """The error name of the reply, or None if it succeeded."""
        kind, value = self.ask(req, tx)
        return value if kind == "err" else None

    def wait_events(self, n: int, timeout: float = 5.0) -> list[tuple[str, str]]:
        """At least ``n`` events (or what came within ``timeout``); takes them all."""
        deadline = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < deadline:
            self._pump(max(0.0, deadline - time.monotonic()))
        out, self.events = self.events, []
        return out

    def quiet(self, wait: float = 0.3) -> list[tuple[str, str]]:
        """Whatever events arrive within ``wait`` seconds (none expected, usually)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            self._pump(max(0.0, deadline - time.monotonic()))
        out, self.events = self.events, []
        return out

    def hung_up(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self._pump(max(0.0, deadline - time.monotonic()))
        return self.eof

    def close(self) -> None:
        self.sock.close()


@dataclass
class Target:
    """The server under test."""

    path: str
    daemon: Any = None  # xenpure's Xenstored when the suite started it
    ro_path: str | None = None
    conns: list[Conn] = field(default_factory=list)

    @property
    def is_xenpure(self) -> bool:
        return self.daemon is not None

    def connect(self, *, readonly: bool = False) -> Conn:
        path = self.path
        if readonly:
            if self.ro_path is None:
                pytest.skip("the server has no read-only socket (or --xenstored-ro-socket was not given)")
            path = self.ro_path
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        c = Conn(s)
        self.conns.append(c)
        return c

    def need_xenpure(self, why: str) -> None:
        if self.daemon is None:
            pytest.skip(f"{why}: only with xenpure's own server")

    def guest(self, domid: int) -> Conn:
        if self.daemon is None:
            pytest.skip(
                "needs a connection speaking for an unprivileged domain: a socket connection is dom0's and "
                "only xenpure's own server can hand out others without a real guest"
            )
        c = Conn(self.daemon.connect_as(domid), domid)
        self.conns.append(c)
        return c


def accept(target: Target, got: Any, *, xenpure: Any, seen: tuple[Any, ...] = ()) -> None:
    """A documented difference: xenpure's server must answer ``xenpure``; any other server may answer
    that or one of ``seen`` (answers observed on oxenstored or C xenstored, README.md)."""
    if target.is_xenpure:
        assert got == xenpure
    else:
        assert got == xenpure or got in seen, f"{got!r} is neither {xenpure!r} nor one of {seen!r}"


def optional(conn: Conn, req: W.Request[Any]) -> Any:
    """Run an optional request; skip the test if the server answers ENOSYS (it does not have it), or
    EINVAL for the Xen 4.21 types (what an older server may say of a type it does not know)."""
    kind, value = conn.ask(req)
    if kind == "err" and (value == "ENOSYS" or (value == "EINVAL" and req.TYPE >= XsType.GET_FEATURE)):
        pytest.skip(f"the server does not support {req.TYPE.name} ({value})")
    if kind == "err":
        raise XsError(value)
    return value
