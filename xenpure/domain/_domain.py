"""One domain: inspect it, pause and resume it, shut it down, destroy it.

Rule 1: a ``Domain`` holds only its id and its host; every answer is asked of Xen (or xenstore) when the
method runs, and every blocking method takes a timeout and raises ``Timeout`` naming the state it saw.

The verbs, with libvirt's names where they differ:

    pause()      libvirt suspend   XEN_DOMCTL_pausedomain (counted: each pause needs its unpause)
    unpause()    libvirt resume    XEN_DOMCTL_unpausedomain
    shutdown()   libvirt shutdown  xenstore control/shutdown = "poweroff" when the guest advertises
                                   control/feature-poweroff, else SCHEDOP_remote_shutdown
    reboot()     libvirt reboot    the same with "reboot"
    destroy()    libvirt destroy   XEN_DOMCTL_destroydomain (retried while Xen answers EAGAIN), then the
                                   toolstack's xenstore entries are removed and xenstored releases the domain
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import NoSuchDomain, Timeout, TryAgain, XenError
from ..hypercall.abi.domctl import DomctlCmd
from ..hypercall.abi.sched import SCHED_REMOTE_SHUTDOWN, SchedOp, ShutdownReason
from ..hypercall.abi.xen import Hypercall
from ._console import GuestConsole
from ._types import DomainInfo, VcpuInfo

if TYPE_CHECKING:
    from ._host import Host

__all__ = ["DEFAULT_TIMEOUT", "Domain"]

log = logging.getLogger("xenpure.domain")

#: Seconds a blocking lifecycle call waits unless told otherwise.
DEFAULT_TIMEOUT = 60.0

#: The words a PV guest's shutdown watcher understands in control/shutdown, and the feature key it writes
#: to say it listens (observed on Linux guests: control/feature-poweroff = "1", owned by the guest).
_CONTROL_WORDS = {ShutdownReason.poweroff: "poweroff", ShutdownReason.reboot: "reboot"}


class Domain:
    """One domain on a ``Host``. It holds only the id: every property is asked of Xen when you call it."""

    def __init__(self, host: Host, domid: int) -> None:
        self.host = host
        self.id = domid

    def __repr__(self) -> str:
        return f"<Domain {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Domain) and other.host is self.host and other.id == self.id

    def __hash__(self) -> int:
        return hash((id(self.host), self.id))

    @property
    def name(self) -> str | None:
        """xenstore ``/local/domain/<id>/name``, or None."""
        return self.host.domain_name(self.id)

    @property
    def path(self) -> str:
        """The domain's home in xenstore."""
        return f"/local/domain/{self.id}"

    # -- inspect ----------------------------------------------------------------------------------------
    def info(self, *, name: bool = True) -> DomainInfo:
        """State, memory, vcpus, cpu time, shutdown reason and uuid (``XEN_DOMCTL_getdomaininfo``), and the
        name xenstore gives it (``/local/domain/<id>/name``, ``None`` if it has none).

        ``name=False`` leaves the name ``None`` and asks xenstore nothing: the hypercall alone, for a loop
        that polls the state, or when xenstored may not answer (stopped, or busy): the name's read would
        otherwise wait for it, up to the xenstore client's timeout, and raise ``Timeout``.

        Raises ``NoSuchDomain`` if the domain does not exist.
        """
        info = self._info()
        return dataclasses.replace(info, name=self.name) if name else info

    def _info(self) -> DomainInfo:
        """``info()`` without the name: the hypercall alone, for the loops that poll a domain's state."""
        _, rec, _ = self.host._domctl(DomctlCmd.getdomaininfo, self.id)
        info = DomainInfo.from_record(rec)
        if info.domid != self.id:
            # Some releases answer with the next domain up; that is not the one asked for.
            raise NoSuchDomain(errno.ESRCH, "domctl", "getdomaininfo", f"domain {self.id} does not exist")
        return info

    def exists(self) -> bool:
        """Whether Xen still knows the domain (a dying domain still exists)."""
        try:
            self._info()
        except NoSuchDomain:
            return False
        return True

    def vcpus(self) -> list[VcpuInfo]:
        """Per-vcpu state (``XEN_DOMCTL_getvcpuinfo`` for vcpu 0..max_vcpu_id)."""
        info = self._info()
        if info.max_vcpu_id == 0xFFFFFFFF:  # XEN_INVALID_MAX_VCPU_ID: no vcpus yet
            return []
        out = []
        for v in range(info.max_vcpu_id + 1):
            _, rec, _ = self.host._domctl(DomctlCmd.getvcpuinfo, self.id, {"vcpu": v})
            out.append(VcpuInfo.from_record(rec))
        return out

    # -- suspend / resume -------------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop the domain's vcpus (``XEN_DOMCTL_pausedomain``): libvirt's *suspend*.

        Xen counts controller pauses: each ``pause()`` needs its own ``unpause()``. Memory stays allocated;
        this is not save-to-disk. Xen refuses to pause the calling domain (``InvalidArgument``).
        """
        self.host._domctl(DomctlCmd.pausedomain, self.id)

    def unpause(self) -> None:
        """Let the domain run again (``XEN_DOMCTL_unpausedomain``): libvirt's *resume*.

        Raises ``InvalidArgument`` (EINVAL) if no controller pause is left to undo.
        """
        self.host._domctl(DomctlCmd.unpausedomain, self.id)

    def start(self) -> None:
        """Run a domain that ``Host.create`` left paused (``XEN_DOMCTL_unpausedomain``): vcpu 0 starts at the
        kernel's entry point. Raises ``InvalidArgument`` if it is not paused."""
        self.unpause()

    # -- stop -------------------------------------------------------------------------------------------
    def remote_shutdown(self, reason: ShutdownReason) -> None:
        """Put the domain in the shutdown state with ``reason`` (``SCHEDOP_remote_shutdown``).

        The guest is not asked: its vcpus stop at once, and the toolstack sees the reason in getdomaininfo.
        """
        lay = SCHED_REMOTE_SHUTDOWN.layout()
        pc = self.host.privcmd
        with pc.buffer(lay.size) as buf:
            buf.view[: lay.size] = lay.build(domain_id=self.id, reason=int(reason))
            pc.hypercall(Hypercall.sched_op, int(SchedOp.remote_shutdown), buf.address, subop="remote_shutdown")

    def shutdown(
        self,
        reason: ShutdownReason = ShutdownReason.poweroff,
        *,
        wait: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> DomainInfo | None:
        """Ask the guest to shut down, the cooperative way when it listens.

        A guest that advertises ``control/feature-poweroff`` (``feature-reboot`` for a reboot) in xenstore is
        asked by writing ``control/shutdown``; it then shuts itself down cleanly. Any other guest, and any
        reason other than poweroff/reboot, gets ``SCHEDOP_remote_shutdown``.

        With ``wait``, returns once Xen reports the domain shut down (its final ``DomainInfo``), or None if it
        was destroyed meanwhile (e.g. by xl's on_poweroff=destroy). Raises ``Timeout`` with the domain's
        state if the guest ignores the request for ``timeout`` seconds.
        """
        info = self._info()
        word = _CONTROL_WORDS.get(reason)
        if word is not None and not info.hvm and self._advertises(f"feature-{word}"):
            log.debug("domain %d: writing control/shutdown=%s", self.id, word)
            self.host.xenstore.write(f"{self.path}/control/shutdown", word)
        else:
            self.remote_shutdown(reason)
        if not wait:
            return None
        return self.wait_shutdown(timeout=timeout)

    def reboot(self, *, wait: bool = False, timeout: float = DEFAULT_TIMEOUT) -> DomainInfo | None:
        """``shutdown(ShutdownReason.reboot)``: the guest shuts down with reason reboot; whoever manages it
        (xl's on_reboot) builds it again."""
        return self.shutdown(ShutdownReason.reboot, wait=wait, timeout=timeout)

    def _advertises(self, feature: str) -> bool:
        try:
            return bytes(self.host.xenstore.read(f"{self.path}/control/{feature}")).strip() == b"1"
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EACCES):
                return False
            raise

    def wait_shutdown(self, *, timeout: float = DEFAULT_TIMEOUT) -> DomainInfo | None:
        """Block until Xen reports the domain shut down (or gone); see ``shutdown``.

        Wakes on xenstored's ``@releaseDomain`` watch (fired as domains shut down and die) and re-reads
        getdomaininfo at least every half second, so a lost watch cannot make it hang.
        """
        return self._wait(lambda i: i is None or i.shutdown or i.dying, "shut down", timeout)

    def wait_gone(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Block until Xen no longer knows the domain (destroyed and fully released)."""
        self._wait(lambda i: i is None, "disappear", timeout)

    def _wait(self, done: Any, what: str, timeout: float) -> DomainInfo | None:
        from ..xenstore import Client

        deadline = time.monotonic() + timeout
        token = f"xenpure-wait-{self.id}-{id(self)}"
        with Client.open(self.host.kernel) as watcher:
            watcher.watch("@releaseDomain", token)
            while True:
                try:
                    info: DomainInfo | None = self._info()
                except NoSuchDomain:
                    info = None
                if done(info):
                    return info
                left = deadline - time.monotonic()
                if left <= 0:
                    state = f"{info.state.value} ({info.state_letters})" if info else "gone"
                    raise Timeout(
                        f"domain {self.id} did not {what} within {timeout:g} s: it is {state}"
                        + ("; the guest may be ignoring the request: destroy() stops it for good"
                           if what == "shut down" else "")
                    )
                try:
                    watcher.next_watch_event(timeout=min(left, 0.5))
                except Timeout:
                    pass

    def destroy(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Destroy the domain now, then clean up after it.

        ``XEN_DOMCTL_destroydomain`` frees the domain's memory in preemptible steps, answering EAGAIN until it
        is done; it is reissued until Xen accepts (or ``timeout``). Then the toolstack's xenstore entries
        (``/local/domain/<id>``, its ``/vm/<uuid>`` and ``/libxl/<id>``) are removed and xenstored is told to
        release the domain. Raises ``NoSuchDomain`` if it does not exist.
        """
        if self.id == 0:
            raise XenError("refusing to destroy Domain-0")
        vm_path = self._read(f"{self.path}/vm")
        self._destroydomain(timeout)
        self.cleanup_xenstore(vm_path)

    def _destroydomain(self, timeout: float) -> None:
        """The hypercall half of ``destroy()``: ``XEN_DOMCTL_destroydomain``, reissued while Xen answers
        EAGAIN (it frees the domain's memory in preemptible steps), at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.host._domctl(DomctlCmd.destroydomain, self.id)
                return
            except TryAgain as e:
                if time.monotonic() > deadline:
                    raise Timeout(f"destroydomain of domain {self.id} still answered EAGAIN after {timeout:g} s") from e

    def cleanup_xenstore(self, vm_path: str | None = None) -> None:
        """Remove a dead domain's toolstack entries from xenstore and release it in xenstored."""
        xs = self.host.xenstore
        for path in (self.path, vm_path, f"/libxl/{self.id}"):
            if path:
                try:
                    xs.rm(path)
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        raise
        try:
            xs.release(self.id)
        except OSError as e:
            # Not introduced (never was, or xenstored already released it on VIRQ_DOM_EXC).
            if e.errno not in (errno.ENOENT, errno.EINVAL, errno.ESRCH):
                raise

    def _read(self, path: str) -> str | None:
        try:
            return bytes(self.host.xenstore.read(path)).decode()
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

    # -- console ----------------------------------------------------------------------------------------
    def console(self) -> GuestConsole:
        """The guest's console output (xenconsoled's log, its pty, or the console ring itself)."""
        return GuestConsole(self)

    # -- memory -----------------------------------------------------------------------------------------
    def set_max_memory(self, kib: int) -> None:
        """Cap the memory Xen lets the domain hold (``XEN_DOMCTL_max_mem``, in KiB)."""
        if kib <= 0:
            raise ValueError("maximum memory must be positive")
        self.host._domctl(DomctlCmd.max_mem, self.id, {"max_memkb": kib})

    def set_memory(self, kib: int) -> None:
        """Ask the guest's balloon driver to hold ``kib`` KiB (xenstore ``memory/target``).

        The guest adjusts at its own pace; ``info().memory_kib`` shows progress. Raises ``ValueError`` above
        the domain's maximum (``set_max_memory`` first).
        """
        info = self._info()
        if kib <= 0 or kib > info.max_memory_kib:
            raise ValueError(f"target {kib} KiB is outside 1..{info.max_memory_kib} KiB (the domain's maximum)")
        self.host.xenstore.write(f"{self.path}/memory/target", str(kib))
