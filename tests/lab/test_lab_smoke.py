"""The lab proves itself: a real Xen 4.17, a real dom0, a guest that boots and stops.

If these fail, no other lab result means anything. They use only `xl`, xenstore
CLI tools and /proc, never xenpure, so they also tell a broken lab from a broken
library.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def test_hypervisor_is_xen_4_17(xl):
    info = xl.info()
    assert (info["xen_major"], info["xen_minor"]) == ("4", "17")
    assert "xen-3.0-x86_64" in info["xen_caps"]


def test_we_are_the_control_domain(xl):
    assert "control_d" in Path("/proc/xen/capabilities").read_text()
    for dev in ("privcmd", "evtchn", "gntdev", "gntalloc", "xenbus"):
        assert Path("/dev/xen", dev).exists(), dev
    dom0 = xl.list()["Domain-0"]
    assert dom0.domid == 0 and dom0.state[0] == "r"  # it is running this test


def test_xenstored_answers():
    out = subprocess.run(["xenstore-read", "/local/domain/0/name"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "Domain-0"


def test_guest_boots_to_its_marker(xl, guest):
    assert xl.list()[guest.name].domid == guest.domid
    console = guest.wait_console(guest.MARKER)
    assert "XENPURE-GUEST-UP kernel" in console


def test_guest_orderly_shutdown(xl, guest, wait):
    guest.wait_console()  # the kernel must be up to hear the request
    xl("shutdown", "-w", guest.name)  # xenstore control/shutdown -> guest runs /sbin/poweroff
    # `-w` returns once the guest has shut down; xl's monitor then applies on_poweroff="destroy".
    wait(lambda: guest.name not in xl.list(), 60, f"{guest.name} destroyed after its poweroff")


def test_guest_destroy(xl, guest):
    xl("destroy", guest.name)
    assert xl.domid(guest.name) is None


def test_guest_pause_unpause(xl, guest):
    xl("pause", guest.name)
    assert xl.list()[guest.name].state[2] == "p"
    xl("unpause", guest.name)
    assert xl.list()[guest.name].state[2] == "-"


def test_xl_error_carries_stderr(xl):
    with pytest.raises(xl.Error, match="no-such-domain"):
        xl("domid", "no-such-domain")


def test_parsers_on_real_output(xl):
    # The parsers are fed the real output above; here, their edge cases.
    assert xl.parse_list("Name ID Mem VCPUs State Time(s)\nmy guest 3 128 1 -b---- 1.5\n")["my guest"].domid == 3
    assert xl.parse_info("xen_commandline        : a=b c:d\n")["xen_commandline"] == "a=b c:d"
