"""Calls on the Xen device nodes other than the hypercall itself: ioctls, reads and writes of
/dev/xen/{evtchn,gntdev,gntalloc} and privcmd's mapping ioctls.

Rule 1: this is the one place an errno from such a call becomes an exception (``HypercallError.from_errno``,
naming the ioctl's C macro or the device and operation), and every call is logged with its name, so a
trace reads like the C it replaces.
"""

from __future__ import annotations

import functools
import logging
import struct

from ..errors import HypercallError
from ..kernel import Device
from ._layout import CType, Decl
from .abi._ioctl import Ioctl

__all__ = ["device_ioctl", "device_read", "device_write", "errno_error", "flat_codec", "member_codec"]

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


_FLAT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
_SIGNED_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}


@functools.cache
def flat_codec(decl: Decl) -> struct.Struct:
    """A ``struct.Struct`` for a record made only of scalar members, derived from its one declaration
    (offsets and padding from ``Layout``), for the per-call hot paths (notify, unmask, map, unmap) where
    construct's generality costs more than the ioctl. Members pack in declaration order.

    Raises ``TypeError`` for a record with arrays, unions or nested records.
    """
    lay = decl.layout()
    fmt = "<"
    pos = 0
    for name, off in lay.offsets.items():
        t = lay.types[name]
        if not isinstance(t, CType):
            raise TypeError(f"struct {decl.cname}: member {name} is not a scalar")
        fmt += "x" * (off - pos)
        fmt += (_SIGNED_CODES if t.cname.startswith("int") else _FLAT_CODES)[t.size]
        pos = off + t.size
    fmt += "x" * (lay.size - pos)
    codec = struct.Struct(fmt)
    assert codec.size == lay.size, (decl.cname, fmt)
    return codec


@functools.cache
def member_codec(decl: Decl, name: str) -> tuple[struct.Struct, int]:
    """(codec, offset) of one scalar member of ``decl``: to fill or read it in a buffer that also carries a
    variable-length tail (``refs[count]``), which ``flat_codec`` cannot describe."""
    lay = decl.layout()
    t = lay.types[name]
    if not isinstance(t, CType):
        raise TypeError(f"struct {decl.cname}: member {name} is not a scalar")
    code = (_SIGNED_CODES if t.cname.startswith("int") else _FLAT_CODES)[t.size]
    return struct.Struct("<" + code), lay.offsets[name]
