"""C layouts, declared once, on top of construct.

Rule 1: a C record is written down in exactly one place. Its construct ``Struct``, its size, its alignment,
the offsets the ABI catalogue prints, the bytes the simulator decodes and the ``offsetof`` checks the
conformance tier compiles are all derived from that one declaration.

A declaration (``Decl``) lists the C members in order with their types. Padding is never typed by hand:
``layout()`` inserts what the x86_64 System V ABI inserts (natural alignment, trailing padding to the
record's alignment). Members that exist only from (or until) some interface version carry ``since=`` /
``until=``; ``layout(iface)`` materialises the record for one hypervisor interface, so supporting a new Xen
release means adding a row to the release table and annotating the members that changed.

A union member (``Union``) is laid out as a fixed-size block whose members all start at its offset, as in C;
the catalogue lists each union member under a dotted path (``u.getdomaininfo``).

A value that does not fit its member (70000 or -1 in a ``uint16_t``) raises ``ArgumentOutOfRange`` naming
the record, member, C type and range, from ``Layout.build`` and from every codec derived from a declaration
(``scalar_error`` is the one check). The check runs only after ``struct``/construct refused the value, so
encoding what fits costs nothing extra.
"""

from __future__ import annotations

import functools
import keyword
import operator
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any
from typing import Union as _TUnion

import construct as cs

from ..errors import ArgumentOutOfRange, ProtocolError

__all__ = [
    "Array",
    "CType",
    "Constants",
    "Decl",
    "F",
    "Iface",
    "Layout",
    "Member",
    "Union",
    "char",
    "constants_registry",
    "declarations",
    "handle",
    "i8",
    "i16",
    "i32",
    "i64",
    "pack_scalars",
    "scalar_error",
    "u8",
    "u16",
    "u32",
    "u64",
    "ulong",
]


# --- primitive C types (x86_64, little endian, LP64) ----------------------------------------------------


@dataclass(frozen=True)
class CType:
    """A C scalar: its spelling, size (== alignment on x86_64) and construct codec."""

    cname: str
    size: int
    con: Any

    @property
    def align(self) -> int:
        return self.size

    @property
    def signed(self) -> bool:
        return self.cname.startswith("int")

    @property
    def code(self) -> str:
        """Its ``struct`` format letter (``"H"`` for ``uint16_t``, ``"q"`` for ``int64_t``)."""
        return _CODES[(self.size, self.signed)]

    @property
    def bounds(self) -> tuple[int, int]:
        """The smallest and largest value the type holds."""
        bits = 8 * self.size
        if self.signed:
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 1


u8 = CType("uint8_t", 1, cs.Int8ul)
u16 = CType("uint16_t", 2, cs.Int16ul)
u32 = CType("uint32_t", 4, cs.Int32ul)
u64 = CType("uint64_t", 8, cs.Int64ul)
i8 = CType("int8_t", 1, cs.Int8sl)
i16 = CType("int16_t", 2, cs.Int16sl)
i32 = CType("int32_t", 4, cs.Int32sl)
i64 = CType("int64_t", 8, cs.Int64sl)
char = CType("char", 1, cs.Int8ul)
#: ``unsigned long`` and ``xen_pfn_t``/``xen_ulong_t`` on x86_64.
ulong = CType("unsigned long", 8, cs.Int64ul)
#: ``XEN_GUEST_HANDLE(T)`` / ``XEN_GUEST_HANDLE_64(T)`` and user pointers on x86_64: an 8-byte virtual address.
handle = CType("guest handle", 8, cs.Int64ul)
#: Element types whose arrays are byte strings (``int8_t cmd_line[]`` in start_info is text too).
_BYTE_TYPES = (u8, i8, char)


@dataclass(frozen=True)
class Array:
    """``T name[n]``. Arrays of the byte types (``char``, ``uint8_t``, ``int8_t``) decode as ``bytes``."""

    of: Type
    n: int


@dataclass(frozen=True)
class Union:
    """An anonymous C union member: all members at one offset. ``size`` forces a minimum (``pad[128]``)."""

    members: tuple[F, ...]
    size: int = 0

    def __post_init__(self) -> None:
        if any(m.since is not None or m.until is not None for m in self.members):
            raise ValueError("version a union through its enclosing record's members, not inside it")


Type = _TUnion[CType, Array, Union, "Decl"]


@dataclass(frozen=True)
class F:
    """One declared member. ``since``/``until`` bound the interface versions (of the record's family) that
    have it; ``until`` is exclusive."""

    name: str
    type: Type
    since: int | None = None
    until: int | None = None

    def present(self, version: int | None) -> bool:
        if version is None:
            return self.since is None
        if self.since is not None and version < self.since:
            return False
        return not (self.until is not None and version >= self.until)


@dataclass(frozen=True)
class Iface:
    """The interface versions a hypervisor speaks: the key every version-dependent layout is looked up by."""

    domctl: int
    sysctl: int

    def of(self, family: str | None) -> int | None:
        if family == "domctl":
            return self.domctl
        if family == "sysctl":
            return self.sysctl
        return None


@dataclass(frozen=True)
class Member:
    """One catalogue row: a member's dotted path, offset and size inside its outermost record."""

    path: str
    offset: int
    size: int
    ctype: str


_DECLS: dict[str, Decl] = {}


@dataclass(frozen=True, eq=False)
class Decl:
    """A C struct declaration: ``struct <cname>`` from ``header``.

    ``family`` names the interface whose version keys this record's variants (``"domctl"``, ``"sysctl"``)
    or is ``None`` for records that are the same in every release.
    """

    cname: str
    header: str
    fields: tuple[F, ...]
    family: str | None = None
    doc: str = ""
    register: bool = True

    def __post_init__(self) -> None:
        if self.register:
            if self.cname in _DECLS:
                raise ValueError(f"struct {self.cname} declared twice")
            _DECLS[self.cname] = self

    def layout(self, iface: Iface | None = None) -> Layout:
        """The concrete layout of this record on interface ``iface``."""
        return _materialise(self, iface)

    @property
    def versioned(self) -> bool:
        """Whether any member (here or nested) depends on an interface version."""
        return any(f.since is not None or f.until is not None or _type_versioned(f.type) for f in self.fields)


def _type_versioned(t: Type) -> bool:
    if isinstance(t, Decl):
        return t.versioned
    if isinstance(t, Array):
        return _type_versioned(t.of)
    if isinstance(t, Union):
        return any(f.since is not None or _type_versioned(f.type) for f in t.members)
    return False


def declarations() -> Mapping[str, Decl]:
    """Every registered record declaration, by C name."""
    return _DECLS


# --- materialised layouts ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Layout:
    """A record as it is on one interface version: size, alignment, member offsets and the codec."""

    decl: Decl
    iface: Iface | None
    size: int
    align: int
    offsets: Mapping[str, int]
    types: Mapping[str, Type]
    struct: Any = field(repr=False)

    @property
    def cname(self) -> str:
        return self.decl.cname

    def build(self, values: Mapping[str, Any] | None = None, /, **kw: Any) -> bytes:
        """Encode ``values`` (missing members are zero) to exactly ``size`` bytes."""
        merged = dict(values or {}, **kw)
        for k in _CONSTRUCT_KEYS & merged.keys():
            del merged[k]  # construct's bookkeeping in a parsed Container
        unknown = merged.keys() - self._names
        if unknown:
            raise TypeError(f"struct {self.cname} has no member(s) {sorted(unknown)}")
        if not merged:
            return bytes(self.size)  # every member zero encodes as zero bytes
        flat = self._flat
        try:
            if flat is not None and not (merged.keys() & flat.union_members):
                return flat.build(merged)
            data: bytes = self._codec.build(_fill(self, merged))
        except (struct.error, cs.ConstructError):
            err = self.argument_error(merged)
            if err is None:
                raise
            raise err from None
        return data

    def argument_error(self, values: Mapping[str, Any]) -> Exception | None:
        """Why ``values`` cannot be encoded: ``ArgumentOutOfRange`` for the first member (depth first) whose
        value does not fit its C type, ``TypeError`` for one that is not an integer, or None if every value
        fits. ``build`` asks this only after the codec refused, so the hot path pays nothing for it."""
        return _record_error(self, self.cname, values)

    def parse(self, data: bytes | bytearray | memoryview) -> cs.Container:
        """Decode the first ``size`` bytes of ``data``; fewer is a ``ProtocolError``.

        The result is a construct ``Container`` (a dict): read members named like dict methods (``clear``,
        ``copy``, ``items``...) by subscript, ``rec["clear"]``, since ``rec.clear`` is the method.
        """
        if len(data) < self.size:
            raise ProtocolError(f"struct {self.cname} needs {self.size} bytes, got {len(data)}")
        flat = self._flat
        if flat is not None and not flat.has_unions:
            return flat.parse(data)
        return self._codec.parse(bytes(data[: self.size]))

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(self.offsets)

    @functools.cached_property
    def _flat(self) -> _Flat | None:
        # The same layout as a ``struct`` format: an order of magnitude cheaper than construct per call.
        # Union members become opaque bytes, so records with unions use it only to build their other members.
        return _Flat.of(self)

    @functools.cached_property
    def _codec(self) -> Any:
        # construct's compiled form of the same Struct: generated from our declaration (never from input),
        # and several times faster on the hypercall path.
        return self.struct.compile()

    def offsetof(self, path: str) -> int:
        """``offsetof(struct cname, path)`` for a dotted member path."""
        try:
            return self._paths[path]
        except KeyError:
            raise KeyError(f"struct {self.cname} has no member {path!r}") from None

    @functools.cached_property
    def _paths(self) -> dict[str, int]:
        # Every dotted path's offset, walked once: offsetof() is on the per-hypercall path (the union's place).
        paths: dict[str, int] = {}
        for m in self.members():
            paths.setdefault(m.path, m.offset)
        return paths

    def members(self) -> Iterator[Member]:
        """Every member, depth first, with dotted paths for nested records and union members."""
        for name, off in self.offsets.items():
            yield from _members(name, off, self.types[name], self.iface)


def _sizeof(t: Type, iface: Iface | None) -> tuple[int, int]:
    """(size, align) of a member type."""
    if isinstance(t, CType):
        return t.size, t.align
    if isinstance(t, Array):
        s, a = _sizeof(t.of, iface)
        return s * t.n, a
    if isinstance(t, Decl):
        lay = t.layout(iface)
        return lay.size, lay.align
    sizes = [_sizeof(m.type, iface) for m in t.members]
    size = max([s for s, _ in sizes] + [t.size])
    align = max([a for _, a in sizes] + [1])
    return _round(size, align), align


def _round(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _con(t: Type, iface: Iface | None) -> Any:
    if isinstance(t, CType):
        return t.con
    if isinstance(t, Array):
        if isinstance(t.of, CType) and t.of in _BYTE_TYPES:
            return cs.Bytes(t.n)
        return cs.Array(t.n, _con(t.of, iface))
    if isinstance(t, Decl):
        return t.layout(iface).struct
    size, _ = _sizeof(t, iface)
    # Parse every member from the same bytes; build the one member the caller supplied.
    raw = "_raw" / cs.Bytes(size)  # lets an all-zero union be built when no member is given
    return cs.FixedSized(size, cs.Union(None, *[m.name / _con(m.type, iface) for m in t.members], raw))


@functools.cache
def _materialise(decl: Decl, iface: Iface | None) -> Layout:
    version = iface.of(decl.family) if iface else None
    subcons: list[Any] = []
    offsets: dict[str, int] = {}
    types: dict[str, Type] = {}
    off = 0
    align = 1
    for f in decl.fields:
        if decl.family is not None and not f.present(version):
            continue
        if decl.family is None and (f.since is not None or f.until is not None):
            raise ValueError(f"struct {decl.cname}: versioned member {f.name} in an unversioned record")
        size, a = _sizeof(f.type, iface)
        pad = _round(off, a) - off
        if pad:
            subcons.append(cs.Padding(pad))
            off += pad
        offsets[f.name] = off
        types[f.name] = f.type
        subcons.append(f.name / _con(f.type, iface))
        off += size
        align = max(align, a)
    total = _round(off, align)
    if total > off:
        subcons.append(cs.Padding(total - off))
    return Layout(decl, iface, total, align, offsets, types, cs.Struct(*subcons))


def _members(path: str, off: int, t: Type, iface: Iface | None) -> Iterator[Member]:
    size, _ = _sizeof(t, iface)
    yield Member(path, off, size, _ctype(t))
    if isinstance(t, Decl):
        lay = t.layout(iface)
        for name, o in lay.offsets.items():
            yield from _members(f"{path}.{name}", off + o, lay.types[name], iface)
    elif isinstance(t, Union):
        for m in t.members:
            yield from _members(f"{path}.{m.name}", off, m.type, iface)


def _ctype(t: Type) -> str:
    if isinstance(t, CType):
        return t.cname
    if isinstance(t, Array):
        return f"{_ctype(t.of)}[{t.n}]"
    if isinstance(t, Decl):
        return f"struct {t.cname}"
    return "union"


def scalar_error(record: str | None, field: str, t: CType, v: Any) -> Exception | None:
    """The one range check: ``ArgumentOutOfRange`` if ``v`` does not fit ``t``, ``TypeError`` if it is not an
    integer (anything with ``__index__``, as ``struct`` takes), None if it fits (None encodes as zero)."""
    if v is None:
        return None
    try:
        n = operator.index(v)
    except TypeError:
        where = f"{record}.{field}" if record else field
        return TypeError(f"{where} is a {t.cname}: it takes an integer, not {type(v).__name__} {v!r}")
    lo, hi = t.bounds
    if lo <= n <= hi:
        return None
    return ArgumentOutOfRange(record, field, n, t.cname, lo, hi)


#: Xen's ``domid_t`` (public/xen.h: ``uint16_t``). Linux's device ioctls carry a domain id in wider fields
#: (``ioctl_evtchn_bind_unbound_port.remote_domain``, ``ioctl_gntdev_grant_ref.domid`` are ``uint32_t``) and the
#: drivers narrow it to ``domid_t`` on the way to Xen, where 70000 would silently name domain 4464:
#: ``check_domid`` refuses such a value before the ioctl, as if the field were a ``domid_t``.
domid_t = CType("domid_t", 2, cs.Int16ul)


def check_domid(record: str, field: str, v: Any) -> None:
    """Raise ``ArgumentOutOfRange`` (or ``TypeError``) unless ``v`` fits Xen's ``domid_t``."""
    err = scalar_error(record, field, domid_t, v)
    if err is not None:
        raise err


def pack_scalars(t: CType, values: Any, record: str, field: str) -> bytes:
    """``values`` as a packed C array of ``t`` (the ``xen_pfn_t`` frames a pointer member points at); a value
    that does not fit raises ``ArgumentOutOfRange`` naming ``record.field[i]``."""
    items = list(values)
    try:
        return struct.pack(f"<{len(items)}{t.code}", *items)
    except struct.error:
        for i, v in enumerate(items):
            err = scalar_error(record, f"{field}[{i}]", t, v)
            if err is not None:
                raise err from None
        raise


def _record_error(lay: Layout, record: str, values: Mapping[str, Any], prefix: str = "") -> Exception | None:
    for name, t in lay.types.items():
        err = _member_error(record, f"{prefix}{name}", t, values.get(name), lay.iface)
        if err is not None:
            return err
    return None


def _member_error(record: str, path: str, t: Type, v: Any, iface: Iface | None) -> Exception | None:
    if v is None:
        return None
    if isinstance(t, CType):
        return scalar_error(record, path, t, v)
    if isinstance(t, Array):
        if isinstance(t.of, CType) and t.of in _BYTE_TYPES:
            return None  # byte strings: their length is checked (ValueError) before encoding
        for i, x in enumerate(list(v)):
            err = _member_error(record, f"{path}[{i}]", t.of, x, iface)
            if err is not None:
                return err
        return None
    if not isinstance(v, Mapping):
        return TypeError(f"{record}.{path} is a {_ctype(t)}: it takes a mapping of its members, not {v!r}")
    if isinstance(t, Decl):
        return _record_error(t.layout(iface), record, v, f"{path}.")
    for m in t.members:  # a union: the members the caller gave
        if m.name in v:
            err = _member_error(record, f"{path}.{m.name}", m.type, v[m.name], iface)
            if err is not None:
                return err
    return None


def _fill(lay: Layout, values: Mapping[str, Any]) -> dict[str, Any]:
    """Complete ``values`` with zeroes so construct can build a record from a partial description."""
    out: dict[str, Any] = {}
    for name, t in lay.types.items():
        v = values.get(name)
        out[name] = _zero_fill(t, v, lay.iface)
    return out


#: Keys construct adds to the Containers it parses (more of them in its compiled form): never members.
_CONSTRUCT_KEYS = frozenset({"_io", "_params", "_root", "_parsing", "_building", "_sizing", "_subcons", "_stream"})


def _zero_fill(t: Type, v: Any, iface: Iface | None) -> Any:
    if isinstance(t, CType):
        return 0 if v is None else v
    if isinstance(t, Array):
        if isinstance(t.of, CType) and t.of in _BYTE_TYPES:
            raw = bytes(v or b"")
            if len(raw) > t.n:
                raise ValueError(f"{len(raw)} bytes do not fit in {_ctype(t)}")
            return raw.ljust(t.n, b"\0")
        items = list(v or [])
        if len(items) > t.n:
            raise ValueError(f"{len(items)} items do not fit in {_ctype(t)}")
        items += [None] * (t.n - len(items))
        return [_zero_fill(t.of, x, iface) for x in items]
    if isinstance(t, Decl):
        lay = t.layout(iface)
        return _fill(lay, v or {})
    # A union: build the single member named, or zeroes.
    given = {k: x for k, x in dict(v or {}).items() if k not in _CONSTRUCT_KEYS}
    if "_raw" in given:
        # A union as parse() returned it (every member's view plus the raw bytes): keep the bytes, unless
        # the caller changed one member's view since, which then is the member built.
        raw = bytes(given.pop("_raw"))
        before = _con(t, iface).parse(raw)
        given = {k: x for k, x in given.items() if before.get(k) != x}
        if not given:
            return {"_raw": raw}
    if len(given) > 1:
        raise ValueError(f"a union takes one member, got {sorted(given)}")
    for m in t.members:
        if m.name in given:
            return {m.name: _zero_fill(m.type, given[m.name], iface)}
    size, _ = _sizeof(t, iface)
    return {"_raw": b"\0" * size}


_CODES = {
    (1, False): "B", (2, False): "H", (4, False): "I", (8, False): "Q",
    (1, True): "b", (2, True): "h", (4, True): "i", (8, True): "q",
}


#: One step of ``_Flat``'s parse plan: (member, index into the unpacked values, end index of a scalar array
#: or 0, the nested record's plan or None).
_Step = tuple[str, int, int, "list[_Step] | None"]


class _Flat:
    """A layout as one ``struct.Struct``: scalars, byte arrays (``bytes``), scalar arrays (lists) and nested
    records (Containers), with padding as ``x``. Unions are opaque byte strings here."""

    def __init__(self, fmt: str, shape: list[tuple[str, Any]], union_members: frozenset[str]) -> None:
        self.codec = struct.Struct(fmt)
        self.shape = shape
        self._plan = _Flat._plan_of(shape, 0)[0]
        #: Top-level members that are, or contain, a union: values for them are left to construct.
        self.union_members = union_members

    @property
    def has_unions(self) -> bool:
        return bool(self.union_members)

    @classmethod
    def of(cls, lay: Layout) -> _Flat | None:
        parts: list[str] = ["<"]
        unions: set[str] = set()

        def walk(rec: Layout, base: int, pos: int, top: str | None) -> tuple[list[tuple[str, Any]], int]:
            shape: list[tuple[str, Any]] = []
            for name, off in rec.offsets.items():
                t, at = rec.types[name], base + off
                parts.append("x" * (at - pos))
                if isinstance(t, CType):
                    parts.append(t.code)
                    shape.append((name, None))
                    pos = at + t.size
                elif isinstance(t, Array) and isinstance(t.of, CType):
                    if t.of in _BYTE_TYPES:
                        parts.append(f"{t.n}s")
                        shape.append((name, ("s", t.n)))
                    else:
                        parts.append(t.of.code * t.n)
                        shape.append((name, ("a", t.n)))
                    pos = at + t.n * t.of.size
                elif isinstance(t, Decl):
                    inner = t.layout(rec.iface)
                    sub, end = walk(inner, at, at, top or name)
                    if end < 0:
                        return [], -1
                    parts.append("x" * (at + inner.size - end))
                    pos = at + inner.size
                    shape.append((name, sub))
                elif isinstance(t, Union):
                    size, _ = _sizeof(t, rec.iface)
                    parts.append(f"{size}s")
                    shape.append((name, ("s", size)))
                    unions.add(top or name)
                    pos = at + size
                else:
                    return [], -1  # arrays of records: leave them to construct
            return shape, pos

        shape, end = walk(lay, 0, 0, None)
        if end < 0:
            return None
        parts.append("x" * (lay.size - end))
        flat = cls("".join(parts), shape, frozenset(unions))
        if flat.codec.size != lay.size:
            raise AssertionError(f"struct {lay.cname}: flat format is {flat.codec.size} bytes, not {lay.size}")
        return flat

    @staticmethod
    def _plan_of(shape: list[tuple[str, Any]], at: int) -> tuple[list[_Step], int]:
        """``shape`` as steps over the unpacked tuple: (name, index, end of a scalar array or 0, the nested
        record's steps or None), and the index after it."""
        plan: list[_Step] = []
        for name, kind in shape:
            if kind is None or kind[0] == "s":
                plan.append((name, at, 0, None))
                at += 1
            elif kind[0] == "a":
                plan.append((name, at, at + kind[1], None))
                at += kind[1]
            else:
                sub, at = _Flat._plan_of(kind, at)
                plan.append((name, at, 0, sub))
        return plan, at

    def parse(self, data: bytes | bytearray | memoryview) -> cs.Container:
        return self._rebuild(self._plan, self.codec.unpack_from(data))

    def _rebuild(self, plan: list[_Step], values: tuple[Any, ...]) -> cs.Container:
        out = cs.Container()
        for name, at, end, sub in plan:
            if sub is not None:
                out[name] = self._rebuild(sub, values)
            elif end:
                out[name] = cs.ListContainer(values[at:end])
            else:
                out[name] = values[at]
        return out

    def build(self, values: Mapping[str, Any]) -> bytes:
        flat: list[Any] = []
        self._flatten(self.shape, values, flat)
        return self.codec.pack(*flat)

    def _flatten(self, shape: list[tuple[str, Any]], values: Mapping[str, Any], out: list[Any]) -> None:
        for name, kind in shape:
            v = values.get(name)
            if kind is None:
                out.append(0 if v is None else v)
            elif kind[0] == "s":
                raw = bytes(v or b"")
                if len(raw) > kind[1]:  # struct would cut it silently
                    raise ValueError(f"{len(raw)} bytes do not fit in {name}[{kind[1]}]")
                out.append(raw)
            elif kind[0] == "a":
                items = list(v or [])
                if len(items) > kind[1]:
                    raise ValueError(f"{len(items)} items do not fit in {name}[{kind[1]}]")
                out.extend(items + [0] * (kind[1] - len(items)))
            else:
                self._flatten(kind, v or {}, out)


# --- constants -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constants:
    """An ``IntEnum``/``IntFlag`` whose members are C macros ``prefix + member name`` from ``header``."""

    enum: type[IntEnum] | type[IntFlag]
    prefix: str
    header: str

    def macros(self) -> Iterator[tuple[str, int]]:
        # Every declared name, aliases (DOMID_SELF == DOMID_FIRST_RESERVED) and zero / multi-bit flags
        # included: iterating the enum itself would skip them.
        for name, m in self.enum.__members__.items():
            if name.endswith("_") and keyword.iskeyword(name[:-1]):
                name = name[:-1]  # SchedOp.yield_ is SCHEDOP_yield
            elif name[:1] == "_" and name[1:2].isdigit():
                name = name[1:]  # VmAssistType._4gb_segments is VMASST_TYPE_4gb_segments
            yield self.prefix + name, int(m.value)


_CONSTANTS: list[Constants] = []


def constants_registry() -> list[Constants]:
    """Every registered constant group."""
    return _CONSTANTS
