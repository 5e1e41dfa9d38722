"""Event channels against the real thing, where only the lab can go: a channel to a guest started by `xl`,
and the VIRQ dom0's xenstored holds. The scenarios both backends share are in tests/scenarios (run them in
the lab with ``tools/xenlab -- python3 -m pytest tests/scenarios``).

Runs inside the lab's dom0 only: ``tools/xenlab -- python3 -m pytest -v tests/lab/test_evtchn_lab.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import xenpure
from xenpure.errors import AlreadyExists
from xenpure.evtchn import EventChannels, EvtchnOps, EvtchnStat, Virq


@pytest.fixture(scope="module")
def host() -> Iterator[xenpure.Host]:
    with xenpure.connect() as h:
        yield h


@pytest.fixture
def evt(host: xenpure.Host) -> Iterator[EventChannels]:
    with EventChannels.open(host.kernel) as e:
        yield e


def test_hypercall_ops_for_a_guest(host: xenpure.Host, evt: EventChannels, guest: Any) -> None:
    ops = EvtchnOps(host.privcmd)
    gport = ops.alloc_unbound(guest.domid, 0)
    st = ops.status(guest.domid, gport)
    assert (st.state, st.remote_domid) == (EvtchnStat.unbound, 0)
    ch = evt.bind_interdomain(guest.domid, gport)
    st = ops.status(guest.domid, gport)
    assert (st.state, st.remote_domid, st.remote_port) == (EvtchnStat.interdomain, 0, ch.port)
    ch.notify()  # the guest's kernel ignores a port it did not ask for
    ch.close()
    assert ops.status(guest.domid, gport).state is EvtchnStat.unbound


def test_virq_dom_exc_is_held_by_xenstored(evt: EventChannels) -> None:
    """A global VIRQ is bound once per domain: in dom0, xenstored holds VIRQ_DOM_EXC (and the kernel the
    timer). test_virq_dom_exc_lab.py takes it over, after stopping xenstored."""
    with pytest.raises(AlreadyExists):
        evt.bind_virq(Virq.DOM_EXC)
    with evt.bind_virq(Virq.DEBUG) as ch:
        assert ch.virq == Virq.DEBUG
