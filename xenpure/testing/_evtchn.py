"""Simulated event channels: Xen's per-domain port tables and Linux's /dev/xen/evtchn driver in dom0.

Rule 1: two layers, kept apart as on a real host. ``SimEventChannels`` is Xen's side (EVTCHNOP_*: ports,
their state, pending and mask bits, VIRQ_DOM_EXC); ``SimEvtchnFile`` is what one open /dev/xen/evtchn is
in dom0's kernel (the ports it bound, the queue of fired ports behind a real eventfd, the mask it keeps on a
fired port until userspace writes the port back). Both answer with the errno the lab observed.

``SimPortDoorbell`` is the other side of a channel as a guest's kernel (or dom0's own kernel, for a port it
allocated itself) handles it: a ``Doorbell`` over one port, so a test can play a guest's xenstore front end.

Delivery follows Xen's 2-level ABI as dom0's driver sees it: a send sets the port's pending bit; if the port
is unmasked and some file bound it, the upcall "clears" pending, queues the port and masks it (the driver
disables the irq until userspace unmasks); unmasking a port that is still pending delivers again.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..hypercall.abi.event_channel import (
    ALLOC_UNBOUND,
    BIND_INTERDOMAIN,
    BIND_VIRQ,
    CLOSE,
    RESET,
    SEND,
    STATUS,
    UNMASK,
    EvtchnOp,
    EvtchnStat,
    NrVirqs,
    Virq,
)
from ..hypercall.abi.linux_evtchn import BIND_INTERDOMAIN as IOC_BIND_INTERDOMAIN
from ..hypercall.abi.linux_evtchn import BIND_UNBOUND_PORT as IOC_BIND_UNBOUND_PORT
from ..hypercall.abi.linux_evtchn import BIND_VIRQ as IOC_BIND_VIRQ
from ..hypercall.abi.linux_evtchn import (
    IOCTL_EVTCHN_BIND_INTERDOMAIN,
    IOCTL_EVTCHN_BIND_UNBOUND_PORT,
    IOCTL_EVTCHN_BIND_VIRQ,
    IOCTL_EVTCHN_NOTIFY,
    IOCTL_EVTCHN_RESET,
    IOCTL_EVTCHN_RESTRICT_DOMID,
    IOCTL_EVTCHN_UNBIND,
    PORT_SIZE,
)
from ..hypercall.abi.linux_evtchn import NOTIFY as IOC_NOTIFY
from ..hypercall.abi.linux_evtchn import RESTRICT_DOMID as IOC_RESTRICT_DOMID
from ..hypercall.abi.linux_evtchn import UNBIND as IOC_UNBIND
from ..hypercall.abi.xen import DOMID_FIRST_RESERVED, DomId

__all__ = ["SimEventChannels", "SimEvtchnFile", "SimPort", "SimPortDoorbell"]

#: Ports per domain in the 2-level ABI on x86_64 (64 * 64); port 0 is never handed out.
NR_PORTS = 4096
#: Xen allocates a domain's port structures a bucket at a time (one page of 64-byte entries) and never frees
#: a bucket while the domain lives: a port is *valid* below the end of the highest bucket allocated so far
#: (bucket 0 from the start), whether or not it is in use. Ops on an invalid port answer EINVAL; on a valid
#: port that is free, status says closed, unmask does nothing and succeeds, close and send answer EINVAL.
EVTCHNS_PER_BUCKET = 64
#: Ports Linux's FIFO event ABI covers until it expands its event array (one page of event words):
#: IOCTL_EVTCHN_UNBIND answers EINVAL at or above it, ENOTCONN below for a port the file did not bind.
FIFO_FIRST_PAGE = 1024
#: Linux's per-file queue of fired ports: one page of uint32_t.
QUEUE_LEN = 4096 // PORT_SIZE
#: VIRQs bound once per domain, on vcpu 0 (the others are per vcpu).
_PER_VCPU = {Virq.TIMER, Virq.DEBUG, Virq.XENOPROF, Virq.XENPMU}


def _err(code: int, why: str) -> Exception:
    from ._hypervisor import XenErrno

    return XenErrno(code, why)


@dataclass
class SimPort:
    """One port of one domain, as Xen keeps it."""

    domid: int
    port: int
    state: EvtchnStat = EvtchnStat.closed
    vcpu: int = 0
    remote_dom: int = 0  # unbound: who may bind it; interdomain: the peer
    remote_port: int = 0
    virq: int = 0
    pending: bool = False
    masked: bool = False
    #: dom0's kernel handler for the port's upcall (a /dev/xen/evtchn file), if any.
    listener: Callable[[int], None] | None = None


class SimEventChannels:
    """Xen's event channel state for every domain of a ``SimXen``."""

    def __init__(self, xen: Any) -> None:
        self.xen = xen
        self.ports: dict[int, dict[int, SimPort]] = {}
        #: Per domain, the end of its valid port range (see ``EVTCHNS_PER_BUCKET``); it only grows.
        self.valid: dict[int, int] = {}
        xen.domain_hooks.append(self._domain_event)

    # -- model operations (the caller is domain ``me``) ------------------------------------------------
    def _table(self, domid: int) -> dict[int, SimPort]:
        self.xen._domain(domid)  # ESRCH for a domain that does not exist
        return self.ports.setdefault(domid, {})

    def _new_port(self, domid: int) -> SimPort:
        table = self._table(domid)
        for p in range(1, NR_PORTS):
            if p not in table:
                table[p] = SimPort(domid, p)
                end = (p // EVTCHNS_PER_BUCKET + 1) * EVTCHNS_PER_BUCKET
                self.valid[domid] = max(self.valid.get(domid, EVTCHNS_PER_BUCKET), end)
                return table[p]
        raise _err(errno.ENOSPC, f"domain {domid} has no free event channel")

    def port(self, domid: int, port: int) -> SimPort:
        """A port that exists (EINVAL otherwise, as Xen answers for a port it does not know)."""
        p = self._table(domid).get(port)
        if p is None:
            raise _err(errno.EINVAL, f"domain {domid} has no port {port}")
        return p

    def is_valid(self, domid: int, port: int) -> bool:
        """Whether ``port`` is in ``domid``'s valid range (allocated once, in use or not)."""
        return 0 <= port < self.valid.get(domid, EVTCHNS_PER_BUCKET)

    def _dom(self, me: int, dom: int) -> int:
        return me if dom == DomId.SELF else dom

    def alloc_unbound(self, me: int, dom: int, remote_dom: int) -> int:
        p = self._new_port(self._dom(me, dom))
        remote = self._dom(me, remote_dom)
        if remote >= DOMID_FIRST_RESERVED:
            del self.ports[p.domid][p.port]
            raise _err(errno.EINVAL, f"remote domain {remote_dom:#x}")
        p.state, p.remote_dom = EvtchnStat.unbound, remote
        return p.port

    def bind_interdomain(self, me: int, remote_dom: int, remote_port: int) -> int:
        rdom = self._dom(me, remote_dom)
        self._table(rdom)
        r = self.ports[rdom].get(remote_port)
        if r is None or r.state != EvtchnStat.unbound or r.remote_dom != me:
            raise _err(errno.EINVAL, f"port {remote_port} of domain {rdom} is not unbound for domain {me}")
        lp = self._new_port(me)
        lp.state, lp.remote_dom, lp.remote_port = EvtchnStat.interdomain, rdom, remote_port
        r.state, r.remote_dom, r.remote_port = EvtchnStat.interdomain, me, lp.port
        # Xen marks the new local port pending: a notification sent to the unbound end may have been lost.
        self.raise_port(lp)
        return lp.port

    def bind_virq(self, me: int, virq: int, vcpu: int) -> int:
        if not 0 <= virq < NrVirqs.NR_VIRQS:
            raise _err(errno.EINVAL, f"VIRQ {virq}")
        d = self.xen._domain(me)
        if vcpu >= len(d.vcpus) or (virq not in _PER_VCPU and vcpu != 0):
            raise _err(errno.EINVAL if vcpu < len(d.vcpus) else errno.ENOENT, f"vcpu {vcpu} for VIRQ {virq}")
        for p in self._table(me).values():
            if p.state == EvtchnStat.virq and p.virq == virq and p.vcpu == vcpu:
                raise _err(errno.EEXIST, f"VIRQ {virq} is already bound on vcpu {vcpu}")
        p = self._new_port(me)
        p.state, p.virq, p.vcpu = EvtchnStat.virq, virq, vcpu
        return p.port

    def close(self, me: int, port: int) -> None:
        # A destroyed domain's ports are closed after it left xen.domains: look them up directly first.
        p = self.ports.get(me, {}).get(port) or self.port(me, port)
        if p.state == EvtchnStat.interdomain:
            peer = self.ports.get(p.remote_dom, {}).get(p.remote_port)
            if peer is not None:  # the other end stays allocated, unbound, for us to bind again
                peer.state, peer.remote_dom, peer.remote_port = EvtchnStat.unbound, me, 0
        del self.ports[me][port]

    def send(self, me: int, port: int) -> None:
        p = self.port(me, port)
        if p.state == EvtchnStat.interdomain:
            peer = self.ports.get(p.remote_dom, {}).get(p.remote_port)
            if peer is not None:
                self.raise_port(peer)
        elif p.state == EvtchnStat.ipi:
            self.raise_port(p)
        elif p.state != EvtchnStat.unbound:  # a send on an unbound port is dropped silently
            raise _err(errno.EINVAL, f"cannot send on a {p.state.name} port")

    def unmask(self, me: int, port: int) -> None:
        table = self._table(me)
        if not self.is_valid(me, port):
            raise _err(errno.EINVAL, f"domain {me} has no port {port}")
        p = table.get(port)
        if p is None:
            return  # a free port in the valid range: nothing to deliver, and Xen answers 0
        p.masked = False
        if p.pending:
            self._upcall(p)

    def reset(self, me: int, dom: int) -> None:
        target = self._dom(me, dom)
        d = self.xen._domain(target)
        if target != me and not d.paused:
            # Another domain's channels are reset only while the toolstack holds it paused.
            raise _err(errno.EINVAL, f"domain {target} is not paused by the controller")
        for port in sorted(self._table(target)):
            self.close(target, port)

    def raise_port(self, p: SimPort) -> None:
        """Set ``p`` pending, and deliver it if it is unmasked."""
        p.pending = True
        if not p.masked:
            self._upcall(p)

    def _upcall(self, p: SimPort) -> None:
        if p.listener is not None:
            p.pending = False
            p.masked = True
            p.listener(p.port)

    def raise_virq(self, domid: int, virq: Virq) -> None:
        for p in list(self.ports.get(domid, {}).values()):
            if p.state == EvtchnStat.virq and p.virq == virq:
                self.raise_port(p)

    def _domain_event(self, event: str, d: Any) -> None:
        if event == "destroyed":
            for port in sorted(self.ports.get(d.domid, {})):
                self.close(d.domid, port)
            self.ports.pop(d.domid, None)
            self.valid.pop(d.domid, None)
        # VIRQ_DOM_EXC is a global VIRQ: it goes to the domain that handles it, dom0 here.
        self.raise_virq(0, Virq.DOM_EXC)

    # -- EVTCHNOP_* hypercalls (from dom0, through privcmd) ---------------------------------------------
    def hypercall(self, mem: Any, args: list[int], privileged: bool) -> int:
        cmd, addr = args[0], args[1]
        me = 0
        try:
            op = EvtchnOp(cmd)
        except ValueError:
            raise _err(errno.ENOSYS, f"EVTCHNOP {cmd}") from None
        decl = {
            EvtchnOp.alloc_unbound: ALLOC_UNBOUND,
            EvtchnOp.bind_interdomain: BIND_INTERDOMAIN,
            EvtchnOp.bind_virq: BIND_VIRQ,
            EvtchnOp.close: CLOSE,
            EvtchnOp.send: SEND,
            EvtchnOp.status: STATUS,
            EvtchnOp.unmask: UNMASK,
            EvtchnOp.reset: RESET,
        }.get(op)
        if decl is None:
            raise _err(errno.ENOSYS, f"EVTCHNOP_{op.name} is not simulated")
        lay = decl.layout()
        view = mem.resolve(addr, lay.size)
        req = lay.parse(view)
        reply: dict[str, Any] | None = None
        if op == EvtchnOp.alloc_unbound:
            if not privileged and req.dom not in (DomId.SELF, me):
                raise _err(errno.EPERM, "alloc_unbound for another domain")
            reply = dict(req, port=self.alloc_unbound(me, req.dom, req.remote_dom))
        elif op == EvtchnOp.bind_interdomain:
            reply = dict(req, local_port=self.bind_interdomain(me, req.remote_dom, req.remote_port))
        elif op == EvtchnOp.bind_virq:
            reply = dict(req, port=self.bind_virq(me, req.virq, req.vcpu))
        elif op == EvtchnOp.close:
            self.close(me, req.port)
        elif op == EvtchnOp.send:
            self.send(me, req.port)
        elif op == EvtchnOp.unmask:
            self.unmask(me, req.port)
        elif op == EvtchnOp.reset:
            self.xen._domain(self._dom(me, req.dom))  # ESRCH comes first
            if not privileged and req.dom not in (DomId.SELF, me):
                raise _err(errno.EPERM, "reset of another domain")
            self.reset(me, req.dom)
        else:
            reply = self._status(me, req, privileged)
        if reply is not None:
            self.xen._reply(op.name, view, lay.build(reply))
        return 0

    def _status(self, me: int, req: Any, privileged: bool) -> dict[str, Any]:
        dom = self._dom(me, req.dom)
        table = self._table(dom)  # ESRCH first, then the port, then the permission (as Xen checks them)
        if not self.is_valid(dom, req.port):
            raise _err(errno.EINVAL, f"port {req.port} of domain {dom}")
        if dom != me and not privileged:
            raise _err(errno.EPERM, "status of another domain's port")
        p = table.get(req.port)  # none: free, or port 0 (reserved); both read as closed
        out: dict[str, Any] = {"dom": req.dom, "port": req.port, "status": 0, "vcpu": 0, "u": {}}
        if p is None:
            return out
        out.update(status=int(p.state), vcpu=p.vcpu)
        if p.state == EvtchnStat.unbound:
            out["u"] = {"unbound": {"dom": p.remote_dom}}
        elif p.state == EvtchnStat.interdomain:
            out["u"] = {"interdomain": {"dom": p.remote_dom, "port": p.remote_port}}
        elif p.state == EvtchnStat.virq:
            out["u"] = {"virq": p.virq}
        return out


class SimEvtchnFile:
    """One open /dev/xen/evtchn in dom0: the Linux driver's per-file state."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.model: SimEventChannels = kernel.xen.evtchn
        self.ports: set[int] = set()
        self.queue: deque[int] = deque()
        self.overflow = False
        self.restrict: int | None = None
        self._lock = threading.Lock()
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._closed = False
        self._handlers: dict[int, Callable[[bytearray], int]] = {
            IOCTL_EVTCHN_BIND_VIRQ.request: self._bind_virq,
            IOCTL_EVTCHN_BIND_INTERDOMAIN.request: self._bind_interdomain,
            IOCTL_EVTCHN_BIND_UNBOUND_PORT.request: self._bind_unbound,
            IOCTL_EVTCHN_UNBIND.request: self._unbind,
            IOCTL_EVTCHN_NOTIFY.request: self._notify,
            IOCTL_EVTCHN_RESET.request: self._reset,
            IOCTL_EVTCHN_RESTRICT_DOMID.request: self._restrict,
        }

    def fileno(self) -> int:
        return self._fd

    # -- the upcall ------------------------------------------------------------------------------------
    def _fire(self, port: int) -> None:
        with self._lock:
            if len(self.queue) >= QUEUE_LEN:
                self.overflow = True
            else:
                self.queue.append(port)
            os.eventfd_write(self._fd, 1)

    # -- ioctls ----------------------------------------------------------------------------------------
    def ioctl(self, request: int, arg: bytearray) -> int:
        handler = self._handlers.get(request)
        if handler is None:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        with self.kernel.xen.lock:
            return handler(arg)

    def _adopt(self, port: int) -> int:
        p = self.model.port(0, port)
        p.listener = self._fire
        p.masked = False  # the driver enables the new irq
        self.ports.add(port)
        if p.pending:
            self.model._upcall(p)
        return port

    def _bind_virq(self, arg: bytearray) -> int:
        req = IOC_BIND_VIRQ.layout().parse(arg)
        if self.restrict is not None:
            raise _err(errno.EACCES, "restricted file")
        return self._adopt(self.model.bind_virq(0, req.virq, 0))

    def _bind_interdomain(self, arg: bytearray) -> int:
        req = IOC_BIND_INTERDOMAIN.layout().parse(arg)
        if self.restrict is not None and req.remote_domain != self.restrict:
            raise _err(errno.EACCES, f"file restricted to domain {self.restrict}")
        return self._adopt(self.model.bind_interdomain(0, req.remote_domain & 0xFFFF, req.remote_port))

    def _bind_unbound(self, arg: bytearray) -> int:
        req = IOC_BIND_UNBOUND_PORT.layout().parse(arg)
        if self.restrict is not None:
            raise _err(errno.EACCES, "restricted file")
        return self._adopt(self.model.alloc_unbound(0, DomId.SELF, req.remote_domain & 0xFFFF))

    def _mine(self, port: int) -> None:
        if port not in self.ports:
            raise _err(errno.ENOTCONN, f"port {port} is not bound by this file")

    def _unbind(self, arg: bytearray) -> int:
        port = IOC_UNBIND.layout().parse(arg).port
        if port >= FIFO_FIRST_PAGE:
            raise _err(errno.EINVAL, f"port {port} is beyond the event array")
        self._mine(port)
        self.ports.discard(port)
        self.model.close(0, port)
        return 0

    def _notify(self, arg: bytearray) -> int:
        port = IOC_NOTIFY.layout().parse(arg).port
        self._mine(port)
        self.model.send(0, port)
        return 0

    def _reset(self, arg: bytearray) -> int:
        with self._lock:
            self.queue.clear()
            self.overflow = False
            self._drain_eventfd()
        return 0

    def _restrict(self, arg: bytearray) -> int:
        domid = IOC_RESTRICT_DOMID.layout().parse(arg).domid
        if self.restrict is not None:
            raise _err(errno.EACCES, "already restricted")
        if domid >= DOMID_FIRST_RESERVED:
            raise _err(errno.EINVAL, f"domid {domid:#x}")
        self.restrict = domid
        return 0

    # -- read: fired ports; write: ports to unmask -------------------------------------------------------
    def read(self, n: int) -> bytes:
        count = n // PORT_SIZE
        if count == 0:
            return b""  # the driver reads whole ports: less than one is a read of 0 bytes
        with self._lock:
            if self.overflow:
                raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
            if not self.queue:
                raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            out = [self.queue.popleft() for _ in range(min(count, len(self.queue)))]
            if not self.queue:
                self._drain_eventfd()
        return struct.pack(f"<{len(out)}I", *out)

    def write(self, data: bytes) -> int:
        count = len(data) // PORT_SIZE
        if count == 0:
            return 0
        with self.kernel.xen.lock:
            for (port,) in struct.iter_unpack("<I", data[: count * PORT_SIZE]):
                if port in self.ports:  # other ports are ignored, as the driver does
                    self.model.unmask(0, port)
        return count * PORT_SIZE

    def _drain_eventfd(self) -> None:
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self.kernel.xen.lock:
            for port in sorted(self.ports):
                if port in self.model.ports.get(0, {}):
                    self.model.close(0, port)
            self.ports.clear()
        os.close(self._fd)


class SimPortDoorbell:
    """One port of domain ``domid`` handled by that domain's kernel, as a ``Doorbell`` (``fileno``, ``notify``,
    ``ack``): what a guest's xenbus driver does with its xenstore channel. ``fileno`` (an eventfd) is readable
    once the port fired; the upcall masks the port, ``ack`` drains the eventfd and unmasks it (a port still
    pending fires again); ``notify`` is the guest's EVTCHNOP_send (dropped while the port is unbound)."""

    def __init__(self, xen: Any, domid: int, port: int) -> None:
        self.xen = xen
        self.model: SimEventChannels = xen.evtchn
        self.domid = domid
        self.port = port
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._closed = False
        with xen.lock:
            p = self.model.port(domid, port)
            p.listener = self._fire
            p.masked = False
            if p.pending:
                self.model._upcall(p)

    def _fire(self, port: int) -> None:
        if not self._closed:
            os.eventfd_write(self._fd, 1)

    def fileno(self) -> int:
        if self._closed:
            raise ValueError(f"doorbell of domain {self.domid} port {self.port} is closed")
        return self._fd

    def notify(self) -> None:
        with self.xen.lock:
            self.model.send(self.domid, self.port)

    def ack(self) -> None:
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass
        with self.xen.lock:
            p = self.model.ports.get(self.domid, {}).get(self.port)
            if p is not None:
                self.model.unmask(self.domid, self.port)

    @property
    def state(self) -> EvtchnStat:
        """The port's state as Xen keeps it (``closed`` once the domain or the port is gone)."""
        with self.xen.lock:
            p = self.model.ports.get(self.domid, {}).get(self.port)
            return EvtchnStat.closed if p is None else p.state

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self.xen.lock:
            p = self.model.ports.get(self.domid, {}).get(self.port)
            if p is not None and p.listener == self._fire:
                p.listener = None
        os.close(self._fd)

    def __repr__(self) -> str:
        return f"<SimPortDoorbell dom{self.domid} port {self.port}>"
