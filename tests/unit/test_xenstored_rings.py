"""The core's one door out (``DomainRings``): INTRODUCE attaches a ring before the domain counts, RELEASE and
``domain_gone`` detach it; the number of /dev/xen/xenbus_backend's ioctl; ``--pid-file`` and ``--xen``
without Xen."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xenpure import errors as E
from xenpure.hypercall.abi import IOCTLS
from xenpure.hypercall.abi.linux_xenbus import IOCTL_XENBUS_BACKEND_EVTCHN, IOCTL_XENBUS_BACKEND_SETUP
from xenpure.xenstore import _wire as W
from xenpure.xenstore.server import Send, ServerCore


class Rings:
    def __init__(self, fail: OSError | None = None, detach_fails: bool = False) -> None:
        self.fail = fail
        self.detach_fails = detach_fails
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def attach(self, domid: int, gfn: int, port: int) -> None:
        self.calls.append(("attach", (domid, gfn, port)))
        if self.fail is not None:
            raise self.fail

    def detach(self, domid: int) -> None:
        self.calls.append(("detach", (domid,)))
        if self.detach_fails:
            raise OSError(errno.EBADF, "already closed")


def _events(outputs: list[object]) -> list[bytes]:
    return [o.data for o in outputs if isinstance(o, Send)]


def setup(rings: Rings) -> tuple[ServerCore, int]:
    core = ServerCore(rings=rings)
    dom0 = core.connect(0)
    core.call(dom0, W.Watch("@introduceDomain", "i"))
    core.call(dom0, W.Watch("@releaseDomain", "r"))
    return core, dom0


def test_introduce_attaches_first_then_fires() -> None:
    rings = Rings()
    core, dom0 = setup(rings)
    _, out = core.call(dom0, W.Introduce(3, 0x1234, 7))
    assert rings.calls == [("attach", (3, 0x1234, 7))]
    assert 3 in core.domains and len(_events(out)) == 1
    _, out = core.call(dom0, W.Introduce(3, 0x1234, 7))  # the same again: no second attach, no event
    assert rings.calls == [("attach", (3, 0x1234, 7))] and out == []


@pytest.mark.parametrize(
    ("err", "error"),
    [
        (errno.EPERM, E.XenstorePermission),
        (errno.EINVAL, E.XenstoreInvalid),
        (errno.ESRCH, E.NoEntry),  # no such domain: the wire has no ESRCH
        (errno.ENODEV, E.XenstoreIOError),  # a name the wire does not know
    ],
)
def test_a_failed_attach_answers_its_errno_and_introduces_nothing(err: int, error: type[Exception]) -> None:
    core, dom0 = setup(Rings(OSError(err, "refused")))
    with pytest.raises(error):
        core.call(dom0, W.Introduce(3, 1, 7))
    assert 3 not in core.domains
    assert core.call(dom0, W.IsDomainIntroduced(3))[0] is False
    # on the wire too: the reply is the error, and no watch event follows it
    raw = W.Message(W.XsType.INTRODUCE, 9, 0, W.Introduce(3, 1, 7).payload()).encode()
    outs = core.receive_data(dom0, raw)
    assert len(outs) == 1 and W.XsType.ERROR == int.from_bytes(outs[0].data[:4], "little")  # type: ignore[union-attr]


def test_release_detaches_and_domain_gone_does_too() -> None:
    rings = Rings()
    core, dom0 = setup(rings)
    core.call(dom0, W.Introduce(3, 1, 7))
    core.call(dom0, W.Introduce(4, 2, 8))
    core.call(dom0, W.Write("/local/domain/4/x", b"1"))
    core.call(dom0, W.SetPerms("/local/domain/4/x", (W.Perm(4, W.PermAccess.NONE),)))
    _, out = core.call(dom0, W.Release(3))
    assert rings.calls[-1] == ("detach", (3,)) and b"@releaseDomain" in b"".join(_events(out))
    out2 = core.domain_gone(4)
    assert rings.calls[-1] == ("detach", (4,))
    assert 4 not in core.domains and "/local/domain/4/x" not in core.store.nodes
    assert any(b"@releaseDomain" in e for e in _events(out2))
    calls = len(rings.calls)
    out3 = core.domain_gone(9)  # never introduced: only the event, nothing to detach
    assert len(rings.calls) == calls and any(b"@releaseDomain" in e for e in _events(out3))


def test_a_failing_detach_still_forgets_the_domain() -> None:
    core, dom0 = setup(Rings(detach_fails=True))
    core.call(dom0, W.Introduce(3, 1, 7))
    core.call(dom0, W.Release(3))
    assert 3 not in core.domains


def test_the_xenbus_backend_ioctls_are_in_the_catalogue() -> None:
    # Their numbers are checked against <xen/sys/xenbus_dev.h> by gcc in tests/conformance.
    assert IOCTLS["IOCTL_XENBUS_BACKEND_EVTCHN"] is IOCTL_XENBUS_BACKEND_EVTCHN
    assert IOCTLS["IOCTL_XENBUS_BACKEND_SETUP"] is IOCTL_XENBUS_BACKEND_SETUP


def _xenstored(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "xenpure", "xenstored", *args], stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(os.path.exists("/proc/xen/capabilities"), reason="this machine has Xen")
def test_xen_mode_without_xen_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    sock, pid_file = tmp_path / "s", tmp_path / "xenstored.pid"
    p = _xenstored("--xen", "--socket", str(sock), "--pid-file", str(pid_file))
    _, err = p.communicate(timeout=30)
    assert p.returncode == 1
    assert "Xen is not available" in err
    assert not pid_file.exists() and not sock.exists()
