"""Enforcing ``on_poweroff`` / ``on_reboot`` / ``on_crash``: a supervisor that follows one guest.

Rule 1: the action is decided from the domain's own state, never from an event alone. Lifecycle
notifications (the ``Monitor`` behind ``Host.events()``: VIRQ_DOM_EXC, xenstored's @releaseDomain, a timer)
only wake the supervisor; it then asks Xen (``XEN_DOMCTL_getdomaininfo``) whether the domain it follows
has shut down and why, and applies the configured action once per domain. So a shutdown that happened
before the supervisor started, or between two wake-ups, is still acted on, and nothing is acted on twice.

The reason Xen reports picks the action (xl.cfg(5)):

    poweroff            on_poweroff
    reboot              on_reboot
    crash               on_crash
    watchdog            destroy (xl's default for on_watchdog, which xenpure does not parse)
    suspend             nothing: the domain is being saved by someone; keep following it
    soft_reset, other   preserve (left for a human), and the supervisor stops

and the actions:

    destroy             XEN_DOMCTL_destroydomain + xenstore cleanup (``Domain.destroy``); done
    restart             destroy, then build the same ``DomainConfig`` again (same name and uuid, a new domid)
                        and start it; keep following the new domain
    rename-restart      keep the dead domain, renamed ``NAME-<old domid>`` in xenstore, build a new one
                        under NAME with a fresh uuid, start it, follow the new one
    preserve            leave the shut-down domain as it is (``xl list`` shows it, ``destroy`` removes it);
                        done

``coredump-*`` and ``soft-reset`` are refused when the config is made (``DomainConfig``), not here.

A guest that keeps rebooting straight away would spin the host; more than ``max_restarts`` restarts within
``restart_window`` seconds destroys it instead and ends with ``RestartLoop``.

The supervisor ends when the domain it follows is destroyed (by its action or by anyone else), preserved,
or when ``run(timeout=...)`` runs out. It holds no state Xen does not: a supervisor that dies can be
replaced by a new one for the same domain and config.

Where it runs: ``xenpure create FILE`` starts ``xenpure supervise DOMID FILE`` as a process of its own (a
new session, no terminal, output appended to /var/log/xen/xenpure-supervise-NAME.log) and returns, as
``xl create`` leaves its per-domain daemon behind: the command must return for scripts, yet someone must
outlive it to see the guest power off or reboot, and a separate process (rather than a fork of the CLI)
starts from a clean interpreter with connections of its own. ``-F`` keeps it in the foreground instead
(systemd units, containers); ``-e`` starts none. In Python, ``Supervisor(host, config, domain).run()`` in
any thread or process does the same.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
import uuid as _uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import NoSuchDomain, XenError
from ..hypercall.abi.sched import ShutdownReason
from ._config import Action, DomainConfig
from ._domain import Domain

if TYPE_CHECKING:
    from ._host import Host

__all__ = ["Applied", "Outcome", "RestartLoop", "Supervisor"]

log = logging.getLogger("xenpure.domain.supervise")

#: Seconds between snapshots when nothing wakes the supervisor (shutdowns and deaths do wake it).
SUPERVISE_INTERVAL = 1.0


class RestartLoop(XenError):
    """The guest restarted more than ``max_restarts`` times within ``restart_window`` seconds; the last
    incarnation was destroyed rather than restarted again."""


class Outcome(enum.Enum):
    """Why a supervisor stopped following its domain."""

    DESTROYED = "destroyed"  # by its action (destroy, or a restart loop)
    GONE = "gone"  # destroyed by someone else
    PRESERVED = "preserved"  # shut down and left as it is
    TIMEOUT = "timeout"  # run(timeout=...) ran out; the domain is still followed by nobody


@dataclass(frozen=True)
class Applied:
    """One action taken: domain ``domid`` shut down with ``reason`` and got ``action``; ``new_domid`` is
    the restarted domain (restart / rename-restart), ``renamed_to`` the old one's new name."""

    domid: int
    name: str
    reason: ShutdownReason | int
    action: Action
    new_domid: int | None = None
    renamed_to: str | None = None

    def __str__(self) -> str:
        reason = getattr(self.reason, "name", self.reason)
        text = f"domain {self.domid} ({self.name}) shut down ({reason}): {self.action.value}"
        if self.renamed_to is not None:
            text += f", kept as {self.renamed_to}"
        if self.new_domid is not None:
            text += f", restarted as domain {self.new_domid}"
        return text


class Supervisor:
    """Follows the domain built from ``config`` (``domain``) and applies its ``on_*`` actions.

    ``run()`` blocks until the supervisor is done (see ``Outcome``); ``applied`` lists every action taken.
    ``on_action(applied)`` is called after each one (logging, tests).
    """

    def __init__(
        self,
        host: Host,
        config: DomainConfig,
        domain: Domain | int,
        *,
        on_action: Callable[[Applied], None] | None = None,
        interval: float = SUPERVISE_INTERVAL,
        max_restarts: int = 5,
        restart_window: float = 60.0,
    ) -> None:
        self.host = host
        self.config = config
        self.domain = domain if isinstance(domain, Domain) else Domain(host, domain)
        self.on_action = on_action
        self.interval = interval
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.applied: list[Applied] = []
        self._uuid = self.domain._info().uuid  # NoSuchDomain if it is already gone
        self._restarts: list[float] = []

    @property
    def domid(self) -> int:
        """The domain followed now (a restart changes it)."""
        return self.domain.id

    def run(self, timeout: float | None = None) -> Outcome:
        """Follow the domain until it is destroyed or preserved, or ``timeout`` seconds pass."""
        with self.host.events(timeout=timeout, interval=self.interval) as stream:
            while True:
                outcome = self.check()
                if outcome is not None:
                    return outcome
                batch = stream.poll_once()  # wakes on a notification or after the interval
                if batch is None:
                    return Outcome.TIMEOUT
                for ev in batch:  # the events are for the log only: check() asks Xen itself
                    if ev.domid == self.domid:
                        log.debug("supervisor of %s: %s", self.config.name, ev)

    def check(self) -> Outcome | None:
        """Look at the followed domain once and act if it has shut down; None while there is more to follow."""
        try:
            info = self.domain._info()
        except NoSuchDomain:
            log.info("supervisor of %s: domain %d is gone", self.config.name, self.domid)
            return Outcome.GONE
        if info.uuid != self._uuid:
            return Outcome.GONE  # the domid was reused by someone else's domain
        if info.dying or not info.shutdown:
            return None
        reason = info.shutdown_reason
        assert reason is not None
        return self._apply(reason)

    # -- the actions -----------------------------------------------------------------------------------
    def _action_for(self, reason: ShutdownReason | int) -> Action | None:
        cfg = self.config
        table: dict[ShutdownReason | int, Action | None] = {
            ShutdownReason.poweroff: cfg.on_poweroff,
            ShutdownReason.reboot: cfg.on_reboot,
            ShutdownReason.crash: cfg.on_crash,
            ShutdownReason.watchdog: Action.DESTROY,
            ShutdownReason.suspend: None,
        }
        return table.get(reason, Action.PRESERVE)

    def _apply(self, reason: ShutdownReason | int) -> Outcome | None:
        action = self._action_for(reason)
        if action is None:
            return None  # suspended: whoever suspended it will resume or destroy it
        old = self.domain
        name = self.config.name
        if action in (Action.RESTART, Action.RENAME_RESTART):
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < self.restart_window] + [now]
            if len(self._restarts) > self.max_restarts:
                old.destroy()
                self._record(Applied(old.id, name, reason, Action.DESTROY))
                raise RestartLoop(f"domain {name} restarted {len(self._restarts) - 1} times within "
                                  f"{self.restart_window:.0f} s; destroyed it instead of restarting again")
        if action is Action.DESTROY:
            old.destroy()
            self._record(Applied(old.id, name, reason, action))
            return Outcome.DESTROYED
        if action is Action.PRESERVE:
            self._record(Applied(old.id, name, reason, action))
            return Outcome.PRESERVED
        renamed: str | None = None
        config = self.config
        if action is Action.RESTART:
            old.destroy()
            try:  # its memory comes back as Xen finishes tearing it down; the new domain needs it
                old.wait_gone(timeout=60)
            except XenError as e:
                log.warning("supervisor of %s: %s; building the new domain anyway", name, e)
        else:  # rename-restart: the dead domain stays, under another name; the new one needs its own uuid
            renamed = self._rename(old, f"{name}-{old.id}"[-64:].lstrip(" "))
            config = dataclasses.replace(config, uuid=_uuid.uuid4())
        new = self.host.create(config)
        new.start()
        self.config, self.domain, self._uuid = config, new, config.uuid
        self._record(Applied(old.id, name, reason, action, new_domid=new.id, renamed_to=renamed))
        return None

    def _rename(self, dom: Domain, new_name: str) -> str:
        xs = self.host.xenstore
        vm = f"/vm/{self._uuid}"

        def write(tx: object) -> None:
            tx.write(f"{dom.path}/name", new_name)  # type: ignore[attr-defined]
            tx.write(f"{vm}/name", new_name)  # type: ignore[attr-defined]

        xs.retry(write)
        return new_name

    def _record(self, a: Applied) -> None:
        log.info("supervisor: %s", a)
        self.applied.append(a)
        if self.on_action is not None:
            self.on_action(a)
