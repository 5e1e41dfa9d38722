"""Event channels: Xen's virtual interrupts, natively (libxenevtchn's equivalent, plus the EVTCHNOP_*
hypercalls).

Rule 1: two doors, each named for what is underneath. ``EventChannels`` is /dev/xen/evtchn: ports bound
in dom0's kernel whose events this process receives (pollable; ``selectors`` or asyncio). ``EvtchnOps`` is
EVTCHNOP_* through privcmd: ports of any domain, as a toolstack sets them up, with no delivery here.

libxenevtchn -> xenpure::

    xenevtchn_open / fdopen / close / fd   EventChannels.open(kernel) / .fdopen(device) / .close() / .fileno()
    xenevtchn_bind_unbound_port            EventChannels.bind_unbound_port(domid) -> Channel
    xenevtchn_bind_interdomain             EventChannels.bind_interdomain(domid, port) -> Channel
    xenevtchn_bind_virq                    EventChannels.bind_virq(virq) -> Channel
    xenevtchn_notify / unbind / unmask     .notify(port) / .unbind(port) / .unmask(port)  (or Channel's)
    xenevtchn_pending                      .pending(timeout=0) -> port | None; .wait(); async .events()
    xenevtchn_restrict                     .restrict(domid)

    >>> import xenpure
    >>> from xenpure.evtchn import EventChannels
    >>> with xenpure.connect("sim://") as host, EventChannels.open(host.kernel) as evt:
    ...     with evt.bind_unbound_port(0) as a, evt.bind_interdomain(0, a.port) as b:
    ...         first = evt.wait(1.0)          # Xen marks a freshly bound interdomain port pending
    ...         b.unmask()
    ...         b.notify()
    ...         evt.wait(1.0) == [a.port]
    True
"""

from __future__ import annotations

from ..hypercall.abi.event_channel import EvtchnStat, Virq
from ._handle import Channel, EventChannels
from ._ops import ChannelStatus, EvtchnOps

__all__ = ["Channel", "ChannelStatus", "EventChannels", "EvtchnOps", "EvtchnStat", "Virq"]
