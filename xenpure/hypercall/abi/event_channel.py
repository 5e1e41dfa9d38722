"""Declarations from Xen's public/event_channel.h (``__HYPERVISOR_event_channel_op``) and the VIRQs of xen.h.

Rule 1: the hypercall takes ``(cmd, pointer to struct evtchn_<cmd>)``; each EVTCHNOP_* sub-op has its own
record, never the legacy ``struct evtchn_op`` wrapper. event_channel.h is not interface-versioned.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from .._layout import Array, Constants, Decl, F, Union, constants_registry, u8, u16, u32, u64

__all__ = [
    "ALLOC_UNBOUND",
    "BIND_INTERDOMAIN",
    "BIND_IPI",
    "BIND_PIRQ",
    "BIND_VCPU",
    "BIND_VIRQ",
    "CLOSE",
    "EXPAND_ARRAY",
    "INIT_CONTROL",
    "RESET",
    "SEND",
    "SET_PRIORITY",
    "STATUS",
    "UNMASK",
    "BindPirqFlag",
    "EvtchnOp",
    "EvtchnStat",
    "NrVirqs",
    "Virq",
]


class EvtchnOp(IntEnum):
    """``EVTCHNOP_*``: sub-ops of ``__HYPERVISOR_event_channel_op``."""

    bind_interdomain = 0
    bind_virq = 1
    bind_pirq = 2
    close = 3
    send = 4
    status = 5
    alloc_unbound = 6
    bind_ipi = 7
    bind_vcpu = 8
    unmask = 9
    reset = 10
    init_control = 11
    expand_array = 12
    set_priority = 13


class EvtchnStat(IntEnum):
    """``EVTCHNSTAT_*``: ``evtchn_status.status``; also says which member of its union ``u`` is valid."""

    closed = 0
    unbound = 1
    interdomain = 2
    pirq = 3
    virq = 4
    ipi = 5


class BindPirqFlag(IntFlag):
    """``BIND_PIRQ__*``: ``evtchn_bind_pirq.flags``."""

    WILL_SHARE = 1


class Virq(IntEnum):
    """``VIRQ_*`` (xen.h): virtual interrupts Xen raises. Per-vcpu: TIMER, DEBUG, XENOPROF, XENPMU; the rest
    are bound once (DOM_EXC is how dom0 learns that some domain died or shut down)."""

    TIMER = 0
    DEBUG = 1
    CONSOLE = 2
    DOM_EXC = 3
    TBUF = 4
    DEBUGGER = 6
    XENOPROF = 7
    CON_RING = 8
    PCPU_STATE = 9
    MEM_EVENT = 10
    ARGO = 11
    ENOMEM = 12
    XENPMU = 13
    ARCH_0 = 16
    ARCH_1 = 17
    ARCH_2 = 18
    ARCH_3 = 19
    ARCH_4 = 20
    ARCH_5 = 21
    ARCH_6 = 22
    ARCH_7 = 23


class NrVirqs(IntEnum):
    """``NR_VIRQS`` (xen.h): one more than the highest VIRQ number."""

    NR_VIRQS = 24


ALLOC_UNBOUND = Decl(
    "evtchn_alloc_unbound",
    "event_channel.h",
    (F("dom", u16), F("remote_dom", u16), F("port", u32)),
    doc="EVTCHNOP_alloc_unbound: a port in dom that remote_dom may bind to; OUT the port.",
)

BIND_INTERDOMAIN = Decl(
    "evtchn_bind_interdomain",
    "event_channel.h",
    (F("remote_dom", u16), F("remote_port", u32), F("local_port", u32)),
    doc="EVTCHNOP_bind_interdomain: connect a local port to remote_dom's unbound remote_port.",
)

BIND_VIRQ = Decl(
    "evtchn_bind_virq",
    "event_channel.h",
    (F("virq", u32), F("vcpu", u32), F("port", u32)),
    doc="EVTCHNOP_bind_virq: a port that fires when Xen raises VIRQ virq on vcpu.",
)

BIND_PIRQ = Decl(
    "evtchn_bind_pirq",
    "event_channel.h",
    (F("pirq", u32), F("flags", u32), F("port", u32)),
    doc="EVTCHNOP_bind_pirq: a port for physical IRQ pirq (BIND_PIRQ__* flags).",
)

BIND_IPI = Decl(
    "evtchn_bind_ipi",
    "event_channel.h",
    (F("vcpu", u32), F("port", u32)),
    doc="EVTCHNOP_bind_ipi: a port for inter-vcpu notifications, delivered to vcpu.",
)

CLOSE = Decl("evtchn_close", "event_channel.h", (F("port", u32),), doc="EVTCHNOP_close: free a local port.")

SEND = Decl("evtchn_send", "event_channel.h", (F("port", u32),), doc="EVTCHNOP_send: notify a port's peer.")

_STATUS_UNBOUND = Decl(
    "evtchn_status_unbound",
    "event_channel.h",
    (F("dom", u16),),
    doc="The untagged struct of evtchn_status.u.unbound.",
    register=False,
)

_STATUS_INTERDOMAIN = Decl(
    "evtchn_status_interdomain",
    "event_channel.h",
    (F("dom", u16), F("port", u32)),
    doc="The untagged struct of evtchn_status.u.interdomain.",
    register=False,
)

STATUS = Decl(
    "evtchn_status",
    "event_channel.h",
    (
        F("dom", u16),
        F("port", u32),
        F("status", u32),
        F("vcpu", u32),
        F(
            "u",
            Union(
                (
                    F("unbound", _STATUS_UNBOUND),
                    F("interdomain", _STATUS_INTERDOMAIN),
                    F("pirq", u32),
                    F("virq", u32),
                )
            ),
        ),
    ),
    doc="EVTCHNOP_status: what port of dom is (EVTCHNSTAT_*), the vcpu it notifies and its binding in u.",
)

BIND_VCPU = Decl(
    "evtchn_bind_vcpu",
    "event_channel.h",
    (F("port", u32), F("vcpu", u32)),
    doc="EVTCHNOP_bind_vcpu: deliver port's notifications to vcpu from now on.",
)

UNMASK = Decl("evtchn_unmask", "event_channel.h", (F("port", u32),), doc="EVTCHNOP_unmask: unmask a port.")

RESET = Decl(
    "evtchn_reset",
    "event_channel.h",
    (F("dom", u16),),
    doc="EVTCHNOP_reset: close every port of dom (used before a domain's soft reset).",
)

INIT_CONTROL = Decl(
    "evtchn_init_control",
    "event_channel.h",
    (F("control_gfn", u64), F("offset", u32), F("vcpu", u32), F("link_bits", u8), F("_pad", Array(u8, 7))),
    doc="EVTCHNOP_init_control: switch to the FIFO ABI with vcpu's control block at control_gfn+offset.",
)

EXPAND_ARRAY = Decl(
    "evtchn_expand_array",
    "event_channel.h",
    (F("array_gfn", u64),),
    doc="EVTCHNOP_expand_array: add a page of FIFO event words.",
)

SET_PRIORITY = Decl(
    "evtchn_set_priority",
    "event_channel.h",
    (F("port", u32), F("priority", u32)),
    doc="EVTCHNOP_set_priority: FIFO priority of port, 0 (highest) to 15.",
)

constants_registry().extend(
    [
        Constants(EvtchnOp, "EVTCHNOP_", "event_channel.h"),
        Constants(EvtchnStat, "EVTCHNSTAT_", "event_channel.h"),
        Constants(BindPirqFlag, "BIND_PIRQ__", "event_channel.h"),
        Constants(Virq, "VIRQ_", "xen.h"),
        Constants(NrVirqs, "", "xen.h"),
    ]
)
