"""on_poweroff / on_reboot / on_crash enforced by ``Supervisor`` on the simulated host: guests built by the
real builder shut down as a guest does (SCHEDOP_shutdown: Xen records the reason), and the supervisor
acts on what getdomaininfo then says."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import xenpure
from xenpure.domain import Action, Applied, ConfigError, DomainConfig, Outcome, RestartLoop, Supervisor
from xenpure.hypercall.abi.sched import ShutdownReason
from xenpure.testing import SimKernel, SimXen
from xenpure.testing._kernels import make_elf


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    p = tmp_path / "vmlinux"
    p.write_bytes(make_elf())
    return p


def running(host: xenpure.Host, kernel: Path, **kw: object) -> tuple[DomainConfig, xenpure.Domain]:
    cfg = DomainConfig(name=str(kw.pop("name", "g1")), kernel=kernel, memory=32, **kw)  # type: ignore[arg-type]
    d = host.create(cfg)
    d.start()
    return cfg, d


def guest_shuts_down(xen: SimXen, domid: int, reason: ShutdownReason) -> None:
    """What the guest's own SCHEDOP_shutdown does: Xen marks it shut down with the reason."""
    xen.shutdown_domain(xen.domains[domid], int(reason))


def test_nothing_happens_while_the_guest_runs(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    cfg, d = running(sim_host, kernel)
    sup = Supervisor(sim_host, cfg, d)
    assert sup.check() is None and sup.applied == []
    assert not d.info().shutdown


def test_poweroff_destroy(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    cfg, d = running(sim_host, kernel, on_poweroff="destroy")
    seen: list[Applied] = []
    sup = Supervisor(sim_host, cfg, d, on_action=seen.append)
    guest_shuts_down(sim_xen, d.id, ShutdownReason.poweroff)
    assert sup.check() is Outcome.DESTROYED
    assert seen == sup.applied == [Applied(d.id, "g1", ShutdownReason.poweroff, Action.DESTROY)]
    assert not d.exists()
    assert str(d.id) not in sim_host.xenstore.directory("/local/domain")


def test_reboot_restart_rebuilds_the_same_config(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    cfg, d = running(sim_host, kernel, on_reboot="restart", on_poweroff="preserve", vcpus=2)
    sup = Supervisor(sim_host, cfg, d)
    guest_shuts_down(sim_xen, d.id, ShutdownReason.reboot)
    assert sup.check() is None  # still following: the new incarnation
    (a,) = sup.applied
    assert (a.domid, a.action, a.reason) == (d.id, Action.RESTART, ShutdownReason.reboot)
    new = sim_host.domain("g1")
    assert a.new_domid == new.id == sup.domid and new.id != d.id
    assert not d.exists()
    info = new.info()
    assert info.uuid == cfg.uuid and not info.paused and info.online_vcpus == 2 and info.memory_kib == 32 * 1024
    assert sim_xen.build.guest_view(new.id).start_info.nr_pages == 32 * 256  # really built again
    # The new incarnation is followed too: its poweroff is preserved.
    guest_shuts_down(sim_xen, new.id, ShutdownReason.poweroff)
    assert sup.check() is Outcome.PRESERVED
    assert new.info().shutdown_reason is ShutdownReason.poweroff


def test_rename_restart_keeps_the_dead_domain_under_another_name(sim_host: xenpure.Host, sim_xen: SimXen,
                                                                 kernel: Path) -> None:
    cfg, d = running(sim_host, kernel, on_crash="rename-restart")
    sup = Supervisor(sim_host, cfg, d)
    guest_shuts_down(sim_xen, d.id, ShutdownReason.crash)
    assert sup.check() is None
    (a,) = sup.applied
    assert a.action is Action.RENAME_RESTART and a.renamed_to == f"g1-{d.id}"
    assert d.info().crashed and d.name == f"g1-{d.id}"
    assert sim_host.xenstore.read(f"/vm/{cfg.uuid}/name") == f"g1-{d.id}".encode()
    new = sim_host.domain("g1")
    assert new.id == a.new_domid != d.id
    assert new.info().uuid != cfg.uuid and not new.info().paused


def test_crash_preserve_and_watchdog_destroy(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    cfg, d = running(sim_host, kernel, on_crash="preserve")
    guest_shuts_down(sim_xen, d.id, ShutdownReason.crash)
    assert Supervisor(sim_host, cfg, d).check() is Outcome.PRESERVED
    assert d.info().crashed
    d.destroy()
    cfg, d = running(sim_host, kernel, name="g2", on_crash="preserve", on_poweroff="preserve")
    guest_shuts_down(sim_xen, d.id, ShutdownReason.watchdog)
    assert Supervisor(sim_host, cfg, d).check() is Outcome.DESTROYED  # xl's on_watchdog default


def test_suspend_is_left_to_whoever_suspended(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    cfg, d = running(sim_host, kernel)
    sup = Supervisor(sim_host, cfg, d)
    guest_shuts_down(sim_xen, d.id, ShutdownReason.suspend)
    assert sup.check() is None and sup.applied == [] and d.exists()


def test_someone_else_destroys_it(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    cfg, d = running(sim_host, kernel)
    sup = Supervisor(sim_host, cfg, d)
    d.destroy()
    assert sup.check() is Outcome.GONE and sup.applied == []


def test_a_restart_loop_is_stopped(sim_host: xenpure.Host, sim_xen: SimXen, kernel: Path) -> None:
    cfg, d = running(sim_host, kernel, on_reboot="restart")
    sup = Supervisor(sim_host, cfg, d, max_restarts=2, restart_window=600)
    for _ in range(2):
        guest_shuts_down(sim_xen, sup.domid, ShutdownReason.reboot)
        assert sup.check() is None
    last = sup.domid
    guest_shuts_down(sim_xen, last, ShutdownReason.reboot)
    with pytest.raises(RestartLoop, match="restarted 2 times"):
        sup.check()
    assert set(sim_xen.domains) == {0}
    assert [a.action for a in sup.applied] == [Action.RESTART, Action.RESTART, Action.DESTROY]


def test_run_is_woken_by_the_shutdown(sim_xen: SimXen, kernel: Path) -> None:
    """run() in a thread of its own (its own connection), the guest powers off, run() returns DESTROYED."""
    with xenpure.connect(kernel=SimKernel(sim_xen)) as host:
        cfg, d = running(host, kernel, on_poweroff="destroy")
    result: list[object] = []

    def follow() -> None:
        with xenpure.connect(kernel=SimKernel(sim_xen)) as h:
            try:
                result.append(Supervisor(h, cfg, d.id).run(timeout=60))
            except BaseException as e:  # pragma: no cover - reported below
                result.append(e)

    t = threading.Thread(target=follow)
    t.start()
    guest_shuts_down(sim_xen, d.id, ShutdownReason.poweroff)
    t.join(60)
    assert result == [Outcome.DESTROYED]
    assert d.id not in sim_xen.domains


def test_run_times_out_while_the_guest_runs(sim_host: xenpure.Host, kernel: Path) -> None:
    cfg, d = running(sim_host, kernel)
    assert Supervisor(sim_host, cfg, d, interval=0.05).run(timeout=0.3) is Outcome.TIMEOUT
    assert not d.info().shutdown


@pytest.mark.parametrize("action", ["coredump-destroy", "coredump-restart", "soft-reset"])
def test_unsupported_actions_are_refused_when_the_config_is_made(kernel: Path, action: str) -> None:
    with pytest.raises(ConfigError, match=f"on_crash='{action}' is an xl action xenpure does not support"):
        DomainConfig(name="g", kernel=kernel, on_crash=action)  # type: ignore[arg-type]
