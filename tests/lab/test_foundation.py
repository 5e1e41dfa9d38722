"""The foundation against the truth: xenpure's Host and Domain versus `xl` and the C binding, in a real dom0.

Every expected value here is read from the real toolstack (`xl info`, `xl list`, `xl dmesg`) or from
`xen.lowlevel.xc`, the C binding Debian ships with Xen 4.17, at test time.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import xenpure
from xenpure.hypercall._layout import Iface
from xenpure.hypercall.abi import release
from xenpure.hypercall.abi.domctl import DomctlCmd
from xenpure.kernel import LinuxKernel

XC_PATH = "/usr/lib/xen-4.17/lib/python"


@pytest.fixture
def host() -> Iterator[xenpure.Host]:
    with xenpure.connect() as h:
        yield h


@pytest.fixture(scope="module")
def xc():  # type: ignore[no-untyped-def]
    """The C binding xen.lowlevel.xc (libxenctrl underneath), the reference for getdomaininfo."""
    sys.path.insert(0, XC_PATH)
    try:
        import xen.lowlevel.xc as xc_mod  # type: ignore[import-not-found]
    finally:
        sys.path.remove(XC_PATH)
    return xc_mod.xc()


def test_version_equals_xl_info(host: xenpure.Host, xl) -> None:  # type: ignore[no-untyped-def]
    info = xl.info()
    v = host.version()
    assert (str(v.major), str(v.minor), v.extra) == (info["xen_major"], info["xen_minor"], info["xen_extra"])
    assert str(v) == info["xen_version"]
    assert v.capabilities.strip() == info["xen_caps"]
    assert v.changeset.strip() == info["xen_changeset"]


def test_physinfo_equals_xl_info(host: xenpure.Host, xl) -> None:  # type: ignore[no-untyped-def]
    info = xl.info()
    p = host.physinfo()
    assert p.total_memory_mib == int(info["total_memory"])
    assert p.nr_cpus == int(info["nr_cpus"])
    assert p.max_cpu_id == int(info["max_cpu_id"])
    assert p.nr_nodes == int(info["nr_nodes"])
    assert p.cores_per_socket == int(info["cores_per_socket"])
    assert p.threads_per_core == int(info["threads_per_core"])
    assert f"{p.cpu_khz // 1000}.{p.cpu_khz % 1000:03d}" == info["cpu_mhz"]
    assert set(p.virt_caps) == set(info["virt_caps"].split())


def test_interface_probe_picks_4_17s_versions(host: xenpure.Host) -> None:
    assert host.interface == Iface(domctl=0x15, sysctl=0x15) == release("4.17").iface


def _compare_with_xl(host: xenpure.Host, xl) -> None:  # type: ignore[no-untyped-def]
    rows = xl.list()
    doms = {d.name: d for d in host.domains()}
    assert set(doms) == set(rows)
    for name, row in rows.items():
        d = doms[name]
        info = d.info()
        assert d.id == row.domid, name
        assert info.memory_kib // 1024 == row.mem_mib, name
        assert info.online_vcpus == row.vcpus, name
        # r/b flip as vcpus run and block; paused, shutdown, crashed and dying are stable.
        assert info.state_letters[2:] == row.state[2:], name


def test_domains_match_xl_list(host: xenpure.Host, xl, guest) -> None:  # type: ignore[no-untyped-def]
    _compare_with_xl(host, xl)
    assert host.domain(guest.name).id == guest.domid
    assert host.domain(0).name == "Domain-0"


def test_domain_info_matches_the_c_binding_field_by_field(host: xenpure.Host, xc, guest) -> None:  # type: ignore[no-untyped-def]
    before = {i.domid: i for i in host.domain_infos()}
    theirs = {r["domid"]: r for r in xc.domain_getinfo()}
    after = {i.domid: i for i in host.domain_infos()}
    assert set(before) == set(theirs) == set(after) and guest.domid in theirs
    for domid, r in theirs.items():
        ours = before[domid]
        assert ours.online_vcpus == r["online_vcpus"]
        assert ours.max_vcpu_id == r["max_vcpu_id"]
        assert ours.hvm == bool(r["hvm"])
        assert ours.dying == bool(r["dying"])
        assert ours.crashed == bool(r["crashed"])
        assert ours.shutdown == bool(r["shutdown"])
        assert ours.paused == bool(r["paused"])
        assert ours.memory_kib == r["mem_kb"]
        assert ours.max_memory_kib == r["maxmem_kb"]
        assert ours.ssidref == r["ssidref"]
        assert ours.shutdown_code == r["shutdown_reason"]
        assert ours.cpupool == r["cpupool"]
        assert list(ours.uuid.bytes) == r["handle"]
        assert before[domid].cpu_time_ns <= r["cpu_time"] <= after[domid].cpu_time_ns


def test_unknown_domain_is_esrch(host: xenpure.Host) -> None:
    with pytest.raises(xenpure.NoSuchDomain) as ei:
        host.domain(31000)
    assert ei.value.errno == errno.ESRCH


def test_buffers_come_from_dev_xen_hypercall(host: xenpure.Host) -> None:
    kernel = host.kernel
    assert isinstance(kernel, LinuxKernel) and kernel.buffer_source == "/dev/xen/hypercall"
    with kernel.alloc_buffer(100) as buf:
        (line,) = _maps_lines(buf.address)
        assert line.endswith("/dev/xen/hypercall")


def _maps_lines(address: int) -> list[str]:
    return [ln for ln in Path("/proc/self/maps").read_text().splitlines() if ln.startswith(f"{address:x}-")]


def test_fallback_buffers_when_the_hypercall_device_is_hidden(tmp_path: Path, host: xenpure.Host) -> None:
    # A device directory with every /dev/xen node but hypercall: the seam must fall back to locked memory.
    for node in os.listdir("/dev/xen"):
        if node != "hypercall":
            (tmp_path / node).symlink_to(f"/dev/xen/{node}")
    kernel = LinuxKernel(dirs=(str(tmp_path), "/proc/xen"))
    with xenpure.connect(kernel=kernel) as hidden:
        assert kernel.buffer_source == "locked anonymous memory"
        assert [i.domid for i in hidden.domain_infos()] == [i.domid for i in host.domain_infos()]
        with kernel.alloc_buffer(10) as buf:
            assert buf.source == "locked anonymous memory"
            (line,) = _maps_lines(buf.address)
            assert not line.endswith("/dev/xen/hypercall")


def test_wrong_interface_version_is_eacces(host: xenpure.Host) -> None:
    with pytest.raises(xenpure.HypercallError) as ei:
        host.privcmd.domctl(host.interface, DomctlCmd.getdomaininfo, 0, version=0x14)
    assert ei.value.errno == errno.EACCES and isinstance(ei.value, xenpure.AccessDenied)
    assert (ei.value.op, ei.value.subop) == ("domctl", "getdomaininfo")


def test_pause_and_unpause_show_in_xl_list(host: xenpure.Host, xl, guest) -> None:  # type: ignore[no-untyped-def]
    d = host.domain(guest.name)
    d.pause()
    assert xl.list()[guest.name].state[2] == "p"
    assert d.info().paused and d.info().state is xenpure.DomainState.PAUSED
    d.unpause()
    assert xl.list()[guest.name].state[2] == "-"
    assert not d.info().paused
    with pytest.raises(xenpure.InvalidArgument):
        d.unpause()  # Xen counts controller pauses: there is none left to undo


def test_dmesg_matches_xl_dmesg(host: xenpure.Host, xl) -> None:  # type: ignore[no-untyped-def]
    ours = host.dmesg()
    theirs = xl("dmesg")
    assert ours and theirs.startswith(ours[: min(len(ours), 2000)])


def test_unprivileged_user_is_not_privileged() -> None:
    code = textwrap.dedent(
        """
        import os, xenpure
        os.setgid(65534); os.setuid(65534)
        try:
            xenpure.connect()
        except xenpure.NotPrivileged as e:
            print("NotPrivileged:", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("NotPrivileged: permission denied on /dev/xen/privcmd")


def test_cli_list_json_in_dom0(xl) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run(
        [sys.executable, "-m", "xenpure", "list", "--json"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["Domain-0"]["id"] == 0 and rows["Domain-0"]["mem_mib"] == xl.list()["Domain-0"].mem_mib
