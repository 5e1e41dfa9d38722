"""The `xenpure` command, run as a user would (python -m xenpure), on the simulated host."""

import json
import os
import subprocess
import sys

import pytest

from xenpure.hypercall.abi import catalogue


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xenpure", *args], capture_output=True, text=True, timeout=60)


def test_list_json_on_the_simulator() -> None:
    out = run("--sim", "list", "--json")
    assert out.returncode == 0, out.stderr
    (dom0,) = json.loads(out.stdout)
    assert (dom0["name"], dom0["id"], dom0["state"]) == ("Domain-0", 0, "r-----")


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
