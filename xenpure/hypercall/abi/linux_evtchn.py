"""Declarations from Linux's uapi xen/evtchn.h: the ioctls of /dev/xen/evtchn.

Rule 1: the device's ioctls bind and unbind this file's ports and return the local port as the ioctl's
result; events come back by ``read`` (a stream of ``uint32_t`` ports) and are re-armed by ``write`` (the
same). Nothing here is interface-versioned.
"""

from __future__ import annotations

from .._layout import Decl, F, u16, u32
from ._ioctl import ioctl

__all__ = [
    "BIND_INTERDOMAIN",
    "BIND_UNBOUND_PORT",
    "BIND_VIRQ",
    "IOCTL_EVTCHN_BIND_INTERDOMAIN",
    "IOCTL_EVTCHN_BIND_UNBOUND_PORT",
    "IOCTL_EVTCHN_BIND_VIRQ",
    "IOCTL_EVTCHN_NOTIFY",
    "IOCTL_EVTCHN_RESET",
    "IOCTL_EVTCHN_RESTRICT_DOMID",
    "IOCTL_EVTCHN_UNBIND",
    "NOTIFY",
    "PORT_SIZE",
    "RESTRICT_DOMID",
    "UNBIND",
]

_H = "linux:xen/evtchn.h"

#: Bytes per port in what the device reads and writes (``evtchn_port_t``, a uint32_t).
PORT_SIZE = 4

BIND_VIRQ = Decl(
    "ioctl_evtchn_bind_virq", _H, (F("virq", u32),), doc="Bind VIRQ virq (on vcpu 0); returns the local port."
)
BIND_INTERDOMAIN = Decl(
    "ioctl_evtchn_bind_interdomain",
    _H,
    (F("remote_domain", u32), F("remote_port", u32)),
    doc="Connect a new local port to remote_domain's unbound remote_port; returns the local port.",
)
BIND_UNBOUND_PORT = Decl(
    "ioctl_evtchn_bind_unbound_port",
    _H,
    (F("remote_domain", u32),),
    doc="Allocate a local port that remote_domain may bind to; returns the local port.",
)
UNBIND = Decl("ioctl_evtchn_unbind", _H, (F("port", u32),), doc="Close a port this file bound.")
NOTIFY = Decl("ioctl_evtchn_notify", _H, (F("port", u32),), doc="Send an event on a port this file bound.")
RESTRICT_DOMID = Decl(
    "ioctl_evtchn_restrict_domid",
    _H,
    (F("domid", u16),),
    doc="From now on this file may only bind interdomain channels to domid.",
)

IOCTL_EVTCHN_BIND_VIRQ = ioctl("IOCTL_EVTCHN_BIND_VIRQ", "E", 0, BIND_VIRQ, _H)
IOCTL_EVTCHN_BIND_INTERDOMAIN = ioctl("IOCTL_EVTCHN_BIND_INTERDOMAIN", "E", 1, BIND_INTERDOMAIN, _H)
IOCTL_EVTCHN_BIND_UNBOUND_PORT = ioctl("IOCTL_EVTCHN_BIND_UNBOUND_PORT", "E", 2, BIND_UNBOUND_PORT, _H)
IOCTL_EVTCHN_UNBIND = ioctl("IOCTL_EVTCHN_UNBIND", "E", 3, UNBIND, _H)
IOCTL_EVTCHN_NOTIFY = ioctl("IOCTL_EVTCHN_NOTIFY", "E", 4, NOTIFY, _H)
#: Takes no argument: empties the file's queue of fired ports.
IOCTL_EVTCHN_RESET = ioctl("IOCTL_EVTCHN_RESET", "E", 5, None, _H)
IOCTL_EVTCHN_RESTRICT_DOMID = ioctl("IOCTL_EVTCHN_RESTRICT_DOMID", "E", 6, RESTRICT_DOMID, _H)
