"""The kernel seam: the only place xenpure touches the operating system.

Rule 1: nothing above this package opens a file, calls ioctl, or maps memory itself; it asks a ``Kernel``.
The Linux backend (``LinuxKernel``) talks to /dev/xen and /proc/xen; the simulated hypervisor
(``xenpure.testing.SimKernel``) receives the very same ioctl numbers and bytes and answers as Xen would.
"""

from __future__ import annotations

from ._base import Device, HypercallBuffer, Kernel, Mapping, TimedReader, read_within, timed_reader
from .linux import DEVICE_DIRS, LinuxKernel

__all__ = [
    "DEVICE_DIRS",
    "Device",
    "HypercallBuffer",
    "Kernel",
    "LinuxKernel",
    "Mapping",
    "TimedReader",
    "read_within",
    "timed_reader",
]
