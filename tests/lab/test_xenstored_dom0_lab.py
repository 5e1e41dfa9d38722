"""xenpure's xenstored as dom0's xenstored on real Xen 4.17 (``tools/xenlab --xenstored xenpure``).

Debian's /etc/init.d/xen started ``xenpure xenstored --xen`` in oxenstored's place before anything else
used xenstore: xen-init-dom0, dom0's kernel (through its own ring), xenconsoled and every ``xl`` below
talk to it. Here: Debian's xenstore tools over the socket, /dev/xen/xenbus through dom0's ring, and the
whole life of an ``xl create``d PV guest whose kernel speaks xenstore over the ring INTRODUCE mapped.

Without ``XENPURE_LAB_XENSTORED=xenpure`` (set by tools/xenlab) every test is skipped with that reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from xenpure import errors as E
from xenpure.kernel import LinuxKernel
from xenpure.xenstore import Client

pytestmark = pytest.mark.skipif(
    os.environ.get("XENPURE_LAB_XENSTORED") != "xenpure",
    reason="dom0's xenstored is not xenpure's here: run tools/xenlab --xenstored xenpure -- ...",
)

PID_FILE = Path("/run/xenstore.pid")  # Debian's init script passes --pid-file /run/xenstore.pid
DAEMON_LOG = Path("/mnt/out/xenstored.log")
T = 120.0  # seconds; TCG is slow, timeouts are generous and never asserted on

Wait = Callable[[Callable[[], bool], float, str], None]


def xs_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    """One of Debian's xenstore-* tools; ``-s`` where given forces the socket."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=T, stdin=subprocess.DEVNULL)


def sock() -> Client:
    return Client(LinuxKernel().connect_socket("/run/xenstored/socket"), timeout=T)


def daemon_log() -> str:
    return DAEMON_LOG.read_text(errors="replace") if DAEMON_LOG.exists() else ""


def test_dom0s_xenstored_is_xenpures() -> None:
    pid = int(PID_FILE.read_text().split()[0])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"xenstored" in cmdline and b"--xen" in cmdline and b"xenpure" in cmdline, cmdline
    log = daemon_log()
    assert "dom0's ring served" in log, log[-3000:]
    assert "VIRQ_DOM_EXC bound" in log, log[-3000:]


def test_debians_xenstore_tools_over_the_socket() -> None:
    path = f"/tool/xenpure-lab/t{os.getpid()}"
    w = xs_tool("xenstore-write", "-s", path, "written by xenstore-write")
    assert w.returncode == 0, w.stderr
    r = xs_tool("xenstore-read", "-s", path)
    assert (r.returncode, r.stdout.strip()) == (0, "written by xenstore-write"), r.stderr
    ls = xs_tool("xenstore-ls", "-s", "-f", "/tool/xenpure-lab")
    assert f'{path} = "written by xenstore-write"' in ls.stdout, ls.stdout + ls.stderr
    assert xs_tool("xenstore-rm", "-s", path).returncode == 0
    assert xs_tool("xenstore-read", "-s", path).returncode != 0
    # what xen-init-dom0 wrote when the init script ran it against this daemon
    assert xs_tool("xenstore-read", "-s", "/local/domain/0/name").stdout.strip() == "Domain-0"


def test_dom0s_kernel_and_dev_xen_xenbus_use_dom0s_ring() -> None:
    with sock() as xs:
        # dom0's kernel advertises what it supports through its own ring, as under oxenstored
        assert xs.read("/local/domain/0/control/feature-poweroff") == b"1"
    path = f"/tool/xenpure-lab/xenbus{os.getpid()}"
    with Client(LinuxKernel().open("xenbus"), timeout=T) as xenbus:  # /dev/xen/xenbus: dom0's kernel's ring
        xenbus.write(path, "through dom0's ring")
        xenbus.watch(path, "tok")
        assert xenbus.next_watch_event().path == path
        with sock() as xs:
            assert xs.read(path) == b"through dom0's ring"
            xs.write(path, "changed over the socket")
        assert xenbus.next_watch_event().path == path
        assert xenbus.read(path) == b"changed over the socket"
        xenbus.rm(path)


def test_xl_creates_a_guest_that_boots_over_its_ring(make_guest, xl, wait) -> None:  # type: ignore[no-untyped-def]
    g = make_guest()
    domid, name = g.domid, g.name
    g.wait_console()  # xenconsoled found the console through xenstore
    assert name in xl.list()
    home = f"/local/domain/{domid}"
    with sock() as xs:
        assert xs.is_domain_introduced(domid)
        # the guest's kernel wrote these itself, over the ring INTRODUCE mapped
        wait(lambda: _read(xs, f"{home}/control/feature-poweroff") == b"1", T, "the guest's feature-poweroff")
    assert f"dom{domid} introduced: ring by grant" in daemon_log(), daemon_log()[-3000:]


def test_xl_shutdown_w_completes(make_guest, xl, wait) -> None:  # type: ignore[no-untyped-def]
    g = make_guest()
    domid, name = g.domid, g.name
    g.wait_console()
    # xl writes control/shutdown; the guest reads it over its ring and powers off; Xen raises VIRQ_DOM_EXC;
    # the daemon fires @releaseDomain; xl's wait sees the shutdown and destroys the domain (on_poweroff).
    xl("shutdown", "-w", name)
    wait(lambda: xl.domid(name) is None, T, f"{name} to go")
    _gone_from_the_store(domid, wait)
    log = daemon_log()
    assert f"dom{domid} shut down" in log, log[-3000:]


def test_xl_destroy_leaves_nothing_in_the_store(make_guest, xl, wait) -> None:  # type: ignore[no-untyped-def]
    g = make_guest()
    domid, name = g.domid, g.name
    g.wait_console()
    with sock() as xs:
        vm = xs.read(f"/local/domain/{domid}/vm").decode()
    xl("destroy", name)
    wait(lambda: xl.domid(name) is None, T, f"{name} to go")
    _gone_from_the_store(domid, wait)
    with sock() as xs:
        assert _read(xs, vm) is None
        assert _read(xs, f"/libxl/{domid}") is None


def test_a_bad_introduce_answers_enoent_and_leaves_nothing() -> None:
    pid = int(PID_FILE.read_text().split()[0])

    def held() -> tuple[int, int]:
        """The daemon's open descriptors, and its mappings of Xen devices (grant and foreign maps)."""
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        return len(os.listdir(f"/proc/{pid}/fd")), sum("/dev/xen/" in line for line in maps)

    with sock() as xs:
        with pytest.raises(E.NoEntry):
            xs.introduce(4000, 0x1000, 5)  # no such domain: neither the grant nor the frame maps
        before = held()  # gntdev and privcmd stay open once used
        for domid in (4001, 4002, 4003):
            with pytest.raises(E.NoEntry):
                xs.introduce(domid, 0x1000, 5)
            assert not xs.is_domain_introduced(domid)
        assert held() == before
    assert "INTRODUCE dom4003 gfn 0x1000 port 5" in daemon_log()


def _read(xs: Client, path: str) -> bytes | None:
    try:
        return xs.read(path)
    except FileNotFoundError:
        return None


def _gone_from_the_store(domid: int, wait: Wait) -> None:
    with sock() as xs:
        wait(lambda: not xs.is_domain_introduced(domid), T, f"domain {domid} to be released")
        assert _read(xs, f"/local/domain/{domid}") is None
        dump = xs_tool("xenstore-ls", "-s", "-f", "/").stdout
        assert f"/local/domain/{domid}/" not in dump and f"/libxl/{domid}/" not in dump, dump
    wait(lambda: f"dom{domid}: ring closed" in daemon_log(), T, f"domain {domid}'s ring to close")
