"""Issuing hypercalls through /dev/xen/privcmd.

Rule 1: this is the one place an errno from a hypercall becomes an exception (``HypercallError.from_errno``
with the hypercall and sub-op named), and the one place hypercall arguments are encoded and results
decoded, always through the declarations in ``abi``.

A hypercall's argument lives in a hypercall-safe buffer (the kernel seam's ``alloc_buffer``); privcmd is
handed ``struct privcmd_hypercall`` {op, arg[5]} whose args hold that buffer's address. Xen reads and
writes the buffer in place, and the ioctl returns the hypercall's non-negative result or fails with errno.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..errors import HypercallError, ProtocolError
from ..kernel import Device, HypercallBuffer, Kernel
from ._device import RecordCodec
from ._layout import Decl, Iface, Layout, u64
from .abi.domctl import DOMCTL, DomctlCmd, payload_member
from .abi.privcmd import IOCTL_PRIVCMD_HYPERCALL, PRIVCMD_HYPERCALL
from .abi.sysctl import SYSCTL, SysctlCmd, sysctl_member
from .abi.version import XenVer
from .abi.xen import Hypercall

__all__ = ["Privcmd"]

log = logging.getLogger("xenpure.hypercall")

_HYPERCALL = PRIVCMD_HYPERCALL.layout()
#: ``struct privcmd_hypercall`` {op, arg[5]} as one ``struct`` (every call builds one), checked against the
#: declaration here, once.
_HYPERCALL_CODEC = RecordCodec("<6Q", "privcmd_hypercall", [("op", u64), *((f"arg[{i}]", u64) for i in range(5))])
if _HYPERCALL_CODEC.pack(1, 2, 3, 4, 5, 6) != _HYPERCALL.build(op=1, arg=[2, 3, 4, 5, 6]):
    raise AssertionError("struct privcmd_hypercall is no longer {u64 op; u64 arg[5]}")
#: A union member's fields, or a function of the address of the caller's scratch area that returns them.
Payload = Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None
#: The scratch buffer kept between calls starts at one page and grows (whole pages) to the largest request
#: up to ``_SCRATCH_MAX`` seen so far: a getdomaininfolist batch of 64 records (about 7 KiB) then reuses it
#: instead of mapping and unmapping /dev/xen/hypercall pages on every call. Larger requests get their own.
_SCRATCH = 4096
_SCRATCH_MAX = 16384
_NO_ARGS = (0,) * 5
_IOCTL_HYPERCALL = IOCTL_PRIVCMD_HYPERCALL.request
#: Zeroes to clear the scratch buffer with, without allocating them per call.
_ZEROES = memoryview(bytes(_SCRATCH_MAX))


class Privcmd:
    """An open /dev/xen/privcmd plus a scratch hypercall buffer.

    Thread-safe: calls are serialised on the scratch buffer. Close it (or use ``with``) to release the
    descriptor and the buffer.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.device: Device = kernel.open("privcmd")
        self._lock = threading.Lock()
        self._scratch: HypercallBuffer | None = None
        self._scratch_size = 0

    # -- raw --------------------------------------------------------------------------------------------

    def hypercall(self, op: Hypercall, *args: int, subop: str | None = None) -> int:
        """Issue hypercall ``op`` with up to five integer arguments; return its result.

        Raises the errno-named ``HypercallError`` subclass, naming ``op`` and ``subop``.
        """
        if len(args) > 5:
            raise ValueError("a hypercall takes at most five arguments")
        arg = bytearray(_HYPERCALL_CODEC.pack(int(op), *args, *_NO_ARGS[len(args) :]))
        try:
            ret = self.device.ioctl(_IOCTL_HYPERCALL, arg)
        except OSError as e:
            if e.errno is None:
                raise
            log.debug("hypercall %s/%s -> %s", op.name, subop, e.strerror)
            raise HypercallError.from_errno(e.errno, op.name, subop) from None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("hypercall %s/%s -> %d", op.name, subop, ret)
        return ret

    @contextmanager
    def buffer(self, size: int) -> Iterator[HypercallBuffer]:
        """A zeroed hypercall-safe buffer of at least ``size`` bytes for the duration of one call."""
        with self._lock:
            if size <= _SCRATCH_MAX:
                if self._scratch is None or size > self._scratch_size:
                    grown = max(_SCRATCH, -(-size // _SCRATCH) * _SCRATCH)
                    if self._scratch is not None:
                        self._scratch.close()
                        self._scratch = None
                    self._scratch = self.kernel.alloc_buffer(grown)
                    self._scratch_size = grown
                self._scratch.view[:size] = _ZEROES[:size]
                yield self._scratch
                return
            buf = self.kernel.alloc_buffer(size)
            try:
                yield buf
            finally:
                buf.close()

    def xen_version(self, cmd: XenVer, size: int = 0) -> tuple[int, bytes]:
        """``__HYPERVISOR_xen_version(cmd, buf)``: the result and the ``size`` bytes Xen wrote to ``buf``."""
        if size == 0:
            return self.hypercall(Hypercall.xen_version, int(cmd), 0, subop=cmd.name), b""
        with self.buffer(size) as buf:
            ret = self.hypercall(Hypercall.xen_version, int(cmd), buf.address, subop=cmd.name)
            return ret, bytes(buf.view[:size])

    # -- structured -------------------------------------------------------------------------------------

    def domctl(
        self,
        iface: Iface,
        cmd: DomctlCmd,
        domid: int,
        payload: Payload = None,
        *,
        extra: int = 0,
        version: int | None = None,
    ) -> tuple[int, Any, bytes]:
        """Issue ``XEN_DOMCTL_<cmd>`` on ``domid``.

        ``payload`` is the union member's fields, or a function of the address of ``extra`` scratch bytes
        placed after the record (for members that point at an array or context). ``version`` overrides the
        interface version written into the request (the probe uses it). Returns (the domain id Xen echoed,
        the decoded union member or None, the ``extra`` bytes as Xen left them).
        """
        lay = DOMCTL.layout(iface)
        header = {"cmd": int(cmd), "interface_version": iface.domctl if version is None else version, "domain": domid}
        reply, decoded, tail = self._ctl(Hypercall.domctl, lay, payload_member(cmd), cmd.name, header, payload, extra)
        return int(reply.domain), decoded, tail

    def sysctl(
        self,
        iface: Iface,
        cmd: SysctlCmd,
        payload: Payload = None,
        *,
        extra: int = 0,
        version: int | None = None,
    ) -> tuple[Any, bytes]:
        """Issue ``XEN_SYSCTL_<cmd>``; like ``domctl``, returns (decoded union member, ``extra`` bytes)."""
        lay = SYSCTL.layout(iface)
        header = {"cmd": int(cmd), "interface_version": iface.sysctl if version is None else version}
        _, decoded, tail = self._ctl(Hypercall.sysctl, lay, sysctl_member(cmd), cmd.name, header, payload, extra)
        return decoded, tail

    def _ctl(
        self,
        op: Hypercall,
        lay: Layout,
        member: Decl | None,
        subop: str,
        header: Mapping[str, Any],
        payload: Payload,
        extra: int,
    ) -> tuple[Any, Any, bytes]:
        """Encode header + union member into one buffer (plus ``extra`` scratch), call, decode."""
        u_off, mlay = _union_of(lay, member)
        if mlay is None and payload:
            raise TypeError(f"{op.name}/{subop} takes no payload")
        with self.buffer(lay.size + extra) as buf:
            raw = bytearray(lay.build(header))
            if mlay is not None:
                fields = payload(buf.address + lay.size) if callable(payload) else payload
                raw[u_off : u_off + mlay.size] = mlay.build(fields or {})
            buf.view[: lay.size] = raw
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s request {%s}", op.name, subop, _brief(mlay, raw[u_off:]))
            self.hypercall(op, buf.address, subop=subop)
            reply = bytes(buf.view[: lay.size + extra])
        head = _Header(lay, reply)
        decoded = mlay.parse(reply[u_off : u_off + mlay.size]) if mlay is not None else None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s reply {%s}", op.name, subop, _brief(mlay, reply[u_off:]))
        return head, decoded, reply[lay.size :]

    def close(self) -> None:
        """Release the scratch buffer and the device. Idempotent."""
        with self._lock:
            if self._scratch is not None:
                self._scratch.close()
                self._scratch = None
        self.device.close()

    def __enter__(self) -> Privcmd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def _union_of(lay: Layout, member: Decl | None) -> tuple[int, Layout | None]:
    """Where a domctl/sysctl record's union ``u`` starts, and the layout of its member ``member``."""
    return lay.offsetof("u"), (member.layout(lay.iface) if member is not None else None)


class _Header:
    """The scalar header fields of a domctl/sysctl reply, read at their declared offsets (cheap)."""

    def __init__(self, lay: Layout, reply: bytes) -> None:
        self.domain = 0
        if "domain" in lay.offsets:
            off = lay.offsets["domain"]
            self.domain = int.from_bytes(reply[off : off + 2], "little")


def _brief(lay: Layout | None, data: bytes | bytearray) -> str:
    if lay is None:
        return ""
    try:
        c = lay.parse(data[: lay.size])
    except ProtocolError:
        return "<short>"
    return ", ".join(f"{k}={v!r}" for k, v in c.items() if not k.startswith("_"))
