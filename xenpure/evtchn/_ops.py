"""EVTCHNOP_* hypercalls through privcmd: event channels as the toolstack manipulates them for any domain.

Rule 1: these act on ports of the *calling* domain (dom0) or, where the sub-op takes a domain, of another
domain (dom0 only); they bypass dom0's kernel, so a port bound here is not delivered to any
/dev/xen/evtchn file. To *receive* events in this process use ``EventChannels`` (the device); use these to
set up channels for guests (``alloc_unbound(guest, 0)`` is how a toolstack makes a console or xenstore
channel), and to inspect (``status``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ProtocolError
from ..hypercall._layout import Decl
from ..hypercall._privcmd import Privcmd
from ..hypercall._subop import record_op
from ..hypercall.abi.event_channel import (
    ALLOC_UNBOUND,
    BIND_INTERDOMAIN,
    CLOSE,
    RESET,
    SEND,
    STATUS,
    UNMASK,
    EvtchnOp,
    EvtchnStat,
    Virq,
)
from ..hypercall.abi.xen import DomId, Hypercall

__all__ = ["ChannelStatus", "EvtchnOps"]

_SELF = int(DomId.SELF)


@dataclass(frozen=True)
class ChannelStatus:
    """What ``EVTCHNOP_status`` says about one port.

    ``state`` is the EVTCHNSTAT_*; ``remote_domid`` is the domain allowed to bind (unbound) or the peer
    (interdomain); ``remote_port`` the peer's port (interdomain); ``virq`` / ``pirq`` for those bindings.
    """

    domid: int
    port: int
    state: EvtchnStat
    vcpu: int
    remote_domid: int | None = None
    remote_port: int | None = None
    virq: Virq | int | None = None
    pirq: int | None = None


class EvtchnOps:
    """``__HYPERVISOR_event_channel_op`` sub-ops, issued through a ``Privcmd`` (``host.privcmd``)."""

    def __init__(self, privcmd: Privcmd) -> None:
        self.privcmd = privcmd

    def _op(self, cmd: EvtchnOp, decl: Decl, **fields: int) -> Any:
        return record_op(self.privcmd, Hypercall.event_channel_op, cmd, decl, fields)

    def alloc_unbound(self, domid: int = _SELF, remote_domid: int = 0) -> int:
        """A new port in ``domid`` that ``remote_domid`` may bind (``EVTCHNOP_alloc_unbound``); its number.

        Raises ``NoSuchDomain`` (ESRCH), ``OperationNotPermitted`` for another domain without privilege,
        ``HypercallError`` ENOSPC when the domain has no free port.
        """
        rec = self._op(EvtchnOp.alloc_unbound, ALLOC_UNBOUND, dom=domid, remote_dom=remote_domid)
        return int(rec.port)

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        """Connect a new port of the calling domain to ``remote_domid``'s unbound ``remote_port``
        (``EVTCHNOP_bind_interdomain``); the local port. Xen marks the local port pending at once.

        Raises ``InvalidArgument`` if the remote port is not unbound for us, ``NoSuchDomain``.
        """
        rec = self._op(EvtchnOp.bind_interdomain, BIND_INTERDOMAIN, remote_dom=remote_domid, remote_port=remote_port)
        return int(rec.local_port)

    def close(self, port: int) -> None:
        """Close a port of the calling domain (``EVTCHNOP_close``); an interdomain peer becomes unbound.

        Raises ``InvalidArgument`` for a port that is not allocated.
        """
        self._op(EvtchnOp.close, CLOSE, port=port)

    def send(self, port: int) -> None:
        """Notify the peer of a port of the calling domain (``EVTCHNOP_send``).

        A send on an unbound port is dropped by Xen; raises ``InvalidArgument`` for a closed port.
        """
        self._op(EvtchnOp.send, SEND, port=port)

    def unmask(self, port: int) -> None:
        """Unmask a port of the calling domain (``EVTCHNOP_unmask``); a pending event is delivered again.

        A port that is free but was allocated once is accepted (there is nothing to deliver); raises
        ``InvalidArgument`` for a port beyond any the domain has had. For a port bound through
        /dev/xen/evtchn, use ``EventChannels.unmask`` instead: the driver keeps its own state for it.
        """
        self._op(EvtchnOp.unmask, UNMASK, port=port)

    def reset(self, domid: int) -> None:
        """Close every port of ``domid`` (``EVTCHNOP_reset``), as before a guest's soft reset; each
        interdomain peer is left unbound, as ``close`` leaves it.

        Xen resets another domain's ports only while the toolstack holds it paused (``Domain.pause()``;
        a domain being built is): raises ``InvalidArgument`` otherwise, ``NoSuchDomain``. Never aim it at
        dom0 (``DOMID_SELF``): it would close the ports dom0's kernel runs on.
        """
        self._op(EvtchnOp.reset, RESET, dom=domid)

    def status(self, domid: int, port: int) -> ChannelStatus:
        """What port ``port`` of ``domid`` is bound to (``EVTCHNOP_status``).

        Raises ``InvalidArgument`` for a port number out of range, ``NoSuchDomain``,
        ``ProtocolError`` if Xen answers a state this code does not know.
        """
        r = self._op(EvtchnOp.status, STATUS, dom=domid, port=port)
        try:
            state = EvtchnStat(r.status)
        except ValueError:
            raise ProtocolError(f"EVTCHNOP_status answered unknown state {r.status}") from None
        u = r.u
        vcpu = int(r.vcpu)
        if state == EvtchnStat.unbound:
            return ChannelStatus(domid, port, state, vcpu, remote_domid=int(u.unbound.dom))
        if state == EvtchnStat.interdomain:
            return ChannelStatus(
                domid, port, state, vcpu, remote_domid=int(u.interdomain.dom), remote_port=int(u.interdomain.port)
            )
        if state == EvtchnStat.virq:
            v = int(u.virq)
            return ChannelStatus(domid, port, state, vcpu, virq=Virq(v) if v in Virq._value2member_map_ else v)
        if state == EvtchnStat.pirq:
            return ChannelStatus(domid, port, state, vcpu, pirq=int(u.pirq))
        return ChannelStatus(domid, port, state, vcpu)
