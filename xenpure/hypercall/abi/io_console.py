"""Declarations from Xen's public/io/console.h: the PV console ring page shared by a guest and its backend.

Rule 1: the page belongs to the guest; every index read from it is hostile until checked against the ring
size (``out_prod - out_cons`` may be anything a guest writes).
"""

from __future__ import annotations

from .._layout import Array, Decl, F, char, u32

__all__ = ["XENCONS_INTERFACE"]

XENCONS_INTERFACE = Decl(
    "xencons_interface",
    "io/console.h",
    (
        F("in", Array(char, 1024)),
        F("out", Array(char, 2048)),
        F("in_cons", u32),
        F("in_prod", u32),
        F("out_cons", u32),
        F("out_prod", u32),
    ),
    doc="The console page: the guest produces into out[] and consumes in[]; indices are free-running u32s.",
)
