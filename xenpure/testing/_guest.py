"""Simulated PV guests: what a running Linux guest does that a toolstack can observe.

Rule 1: a simulated guest acts only through the interfaces a real guest has: its own xenstore connection
(advertising ``control/feature-poweroff``, watching ``control/shutdown``), its console ring page, and the
shutdown hypercall. Tests meet it through the same paths the library uses on real Xen.

What it models (as observed on Debian's kernel in the lab): on boot it writes the ``control/feature-*``
keys and prints its boot lines to the console ring; when ``control/shutdown`` says ``poweroff`` or
``reboot`` it clears the key, prints its last line and shuts down with that reason. Its console is what
Linux's hvc_xen does: output goes into the ``out`` ring, the guest signals its console port (unbound for
dom0 until a backend binds it) after writing, and what does not fit waits in the guest until the backend
signals the port back (it has consumed, there is room). ``obeys=False`` makes a
guest that ignores the request (for timeout tests); ``listens=False`` one that never advertised it.

``demo_xen()`` is the host ``xenpure --sim`` acts on: Domain-0 and one such guest, ``demo``.

``SimXenstoreFrontend`` is a guest kernel's xenstore ring for a xenstored of one's own (``xenstored --xen``
on a ``SimKernel``): the page the builder gave the domain, granted to dom0 at ``GNTTAB_RESERVED_XENSTORE``
as a toolstack fills it, the unbound port for dom0, and the front end a test drives (``device``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..hypercall.abi.grant_table import GnttabReserved, GrantType
from ..hypercall.abi.io_console import XENCONS_INTERFACE
from ..hypercall.abi.sched import ShutdownReason
from ..xenstore._ring import RingDevice, XenstoreRing
from ..xenstore._wire import Perm, PermAccess, Read, Watch, Write

if TYPE_CHECKING:
    from ._hypervisor import SimDomain, SimXen

__all__ = ["BOOT_LINES", "DEMO_GUEST", "SimGuest", "SimXenstoreFrontend", "demo_xen"]

BOOT_LINES = (
    "Linux version 6.1.0-sim (xenpure simulated guest)",
    "Booting paravirtualized kernel on Xen",
    "XENPURE-GUEST-UP kernel",
)

#: The name of the guest ``demo_xen()`` starts.
DEMO_GUEST = "demo"

_WORDS = {b"poweroff": ShutdownReason.poweroff, b"reboot": ShutdownReason.reboot, b"halt": ShutdownReason.poweroff}
_CONS = XENCONS_INTERFACE.layout()
_OUT_OFF = _CONS.offsetof("out")
_OUT_SIZE = _CONS.offsetof("in_cons") - _OUT_OFF  # sizeof(out)
_OUT_PROD = _CONS.offsetof("out_prod")
#: Console bytes a guest keeps while its ring is full (Linux's log buffer is bounded too).
BACKLOG_MAX = 64 * 1024


class SimGuest:
    """A running PV guest on the simulated hypervisor, with the xenstore entries a toolstack writes."""

    def __init__(
        self,
        xen: SimXen,
        domain: SimDomain,
        name: str,
        *,
        listens: bool = True,
        obeys: bool = True,
        boot_lines: tuple[str, ...] = BOOT_LINES,
    ) -> None:
        self.xen = xen
        self.domain = domain
        self.name = name
        self.obeys = obeys
        self.requests: list[str] = []
        store = xen.xenstored
        domid = domain.domid
        home = f"/local/domain/{domid}"
        vm = f"/vm/{domain.handle}"
        self.console_mfn = xen.memory.alloc(domid, 1)[0]
        #: Console output that did not fit in the ring yet (the hvc driver's buffer, bounded as dmesg is).
        self.console_backlog = bytearray()
        with xen.lock:
            #: The guest's console event channel, unbound for dom0 (the console backend binds it).
            self.console_port: int = xen.evtchn.alloc_unbound(domid, domid, 0)
            port = xen.evtchn.port(domid, self.console_port)
            port.listener = self._on_console_event
            port.masked = False
        # What the toolstack writes for a PV guest (the layout seen for `xl create` in the lab).
        for path, value in (
            (f"{vm}/name", name),
            (f"{vm}/uuid", str(domain.handle)),
            (f"{home}/name", name),
            (f"{home}/domid", str(domid)),
            (f"{home}/vm", vm),
            (f"{home}/memory/static-max", str(domain.max_pages * 4)),
            (f"{home}/memory/target", str(domain.tot_pages * 4)),
            (f"{home}/console/ring-ref", str(self.console_mfn)),
            (f"{home}/console/port", str(self.console_port)),
            (f"{home}/console/type", "xenpure-sim"),
        ):
            store.write(path, value)
        # Keys the guest writes itself are created empty and handed over to it (owner = the guest).
        for key in ("control/shutdown", "control/feature-poweroff", "control/feature-reboot", "data"):
            store.write(f"{home}/{key}", "")
            store.set_perms(f"{home}/{key}", [Perm(domid, PermAccess.NONE)])
        store.introduce(domid)
        # What the guest itself does once its kernel is up.
        self._conn = store.attach(domid, self._on_watch)
        if listens:
            for feature in ("feature-poweroff", "feature-reboot"):
                store.call_as(self._conn, Write(f"{home}/control/{feature}", b"1"))
        store.call_as(self._conn, Watch(f"{home}/control/shutdown", "shutdown"))
        for line in boot_lines:
            self.print(line)

    # -- the console --------------------------------------------------------------------------------------
    def print(self, line: str) -> None:
        """Write a line to the console, as the guest's hvc driver would: into the ring as far as it fits, the
        rest kept until the backend signals that it consumed (at most ``BACKLOG_MAX`` bytes; older ones go)."""
        with self.xen.lock:
            self.console_backlog += (line + "\r\n").encode()
            del self.console_backlog[:-BACKLOG_MAX]
            self._flush_console()

    def _flush_console(self) -> None:
        page = self.xen.memory.page(self.console_mfn)
        rec = _CONS.parse(page)
        prod, cons = rec.out_prod, rec.out_cons
        room = _OUT_SIZE - ((prod - cons) & 0xFFFFFFFF)
        if room <= 0 or not self.console_backlog:
            return
        chunk = self.console_backlog[:room]
        for byte in chunk:
            page[_OUT_OFF + prod % _OUT_SIZE] = byte
            prod = (prod + 1) & 0xFFFFFFFF
        page[_OUT_PROD : _OUT_PROD + 4] = prod.to_bytes(4, "little")
        del self.console_backlog[: len(chunk)]
        if self.console_port in self.xen.evtchn.ports.get(self.domain.domid, {}):
            self.xen.evtchn.send(self.domain.domid, self.console_port)  # dropped while no backend has bound it

    def _on_console_event(self, port: int) -> None:
        """The backend signalled the console port (it consumed): write what waited, then re-arm the port."""
        self._flush_console()
        if self.console_port in self.xen.evtchn.ports.get(self.domain.domid, {}):
            self.xen.evtchn.unmask(self.domain.domid, self.console_port)

    # -- control/shutdown ---------------------------------------------------------------------------------
    def _on_watch(self, path: str, token: str) -> None:
        store = self.xen.xenstored
        try:
            word = bytes(store.call_as(self._conn, Read(path)))
        except OSError:
            return  # the key was removed (the domain is going away)
        if not word:
            return  # the watch's first firing, or our own acknowledgement
        self.requests.append(word.decode())
        reason = _WORDS.get(word)
        if reason is None or not self.obeys or self.domain.shutdown_code is not None:
            return
        store.call_as(self._conn, Write(path, b""))
        self.print("reboot: Restarting system" if reason == ShutdownReason.reboot else "reboot: Power down")
        self.xen.shutdown_domain(self.domain, reason)

    def close(self) -> None:
        self.xen.xenstored.detach(self._conn)
        port = self.xen.evtchn.ports.get(self.domain.domid, {}).get(self.console_port)
        if port is not None and port.listener == self._on_console_event:
            port.listener = None


def demo_xen(release: str = "4.17") -> SimXen:
    """A fresh simulated host with something to act on, as ``xenpure --sim`` shows it: Domain-0 and one running
    PV guest, ``demo`` (domain 1, 128 MiB, 1 vcpu, its xenstore entries, a console ring holding its boot lines,
    a kernel that answers control/shutdown). ``connect("sim://")`` is the same host without the guest."""
    from ._hypervisor import SimXen

    xen = SimXen(release)
    xen.add_guest(DEMO_GUEST, memory_mib=128, vcpus=1)
    return xen


class SimXenstoreFrontend:
    """Domain ``domid``'s side of its xenstore ring: a page of its own (``gfn``: its MFN, as for a PV guest),
    granted to dom0 at ref ``GNTTAB_RESERVED_XENSTORE`` unless ``grant=False``, and ``port``, unbound for
    dom0. ``device()`` is the front end (``Client(front.device())`` is the guest's xenbus driver)."""

    def __init__(self, xen: SimXen, domid: int, *, grant: bool = True) -> None:
        from ._evtchn import SimPortDoorbell

        self.xen = xen
        self.domid = domid
        with xen.lock:
            self.gfn: int = xen.memory.alloc(domid, 1)[0]
            if grant:
                xen.gnttab.set_entry(domid, int(GnttabReserved.XENSTORE), int(GrantType.permit_access), 0, self.gfn)
            self.port: int = xen.evtchn.alloc_unbound(domid, domid, 0)
        self.bell = SimPortDoorbell(xen, domid, self.port)

    @property
    def ring(self) -> XenstoreRing:
        """The front end of the ring on the domain's own page."""
        return XenstoreRing(self.xen.memory.page(self.gfn))

    def device(self, *, poll: float = 0.0005) -> RingDevice:
        return RingDevice(self.ring, self.bell, path=f"dom{self.domid} xenstore ring", poll=poll)

    def close(self) -> None:
        self.bell.close()
