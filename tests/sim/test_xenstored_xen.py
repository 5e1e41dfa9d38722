"""xenpure's xenstored serving the simulated host's domains (``xenstored --xen`` on a ``SimKernel``).

The daemon runs the same code as in a real dom0: dom0's ring through /dev/xen/xenbus_backend (or
/proc/xen/xsd_kva + xsd_port), guest rings mapped through gntdev at GNTTAB_RESERVED_XENSTORE or a foreign
map of the gfn, bound through /dev/xen/evtchn, deaths noticed through VIRQ_DOM_EXC. The guests' side is
driven through ``XenstoreRing``/``RingDevice`` front ends on the guests' own pages and ports.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xenpure import errors as E
from xenpure.domain import Host
from xenpure.hypercall.abi.event_channel import EvtchnStat
from xenpure.hypercall.abi.grant_table import GnttabReserved
from xenpure.hypercall.abi.sched import ShutdownReason
from xenpure.kernel import LinuxKernel
from xenpure.testing import SimKernel, SimXen
from xenpure.testing._guest import SimXenstoreFrontend
from xenpure.testing._xenstored import dom0_xenbus
from xenpure.xenstore import Client, Perm, PermAccess, RingErrorCode, WatchEvent
from xenpure.xenstore.server import DOM0_NODES, ServerCore, XenDomains, Xenstored

T = 10.0  # seconds: generous, never asserted on


class Daemon:
    """A ``--xen`` daemon on ``xen`` in a thread, its toolstack socket, and the guests made for it."""

    def __init__(self, xen: SimXen, sock: Path, devices: tuple[str, ...] | None = None) -> None:
        self.xen = xen
        self.sock = sock
        self.kernel = SimKernel(xen) if devices is None else SimKernel(xen, devices=devices)
        self.core = ServerCore()
        self.daemon = Xenstored(self.core, socket_path=str(sock))
        self.domains = XenDomains(self.kernel, self.daemon)
        self.domains.start()
        ready = threading.Event()
        self.thread = threading.Thread(target=self.daemon.serve, kwargs={"ready": ready}, daemon=True)
        self.thread.start()
        ready.wait(T)
        self.clients: list[Client] = []
        self.fronts: list[SimXenstoreFrontend] = []

    def toolstack(self) -> Client:
        """A dom0 client on the daemon's socket (what xl uses)."""
        c = Client(LinuxKernel().connect_socket(str(self.sock)), timeout=T)
        self.clients.append(c)
        return c

    def guest(self, *, grant: bool = True, introduce: bool = True) -> tuple[int, SimXenstoreFrontend]:
        """A new domain with its xenstore page and port; its home made and handed to it, then introduced."""
        d = self.xen.add_domain()
        front = SimXenstoreFrontend(self.xen, d.domid, grant=grant)
        self.fronts.append(front)
        if introduce:
            xs = self.toolstack()
            home = f"/local/domain/{d.domid}"
            xs.mkdir(home)
            xs.set_perms(home, (Perm(d.domid, PermAccess.NONE),))
            xs.introduce(d.domid, front.gfn, front.port)
        return d.domid, front

    def client_of(self, front: SimXenstoreFrontend) -> Client:
        c = Client(front.device(), timeout=T)  # type: ignore[arg-type]
        self.clients.append(c)
        return c

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.daemon.stop()
        self.thread.join(T)
        self.domains.close()
        for f in self.fronts:
            f.close()


@pytest.fixture
def xsd(sim_xen: SimXen, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(sim_xen, tmp_path / "socket")
    yield d
    d.stop()
    assert not d.thread.is_alive()
    # close undid everything: every device handle (evtchn, gntdev, privcmd, xenbus_backend) and mapping
    assert d.kernel.open_devices == set()
    assert d.kernel.live_mappings == 0


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    ev = threading.Event()
    for _ in range(int(T / 0.01)):
        if predicate():
            return
        ev.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def released(xs: Client) -> None:
    """Wait for @releaseDomain on a connection that watches it (its first firing already taken)."""
    assert xs.next_watch_event(timeout=T) == WatchEvent("@releaseDomain", "rel")


# -- dom0's own ring ------------------------------------------------------------------------------------


def test_dom0s_kernel_speaks_as_dom0_through_its_ring(xsd: Daemon) -> None:
    front = dom0_xenbus(xsd.xen).front()
    with Client(front, timeout=T) as kernel_xenbus:  # type: ignore[arg-type]
        kernel_xenbus.write("/local/domain/0/control/feature-poweroff", "1")
        assert kernel_xenbus.read("/tool") == b""  # dom0 is privileged: it reads an n0 node
    xs = xsd.toolstack()
    assert xs.read("/local/domain/0/control/feature-poweroff") == b"1"
    assert xsd.domains.rings[0].how == "/dev/xen/xenbus_backend"


def test_dom0s_ring_through_proc_xen_when_xenbus_backend_is_missing(sim_xen: SimXen, tmp_path: Path) -> None:
    devices = ("privcmd", "hypercall", "evtchn", "gntdev", "xsd_kva", "xsd_port")
    d = Daemon(sim_xen, tmp_path / "socket", devices)
    try:
        assert d.domains.rings[0].how == "/proc/xen/xsd_kva"
        with Client(dom0_xenbus(sim_xen).front(), timeout=T) as kernel_xenbus:  # type: ignore[arg-type]
            kernel_xenbus.write("/local/domain/0/name", "Domain-0")
        assert d.toolstack().read("/local/domain/0/name") == b"Domain-0"
    finally:
        d.stop()


def test_the_store_starts_with_dom0s_nodes(xsd: Daemon) -> None:
    xs = xsd.toolstack()
    for path, value in DOM0_NODES:
        assert xs.read(path) == value
        assert xs.get_perms(path) == (Perm(0, PermAccess.NONE),)
    assert set(xs.directory("/")) == {"local", "tool"}
    assert xs.directory("/tool") == ("xenstored",)


# -- INTRODUCE: the guest's ring ------------------------------------------------------------------------


def test_an_introduced_guest_reads_writes_and_watches_over_its_ring(xsd: Daemon) -> None:
    xs = xsd.toolstack()
    xs.watch("@introduceDomain", "intro")
    assert xs.next_watch_event(timeout=T) == WatchEvent("@introduceDomain", "intro")
    domid, front = xsd.guest()
    assert xs.next_watch_event(timeout=T) == WatchEvent("@introduceDomain", "intro")
    assert xsd.domains.rings[domid].how == "grant"
    assert xsd.xen.gnttab.in_use(domid, int(GnttabReserved.XENSTORE))  # dom0 maps it: Xen counts the map
    g = xsd.client_of(front)
    g.write("data/hello", "from the guest")
    assert xs.read(f"/local/domain/{domid}/data/hello") == b"from the guest"
    g.watch("control/shutdown", "sd")
    assert g.next_watch_event() == WatchEvent("control/shutdown", "sd")
    xs.write(f"/local/domain/{domid}/control/shutdown", "poweroff")
    assert g.next_watch_event() == WatchEvent("control/shutdown", "sd")
    assert g.read("control/shutdown") == b"poweroff"
    with pytest.raises(E.PermissionDenied):
        g.read("/tool")  # the guest speaks as itself, unprivileged
    assert g.get_domain_path(domid) == f"/local/domain/{domid}"


def test_without_the_grant_the_ring_is_mapped_by_its_gfn(xsd: Daemon) -> None:
    domid, front = xsd.guest(grant=False)
    assert xsd.domains.rings[domid].how == "foreign"
    g = xsd.client_of(front)
    g.write("data/x", "1")
    assert xsd.toolstack().read(f"/local/domain/{domid}/data/x") == b"1"


def test_a_second_identical_introduce_is_a_no_op(xsd: Daemon) -> None:
    domid, front = xsd.guest()
    ring = xsd.domains.rings[domid]
    xsd.toolstack().introduce(domid, front.gfn, front.port)
    assert xsd.domains.rings[domid] is ring
    with pytest.raises(E.Exists):
        xsd.toolstack().introduce(domid, front.gfn + 1, front.port)


# -- a bad INTRODUCE: the precise error, nothing left behind -----------------------------------------------


def _leftovers(xsd: Daemon) -> tuple[int, int, int]:
    evt = sum(1 for dev in xsd.kernel.open_devices if dev.name in ("evtchn",))
    return xsd.kernel.live_mappings, evt, len(xsd.domains.rings)


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("no grant, not its gfn", E.XenstorePermission),  # EPERM: Xen refuses a frame the domain does not own
        ("bad port", E.XenstoreInvalid),  # EINVAL: the port is not unbound for dom0
        ("no such domain", E.NoEntry),  # ENOENT
    ],
)
def test_a_failed_introduce_answers_the_precise_error_and_leaves_nothing(
    xsd: Daemon, case: str, error: type[Exception]
) -> None:
    xs = xsd.toolstack()
    xs.watch("@introduceDomain", "intro")
    assert xs.next_watch_event(timeout=T) == WatchEvent("@introduceDomain", "intro")
    d = xsd.xen.add_domain()
    front = SimXenstoreFrontend(xsd.xen, d.domid, grant=case != "no grant, not its gfn")
    xsd.fronts.append(front)
    before = _leftovers(xsd)
    domid, gfn, port = d.domid, front.gfn, front.port
    if case == "no grant, not its gfn":
        gfn = dom0_xenbus(xsd.xen).mfn  # a frame, but dom0's
    elif case == "bad port":
        port = front.port + 100
    else:
        domid = 999
    with pytest.raises(error):
        xs.introduce(domid, gfn, port)
    assert not xs.is_domain_introduced(domid)
    assert _leftovers(xsd) == before
    assert not xsd.xen.gnttab.in_use(d.domid, int(GnttabReserved.XENSTORE))
    assert front.bell.state == EvtchnStat.unbound
    # nothing fired; a good INTRODUCE afterwards works and is the next event
    xs.introduce(d.domid, front.gfn, front.port)
    assert xs.next_watch_event(timeout=T) == WatchEvent("@introduceDomain", "intro")


# -- RELEASE and death ------------------------------------------------------------------------------------


def test_release_closes_the_ring_and_fires_releasedomain(xsd: Daemon) -> None:
    xs = xsd.toolstack()
    domid, front = xsd.guest()
    g = xsd.client_of(front)
    g.write("data/mine", "1")
    assert front.bell.state == EvtchnStat.interdomain
    xs.watch("@releaseDomain", "rel")
    assert xs.next_watch_event(timeout=T) == WatchEvent("@releaseDomain", "rel")
    xs.release(domid)
    released(xs)
    assert domid not in xsd.domains.rings
    assert not xsd.xen.gnttab.in_use(domid, int(GnttabReserved.XENSTORE))
    assert front.bell.state == EvtchnStat.unbound  # dom0 closed its end: the guest's port is unbound again
    with pytest.raises(E.NoEntry):
        xs.read(f"/local/domain/{domid}/data/mine")  # the guest's nodes went with it
    assert not xs.is_domain_introduced(domid)


def test_a_guest_shutting_down_fires_releasedomain_and_stays_introduced(xsd: Daemon) -> None:
    xs = xsd.toolstack()
    domid, _ = xsd.guest()
    xs.watch("@releaseDomain", "rel")
    assert xs.next_watch_event(timeout=T) == WatchEvent("@releaseDomain", "rel")
    xsd.xen.shutdown_domain(xsd.xen.domains[domid], ShutdownReason.poweroff)  # VIRQ_DOM_EXC in dom0
    released(xs)
    assert xs.is_domain_introduced(domid)
    assert domid in xsd.domains.rings
    xs.write("/tool/after", "1")  # nothing else fired meanwhile: the next event is a later change
    xs.watch("/tool/after", "after")
    assert xs.next_watch_event(timeout=T) == WatchEvent("/tool/after", "after")


def test_a_destroyed_guest_is_forgotten_its_ring_closed(xsd: Daemon, sim_host: Host) -> None:
    xs = xsd.toolstack()
    domid, front = xsd.guest()
    xsd.client_of(front).write("data/mine", "1")
    xs.watch("@releaseDomain", "rel")
    assert xs.next_watch_event(timeout=T) == WatchEvent("@releaseDomain", "rel")
    sim_host.domain(domid).destroy()  # XEN_DOMCTL_destroydomain: VIRQ_DOM_EXC; the domain is gone
    released(xs)
    wait_for(lambda: domid not in xsd.domains.rings, "the ring to close")
    assert not xs.is_domain_introduced(domid)
    with pytest.raises(E.NoEntry):
        xs.read(f"/local/domain/{domid}")
    # dom0's end of the guest's channel was closed, not left unbound for a dead domain
    assert [p for p in xsd.xen.evtchn.ports.get(0, {}).values() if p.remote_dom == domid] == []


def test_a_hostile_ring_index_stops_that_ring_only(xsd: Daemon) -> None:
    _, front = xsd.guest()
    other, front2 = xsd.guest()
    page = xsd.xen.memory.page(front.gfn)
    page[2052:2056] = (5000).to_bytes(4, "little")  # req_prod 5000 bytes ahead of req_cons 0 (XSA-72)
    front.bell.notify()
    wait_for(lambda: front.ring.error == RingErrorCode.RINGIDX, "the ring's error")
    xsd.client_of(front2).write("data/ok", "1")
    assert xsd.toolstack().read(f"/local/domain/{other}/data/ok") == b"1"


def test_a_hostile_length_stops_that_ring_with_a_protocol_error(xsd: Daemon) -> None:
    domid, front = xsd.guest()
    other, front2 = xsd.guest()
    # a READ header claiming 70000 payload bytes (XENSTORE_PAYLOAD_MAX is 4096): never buffered, refused
    header = (2).to_bytes(4, "little") + (1).to_bytes(4, "little") + bytes(4) + (70000).to_bytes(4, "little")
    assert front.ring.write(header) == len(header)
    front.bell.notify()
    wait_for(lambda: front.ring.error == RingErrorCode.PROTO, "the ring's error")
    assert xsd.toolstack().is_domain_introduced(domid)  # the domain stays; only its ring is dead
    xsd.client_of(front2).write("data/ok", "1")
    assert xsd.toolstack().read(f"/local/domain/{other}/data/ok") == b"1"
    xsd.toolstack().release(domid)  # and the release still unmaps and unbinds it
    assert domid not in xsd.domains.rings
    assert not xsd.xen.gnttab.in_use(domid, int(GnttabReserved.XENSTORE))
