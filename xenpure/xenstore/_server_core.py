"""A xenstore server without I/O: the tree, permissions, transactions, watches and domains.

Rule 1: a reply is a function of (store, connection, request) alone -- no clock, no randomness, no I/O. The
core takes bytes per connection (``receive_data``) and returns ``Output``s (bytes for a connection, or the
order to drop it); whoever owns the sockets delivers them. The simulator (``xenpure.testing.SimXenstored``)
is one such owner; a test can drive the core directly as a table of (connection, request, expected reply).

What it implements, from docs/misc/xenstore.txt: paths (absolute, or relative to /local/domain/<domid>),
implicit creation of parents, permissions (owner first; the first entry's letter is everyone else's
access; domain 0 and a domain's SET_TARGET controller are privileged over it), watches (fired once when
set, then for changes at or below the path, ``depth`` honoured; removal of a parent fires the watched path
itself; @introduceDomain/@releaseDomain for privileged connections), transactions (a copy of the tree; the
commit fails with EAGAIN if a node the transaction read or wrote changed meanwhile), DIRECTORY_PART, the
domain messages, CONTROL (check, help, print, log), GET/SET_FEATURE and GET/SET_QUOTA. Quotas are reported,
not enforced. Message types listed in ``unsupported`` answer ENOSYS, to play an older xenstored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ProtocolError, XenstoreError
from ._wire import (
    XENSTORE_ABS_PATH_MAX,
    XENSTORE_PAYLOAD_MAX,
    XENSTORE_REL_PATH_MAX,
    Control,
    Directory,
    DirectoryChunk,
    DirectoryPart,
    Framer,
    GetDomainPath,
    GetFeature,
    GetPerms,
    GetQuota,
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
    decode_request,
    encode_error,
    encode_watch_event,
)

__all__ = ["Connection", "Drop", "Node", "Output", "Send", "ServerCore", "Store"]

log = logging.getLogger("xenpure.xenstore.server")

#: Feature bits (docs/misc/xenstore-ring.txt) this server claims: WATCH with a depth.
FEATURE_WATCHDEPTH = 4
SUPPORTED_FEATURES = FEATURE_WATCHDEPTH
DEFAULT_QUOTAS: dict[str, int] = {
    "nodes": 1000,
    "watches": 128,
    "transactions": 10,
    "node-size": 2048,
    "permissions": 5,
}
CONTROL_COMMANDS = ("check", "help", "log", "print")

_PATH_CHARS = re.compile(r"^[A-Za-z0-9\-/_@]+$")
_SPECIALS = ("@introduceDomain", "@releaseDomain")


class _Fail(Exception):
    """An error reply: ``name`` is the errno name sent back."""

    def __init__(self, name: str, why: str = "") -> None:
        super().__init__(name, why)
        self.name = name
        self.why = why


@dataclass(frozen=True)
class Node:
    """One node: value, permissions (owner first), children in creation order, generation of last change."""

    value: bytes
    perms: tuple[Perm, ...]
    children: tuple[str, ...] = ()
    generation: int = 0


@dataclass
class Store:
    """The whole tree, as a map from absolute path to ``Node``, and the generation counter."""

    nodes: dict[str, Node] = field(default_factory=lambda: {"/": Node(b"", (Perm(0, PermAccess.NONE),))})
    generation: int = 0

    def copy(self) -> Store:
        return Store(dict(self.nodes), self.generation)


@dataclass
class _Txn:
    id: int
    store: Store
    seen: dict[str, int | None] = field(default_factory=dict)  # path -> generation when first touched
    dirty: set[str] = field(default_factory=set)  # nodes created, removed, or given a new value/perms
    parents: set[str] = field(default_factory=set)  # nodes whose children list changed
    events: list[tuple[str, bool]] = field(default_factory=list)  # (path, removal)


@dataclass(frozen=True)
class _Watch:
    path: str  # absolute (or @special)
    token: str
    depth: int | None
    relative: bool  # the watch was set with a relative path: report event paths relative too


@dataclass
class Connection:
    """One client connection: the domain it speaks for, its watches and open transactions."""

    id: int
    domid: int
    watches: list[_Watch] = field(default_factory=list)
    transactions: dict[int, _Txn] = field(default_factory=dict)
    framer: Framer = field(default_factory=lambda: Framer(unknown_types=True))


@dataclass
class _Domain:
    domid: int
    gfn: int
    evtchn: int
    features: int = SUPPORTED_FEATURES
    target: int | None = None


@dataclass(frozen=True)
class Send:
    """Bytes for connection ``conn``."""

    conn: int
    data: bytes


@dataclass(frozen=True)
class Drop:
    """Close connection ``conn`` (it broke the protocol)."""

    conn: int
    reason: str


Output = Send | Drop


def _parent(path: str) -> str:
    i = path.rstrip("/").rfind("/")
    return "/" if i <= 0 else path[:i]


def _join(parent: str, leaf: str) -> str:
    return f"/{leaf}" if parent == "/" else f"{parent}/{leaf}"


def _leaf(path: str) -> str:
    return path.rsplit("/", 1)[1]


def _is_child(child: str, parent: str) -> bool:
    """docs/misc/xenstore.txt: identical, or parent is /, or parent + "/" prefixes child."""
    return child == parent or parent == "/" or child.startswith(parent + "/")


def _depth_below(child: str, parent: str) -> int:
    if child == parent:
        return 0
    rest = child[1:] if parent == "/" else child[len(parent) + 1 :]
    return rest.count("/") + 1


class ServerCore:
    """The xenstore server state and logic. Connections are numbered; ``receive_data`` drives them."""

    def __init__(self, *, unsupported: Iterable[XsType] = ()) -> None:
        self.store = Store()
        self.unsupported = frozenset(unsupported)
        self.connections: dict[int, Connection] = {}
        self.domains: dict[int, _Domain] = {}
        self.domain_features: dict[int, int] = {}
        self.quotas: dict[str, int] = dict(DEFAULT_QUOTAS)
        self.domain_quotas: dict[int, dict[str, int]] = {}
        self.log_lines: list[str] = []
        self._next_conn = 1
        self._next_tx = 1

    # -- connections ------------------------------------------------------------------------------------

    def connect(self, domid: int = 0) -> int:
        cid = self._next_conn
        self._next_conn += 1
        self.connections[cid] = Connection(cid, domid)
        return cid

    def disconnect(self, conn: int) -> None:
        """The connection went away: its watches and transactions go with it."""
        self.connections.pop(conn, None)

    def receive_data(self, conn: int, data: bytes) -> list[Output]:
        """Bytes from ``conn``; returns what to send (replies, then the watch events they caused)."""
        c = self.connections.get(conn)
        if c is None:
            return []
        out: list[Output] = []
        try:
            c.framer.receive_data(data)
            while (msg := c.framer.next_message()) is not None:
                out.extend(self.handle(conn, msg))
        except ProtocolError as e:
            # docs/misc/xenstore.txt: a client over XENSTORE_PAYLOAD_MAX gets its connection killed.
            self.disconnect(conn)
            out.append(Drop(conn, str(e)))
        return out

    def handle(self, conn: int, msg: Message) -> list[Output]:
        """One whole message from ``conn``: its reply first, then the watch events it fired."""
        c = self.connections[conn]
        events: list[tuple[str, bool]] = []
        specials: list[tuple[str, int]] = []
        watch_first: _Watch | None = None
        try:
            if msg.type in self.unsupported or msg.type is XsType.INVALID:
                raise _Fail("ENOSYS", f"message type {int(msg.type)} not supported")
            if msg.type in (XsType.WATCH_EVENT, XsType.ERROR):
                raise _Fail("EINVAL", f"{msg.type.name} is not a request")
            try:
                request = decode_request(msg)
            except ProtocolError as e:
                raise _Fail("EINVAL", str(e)) from None
            log.debug("conn %d dom%d tx %d: %r", conn, c.domid, msg.tx_id, request)
            value = self._dispatch(c, msg.tx_id, request, events, specials)
            if isinstance(request, Watch) and c.watches:
                watch_first = c.watches[-1]
            reply = Message(msg.type, msg.req_id, msg.tx_id, request.reply_payload(value)).encode()
        except _Fail as f:
            log.debug("conn %d dom%d: %s -> %s %s", conn, c.domid, msg.type.name, f.name, f.why)
            reply = encode_error(msg.req_id, msg.tx_id, f.name)
        out: list[Output] = [Send(conn, reply)]
        if watch_first is not None:
            first = self._report(c, watch_first, watch_first.path)
            out.append(Send(conn, encode_watch_event(first, watch_first.token)))
        out.extend(self._fire(events, specials))
        return out

    def call(self, conn: int, request: Request[Any], tx_id: int = 0) -> tuple[Any, list[Output]]:
        """Run a typed request for ``conn`` without the wire (the simulator's toolstack helpers).

        Returns the reply value and the watch events to deliver; raises the errno-named ``XenstoreError``.
        """
        c = self.connections[conn]
        events: list[tuple[str, bool]] = []
        specials: list[tuple[str, int]] = []
        try:
            value = self._dispatch(c, tx_id, request, events, specials)
        except _Fail as f:
            raise XenstoreError.from_reply(f.name, request.TYPE.name, getattr(request, "path", None), f.why) from None
        return value, self._fire(events, specials)

    # -- paths and permissions --------------------------------------------------------------------------

    def _canon(self, c: Connection, path: str, *, special: bool = False) -> tuple[str, bool]:
        """(absolute path, was relative). EINVAL for anything docs/misc/xenstore.txt forbids."""
        if special and path.startswith("@"):
            if len(path) > XENSTORE_ABS_PATH_MAX or not _PATH_CHARS.match(path):
                raise _Fail("EINVAL", f"bad special path {path!r}")
            return path, False
        relative = not path.startswith("/")
        limit = XENSTORE_REL_PATH_MAX if relative else XENSTORE_ABS_PATH_MAX
        if not path or len(path.encode()) > limit or not _PATH_CHARS.match(path) or "@" in path:
            raise _Fail("EINVAL", f"bad path {path[:64]!r}")
        if "//" in path or (path.endswith("/") and path != "/"):
            raise _Fail("EINVAL", f"bad path {path[:64]!r}")
        if relative:
            path = f"/local/domain/{c.domid}/{path}"
            if len(path.encode()) > XENSTORE_ABS_PATH_MAX:
                raise _Fail("EINVAL", "path too long")
        return path, relative

    def _target_of(self, c: Connection) -> int | None:
        d = self.domains.get(c.domid)
        return None if d is None else d.target

    def _privileged_over(self, c: Connection, owner: int) -> bool:
        """Domain 0, the owner itself, and the domain SET_TARGET made the owner's controller."""
        return c.domid == 0 or c.domid == owner or self._target_of(c) == owner

    def _access(self, c: Connection, perms: tuple[Perm, ...]) -> PermAccess:
        owner = perms[0]
        if self._privileged_over(c, owner.domid):
            return PermAccess.BOTH
        for p in perms[1:]:
            if p.domid == c.domid:
                return p.access
        target = self._target_of(c)
        for p in perms[1:]:
            if p.domid == target:
                return p.access  # a controller inherits what its target was granted
        return owner.access

    def _check(self, c: Connection, store: Store, path: str, write: bool) -> Node:
        node = store.nodes.get(path)
        if node is None:
            raise _Fail("ENOENT", path)
        access = self._access(c, node.perms)
        if not (access.can_write if write else access.can_read):
            raise _Fail("EACCES", path)
        return node

    # -- dispatch ---------------------------------------------------------------------------------------

    def _store_for(self, c: Connection, tx_id: int) -> tuple[Store, _Txn | None]:
        if tx_id == 0:
            return self.store, None
        t = c.transactions.get(tx_id)
        if t is None:
            raise _Fail("EIO", f"no transaction {tx_id} on this connection")  # oxenstored 4.17 says EIO
        return t.store, t

    def _touch(self, txn: _Txn | None, store: Store, path: str) -> None:
        if txn is not None and path not in txn.seen:
            base = self.store.nodes.get(path)
            txn.seen[path] = None if base is None else base.generation

    def _bump(self, store: Store, txn: _Txn | None, path: str, node: Node) -> None:
        self._touch(txn, store, path)
        store.generation += 1
        store.nodes[path] = replace(node, generation=store.generation)
        if txn is not None:
            txn.dirty.add(path)

    def _relist(self, store: Store, txn: _Txn | None, path: str, children: tuple[str, ...]) -> None:
        """A node gains or loses a child. In a transaction this is merged at commit rather than checked:
        two transactions creating different children of one node do not conflict (so oxenstored, 4.17)."""
        store.generation += 1
        store.nodes[path] = replace(store.nodes[path], children=children, generation=store.generation)
        if txn is not None:
            txn.parents.add(path)

    def _dispatch(
        self,
        c: Connection,
        tx_id: int,
        r: Request[Any],
        events: list[tuple[str, bool]],
        specials: list[tuple[str, int]],
    ) -> Any:
        privileged = c.domid == 0
        if isinstance(r, TransactionStart):
            if tx_id != 0:
                raise _Fail("EINVAL", "TRANSACTION_START inside a transaction")
            if len(c.transactions) >= self._quota(c.domid, "transactions") and not privileged:
                raise _Fail("ENOSPC", "too many transactions")
            tid = self._next_tx
            self._next_tx = self._next_tx % 0xFFFF_FFFF + 1
            c.transactions[tid] = _Txn(tid, self.store.copy())
            return tid
        if isinstance(r, TransactionEnd):
            txn = c.transactions.pop(tx_id, None)
            if txn is None:
                raise _Fail("EIO", f"no transaction {tx_id}")
            if r.commit:
                self._commit(txn)
                events.extend(txn.events)
            return None
        if isinstance(r, Watch | Unwatch | ResetWatches):
            return self._watch_op(c, r)
        if isinstance(r, Introduce | Release | Resume | SetTarget | GetDomainPath | IsDomainIntroduced):
            return self._domain_op(c, r, specials)
        if isinstance(r, Control | GetFeature | SetFeature | GetQuota | ListQuotas | SetQuota):
            return self._admin_op(c, r)

        store, txn = self._store_for(c, tx_id)
        sink = txn.events if txn is not None else events
        path, _ = self._canon(c, r.path)  # type: ignore[attr-defined]

        if isinstance(r, Read):
            self._touch(txn, store, path)
            return self._check(c, store, path, write=False).value
        if isinstance(r, Directory | DirectoryPart):
            self._touch(txn, store, path)
            node = self._check(c, store, path, write=False)
            if isinstance(r, Directory):
                size = sum(len(n.encode()) + 1 for n in node.children)
                if size > XENSTORE_PAYLOAD_MAX:
                    raise _Fail("E2BIG", f"{len(node.children)} children do not fit one reply")
                return node.children
            return self._directory_part(node, r.offset)
        if isinstance(r, GetPerms):
            self._touch(txn, store, path)
            return self._check(c, store, path, write=False).perms
        if isinstance(r, Write | Mkdir):
            value = r.value if isinstance(r, Write) else None
            if value is not None and len(value) > self._quota(c.domid, "node-size") and not privileged:
                raise _Fail("ENOSPC", "value over the node-size quota")
            if self._write(c, store, txn, path, value):
                sink.append((path, False))
            return None
        if isinstance(r, Rm):
            if path == "/":
                raise _Fail("EINVAL", "cannot remove /")
            self._touch(txn, store, path)
            if path not in store.nodes:
                self._touch(txn, store, _parent(path))
                if _parent(path) not in store.nodes:
                    raise _Fail("ENOENT", _parent(path))
                return None
            self._check(c, store, path, write=True)
            self._rm(store, txn, path)
            sink.append((path, True))
            return None
        if isinstance(r, SetPerms):
            self._touch(txn, store, path)
            node = self._check(c, store, path, write=True)
            if not self._privileged_over(c, node.perms[0].domid):
                raise _Fail("EACCES", "only the owner may change permissions")
            if r.perms[0].domid != node.perms[0].domid and not privileged:
                raise _Fail("EPERM", "only a privileged domain may change the owner")
            self._bump(store, txn, path, replace(node, perms=r.perms))
            sink.append((path, False))
            return None
        raise _Fail("ENOSYS", f"{r.TYPE.name} not implemented")

    def _quota(self, domid: int, name: str) -> int:
        return self.domain_quotas.get(domid, {}).get(name, self.quotas[name])

    def _write(self, c: Connection, store: Store, txn: _Txn | None, path: str, value: bytes | None) -> bool:
        """WRITE (``value``) or MKDIR (``None``); whether anything changed."""
        node = store.nodes.get(path)
        self._touch(txn, store, path)
        if node is not None:
            if value is None:
                return False
            self._check(c, store, path, write=True)
            self._bump(store, txn, path, replace(node, value=value))
            return True
        # Create: write permission on the nearest existing ancestor; new nodes inherit its permissions,
        # owned by the creating domain when it is not privileged.
        missing = [path]
        parent = _parent(path)
        while parent not in store.nodes:
            self._touch(txn, store, parent)
            missing.append(parent)
            parent = _parent(parent)
        anchor = self._check(c, store, parent, write=True)
        perms = anchor.perms
        if c.domid != 0:
            perms = (Perm(c.domid, perms[0].access), *perms[1:])
        for p in reversed(missing):
            self._relist(store, txn, _parent(p), (*store.nodes[_parent(p)].children, _leaf(p)))
            self._bump(store, txn, p, Node(value if p == path and value is not None else b"", perms))
        return True

    def _rm(self, store: Store, txn: _Txn | None, path: str) -> None:
        for p in [q for q in store.nodes if _is_child(q, path)]:
            self._touch(txn, store, p)
            del store.nodes[p]
            if txn is not None:
                txn.dirty.add(p)
        parent = _parent(path)
        leaf = _leaf(path)
        self._relist(store, txn, parent, tuple(n for n in store.nodes[parent].children if n != leaf))

    def _directory_part(self, node: Node, offset: int) -> DirectoryChunk:
        encoded = [n.encode() + b"\0" for n in node.children]
        total = sum(len(e) for e in encoded)
        if offset > total:
            raise _Fail("EINVAL", f"offset {offset} beyond the list ({total} bytes)")
        room = XENSTORE_PAYLOAD_MAX - len(str(node.generation)) - 2  # gencnt NUL, final NUL
        pos = 0
        names: list[str] = []
        used = 0
        for name, e in zip(node.children, encoded, strict=True):
            if pos >= offset:
                if used + len(e) > room:
                    return DirectoryChunk(node.generation, tuple(names), False, used)
                names.append(name)
                used += len(e)
            pos += len(e)
        return DirectoryChunk(node.generation, tuple(names), True, used)

    def _commit(self, txn: _Txn) -> None:
        for path, gen in txn.seen.items():
            now = self.store.nodes.get(path)
            if (None if now is None else now.generation) != gen:
                raise _Fail("EAGAIN", f"{path} changed since the transaction started")
        main = self.store
        for path in sorted(txn.dirty, key=lambda p: p.count("/")):  # parents before children
            new = txn.store.nodes.get(path)
            if new is None:
                main.nodes.pop(path, None)
            else:
                old = main.nodes.get(path)
                main.generation += 1
                children = old.children if old is not None else ()
                main.nodes[path] = replace(new, children=children, generation=main.generation)
        # Children lists: keep what is there (others may have added children meanwhile), drop what the
        # transaction removed, append what it created.
        for parent in txn.parents | {_parent(p) for p in txn.dirty if p != "/"}:
            node = main.nodes.get(parent)
            if node is None:
                continue
            mine = txn.store.nodes.get(parent)
            listed = [n for n in node.children if _join(parent, n) in main.nodes]
            listed += [n for n in (mine.children if mine else ()) if n not in listed and _join(parent, n) in main.nodes]
            main.generation += 1
            main.nodes[parent] = replace(node, children=tuple(listed), generation=main.generation)

    # -- watches ----------------------------------------------------------------------------------------

    def _watch_op(self, c: Connection, r: Watch | Unwatch | ResetWatches) -> None:
        if isinstance(r, ResetWatches):
            c.watches.clear()
            c.transactions.clear()
            return None
        path, relative = self._canon(c, r.path, special=True)
        if isinstance(r, Watch):
            if any(w.path == path and w.token == r.token for w in c.watches):
                raise _Fail("EEXIST", "watch already set")
            if len(c.watches) >= self._quota(c.domid, "watches") and c.domid != 0:
                raise _Fail("E2BIG", "too many watches")
            c.watches.append(_Watch(path, r.token, r.depth, relative))
            return None
        for i, w in enumerate(c.watches):
            if w.path == path and w.token == r.token:
                del c.watches[i]
                return None
        raise _Fail("ENOENT", "no such watch")

    def _report(self, c: Connection, w: _Watch, path: str) -> str:
        """The event path as the watcher sees it: relative if the watch was set with a relative path."""
        base = f"/local/domain/{c.domid}/"
        if w.relative and path.startswith(base):
            return path[len(base) :]
        return path

    def _fire(self, events: list[tuple[str, bool]], specials: list[tuple[str, int]]) -> list[Output]:
        out: list[Output] = []
        for path, removal in events:
            for c in list(self.connections.values()):
                for w in c.watches:
                    if w.path.startswith("@"):
                        continue
                    epath: str | None = None
                    if _is_child(path, w.path):
                        if w.depth is None or _depth_below(path, w.path) <= w.depth:
                            epath = path
                    elif removal and _is_child(w.path, path):
                        epath = w.path
                    if epath is None:
                        continue
                    node = self.store.nodes.get(epath)
                    if node is not None and not self._access(c, node.perms).can_read:
                        continue
                    out.append(Send(c.id, encode_watch_event(self._report(c, w, epath), w.token)))
        for name, domid in specials:
            for c in list(self.connections.values()):
                if c.domid != 0:
                    continue
                for w in c.watches:
                    if w.path == name:
                        epath = f"{name}/{domid}" if w.depth == 1 else name
                    elif w.path == f"{name}/{domid}":
                        epath = w.path
                    else:
                        continue
                    out.append(Send(c.id, encode_watch_event(epath, w.token)))
        return out

    # -- domains ----------------------------------------------------------------------------------------

    def _domain_op(self, c: Connection, r: Request[Any], specials: list[tuple[str, int]]) -> Any:
        if isinstance(r, GetDomainPath):
            return f"/local/domain/{r.domid}"
        if isinstance(r, IsDomainIntroduced):
            return r.domid == 0 or r.domid in self.domains
        if c.domid != 0:
            raise _Fail("EACCES", f"{r.TYPE.name} is for the control domain")
        if isinstance(r, Introduce):
            if r.domid == 0 or r.domid >= 0x7FF0:
                raise _Fail("EINVAL", "INTRODUCE needs a real domain id")
            d = self.domains.get(r.domid)
            if d is None:
                feats = self.domain_features.pop(r.domid, SUPPORTED_FEATURES)
                self.domains[r.domid] = _Domain(r.domid, r.gfn, r.evtchn, feats)
                specials.append(("@introduceDomain", r.domid))
            elif (d.gfn, d.evtchn) != (r.gfn, r.evtchn):
                raise _Fail("EEXIST", f"domain {r.domid} is already introduced")
            return None
        if isinstance(r, Release):
            if self.domains.pop(r.domid, None) is None:
                raise _Fail("EINVAL", f"domain {r.domid} is not introduced")  # as oxenstored 4.17
            specials.append(("@releaseDomain", r.domid))
            return None
        if isinstance(r, Resume):
            if r.domid not in self.domains:
                raise _Fail("EINVAL", f"domain {r.domid} is not introduced")
            return None
        if isinstance(r, SetTarget):
            d = self.domains.get(r.domid)
            if d is None or r.target not in self.domains:
                raise _Fail("ENOENT", "both domains must be introduced")
            d.target = r.target
            return None
        raise _Fail("ENOSYS", r.TYPE.name)

    # -- xenstored itself -------------------------------------------------------------------------------

    def _admin_op(self, c: Connection, r: Request[Any]) -> Any:
        if isinstance(r, GetFeature) and r.domid is None:
            return SUPPORTED_FEATURES
        if c.domid != 0:
            raise _Fail("EACCES", f"{r.TYPE.name} is for the control domain")
        if isinstance(r, Control):
            if r.command == "check":
                return b"OK"
            if r.command == "help":
                return "\n".join(CONTROL_COMMANDS).encode() + b"\n"
            if r.command in ("print", "log"):
                self.log_lines.append(b" ".join(r.args).decode("utf-8", "replace"))
                return b"OK"
            raise _Fail("EINVAL", f"unknown control command {r.command!r}")
        if isinstance(r, GetFeature):
            assert r.domid is not None
            d = self.domains.get(r.domid)
            if d is not None:
                return d.features
            return self.domain_features.get(r.domid, SUPPORTED_FEATURES)
        if isinstance(r, SetFeature):
            if r.value & ~SUPPORTED_FEATURES:
                raise _Fail("EINVAL", f"features {r.value:#x} not supported")
            if r.domid in self.domains:
                raise _Fail("EBUSY", "the domain is already introduced")
            self.domain_features[r.domid] = r.value
            return None
        if isinstance(r, ListQuotas):
            return tuple(self.quotas)
        if isinstance(r, GetQuota | SetQuota):
            if r.quota not in self.quotas:
                raise _Fail("EINVAL", f"unknown quota {r.quota!r}")
            if r.domid is not None and r.domid != 0 and r.domid not in self.domains:
                raise _Fail("ENOENT", f"domain {r.domid} is not introduced")
            if isinstance(r, GetQuota):
                return self.quotas[r.quota] if r.domid is None else self._quota(r.domid, r.quota)
            if r.domid is None:
                self.quotas[r.quota] = r.value
            else:
                self.domain_quotas.setdefault(r.domid, {})[r.quota] = r.value
            return None
        raise _Fail("ENOSYS", r.TYPE.name)

    # -- the simulator's direct access -------------------------------------------------------------------

    def fire_special(self, name: str, domid: int) -> list[Output]:
        """Watch events for ``@introduceDomain``/``@releaseDomain`` about ``domid`` (e.g. a domain died)."""
        if name not in _SPECIALS:
            raise ValueError(f"not a special watch: {name!r}")
        return self._fire([], [(name, domid)])
