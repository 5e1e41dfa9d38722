"""VIRQ_DOM_EXC fires when a PV guest started with ``xl create`` is shut down and destroyed.

A global VIRQ is bound once per domain, and in dom0 xenstored holds VIRQ_DOM_EXC (a second bind answers
EEXIST: see test_evtchn_lab.py). So this test stops xenstored first, and must run alone and last in its
lab boot: nothing that needs xenstore works afterwards. It runs only when asked:

    tools/xenlab -e XENPURE_LAB_STOPS_XENSTORED=1 -- python3 -m pytest -v tests/lab/test_virq_dom_exc_lab.py

The guest is destroyed through xenpure (SCHEDOP_remote_shutdown, then XEN_DOMCTL_destroydomain), since
``xl destroy`` needs xenstored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import xenpure
from xenpure.errors import AlreadyExists, NoSuchDomain
from xenpure.evtchn import EventChannels, EvtchnOps, EvtchnStat, Virq
from xenpure.hypercall.abi.domctl import DomctlCmd
from xenpure.hypercall.abi.sched import ShutdownReason

GUEST_CFG = Path("/var/lib/xenpure-lab/guest/guest.cfg")
WAIT = 20.0

pytestmark = pytest.mark.skipif(
    os.environ.get("XENPURE_LAB_STOPS_XENSTORED") != "1",
    reason="stops xenstored: run it alone and last, with XENPURE_LAB_STOPS_XENSTORED=1 (see the docstring)",
)


@pytest.fixture
def host() -> Iterator[xenpure.Host]:
    with xenpure.connect() as h:
        yield h


def xenstored_pids() -> list[int]:
    out = subprocess.run(["pidof", "oxenstored", "xenstored"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_virq_dom_exc_fires_when_an_xl_guest_goes(host: xenpure.Host) -> None:
    name = f"xenpure-virq-{os.getpid()}"
    subprocess.run(["xl", "create", str(GUEST_CFG), f'name="{name}"'], check=True, capture_output=True, timeout=120)
    domid = int(subprocess.run(["xl", "domid", name], check=True, capture_output=True, text=True).stdout)
    with EventChannels.open(host.kernel) as evt:
        with pytest.raises(AlreadyExists):
            evt.bind_virq(Virq.DOM_EXC)  # xenstored's
        pids = xenstored_pids()
        assert pids, "no xenstored to stop"
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + WAIT
        while True:  # its descriptor closes as it exits, which unbinds its VIRQ_DOM_EXC port
            try:
                virq = evt.bind_virq(Virq.DOM_EXC)
                break
            except AlreadyExists:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        st = EvtchnOps(host.privcmd).status(0, virq.port)
        assert (st.state, st.virq) == (EvtchnStat.virq, Virq.DOM_EXC)
        assert evt.wait(1.0) == []

        host.domain(domid).remote_shutdown(ShutdownReason.poweroff)
        assert virq.port in evt.wait(WAIT)
        virq.unmask()
        host.privcmd.domctl(host.interface, DomctlCmd.destroydomain, domid)
        assert virq.port in evt.wait(WAIT)
        # Destroyed: gone, or dying while someone still maps its pages (xenconsoled does, and without
        # xenstored it never hears that the domain died): observed in the lab.
        try:
            assert host.domain(domid).info(name=False).dying  # xenstored is stopped: ask Xen alone
        except NoSuchDomain:
            pass
