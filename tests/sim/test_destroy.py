"""Destroying a domain whose teardown Xen answers with EAGAIN ("still tearing down: call again"): the
toolstack reissues XEN_DOMCTL_destroydomain until it completes, the domain reads as dying meanwhile, and a
teardown that never ends gives ``Timeout`` instead of a hang."""

import pytest

import xenpure
from xenpure import DomainState
from xenpure.errors import TryAgain
from xenpure.hypercall.abi.domctl import DomctlCmd
from xenpure.testing import SimXen


def test_destroy_reissues_destroydomain_while_xen_answers_eagain(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    sim_xen.destroy_preemptions = 3
    g = sim_xen.add_guest("web")
    sim_host.domain("web").destroy(timeout=5)
    assert g.destroy_calls == 4  # three EAGAINs, then done
    assert g.domid not in sim_xen.domains
    assert not sim_xen.xenstored.exists(f"/local/domain/{g.domid}")  # cleaned up after the teardown


def test_a_domain_being_torn_down_reads_as_dying(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    sim_xen.destroy_preemptions = 1
    g = sim_xen.add_guest("web")
    with pytest.raises(TryAgain):
        sim_host._domctl(DomctlCmd.destroydomain, g.domid)
    info = sim_host.domain(g.domid).info()
    assert info.state is DomainState.DYING
    assert [d.id for d in sim_host.domains()] == [0, g.domid]  # still listed until the teardown completes
    sim_host.domain(g.domid).destroy(timeout=5)
    assert [d.id for d in sim_host.domains()] == [0]


def test_a_teardown_that_never_ends_times_out(sim_host: xenpure.Host, sim_xen: SimXen) -> None:
    sim_xen.destroy_preemptions = 10**9
    g = sim_xen.add_guest("web")
    with pytest.raises(xenpure.Timeout, match=rf"destroydomain of domain {g.domid} still answered EAGAIN after 0.2 s"):
        sim_host.domain("web").destroy(timeout=0.2)
    assert sim_xen.domains[g.domid].dying
