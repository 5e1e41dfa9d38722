"""Domains and the host they run on: list, inspect, pause, resume (and, as the project grows, the rest of
the lifecycle).

Rule 1: this package composes the layers below it and never calls ``ioctl`` itself.
"""

from __future__ import annotations

from ._host import Domain, Host
from ._types import DomainInfo, DomainState, PhysInfo, VcpuInfo, XenVersion

__all__ = ["Domain", "DomainInfo", "DomainState", "Host", "PhysInfo", "VcpuInfo", "XenVersion"]
