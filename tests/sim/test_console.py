"""A guest's console on the simulated host: the ring (we are the backend, event channel included), the pty
xenconsoled publishes, and xenconsoled's log."""

import os
import threading
import time
from pathlib import Path

import pytest

import xenpure
from xenpure.domain._console import GuestConsole
from xenpure.evtchn import EvtchnOps, EvtchnStat
from xenpure.testing import SimXen


def read_until(con: GuestConsole, text: str, timeout: float = 3.0) -> str:
    """Everything the console gives until ``text`` is in it (or ``timeout`` passes)."""
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        seen += con.read(timeout=0.1)
    return seen


def test_the_ring_backend_signals_the_guest_so_a_full_ring_drains(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    g = sim_xen.guests[sim_xen.add_guest("web").domid]
    lines = [f"line {i:03d} of a console that says more than its 2048-byte ring holds" for i in range(120)]
    with sim_host.domain("web").console() as con:
        assert con.source == "ring"
        for line in lines:
            g.print(line)
        assert len(g.console_backlog) > 4096  # the ring is full: the rest waits in the guest
        seen = read_until(con, lines[-1])
    # Only the backend's event tells the guest there is room again: without it the text stops at the ring's end.
    assert seen.splitlines()[-len(lines):] == lines
    assert g.console_backlog == bytearray()


def test_the_ring_read_wakes_on_the_guests_event(sim_host: xenpure.Host, sim_xen: SimXen,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from xenpure.domain import _console

    g = sim_xen.guests[sim_xen.add_guest("web").domid]
    monkeypatch.setattr(_console, "_RING_POLL", 30.0)  # no polling to fall back on: only the event wakes it
    with sim_host.domain("web").console() as con:
        assert "XENPURE-GUEST-UP" in con.read()
        assert con.read(timeout=0.2) == ""  # takes the event Xen raised at bind, waits out the rest
        later = threading.Timer(0.2, g.print, ["late line"])
        t0 = time.monotonic()
        later.start()
        try:
            assert "late line" in con.read(timeout=10)
        finally:
            later.join()
        assert time.monotonic() - t0 < 5  # woken by the guest's event, not by the end of a 30 s poll


def test_the_console_port_is_bound_while_open_and_free_again_after(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    domid = sim_xen.add_guest("web").domid
    port = sim_xen.guests[domid].console_port
    ops = EvtchnOps(sim_host.privcmd)
    kernel = sim_host.kernel
    _ = sim_host.xenstore  # opened once, before counting devices
    before = len(kernel.open_devices)  # type: ignore[attr-defined]
    assert ops.status(domid, port).state is EvtchnStat.unbound
    with sim_host.domain("web").console() as con:
        status = ops.status(domid, port)
        assert status.state is EvtchnStat.interdomain and status.remote_domid == 0
        # One backend at a time: a second one is refused, and leaves nothing open behind.
        with pytest.raises(xenpure.XenError, match=f"console port {port} is not free for dom0"):
            GuestConsole(sim_host.domain("web"))
        assert len(kernel.open_devices) == before + 2  # type: ignore[attr-defined]  # the mapping, the evtchn
        assert "XENPURE-GUEST-UP" in con.read()
    assert ops.status(domid, port).state is EvtchnStat.unbound  # the next backend (xenconsoled) may bind it
    assert len(kernel.open_devices) == before  # type: ignore[attr-defined]
    with sim_host.domain("web").console() as again:
        assert again.read() == ""  # the first reader consumed the boot lines


def test_a_ring_without_a_console_port_is_an_error(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    domid = sim_xen.add_guest("web").domid
    sim_xen.xenstored.rm(f"/local/domain/{domid}/console/port")
    _ = sim_host.xenstore  # opened once, before counting devices
    before = len(sim_host.kernel.open_devices)  # type: ignore[attr-defined]
    with pytest.raises(xenpure.XenError, match=f"domain {domid} has no console port"):
        sim_host.domain("web").console()
    assert len(sim_host.kernel.open_devices) == before  # type: ignore[attr-defined]


def test_the_pty_xenconsoled_publishes(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    domid = sim_xen.add_guest("web").domid
    master, slave = os.openpty()  # xenconsoled holds the master; console/tty names the other end
    try:
        sim_xen.xenstored.write(f"/local/domain/{domid}/console/tty", os.ttyname(slave))
        with sim_host.domain("web").console() as con:
            assert con.source == "pty"
            assert con.read() == ""  # output from now on, not the ring's history
            os.write(master, b"Linux version 6.1.0 (from the pty)\r\n")
            assert "Linux version 6.1.0 (from the pty)" in con.read(timeout=5)
            os.close(master)  # xenconsoled lets go as the domain dies: reads answer EIO, taken as no output
            master = -1
            assert con.read(timeout=0.1) == ""
            sim_host.domain("web").destroy()
            assert list(con.follow(poll=0.05)) == []  # ends by itself: the domain is gone
    finally:
        os.close(slave)
        if master >= 0:
            os.close(master)


def test_the_log_xenconsoled_writes(sim_host: xenpure.Host, sim_xen: SimXen, tmp_path: Path) -> None:
    sim_xen.add_guest("web")
    log = tmp_path / "guest-web.log"
    log.write_text("Linux version 6.1.0 (logged)\r\nXENPURE-GUEST-UP kernel\r\n")
    with GuestConsole(sim_host.domain("web"), log_dir=tmp_path) as con:
        assert con.source == "log"
        assert con.read() == "Linux version 6.1.0 (logged)\r\nXENPURE-GUEST-UP kernel\r\n"  # the whole history
        with log.open("a") as f:
            f.write("later\r\n")
        assert con.read(timeout=1) == "later\r\n"
