"""xenstored on a Xen host (``xenpure xenstored --xen``): dom0's own ring, the rings INTRODUCE names, and
domains' deaths through VIRQ_DOM_EXC.

Rule 1: this module maps and binds; the daemon moves bytes; the core decides. Every ring served here was
mapped and bound here, and is undone here exactly once (RELEASE, the domain's death, or ``close``), unbind
and unmap after the daemon stopped reading it. Devices are opened only through the injected kernel
(``LinuxKernel`` in dom0, the simulator's ``SimKernel`` in tests), never a global.

What Xen and Linux provide underneath:

* **dom0's own ring.** When xenstored runs in dom0, dom0's kernel allocates its xenstore page and an unbound
  event channel (remote domain 0) and waits for a daemon. ``/dev/xen/xenbus_backend`` gives both: ``mmap``
  of one page at offset 0 is the page, ``IOCTL_XENBUS_BACKEND_EVTCHN`` returns the port. xenfs offers the
  same as ``/proc/xen/xsd_kva`` (mmap) and ``/proc/xen/xsd_port`` (the port as decimal text), the fallback
  when xenbus_backend is missing (the lab's 6.1 kernel has both). The daemon
  binds the port interdomain (EVTCHNOP_bind_interdomain to (0, port)) and rings it once, which tells the
  kernel a xenstored is there; dom0's kernel and /dev/xen/xenbus then speak through that ring as domain 0.
* **INTRODUCE(domid, gfn, port).** The toolstack filled grant entry 1 (``GNTTAB_RESERVED_XENSTORE``,
  public/grant_table.h) of the new domain with its xenstore page, granted to dom0; the ring is mapped
  through /dev/xen/gntdev (GNTTABOP_map_grant_ref underneath) and, if that fails (no grant table yet, a
  toolstack that does not fill it), through a foreign map of ``gfn`` (privcmd's MMAPBATCH_V2). ``port`` is
  the guest's unbound channel for dom0, bound interdomain. If the ring cannot be mapped, INTRODUCE answers
  the errno of the last attempt (the foreign map's; the grant map's error is logged): EPERM when ``gfn`` is
  not the domain's frame (Xen 4.17), ENOENT for a domain that does not exist; if the port cannot be bound,
  Xen's EINVAL (the port is not unbound for dom0). In every failure the mapping is undone before the reply
  leaves, and the domain is not introduced.
* **VIRQ_DOM_EXC.** Xen raises it in dom0 when a domain shuts down, crashes or dies. One
  getdomaininfolist then tells which introduced domains changed: one newly shut down fires @releaseDomain
  (xl's monitor waits for it to apply on_poweroff), one dying or gone is forgotten as RELEASE would forget
  it (its nodes, watches, permissions), its ring unmapped and unbound (a mapped page would keep a dying
  domain a zombie), and @releaseDomain fires.

Hostile rings: indices are bounded by ``XenstoreRing`` (a producer more than a ring ahead is XSA-72's
RINGIDX and the ring stops being served), lengths by the wire framer (XENSTORE_PAYLOAD_MAX); text read
from /proc/xen/xsd_port is bounded too.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import DeviceUnavailable, HypercallError, ProtocolError, XenError
from ...evtchn import EventChannels
from ...foreignmemory import ForeignMemory, FramesUnmapped
from ...gnttab import GrantDevice
from ...hypercall._device import device_ioctl, device_read
from ...hypercall.abi.event_channel import Virq
from ...hypercall.abi.grant_table import GnttabReserved
from ...hypercall.abi.linux_xenbus import IOCTL_XENBUS_BACKEND_EVTCHN
from ...kernel import Kernel
from .._doorbell import EvtchnDoorbell
from .._ring import XenstoreRing
from .._server_core import Output, ServerCore
from .._wire import Write

if TYPE_CHECKING:
    from ._daemon import Xenstored

__all__ = ["DOM0_NODES", "XenDomains", "seed_dom0_store"]

log = logging.getLogger("xenpure.xenstore.daemon.xen")

PAGE = 4096
#: Event channel ports are below 2**17 in every ABI Xen has (FIFO: 1 << 17); anything else is nonsense.
_MAX_PORT = 1 << 17

#: What the store holds before anyone writes to it, as (path, value), owner dom0, nobody else may read.
#: Observed in the lab: oxenstored 4.17 starts with /local, /local/domain, /tool and /tool/xenstored (its
#: binary's path; ours names the daemon); /local/domain/0/{name,domid} and /local/pool/0/name are
#: xen-init-dom0's, /local/domain/0/control/feature-* dom0's kernel's (over dom0's ring), as they are with
#: xenpure's daemon. oxenstored also lists @introduceDomain and @releaseDomain as nodes under /; they are
#: watch names, not nodes, and are left out.
DOM0_NODES: tuple[tuple[str, bytes], ...] = (
    ("/local", b""),
    ("/local/domain", b""),
    ("/tool", b""),
    ("/tool/xenstored", b"xenpure xenstored"),
)


def seed_dom0_store(core: ServerCore) -> None:
    """Create ``DOM0_NODES`` in the store (those missing), as dom0's xenstored starts: written by dom0
    through the core like any write, so each inherits the root's permissions (dom0's, nobody else's)."""
    conn = core.connect(0)
    try:
        for path, value in DOM0_NODES:
            if path not in core.store.nodes:
                core.call(conn, Write(path, value))
    finally:
        core.disconnect(conn)


class _Closeable(Protocol):
    def close(self) -> None: ...


@dataclass
class _Ring:
    """One ring this module serves: what maps it, its doorbell, and how it was reached."""

    domid: int
    page: Any  # GrantMapping, ForeignMapping or a device Mapping: .view, .close()
    bell: EvtchnDoorbell
    how: str
    extra: tuple[_Closeable, ...] = ()

    def close(self) -> None:
        """Unbind (closing the doorbell's handle), then unmap, then whatever else was opened for it."""
        for thing in (self.bell, self.page, *self.extra):
            try:
                thing.close()
            except (OSError, ValueError, BufferError) as e:  # BufferError: a view of the page still lives
                log.error("dom%d: closing %r: %s", self.domid, thing, e)


class XenDomains:
    """The ``--xen`` side of a ``Xenstored``: implements the core's ``DomainRings`` and owns every mapping,
    binding and handle it made. ``start`` serves dom0's ring and binds VIRQ_DOM_EXC; ``close`` undoes all."""

    def __init__(self, kernel: Kernel, daemon: Xenstored) -> None:
        self.kernel = kernel
        self.daemon = daemon
        self.core: ServerCore = daemon.core
        self.rings: dict[int, _Ring] = {}
        self._gntdev: GrantDevice | None = None
        self._foreign: ForeignMemory | None = None
        self._host: Any = None
        self._virq: EventChannels | None = None
        self._shut: set[int] = set()  # introduced domains last seen shut down

    # -- lifetime ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Seed the store (``DOM0_NODES``), become the core's ``rings``, serve dom0's ring, bind
        VIRQ_DOM_EXC; before the daemon's loop runs. Raises ``DeviceUnavailable`` or ``NotPrivileged`` if this
        is not a privileged dom0 (privcmd cannot be opened)."""
        from ...domain import Host

        self._host = Host(self.kernel)
        seed_dom0_store(self.core)
        self.core.rings = self
        try:
            self._serve_dom0()
        except (XenError, OSError) as e:
            log.error("dom0's own ring is not served (dom0's kernel and /dev/xen/xenbus will wait): %s", e)
        try:
            evt = EventChannels.open(self.kernel)
            try:
                evt.bind_virq(Virq.DOM_EXC)
            except BaseException:
                evt.close()
                raise
        except (XenError, OSError) as e:
            log.error("VIRQ_DOM_EXC not bound: domains' deaths will go unnoticed: %s", e)
        else:
            self._virq = evt
            self.daemon.watch_fd(evt.fileno(), self._on_dom_exc)
            log.info("VIRQ_DOM_EXC bound")

    def close(self) -> None:
        """Stop serving every ring, unbind and unmap them, close every handle. Idempotent."""
        if self.core.rings is self:
            self.core.rings = None
        for domid in sorted(self.rings):
            self.detach(domid)
        if self._virq is not None:
            self.daemon.unwatch_fd(self._virq.fileno())
            self._virq.close()
            self._virq = None
        for dev in (self._gntdev, self._foreign):
            if dev is not None:
                dev.close()
        self._gntdev = self._foreign = None
        if self._host is not None:
            self._host.close()  # also the kernel
            self._host = None

    # -- dom0's own ring --------------------------------------------------------------------------------
    def _dom0_page(self) -> tuple[Any, int, str, tuple[_Closeable, ...]]:
        """(mapping, port, how, devices to close): /dev/xen/xenbus_backend, else /proc/xen/xsd_kva+xsd_port."""
        try:
            dev = self.kernel.open("xenbus_backend")
        except DeviceUnavailable as e:
            log.info("%s: trying /proc/xen/xsd_kva and xsd_port", e)
        else:
            try:
                port = device_ioctl(dev, IOCTL_XENBUS_BACKEND_EVTCHN, bytearray(8))
                return dev.mmap(PAGE), _check_port(port, dev.path), dev.path, (dev,)
            except BaseException:
                dev.close()
                raise
        kva = self.kernel.open("xsd_kva")
        try:
            with self.kernel.open("xsd_port") as pdev:
                port = _parse_port(device_read(pdev, 32, f"read {pdev.path}"), pdev.path)
            return kva.mmap(PAGE), port, kva.path, (kva,)
        except BaseException:
            kva.close()
            raise

    def _serve_dom0(self) -> None:
        page, port, how, extra = self._dom0_page()
        try:
            bell = self._bind(0, port)
        except BaseException:
            page.close()
            for d in extra:
                d.close()
            raise
        r = _Ring(0, page, bell, how, extra)
        self.rings[0] = r
        self.daemon.serve_ring(0, XenstoreRing(page.view, back=True), bell)
        bell.notify()  # a daemon is here: dom0's kernel starts using its ring
        log.info("dom0's ring served: %s, port %d (local %d)", how, port, bell.port)

    # -- DomainRings: INTRODUCE and RELEASE ---------------------------------------------------------------
    def attach(self, domid: int, gfn: int, port: int) -> None:
        """Map ``domid``'s ring and bind ``port``; the daemon serves it from its next turn. Raises the
        ``OSError`` of the step that failed, with nothing left mapped or bound."""
        if domid in self.rings:
            self.detach(domid)  # a stale ring of an earlier domain with this id
        page, how = self._map_guest(domid, gfn)
        try:
            bell = self._bind(domid, port)
        except BaseException:
            page.close()
            raise
        self.rings[domid] = _Ring(domid, page, bell, how)
        # Queued, not served inline: we are inside the core's INTRODUCE, which must finish first.
        self.daemon.add_ring(domid, XenstoreRing(page.view, back=True), bell)
        log.info("dom%d introduced: ring by %s (gfn %#x), port %d (local %d)", domid, how, gfn, port, bell.port)

    def detach(self, domid: int) -> None:
        """Stop serving ``domid``'s ring, then unbind and unmap it. A domain without a ring: nothing."""
        r = self.rings.pop(domid, None)
        if r is None:
            return
        self.daemon.drop_rings(domid, "released")
        r.close()
        self._shut.discard(domid)
        log.info("dom%d: ring closed (%s)", domid, r.how)

    def _map_guest(self, domid: int, gfn: int) -> tuple[Any, str]:
        try:
            if self._gntdev is None:
                self._gntdev = GrantDevice.open(self.kernel)
            return self._gntdev.map_grant_ref(domid, int(GnttabReserved.XENSTORE)), "grant"
        except (XenError, OSError) as e:
            log.info("dom%d: grant %d not mappable (%s): foreign map of gfn %#x", domid,
                     int(GnttabReserved.XENSTORE), e, gfn)
        try:
            if self._foreign is None:
                self._foreign = ForeignMemory.open(self.kernel)
            return self._foreign.map(domid, [gfn]), "foreign"
        except FramesUnmapped as e:
            raise e.errors[0].error from None
        except HypercallError as e:
            if e.errno == errno.ESRCH:
                raise OSError(errno.ESRCH, f"no domain {domid}") from None
            raise

    def _bind(self, domid: int, port: int) -> EvtchnDoorbell:
        evt = EventChannels.open(self.kernel)
        try:
            return EvtchnDoorbell(evt.bind_interdomain(domid, port))
        except BaseException:
            evt.close()
            raise

    # -- VIRQ_DOM_EXC -----------------------------------------------------------------------------------
    def _on_dom_exc(self) -> None:
        assert self._virq is not None
        fired = []
        while (port := self._virq.pending(0)) is not None:
            fired.append(port)
        for port in fired:
            self._virq.unmask(port)  # re-arm before looking, so a change after the look fires again
        self.check_domains()

    def check_domains(self) -> list[Output]:
        """Compare the introduced domains with Xen's view (one getdomaininfolist) and act on what changed;
        returns the outputs delivered (for tests and logs)."""
        infos = {d.domid: d for d in self._host.domain_infos()}
        out: list[Output] = []
        for domid in sorted(self.core.domains):
            info = infos.get(domid)
            if info is None or info.dying:
                log.info("dom%d %s: released", domid, "is gone" if info is None else "is dying")
                out += self.core.domain_gone(domid)  # detaches the ring through the core
                self._shut.discard(domid)
            elif info.shutdown:
                if domid not in self._shut:
                    self._shut.add(domid)
                    log.info("dom%d shut down (code %d): @releaseDomain", domid, info.shutdown_code)
                    out += self.core.fire_special("@releaseDomain", domid)
            else:
                self._shut.discard(domid)  # e.g. resumed after a suspend
        self.daemon.deliver(out)
        return out


def _check_port(port: int, where: str) -> int:
    if not 0 < port < _MAX_PORT:
        raise ProtocolError(f"{where}: event channel port {port} is out of range")
    return port


def _parse_port(raw: bytes, where: str) -> int:
    text = raw.strip()
    if not text.isdigit() or len(text) > 7:
        raise ProtocolError(f"{where}: not a port number: {raw[:32]!r}")
    return _check_port(int(text), where)

