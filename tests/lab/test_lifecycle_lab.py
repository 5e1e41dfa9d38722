"""The lifecycle verbs, events and console against guests started by `xl create`, checked with `xl list`.

The lab guest's config has on_poweroff="destroy", on_reboot="restart", on_crash="destroy": xl's own monitor
(left behind by `xl create`) acts on each shutdown, so after a poweroff or crash the guest leaves `xl list`,
and after a reboot it comes back under the same name with a new domid.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import xenpure
from xenpure import DomainState, EventKind
from xenpure.hypercall.abi.sched import ShutdownReason


@pytest.fixture
def host() -> Iterator[xenpure.Host]:
    with xenpure.connect() as h:
        yield h


def _xenstore_read(path: str) -> str | None:
    out = subprocess.run(["xenstore-read", path], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else None


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`xenpure ARGS` as a user runs it in dom0."""
    return subprocess.run([sys.executable, "-m", "xenpure", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def cli_ok(*args: str, timeout: float = 180) -> str:
    """`xenpure ARGS`, which must succeed; its stdout."""
    out = cli(*args, timeout=timeout)
    assert out.returncode == 0, f"xenpure {' '.join(args)} exited {out.returncode}; stderr:\n{out.stderr}"
    return out.stdout


class Background:
    """`xenpure ARGS` left running (a follow), its stdout and stderr read with deadlines, never a blocking read.
    Leaving the ``with`` kills it if it is still running."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "xenpure", *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = b""
        self.err = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout.fileno(), selectors.EVENT_READ, "out")
        self._sel.register(self.proc.stderr.fileno(), selectors.EVENT_READ, "err")

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._sel.close()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()

    def _pump(self, timeout: float) -> bool:
        """Read what comes within ``timeout`` seconds; False once both streams are at their end."""
        if not self._sel.get_map():
            return False
        for key, _ in self._sel.select(max(0.0, timeout)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                self._sel.unregister(key.fd)
            elif key.data == "out":
                self.out += chunk
            else:
                self.err += chunk
        return True

    def wait_for(self, text: str, *, stream: str = "out", timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in (self.out if stream == "out" else self.err):
            left = deadline - time.monotonic()
            if left <= 0 or not self._pump(min(left, 1.0)):
                raise AssertionError(f"{text!r} not on the {stream} of {self.proc.args} within {timeout:g} s "
                                     f"(exit {self.proc.poll()}); stdout:\n{self.text}\nstderr:\n{self.errors}")

    def finish(self, timeout: float = 120) -> int:
        """Wait for it to exit by itself (within ``timeout`` seconds) with all of its output; its exit status."""
        deadline = time.monotonic() + timeout
        while self._pump(min(max(0.0, deadline - time.monotonic()), 1.0)) and time.monotonic() < deadline:
            pass
        try:
            return self.proc.wait(max(0.0, deadline - time.monotonic()) + 1)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.proc.args} still runs after {timeout:g} s; stdout:\n{self.text}\n"
                                 f"stderr:\n{self.errors}") from None

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    @property
    def errors(self) -> str:
        return self.err.decode(errors="replace")


def _gone_from_xl(xl, wait, guest, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    """Wait until neither the guest's name nor its domid is in `xl list` (which lists every domain Xen still
    has, a dying one too): xl's monitor destroys a guest that powered off or crashed (on_poweroff/on_crash
    = "destroy")."""

    def gone() -> bool:
        rows = xl.list()
        return guest.name not in rows and guest.domid not in {r.domid for r in rows.values()}

    wait(gone, timeout, f"{guest.name} (domain {guest.domid}) to leave `xl list`")


def _back_in_xl(xl, wait, name: str, old_domid: int, timeout: float = 180) -> int:  # type: ignore[no-untyped-def]
    """xl's monitor restarts a guest that rebooted (on_reboot="restart"): the same name, a new domid."""
    wait(lambda: xl.domid(name) not in (None, old_domid), timeout, f"{name} to come back under a new domid")
    domid: int = xl.domid(name)
    return domid


def test_events_in_order_exactly_once(host: xenpure.Host, make_guest, xl) -> None:  # type: ignore[no-untyped-def]
    with host.events(timeout=240) as stream:
        guest = make_guest()
        seen: list[tuple[EventKind, object]] = []

        def next_for_guest() -> EventKind:
            for ev in stream:
                if ev.domid == guest.domid:
                    seen.append((ev.kind, ev.reason))
                    return ev.kind
            raise AssertionError(f"the event stream ended; seen so far: {seen}")

        assert next_for_guest() is EventKind.INTRODUCED
        guest.wait_console()  # its kernel is up and listens on control/shutdown
        d = host.domain(guest.domid)
        d.pause()
        assert xl.list()[guest.name].state[2] == "p"
        assert next_for_guest() is EventKind.PAUSED
        d.unpause()
        assert next_for_guest() is EventKind.UNPAUSED
        d.shutdown()
        assert next_for_guest() is EventKind.SHUTDOWN
        assert next_for_guest() is EventKind.DESTROYED  # xl's on_poweroff="destroy"
    assert seen == [
        (EventKind.INTRODUCED, None),
        (EventKind.PAUSED, None),
        (EventKind.UNPAUSED, None),
        (EventKind.SHUTDOWN, ShutdownReason.poweroff),
        (EventKind.DESTROYED, None),
    ]
    assert guest.name not in xl.list()


def test_shutdown_wait_returns_once_the_guest_is_down(host: xenpure.Host, guest, xl, wait) -> None:  # type: ignore[no-untyped-def]
    guest.wait_console()
    d = host.domain(guest.domid)
    assert _xenstore_read(f"/local/domain/{guest.domid}/control/feature-poweroff") == "1"
    info = d.shutdown(wait=True, timeout=120)
    # Either we saw it shut down, or xl's monitor had already destroyed it.
    assert info is None or info.shutdown_reason is ShutdownReason.poweroff
    row = xl.list().get(guest.name)
    assert row is None or row.state[3] == "s", row  # shut down as xl sees it, or already destroyed
    assert "reboot: " in guest.wait_console("reboot: ", timeout=30)  # the kernel's last words
    _gone_from_xl(xl, wait, guest)


def test_shutdown_of_a_guest_that_cannot_answer_times_out(host: xenpure.Host, guest, xl) -> None:  # type: ignore[no-untyped-def]
    guest.wait_console()
    d = host.domain(guest.domid)
    d.pause()  # a paused guest cannot act on the request
    with pytest.raises(xenpure.Timeout, match=r"did not shut down within 3 s: it is paused \(--p---\)"):
        d.shutdown(wait=True, timeout=3)
    assert xl.list()[guest.name].state[2] == "p"


def test_destroy_leaves_nothing_in_xl_list_or_xenstore(host: xenpure.Host, guest, xl) -> None:  # type: ignore[no-untyped-def]
    vm = _xenstore_read(f"/local/domain/{guest.domid}/vm")
    assert vm is not None
    d = host.domain(guest.domid)
    d.destroy(timeout=60)
    d.wait_gone(timeout=60)
    assert guest.name not in xl.list()
    assert _xenstore_read(f"/local/domain/{guest.domid}/name") is None
    assert _xenstore_read(f"{vm}/uuid") is None


def test_remote_crash_is_reported_as_crashed(host: xenpure.Host, guest, xl, wait) -> None:  # type: ignore[no-untyped-def]
    d = host.domain(guest.domid)
    with host.events(timeout=60) as stream:
        d.remote_shutdown(ShutdownReason.crash)
        kinds = [ev for ev in stream if ev.domid == guest.domid][:1]
    assert kinds and kinds[0].kind is EventKind.CRASHED
    _gone_from_xl(xl, wait, guest)  # on_crash="destroy"


def test_info_vcpus_and_memory_match_xl(host: xenpure.Host, guest, xl) -> None:  # type: ignore[no-untyped-def]
    d = host.domain(guest.name)
    row = xl.list()[guest.name]
    info = d.info()
    assert (d.id, info.memory_kib // 1024, info.online_vcpus) == (row.domid, row.mem_mib, row.vcpus)
    assert info.state in (DomainState.RUNNING, DomainState.BLOCKED, DomainState.RUNNABLE)
    vcpu_rows = [ln.split() for ln in xl("vcpu-list", guest.name).splitlines()[1:]]
    assert [v.vcpu for v in d.vcpus()] == [int(r[2]) for r in vcpu_rows]
    d.set_memory(info.memory_kib // 2)
    assert _xenstore_read(f"/local/domain/{guest.domid}/memory/target") == str(info.memory_kib // 2)


def test_console_shows_the_boot_lines(host: xenpure.Host, guest) -> None:  # type: ignore[no-untyped-def]
    guest.wait_console()
    with host.domain(guest.domid).console() as con:
        assert con.source == "log"  # the lab runs xenconsoled --log=guest
        assert "XENPURE-GUEST-UP" in con.read(timeout=5)


def test_cli_in_dom0(guest, xl, wait) -> None:  # type: ignore[no-untyped-def]
    run = cli
    rows = {r["name"]: r for r in json.loads(cli_ok("list", "--json"))}
    assert rows[guest.name]["id"] == guest.domid
    top = json.loads(cli_ok("top", "--json", "-n", "1", "-d", "0.5").splitlines()[0])
    assert {r["id"] for r in top} == {r["id"] for r in rows.values()}
    assert run("pause", guest.name).returncode == 0
    assert xl.list()[guest.name].state[2] == "p"
    assert run("unpause", guest.name).returncode == 0
    assert xl.list()[guest.name].state[2] == "-"
    assert "Xen version" in run("dmesg").stdout
    guest.wait_console()
    out = run("shutdown", "--wait", "--timeout", "120", guest.name)
    assert out.returncode == 0, out.stderr
    row = xl.list().get(guest.name)
    assert row is None or row.state[3] == "s", row
    _gone_from_xl(xl, wait, guest)  # on_poweroff="destroy"


def test_reboot_asks_the_guest_and_reports_the_reason(host: xenpure.Host, guest, xl, wait) -> None:  # type: ignore[no-untyped-def]
    guest.wait_console()
    d = host.domain(guest.domid)
    info = d.reboot(wait=True, timeout=120)
    # Either we saw it shut down for a reboot, or xl's monitor had already acted on it (on_reboot).
    assert info is None or info.shutdown_reason is ShutdownReason.reboot
    assert "reboot: " in guest.wait_console("reboot: ", timeout=30)  # the guest itself rebooted
    _back_in_xl(xl, wait, guest.name, guest.domid)  # on_reboot="restart"


def test_set_max_memory_shows_in_the_c_binding(host: xenpure.Host, guest) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, "/usr/lib/xen-4.17/lib/python")
    import xen.lowlevel.xc as xc_mod  # type: ignore[import-not-found]

    d = host.domain(guest.domid)
    d.set_max_memory(192 * 1024)
    (row,) = [r for r in xc_mod.xc().domain_getinfo() if r["domid"] == guest.domid]
    assert row["maxmem_kb"] == 192 * 1024 == d.info().max_memory_kib


# -- the CLI verbs one by one, each checked with `xl list` -----------------------------------------------------


def test_cli_info_matches_xl_list(guest, xl) -> None:  # type: ignore[no-untyped-def]
    info = json.loads(cli_ok("info", guest.name, "--json"))
    row = xl.list()[guest.name]
    assert (info["name"], info["id"], info["memory_kib"] // 1024, info["online_vcpus"]) == (
        row.name, row.domid, row.mem_mib, row.vcpus)
    assert info["flags"][2:] == row.state[2:] == "----"  # neither paused, shut down, crashed nor dying
    assert info["state"] in ("running", "blocked", "runnable") and info["shutdown_reason"] is None
    assert _xenstore_read(f"/local/domain/{guest.domid}/vm") == f"/vm/{info['uuid']}"  # xl's /vm/<uuid>
    assert [v["vcpu"] for v in info["vcpus"]] == list(range(row.vcpus))
    out = cli("info", guest.name)
    assert out.returncode == 0, out.stderr
    assert f"name            : {guest.name}\n" in out.stdout and f"id              : {guest.domid}\n" in out.stdout
    assert "vcpu 0          : cpu " in out.stdout
    xl("pause", guest.name)
    try:
        paused = json.loads(cli_ok("info", str(guest.domid), "--json"))
        assert (paused["state"], paused["flags"][2]) == ("paused", "p") and xl.list()[guest.name].state[2] == "p"
    finally:
        xl("unpause", guest.name)
    assert json.loads(cli_ok("info", guest.name, "--json"))["flags"][2] == xl.list()[guest.name].state[2] == "-"


def test_cli_events_shows_pause_and_unpause(host: xenpure.Host, guest, xl, wait) -> None:  # type: ignore[no-untyped-def]
    # Nothing else comes or goes meanwhile (an earlier test's guest may still be dying): --count counts every
    # domain's events.
    wait(lambda: {i.domid for i in host.domain_infos()} == {0, guest.domid}, 60, "Domain-0 and the guest alone")
    with Background("events", "--count", "2", "--timeout", "300") as follower:
        follower.wait_for("xenpure: following lifecycle events\n", stream="err")  # its first snapshot is taken
        out = cli("pause", guest.name)
        assert out.returncode == 0, out.stderr
        assert xl.list()[guest.name].state[2] == "p"
        follower.wait_for(f"domain {guest.domid} paused ({guest.name})\n")
        out = cli("unpause", guest.name)
        assert out.returncode == 0, out.stderr
        assert xl.list()[guest.name].state[2] == "-"
        assert follower.finish() == 0, follower.errors  # by itself, after its second event
    lines = [line.split(" ", 1) for line in follower.text.splitlines()]
    assert [text for _, text in lines] == [f"domain {guest.domid} paused ({guest.name})",
                                           f"domain {guest.domid} unpaused ({guest.name})"], follower.text
    assert all(time.strptime(stamp, "%H:%M:%S") for stamp, _ in lines)


def test_cli_console_shows_the_boot_lines(guest, xl) -> None:  # type: ignore[no-untyped-def]
    boot = guest.wait_console()  # xenconsoled's log up to the marker
    out = cli("console", guest.name, "--timeout", "5")
    assert out.returncode == 0, out.stderr
    assert out.stderr == f"xenpure: console of domain {guest.name} via log\n"  # the lab runs xenconsoled --log=guest
    assert "XENPURE-GUEST-UP" in out.stdout and boot in out.stdout.replace("\r\n", "\n")
    assert xl.list()[guest.name].state[2:] == "----"  # reading the console left the guest alone


def test_cli_console_follows_until_the_guest_is_gone(guest, xl, wait) -> None:  # type: ignore[no-untyped-def]
    guest.wait_console()
    with Background("console", guest.name) as follower:  # no --timeout: it follows while the domain exists
        follower.wait_for("XENPURE-GUEST-UP")
        out = cli("shutdown", guest.name)
        assert out.returncode == 0, out.stderr
        assert follower.finish(180) == 0, follower.errors  # on_poweroff="destroy": gone, so the follow ends
    assert guest.name not in xl.list()
    log = guest.console_log.read_bytes()
    assert follower.out and log.startswith(follower.out)  # the guest's console as xenconsoled logged it


def test_cli_reboot_restarts_the_guest_under_xl(guest, xl, wait) -> None:  # type: ignore[no-untyped-def]
    first = guest.wait_console()
    out = cli("reboot", "--wait", "--timeout", "120", guest.name)
    assert out.returncode == 0, out.stderr
    row = xl.list().get(guest.name)
    assert row is None or row.domid != guest.domid or row.state[3] == "s", row
    new_domid = _back_in_xl(xl, wait, guest.name, guest.domid)  # on_reboot="restart"

    def booted_again() -> bool:  # xenconsoled logs the new incarnation under the same name
        now = guest.console()
        return now.count("XENPURE-GUEST-UP") >= 2 or (not now.startswith(first) and "XENPURE-GUEST-UP" in now)

    wait(booted_again, 180, "the restarted guest's boot")
    assert json.loads(cli_ok("info", guest.name, "--json"))["id"] == new_domid == xl.list()[guest.name].domid


def test_cli_destroy_of_an_xl_guest(guest, xl, wait) -> None:  # type: ignore[no-untyped-def]
    vm = _xenstore_read(f"/local/domain/{guest.domid}/vm")
    assert vm is not None
    out = cli("destroy", guest.name)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    _gone_from_xl(xl, wait, guest, timeout=60)
    assert _xenstore_read(f"/local/domain/{guest.domid}/name") is None and _xenstore_read(f"{vm}/uuid") is None
    out = cli("info", str(guest.domid))
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
