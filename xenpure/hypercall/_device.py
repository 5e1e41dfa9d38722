"""Calls on the Xen device nodes other than the hypercall itself: ioctls, reads and writes of
/dev/xen/{evtchn,gntdev,gntalloc} and privcmd's mapping ioctls.

Rule 1: this is the one place an errno from such a call becomes an exception (``HypercallError.from_errno``,
naming the ioctl's C macro or the device and operation), and every call is logged with its name, so a
trace reads like the C it replaces.
"""

from __future__ import annotations

import logging

from ..errors import HypercallError
from ..kernel import Device
from .abi._ioctl import Ioctl

__all__ = ["device_ioctl", "device_read", "device_write", "errno_error"]

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
