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
commit fails with EAGAIN if a node the transaction read or wrote changed meanwhile, or if a node it created
lost its parent: no orphans, XSA-415), DIRECTORY_PART, the domain messages, CONTROL (check, help, print,
log), GET/SET_FEATURE and GET/SET_QUOTA. Message types listed in ``unsupported`` answer ENOSYS, to play an
older xenstored.

Quotas are enforced per owning domain, against unprivileged connections only, with C xenstored's defaults
(``DEFAULT_QUOTAS``; 0 disables one): nodes and memory owned (counted from the store itself, so they can
never drift from it -- XSA-483), node size, permissions per node, watches, transactions and the nodes one
transaction may touch (transaction nodes are re-checked at commit: XSA-326/421). "outstanding" is the
transport's to enforce (the core answers every request at once): the daemon stops reading a connection
with that many replies unsent. A read-only connection gets EROFS for anything that changes state.

When a domain is released, the nodes it owns are removed with their subtrees (docs/misc/xenstore.txt,
XSA-419), every permission entry naming it is dropped (XSA-322/417), and its connections lose their
watches and transactions (XSA-324); a later domain with the same id starts from nothing.

The one door to the outside is ``rings`` (a ``DomainRings``, None by default: INTRODUCE and RELEASE are then
pure state). With it, INTRODUCE asks ``rings.attach(domid, gfn, port)`` to map the domain's ring and bind its
event channel *before* the domain counts as introduced: if that raises an ``OSError``, the request answers
that errno's name (ESRCH as ENOENT, a name the wire does not know as EIO), nothing is recorded and
@introduceDomain does not fire. RELEASE, and ``domain_gone`` (the daemon saw the domain die), forget the
domain, then call ``rings.detach(domid)``. The core never does I/O itself.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import ProtocolError, XenstoreError
from ._wire import (
    XENSTORE_ABS_PATH_MAX,
    XENSTORE_PAYLOAD_MAX,
    XENSTORE_REL_PATH_MAX,
    XSD_ERRORS,
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

__all__ = ["Connection", "DomainRings", "Drop", "Node", "Output", "Send", "ServerCore", "Store"]

log = logging.getLogger("xenpure.xenstore.server")

#: Feature bits (docs/misc/xenstore-ring.txt) this server claims: WATCH with a depth.
FEATURE_WATCHDEPTH = 4
SUPPORTED_FEATURES = FEATURE_WATCHDEPTH
#: C xenstored's defaults; "memory" is its hard per-domain limit in bytes, as we understand it.
DEFAULT_QUOTAS: dict[str, int] = {
    "nodes": 1000,
    "watches": 128,
    "transactions": 10,
    "node-size": 2048,
    "permissions": 5,
    "outstanding": 20,
    "transaction-nodes": 1024,
    "memory": 2 * 1024 * 1024 + 512 * 1024,
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
    """One node: value, permissions (owner first), children in byte order (as oxenstored lists them; the lab
    showed it), generation of last change."""

    value: bytes
    perms: tuple[Perm, ...]
    children: tuple[str, ...] = ()
    generation: int = 0


def node_cost(path: str, node: Node) -> int:
    """What a node counts against its owner's memory quota (path, value, permissions, bookkeeping)."""
    return len(path) + len(node.value) + 8 * len(node.perms) + 32


@dataclass
class Store:
    """The whole tree, as a map from absolute path to ``Node``, the generation counter, and per-owner usage
    (nodes, bytes) kept in step by ``put``. ``journal``, when a list, records every change (the daemon's
    ``--state``); copies made for transactions have none."""

    nodes: dict[str, Node] = field(default_factory=lambda: {"/": Node(b"", (Perm(0, PermAccess.NONE),))})
    generation: int = 0
    usage: dict[int, list[int]] = field(default_factory=dict)
    journal: list[tuple[str, Node | None]] | None = None

    def __post_init__(self) -> None:
        if not self.usage:
            for path, node in self.nodes.items():
                u = self.usage.setdefault(node.perms[0].domid, [0, 0])
                u[0] += 1
                u[1] += node_cost(path, node)

    def copy(self) -> Store:
        return Store(dict(self.nodes), self.generation, {k: list(v) for k, v in self.usage.items()})

    def put(self, path: str, node: Node | None) -> None:
        """Set or (``None``) delete one node, keeping usage and journal in step."""
        old = self.nodes.get(path)
        if old is not None:
            u = self.usage[old.perms[0].domid]
            u[0] -= 1
            u[1] -= node_cost(path, old)
        if node is None:
            self.nodes.pop(path, None)
        else:
            self.nodes[path] = node
            u = self.usage.setdefault(node.perms[0].domid, [0, 0])
            u[0] += 1
            u[1] += node_cost(path, node)
        if self.journal is not None:
            self.journal.append((path, node))

    def used(self, domid: int) -> tuple[int, int]:
        """(nodes, bytes) owned by ``domid``."""
        u = self.usage.get(domid)
        return (0, 0) if u is None else (u[0], u[1])

    @classmethod
    def from_nodes(cls, nodes: dict[str, Node]) -> Store:
        """A store holding ``nodes`` (restored state), its usage counted afresh."""
        s = cls(nodes={})
        for path, node in nodes.items():
            s.put(path, node)
        s.generation = max((n.generation for n in nodes.values()), default=0)
        return s


#: (path, removal, permissions): for a change the node's permissions then; for a removal those of every
#: node removed, by path (whose permissions decide who hears of it).
_Event = tuple[str, bool, "tuple[Perm, ...] | dict[str, tuple[Perm, ...]]"]


@dataclass
class _Txn:
    id: int
    store: Store
    origin: dict[str, Node]  # the nodes as they were at TRANSACTION_START (what the transaction saw)
    max_nodes: int = 0  # transaction-nodes quota (0: none)
    seen: dict[str, int | None] = field(default_factory=dict)  # path -> generation when first touched
    dirty: set[str] = field(default_factory=set)  # nodes created, removed, or given a new value/perms
    parents: set[str] = field(default_factory=set)  # nodes whose children list changed
    events: list[_Event] = field(default_factory=list)


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
    readonly: bool = False
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


class DomainRings(Protocol):
    """What serves a domain's ring once INTRODUCE names it (the daemon's ``--xen`` side).

    ``attach`` maps the ring page and binds the event channel, or raises ``OSError`` (errno set) having left
    nothing behind; ``detach`` undoes it (the domain was released or died). Both run inside the core's
    request handling, on the daemon's thread.
    """

    def attach(self, domid: int, gfn: int, port: int) -> None: ...

    def detach(self, domid: int) -> None: ...


def _errno_name(e: OSError) -> str:
    """The xenstore error an attach failure answers: its errno's name, ESRCH (no such domain) as ENOENT,
    EIO for what the wire has no name for."""
    if e.errno == errno.ESRCH:
        return "ENOENT"
    name = errno.errorcode.get(e.errno or 0, "EIO")
    return name if name in XSD_ERRORS else "EIO"


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


#: Requests that change state: a read-only connection gets EROFS for them.
_MUTATING = (Write, Mkdir, Rm, SetPerms, Introduce, Release, Resume, SetTarget, SetFeature, SetQuota)


class ServerCore:
    """The xenstore server state and logic. Connections are numbered; ``receive_data`` drives them."""

    def __init__(
        self,
        *,
        unsupported: Iterable[XsType] = (),
        quotas: dict[str, int] | None = None,
        rings: DomainRings | None = None,
    ) -> None:
        self.store = Store()
        self.rings = rings
        self.unsupported = frozenset(unsupported)
        self.connections: dict[int, Connection] = {}
        self.domains: dict[int, _Domain] = {}
        self.domain_features: dict[int, int] = {}
        self.quotas: dict[str, int] = dict(DEFAULT_QUOTAS)
        if quotas:
            unknown = set(quotas) - set(DEFAULT_QUOTAS)
            if unknown:
                raise ValueError(f"unknown quotas: {sorted(unknown)}")
            self.quotas.update(quotas)
        self.domain_quotas: dict[int, dict[str, int]] = {}
        #: Permissions of the special watch paths (SET_PERMS lets unprivileged domains receive them).
        self.special_perms: dict[str, tuple[Perm, ...]] = {n: (Perm(0, PermAccess.NONE),) for n in _SPECIALS}
        self.log_lines: list[str] = []
        self._next_conn = 1
        self._next_tx = 1

    # -- connections ------------------------------------------------------------------------------------

    def connect(self, domid: int = 0, *, readonly: bool = False) -> int:
        """A new connection speaking for ``domid``; ``readonly`` ones may only read and watch."""
        cid = self._next_conn
        self._next_conn += 1
        self.connections[cid] = Connection(cid, domid, readonly)
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
            while conn in self.connections and (msg := c.framer.next_message()) is not None:
                out.extend(self.handle(conn, msg))
        except ProtocolError as e:
            # docs/misc/xenstore.txt: a client over XENSTORE_PAYLOAD_MAX gets its connection killed.
            self.disconnect(conn)
            out.append(Drop(conn, str(e)))
            # The framer keeps the error to raise again: let it keep no frames (and what they hold) alive.
            e.__traceback__ = None
        return out

    def handle(self, conn: int, msg: Message) -> list[Output]:
        """One whole message from ``conn``: its reply first, then the watch events it fired."""
        c = self.connections[conn]
        events: list[_Event] = []
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
        events: list[_Event] = []
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
                raise _Fail("EINVAL", f"bad special path {path[:64]!r}")
            return path, False
        relative = not path.startswith("/")
        limit = XENSTORE_REL_PATH_MAX if relative else XENSTORE_ABS_PATH_MAX
        if not path or len(path.encode()) > limit or not _PATH_CHARS.match(path) or "@" in path:
            raise _Fail("EINVAL", f"bad path {path[:64]!r}")
        if "//" in path or (path.endswith("/") and path != "/"):
            raise _Fail("EINVAL", f"bad path {path[:64]!r}")  # e.g. "/local/domain/" (XSA-481)
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
            if txn.max_nodes and len(txn.seen) >= txn.max_nodes:
                raise _Fail("ENOSPC", f"the transaction touched {len(txn.seen)} nodes (transaction-nodes quota)")
            # The generation the transaction's snapshot had: a change made outside after the start but
            # before this first touch is a conflict too (the transaction saw the old value).
            base = txn.origin.get(path)
            txn.seen[path] = None if base is None else base.generation

    def _bump(self, store: Store, txn: _Txn | None, path: str, node: Node) -> None:
        self._touch(txn, store, path)
        store.generation += 1
        store.put(path, replace(node, generation=store.generation))
        if txn is not None:
            txn.dirty.add(path)

    def _relist(self, store: Store, txn: _Txn | None, path: str, children: tuple[str, ...]) -> None:
        """A node gains or loses a child. In a transaction this is merged at commit rather than checked:
        two transactions creating different children of one node do not conflict (so oxenstored, 4.17)."""
        store.generation += 1
        store.put(path, replace(store.nodes[path], children=tuple(sorted(children)), generation=store.generation))
        if txn is not None:
            txn.parents.add(path)

    def _dispatch(
        self,
        c: Connection,
        tx_id: int,
        r: Request[Any],
        events: list[_Event],
        specials: list[tuple[str, int]],
    ) -> Any:
        privileged = c.domid == 0
        if c.readonly and isinstance(r, _MUTATING):
            raise _Fail("EROFS", "read-only connection")
        if isinstance(r, TransactionStart):
            if tx_id != 0:
                raise _Fail("EINVAL", "TRANSACTION_START inside a transaction")
            if not privileged and self._over(c.domid, "transactions", len(c.transactions) + 1):
                raise _Fail("ENOSPC", "too many transactions")
            tid = self._next_tx
            self._next_tx = self._next_tx % 0xFFFF_FFFF + 1
            limit = 0 if privileged else self._quota(c.domid, "transaction-nodes")
            c.transactions[tid] = _Txn(tid, self.store.copy(), dict(self.store.nodes), limit)
            return tid
        if isinstance(r, TransactionEnd):
            txn = c.transactions.pop(tx_id, None)
            if txn is None:
                raise _Fail("EIO", f"no transaction {tx_id}")
            if r.commit:
                self._commit(c, txn)
                events.extend(txn.events)
            return None
        if isinstance(r, Watch | Unwatch | ResetWatches):
            return self._watch_op(c, r)
        if isinstance(r, Introduce | Release | Resume | SetTarget | GetDomainPath | IsDomainIntroduced):
            return self._domain_op(c, r, events, specials)
        if isinstance(r, Control | GetFeature | SetFeature | GetQuota | ListQuotas | SetQuota):
            return self._admin_op(c, r)
        if isinstance(r, GetPerms | SetPerms) and r.path in self.special_perms:
            return self._special_perms(c, r)

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
            if value is not None and not privileged and self._over(c.domid, "node-size", len(value)):
                raise _Fail("ENOSPC", "value over the node-size quota")
            if self._write(c, store, txn, path, value):
                sink.append((path, False, store.nodes[path].perms))
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
            sink.append((path, True, self._rm(store, txn, path)))
            return None
        if isinstance(r, SetPerms):
            self._touch(txn, store, path)
            node = self._check(c, store, path, write=True)
            if not self._privileged_over(c, node.perms[0].domid):
                raise _Fail("EACCES", "only the owner may change permissions")
            if r.perms[0].domid != node.perms[0].domid and not privileged:
                raise _Fail("EPERM", "only a privileged domain may change the owner")
            if not privileged and self._over(c.domid, "permissions", len(r.perms) - 1):
                raise _Fail("ENOSPC", "more permission entries than the permissions quota")
            self._bump(store, txn, path, replace(node, perms=r.perms))
            sink.append((path, False, r.perms))
            return None
        raise _Fail("ENOSYS", f"{r.TYPE.name} not implemented")

    def _quota(self, domid: int, name: str) -> int:
        return self.domain_quotas.get(domid, {}).get(name, self.quotas[name])

    def _over(self, domid: int, name: str, amount: int) -> bool:
        """Whether ``amount`` is over ``domid``'s quota ``name`` (0 disables a quota)."""
        q = self._quota(domid, name)
        return q != 0 and amount > q

    def _write(self, c: Connection, store: Store, txn: _Txn | None, path: str, value: bytes | None) -> bool:
        """WRITE (``value``) or MKDIR (``None``); whether anything changed."""
        privileged = c.domid == 0
        node = store.nodes.get(path)
        self._touch(txn, store, path)
        if node is not None:
            if value is None:
                return False
            self._check(c, store, path, write=True)
            new = replace(node, value=value)
            owner = node.perms[0].domid
            if not privileged and owner != 0:
                grow = node_cost(path, new) - node_cost(path, node)
                if grow > 0 and self._over(owner, "memory", store.used(owner)[1] + grow):
                    raise _Fail("ENOSPC", f"domain {owner} is over its memory quota")
            self._bump(store, txn, path, new)
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
        if not privileged:
            perms = (Perm(c.domid, perms[0].access), *perms[1:])
            nodes, used = store.used(c.domid)
            cost = sum(node_cost(p, Node(value if p == path and value else b"", perms)) for p in missing)
            if self._over(c.domid, "nodes", nodes + len(missing)):
                raise _Fail("ENOSPC", f"domain {c.domid} is over its nodes quota")
            if self._over(c.domid, "memory", used + cost):
                raise _Fail("ENOSPC", f"domain {c.domid} is over its memory quota")
        for p in reversed(missing):
            self._relist(store, txn, _parent(p), (*store.nodes[_parent(p)].children, _leaf(p)))
            self._bump(store, txn, p, Node(value if p == path and value is not None else b"", perms))
        return True

    def _rm(self, store: Store, txn: _Txn | None, path: str) -> dict[str, tuple[Perm, ...]]:
        """Remove ``path`` and everything below it (iteratively: depth costs no stack, XSA-418); returns
        the permissions each removed node had."""
        gone = {q: n.perms for q, n in store.nodes.items() if _is_child(q, path)}
        for p in gone:
            self._touch(txn, store, p)
            store.put(p, None)
            if txn is not None:
                txn.dirty.add(p)
        parent = _parent(path)
        leaf = _leaf(path)
        self._relist(store, txn, parent, tuple(n for n in store.nodes[parent].children if n != leaf))
        return gone

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

    def _commit(self, c: Connection, txn: _Txn) -> None:
        for path, gen in txn.seen.items():
            now = self.store.nodes.get(path)
            if (None if now is None else now.generation) != gen:
                raise _Fail("EAGAIN", f"{path} changed since the transaction started")
        main = self.store
        created = {p for p in txn.dirty if p in txn.store.nodes and p not in main.nodes}
        for p in created:
            # A node created in the transaction whose parent was removed outside it meanwhile: committing
            # would leave an orphan (XSA-415). Retry instead.
            if _parent(p) not in main.nodes and _parent(p) not in created:
                raise _Fail("EAGAIN", f"the parent of {p} was removed since the transaction started")
        if c.domid != 0:
            delta_nodes = delta_bytes = 0
            for p in txn.dirty:
                old, new = main.nodes.get(p), txn.store.nodes.get(p)
                for n, sign in ((old, -1), (new, 1)):
                    if n is not None and n.perms[0].domid == c.domid:
                        delta_nodes += sign
                        delta_bytes += sign * node_cost(p, n)
            nodes, used = main.used(c.domid)
            if delta_nodes > 0 and self._over(c.domid, "nodes", nodes + delta_nodes):
                raise _Fail("ENOSPC", f"domain {c.domid} would be over its nodes quota (XSA-326/421)")
            if delta_bytes > 0 and self._over(c.domid, "memory", used + delta_bytes):
                raise _Fail("ENOSPC", f"domain {c.domid} would be over its memory quota")
        for path in sorted(txn.dirty, key=lambda p: p.count("/")):  # parents before children
            new = txn.store.nodes.get(path)
            if new is None:
                if path in main.nodes:
                    main.put(path, None)
            else:
                old = main.nodes.get(path)
                main.generation += 1
                children = old.children if old is not None else ()
                main.put(path, replace(new, children=children, generation=main.generation))
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
            main.put(parent, replace(node, children=tuple(sorted(listed)), generation=main.generation))

    # -- watches ----------------------------------------------------------------------------------------

    def _watch_op(self, c: Connection, r: Watch | Unwatch | ResetWatches) -> None:
        if isinstance(r, ResetWatches):
            # Whatever tx_id it came with (XSA-484: inside a transaction it must not crash anything).
            c.watches.clear()
            c.transactions.clear()
            return None
        path, relative = self._canon(c, r.path, special=True)
        if isinstance(r, Watch):
            if any(w.path == path and w.token == r.token for w in c.watches):
                raise _Fail("EEXIST", "watch already set")
            if c.domid != 0 and self._over(c.domid, "watches", len(c.watches) + 1):
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

    def _fire(self, events: list[_Event], specials: list[tuple[str, int]]) -> list[Output]:
        out: list[Output] = []
        for path, removal, perms in events:
            gone = perms if isinstance(perms, dict) else {path: perms}
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
                    # XSA-115: nobody hears of a node it may not read. A watched node that went with a
                    # removed parent is judged by its own permissions (docs/misc/xenstore.txt).
                    if not self._access(c, gone.get(epath, gone[path])).can_read:
                        continue
                    out.append(Send(c.id, encode_watch_event(self._report(c, w, epath), w.token)))
        for name, domid in specials:
            for c in list(self.connections.values()):
                if c.domid != 0 and not self._access(c, self.special_perms[name]).can_read:
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

    def _special_perms(self, c: Connection, r: GetPerms | SetPerms) -> Any:
        """GET/SET_PERMS on @introduceDomain or @releaseDomain: who may receive those events."""
        if isinstance(r, GetPerms):
            return self.special_perms[r.path]
        if c.domid != 0:
            raise _Fail("EACCES", f"only the control domain sets the permissions of {r.path}")
        self.special_perms[r.path] = r.perms
        return None

    # -- domains ----------------------------------------------------------------------------------------

    def _domain_op(self, c: Connection, r: Request[Any], events: list[_Event], specials: list[tuple[str, int]]) -> Any:
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
                if self.rings is not None:
                    try:
                        self.rings.attach(r.domid, r.gfn, r.evtchn)
                    except OSError as e:
                        log.warning("INTRODUCE dom%d gfn %#x port %d: %s", r.domid, r.gfn, r.evtchn, e)
                        raise _Fail(_errno_name(e), f"cannot serve domain {r.domid}'s ring: {e}") from None
                feats = self.domain_features.pop(r.domid, SUPPORTED_FEATURES)
                self.domains[r.domid] = _Domain(r.domid, r.gfn, r.evtchn, feats)
                specials.append(("@introduceDomain", r.domid))
            elif (d.gfn, d.evtchn) != (r.gfn, r.evtchn):
                raise _Fail("EEXIST", f"domain {r.domid} is already introduced")
            return None
        if isinstance(r, Release):
            if self.domains.pop(r.domid, None) is None:
                raise _Fail("EINVAL", f"domain {r.domid} is not introduced")  # as oxenstored 4.17
            self._forget_domain(r.domid, events)
            self._detach(r.domid)
            specials.append(("@releaseDomain", r.domid))
            return None
        if isinstance(r, Resume):
            if r.domid not in self.domains:
                raise _Fail("EINVAL", f"domain {r.domid} is not introduced")
            return None
        if isinstance(r, SetTarget):
            d = self.domains.get(r.domid)
            if d is None or (r.target != 0 and r.target not in self.domains):  # dom0 is always introduced
                raise _Fail("ENOENT", "both domains must be introduced")
            d.target = r.target
            return None
        raise _Fail("ENOSYS", r.TYPE.name)

    def _forget_domain(self, domid: int, events: list[_Event]) -> None:
        """A domain is gone: its nodes, its permission entries, its watches, transactions and quotas."""
        store = self.store
        owned = sorted((p for p, n in store.nodes.items() if n.perms[0].domid == domid and p != "/"), key=len)
        for p in owned:
            node = store.nodes.get(p)
            if node is not None and _parent(p) in store.nodes:  # not already gone with an owned ancestor
                events.append((p, True, self._rm(store, None, p)))
        for p, n in list(store.nodes.items()):
            if any(e.domid == domid for e in n.perms[1:]):
                kept = (n.perms[0], *(e for e in n.perms[1:] if e.domid != domid))
                self._bump(store, None, p, replace(n, perms=kept))
        for name, perms in self.special_perms.items():
            self.special_perms[name] = (perms[0], *(e for e in perms[1:] if e.domid != domid))
        for d in self.domains.values():
            if d.target == domid:
                d.target = None
        for c in self.connections.values():
            if c.domid == domid:
                c.watches.clear()
                c.transactions.clear()
        self.domain_quotas.pop(domid, None)
        self.domain_features.pop(domid, None)

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
                del self.log_lines[:-1000]  # bounded
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

    def _detach(self, domid: int) -> None:
        if self.rings is not None:
            try:
                self.rings.detach(domid)
            except OSError as e:  # the domain is forgotten whatever its ring's teardown said
                log.warning("dom%d: tearing its ring down: %s", domid, e)

    def domain_gone(self, domid: int) -> list[Output]:
        """An introduced domain died (the daemon saw it dying or vanished after VIRQ_DOM_EXC): forget it as
        RELEASE would, detach its ring, and fire @releaseDomain. A domain not introduced only fires it."""
        events: list[_Event] = []
        if self.domains.pop(domid, None) is not None:
            self._forget_domain(domid, events)
            self._detach(domid)
        return self._fire(events, [("@releaseDomain", domid)])

    def fire_special(self, name: str, domid: int) -> list[Output]:
        """Watch events for ``@introduceDomain``/``@releaseDomain`` about ``domid`` (e.g. a domain died)."""
        if name not in _SPECIALS:
            raise ValueError(f"not a special watch: {name!r}")
        return self._fire([], [(name, domid)])
