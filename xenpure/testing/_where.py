"""Where a test runs: in a Xen control domain (real devices, real hypervisor) or anywhere else.

Rule 1: one question, answered from the one file Linux has for it: /proc/xen/capabilities says
``control_d`` in dom0 (xenfs mounted), and nothing (or no file) elsewhere.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["in_control_domain"]


def in_control_domain(capabilities: str = "/proc/xen/capabilities") -> bool:
    """True inside a Xen control domain (e.g. the lab's dom0), where tests can use the real Xen."""
    try:
        return "control_d" in Path(capabilities).read_text()
    except OSError:
        return False
