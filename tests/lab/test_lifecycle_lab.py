"""The lifecycle verbs, events and console against guests started by `xl create`, checked with `xl list`."""

from __future__ import annotations

import json
import subprocess
import sys
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


def test_shutdown_wait_returns_once_the_guest_is_down(host: xenpure.Host, guest, xl) -> None:  # type: ignore[no-untyped-def]
    guest.wait_console()
    d = host.domain(guest.domid)
    assert _xenstore_read(f"/local/domain/{guest.domid}/control/feature-poweroff") == "1"
    info = d.shutdown(wait=True, timeout=120)
    # Either we saw it shut down, or xl's monitor had already destroyed it.
    assert info is None or info.shutdown_reason is ShutdownReason.poweroff
    assert "reboot: " in guest.wait_console("reboot: ", timeout=30)  # the kernel's last words


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


def test_remote_crash_is_reported_as_crashed(host: xenpure.Host, guest, xl) -> None:  # type: ignore[no-untyped-def]
    d = host.domain(guest.domid)
    with host.events(timeout=60) as stream:
        d.remote_shutdown(ShutdownReason.crash)
        kinds = [ev for ev in stream if ev.domid == guest.domid][:1]
    assert kinds and kinds[0].kind is EventKind.CRASHED


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


def test_cli_in_dom0(guest, xl) -> None:  # type: ignore[no-untyped-def]
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xenpure", *args], capture_output=True, text=True, timeout=180)

    rows = {r["name"]: r for r in json.loads(run("list", "--json").stdout)}
    assert rows[guest.name]["id"] == guest.domid
    top = json.loads(run("top", "--json", "-n", "1", "-d", "0.5").stdout.splitlines()[0])
    assert {r["id"] for r in top} == {r["id"] for r in rows.values()}
    assert run("pause", guest.name).returncode == 0
    assert xl.list()[guest.name].state[2] == "p"
    assert run("unpause", guest.name).returncode == 0
    assert "Xen version" in run("dmesg").stdout
    guest.wait_console()
    out = run("shutdown", "--wait", "--timeout", "120", guest.name)
    assert out.returncode == 0, out.stderr


def test_reboot_asks_the_guest_and_reports_the_reason(host: xenpure.Host, guest, xl) -> None:  # type: ignore[no-untyped-def]
    guest.wait_console()
    d = host.domain(guest.domid)
    info = d.reboot(wait=True, timeout=120)
    # Either we saw it shut down for a reboot, or xl's monitor had already acted on it (on_reboot).
    assert info is None or info.shutdown_reason is ShutdownReason.reboot
    assert "reboot: " in guest.wait_console("reboot: ", timeout=30)  # the guest itself rebooted


def test_set_max_memory_shows_in_the_c_binding(host: xenpure.Host, guest) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, "/usr/lib/xen-4.17/lib/python")
    import xen.lowlevel.xc as xc_mod  # type: ignore[import-not-found]

    d = host.domain(guest.domid)
    d.set_max_memory(192 * 1024)
    (row,) = [r for r in xc_mod.xc().domain_getinfo() if r["domid"] == guest.domid]
    assert row["maxmem_kb"] == 192 * 1024 == d.info().max_memory_kib
