"""Declarations from Xen's public/sched.h: ``sched_op`` sub-ops, shutdown reasons, remote shutdown.

Rule 1: a shutdown reason is the same number whether a guest asks for it (SCHEDOP_shutdown) or dom0
imposes it (SCHEDOP_remote_shutdown), and getdomaininfo reports it back in its flags.
"""

from __future__ import annotations

from enum import IntEnum

from .._layout import Constants, Decl, F, constants_registry, u16, u32

__all__ = ["SCHED_REMOTE_SHUTDOWN", "SchedOp", "ShutdownReason"]


class SchedOp(IntEnum):
    """``SCHEDOP_*``."""

    yield_ = 0
    block = 1
    shutdown = 2
    poll = 3
    remote_shutdown = 4
    shutdown_code = 5
    watchdog = 6
    pin_override = 7


class ShutdownReason(IntEnum):
    """``SHUTDOWN_*``: why a domain shut down (or is asked to)."""

    poweroff = 0
    reboot = 1
    suspend = 2
    crash = 3
    watchdog = 4
    soft_reset = 5


SCHED_REMOTE_SHUTDOWN = Decl(
    "sched_remote_shutdown",
    "sched.h",
    (F("domain_id", u16), F("reason", u32)),
    doc="SCHEDOP_remote_shutdown: shut another domain down with a SHUTDOWN_* reason (privileged).",
)


constants_registry().extend(
    [Constants(SchedOp, "SCHEDOP_", "sched.h"), Constants(ShutdownReason, "SHUTDOWN_", "sched.h")]
)
