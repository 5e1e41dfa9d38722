"""Calls on the Xen device nodes other than the hypercall itself: ioctls, reads and writes of
/dev/xen/{evtchn,gntdev,gntalloc} and privcmd's mapping ioctls.

Rule 1: this is the one place an errno from such a call becomes an exception (``HypercallError.from_errno``,
naming the ioctl's C macro or the device and operation), and every call is logged with its name, so a
trace reads like the C it replaces.

The argument codecs made here (``flat_codec``, ``member_codec``, ``RecordCodec``) are ``struct.Struct``s
that turn a value their C field cannot hold into ``ArgumentOutOfRange`` (``_layout.scalar_error``), never a
``struct.error``.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Sequence
from typing import Any

from ..errors import HypercallError
from ..kernel import Device
from ._layout import CType, Decl, scalar_error
from .abi._ioctl import Ioctl

__all__ = [
    "RecordCodec",
    "device_ioctl",
    "device_read",
    "device_write",
    "errno_error",
    "flat_codec",
    "member_codec",
]

log = logging.getLogger("xenpure.device")


def device_ioctl(device: Device, io: Ioctl, arg: bytearray, *, detail: str = "") -> int:
    """``ioctl(device, io.request, arg)``; the result, or the errno-named ``HypercallError`` naming ``io``."""
    try:
        ret = device.ioctl(io.request, arg)
    except OSError as e:
        if e.errno is None:
            raise
        log.debug("%s %s -> %s", device.path, io.name, e.strerror)
        raise HypercallError.from_errno(e.errno, io.name, None, detail) from None
    log.debug("%s %s -> %d", device.path, io.name, ret)
    return ret


def device_read(device: Device, n: int, what: str) -> bytes:
    """Read up to ``n`` bytes; an errno becomes ``HypercallError`` (EAGAIN: ``TryAgain``) naming ``what``."""
    try:
        return device.read(n)
    except OSError as e:
        if e.errno is None:
            raise
        raise HypercallError.from_errno(e.errno, what) from None


def device_write(device: Device, data: bytes, what: str) -> int:
    """Write ``data``; an errno becomes the errno-named ``HypercallError`` naming ``what``."""
    try:
        return device.write(data)
    except OSError as e:
        if e.errno is None:
            raise
        raise HypercallError.from_errno(e.errno, what) from None


def errno_error(err: int, op: str, detail: str = "") -> HypercallError:
    """The errno-named ``HypercallError`` for an errno that came back in a buffer (per-frame errors of
    IOCTL_PRIVCMD_MMAPBATCH_V2) rather than from the call itself."""
    return HypercallError.from_errno(err, op, None, detail)


_pack = struct.Struct.pack
_pack_into = struct.Struct.pack_into


class RecordCodec(struct.Struct):
    """A ``struct.Struct`` for C record ``record`` whose values are ``members`` (name, C type) in order.

    ``pack``/``pack_into`` are ``struct``'s; only when ``struct`` refuses a value are the values checked one
    by one, and the misfit raised as ``ArgumentOutOfRange`` (``TypeError`` for a non-integer) naming
    ``record.member``, so what fits pays one Python call and nothing more.
    """

    def __init__(self, fmt: str, record: str, members: Sequence[tuple[str, CType]]) -> None:
        super().__init__(fmt)
        self.record = record
        self.members = tuple(members)

    def pack(self, *values: Any) -> bytes:
        try:
            return _pack(self, *values)
        except struct.error:
            raise self._error(values) from None

    def pack_into(self, buffer: Any, offset: int, /, *values: Any) -> None:
        try:
            _pack_into(self, buffer, offset, *values)
        except struct.error:
            raise self._error(values) from None

    def _error(self, values: tuple[Any, ...]) -> Exception:
        if len(values) != len(self.members):
            names = ", ".join(name for name, _ in self.members)
            return TypeError(f"struct {self.record} packs {len(self.members)} values ({names}), got {len(values)}")
        for (name, t), v in zip(self.members, values, strict=True):
            err = scalar_error(self.record, name, t, v)
            if err is not None:
                return err
        return TypeError(f"struct {self.record}: struct refused {values!r}")  # unreachable for scalars


@functools.cache
def flat_codec(decl: Decl) -> RecordCodec:
    """A ``struct.Struct`` for a record made only of scalar members, derived from its one declaration
    (offsets and padding from ``Layout``), for the per-call hot paths (notify, unmask, map, unmap) where
    construct's generality costs more than the ioctl. Members pack in declaration order.

    Raises ``TypeError`` for a record with arrays, unions or nested records.
    """
    lay = decl.layout()
    fmt = "<"
    pos = 0
    members: list[tuple[str, CType]] = []
    for name, off in lay.offsets.items():
        t = lay.types[name]
        if not isinstance(t, CType):
            raise TypeError(f"struct {decl.cname}: member {name} is not a scalar")
        fmt += "x" * (off - pos)
        fmt += t.code
        members.append((name, t))
        pos = off + t.size
    fmt += "x" * (lay.size - pos)
    codec = RecordCodec(fmt, decl.cname, members)
    assert codec.size == lay.size, (decl.cname, fmt)
    return codec


@functools.cache
def member_codec(decl: Decl, name: str) -> tuple[RecordCodec, int]:
    """(codec, offset) of one scalar member of ``decl``: to fill or read it in a buffer that also carries a
    variable-length tail (``refs[count]``), which ``flat_codec`` cannot describe."""
    lay = decl.layout()
    t = lay.types[name]
    if not isinstance(t, CType):
        raise TypeError(f"struct {decl.cname}: member {name} is not a scalar")
    return RecordCodec("<" + t.code, decl.cname, [(name, t)]), lay.offsets[name]
