"""A simulated Xen host, shipped so that code using xenpure can be tested on any machine.

Rule 1: the simulation sits under the kernel seam. ``connect("sim://")`` (or ``Host(SimKernel())``) runs
every layer of xenpure for real; only the kernel driver and the hypervisor are simulated.

With pytest, the ``sim_host`` fixture (registered by xenpure's pytest plugin) gives a fresh ``Host`` on a
fresh simulated hypervisor for each test; ``sim_xen`` is the hypervisor state behind it. ``demo_xen()`` is
the host ``xenpure --sim`` shows: Domain-0 and one running guest, ``demo``.
"""

from __future__ import annotations

from ._doorbells import SocketDoorbell
from ._guest import BOOT_LINES, DEMO_GUEST, demo_xen
from ._hypervisor import SimDomain, SimVcpu, SimXen, XenErrno
from ._kernel import SimBuffer, SimDevice, SimKernel
from ._where import in_control_domain

__all__ = [
    "BOOT_LINES",
    "DEMO_GUEST",
    "SimBuffer",
    "SimDevice",
    "SimDomain",
    "SimKernel",
    "SimVcpu",
    "SimXen",
    "SocketDoorbell",
    "XenErrno",
    "demo_xen",
    "in_control_domain",
]
