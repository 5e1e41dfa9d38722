"""The xenstore ring page (``struct xenstore_domain_interface``) over any buffer, for either end.

Rule 1: one implementation serves both ends: the front end (a guest) writes ``req`` and reads ``rsp``, the
back end (xenstored) the reverse, and ``XenstoreRing(view, back=True)`` is the same code with the two
halves swapped. ``XenstoreRing`` does no I/O and signals nothing: ``write``/``read`` move bytes and say how
many. ``RingDevice`` adds the event channel (any ``Doorbell``) and makes the pair a ``Device`` that the
xenstore clients (or a server) can use like the socket.

Layout (io/xs_wire.h, docs/misc/xenstore-ring.txt): ``req[1024]`` at 0, ``rsp[1024]`` at 1024, then uint32
``req_cons, req_prod, rsp_cons, rsp_prod`` at 2048..2063, ``server_features`` 2064, ``connection`` 2068,
``error`` 2072 and, from Xen 4.21, ``evtchn_port`` 2076. Indices are free-running uint32 byte counters; the
byte with index ``i`` lives at ``i % 1024``.

The peer is not trusted: each index it owns is read once per call, and a producer more than 1024 bytes
ahead of its consumer raises ``ProtocolError`` (the back end then reports XENSTORE_ERROR_RINGIDX).

The signalling fields (docs/misc/xenstore-ring.txt) are honoured by the front end of a ``RingDevice`` only
where the back end advertised them in ``server_features``: a non-zero ``error`` (feature ERROR) means
xenstored stopped serving the ring, and every read or write then raises ``ConnectionClosed`` naming it;
while ``connection`` is XENSTORE_RECONNECT (feature RECONNECTION) nothing but that field is looked at, and
``RingDevice.reconnect`` asks for such a reset and waits for it. Python
gives no memory barriers; data is copied before the index that publishes it is stored, and the index read
before the data it covers, which is the order x86's TSO needs. Other architectures need more than this.
"""

from __future__ import annotations

import enum
import errno
import select
import struct
import time
from dataclasses import dataclass
from typing import Protocol

from ..errors import ConnectionClosed, ProtocolError, Timeout, XenstoreNotSupported

__all__ = [
    "XENSTORE_RING_SIZE",
    "ConnectionState",
    "Doorbell",
    "RingDevice",
    "RingErrorCode",
    "RingLayout",
    "ServerFeature",
    "XenstoreRing",
]

XENSTORE_RING_SIZE = 1024
_U32 = struct.Struct("<I")
_MOD = 2**32


class ServerFeature(enum.IntFlag):
    """``XENSTORE_SERVER_FEATURE_*``: bits of ``server_features``."""

    RECONNECTION = 1
    ERROR = 2
    WATCHDEPTH = 4  # Xen >= 4.19
    DOMID_ANY = 8  # Xen >= 4.21


class ConnectionState(enum.IntEnum):
    """``XENSTORE_CONNECTED`` / ``XENSTORE_RECONNECT``: the ``connection`` field."""

    CONNECTED = 0
    RECONNECT = 1


class RingErrorCode(enum.IntEnum):
    """``XENSTORE_ERROR_*``: the ``error`` field."""

    NONE = 0
    COMM = 1
    RINGIDX = 2
    PROTO = 3


@dataclass(frozen=True)
class RingLayout:
    """Offsets of ``struct xenstore_domain_interface`` (declared once; tests check them against gcc)."""

    req: int = 0
    rsp: int = XENSTORE_RING_SIZE
    req_cons: int = 2048
    req_prod: int = 2052
    rsp_cons: int = 2056
    rsp_prod: int = 2060
    server_features: int = 2064
    connection: int = 2068
    error: int = 2072
    evtchn_port: int = 2076  # Xen >= 4.21
    size_417: int = 2076  # sizeof in Xen 4.17 .. 4.20
    size_421: int = 2080  # sizeof from Xen 4.21


LAYOUT = RingLayout()


class XenstoreRing:
    """One end of a xenstore ring in ``view`` (at least 2076 bytes, usually the whole 4 KiB page)."""

    def __init__(self, view: memoryview | bytearray, *, back: bool = False) -> None:
        mv = view if isinstance(view, memoryview) else memoryview(view)
        if mv.nbytes < LAYOUT.size_417:
            raise ValueError(f"a xenstore ring needs {LAYOUT.size_417} bytes, got {mv.nbytes}")
        self._mv = mv.cast("B")
        self.back = back
        L = LAYOUT
        if back:  # xenstored: consumes requests, produces responses
            self._out, self._out_cons, self._out_prod = L.rsp, L.rsp_cons, L.rsp_prod
            self._in, self._in_cons, self._in_prod = L.req, L.req_cons, L.req_prod
        else:  # the guest: produces requests, consumes responses
            self._out, self._out_cons, self._out_prod = L.req, L.req_cons, L.req_prod
            self._in, self._in_cons, self._in_prod = L.rsp, L.rsp_cons, L.rsp_prod

    def close(self) -> None:
        """Let go of the buffer (release our view of it), so whoever mapped the page can unmap it: an
        ``mmap`` refuses to close while a view of it is alive. The ring is unusable afterwards. Idempotent."""
        self._mv.release()

    def __enter__(self) -> XenstoreRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, off: int) -> int:
        value: int = _U32.unpack_from(self._mv, off)[0]
        return value

    def _set(self, off: int, value: int) -> None:
        _U32.pack_into(self._mv, off, value % _MOD)

    @staticmethod
    def _used(prod: int, cons: int, what: str) -> int:
        used = (prod - cons) % _MOD
        if used > XENSTORE_RING_SIZE:
            raise ProtocolError(
                f"xenstore ring {what}: producer {prod} is {used} bytes ahead of consumer {cons} "
                f"(at most {XENSTORE_RING_SIZE})"
            )
        return used

    def writable(self) -> int:
        """Free bytes in our output half."""
        return XENSTORE_RING_SIZE - self._used(self._get(self._out_prod), self._get(self._out_cons), "output")

    def readable(self) -> int:
        """Bytes waiting in our input half."""
        return self._used(self._get(self._in_prod), self._get(self._in_cons), "input")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Copy as much of ``data`` as fits into the output half; return how much (notify the peer if > 0)."""
        prod = self._get(self._out_prod)
        cons = self._get(self._out_cons)  # the peer's: read once
        room = XENSTORE_RING_SIZE - self._used(prod, cons, "output")
        n = min(room, len(data))
        src = memoryview(data).cast("B")
        done = 0
        while done < n:
            at = (prod + done) % XENSTORE_RING_SIZE
            chunk = min(n - done, XENSTORE_RING_SIZE - at)
            base = self._out + at
            self._mv[base : base + chunk] = src[done : done + chunk]
            done += chunk
        if n:
            self._set(self._out_prod, prod + n)  # publish after the data
        return n

    def read(self, n: int = XENSTORE_RING_SIZE) -> bytes:
        """Take up to ``n`` bytes from the input half (notify the peer if any were taken)."""
        prod = self._get(self._in_prod)  # the peer's: read once, before the data it covers
        cons = self._get(self._in_cons)
        take = min(n, self._used(prod, cons, "input"))
        out = bytearray()
        while len(out) < take:
            at = (cons + len(out)) % XENSTORE_RING_SIZE
            chunk = min(take - len(out), XENSTORE_RING_SIZE - at)
            base = self._in + at
            out += self._mv[base : base + chunk]
        if take:
            self._set(self._in_cons, cons + take)
        return bytes(out)

    # -- signalling fields --------------------------------------------------------------------------------

    @property
    def server_features(self) -> ServerFeature:
        return ServerFeature(self._get(LAYOUT.server_features))

    @server_features.setter
    def server_features(self, value: int) -> None:
        self._require_back("server_features")
        self._set(LAYOUT.server_features, value)

    @property
    def connection(self) -> int:
        return self._get(LAYOUT.connection)

    @connection.setter
    def connection(self, value: int) -> None:
        self._set(LAYOUT.connection, value)

    @property
    def error(self) -> int:
        return self._get(LAYOUT.error)

    @error.setter
    def error(self, value: int) -> None:
        self._require_back("error")
        self._set(LAYOUT.error, value)

    def _require_back(self, what: str) -> None:
        if not self.back:
            raise PermissionError(f"only xenstored (the back end) writes {what}")

    def reset(self, start: int = 0) -> None:
        """Back end: empty both halves (indices set to ``start``), as after a reconnection."""
        self._require_back("the indices on reset")
        for off in (LAYOUT.req_cons, LAYOUT.req_prod, LAYOUT.rsp_cons, LAYOUT.rsp_prod):
            self._set(off, start)


class Doorbell(Protocol):
    """The event channel of a ring, as the ring needs it (an adapter over ``xenpure.evtchn`` provides it).

    ``fileno`` is readable while a notification from the peer is pending; ``ack`` takes the pending
    notifications and unmasks the port; ``notify`` signals the peer.
    """

    def fileno(self) -> int: ...

    def notify(self) -> None: ...

    def ack(self) -> None: ...


class RingDevice:
    """A ``Device`` (fileno/read/write/close) over one end of a xenstore ring and its event channel, so
    ``Client(RingDevice(...))`` talks xenstore through a shared page (front end), or a server reads requests
    through it (``back=True``).

    ``read`` takes the pending notifications first, then the bytes, and raises ``BlockingIOError`` if the
    ring is empty (the clients then wait on ``fileno`` again, deadline included). ``write`` never consumes
    notifications (they belong to the reader): when the ring is full it polls for space every ``poll``
    seconds, for at most ``write_timeout`` seconds (then ``Timeout``: the peer stopped reading). Waiting is
    rare: a message is at most 4112 bytes, the ring 1024, and the peer drains it as soon as it is notified.

    On the front end, both raise ``ConnectionClosed`` once xenstored has set the ring's ``error`` (it
    advertises ERROR), and both hold off (``read`` says "nothing yet", ``write`` waits) while a reconnection
    is in progress (``connection`` is XENSTORE_RECONNECT and xenstored advertises RECONNECTION).
    """

    def __init__(
        self,
        ring: XenstoreRing,
        bell: Doorbell,
        *,
        path: str = "xenstore ring",
        poll: float = 0.0005,
        write_timeout: float | None = 30.0,
    ) -> None:
        self.ring = ring
        self.bell = bell
        self.path = path
        self._poll = poll
        self.write_timeout = write_timeout
        self._closed = False

    def fileno(self) -> int:
        if self._closed:
            raise ValueError(f"{self.path} is closed")
        return self.bell.fileno()

    def _usable(self) -> bool:
        """Front end: raise ``ConnectionClosed`` if xenstored gave up on the ring; False while a
        reconnection is in progress (the ring's other fields mean nothing then). The back end: always True."""
        if self.ring.back:
            return True
        features = self.ring.server_features
        if ServerFeature.ERROR in features and (err := self.ring.error):
            raise ConnectionClosed(f"xenstored stopped serving {self.path}: its error indicator is {_error_name(err)}")
        return not (ServerFeature.RECONNECTION in features and self.ring.connection == ConnectionState.RECONNECT)

    def read(self, n: int) -> bytes:
        """Bytes from the ring; ``BlockingIOError`` (EAGAIN) if there are none yet (the notification was
        for something else, e.g. the peer freeing space): wait on ``fileno`` again, as on a non-blocking
        socket. Never ``b""``, which would mean the end of the stream."""
        self.fileno()
        self.bell.ack()  # before looking at the ring, so a notification that races with us is not lost
        if not self._usable():
            raise BlockingIOError(errno.EAGAIN, f"{self.path}: a reconnection is in progress")
        data = self.ring.read(n)
        if not data:
            raise BlockingIOError(errno.EAGAIN, "no data in the xenstore ring yet")
        self.bell.notify()  # room for the peer to write more
        return data

    def write(self, data: bytes) -> int:
        """Put as much of ``data`` in the ring as fits, waiting while it is full (or being reconnected); raises
        ``Timeout`` if no byte fits within ``write_timeout`` seconds (a peer that stopped reading)."""
        deadline = None if self.write_timeout is None else time.monotonic() + self.write_timeout
        while True:
            if self._closed:
                raise ValueError(f"{self.path} is closed")
            if self._usable():
                n = self.ring.write(data)
                if n:
                    self.bell.notify()
                    return n
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(
                    f"{self.path}: the request half of the ring stayed full (or reconnecting) for "
                    f"{self.write_timeout} s; the other end is not reading it"
                )
            time.sleep(self._poll)

    def reconnect(self, timeout: float) -> None:
        """Front end: ask xenstored to reset the ring (docs/misc/xenstore-ring.txt, "ring reconnection") and
        wait until it has. Afterwards both halves are empty and the connection has no watches, transactions
        or requests in flight: drive it with a new ``Client`` (the old one's requests will never be answered).

        Raises ``XenstoreNotSupported`` if xenstored does not advertise RECONNECTION, ``Timeout`` if it does
        not finish within ``timeout`` seconds, ``ConnectionClosed`` if it reports an error instead.
        """
        if self.ring.back:
            raise PermissionError("only the guest (the front end) asks for a reconnection")
        if ServerFeature.RECONNECTION not in self.ring.server_features:
            raise XenstoreNotSupported(
                "ENOSYS", "ring reconnection", None, f"xenstored does not advertise RECONNECTION on {self.path}"
            )
        self.ring.connection = ConnectionState.RECONNECT
        self.bell.notify()
        deadline = time.monotonic() + timeout
        while self.ring.connection != ConnectionState.CONNECTED:
            if ServerFeature.ERROR in self.ring.server_features and (err := self.ring.error):
                raise ConnectionClosed(f"reconnecting {self.path}: xenstored's error indicator is {_error_name(err)}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"xenstored did not reset {self.path} within {timeout} s (connection is still 1)")
            select.select([self.bell.fileno()], [], [], min(left, 0.1))  # xenstored rings when done
            self.bell.ack()

    def close(self) -> None:
        """Stop using the ring. The page and the event channel belong to whoever mapped and bound them."""
        self._closed = True

    def __enter__(self) -> RingDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RingDevice {self.path} {'back' if self.ring.back else 'front'}>"


def _error_name(value: int) -> str:
    try:
        return f"{value} (XENSTORE_ERROR_{RingErrorCode(value).name})"
    except ValueError:
        return f"{value} (not a XENSTORE_ERROR_* this client knows)"
