"""What a new PV domain should look like: ``DomainConfig``, the input of ``Host.create``.

Rule 1: a ``DomainConfig`` is valid once constructed. Every check that does not need the hypervisor
(name syntax, memory sizes, vcpu count, action names, command-line length) runs in ``__post_init__``, so
nothing half-checked ever reaches the builder.

Sizes are in MiB as xl.cfg writes them (``memory=128``); Xen itself counts 4 KiB pages and KiB
(``XEN_DOMCTL_max_mem`` takes ``max_memkb``).
"""

from __future__ import annotations

import re
import uuid as _uuid
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..hypercall.abi.xen import MAX_GUEST_CMDLINE

__all__ = ["SUPPORTED_ACTIONS", "Action", "ConfigError", "DomainConfig"]


class ConfigError(ValueError):
    """A domain configuration is invalid; the message names the key and what is wrong with it.

    (A ``ValueError``: nothing was asked of Xen yet.) ``key`` is the offending key or None, ``line`` the
    line of the xl.cfg file, if one was parsed.
    """

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None, source: str = "") -> None:
        self.key = key
        self.line = line
        self.source = source
        where = ""
        if source or line is not None:
            where = f"{source or '<config>'}" + (f":{line}" if line is not None else "") + ": "
        super().__init__(where + message)


class Action(Enum):
    """What the toolstack does when the guest powers off, reboots or crashes (xl.cfg's ``on_*``).

    xenpure records the choice in the domain's xenstore entries, and a ``Supervisor`` (``xenpure create``
    runs one per domain, as ``xl`` does) applies it. Every xl spelling parses; the ``coredump-*`` and
    ``soft-reset`` actions are refused by ``DomainConfig`` (``SUPPORTED_ACTIONS``).
    """

    DESTROY = "destroy"
    RESTART = "restart"
    RENAME_RESTART = "rename-restart"
    PRESERVE = "preserve"
    COREDUMP_DESTROY = "coredump-destroy"
    COREDUMP_RESTART = "coredump-restart"
    SOFT_RESET = "soft-reset"

    @classmethod
    def parse(cls, text: str, key: str = "on_*") -> Action:
        """The action spelled ``text`` (``"destroy"``); ``ConfigError`` lists the valid spellings."""
        for a in cls:
            if a.value == text:
                return a
        valid = ", ".join(a.value for a in cls)
        raise ConfigError(f"{key}: unknown action {text!r} (valid: {valid})", key=key)


#: The actions a ``Supervisor`` can apply; the others are refused when a config is made.
SUPPORTED_ACTIONS = frozenset({Action.DESTROY, Action.RESTART, Action.RENAME_RESTART, Action.PRESERVE})

#: A name xl would accept too: printable, no '/' (it becomes part of no path, but xl refuses it), not
#: all digits (that would read as a domain id).
_NAME = re.compile(r"^[A-Za-z0-9_.:+@-][A-Za-z0-9_.:+@ -]{0,63}$")
#: The largest guest xenpure will plan for (the p2m and page tables grow with it; 1 TiB).
MAX_MEMORY_MIB = 1 << 20
#: Xen 4.17's limit for a PV guest's vcpus (HVM_MAX_VCPUS is larger, PV guests stop at 8192 in theory;
#: the toolstack uses 128 as the practical ceiling of one createdomain).
MAX_VCPUS = 128


@dataclass(frozen=True)
class DomainConfig:
    """A PV guest to build.

    ``memory``/``maxmem`` are MiB (``maxmem`` None: same as ``memory``); ``kernel`` and ``ramdisk`` are paths
    in dom0; ``cmdline`` is handed to the kernel through ``start_info.cmd_line`` (at most 1023 bytes).
    ``uuid`` None: a random one is chosen when the config is made (so two builds of one config object
    share it, as xl does within one create).
    """

    name: str
    kernel: Path
    memory: int = 128
    maxmem: int | None = None
    vcpus: int = 1
    ramdisk: Path | None = None
    cmdline: str = ""
    uuid: _uuid.UUID = field(default_factory=_uuid.uuid4)
    on_poweroff: Action = Action.DESTROY
    on_reboot: Action = Action.RESTART
    on_crash: Action = Action.DESTROY

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name) or self.name.isdigit():
            raise ConfigError(
                f"name {self.name!r} is not a valid domain name (1-64 of letters, digits, '_.:+@-' and space, "
                "not all digits)", key="name")
        for key in ("memory", "vcpus"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{key} must be a positive integer, got {v!r}", key=key)
        if self.memory > MAX_MEMORY_MIB:
            raise ConfigError(
                f"memory {self.memory} MiB is more than xenpure plans for ({MAX_MEMORY_MIB})", key="memory")
        if self.memory < 16:
            raise ConfigError(f"memory {self.memory} MiB is too small for a PV guest (at least 16)", key="memory")
        if self.maxmem is not None:
            if not isinstance(self.maxmem, int) or isinstance(self.maxmem, bool) or self.maxmem < self.memory:
                raise ConfigError(f"maxmem {self.maxmem!r} must be an integer >= memory ({self.memory})", key="maxmem")
            if self.maxmem > MAX_MEMORY_MIB:
                raise ConfigError(f"maxmem {self.maxmem} MiB is more than xenpure plans for", key="maxmem")
        if self.vcpus > MAX_VCPUS:
            raise ConfigError(f"vcpus {self.vcpus} is more than {MAX_VCPUS}", key="vcpus")
        for key in ("kernel", "ramdisk"):
            v = getattr(self, key)
            if v is not None and not isinstance(v, Path):
                object.__setattr__(self, key, Path(v))  # accept str paths; the field stays a Path
        if not isinstance(self.cmdline, str):
            raise ConfigError("cmdline must be a string", key="cmdline")
        raw = self.cmdline.encode("utf-8")
        if len(raw) >= MAX_GUEST_CMDLINE or b"\0" in raw:
            raise ConfigError(
                f"cmdline is {len(raw)} bytes; start_info.cmd_line holds at most {MAX_GUEST_CMDLINE - 1} and no NUL",
                key="cmdline")
        if not isinstance(self.uuid, _uuid.UUID):
            object.__setattr__(self, "uuid", _uuid.UUID(str(self.uuid)))
        for key in ("on_poweroff", "on_reboot", "on_crash"):
            v = getattr(self, key)
            if not isinstance(v, Action):
                v = Action.parse(str(v), key)
                object.__setattr__(self, key, v)
            if v not in SUPPORTED_ACTIONS:
                supported = ", ".join(a.value for a in Action if a in SUPPORTED_ACTIONS)
                raise ConfigError(f"{key}={v.value!r} is an xl action xenpure does not support (it supports: "
                                  f"{supported})", key=key)

    @property
    def memory_kib(self) -> int:
        """Initial memory in KiB."""
        return self.memory * 1024

    @property
    def maxmem_kib(self) -> int:
        """The ceiling given to ``XEN_DOMCTL_max_mem`` in KiB (``maxmem``, else ``memory``)."""
        return (self.maxmem if self.maxmem is not None else self.memory) * 1024

    @property
    def nr_pages(self) -> int:
        """Initial memory in 4 KiB pages: what populate_physmap allocates."""
        return self.memory * 256
