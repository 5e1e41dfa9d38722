"""Creating PV guests with xenpure's pure-Python builder on real Xen 4.17, checked with xl and the console.

The guest is the lab's (tests/lab/conftest.py): the Debian kernel as an ELF (vmlinux) and as an xz bzImage
(vmlinuz), a busybox initramfs whose /init prints XENPURE-GUEST-UP on hvc0. xenconsoled logs each
guest's console to /var/log/xen/console/guest-NAME.log.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import xenpure
from xenpure.domain import BuildError, DomainConfig, KernelImageError, load_xl_config

MARKER = "XENPURE-GUEST-UP"
CONSOLE_LOG_DIR = Path("/var/log/xen/console")
BOOT_TIMEOUT = 150.0


def console(name: str) -> str:
    try:
        return (CONSOLE_LOG_DIR / f"guest-{name}.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_marker(name: str, timeout: float = BOOT_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while MARKER not in (seen := console(name)):
        if time.monotonic() > deadline:
            tail = "\n".join(seen.splitlines()[-25:])
            raise TimeoutError(f"{MARKER} not on {name}'s console within {timeout:.0f} s; tail:\n{tail}")
        time.sleep(0.5)
    return seen


@pytest.fixture
def host() -> Iterator[xenpure.Host]:
    with xenpure.connect() as h:
        yield h


@pytest.fixture
def lab_config(lab_guest_dir: Path) -> DomainConfig:
    cfg_file = lab_guest_dir / "guest.cfg"
    if not cfg_file.exists():
        pytest.skip(f"no lab guest in {lab_guest_dir}")
    return load_xl_config(cfg_file)


@pytest.fixture
def names(xl: Any) -> Iterator[Callable[[str], str]]:
    """Unique guest names; whatever still exists under them is destroyed with xl afterwards."""
    made: list[str] = []

    def make(tag: str) -> str:
        made.append(f"xp-{tag}-{os.getpid()}-{len(made)}")
        return made[-1]

    yield make
    for name in made:
        if xl.domid(name) is not None:
            xl.run("destroy", name)


def _xenstore_mentions(host: xenpure.Host, domid: int) -> list[str]:
    xs = host.xenstore
    left = []
    for path in (f"/local/domain/{domid}", f"/libxl/{domid}"):
        try:
            xs.directory(path)
            left.append(path)
        except FileNotFoundError:
            pass
    return left


def test_create_vmlinux_boots_and_xl_manages_it(
    host: xenpure.Host, lab_config: DomainConfig, names: Callable[[str], str], xl: Any, wait: Any
) -> None:
    name = names("elf")
    cfg = dataclasses.replace(lab_config, name=name)
    t0 = time.monotonic()
    d = host.create(cfg)
    built = time.monotonic() - t0
    assert d.info().paused
    d.start()
    print(f"xenpure create (vmlinux, {cfg.memory} MiB) to unpause: {built:.2f} s")
    wait_marker(name)  # the lab's cmdline has "quiet": the marker is the first line the console shows
    row = xl.list()[name]
    assert (row.domid, row.mem_mib, row.vcpus) == (d.id, cfg.memory, cfg.vcpus)
    # Directories the builder never writes on their own exist, with the domain directory's permissions.
    xs, home = host.xenstore, f"/local/domain/{d.id}"
    for sub in ("memory", "cpu", "store", "console", "control", "device"):
        assert xs.get_perms(f"{home}/{sub}") == xs.get_perms(home), sub
    # xl's own shutdown: control/shutdown through the guest's xenbus, then the guest powers off.
    xl("shutdown", "-w", name, timeout=120)
    wait(lambda: d.info().shutdown_reason is not None if d.exists() else True, 60, "the guest to shut down")
    if d.exists():
        d.destroy()
    wait(lambda: xl.domid(name) is None, 60, f"{name} to leave xl list")
    assert _xenstore_mentions(host, d.id) == []


def test_create_bzimage_boots_and_xenpure_destroys_it(
    host: xenpure.Host, lab_config: DomainConfig, lab_guest_dir: Path, names: Callable[[str], str], xl: Any,
    wait: Any,
) -> None:
    name = names("bz")
    cfg = dataclasses.replace(lab_config, name=name, kernel=lab_guest_dir / "vmlinuz")
    t0 = time.monotonic()
    d = host.create(cfg)
    print(f"xenpure create (bzImage, {cfg.memory} MiB) to unpause: {time.monotonic() - t0:.2f} s")
    d.start()
    wait_marker(name)
    assert name in xl.list()
    d.destroy()
    wait(lambda: xl.domid(name) is None, 60, f"{name} to leave xl list")
    assert _xenstore_mentions(host, d.id) == []
    assert not d.exists()


def test_xenpure_shutdown(host: xenpure.Host, lab_config: DomainConfig, names: Callable[[str], str], xl: Any,
                          wait: Any) -> None:
    name = names("sd")
    d = host.create(dataclasses.replace(lab_config, name=name))
    d.start()
    wait_marker(name)
    d.shutdown(wait=True, timeout=120)
    d.destroy()
    wait(lambda: xl.domid(name) is None, 60, f"{name} to leave xl list")
    assert _xenstore_mentions(host, d.id) == []


@pytest.mark.parametrize("breakage", ["truncated", "wrong-arch", "bad-notes"])
def test_broken_kernel_rejected_before_any_domain(
    host: xenpure.Host, lab_config: DomainConfig, tmp_path: Path, names: Callable[[str], str], breakage: str
) -> None:
    data = bytearray(lab_config.kernel.read_bytes())
    if breakage == "truncated":
        data = data[: len(data) // 3]
    elif breakage == "wrong-arch":
        data[18:20] = (183).to_bytes(2, "little")  # e_machine = EM_AARCH64
    else:
        # The first Xen note of the first PT_NOTE segment claims a descriptor far larger than its segment.
        phoff, phnum = struct.unpack_from("<Q", data, 32)[0], struct.unpack_from("<H", data, 56)[0]
        for i in range(phnum):
            p_type, _, p_offset = struct.unpack_from("<IIQ", data, phoff + i * 56)
            if p_type == 4:
                struct.pack_into("<I", data, p_offset + 4, 0x7FFFFFFF)
                break
        else:
            pytest.fail("the lab kernel has no PT_NOTE segment")
    bad = tmp_path / "vmlinux"
    bad.write_bytes(data)
    before = [i.domid for i in host.domain_infos()]
    with pytest.raises(KernelImageError):
        host.create(dataclasses.replace(lab_config, name=names("bad"), kernel=bad))
    assert [i.domid for i in host.domain_infos()] == before


@pytest.mark.parametrize("step", ["populate_physmap", "pin page tables", "setvcpucontext", "introduce"])
def test_injected_failure_leaves_no_domain(
    host: xenpure.Host, lab_config: DomainConfig, names: Callable[[str], str], xl: Any, step: str
) -> None:
    name = names("inj")
    before = [i.domid for i in host.domain_infos()]

    def fail(s: str) -> None:
        if s == step:
            raise RuntimeError("injected failure")

    with pytest.raises(BuildError, match=f"step '{step}'") as ei:
        host.create(dataclasses.replace(lab_config, name=name), on_step=fail)
    assert not ei.value.leftovers
    # destroydomain returns once Xen has torn the domain down; wait for it to finish dying.
    deadline = time.monotonic() + 30
    while [i.domid for i in host.domain_infos()] != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [i.domid for i in host.domain_infos()] == before
    assert xl.domid(name) is None


def test_two_concurrent_builds_both_boot(lab_config: DomainConfig, names: Callable[[str], str], xl: Any) -> None:
    cfgs = [dataclasses.replace(lab_config, name=names(f"c{i}")) for i in range(2)]
    ids: dict[str, int] = {}
    errors: list[BaseException] = []

    def build(cfg: DomainConfig) -> None:
        try:
            with xenpure.connect() as h:
                d = h.create(cfg)
                d.start()
                ids[cfg.name] = d.id
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=build, args=(c,)) for c in cfgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(set(ids.values())) == 2
    for c in cfgs:
        wait_marker(c.name)
    with xenpure.connect() as h:
        for c in cfgs:
            h.domain(ids[c.name]).destroy()


def test_create_speed_against_xl(host: xenpure.Host, lab_config: DomainConfig, lab_guest_dir: Path,
                                 names: Callable[[str], str], xl: Any, tmp_path: Path) -> None:
    """create -> paused, for xenpure and for `xl create -p`, same kernel and memory (printed; a ratio)."""
    rows = []
    for kernel in ("vmlinux", "vmlinuz"):
        name = names("bx")
        cfg_file = tmp_path / f"{kernel}.cfg"
        shutil.copy(lab_guest_dir / "guest.cfg", cfg_file)
        t0 = time.monotonic()
        xl("create", "-p", str(cfg_file), f'name="{name}"', f'kernel="{lab_guest_dir / kernel}"', timeout=300)
        t_xl = time.monotonic() - t0
        xl("destroy", name)
        name = names("bp")
        t0 = time.monotonic()
        d = host.create(dataclasses.replace(lab_config, name=name, kernel=lab_guest_dir / kernel))
        t_xp = time.monotonic() - t0
        d.destroy()
        rows.append((kernel, t_xl, t_xp))
    for kernel, t_xl, t_xp in rows:
        print(f"BENCH create-to-paused {kernel}: xl {t_xl:.2f} s, xenpure {t_xp:.2f} s, ratio {t_xp / t_xl:.2f}")


def test_cli_create(lab_guest_dir: Path, tmp_path: Path, names: Callable[[str], str], xl: Any, wait: Any) -> None:
    """`xenpure create FILE` on the lab's own xl.cfg (renamed), then `xenpure destroy`."""
    import subprocess

    name = names("cli")
    cfg = tmp_path / "g.cfg"
    text = (lab_guest_dir / "guest.cfg").read_text()
    cfg.write_text("\n".join(f'name = "{name}"' if line.startswith("name") else line for line in text.splitlines()))
    out = subprocess.run(["python3", "-m", "xenpure", "create", str(cfg)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"created domain {name}" in out.stdout
    wait_marker(name)
    assert xl.list()[name].mem_mib == 128
    out = subprocess.run(["python3", "-m", "xenpure", "destroy", name], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    wait(lambda: xl.domid(name) is None, 60, f"{name} to leave xl list")


# ---------------------------------------------------------------- console, supervisor


def _cfg_file(lab_guest_dir: Path, tmp_path: Path, name: str, **keys: str) -> Path:
    """The lab's xl.cfg under another name, with ``keys`` set (string values)."""
    skip = {"name", *keys}
    lines = [line for line in (lab_guest_dir / "guest.cfg").read_text().splitlines()
             if line.split("=", 1)[0].strip() not in skip]
    lines += [f'name = "{name}"'] + [f'{k} = "{v}"' for k, v in keys.items()]
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _xenpure(*args: str, timeout: float = 300) -> Any:
    import subprocess

    return subprocess.run(["python3", "-m", "xenpure", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _supervisor_pid(stderr: str) -> tuple[int, Path]:
    import re

    m = re.search(r"followed by supervisor pid (\d+) \(log (.+)\)", stderr)
    assert m, f"no supervisor announced: {stderr!r}"
    return int(m.group(1)), Path(m.group(2))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_cli_create_console_shows_the_boot(lab_guest_dir: Path, tmp_path: Path, names: Callable[[str], str],
                                           wait: Any) -> None:
    """`xenpure create --console FILE` without a terminal: stdout carries the guest's console (read here with a
    deadline, never a blocking read), and the process is stopped once the marker was seen."""
    import selectors
    import subprocess

    name = names("con")
    cfg = _cfg_file(lab_guest_dir, tmp_path, name)
    proc = subprocess.Popen(["python3", "-m", "xenpure", "create", "--console", "-e", str(cfg)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = b""
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + BOOT_TIMEOUT + 60
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while MARKER.encode() not in out and time.monotonic() < deadline:
                if sel.select(min(1.0, max(0.0, deadline - time.monotonic()))):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break  # the CLI exited
                    out += chunk
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    text = out.decode(errors="replace")
    assert f"created domain {name}" in text, (text[-2000:], err)
    assert MARKER in text, f"no marker on the CLI's console within the deadline; stdout tail:\n{text[-2000:]}\n{err}"
    # The same boot xenconsoled logged: what the CLI relayed is the guest's console, not something else.
    assert MARKER in wait_marker(name)


def test_on_poweroff_destroy_by_the_background_supervisor(
    lab_guest_dir: Path, tmp_path: Path, names: Callable[[str], str], xl: Any, wait: Any
) -> None:
    """`xenpure create` leaves a supervisor behind; `xl shutdown` powers the guest off (its /sbin/poweroff),
    and on_poweroff="destroy" makes the supervisor destroy it, then exit."""
    name = names("off")
    cfg = _cfg_file(lab_guest_dir, tmp_path, name, on_poweroff="destroy")
    r = _xenpure("create", str(cfg))
    assert r.returncode == 0, r.stderr
    pid, log = _supervisor_pid(r.stderr)
    assert _alive(pid)
    wait_marker(name)
    xl("shutdown", name)
    wait(lambda: xl.domid(name) is None, 180, f"{name} to be destroyed by its supervisor")
    wait(lambda: not _alive(pid), 60, "the supervisor to exit")
    text = log.read_text()
    assert "shut down (poweroff): destroy" in text and "done: destroyed" in text, text


def test_on_reboot_restart_comes_back_with_a_new_domid(
    lab_guest_dir: Path, tmp_path: Path, names: Callable[[str], str], xl: Any, wait: Any
) -> None:
    """on_reboot="restart": `xenpure reboot` makes the guest reboot itself; the supervisor destroys it and
    builds the same config again (same name, new domid), which boots to the marker again."""
    name = names("rb")
    cfg = _cfg_file(lab_guest_dir, tmp_path, name, on_reboot="restart")
    r = _xenpure("create", str(cfg))
    assert r.returncode == 0, r.stderr
    pid, log = _supervisor_pid(r.stderr)
    first = wait_marker(name)
    old = xl.domid(name)
    assert old is not None
    r = _xenpure("reboot", name)
    assert r.returncode == 0, r.stderr
    wait(lambda: xl.domid(name) not in (None, old), 240, f"{name} to come back with a new domid")

    def booted_again() -> bool:
        now = console(name)
        return now.count(MARKER) >= 2 or (not now.startswith(first) and MARKER in now)

    wait(booted_again, BOOT_TIMEOUT, f"{name}'s second boot to reach its marker")
    new = xl.domid(name)
    assert new is not None and new != old
    assert f"restarted as domain {new}" in log.read_text()
    assert _alive(pid)  # still following the new incarnation
    r = _xenpure("destroy", name)
    assert r.returncode == 0, r.stderr
    wait(lambda: not _alive(pid), 60, "the supervisor to notice the domain is gone and exit")
    assert "done: gone" in log.read_text()


# ---------------------------------------------------------------- memory map, hypercall page


def test_guest_sees_the_e820_up_to_maxmem_and_balloons_into_it(
    host: xenpure.Host, lab_config: DomainConfig, names: Callable[[str], str], wait: Any
) -> None:
    """XENMEM_set_memory_map gives the guest one RAM range up to maxmem: its boot log (ignore_loglevel, so
    the e820 lines reach the console) shows it, and the balloon grows the guest past its initial memory
    when memory/target asks for maxmem. (Without a map Xen 4.17 gave this guest memory + 8 MiB.)"""
    name = names("e820")
    cmdline = " ".join(w for w in lab_config.cmdline.split() if w != "quiet") + " ignore_loglevel"
    cfg = dataclasses.replace(lab_config, name=name, memory=128, maxmem=256, cmdline=cmdline)
    d = host.create(cfg)
    d.start()
    text = wait_marker(name)
    end = cfg.maxmem_kib * 1024 - 1
    ranges = [line.split("Xen: ", 1)[1] for line in text.splitlines() if "Xen: [mem" in line]
    assert any(r.startswith("[mem ") and r.split("-", 1)[1].startswith(f"{end:#018x}] usable") for r in ranges), ranges
    d.set_memory(cfg.maxmem_kib)
    wait(lambda: d.info().memory_kib > 200 * 1024, 180, f"{name}'s balloon to grow past 200 MiB (maxmem 256)")
    d.destroy()


def test_hypercall_init_on_real_xen_matches_the_simulator(
    host: xenpure.Host, lab_config: DomainConfig, names: Callable[[str], str]
) -> None:
    """No kernel in the lab carries a HYPERCALL_PAGE note (Debian's 6.1 dropped it), so the builder's step is
    not booted here; what it relies on is checked instead: on a paused guest, Xen fills a page of the
    domain with the stubs the simulator writes, and refuses what the simulator refuses."""
    from xenpure.domain._builder import build_pv
    from xenpure.foreignmemory import ForeignMemory
    from xenpure.hypercall.abi.domctl import DomctlCmd
    from xenpure.testing._build import hypercall_stub

    report = build_pv(host, dataclasses.replace(lab_config, name=names("hc")))
    d = xenpure.Domain(host, report.domid)
    try:
        page_mfn = report.p2m[report.layout.kernel.pfn + 1]
        host._domctl(DomctlCmd.hypercall_init, d.id, {"gmfn": page_mfn})
        with ForeignMemory.open(host.kernel) as fm, fm.map(d.id, [page_mfn]) as m:
            page = bytes(m.view[:4096])
        assert page == b"".join(hypercall_stub(nr) for nr in range(128))
        with pytest.raises(xenpure.OperationNotPermitted):  # a pinned page table
            host._domctl(DomctlCmd.hypercall_init, d.id, {"gmfn": report.p2m[report.layout.l4_pfn]})
        with pytest.raises(xenpure.InvalidArgument):  # not a frame of the domain
            host._domctl(DomctlCmd.hypercall_init, d.id, {"gmfn": 0xFFFFFFFFF})
    finally:
        d.destroy()


def test_on_crash_rename_restart_in_process(
    host: xenpure.Host, lab_config: DomainConfig, names: Callable[[str], str], xl: Any, wait: Any
) -> None:
    """A Supervisor in a thread of this process: the guest is shut down with reason crash (as Xen records a
    crash: SCHEDOP_remote_shutdown), on_crash="rename-restart" keeps the dead domain as NAME-<domid> and
    boots a new NAME; `xl list` shows both."""
    from xenpure.domain import Action, Outcome, Supervisor
    from xenpure.hypercall.abi.sched import ShutdownReason

    name = names("rr")
    cfg = dataclasses.replace(lab_config, name=name, on_crash=Action.RENAME_RESTART)
    d = host.create(cfg)
    d.start()
    first = wait_marker(name)
    result: list[object] = []

    def follow() -> None:
        with xenpure.connect() as h:
            sup = Supervisor(h, cfg, d.id)
            try:
                result.append(sup.run(timeout=240))
            except BaseException as e:
                result.append(e)
            result.append(sup)

    t = threading.Thread(target=follow)
    t.start()
    try:
        time.sleep(1)
        d.remote_shutdown(ShutdownReason.crash)
        kept = f"{name}-{d.id}"
        wait(lambda: kept in xl.list() and (xl.domid(name) or d.id) != d.id, 240,
             f"{name} to be kept as {kept} and restarted")
        rows = xl.list()
        assert rows[kept].domid == d.id and "c" in rows[kept].state, rows[kept]
        new = rows[name].domid

        def booted_again() -> bool:  # xenconsoled logs the new incarnation under the same name
            now = console(name)
            return now.count(MARKER) >= 2 or (not now.startswith(first) and MARKER in now)

        wait(booted_again, BOOT_TIMEOUT, f"the new {name} to reach its marker")
        host.domain(new).destroy()
    finally:
        t.join(120)
        if d.exists():
            d.destroy()
    assert result and result[0] is Outcome.GONE, result
    sup = result[1]
    assert isinstance(sup, Supervisor)
    (a,) = sup.applied
    assert (a.action, a.renamed_to, a.new_domid) == (Action.RENAME_RESTART, kept, new)
