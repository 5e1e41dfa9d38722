"""The client side of the xenstore protocol, without I/O.

Rule 1: this object never reads or writes anything. ``send(request)`` returns the bytes to write,
``receive_data(bytes)`` takes what was read (``b""`` for end of stream), ``next_event()`` hands out
``Reply``/``ErrorReply``/``WatchEvent``/``Closed`` events or ``None`` when it needs more bytes. The sync and
asyncio clients only move bytes between a ``Device`` and this object.

Request ids are per connection (no global counter): each ``ClientCore`` numbers its requests from 1, wraps
at 2**32, and never reuses an id still outstanding. Any number of requests may be outstanding (pipelining);
replies are matched strictly by ``req_id``: a reply to an id we did not send, or of another type than the
request, is a ``ProtocolError``. Watch events (``req_id`` 0, type WATCH_EVENT) are never confused with
replies. A ``ProtocolError`` breaks the core for good (a byte stream cannot be resynchronised): every later
call raises it again.

One exception to XENSTORE_PAYLOAD_MAX, seen on real Xen: oxenstored (4.17) answers DIRECTORY with the
whole children list in one reply however long it is (and DIRECTORY_PART with ENOSYS). A reply of type
DIRECTORY to an outstanding DIRECTORY request may therefore be up to ``OVERSIZED_DIRECTORY_MAX`` bytes;
every other message over 4096 bytes is still a ``ProtocolError``.

Every message is logged decoded at DEBUG on logger ``xenpure.xenstore``.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import ConnectionClosed, ProtocolError, XenstoreError
from ._wire import (
    _READ_PACKERS,
    _TYPE_OF,
    HEADER,
    HEADER_SIZE,
    XENSTORE_PAYLOAD_MAX,
    Directory,
    Framer,
    GetDomainPath,
    Read,
    Request,
    XsType,
    parse_error,
    parse_watch_event,
    read_packer,
)

__all__ = ["OVERSIZED_DIRECTORY_MAX", "ClientCore", "Closed", "ErrorReply", "Event", "Reply", "WatchEvent"]

log = logging.getLogger("xenpure.xenstore")

T = TypeVar("T")

_ID_MOD = 2**32
_WATCH_EVENT = XsType.WATCH_EVENT
_ERROR = XsType.ERROR
_READ = XsType.READ
_unpack_header = HEADER.unpack_from
_DEBUG = logging.DEBUG

#: The longest DIRECTORY reply accepted (oxenstored sends over-long ones; see the module docstring).
OVERSIZED_DIRECTORY_MAX = 1 << 20


@dataclass(frozen=True)
class Reply(Generic[T]):
    """A successful reply; ``value`` is decoded by the request's type (bytes for READ...)."""

    req_id: int
    tx_id: int
    request: Request[T]
    value: T


@dataclass(frozen=True)
class ErrorReply:
    """xenstored answered ``request`` with ERROR ``error`` (an errno name such as ``"ENOENT"``)."""

    req_id: int
    tx_id: int
    request: Request[Any]
    error: str

    def exception(self) -> XenstoreError:
        """The errno-named ``XenstoreError`` subclass for this error."""
        return XenstoreError.from_reply(self.error, self.request.TYPE.name, getattr(self.request, "path", None))


@dataclass(frozen=True)
class WatchEvent:
    """A watch fired: ``path`` changed (or is the watched path itself); ``token`` is the one WATCH gave."""

    path: str
    token: str


@dataclass(frozen=True)
class Closed:
    """The other side closed the stream. ``outstanding`` requests will never be answered."""

    outstanding: tuple[Request[Any], ...]


Event = Reply[Any] | ErrorReply | WatchEvent | Closed


def _short(value: object, limit: int = 200) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "..."


class ClientCore:
    """One connection's protocol state: request ids, outstanding requests, and a framer.

    ``pipeline=False`` keeps at most one request on the wire: ``send`` queues the others, and each is
    released by ``data_to_send`` once the reply before it has arrived. The Linux xenbus device needs this
    (seen in the lab, Linux 6.1: a request written while another is unanswered, or a second message in
    the same write, is mangled or lost); xenstored's socket pipelines fine.

    The READ fast path (``send_read`` and ``read_reply``) is the same protocol with less machinery, for the
    call a client makes most: the message is packed by one precompiled struct, the core keeps only the id
    and the path outstanding (no ``Request`` object), and a reply that is exactly the READ reply (or ERROR)
    to that id is decoded straight from the read buffer (no ``Reply`` object). Anything else -- a watch
    event first, a reply cut short, a reply of the wrong type -- goes through ``receive``, which applies
    every check; the fast path's reply then comes as a ``Reply`` with a ``Read`` made for it.
    """

    def __init__(self, *, pipeline: bool = True) -> None:
        self.pipeline = pipeline
        self._framer = Framer(oversized=self._oversized)
        self._next_id = 1
        # req_id -> its request, or the path (a str) of a READ sent by ``send_read``
        self._pending: dict[int, Request[Any] | str] = {}
        self._abandoned: set[int] = set()
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()  # pipeline=False only
        self._on_wire: int | None = None  # pipeline=False: the request written and not yet answered
        self._closed = False
        self._error: ProtocolError | None = None
        # Whether the next bytes received start a message, and can be decoded where they lie: the framer
        # holds nothing, the stream is open and the core unbroken. Kept here so the fast path reads a flag.
        self._clean = True
        self._debug_read = False  # whether the READ last sent is traced (the logger asked once per round trip)

    @property
    def outstanding(self) -> int:
        """How many requests have been sent and not yet answered (abandoned ones included)."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, request: Request[Any], *, tx_id: int = 0) -> bytes:
        """Give ``request`` the next free id of this connection; return the bytes to write.

        Raises ``XenstoreInvalid``/``TooBig`` (and sends nothing) if the request breaks a protocol limit,
        ``ConnectionClosed`` after the end of the stream, ``ProtocolError`` if the core is broken.
        """
        return self.send_request(request, tx_id)[1]

    def send_request(self, request: Request[Any], tx_id: int = 0) -> tuple[int, bytes]:
        """``send``, and the request id it gave ``request``: ``(req_id, bytes to write)``. Replies and
        errors carry this id; ``abandon_id`` takes it."""
        if request.__class__ is Read:
            return self.send_read(request.path, tx_id, request)
        self._check_send(request.TYPE, tx_id)
        req_id = self._next_id
        if req_id in self._pending or req_id == 0:
            req_id = self._free_id()
        data = request.encode(req_id, tx_id)  # raises before any state changes
        self._next_id = (req_id + 1) % _ID_MOD
        self._pending[req_id] = request
        if log.isEnabledFor(_DEBUG):
            log.debug("-> %s req_id=%d tx_id=%d %s", request.TYPE.name, req_id, tx_id, _short(request))
        if len(data) == HEADER_SIZE:
            nudge = self._nudge()
            if self.pipeline:
                return req_id, data + nudge[1]
            self._queue.extend(((req_id, data), nudge))
            return req_id, self.data_to_send()
        if self.pipeline:
            return req_id, data
        self._queue.append((req_id, data))
        return req_id, self.data_to_send()

    def send_read(self, path: str, tx_id: int = 0, request: Read | None = None) -> tuple[int, bytes]:
        """READ ``path``, without a ``Request`` object unless ``request`` (the ``Read`` this is, which replies
        that come as events then carry): ``(req_id, bytes to write)``. Take the reply with ``read_reply``
        (or, whatever came with it, ``receive``). The same checks and errors as ``send``."""
        packer = _READ_PACKERS.get(path)
        if packer is None:
            self._check_send(_READ, tx_id)
            packer = read_packer(path)  # checks the path: raises before any state changes
        pending = self._pending
        req_id = self._next_id
        if req_id in pending or req_id == 0 or self._error is not None or self._closed or not 0 <= tx_id < _ID_MOD:
            self._check_send(_READ, tx_id)
            req_id = self._free_id()
        pack, n, b = packer
        data = pack(2, req_id, tx_id, n, b)  # 2: XsType.READ
        self._next_id = (req_id + 1) % _ID_MOD
        pending[req_id] = path if request is None else request
        # Checked once for the round trip: read_reply traces by the same answer.
        if debug := log.isEnabledFor(_DEBUG):
            log.debug("-> READ req_id=%d tx_id=%d path=%r", req_id, tx_id, path)
        self._debug_read = debug
        if self.pipeline:
            return req_id, data
        self._queue.append((req_id, data))
        return req_id, self.data_to_send()

    def _check_send(self, msg_type: XsType, tx_id: int) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ConnectionClosed(f"cannot send {msg_type.name}: the connection is closed")
        if not 0 <= tx_id < _ID_MOD:
            raise ValueError(f"tx_id {tx_id} is not a uint32")
        if len(self._pending) >= _ID_MOD - 2:
            raise ProtocolError("no free request id left on this connection")

    def read_reply(self, data: bytes, req_id: int) -> bytes | None:
        """The value of READ ``req_id`` if ``data`` (what one read returned) is exactly its reply; ``None``
        otherwise, and then nothing was taken: feed ``data`` to ``receive``.

        An ERROR reply to it raises its errno-named ``XenstoreError`` (``NoEntry``...), as the value of a
        ``Reply`` would. Only the common case is decided here; every other case -- another id, another
        type, a partial or over-long message, more than one message -- is left to ``receive``'s checks.
        """
        if self._clean and len(data) >= HEADER_SIZE:
            t, rid, tx_id, length = _unpack_header(data)
            if rid == req_id and len(data) == HEADER_SIZE + length and length <= XENSTORE_PAYLOAD_MAX:
                if t == 2:  # XsType.READ
                    entry = self._pending.pop(req_id, None)
                    if entry is None:
                        return None  # not ours: receive() says so
                    if req_id == self._on_wire:
                        self._on_wire = None
                    value = data[HEADER_SIZE:]
                    if self._debug_read:
                        log.debug("<- READ req_id=%d tx_id=%d %s", req_id, tx_id, _short(value))
                    return value
                if t == 16 and req_id in self._pending:  # XsType.ERROR
                    self._take_error(data[HEADER_SIZE:], req_id, tx_id)
        elif self._error is not None:
            raise self._error
        return None

    def _take_error(self, payload: bytes, req_id: int, tx_id: int) -> None:
        try:
            error = parse_error(payload)
        except ProtocolError as e:
            self._error = e
            self._clean = False
            raise
        entry = self._pending.pop(req_id)
        if req_id == self._on_wire:
            self._on_wire = None
        request = Read(entry) if isinstance(entry, str) else entry
        log.debug("<- ERROR req_id=%d tx_id=%d %s (for READ)", req_id, tx_id, error)
        raise ErrorReply(req_id, tx_id, request, error).exception()

    def data_to_send(self) -> bytes:
        """Bytes to write now that were held back (``pipeline=False``): the next queued request, once the
        one before it has been answered. Write them as one ``write`` call. Always ``b""`` when pipelining."""
        if self.pipeline or self._on_wire is not None or not self._queue or self._closed:
            return b""
        req_id, data = self._queue.popleft()
        self._on_wire = req_id
        return data

    def _free_id(self) -> int:
        req_id = self._next_id
        while req_id in self._pending or req_id == 0:
            req_id = (req_id + 1) % _ID_MOD
        return req_id

    def _nudge(self) -> tuple[int, bytes]:
        """A harmless request whose reply is dropped, sent right after a zero-length one.

        Seen in the lab (Xen 4.17): oxenstored leaves a message with an empty payload unprocessed until
        more bytes arrive on the connection, so GET_FEATURE or GET_QUOTA without arguments would wait
        for the next request. GET_DOMAIN_PATH 0 needs no privilege and changes nothing.
        """
        nudge = GetDomainPath(0)
        req_id = self._free_id()
        self._next_id = (req_id + 1) % _ID_MOD
        self._pending[req_id] = nudge
        self._abandoned.add(req_id)
        log.debug("-> GET_DOMAIN_PATH req_id=%d (nudge: oxenstored waits for bytes after an empty message)", req_id)
        return req_id, nudge.encode(req_id)

    def _oversized(self, msg_type: int, req_id: int) -> int:
        entry = self._pending.get(req_id)
        if msg_type == XsType.DIRECTORY and isinstance(entry, Directory):
            log.debug("<- DIRECTORY req_id=%d is over XENSTORE_PAYLOAD_MAX: accepted (oxenstored does this)", req_id)
            return OVERSIZED_DIRECTORY_MAX
        return 0

    def abandon(self, request: Request[Any]) -> None:
        """Forget the caller waiting for ``request`` (it timed out): its reply, when it comes, is dropped."""
        for req_id, r in self._pending.items():
            if r is request:
                self.abandon_id(req_id)
                return

    def abandon_id(self, req_id: int) -> None:
        """``abandon`` the request sent with id ``req_id`` (nothing happens if it is not outstanding)."""
        if req_id not in self._pending:
            return
        if any(q == req_id for q, _ in self._queue):  # never written: just forget it
            self._queue = collections.deque(e for e in self._queue if e[0] != req_id)
            del self._pending[req_id]
        else:
            self._abandoned.add(req_id)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the connection; ``b""`` means the other side closed it."""
        if self._error is not None:
            raise self._error
        self._clean = False  # until next_event drains the framer
        self._framer.receive_data(data)

    def receive(
        self, data: bytes, values: dict[int, bytes] | None = None, wanted: Container[int] = ()
    ) -> list[Event]:
        """``receive_data(data)``, then every event that completes (what ``next_event`` would hand out until
        ``None``), in order.

        The common case -- whole messages read at a message boundary -- is decoded straight from ``data``,
        with the same checks as the framer's; anything else (a message cut short, an unknown type, a length
        over the limit, the end of the stream) goes through the framer, which says what is wrong.

        With ``values``, the READ replies to requests whose id is in ``wanted`` (a batch's) are put there
        instead, as ``values[req_id] = value``, without an event object each: the lean path of a pipelined
        batch of reads. Errors, watch events and every other reply still come as events.
        """
        if self._error is not None:
            raise self._error
        out: list[Event] = []
        if data and self._clean:
            off, n = 0, len(data)
            decode = self._decode
            pending = self._pending
            debug = log.isEnabledFor(_DEBUG)  # asked once for the whole read
            try:
                while n - off >= HEADER_SIZE:
                    t, req_id, tx_id, length = _unpack_header(data, off)
                    msg_type = _TYPE_OF.get(t)
                    start = off + HEADER_SIZE
                    if msg_type is None or length > XENSTORE_PAYLOAD_MAX or n - start < length:
                        break  # the framer's case
                    off = start + length
                    if msg_type is _READ and values is not None and req_id in wanted:
                        entry = pending.get(req_id)
                        if (entry.__class__ is Read or entry.__class__ is str) and req_id not in self._abandoned:
                            del pending[req_id]
                            if req_id == self._on_wire:
                                self._on_wire = None
                            values[req_id] = value = data[start:off]
                            if debug:
                                log.debug("<- READ req_id=%d tx_id=%d %s", req_id, tx_id, _short(value))
                            continue
                    ev = decode(msg_type, req_id, tx_id, data[start:off], debug)
                    if ev is not None:
                        out.append(ev)
            except ProtocolError as e:
                self._error = e
                self._clean = False
                raise
            if off == n:
                return out
            data = data[off:]
        self._clean = False
        self._framer.receive_data(data)
        while (ev := self.next_event()) is not None:
            out.append(ev)
        return out

    def next_event(self) -> Event | None:
        """The next event, or ``None`` until more bytes are received."""
        if self._error is not None:
            raise self._error
        try:
            ev = self._next_event()
        except ProtocolError as e:
            self._error = e
            self._clean = False
            raise
        if ev is None:
            self._clean = self._framer.idle and not self._closed
        return ev

    def _next_event(self) -> Event | None:
        while True:
            if self._closed:
                return None
            msg = self._framer.next_message()
            if msg is None:
                if self._framer.closed:
                    self._closed = True
                    pending, abandoned = self._pending, self._abandoned
                    lost = tuple(Read(r) if isinstance(r, str) else r for i, r in pending.items() if i not in abandoned)
                    log.debug("<- end of stream (%d requests outstanding)", len(self._pending))
                    return Closed(lost)
                return None
            ev = self._decode(msg.type, msg.req_id, msg.tx_id, msg.payload, log.isEnabledFor(_DEBUG))
            if ev is not None:
                return ev

    def _decode(self, msg_type: XsType, req_id: int, tx_id: int, payload: bytes, debug: bool) -> Event | None:
        if msg_type is _WATCH_EVENT:
            path, token = parse_watch_event(payload)
            if debug:
                log.debug("<- WATCH_EVENT path=%r token=%r", path, token)
            return WatchEvent(path, token)
        entry = self._pending.pop(req_id, None)
        if entry is None:
            raise ProtocolError(
                f"xenstored sent {msg_type.name} for req_id {req_id}, which this connection never sent "
                "(or which was already answered)"
            )
        request = Read(entry) if isinstance(entry, str) else entry
        if req_id == self._on_wire:
            self._on_wire = None
        abandoned = False
        if self._abandoned and req_id in self._abandoned:
            self._abandoned.discard(req_id)
            abandoned = True
        if msg_type is _ERROR:
            error = parse_error(payload)
            if debug:
                log.debug("<- ERROR req_id=%d tx_id=%d %s (for %s)", req_id, tx_id, error, request.TYPE.name)
            event: Event = ErrorReply(req_id, tx_id, request, error)
        elif msg_type is not request.TYPE:
            raise ProtocolError(
                f"xenstored answered {request.TYPE.name} req_id {req_id} with a {msg_type.name} message"
            )
        elif msg_type is _READ:  # Read.parse_reply, without the call: the value is the payload
            if debug:
                log.debug("<- READ req_id=%d tx_id=%d %s", req_id, tx_id, _short(payload))
            event = Reply(req_id, tx_id, request, payload)
        else:
            try:
                value = request.parse_reply(payload)
            except ProtocolError as e:
                raise ProtocolError(f"bad reply to {request.TYPE.name} req_id {req_id}: {e}") from None
            if debug:
                log.debug("<- %s req_id=%d tx_id=%d %s", msg_type.name, req_id, tx_id, _short(value))
            event = Reply(req_id, tx_id, request, value)
        if abandoned:
            if debug:
                log.debug("   (dropped: its caller gave up waiting)")
            return None
        return event
