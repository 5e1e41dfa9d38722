"""The lab tier: tests that run inside a real Xen 4.17 dom0 (booted by tools/xenlab).

Rule 1: a lab test talks to the real hypervisor, the real xenstored and the real
`xl`; outside a dom0 the whole tier is skipped with a visible reason, never faked.

Run it:  tools/xenlab -- python3 -m pytest -v tests/lab

Fixtures (all function-scoped unless said):

``xl``
    Runs the real toolstack. ``xl("pause", name)`` returns stdout and raises
    ``xl.Error`` (with stderr) on a non-zero exit; ``xl.run(...)`` returns the
    CompletedProcess without checking; ``xl.list()`` parses ``xl list`` into
    ``{name: XlDomain}``; ``xl.info()`` parses ``xl info`` into ``{key: str}``.
    Session-scoped.
``guest``
    A running PV guest built from the lab's guest artefacts (see below),
    with a unique name. Yields a ``Guest`` (domid, name, console helpers); it
    is destroyed in teardown whatever the test did to it.
``make_guest``
    Factory for more guests, or guests with config overrides:
    ``make_guest(memory=256, vcpus=2)``; each is destroyed in teardown.
``lab_guest_dir``
    ``Path("/var/lib/xenpure-lab/guest")``: ``vmlinux`` (ELF kernel, fast to
    load), ``vmlinuz`` (the same kernel as a bzImage), ``initrd.cpio.gz``
    (busybox; /init prints ``XENPURE-GUEST-UP`` on hvc0; /sbin/poweroff and
    /sbin/reboot act at once, so ``xl shutdown``/``xl reboot`` work) and
    ``guest.cfg`` (type="pv", memory=128, vcpus=1).
``wait``
    ``wait(predicate, timeout, what)``: poll until true, else TimeoutError.

Guest console output is read from xenconsoled's log
(``/var/log/xen/console/guest-NAME.log``; the lab starts xenconsoled with
``--log=guest``), so nothing here attaches a terminal or can hang on one.

Under QEMU/TCG everything is 10-50x slower than native: timeouts here are
generous, and speed is only ever compared as a ratio within one run.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from xenpure.testing import in_control_domain

LAB_GUEST_DIR = Path("/var/lib/xenpure-lab/guest")
CONSOLE_LOG_DIR = Path("/var/log/xen/console")
GUEST_MARKER = "XENPURE-GUEST-UP"
SKIP_REASON = "not inside a Xen dom0: run it with tools/xenlab -- python3 -m pytest tests/lab"

XL_TIMEOUT = 120.0  # seconds for one xl command (xl create takes 3-17 s under TCG)
BOOT_TIMEOUT = 120.0  # seconds for a guest to print its marker


HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: runs only inside a real Xen dom0 (tools/xenlab)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items: touch only those in this folder.
    ours = [item for item in items if HERE in item.path.resolve().parents]
    skip = None if in_control_domain() else pytest.mark.skip(reason=SKIP_REASON)
    for item in ours:
        item.add_marker(pytest.mark.lab)
        if skip is not None:
            item.add_marker(skip)


# ---------------------------------------------------------------- xl


class XlError(Exception):
    """`xl` exited non-zero; carries argv, exit code, stdout and stderr."""

    def __init__(self, proc: subprocess.CompletedProcess[str]):
        self.proc = proc
        detail = proc.stderr.strip() or proc.stdout.strip()
        super().__init__(f"{' '.join(proc.args)} exited {proc.returncode}: {detail}")


@dataclass(frozen=True)
class XlDomain:
    """One row of `xl list`."""

    name: str
    domid: int
    mem_mib: int
    vcpus: int
    state: str  # six flags "rbpscd", '-' when unset; e.g. "-b----"
    cpu_time: float


def parse_xl_list(text: str) -> dict[str, XlDomain]:
    """Parse `xl list` output into {name: XlDomain}.

    Columns are parsed from the right, so a name with spaces survives.
    """
    domains: dict[str, XlDomain] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] == "Name":
            continue
        if len(fields) < 6:
            raise ValueError(f"unexpected `xl list` line: {line!r}")
        *name, domid, mem, vcpus, state, cpu_time = fields
        dom = XlDomain(" ".join(name), int(domid), int(mem), int(vcpus), state, float(cpu_time))
        domains[dom.name] = dom
    return domains


def parse_xl_info(text: str) -> dict[str, str]:
    """Parse `xl info` ("key   : value" lines) into {key: value}."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


class Xl:
    """The real `xl`, as a callable: xl("list", "-l") -> stdout.

    Tests reach the helpers through the fixture (xl.Error, xl.parse_list,
    xl.parse_info) rather than importing conftest, which pytest discourages.
    """

    Error = XlError
    parse_list = staticmethod(parse_xl_list)
    parse_info = staticmethod(parse_xl_info)

    def __call__(self, *args: str, timeout: float = XL_TIMEOUT) -> str:
        proc = self.run(*args, timeout=timeout)
        if proc.returncode != 0:
            raise XlError(proc)
        return proc.stdout

    def run(self, *args: str, timeout: float = XL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        # stdin closed: xl must never wait on a terminal inside the lab.
        return subprocess.run(["xl", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def list(self) -> dict[str, XlDomain]:
        return parse_xl_list(self("list"))

    def info(self) -> dict[str, str]:
        return parse_xl_info(self("info"))

    def domid(self, name: str) -> int | None:
        """The domid of a running domain called name, or None.

        `xl` itself occasionally dies of a signal under TCG (SIGABRT, a few times per full lab
        run). A crashed `xl domid` says nothing about the domain, so it is asked again rather
        than read as "no such domain"; only a clean non-zero exit means absent.
        """
        for _ in range(3):
            proc = self.run("domid", name)
            if proc.returncode == 0:
                return int(proc.stdout)
            if proc.returncode > 0:
                return None
        raise XlError(proc)


@pytest.fixture(scope="session")
def xl() -> Xl:
    return Xl()


# ---------------------------------------------------------------- guests


@dataclass(frozen=True)
class Guest:
    """A lab guest created by the `guest` or `make_guest` fixture."""

    domid: int
    name: str
    MARKER = GUEST_MARKER  # what the lab guest's /init prints once userspace runs

    @property
    def console_log(self) -> Path:
        return CONSOLE_LOG_DIR / f"guest-{self.name}.log"

    def console(self) -> str:
        """Everything the guest wrote on its console so far."""
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, text: str = GUEST_MARKER, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait until the console shows text; return the console so far."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.console()
            if text in seen:
                return seen
            if time.monotonic() > deadline:
                tail = "\n".join(seen.splitlines()[-20:])
                raise TimeoutError(f"{text!r} not on {self.name}'s console within {timeout:.0f} s; tail:\n{tail}")
            time.sleep(0.25)


_names = itertools.count(1)


def _cfg_value(value: object) -> str:
    # xl's config syntax: numbers bare, strings double-quoted, lists in [].
    if isinstance(value, bool) or not isinstance(value, int | float | list):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_cfg_value(v) for v in value) + "]"
    return str(value)


def _destroy(xl: Xl, guest: Guest) -> None:
    domid = xl.domid(guest.name)
    if domid is None:
        return  # already gone (shut down or destroyed by the test)
    xl.run("destroy", guest.name)
    deadline = time.monotonic() + 60
    while xl.domid(guest.name) is not None and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.fixture
def make_guest(xl: Xl) -> Iterator[Callable[..., Guest]]:
    """Factory: make_guest(**overrides) creates a PV guest and returns a Guest."""
    if not (LAB_GUEST_DIR / "guest.cfg").exists():
        pytest.skip(f"no lab guest in {LAB_GUEST_DIR}: this dom0 was not built by tools/xenlab")
    created: list[Guest] = []

    def make(**overrides: object) -> Guest:
        # Unique per process and call, so a leftover from a crashed test never clashes.
        name = str(overrides.pop("name", f"xenpure-t{os.getpid()}-{next(_names)}"))
        args = [f"name={_cfg_value(name)}"] + [f"{k}={_cfg_value(v)}" for k, v in overrides.items()]
        for attempt in (1, 2):
            try:
                xl("create", str(LAB_GUEST_DIR / "guest.cfg"), *args)
                break
            except BaseException as e:
                # A failed or timed-out create may still have left a domain behind.
                domid = xl.domid(name)
                crashed = isinstance(e, XlError) and e.proc.returncode < 0
                if crashed and attempt == 1:
                    # xl itself died of a signal (SIGABRT/SIGSEGV, seen a few times per full lab run under
                    # TCG): that is the toolstack's fault, not the test's. Clear up and try once more.
                    if domid is not None:
                        _destroy(xl, Guest(domid, name))
                    continue
                if domid is not None:
                    created.append(Guest(domid, name))
                raise
        domid = xl.domid(name)
        if domid is None:
            console = Guest(-1, name).console().splitlines()[-20:]
            raise RuntimeError(
                f"xl create reported success but no domain {name!r} exists (crashed at once and destroyed by"
                f" on_crash?); xl list:\n{xl.run('list').stdout}console tail:\n" + "\n".join(console)
            )
        created.append(Guest(domid, name))
        return created[-1]

    yield make
    for guest in created:
        _destroy(xl, guest)


@pytest.fixture
def guest(make_guest: Callable[..., Guest]) -> Guest:
    """A freshly created, running lab guest (not yet waited on: see Guest.wait_console)."""
    return make_guest()


@pytest.fixture
def lab_guest_dir() -> Path:
    return LAB_GUEST_DIR


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll predicate until true; raise TimeoutError naming what was awaited."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def wait() -> Callable[[Callable[[], bool], float, str], None]:
    """wait(predicate, timeout, what): poll until true, else TimeoutError."""
    return wait_until
