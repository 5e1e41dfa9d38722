"""Domains and the host they run on: list, inspect, pause, resume, shut down, destroy, build new PV
guests (``Host.create``) and follow them (``Supervisor``: on_poweroff/on_reboot/on_crash).

Rule 1: this package composes the layers below it and never calls ``ioctl`` itself.
"""

from __future__ import annotations

from ._builder import BuildError, BuildReport
from ._config import Action, ConfigError, DomainConfig
from ._domain import Domain
from ._events import DomainEvent, EventKind, EventStream
from ._host import Host
from ._kernel_image import KernelImageError
from ._pvlayout import LayoutError
from ._supervisor import Applied, Outcome, RestartLoop, Supervisor
from ._types import DomainInfo, DomainState, PhysInfo, VcpuInfo, XenVersion
from ._xlcfg import load as load_xl_config
from ._xlcfg import parse as parse_xl_config

__all__ = [
    "Action",
    "Applied",
    "BuildError",
    "BuildReport",
    "ConfigError",
    "Domain",
    "DomainConfig",
    "DomainEvent",
    "DomainInfo",
    "DomainState",
    "EventKind",
    "EventStream",
    "Host",
    "KernelImageError",
    "LayoutError",
    "Outcome",
    "PhysInfo",
    "RestartLoop",
    "Supervisor",
    "VcpuInfo",
    "XenVersion",
    "load_xl_config",
    "parse_xl_config",
]
