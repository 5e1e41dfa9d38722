"""The xenstored daemon: Unix sockets (and in-process rings) in front of the sans-I/O ``ServerCore``.

Rule 1: the daemon only moves bytes. What a request means and what it answers is the core's; here a
``selectors`` loop accepts connections, feeds what they send to the core, journals the changes when there
is a ``--state`` file (before any reply of that batch leaves), and queues the core's outputs. Each
transport is a thin adapter: a socket connection (dom0, read-write or read-only) or one end of a
xenstore ring with its doorbell (a domain).

Bounds, so a hostile or stuck client cannot grow the daemon's memory: a connection with ``outstanding``
replies unsent (the core's quota, 20 by default) is not read until its peer takes them; one whose unsent
output passes ``max_backlog`` bytes (watch events it does not read) is dropped (a ring domain, which cannot
be hung up on, loses the events instead and the daemon logs it). A hostile ring index sets the ring's
``error`` to XENSTORE_ERROR_RINGIDX and the ring is no longer served (XSA-72); a message the core refuses
to frame (a length over XENSTORE_PAYLOAD_MAX) does the same with XENSTORE_ERROR_PROTO.

``--trace FILE`` logs every message decoded, one line each way. SIGTERM and SIGINT stop the loop cleanly
when the daemon runs through ``main``; the handlers are installed there and restored on the way out.

``--xen`` serves the domains of the Xen host the daemon runs on (``_xen.XenDomains``: dom0's own ring, the
rings INTRODUCE names, VIRQ_DOM_EXC); that module decides what to map and bind, and hands the daemon rings
(``serve_ring``/``drop_rings``) and descriptors to watch (``watch_fd``), so the loop stays one loop.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import selectors
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import IO, Any

from ...errors import ProtocolError
from .._ring import Doorbell, RingErrorCode, ServerFeature, XenstoreRing
from .._server_core import Drop, Output, Send, ServerCore
from .._wire import Framer, Message, XsType, decode_request
from ._state import StateFile

__all__ = ["DEFAULT_MAX_BACKLOG", "Xenstored", "main"]

log = logging.getLogger("xenpure.xenstore.daemon")

#: Unsent output (bytes) after which a socket client is dropped.
DEFAULT_MAX_BACKLOG = 4 * 1024 * 1024


class _Peer:
    """One connection's queue of outgoing messages and how many of them are replies."""

    def __init__(self, conn: int, domid: int, name: str) -> None:
        self.conn = conn
        self.domid = domid
        self.name = name
        self.out: collections.deque[tuple[bytes, bool]] = collections.deque()
        self.offset = 0  # into out[0]
        self.queued = 0
        self.replies = 0
        self.closing = False
        self.trace_in = Framer(unknown_types=True)

    def queue(self, data: bytes) -> None:
        # A Send is one reply (type != WATCH_EVENT) or one watch event; replies count against "outstanding".
        is_reply = int.from_bytes(data[:4], "little") != XsType.WATCH_EVENT
        self.out.append((data, is_reply))
        self.queued += len(data)
        self.replies += is_reply

    def sent(self, n: int) -> None:
        self.queued -= n
        while n:
            data, is_reply = self.out[0]
            left = len(data) - self.offset
            if n < left:
                self.offset += n
                return
            n -= left
            self.out.popleft()
            self.offset = 0
            self.replies -= is_reply

    def pending(self) -> memoryview | None:
        if not self.out:
            return None
        return memoryview(self.out[0][0])[self.offset :]


class _SocketPeer(_Peer):
    def __init__(self, conn: int, sock: socket.socket, name: str) -> None:
        super().__init__(conn, 0, name)
        self.sock = sock


class _RingPeer(_Peer):
    def __init__(self, conn: int, domid: int, ring: XenstoreRing, bell: Doorbell, name: str) -> None:
        super().__init__(conn, domid, name)
        self._ring: XenstoreRing | None = ring
        self.bell = bell
        self.dead = False

    @property
    def ring(self) -> XenstoreRing:
        if self._ring is None:
            raise ValueError(f"{self.name} is no longer served")
        return self._ring

    def forget_ring(self) -> None:
        """Stop serving: drop the ring (its view of the page), so whoever mapped the page can unmap it at once,
        however long this peer object lingers (a selector batch, a traceback)."""
        self.dead = True
        self._ring = None


class Xenstored:
    """A xenstored serving ``core`` on Unix sockets and rings. ``serve`` runs the loop until ``stop``."""

    def __init__(
        self,
        core: ServerCore | None = None,
        *,
        socket_path: str | None = None,
        ro_socket_path: str | None = None,
        trace: IO[str] | None = None,
        state_path: str | None = None,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ) -> None:
        self.core = core or ServerCore()
        self.trace = trace
        self.max_backlog = max_backlog
        self.state = StateFile(state_path) if state_path else None
        if self.state is not None:
            n = self.state.restore(self.core)
            log.info("restored %d nodes (%d journal entries) from %s", len(self.core.store.nodes), n, state_path)
        self._sel = selectors.DefaultSelector()
        self._peers: dict[int, _Peer] = {}
        self._listeners: list[tuple[socket.socket, str, bool]] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._stopping = False
        self._closed = False
        self._lock = threading.Lock()  # add_ring/connect_as from other threads
        self._adds: list[Any] = []
        for path, ro in ((socket_path, False), (ro_socket_path, True)):
            if path:
                self._listen(path, ro)

    # -- transports -------------------------------------------------------------------------------------

    def _listen(self, path: str, readonly: bool) -> None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket from a previous run
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        os.chmod(path, 0o660 if readonly else 0o600)
        s.listen(64)
        s.setblocking(False)
        self._listeners.append((s, path, readonly))
        self._sel.register(s, selectors.EVENT_READ, ("listen", readonly))

    def connect_as(self, domid: int, *, readonly: bool = False) -> socket.socket:
        """A connection speaking for ``domid`` (thread-safe): the client end of a socketpair. What a
        domain's ring would give, without Xen -- the conformance suite's unprivileged connections."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            self._adds.append(("sock", theirs, domid, readonly))
        self._wake()
        return mine

    def add_ring(self, domid: int, ring: XenstoreRing, bell: Doorbell) -> None:
        """Serve a domain's ring (the back end) rung through ``bell`` (thread-safe)."""
        with self._lock:
            self._adds.append(("ring", ring, bell, domid))
        self._wake()

    def _take_adds(self) -> None:
        with self._lock:
            adds, self._adds = self._adds, []
        for add in adds:
            if add[0] == "sock":
                _, sock, domid, readonly = add
                self._add_socket(sock, domid, readonly, f"pair:dom{domid}")
            else:
                _, ring, bell, domid = add
                self.serve_ring(domid, ring, bell)

    def serve_ring(self, domid: int, ring: XenstoreRing, bell: Doorbell) -> int:
        """Serve a domain's ring now (on the loop's thread; ``add_ring`` from any other). Returns the
        connection id. Requests already waiting in the ring are answered at once."""
        # What this server does on a ring: report a broken ring in `error`, and watch depths.
        ring.server_features = ServerFeature.ERROR | ServerFeature.WATCHDEPTH
        cid = self.core.connect(domid)
        peer = _RingPeer(cid, domid, ring, bell, f"ring:dom{domid}")
        self._peers[cid] = peer
        self._sel.register(bell.fileno(), selectors.EVENT_READ, ("ring", peer))
        log.debug("conn %d: %s", cid, peer.name)
        self._ring_io(peer)
        return cid

    def drop_rings(self, domid: int, why: str = "released") -> int:
        """Stop serving every ring of ``domid`` (on the loop's thread), those ``add_ring`` queued included;
        how many there were. The page and the doorbell stay with whoever mapped and bound them."""
        with self._lock:
            queued = [a for a in self._adds if a[0] == "ring" and a[3] == domid]
            self._adds = [a for a in self._adds if not (a[0] == "ring" and a[3] == domid)]
        peers = [p for p in self._peers.values() if isinstance(p, _RingPeer) and p.domid == domid]
        for peer in peers:
            self._close(peer, why)
        return len(peers) + len(queued)

    def watch_fd(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the loop's thread whenever ``fd`` is readable (e.g. VIRQ_DOM_EXC's handle)."""
        self._sel.register(fd, selectors.EVENT_READ, ("call", callback))

    def unwatch_fd(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fd)

    def deliver(self, outputs: list[Output]) -> None:
        """Send outputs the core produced outside a request (e.g. ``domain_gone``), journalling first."""
        if self.state is not None:
            self.state.record(self.core)
        self._route(outputs)

    def _add_socket(self, sock: socket.socket, domid: int, readonly: bool, name: str) -> None:
        sock.setblocking(False)
        cid = self.core.connect(domid, readonly=readonly)
        peer = _SocketPeer(cid, sock, name)
        peer.domid = domid
        self._peers[cid] = peer
        self._sel.register(sock, selectors.EVENT_READ, ("sock", peer))
        log.debug("conn %d: %s", cid, name)

    # -- the loop ---------------------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def stop(self) -> None:
        """Ask the loop to finish (from another thread or a signal handler)."""
        self._stopping = True
        self._wake()

    def serve(self, *, ready: threading.Event | None = None) -> None:
        """Run until ``stop``; then close every connection and listener."""
        if ready is not None:
            ready.set()
        try:
            while not self._stopping:
                for key, mask in self._sel.select(timeout=1.0):
                    try:
                        self._event(key, mask)
                    except Exception:  # one connection's failure must not stop the others
                        log.exception("xenstored: dropping a connection after an internal error")
                        peer = key.data[1]
                        if isinstance(peer, _Peer):
                            self._close(peer, "internal error")
        finally:
            self.close()

    def _event(self, key: selectors.SelectorKey, mask: int) -> None:
        kind, what = key.data
        if kind == "wake":
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
            self._take_adds()
        elif kind == "listen":
            self._accept(key.fileobj, what)  # type: ignore[arg-type]
        elif kind == "sock":
            self._socket_io(what, mask)
        elif kind == "ring":
            self._ring_io(what)
        elif kind == "call":
            what()

    def _accept(self, lsock: socket.socket, readonly: bool) -> None:
        try:
            sock, _ = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._add_socket(sock, 0, readonly, "socket-ro" if readonly else "socket")

    def _socket_io(self, peer: _SocketPeer, mask: int) -> None:
        if mask & selectors.EVENT_READ and peer.replies < self._outstanding(peer):
            try:
                data = peer.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._close(peer, "hung up")
                return
            if data:
                self._feed(peer, data)
        if peer.conn in self._peers:
            self._flush_socket(peer)

    def _outstanding(self, peer: _Peer) -> int:
        q = self.core._quota(peer.domid, "outstanding") if peer.domid else 0
        return q if q > 0 else 1 << 30

    def _feed(self, peer: _Peer, data: bytes) -> None:
        if self.trace is not None:
            self._trace_in(peer, data)
        outputs = self.core.receive_data(peer.conn, data)
        if self.state is not None:
            self.state.record(self.core)  # durable before any reply of this batch leaves
        self._route(outputs)

    def _route(self, outputs: list[Output]) -> None:
        touched: set[int] = set()
        for o in outputs:
            peer = self._peers.get(o.conn)
            if peer is None:
                continue
            if isinstance(o, Drop):
                log.info("conn %d (%s) dropped: %s", o.conn, peer.name, o.reason)
                self._trace(peer, "--", f"DROP {o.reason}")
                peer.closing = True
                if isinstance(peer, _RingPeer):  # a ring cannot be hung up on: it says why and is not served
                    self._ring_write(peer)
                    self._kill_ring(peer, o.reason, RingErrorCode.PROTO)
                    continue
            elif isinstance(o, Send):
                if self.trace is not None:
                    for m in _messages(o.data):
                        self._trace(peer, "<-", _describe_out(m))
                if isinstance(peer, _RingPeer) and peer.queued > self.max_backlog:
                    log.warning("%s: watch event backlog over %d bytes, dropping an event", peer.name, self.max_backlog)
                    continue
                peer.queue(o.data)
            touched.add(o.conn)
        for cid in touched:
            peer = self._peers.get(cid)
            if isinstance(peer, _SocketPeer):
                if peer.queued > self.max_backlog:
                    self._close(peer, f"over {self.max_backlog} bytes of unread output")
                else:
                    self._flush_socket(peer)
            elif isinstance(peer, _RingPeer):
                self._ring_write(peer)

    def _flush_socket(self, peer: _SocketPeer) -> None:
        while (view := peer.pending()) is not None:
            try:
                n = peer.sock.send(view)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._close(peer, f"send failed: {e}")
                return
            peer.sent(n)
        if peer.closing and peer.pending() is None:
            self._close(peer, "dropped")
            return
        want = selectors.EVENT_WRITE if peer.pending() is not None else 0
        if peer.replies < self._outstanding(peer):
            want |= selectors.EVENT_READ
        if want == 0:
            want = selectors.EVENT_WRITE
        self._sel.modify(peer.sock, want, ("sock", peer))

    def _ring_io(self, peer: _RingPeer) -> None:
        if peer.dead:
            return
        peer.bell.ack()
        try:
            while not peer.dead and peer.replies < self._outstanding(peer):
                data = peer.ring.read()
                if not data:
                    break
                peer.bell.notify()
                self._feed(peer, data)
            self._ring_write(peer)
        except ProtocolError as e:  # a hostile index (XSA-72): stop serving this ring
            self._kill_ring(peer, str(e))

    def _ring_write(self, peer: _RingPeer) -> None:
        if peer.dead:
            return
        wrote = False
        try:
            while (view := peer.pending()) is not None:
                n = peer.ring.write(view)
                if not n:
                    break
                wrote = True
                peer.sent(n)
        except ProtocolError as e:
            self._kill_ring(peer, str(e))
            return
        if wrote:
            peer.bell.notify()

    def _kill_ring(self, peer: _RingPeer, why: str, code: RingErrorCode = RingErrorCode.RINGIDX) -> None:
        """Stop serving a ring whose peer broke it: the connection goes, then the ring says why (a hostile
        index: RINGIDX; a message the protocol forbids, e.g. a length over XENSTORE_PAYLOAD_MAX: PROTO)."""
        log.warning("%s: %s", peer.name, why)
        peer.ring.error = code
        self._close(peer, why)
        with contextlib.suppress(OSError, ValueError):
            peer.bell.notify()

    def _close(self, peer: _Peer, why: str) -> None:
        if self._peers.pop(peer.conn, None) is None:
            return
        log.debug("conn %d (%s) closed: %s", peer.conn, peer.name, why)
        self.core.disconnect(peer.conn)
        if isinstance(peer, _SocketPeer):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(peer.sock)
            peer.sock.close()
        elif isinstance(peer, _RingPeer):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(peer.bell.fileno())
            peer.forget_ring()

    def close(self) -> None:
        """Close every connection and listener (the socket files are removed) and the state file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for peer in list(self._peers.values()):
            self._close(peer, "xenstored stopping")
        for s, path, _ in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            s.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._listeners.clear()
        if self.state is not None:
            self.state.record(self.core)
            self.state.close()
        with contextlib.suppress(OSError):
            self._sel.close()

    # -- tracing ----------------------------------------------------------------------------------------

    def _trace_in(self, peer: _Peer, data: bytes) -> None:
        try:
            peer.trace_in.receive_data(data)
            while (m := peer.trace_in.next_message()) is not None:
                self._trace(peer, "->", _describe_in(m))
        except ProtocolError as e:
            self._trace(peer, "->", f"malformed: {e}")

    def _trace(self, peer: _Peer, arrow: str, text: str) -> None:
        if self.trace is not None:
            self.trace.write(f"{time.time():.6f} conn {peer.conn} dom{peer.domid} {arrow} {text}\n")
            self.trace.flush()


def _messages(data: bytes) -> list[Message]:
    f = Framer(unknown_types=True)
    f.receive_data(data)
    out = []
    while (m := f.next_message()) is not None:
        out.append(m)
    return out


def _describe_in(m: Message) -> str:
    head = f"{m.type.name} req {m.req_id} tx {m.tx_id}"
    try:
        return f"{head} {decode_request(m)!r}"[:400]
    except (ProtocolError, KeyError):
        return f"{head} {m.payload[:200]!r}"


def _describe_out(m: Message) -> str:
    parts = [p.decode("utf-8", "replace") for p in m.payload.split(b"\0")]
    return f"{m.type.name} req {m.req_id} tx {m.tx_id} {parts!r}"[:400]


def main(argv: Sequence[str] | None = None) -> int:
    """``xenpure xenstored``: serve until SIGTERM/SIGINT; 0 on a clean stop."""
    p = argparse.ArgumentParser(prog="xenpure xenstored", description="A xenstored in pure Python.")
    add_arguments(p)
    return run(p.parse_args(argv))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", required=True, help="the read-write Unix socket (dom0, privileged)")
    p.add_argument("--ro-socket", help="a read-only Unix socket")
    p.add_argument("--trace", help="log every message, decoded, to this file ('-': stderr)")
    p.add_argument("--state", help="persist the store here and restore it at start")
    p.add_argument("--quota", action="append", default=[], metavar="NAME=VALUE", help="a global quota (repeatable)")
    p.add_argument("--xen", action="store_true", help="serve this Xen host's domains: dom0's own ring, the rings "
                   "INTRODUCE names (grant or foreign map), VIRQ_DOM_EXC (run as root in dom0)")
    p.add_argument("--pid-file", help="write the daemon's process id here (removed on a clean stop)")


def run(args: argparse.Namespace) -> int:
    quotas = {}
    for q in args.quota:
        name, _, value = q.partition("=")
        quotas[name] = int(value)
    trace: IO[str] | None = None
    if args.trace == "-":
        trace = sys.stderr
    elif args.trace:
        trace = open(args.trace, "a", encoding="utf-8")
    if args.xen and not logging.getLogger().handlers:
        # dom0's daemon: what it maps, binds and releases goes to stderr (its log file), with times.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    core = ServerCore(quotas=quotas)
    daemon = Xenstored(
        core,
        socket_path=args.socket,
        ro_socket_path=args.ro_socket,
        trace=trace,
        state_path=args.state,
    )
    xen: Any = None
    pid_file = args.pid_file

    def on_signal(signum: int, frame: FrameType | None) -> None:
        daemon.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if args.xen:
            from ...kernel import LinuxKernel
            from ._xen import XenDomains

            xen = XenDomains(LinuxKernel(), daemon)
            xen.start()
        if pid_file:
            with open(pid_file, "w", encoding="ascii") as f:
                f.write(f"{os.getpid()}\n")
        print(f"xenpure xenstored: listening on {args.socket}", file=sys.stderr, flush=True)
        daemon.serve()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if xen is not None:
            xen.close()
        daemon.close()
        if pid_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pid_file)
        if trace is not None and trace is not sys.stderr:
            trace.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
