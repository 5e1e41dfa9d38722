"""The `xenpure` command, run as a user would (python -m xenpure), on the simulated host."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import xenpure.testing
from xenpure.cli import main
from xenpure.hypercall.abi import catalogue
from xenpure.hypercall.abi.sched import ShutdownReason
from xenpure.testing import BOOT_LINES, SimXen
from xenpure.testing._kernels import make_elf


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xenpure", *args], capture_output=True, text=True, timeout=60)


def test_list_json_on_the_simulator() -> None:
    out = run("--sim", "list", "--json")
    assert out.returncode == 0, out.stderr
    dom0, demo = json.loads(out.stdout)
    assert (dom0["name"], dom0["id"], dom0["state"]) == ("Domain-0", 0, "r-----")
    assert (demo["name"], demo["id"], demo["mem_mib"], demo["vcpus"], demo["state"]) == ("demo", 1, 128, 1, "-b----")


def test_sim_flag_after_the_subcommand() -> None:
    assert run("list", "--sim").stdout == run("--sim", "list").stdout


def test_info_json() -> None:
    data = json.loads(run("--sim", "info", "--json").stdout)
    assert (data["xen_major"], data["xen_minor"], data["domctl_interface"]) == (4, 17, 0x15)


def test_domain_info_and_top_and_events_and_dmesg() -> None:
    info = json.loads(run("--sim", "info", "Domain-0", "--json").stdout)
    assert info["id"] == 0 and len(info["vcpus"]) == info["online_vcpus"]
    rows = [json.loads(line) for line in run("--sim", "top", "--json", "-n", "2", "-d", "0.05").stdout.splitlines()]
    assert len(rows) == 2 and rows[0][0]["name"] == "Domain-0"
    assert run("--sim", "events", "--timeout", "0.2").returncode == 0
    assert "Xen version" in run("--sim", "dmesg").stdout


def test_errors_are_one_line_and_exit_1() -> None:
    out = run("--sim", "pause", "nosuch")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "no domain is named 'nosuch'" in out.stderr
    out = run("--sim", "pause", "0")
    assert out.returncode == 1 and "pausedomain failed: EINVAL" in out.stderr


@pytest.mark.skipif(os.path.exists("/dev/xen/privcmd") or os.path.exists("/proc/xen/privcmd"),
                    reason="this machine has Xen; the lab tier checks the CLI against it")
def test_without_xen_the_cli_says_so_and_suggests_sim() -> None:
    out = run("list")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Xen is not available" in out.stderr and "--sim" in out.stderr


def test_abi_json_is_the_catalogue() -> None:
    for release in ("4.17", "4.20"):
        assert json.loads(run("abi", "--json", "--xen", release).stdout) == catalogue(release)


# -- the guest verbs on --sim's demo guest ------------------------------------------------------------------


def test_guest_verbs_on_the_simulators_demo_guest() -> None:
    """Each run is a fresh simulated host with a running guest, demo: every verb has something to act on."""
    out = run("--sim", "info", "demo")
    assert out.returncode == 0, out.stderr
    assert "name            : demo\n" in out.stdout and "flags           : -b----\n" in out.stdout
    assert "vcpu 0          : cpu 0, blocked" in out.stdout
    info = json.loads(run("--sim", "info", "demo", "--json").stdout)
    assert (info["name"], info["id"], info["state"], info["memory_kib"], info["online_vcpus"]) == (
        "demo", 1, "blocked", 128 * 1024, 1)
    assert [v["vcpu"] for v in info["vcpus"]] == [0]
    out = run("--sim", "console", "demo", "--timeout", "0.5")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == list(BOOT_LINES)  # the ring's boot lines, \r\n as the guest wrote them
    assert out.stderr == "xenpure: console of domain demo via ring\n"
    for verb in (["pause", "demo"], ["shutdown", "-w", "--timeout", "5", "demo"],
                 ["reboot", "-w", "--timeout", "5", "demo"], ["destroy", "demo"]):
        out = run("--sim", *verb)
        assert (out.returncode, out.stdout, out.stderr) == (0, "", ""), verb
    out = run("--sim", "unpause", "demo")  # a fresh host: nothing paused to undo, as Xen answers
    assert out.returncode == 1 and "unpausedomain failed: EINVAL" in out.stderr


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch) -> list[SimXen]:
    """The simulated hosts `--sim` builds in this process (main() called directly), to look at afterwards."""
    made: list[SimXen] = []
    real = xenpure.testing.demo_xen

    def recording(release: str = "4.17") -> SimXen:
        made.append(real(release))
        return made[-1]

    monkeypatch.setattr(xenpure.testing, "demo_xen", recording)
    return made


def test_sim_verbs_act_on_the_demo_guest(demo: list[SimXen], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sim", "pause", "demo"]) == 0
    assert demo[-1].domains[1].pause_count == 1
    assert main(["--sim", "shutdown", "--wait", "--timeout", "5", "demo"]) == 0
    xen = demo[-1]
    assert xen.domains[1].shutdown_code == ShutdownReason.poweroff
    assert xen.guests[1].requests == ["poweroff"]  # asked through control/shutdown, not forced
    assert main(["--sim", "reboot", "demo"]) == 0
    assert demo[-1].domains[1].shutdown_code == ShutdownReason.reboot
    assert main(["--sim", "destroy", "demo"]) == 0
    assert 1 not in demo[-1].domains and not demo[-1].xenstored.exists("/local/domain/1")
    capsys.readouterr()
    assert main(["--sim", "console", "demo", "--timeout", "0.3"]) == 0
    assert capsys.readouterr().out == "".join(f"{line}\r\n" for line in BOOT_LINES)
    assert len(demo) == 5  # one fresh host per command


def test_sim_create_starts_from_domain0_alone(demo: list[SimXen], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(make_elf())
    cfg = tmp_path / "g.cfg"
    cfg.write_text(f'name="demo"\nmemory=32\nkernel="{kernel}"\n')
    assert main(["--sim", "create", str(cfg), "--paused"]) == 0
    # No demo guest for create (the name is free, the id the first): the guest it builds is the one to show.
    assert "created domain demo (id 1) paused" in capsys.readouterr().out
    assert demo == []


def test_events_count_stops_after_n_events(demo: list[SimXen], capsys: pytest.CaptureFixture[str]) -> None:
    rc: list[int] = []
    follower = threading.Thread(target=lambda: rc.append(main(["--sim", "events", "-n", "2", "--timeout", "20"])))
    follower.start()
    out = err = ""

    def until(what: str, text: str) -> None:
        nonlocal out, err
        deadline = time.monotonic() + 10
        while text not in (out if what == "out" else err) and time.monotonic() < deadline:
            captured = capsys.readouterr()
            out, err = out + captured.out, err + captured.err
            time.sleep(0.02)
        assert text in (out if what == "out" else err), (out, err)

    try:
        until("err", "xenpure: following lifecycle events\n")  # its first snapshot is taken
        xen = demo[-1]
        with xen.lock:
            xen.domains[1].pause_count += 1
        until("out", "domain 1 paused (demo)\n")
        with xen.lock:
            xen.domains[1].pause_count -= 1
    finally:
        follower.join(20)
    assert not follower.is_alive() and rc == [0]  # stopped by the count, long before --timeout
    out += capsys.readouterr().out
    assert [line.split(" ", 1)[1] for line in out.splitlines()] == ["domain 1 paused (demo)",
                                                                    "domain 1 unpaused (demo)"]
