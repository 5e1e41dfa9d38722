"""Hypercalls through /dev/xen/privcmd, with every argument record declared once.

Rule 1: nothing in this package knows which kernel it runs on; it hands ioctl numbers and bytes to the
kernel seam (``xenpure.kernel``), and the same bytes go to Linux or to the simulated hypervisor.
"""

from __future__ import annotations

from . import abi
from ._layout import Decl, F, Iface, Layout

__all__ = ["Decl", "F", "Iface", "Layout", "abi"]
