"""A simulated xenstored: the sans-I/O ``ServerCore`` behind real socketpairs.

Rule 1: the simulator speaks the wire protocol, nothing else. A client connection is one end of a
``socket.socketpair()``; bytes written to it are fed synchronously to the same server core logic that the
unit tests table-check, and the replies and watch events it produces are pushed into the pair, so the
client reads them from a real, pollable descriptor (``selectors`` and asyncio work; no threads).

The toolstack side of the simulator (the simulated hypervisor creating and destroying domains) calls the
helpers ``write``/``read``/``rm``/``directory``/``introduce``/``release`` directly; they run as domain 0 and
fire watches exactly as the same requests from a client would. Simulated guests hold in-process connections
(``attach``): their requests go through the same core as anyone's, and their watch events are decoded from
the very bytes a socket would carry and handed to a callback once the triggering request is done.

For a xenstored of one's own running in the simulated dom0 (``xenpure xenstored --xen`` on a ``SimKernel``),
``dom0_xenbus(xen)`` is dom0's kernel's side of its xenstore ring: the page and the unbound port it
allocated for a daemon to bind, what ``/dev/xen/xenbus_backend`` (mmap, ``IOCTL_XENBUS_BACKEND_EVTCHN``) and
``/proc/xen/xsd_kva`` / ``xsd_port`` hand out (``SimXenbusBackendFile``, ``SimXsdFile``), and the front end
a test drives as dom0's kernel would (``front``).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ..hypercall.abi.linux_xenbus import IOCTL_XENBUS_BACKEND_EVTCHN
from ..hypercall.abi.xen import DomId
from ..xenstore._client import DEFAULT_SOCKET
from ..xenstore._ring import RingDevice, XenstoreRing
from ..xenstore._server_core import Drop, Output, Send, ServerCore
from ..xenstore._wire import (
    Directory,
    Framer,
    GetPerms,
    Introduce,
    Mkdir,
    Perm,
    Read,
    Release,
    Request,
    Rm,
    SetPerms,
    Write,
    XsType,
)

__all__ = ["SimConnection", "SimDom0Xenbus", "SimXenbusBackendFile", "SimXenstored", "SimXsdFile", "dom0_xenbus"]

log = logging.getLogger("xenpure.testing.xenstored")


class SimConnection:
    """One client connection to the simulated xenstored (what ``Kernel.connect_socket`` or
    ``Kernel.open("xenbus")`` hands back, wrapped in a device)."""

    def __init__(self, server: SimXenstored, conn_id: int, domid: int, path: str) -> None:
        self.server = server
        self.conn_id = conn_id
        self.domid = domid
        self.path = path
        self._client, self._server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.setblocking(False)
        self._backlog = bytearray()  # what did not fit in the socket buffer yet
        self._eof_after_backlog = False
        self._closed = False

    def fileno(self) -> int:
        """The client end of the socketpair: readable when replies or watch events are waiting."""
        return self._client.fileno()

    def read(self, n: int) -> bytes:
        """Read up to ``n`` bytes of replies and events (blocks, like a socket, if there are none)."""
        self._flush()
        data = self._client.recv(n)
        self._flush()
        return data

    def write(self, data: bytes) -> int:
        """Hand ``data`` to the server; its answers are queued for ``read`` before this returns."""
        if self._closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if self._eof_after_backlog or self.conn_id not in self.server.core.connections:
            raise BrokenPipeError(errno.EPIPE, "the simulated xenstored dropped this connection")
        self.server._receive(self, bytes(data))
        return len(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.server._disconnect(self)
        self._client.close()
        self._server.close()

    # -- the server's side -------------------------------------------------------------------------------

    def _push(self, data: bytes) -> None:
        self._backlog += data
        self._flush()

    def _drop(self) -> None:
        self._eof_after_backlog = True
        self._flush()

    def _flush(self) -> None:
        if self._closed:
            return
        while self._backlog:
            try:
                n = self._server.send(self._backlog)
            except BlockingIOError:
                return
            del self._backlog[:n]
        if self._eof_after_backlog:
            try:
                self._server.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<SimConnection #{self.conn_id} dom{self.domid} {self.path}>"


class SimXenstored:
    """The simulated xenstored. ``connect(domid)`` opens a client connection speaking for ``domid``.

    ``unsupported`` lists message types to answer with ENOSYS (to play an older xenstored, e.g. one
    without DIRECTORY_PART or the 4.21 feature/quota messages).
    """

    def __init__(self, *, unsupported: Iterable[XsType] = ()) -> None:
        self.core = ServerCore(unsupported=unsupported)
        self._lock = threading.RLock()
        self._conns: dict[int, SimConnection] = {}
        self._toolstack = self.core.connect(0)
        self._listeners: dict[int, tuple[Framer, Callable[[str, str], None]]] = {}
        self._due: list[tuple[Callable[[str, str], None], str, str]] = []

    # -- connections ------------------------------------------------------------------------------------

    def connect(self, domid: int = 0, *, path: str | None = None) -> SimConnection:
        """A new connection speaking for ``domid`` (0: the privileged control domain)."""
        with self._lock:
            cid = self.core.connect(domid)
            conn = SimConnection(self, cid, domid, path or f"sim-xenstored:dom{domid}")
            self._conns[cid] = conn
            return conn

    def connect_socket(self) -> SimConnection:
        """Like ``connect(0)``: what a process in dom0 gets from xenstored's Unix socket."""
        return self.connect(0, path=DEFAULT_SOCKET)

    @property
    def connections(self) -> int:
        """How many client connections are open (leak checks)."""
        return len(self._conns)

    def _receive(self, conn: SimConnection, data: bytes) -> None:
        with self._lock:
            self._deliver(self.core.receive_data(conn.conn_id, data))

    def _disconnect(self, conn: SimConnection) -> None:
        with self._lock:
            self.core.disconnect(conn.conn_id)
            self._conns.pop(conn.conn_id, None)

    def attach(self, domid: int, on_watch: Callable[[str, str], None]) -> int:
        """An in-process connection speaking for ``domid`` (a simulated guest's own). Its watch events call
        ``on_watch(path, token)``; issue its requests with ``call_as``. Returns the connection id."""
        with self._lock:
            cid = self.core.connect(domid)
            self._listeners[cid] = (Framer(), on_watch)
            return cid

    def call_as(self, conn: int, request: Request[Any]) -> Any:
        """Issue ``request`` on an ``attach``ed connection; raises the xenstore error it answers."""
        with self._lock:
            value, outputs = self.core.call(conn, request)
            self._deliver(outputs)
            return value

    def detach(self, conn: int) -> None:
        with self._lock:
            if self._listeners.pop(conn, None) is not None:
                self.core.disconnect(conn)

    def _deliver(self, outputs: list[Output]) -> None:
        with self._lock:
            self._route(outputs)
            # Guests react after the request that woke them is fully answered, like a separate process.
            while self._due:
                callback, path, token = self._due.pop(0)
                callback(path, token)

    def _route(self, outputs: list[Output]) -> None:
        for o in outputs:
            listener = self._listeners.get(o.conn)
            if listener is not None:
                if isinstance(o, Send):
                    framer, callback = listener
                    framer.receive_data(o.data)
                    while (msg := framer.next_message()) is not None:
                        if msg.type == XsType.WATCH_EVENT:
                            path, token = msg.payload.split(b"\0")[:2]
                            self._due.append((callback, path.decode(), token.decode()))
                continue
            target = self._conns.get(o.conn)
            if target is None:
                continue
            if isinstance(o, Send):
                target._push(o.data)
            elif isinstance(o, Drop):
                log.debug("dropping %r: %s", target, o.reason)
                target._drop()

    def _call(self, request: Request[Any]) -> Any:
        with self._lock:
            value, outputs = self.core.call(self._toolstack, request)
            self._deliver(outputs)
            return value

    # -- the toolstack's direct access (runs as domain 0, fires watches) --------------------------------

    def write(self, path: str, value: bytes | str) -> None:
        """Set ``path`` (creating parents), as XS_WRITE from dom0."""
        self._call(Write(path, value.encode() if isinstance(value, str) else bytes(value)))

    def read(self, path: str) -> bytes:
        """The value at ``path``; raises ``NoEntry``."""
        value: bytes = self._call(Read(path))
        return value

    def exists(self, path: str) -> bool:
        with self._lock:
            return path in self.core.store.nodes

    def mkdir(self, path: str) -> None:
        self._call(Mkdir(path))

    def rm(self, path: str) -> None:
        """Remove ``path`` and its subtree (a missing node is fine)."""
        self._call(Rm(path))

    def directory(self, path: str) -> tuple[str, ...]:
        """The children of ``path`` (no 4096-byte limit here)."""
        with self._lock:
            node = self.core.store.nodes.get(path)
        if node is None:
            self._call(Directory(path))  # raises NoEntry the usual way
        return () if node is None else node.children

    def get_perms(self, path: str) -> tuple[Perm, ...]:
        value: tuple[Perm, ...] = self._call(GetPerms(path))
        return value

    def set_perms(self, path: str, perms: Iterable[Perm]) -> None:
        self._call(SetPerms(path, tuple(perms)))

    def introduce(self, domid: int, gfn: int = 0, evtchn: int = 0) -> None:
        """XS_INTRODUCE ``domid``: fires ``@introduceDomain``."""
        self._call(Introduce(domid, gfn, evtchn))

    def release(self, domid: int) -> None:
        """XS_RELEASE ``domid``: fires ``@releaseDomain``. A domain that was never introduced only fires
        the watch (xenstored notices any domain's death), so the simulator may call this for every domain
        it destroys."""
        with self._lock:
            if domid in self.core.domains:
                self._call(Release(domid))
            else:
                self._deliver(self.core.fire_special("@releaseDomain", domid))

    def domain_changed(self, domid: int) -> None:
        """Fire ``@releaseDomain`` without releasing (a domain shut down, crashed or died)."""
        with self._lock:
            self._deliver(self.core.fire_special("@releaseDomain", domid))

    def is_introduced(self, domid: int) -> bool:
        with self._lock:
            return domid == 0 or domid in self.core.domains

    def dump(self, path: str = "/") -> dict[str, bytes]:
        """Every node at or below ``path`` with its value (for assertions and debugging)."""
        with self._lock:
            nodes = dict(self.core.store.nodes)
        prefix = "/" if path == "/" else path + "/"
        return {p: n.value for p, n in sorted(nodes.items()) if p == path or p.startswith(prefix)}

    def close(self) -> None:
        """Hang up on every client connection (their clients see the end of the stream)."""
        with self._lock:
            for conn in list(self._conns.values()):
                self.core.disconnect(conn.conn_id)
                conn._drop()


# -------------------------------------------------------------------------------------------------------------
# dom0's kernel's xenstore ring, for a xenstored running in the simulated dom0
# -------------------------------------------------------------------------------------------------------------

PAGE = 4096


class SimDom0Xenbus:
    """dom0's kernel's xenstore page and the unbound port (remote domain 0) it allocated for xenstored."""

    def __init__(self, xen: Any) -> None:
        from ._evtchn import SimPortDoorbell

        self.xen = xen
        with xen.lock:
            self.mfn: int = xen.memory.alloc(0, 1)[0]
            self.port: int = xen.evtchn.alloc_unbound(0, DomId.SELF, 0)
        #: dom0's kernel's end of the channel (its xenbus driver's interrupt).
        self.bell = SimPortDoorbell(xen, 0, self.port)

    def front(self, *, poll: float = 0.0005) -> RingDevice:
        """The front end, as dom0's kernel uses it (``Client(front)`` plays /dev/xen/xenbus in dom0)."""
        return RingDevice(XenstoreRing(self.xen.memory.page(self.mfn)), self.bell, path="dom0 xenbus", poll=poll)

    def map(self, kernel: Any, length: int, offset: int, readonly: bool) -> Any:
        if length != PAGE or offset != 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        m = self.xen.memory.map(kernel, length, readonly, "xenstore page")
        m.put(0, self.mfn)
        return m


_DOM0: weakref.WeakKeyDictionary[Any, SimDom0Xenbus] = weakref.WeakKeyDictionary()


def dom0_xenbus(xen: Any) -> SimDom0Xenbus:
    """dom0's kernel's xenstore ring on ``xen`` (allocated on first use, one per host)."""
    with xen.lock:
        x = _DOM0.get(xen)
        if x is None:
            x = _DOM0[xen] = SimDom0Xenbus(xen)
        return x


class SimXenbusBackendFile:
    """One open /dev/xen/xenbus_backend: ``IOCTL_XENBUS_BACKEND_EVTCHN`` answers the port, ``mmap`` of one
    page at offset 0 is the page (root only, as the device node is)."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.xenbus = dom0_xenbus(kernel.xen)
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def fileno(self) -> int:
        return self._fd

    def ioctl(self, request: int, arg: bytearray) -> int:
        if request == IOCTL_XENBUS_BACKEND_EVTCHN.request:
            return self.xenbus.port
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))

    def mmap(self, length: int, offset: int, readonly: bool) -> Any:
        return self.xenbus.map(self.kernel, length, offset, readonly)

    def close(self) -> None:
        os.close(self._fd)


class SimXsdFile:
    """/proc/xen/xsd_kva (mmap: the page) or /proc/xen/xsd_port (read: the port in decimal, then EOF)."""

    def __init__(self, kernel: Any, name: str) -> None:
        self.kernel = kernel
        self.name = name
        self.xenbus = dom0_xenbus(kernel.xen)
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._offset = 0

    def fileno(self) -> int:
        return self._fd

    def read(self, n: int) -> bytes:
        if self.name != "xsd_port":
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        text = str(self.xenbus.port).encode()
        out = text[self._offset : self._offset + n]
        self._offset += len(out)
        return out

    def mmap(self, length: int, offset: int, readonly: bool) -> Any:
        if self.name != "xsd_kva":
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return self.xenbus.map(self.kernel, length, offset, readonly)

    def close(self) -> None:
        os.close(self._fd)
