"""The first public API on the simulated host, through the real encode/decode path."""

import errno
import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import xenpure
from xenpure import DomainState
from xenpure.errors import (
    AccessDenied,
    DeviceUnavailable,
    HypercallError,
    InvalidArgument,
    NoSuchDomain,
    NotPrivileged,
    NotSupported,
    ProtocolError,
    UnsupportedInterface,
)
from xenpure.hypercall._layout import Iface
from xenpure.hypercall.abi.domctl import DomctlCmd
from xenpure.hypercall.abi.sched import ShutdownReason
from xenpure.hypercall.abi.xen import Hypercall
from xenpure.kernel import LinuxKernel
from xenpure.testing import SimKernel, SimXen


def _open_fds() -> set[str]:
    """This process's open descriptors. Collects garbage first: an earlier test's simulated host closes its
    machine memory (a memfd) when it is collected, which must not count as this test's leak or cure."""
    gc.collect()
    return set(os.listdir("/proc/self/fd"))


@contextmanager
def _leaves_nothing_open(kernel: SimKernel) -> Iterator[None]:
    """The block leaves no descriptor, device or mapping of ``kernel`` behind (nor any other descriptor)."""
    before = _open_fds()
    yield
    assert kernel.live_mappings == 0
    assert not kernel.open_devices
    assert _open_fds() == before


def test_version_and_physinfo(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    v = sim_host.version()
    assert (v.major, v.minor, v.extra) == (4, 17, sim_xen.extra)
    assert str(v) == f"4.17{sim_xen.extra}"
    assert v.capabilities == sim_xen.capabilities
    p = sim_host.physinfo()
    assert p.nr_cpus == sim_xen.nr_cpus
    assert p.total_pages == sim_xen.total_pages
    assert p.total_memory_mib == sim_xen.total_pages * 4 // 1024
    assert "pv" in p.virt_caps and "hvm" in p.virt_caps


@pytest.mark.parametrize(("release", "domctl", "sysctl"), [("4.17", 0x15, 0x15), ("4.20", 0x17, 0x15),
                                                             ("4.21", 0x17, 0x16)])
def test_probe_picks_the_interface_the_hypervisor_speaks(release: str, domctl: int, sysctl: int) -> None:
    with xenpure.connect(f"sim://{release}") as host:
        assert host.interface == Iface(domctl, sysctl)
        assert [d.id for d in host.domains()] == [0]


def test_probe_finds_the_version_even_when_the_release_guess_is_wrong() -> None:
    xen = SimXen("4.17")
    xen.minor = 99  # an unknown release that happens to speak 0x15
    with xenpure.Host(SimKernel(xen)) as host:
        assert host.interface == Iface(0x15, 0x15)


def test_unknown_interface_names_the_known_versions() -> None:
    xen = SimXen("4.17")
    xen.iface = Iface(0x99, 0x15)
    kernel = SimKernel(xen)
    with _leaves_nothing_open(kernel), pytest.raises(UnsupportedInterface, match=r"0x15, 0x16, 0x17") as ei:
        xenpure.Host(kernel)  # every probe answered EACCES: privcmd and its scratch buffer are released
    assert ei.value.what == "domctl"


def test_a_host_that_fails_to_connect_closes_its_kernel() -> None:
    """``Host`` owns the kernel it is given (``close`` closes it), so a failed probe closes it too: the Linux
    kernel holds /dev/xen/hypercall open from its first buffer until it is closed."""

    class Kernel(SimKernel):
        closed = 0

        def close(self) -> None:
            self.closed += 1
            super().close()

    xen = SimXen("4.17")
    xen.iface = Iface(0x99, 0x15)
    kernel = Kernel(xen)
    with pytest.raises(UnsupportedInterface):
        xenpure.Host(kernel)
    assert kernel.closed == 1


def test_domains_and_info(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    guest = sim_xen.add_domain(memory_mib=64, vcpus=2)
    doms = sim_host.domains()
    assert [d.id for d in doms] == [0, guest.domid]
    info = sim_host.domain(guest.domid).info()
    assert info.domid == guest.domid
    assert info.memory_kib == 64 * 1024 and info.max_memory_kib == 64 * 1024
    assert info.online_vcpus == 2 and info.max_vcpu_id == 1
    assert info.uuid == guest.handle
    assert info.state is DomainState.BLOCKED and info.shutdown_reason is None
    assert sim_host.domain(0).info().uuid.int == 0


def test_cpu_time_is_what_the_vcpus_ran(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    """getdomaininfo's cpu_time is the sum of the vcpus' times in ns, as a u64 (beyond 2**32 here), and it
    advances as they run; getdomaininfolist and getvcpuinfo say the same."""
    guest = sim_xen.add_domain(vcpus=2)
    d = sim_host.domain(guest.domid)
    assert d.info().cpu_time_ns == 0  # a domain that has not run
    guest.vcpus[0].cpu_time_ns = 5_000_000_007
    guest.vcpus[1].cpu_time_ns = 2_000_000_000
    first = d.info()
    assert first.cpu_time_ns == 7_000_000_007
    assert [v.cpu_time_ns for v in d.vcpus()] == [5_000_000_007, 2_000_000_000]
    guest.vcpus[1].cpu_time_ns += 1_500_000_000  # vcpu 1 ran another 1.5 s
    later = d.info()
    assert later.cpu_time_ns - first.cpu_time_ns == 1_500_000_000
    listed = {i.domid: i for i in sim_host.domain_infos()}
    assert listed[guest.domid].cpu_time_ns == later.cpu_time_ns
    assert listed[0].cpu_time_ns == 0


def test_many_domains_come_back_in_batches(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    for _ in range(150):
        sim_xen.add_domain()
    ids = [d.id for d in sim_host.domains()]
    assert ids == sorted(sim_xen.domains) and len(ids) == 151


def test_lookup_by_uuid(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    guest = sim_xen.add_domain()
    assert sim_host.domain(guest.handle).id == guest.domid
    assert sim_host.domain(str(guest.domid)).id == guest.domid


def test_unknown_domain_is_no_such_domain(sim_host: xenpure.Host) -> None:
    with pytest.raises(NoSuchDomain) as ei:
        sim_host.domain(42)
    assert ei.value.errno == errno.ESRCH and ei.value.subop == "getdomaininfo"


def test_pause_unpause_changes_state(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    d = sim_host.domain(sim_xen.add_domain().domid)
    d.pause()
    assert d.info().state is DomainState.PAUSED and d.info().state_letters == "--p---"
    d.pause()
    d.unpause()
    assert d.info().paused  # pauses are counted
    d.unpause()
    assert not d.info().paused
    with pytest.raises(InvalidArgument):
        d.unpause()


def test_remote_shutdown_reports_the_reason(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    d = sim_host.domain(sim_xen.add_domain().domid)
    d.remote_shutdown(ShutdownReason.crash)
    info = d.info()
    assert info.crashed and info.state is DomainState.CRASHED and info.shutdown_reason is ShutdownReason.crash
    assert info.state_letters == "----c-"


def test_vcpus(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    d = sim_host.domain(sim_xen.add_domain(vcpus=3).domid)
    assert [v.vcpu for v in d.vcpus()] == [0, 1, 2]
    assert all(v.online for v in d.vcpus())


def test_dmesg(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    sim_xen.console += b"(XEN) second line\n" * 2000  # more than one chunk
    text = sim_host.dmesg(chunk=4096)
    assert text == sim_xen.console.decode()
    sim_host.dmesg(clear=True)
    assert sim_host.dmesg() == ""


def test_wrong_interface_version_is_eacces(sim_xen: SimXen) -> None:
    kernel = SimKernel(sim_xen)
    with _leaves_nothing_open(kernel), xenpure.connect(kernel=kernel) as host:
        with pytest.raises(AccessDenied) as ei:
            host.privcmd.domctl(host.interface, DomctlCmd.getdomaininfo, 0, version=0x14)
        assert isinstance(ei.value, HypercallError) and ei.value.errno == errno.EACCES
        assert (ei.value.op, ei.value.subop) == ("domctl", "getdomaininfo")
        assert kernel.live_mappings == 1  # the scratch buffer, kept for the next call (and no other)
        assert host.domain(0).info().domid == 0  # the refusal left the channel usable


def test_bad_address_is_efault(sim_host: xenpure.Host) -> None:
    with pytest.raises(HypercallError) as ei:
        sim_host.privcmd.hypercall(Hypercall.domctl, 0xDEAD0000, subop="getdomaininfo")
    assert ei.value.errno == errno.EFAULT


def test_unknown_ioctl_is_enotty(sim_host: xenpure.Host) -> None:
    with pytest.raises(OSError) as ei:
        sim_host.privcmd.device.ioctl(0x12345678, bytearray(8))
    assert ei.value.errno == errno.ENOTTY


def test_missing_devices_name_the_paths() -> None:
    kernel = SimKernel(devices=())
    with _leaves_nothing_open(kernel), pytest.raises(DeviceUnavailable) as ei:
        xenpure.connect(kernel=kernel)
    assert ei.value.tried == ("/dev/xen/privcmd", "/proc/xen/privcmd")


def test_a_missing_device_after_connect_leaves_the_host_whole() -> None:
    """No /dev/xen/evtchn: opening it fails, typed and naming the paths; the host goes on and closes clean."""
    from xenpure.evtchn import EventChannels

    kernel = SimKernel(devices=("privcmd", "hypercall"))
    with _leaves_nothing_open(kernel), xenpure.connect(kernel=kernel) as host:
        with pytest.raises(DeviceUnavailable) as ei:
            EventChannels.open(host.kernel)
        assert ei.value.tried == ("/dev/xen/evtchn", "/proc/xen/evtchn")
        assert [d.id for d in host.domains()] == [0]


def test_proc_xen_alone_serves_and_leaves_nothing_open() -> None:
    """A dom0 with xenfs at /proc/xen and no /dev/xen nodes: everything is opened there, and released."""
    kernel = SimKernel(dirs=("/proc/xen",))
    with _leaves_nothing_open(kernel), xenpure.connect(kernel=kernel) as host:
        assert host.privcmd.device.path == "/proc/xen/privcmd"
        assert [d.id for d in host.domains()] == [0]


def test_the_linux_fallback_to_proc_xen_closes_what_it_opened(tmp_path: Path) -> None:
    """The Linux seam itself, on real descriptors (a directory pair standing in for /dev/xen and /proc/xen):
    the node only the second directory has is opened there; a node in neither raises ``DeviceUnavailable``
    with nothing opened; and a connect() that fails on the fallback node (a plain file: ENOTTY to the first
    hypercall) closes it again."""
    dev, proc = tmp_path / "dev-xen", tmp_path / "proc-xen"
    dev.mkdir()
    proc.mkdir()
    (proc / "privcmd").write_bytes(b"")
    kernel = LinuxKernel(dirs=(str(dev), str(proc)))
    before = _open_fds()
    with kernel.open("privcmd") as node:
        assert node.path == str(proc / "privcmd")
        assert os.path.samefile(f"/proc/self/fd/{node.fileno()}", proc / "privcmd")
    assert _open_fds() == before
    with pytest.raises(DeviceUnavailable) as ei:
        kernel.open("evtchn")
    assert ei.value.tried == (str(dev / "evtchn"), str(proc / "evtchn"))
    with pytest.raises(NotSupported) as nei:
        xenpure.connect(kernel=kernel)
    assert nei.value.errno == errno.ENOTTY
    assert _open_fds() == before  # closed, not left to the collector (the traceback still holds the Host)


def test_non_root_is_not_privileged() -> None:
    with pytest.raises(NotPrivileged, match="/dev/xen/privcmd"):
        xenpure.connect(kernel=SimKernel(root=False))


def test_unprivileged_domain_is_not_privileged() -> None:
    kernel = SimKernel(privileged=False)
    with pytest.raises(NotPrivileged, match="EPERM"):
        xenpure.connect(kernel=kernel)
    assert not kernel.open_devices and kernel.live_mappings == 0


def test_fallback_buffers_when_the_hypercall_device_is_hidden() -> None:
    kernel = SimKernel(devices=("privcmd", "xenbus"))
    with xenpure.connect(kernel=kernel) as host:
        assert kernel.buffer_source == "locked anonymous memory"
        assert [d.id for d in host.domains()] == [0]


def _num_domains(lie: int) -> Callable[[str, bytes], bytes]:
    """A tamper that makes Xen's getdomaininfolist answer claim ``lie`` more domains than it wrote."""

    def tamper(subop: str, data: bytes) -> bytes:
        if subop == "getdomaininfolist" and len(data) < 100:  # the sysctl record, not an entry
            n = int.from_bytes(data[16:20], "little")
            return data[:16] + (n + lie).to_bytes(4, "little") + data[20:]
        return data

    return tamper


def test_oversized_domain_list_is_a_protocol_error(sim_xen: SimXen) -> None:
    kernel = SimKernel(sim_xen)
    with _leaves_nothing_open(kernel), xenpure.connect(kernel=kernel) as host:
        sim_xen.tamper = _num_domains(10_000 - 1)
        with pytest.raises(ProtocolError, match="10000 domains"):
            host.domains()
        sim_xen.tamper = None
        assert [d.id for d in host.domains()] == [0]


def test_truncated_domain_list_is_a_protocol_error(sim_xen: SimXen) -> None:
    """Xen's answer counts one more record than its buffer holds: the record that is not there reads as
    zeroes (domid 0 again), and the decoder refuses it rather than invent a domain."""
    guest = sim_xen.add_domain()
    kernel = SimKernel(sim_xen)
    with _leaves_nothing_open(kernel), xenpure.connect(kernel=kernel) as host:
        sim_xen.tamper = _num_domains(1)
        with pytest.raises(ProtocolError, match="out of order"):
            host.domains()
        sim_xen.tamper = None
        assert [d.id for d in host.domains()] == [0, guest.domid]


def test_answer_for_another_domain_is_refused(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    guest = sim_xen.add_domain()
    sim_xen.tamper = lambda subop, data: (guest.domid + 1).to_bytes(2, "little") + data[2:]
    with pytest.raises(NoSuchDomain):
        sim_host.domain(guest.domid).info()


@pytest.mark.parametrize("chunk", [1024, 65536])  # in the scratch buffer; in a buffer of its own
def test_oversized_console_count_is_a_protocol_error(sim_xen: SimXen, chunk: int) -> None:
    kernel = SimKernel(sim_xen)
    with _leaves_nothing_open(kernel), xenpure.connect(kernel=kernel) as host:
        sim_xen.tamper = lambda subop, data: data[:16] + (1 << 20).to_bytes(4, "little") + data[20:]
        with pytest.raises(ProtocolError, match=f"readconsole reported 1048576 bytes for a {chunk}-byte"):
            host.dmesg(chunk=chunk)
        assert kernel.live_mappings == 1  # the scratch buffer only: a buffer of its own was unmapped
        sim_xen.tamper = None
        assert host.dmesg(chunk=chunk) == sim_xen.console.decode()


def test_nothing_leaks(sim_xen: SimXen) -> None:
    kernel = SimKernel(sim_xen)
    with _leaves_nothing_open(kernel):
        for _ in range(20):
            with xenpure.connect(kernel=kernel) as host:
                host.domains()
                host.physinfo()
                with pytest.raises(NoSuchDomain):
                    host.domain(77)
