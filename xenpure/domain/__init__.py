"""Domains and the host they run on: list, inspect, pause, resume (and, as the project grows, the rest of
the lifecycle).

Rule 1: this package composes the layers below it and never calls ``ioctl`` itself.
"""

from __future__ import annotations

from ._domain import Domain
from ._events import DomainEvent, EventKind, EventStream
from ._host import Host
from ._types import DomainInfo, DomainState, PhysInfo, VcpuInfo, XenVersion

__all__ = [
    "Domain",
    "DomainEvent",
    "DomainInfo",
    "DomainState",
    "EventKind",
    "EventStream",
    "Host",
    "PhysInfo",
    "VcpuInfo",
    "XenVersion",
]
