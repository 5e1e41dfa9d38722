"""The xenstore wire protocol: a 16-byte header, then a payload of NUL-terminated strings.

Rule 1: every message crossing this module is checked both ways. Bytes we decode may come from a hostile
peer, so a bad length, an unknown type, a truncated header or a missing NUL raises ``ProtocolError`` (never
an IndexError, never a wait for bytes that will not come); a request we encode that breaks a protocol limit
(XENSTORE_PAYLOAD_MAX, XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX, a NUL inside a path) is refused here,
before a byte is sent.

Facts from Xen's public headers (io/xs_wire.h, 4.17 .. 4.21) and docs/misc/xenstore.txt:

* ``struct xsd_sockmsg { uint32_t type, req_id, tx_id, len; }`` in the machine's byte order (little endian
  on every architecture Xen's tools run on), then ``len`` <= 4096 bytes of payload.
* Types 0..22 exist in every release since 4.9; 23..26 (GET/SET_FEATURE, GET/SET_QUOTA) appear in 4.21
  and are optional; 20 (RESTRICT) was removed and is invalid.
* Errors travel as the errno's *name* (``"ENOENT\\0"``) in an ERROR reply; ``XSD_ERRORS`` lists the names the
  header promises, in its order.

Each request type is a frozen dataclass that knows its own payload (``payload``/``from_payload``) and the
shape of its reply (``parse_reply``/``reply_payload``): the client and the simulated server use the same
declaration.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from ..errors import ProtocolError, TooBig, XenstoreInvalid

__all__ = [
    "HEADER_SIZE",
    "REQUEST_TYPES",
    "XENSTORE_ABS_PATH_MAX",
    "XENSTORE_PAYLOAD_MAX",
    "XENSTORE_REL_PATH_MAX",
    "XSD_ERRORS",
    "Control",
    "Directory",
    "DirectoryChunk",
    "DirectoryPart",
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
    "Request",
    "ResetWatches",
    "Resume",
    "Rm",
    "SetFeature",
    "SetPerms",
    "SetQuota",
    "SetTarget",
    "TransactionEnd",
    "TransactionStart",
    "Unwatch",
    "Watch",
    "Write",
    "XsType",
    "check_path",
    "decode_request",
    "encode_error",
    "encode_watch_event",
    "iter_messages",
    "parse_error",
    "parse_watch_event",
    "read_packer",
]

HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size  # 16

#: Longest payload either side may send; a longer one makes xenstored drop the connection.
XENSTORE_PAYLOAD_MAX = 4096
#: Longest absolute path (and special ``@`` path); xenstored answers EINVAL beyond it.
XENSTORE_ABS_PATH_MAX = 3072
#: Longest relative path (taken relative to /local/domain/<domid>).
XENSTORE_REL_PATH_MAX = 2048

_U32_MAX = 0xFFFF_FFFF
_DOMID_MAX = 0xFFFF


class XsType(enum.IntEnum):
    """``enum xsd_sockmsg_type`` (io/xs_wire.h). 20 (RESTRICT) was removed and stays invalid."""

    CONTROL = 0  # DEBUG before 4.9; optional
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15  # only from xenstored
    ERROR = 16  # only from xenstored
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22  # optional
    GET_FEATURE = 23  # optional, Xen >= 4.21
    SET_FEATURE = 24  # optional, Xen >= 4.21
    GET_QUOTA = 25  # optional, Xen >= 4.21
    SET_QUOTA = 26  # optional, Xen >= 4.21
    INVALID = 0xFFFF  # guaranteed never valid


#: ``xsd_errors[]`` of io/xs_wire.h, in the header's order (new ones are only ever appended).
XSD_ERRORS: tuple[str, ...] = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
)

_VALID_TYPES = frozenset(int(t) for t in XsType if t is not XsType.INVALID)
#: Type number -> member, for the framers' hot paths (``XsType(n)`` costs an enum lookup per message).
_TYPE_OF: dict[int, XsType] = {int(t): t for t in XsType if t is not XsType.INVALID}


# ------------------------------------------------------------------------------------------------------
# Header and framing
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """``struct xsd_sockmsg``."""

    type: XsType
    req_id: int
    tx_id: int
    len: int

    def pack(self) -> bytes:
        return HEADER.pack(self.type, self.req_id, self.tx_id, self.len)

    @classmethod
    def unpack(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        unknown_types: bool = False,
        max_len: int = XENSTORE_PAYLOAD_MAX,
    ) -> Header:
        """Decode and check 16 header bytes: the length must be at most ``max_len`` (4096), and the type
        known -- unless ``unknown_types`` (a server answers those with ENOSYS), which turns them into
        ``XsType.INVALID``."""
        if len(data) < HEADER_SIZE:
            raise ProtocolError(f"truncated xenstore header: {len(data)} of {HEADER_SIZE} bytes")
        t, req_id, tx_id, length = HEADER.unpack_from(data)
        if length > max(max_len, XENSTORE_PAYLOAD_MAX):
            raise ProtocolError(
                f"xenstore message of type {t} req_id {req_id} announces {length} payload bytes, "
                f"over XENSTORE_PAYLOAD_MAX ({XENSTORE_PAYLOAD_MAX})"
                + (f" and the {max_len} allowed for it" if max_len > XENSTORE_PAYLOAD_MAX else "")
            )
        if t not in _VALID_TYPES:
            if not unknown_types:
                raise ProtocolError(f"unknown xenstore message type {t} (req_id {req_id})")
            t = XsType.INVALID
        return cls(XsType(t), req_id, tx_id, length)


@dataclass(frozen=True)
class Message:
    """One whole message: header fields and payload."""

    type: XsType
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        if len(self.payload) > XENSTORE_PAYLOAD_MAX:
            raise TooBig(
                "E2BIG",
                self.type.name,
                None,
                f"payload of {len(self.payload)} bytes is over XENSTORE_PAYLOAD_MAX ({XENSTORE_PAYLOAD_MAX}); not sent",
            )
        return Header(self.type, self.req_id, self.tx_id, len(self.payload)).pack() + self.payload


class Framer:
    """Cuts a byte stream into ``Message``s. Feed with ``receive_data``; pull with ``next_message``.

    ``receive_data(b"")`` marks the end of the stream; then ``next_message`` raises ``ProtocolError`` if a
    message was cut short, and ``closed`` is true once the buffer is drained. A ``ProtocolError`` leaves the
    framer broken (a byte stream cannot be resynchronised): every later call raises it again.
    ``unknown_types=True`` (server side) passes messages of unknown type on as ``XsType.INVALID``.
    ``oversized(type, req_id)`` may allow one message more than XENSTORE_PAYLOAD_MAX (it returns the
    limit for that message): the client uses it for oxenstored's over-long DIRECTORY replies.
    """

    def __init__(self, *, unknown_types: bool = False, oversized: Callable[[int, int], int] | None = None) -> None:
        self._unknown_types = unknown_types
        self._oversized = oversized
        self._buf = bytearray()
        self._header: tuple[XsType, int, int, int] | None = None  # type, req_id, tx_id, len
        self._eof = False
        self._error: ProtocolError | None = None

    @property
    def closed(self) -> bool:
        """True once the peer closed the stream and every whole message has been taken."""
        return self._eof and not self._buf and self._header is None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """Nothing buffered, no message begun, the stream open and unbroken: the next bytes start a message."""
        return not self._buf and self._header is None and not self._eof and self._error is None

    def receive_data(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if not data:
            self._eof = True
            return
        if self._eof:
            raise ProtocolError("data received after the end of the stream")
        self._buf += data

    def next_message(self) -> Message | None:
        """The next whole message, or ``None`` if more bytes are needed."""
        if len(self._buf) < HEADER_SIZE and self._header is None and not self._eof and self._error is None:
            return None  # the common "nothing more yet", without the checks below
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ProtocolError as e:
            self._error = e
            raise

    def _next(self) -> Message | None:
        buf = self._buf
        h = self._header
        if h is None:
            if len(buf) < HEADER_SIZE:
                if self._eof and buf:
                    raise ProtocolError(
                        f"stream ended inside a xenstore header ({len(buf)} of {HEADER_SIZE} bytes)"
                    )
                return None
            t, req_id, tx_id, length = HEADER.unpack_from(buf)
            msg_type = _TYPE_OF.get(t)
            if msg_type is None or length > XENSTORE_PAYLOAD_MAX:  # the checks, and their errors, are Header's
                max_len = XENSTORE_PAYLOAD_MAX
                if self._oversized is not None and length > max_len:
                    max_len = self._oversized(t, req_id)
                checked = Header.unpack(buf, unknown_types=self._unknown_types, max_len=max_len)
                h = (checked.type, req_id, tx_id, length)
            else:
                h = (msg_type, req_id, tx_id, length)
            self._header = h
            del buf[:HEADER_SIZE]
        msg_type, req_id, tx_id, length = h
        if len(buf) < length:
            if self._eof:
                raise ProtocolError(
                    f"stream ended inside {msg_type.name} req_id {req_id}: {len(buf)} of {length} payload bytes"
                )
            return None
        payload = bytes(buf[:length])
        del buf[:length]
        self._header = None
        return Message(msg_type, req_id, tx_id, payload)


# ------------------------------------------------------------------------------------------------------
# Payload pieces
# ------------------------------------------------------------------------------------------------------


def _text(b: bytes, what: str) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what} is not UTF-8: {b[:64]!r}") from e


def _strings(payload: bytes, what: str) -> list[bytes]:
    """Split ``a\\0b\\0...``: every string must end with a NUL."""
    if not payload:
        return []
    if payload[-1] != 0:
        raise ProtocolError(f"{what}: payload does not end with NUL: {payload[-64:]!r}")
    return payload[:-1].split(b"\0")


def _exact(payload: bytes, n: int, what: str, *, last_nul_optional: bool = False) -> list[bytes]:
    """Exactly ``n`` NUL-terminated strings (the last NUL optional where peers are known to omit it)."""
    if last_nul_optional and (not payload or payload[-1] != 0):
        payload += b"\0"
    parts = _strings(payload, what)
    if len(parts) != n:
        raise ProtocolError(f"{what}: expected {n} NUL-terminated strings, got {len(parts)}: {payload[:64]!r}")
    return parts


def _z(*parts: bytes) -> bytes:
    if len(parts) == 1:
        return parts[0] + b"\0"
    return b"".join(p + b"\0" for p in parts)


def _dec(b: bytes, what: str, lo: int = 0, hi: int = _U32_MAX) -> int:
    s = b.decode("ascii", "replace")
    if not s.isdigit() or not s.isascii() or len(s) > 20:
        raise ProtocolError(f"{what}: {b[:32]!r} is not a decimal number")
    v = int(s)
    if not lo <= v <= hi:
        raise ProtocolError(f"{what}: {v} is out of range {lo}..{hi}")
    return v


def _sdec(b: bytes, what: str) -> int:
    """Signed decimal (INTRODUCE's gfn is documented as signed)."""
    neg = b.startswith(b"-")
    v = _dec(b[1:] if neg else b, what, 0, 2**63)
    return -v if neg else v


def _ok(payload: bytes, what: str) -> None:
    if payload not in (b"OK\0", b"OK"):
        raise ProtocolError(f"{what}: expected OK, got {payload[:64]!r}")


def check_path(path: str, op: str | XsType) -> bytes:
    """Encode ``path`` and refuse it locally (``XenstoreInvalid``) if xenstored could not accept it.

    Absolute (``/...``) and special (``@...``) paths may be 3072 bytes long, relative ones 2048. The path
    may not be empty or contain a NUL (that would split the message); other syntax is xenstored's to judge.
    ``op`` names the request in the error.
    """
    b = path.encode("utf-8")
    if not b or b"\0" in b or len(b) > XENSTORE_REL_PATH_MAX:
        name = op if isinstance(op, str) else op.name
        if not b:
            raise XenstoreInvalid("EINVAL", name, path, "empty path; not sent")
        if b"\0" in b:
            raise XenstoreInvalid("EINVAL", name, path, "path contains a NUL byte; not sent")
        absolute = b[:1] in (b"/", b"@")
        limit = XENSTORE_ABS_PATH_MAX if absolute else XENSTORE_REL_PATH_MAX
        if len(b) > limit:
            kind = "XENSTORE_ABS_PATH_MAX" if absolute else "XENSTORE_REL_PATH_MAX"
            raise XenstoreInvalid(
                "EINVAL", name, path[:40] + "...", f"path of {len(b)} bytes is over {kind} ({limit}); not sent"
            )
    return b


def _check_word(s: str, what: str, op: str) -> bytes:
    b = s.encode("utf-8")
    if b"\0" in b:
        raise XenstoreInvalid("EINVAL", op, None, f"{what} {s!r} contains a NUL byte; not sent")
    return b


def _check_domid(domid: int, op: str) -> bytes:
    if not 0 <= domid <= _DOMID_MAX:
        raise XenstoreInvalid("EINVAL", op, None, f"domid {domid} is out of range 0..{_DOMID_MAX}; not sent")
    return str(domid).encode()


# ------------------------------------------------------------------------------------------------------
# Permissions
# ------------------------------------------------------------------------------------------------------


class PermAccess(enum.StrEnum):
    """The letter of a permission string."""

    NONE = "n"
    READ = "r"
    WRITE = "w"
    BOTH = "b"

    @property
    def can_read(self) -> bool:
        return self in (PermAccess.READ, PermAccess.BOTH)

    @property
    def can_write(self) -> bool:
        return self in (PermAccess.WRITE, PermAccess.BOTH)


@dataclass(frozen=True)
class Perm:
    """One permission entry: ``r1`` is ``Perm(1, PermAccess.READ)``.

    The first entry of a node names its owner (who may always read and write) and, through its access
    letter, what every domain without an entry of its own may do.
    """

    domid: int
    access: PermAccess

    def __str__(self) -> str:
        return f"{self.access.value}{self.domid}"

    def encode(self) -> bytes:
        if not 0 <= self.domid <= _DOMID_MAX:
            raise XenstoreInvalid("EINVAL", "SET_PERMS", None, f"domid {self.domid} out of range; not sent")
        return str(self).encode()

    @classmethod
    def parse(cls, s: bytes | str) -> Perm:
        """Parse ``n0``/``r1``/``w2``/``b3``; anything else raises ``ProtocolError``."""
        b = s.encode() if isinstance(s, str) else s
        if len(b) < 2:
            raise ProtocolError(f"bad permission string {b!r}")
        try:
            access = PermAccess(chr(b[0]))
        except ValueError:
            raise ProtocolError(f"bad permission string {b!r}: unknown access letter") from None
        return cls(_dec(b[1:], f"permission {b!r}", 0, _DOMID_MAX), access)


# ------------------------------------------------------------------------------------------------------
# Requests
# ------------------------------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class Request(Generic[T]):
    """A request, and (through its type) the shape of the reply to it.

    Subclasses set ``TYPE`` and implement ``payload``, ``from_payload``, ``parse_reply`` and
    ``reply_payload``. ``encode`` adds the header and enforces the limits.
    """

    TYPE: ClassVar[XsType]

    def payload(self) -> bytes:
        raise NotImplementedError

    def encode(self, req_id: int, tx_id: int = 0) -> bytes:
        """Header + payload; raises ``XenstoreInvalid``/``TooBig`` (nothing sent) on a limit."""
        payload = self.payload()
        if len(payload) > XENSTORE_PAYLOAD_MAX:
            raise TooBig(
                "E2BIG",
                self.TYPE.name,
                getattr(self, "path", None),
                f"payload of {len(payload)} bytes is over XENSTORE_PAYLOAD_MAX ({XENSTORE_PAYLOAD_MAX}); not sent",
            )
        return HEADER.pack(self.TYPE, req_id, tx_id, len(payload)) + payload

    @classmethod
    def from_payload(cls, payload: bytes) -> Request[T]:
        """Server side: decode a request payload; ``ProtocolError`` if it is malformed."""
        raise NotImplementedError

    def parse_reply(self, payload: bytes) -> T:
        """Client side: decode the payload of the reply of this request's type."""
        raise NotImplementedError

    def reply_payload(self, value: T) -> bytes:
        """Server side: encode a successful reply."""
        raise NotImplementedError


@dataclass(frozen=True)
class _PathOnly(Request[T]):
    path: str

    def payload(self) -> bytes:
        return _z(check_path(self.path, self.TYPE))

    @classmethod
    def from_payload(cls, payload: bytes) -> Request[T]:
        (p,) = _exact(payload, 1, cls.TYPE.name)
        return cls(_text(p, "path"))


@dataclass(frozen=True)
class _OkReply(Request[None]):
    def parse_reply(self, payload: bytes) -> None:
        _ok(payload, self.TYPE.name)

    def reply_payload(self, value: None) -> bytes:
        return b"OK\0"


@dataclass(frozen=True)
class Read(_PathOnly[bytes]):
    """READ <path>| -> <value|>"""

    TYPE = XsType.READ

    def parse_reply(self, payload: bytes) -> bytes:
        return payload

    def reply_payload(self, value: bytes) -> bytes:
        return value


#: Path -> (the ``pack`` of a READ message's precompiled struct, the payload length, the encoded path), for
#: ``read_packer``. Bounded: cleared when it grows past ``_READ_PACKERS_MAX`` distinct paths.
_READ_PACKERS: dict[str, tuple[Callable[..., bytes], int, bytes]] = {}
_READ_PACKERS_MAX = 1024


def read_packer(path: str) -> tuple[Callable[..., bytes], int, bytes]:
    """What a READ of ``path`` is packed with, in one call: ``pack(XsType.READ, req_id, tx_id, n, b)``, where
    ``(pack, n, b)`` is the result, gives header, path and its NUL (the struct's ``{n}s`` pads the NUL).

    The path is checked first, as ``Read(path).encode`` would (``XenstoreInvalid``, and nothing sent), and
    the answer kept for the next READ of the same path (the client's fast read path looks it up first).
    """
    b = check_path(path, XsType.READ)  # at most XENSTORE_ABS_PATH_MAX, so the payload fits in 4096
    n = len(b) + 1
    entry = (struct.Struct(f"<IIII{n}s").pack, n, b)
    if len(_READ_PACKERS) >= _READ_PACKERS_MAX:
        _READ_PACKERS.clear()
    _READ_PACKERS[path] = entry
    return entry


@dataclass(frozen=True)
class Mkdir(_PathOnly[None], _OkReply):
    """MKDIR <path>| -> OK"""

    TYPE = XsType.MKDIR


@dataclass(frozen=True)
class Rm(_PathOnly[None], _OkReply):
    """RM <path>| -> OK"""

    TYPE = XsType.RM


def _names(payload: bytes, what: str) -> tuple[str, ...]:
    # An empty list may come as b"" or as b"\0"; a child name is never empty.
    return tuple(_text(n, "child name") for n in _strings(payload, what) if n)


@dataclass(frozen=True)
class Directory(_PathOnly[tuple[str, ...]]):
    """DIRECTORY <path>| -> <child-leaf-name>|*"""

    TYPE = XsType.DIRECTORY

    def parse_reply(self, payload: bytes) -> tuple[str, ...]:
        return _names(payload, "DIRECTORY reply")

    def reply_payload(self, value: tuple[str, ...]) -> bytes:
        return _z(*(n.encode() for n in value))


@dataclass(frozen=True)
class DirectoryChunk:
    """One DIRECTORY_PART reply: the node's generation count, some children, and whether they end the list."""

    generation: int
    names: tuple[str, ...]
    complete: bool
    size: int  # bytes of the children list this chunk covers (names and their NULs)


@dataclass(frozen=True)
class DirectoryPart(Request[DirectoryChunk]):
    """DIRECTORY_PART <path>|<offset>| -> <gencnt>|<child-leaf-name>|* (an extra NUL after the last chunk)"""

    TYPE = XsType.DIRECTORY_PART
    path: str
    offset: int = 0

    def payload(self) -> bytes:
        return _z(check_path(self.path, self.TYPE), str(self.offset).encode())

    @classmethod
    def from_payload(cls, payload: bytes) -> DirectoryPart:
        p, off = _exact(payload, 2, cls.TYPE.name, last_nul_optional=True)
        return cls(_text(p, "path"), _dec(off, "offset"))

    def parse_reply(self, payload: bytes) -> DirectoryChunk:
        end = payload.find(b"\0")
        if end < 0:
            raise ProtocolError(f"DIRECTORY_PART reply without a generation count: {payload[:64]!r}")
        gen = _dec(payload[:end], "DIRECTORY_PART generation", 0, 2**64)
        rest = payload[end + 1 :]
        # The final chunk carries an empty string after the last name (so it ends in two NULs) -- or, at the
        # very end of the list, nothing at all.
        complete = not rest or rest == b"\0" or rest.endswith(b"\0\0")
        names = _names(rest, "DIRECTORY_PART reply")
        size = sum(len(n.encode()) + 1 for n in names)
        return DirectoryChunk(gen, names, complete, size)

    def reply_payload(self, value: DirectoryChunk) -> bytes:
        body = _z(*(n.encode() for n in value.names))
        return _z(str(value.generation).encode()) + body + (b"\0" if value.complete else b"")


@dataclass(frozen=True)
class Write(_OkReply):
    """WRITE <path>|<value|> -> OK (missing parents are created, empty)"""

    TYPE = XsType.WRITE
    path: str
    value: bytes

    def payload(self) -> bytes:
        return check_path(self.path, self.TYPE) + b"\0" + self.value

    @classmethod
    def from_payload(cls, payload: bytes) -> Write:
        end = payload.find(b"\0")
        if end < 0:
            raise ProtocolError(f"WRITE without a NUL after the path: {payload[:64]!r}")
        return cls(_text(payload[:end], "path"), payload[end + 1 :])


@dataclass(frozen=True)
class GetPerms(_PathOnly[tuple[Perm, ...]]):
    """GET_PERMS <path>| -> <perm-as-string>|+"""

    TYPE = XsType.GET_PERMS

    def parse_reply(self, payload: bytes) -> tuple[Perm, ...]:
        parts = _strings(payload, "GET_PERMS reply")
        if not parts:
            raise ProtocolError("GET_PERMS reply lists no permission")
        return tuple(Perm.parse(p) for p in parts)

    def reply_payload(self, value: tuple[Perm, ...]) -> bytes:
        return _z(*(p.encode() for p in value))


@dataclass(frozen=True)
class SetPerms(_OkReply):
    """SET_PERMS <path>|<perm-as-string>|+ -> OK"""

    TYPE = XsType.SET_PERMS
    path: str
    perms: tuple[Perm, ...]

    def payload(self) -> bytes:
        if not self.perms:
            raise XenstoreInvalid("EINVAL", "SET_PERMS", self.path, "at least one permission (the owner)")
        return _z(check_path(self.path, self.TYPE), *(p.encode() for p in self.perms))

    @classmethod
    def from_payload(cls, payload: bytes) -> SetPerms:
        parts = _strings(payload, cls.TYPE.name)
        if len(parts) < 2:
            raise ProtocolError(f"SET_PERMS needs a path and at least one permission: {payload[:64]!r}")
        return cls(_text(parts[0], "path"), tuple(Perm.parse(p) for p in parts[1:]))


@dataclass(frozen=True)
class Watch(_OkReply):
    """WATCH <wpath>|<token>|[<depth>|] -> OK (and one WATCH_EVENT for <wpath> straight away)"""

    TYPE = XsType.WATCH
    path: str
    token: str
    depth: int | None = None

    def payload(self) -> bytes:
        parts = [check_path(self.path, self.TYPE), _check_word(self.token, "token", self.TYPE.name)]
        if self.depth is not None:
            parts.append(str(self.depth).encode())
        return _z(*parts)

    @classmethod
    def from_payload(cls, payload: bytes) -> Watch:
        parts = _strings(payload, cls.TYPE.name)
        if len(parts) == 3 and parts[2] == b"":
            parts = parts[:2]
        if len(parts) not in (2, 3):
            raise ProtocolError(f"WATCH needs a path and a token: {payload[:64]!r}")
        depth = _dec(parts[2], "watch depth", 0, 0xFFFF) if len(parts) == 3 else None
        return cls(_text(parts[0], "path"), _text(parts[1], "token"), depth)


@dataclass(frozen=True)
class Unwatch(_OkReply):
    """UNWATCH <wpath>|<token>| -> OK"""

    TYPE = XsType.UNWATCH
    path: str
    token: str

    def payload(self) -> bytes:
        return _z(check_path(self.path, self.TYPE), _check_word(self.token, "token", self.TYPE.name))

    @classmethod
    def from_payload(cls, payload: bytes) -> Unwatch:
        parts = _strings(payload, cls.TYPE.name)
        if len(parts) < 2:
            raise ProtocolError(f"UNWATCH needs a path and a token: {payload[:64]!r}")
        return cls(_text(parts[0], "path"), _text(parts[1], "token"))


@dataclass(frozen=True)
class _NoArgs(Request[T]):
    def payload(self) -> bytes:
        return b"\0"

    @classmethod
    def from_payload(cls, payload: bytes) -> Request[T]:
        if payload not in (b"", b"\0"):
            raise ProtocolError(f"{cls.TYPE.name} takes no argument: {payload[:64]!r}")
        return cls()


@dataclass(frozen=True)
class TransactionStart(_NoArgs[int]):
    """TRANSACTION_START | -> <transid>| (send with tx_id 0)"""

    TYPE = XsType.TRANSACTION_START

    def parse_reply(self, payload: bytes) -> int:
        (t,) = _exact(payload, 1, "TRANSACTION_START reply", last_nul_optional=True)
        return _dec(t, "transaction id", 1, _U32_MAX)

    def reply_payload(self, value: int) -> bytes:
        return _z(str(value).encode())


@dataclass(frozen=True)
class TransactionEnd(_OkReply):
    """TRANSACTION_END T| (commit) or F| (abort) -> OK; EAGAIN if the commit lost a race"""

    TYPE = XsType.TRANSACTION_END
    commit: bool = True

    def payload(self) -> bytes:
        return b"T\0" if self.commit else b"F\0"

    @classmethod
    def from_payload(cls, payload: bytes) -> TransactionEnd:
        (f,) = _exact(payload, 1, cls.TYPE.name, last_nul_optional=True)
        if f not in (b"T", b"F"):
            raise ProtocolError(f"TRANSACTION_END takes T or F, not {f[:16]!r}")
        return cls(f == b"T")


@dataclass(frozen=True)
class ResetWatches(_NoArgs[None], _OkReply):
    """RESET_WATCHES | -> OK (drops every watch and transaction of the connection)"""

    TYPE = XsType.RESET_WATCHES


@dataclass(frozen=True)
class _Domid(Request[T]):
    domid: int

    def payload(self) -> bytes:
        return _z(_check_domid(self.domid, self.TYPE.name))

    @classmethod
    def from_payload(cls, payload: bytes) -> Request[T]:
        (d,) = _exact(payload, 1, cls.TYPE.name, last_nul_optional=True)
        return cls(_dec(d, "domid", 0, _DOMID_MAX))


@dataclass(frozen=True)
class Introduce(_OkReply):
    """INTRODUCE <domid>|<gfn>|<evtchn>| -> OK (dom0 only; fires @introduceDomain)"""

    TYPE = XsType.INTRODUCE
    domid: int
    gfn: int
    evtchn: int

    def payload(self) -> bytes:
        return _z(_check_domid(self.domid, self.TYPE.name), str(self.gfn).encode(), str(self.evtchn).encode())

    @classmethod
    def from_payload(cls, payload: bytes) -> Introduce:
        parts = _strings(payload, cls.TYPE.name)
        if len(parts) == 4 and parts[3] == b"":
            parts = parts[:3]
        if len(parts) != 3:
            raise ProtocolError(f"INTRODUCE needs domid, gfn and evtchn: {payload[:64]!r}")
        return cls(_dec(parts[0], "domid", 0, _DOMID_MAX), _sdec(parts[1], "gfn"), _dec(parts[2], "evtchn"))


@dataclass(frozen=True)
class Release(_Domid[None], _OkReply):
    """RELEASE <domid>| -> OK (dom0 only; fires @releaseDomain)"""

    TYPE = XsType.RELEASE


@dataclass(frozen=True)
class Resume(_Domid[None], _OkReply):
    """RESUME <domid>| -> OK (dom0 only)"""

    TYPE = XsType.RESUME


@dataclass(frozen=True)
class GetDomainPath(_Domid[str]):
    """GET_DOMAIN_PATH <domid>| -> <path>|"""

    TYPE = XsType.GET_DOMAIN_PATH

    def parse_reply(self, payload: bytes) -> str:
        (p,) = _exact(payload, 1, "GET_DOMAIN_PATH reply", last_nul_optional=True)
        return _text(p, "domain path")

    def reply_payload(self, value: str) -> bytes:
        return _z(value.encode())


@dataclass(frozen=True)
class IsDomainIntroduced(_Domid[bool]):
    """IS_DOMAIN_INTRODUCED <domid>| -> T| or F|"""

    TYPE = XsType.IS_DOMAIN_INTRODUCED

    def parse_reply(self, payload: bytes) -> bool:
        (f,) = _exact(payload, 1, "IS_DOMAIN_INTRODUCED reply", last_nul_optional=True)
        if f not in (b"T", b"F"):
            raise ProtocolError(f"IS_DOMAIN_INTRODUCED reply is neither T nor F: {f[:16]!r}")
        return f == b"T"

    def reply_payload(self, value: bool) -> bytes:
        return b"T\0" if value else b"F\0"


@dataclass(frozen=True)
class SetTarget(_OkReply):
    """SET_TARGET <domid>|<tdomid>| -> OK (dom0 only)"""

    TYPE = XsType.SET_TARGET
    domid: int
    target: int

    def payload(self) -> bytes:
        return _z(_check_domid(self.domid, self.TYPE.name), _check_domid(self.target, self.TYPE.name))

    @classmethod
    def from_payload(cls, payload: bytes) -> SetTarget:
        d, t = _exact(payload, 2, cls.TYPE.name, last_nul_optional=True)
        return cls(_dec(d, "domid", 0, _DOMID_MAX), _dec(t, "target domid", 0, _DOMID_MAX))


@dataclass(frozen=True)
class Control(Request[bytes]):
    """CONTROL <command>|[<parameters>|]* -> implementation-defined text (returned without its final NUL)"""

    TYPE = XsType.CONTROL
    command: str
    args: tuple[bytes, ...] = ()

    def payload(self) -> bytes:
        return _z(_check_word(self.command, "command", self.TYPE.name), *self.args)

    @classmethod
    def from_payload(cls, payload: bytes) -> Control:
        parts = _strings(payload, cls.TYPE.name)
        if not parts:
            raise ProtocolError("CONTROL without a command")
        return cls(_text(parts[0], "command"), tuple(parts[1:]))

    def parse_reply(self, payload: bytes) -> bytes:
        return payload[:-1] if payload.endswith(b"\0") else payload

    def reply_payload(self, value: bytes) -> bytes:
        return value + b"\0"


@dataclass(frozen=True)
class GetFeature(Request[int]):
    """GET_FEATURE [<domid>|] -> <value>| (Xen >= 4.21; without domid: what xenstored supports)"""

    TYPE = XsType.GET_FEATURE
    domid: int | None = None

    def payload(self) -> bytes:
        return b"" if self.domid is None else _z(_check_domid(self.domid, self.TYPE.name))

    @classmethod
    def from_payload(cls, payload: bytes) -> GetFeature:
        if payload in (b"", b"\0"):
            return cls()
        (d,) = _exact(payload, 1, cls.TYPE.name, last_nul_optional=True)
        return cls(_dec(d, "domid", 0, _DOMID_MAX))

    def parse_reply(self, payload: bytes) -> int:
        (v,) = _exact(payload, 1, "GET_FEATURE reply", last_nul_optional=True)
        return _dec(v, "feature bitmap")

    def reply_payload(self, value: int) -> bytes:
        return _z(str(value).encode())


@dataclass(frozen=True)
class SetFeature(_OkReply):
    """SET_FEATURE <domid>|<value>| -> OK (Xen >= 4.21; dom0 only, before INTRODUCE)"""

    TYPE = XsType.SET_FEATURE
    domid: int
    value: int

    def payload(self) -> bytes:
        return _z(_check_domid(self.domid, self.TYPE.name), str(self.value).encode())

    @classmethod
    def from_payload(cls, payload: bytes) -> SetFeature:
        d, v = _exact(payload, 2, cls.TYPE.name, last_nul_optional=True)
        return cls(_dec(d, "domid", 0, _DOMID_MAX), _dec(v, "feature bitmap"))


@dataclass(frozen=True)
class GetQuota(Request[int]):
    """GET_QUOTA [<domid>|]<quota>| -> <value>| (Xen >= 4.21; without domid: the global default)"""

    TYPE = XsType.GET_QUOTA
    quota: str
    domid: int | None = None

    def payload(self) -> bytes:
        q = _check_word(self.quota, "quota name", self.TYPE.name)
        if self.domid is None:
            return _z(q)
        return _z(_check_domid(self.domid, self.TYPE.name), q)

    @classmethod
    def from_payload(cls, payload: bytes) -> GetQuota:
        parts = _strings(payload, cls.TYPE.name)
        if len(parts) == 1:
            return cls(_text(parts[0], "quota name"))
        if len(parts) == 2:
            return cls(_text(parts[1], "quota name"), _dec(parts[0], "domid", 0, _DOMID_MAX))
        raise ProtocolError(f"GET_QUOTA takes [<domid>|]<quota>|: {payload[:64]!r}")

    def parse_reply(self, payload: bytes) -> int:
        (v,) = _exact(payload, 1, "GET_QUOTA reply", last_nul_optional=True)
        return _dec(v, "quota value")

    def reply_payload(self, value: int) -> bytes:
        return _z(str(value).encode())


@dataclass(frozen=True)
class ListQuotas(Request[tuple[str, ...]]):
    """GET_QUOTA with no argument -> the supported quota names, blank separated (Xen >= 4.21)"""

    TYPE = XsType.GET_QUOTA

    def payload(self) -> bytes:
        return b""

    @classmethod
    def from_payload(cls, payload: bytes) -> ListQuotas:
        if payload not in (b"", b"\0"):
            raise ProtocolError(f"GET_QUOTA list takes no argument: {payload[:64]!r}")
        return cls()

    def parse_reply(self, payload: bytes) -> tuple[str, ...]:
        (v,) = _exact(payload, 1, "GET_QUOTA reply", last_nul_optional=True)
        return tuple(_text(v, "quota names").split())

    def reply_payload(self, value: tuple[str, ...]) -> bytes:
        return _z(" ".join(value).encode())


@dataclass(frozen=True)
class SetQuota(_OkReply):
    """SET_QUOTA [<domid>|]<quota>|<value>| -> OK (Xen >= 4.21; dom0 only)"""

    TYPE = XsType.SET_QUOTA
    quota: str
    value: int
    domid: int | None = None

    def payload(self) -> bytes:
        q = _check_word(self.quota, "quota name", self.TYPE.name)
        v = str(self.value).encode()
        if self.domid is None:
            return _z(q, v)
        return _z(_check_domid(self.domid, self.TYPE.name), q, v)

    @classmethod
    def from_payload(cls, payload: bytes) -> SetQuota:
        parts = _strings(payload, cls.TYPE.name)
        if len(parts) == 2:
            return cls(_text(parts[0], "quota name"), _dec(parts[1], "quota value"))
        if len(parts) == 3:
            return cls(
                _text(parts[1], "quota name"),
                _dec(parts[2], "quota value"),
                _dec(parts[0], "domid", 0, _DOMID_MAX),
            )
        raise ProtocolError(f"SET_QUOTA takes [<domid>|]<quota>|<value>|: {payload[:64]!r}")


#: The request class for each type a client may send (GET_QUOTA without argument is ``ListQuotas``).
REQUEST_TYPES: dict[XsType, type[Request[Any]]] = {
    cls.TYPE: cls
    for cls in (
        Control,
        Directory,
        Read,
        GetPerms,
        Watch,
        Unwatch,
        TransactionStart,
        TransactionEnd,
        Introduce,
        Release,
        GetDomainPath,
        Write,
        Mkdir,
        Rm,
        SetPerms,
        IsDomainIntroduced,
        Resume,
        SetTarget,
        ResetWatches,
        DirectoryPart,
        GetFeature,
        SetFeature,
        GetQuota,
        SetQuota,
    )
}


def decode_request(msg: Message) -> Request[Any]:
    """Server side: the typed request in ``msg``. ``ProtocolError`` if its payload is malformed,
    ``KeyError`` if the type is not one a client may send (WATCH_EVENT, ERROR)."""
    if msg.type is XsType.GET_QUOTA and msg.payload in (b"", b"\0"):
        return ListQuotas()
    return REQUEST_TYPES[msg.type].from_payload(msg.payload)


# ------------------------------------------------------------------------------------------------------
# Messages only xenstored sends
# ------------------------------------------------------------------------------------------------------


def parse_error(payload: bytes) -> str:
    """The error name of an ERROR reply (``"ENOENT"``); ``ProtocolError`` if it is not one."""
    (name,) = _exact(payload, 1, "ERROR reply", last_nul_optional=True)
    s = name.decode("ascii", "replace")
    if not (s.startswith("E") and 2 <= len(s) <= 32 and s[1:].isalnum() and s.isascii()):
        raise ProtocolError(f"ERROR reply does not carry an error name: {payload[:64]!r}")
    return s


def encode_error(req_id: int, tx_id: int, name: str) -> bytes:
    return Message(XsType.ERROR, req_id, tx_id, _z(name.encode())).encode()


def parse_watch_event(payload: bytes) -> tuple[str, str]:
    """(path, token) of a WATCH_EVENT: ``<epath>|<token>|``."""
    parts = _strings(payload, "WATCH_EVENT")
    if len(parts) < 2:
        raise ProtocolError(f"WATCH_EVENT needs a path and a token: {payload[:64]!r}")
    return _text(parts[0], "watch path"), _text(parts[1], "watch token")


def encode_watch_event(path: str, token: str) -> bytes:
    return Message(XsType.WATCH_EVENT, 0, 0, _z(path.encode(), token.encode())).encode()


def iter_messages(data: bytes) -> Iterator[Message]:
    """Every whole message in ``data`` (which must hold nothing else): a convenience for tests and tools."""
    f = Framer()
    f.receive_data(data)
    f.receive_data(b"")
    while (m := f.next_message()) is not None:
        yield m
