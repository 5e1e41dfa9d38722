"""GNTTABOP_* hypercalls through privcmd: grant tables as the toolstack inspects and sets them up.

Rule 1: per-entry failures come back in each record's ``status`` (GNTST_*), not in the hypercall's errno;
both are turned into exceptions here, the errno by ``Privcmd.hypercall`` and the status by
``GrantTableError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ..errors import ProtocolError, XenError
from ..hypercall._layout import Decl
from ..hypercall._privcmd import Privcmd
from ..hypercall._subop import records_op
from ..hypercall.abi.grant_table import GET_VERSION, QUERY_SIZE, SET_VERSION, SETUP_TABLE, GntSt, GnttabOp
from ..hypercall.abi.xen import DomId, Hypercall

__all__ = ["GnttabOps", "GrantTableError", "GrantTableSize"]


@dataclass(frozen=True)
class GrantTableSize:
    """``GNTTABOP_query_size``: frames in use and the most the domain may have."""

    domid: int
    nr_frames: int
    max_nr_frames: int


class GrantTableError(XenError):
    """Xen answered a GNTTABOP with a GNTST_* status other than okay."""

    def __init__(self, op: str, status: int, detail: str = "") -> None:
        self.op = op
        try:
            self.status: GntSt | int = GntSt(status)
            name = f"GNTST_{GntSt(status).name}"
        except ValueError:
            self.status, name = status, f"status {status}"
        super().__init__(f"GNTTABOP_{op} failed: {name}" + (f": {detail}" if detail else ""))


def _ok(op: GnttabOp, rec: Any, detail: str = "") -> Any:
    if int(rec.status) != 0:
        raise GrantTableError(op.name, int(rec.status), detail)
    return rec


class GnttabOps:
    """``__HYPERVISOR_grant_table_op`` sub-ops, issued through a ``Privcmd`` (``host.privcmd``)."""

    def __init__(self, privcmd: Privcmd) -> None:
        self.privcmd = privcmd

    def _op(self, cmd: GnttabOp, decl: Decl, fields: dict[str, Any]) -> Any:
        # grant_table_op(cmd, records, count): one record here.
        (rec,) = records_op(self.privcmd, Hypercall.grant_table_op, cmd, decl, [fields])
        return rec

    def query_size(self, domid: int = DomId.SELF) -> GrantTableSize:
        """How many grant table frames ``domid`` uses and may use (``GNTTABOP_query_size``).

        Raises ``GrantTableError`` (GNTST_bad_domain, GNTST_permission_denied).
        """
        rec = _ok(GnttabOp.query_size, self._op(GnttabOp.query_size, QUERY_SIZE, {"dom": domid}), f"domain {domid}")
        return GrantTableSize(domid, int(rec.nr_frames), int(rec.max_nr_frames))

    def setup_table(self, domid: int, nr_frames: int) -> list[int]:
        """Grow ``domid``'s grant table to ``nr_frames`` frames and return their frame numbers (MFNs for a
        PV domain) (``GNTTABOP_setup_table``). Raises ``GrantTableError``."""
        if not 0 <= nr_frames <= 4096:
            raise ValueError(f"nr_frames {nr_frames}")
        frames = self.privcmd.kernel.alloc_buffer(8 * max(nr_frames, 1))
        try:
            rec = self._op(GnttabOp.setup_table, SETUP_TABLE,
                           {"dom": domid, "nr_frames": nr_frames, "frame_list": frames.address})
            _ok(GnttabOp.setup_table, rec, f"domain {domid}, {nr_frames} frames")
            raw = bytes(frames.view[: 8 * nr_frames])
        finally:
            frames.close()
        return list(struct.unpack(f"<{nr_frames}Q", raw))

    def get_version(self, domid: int = DomId.SELF) -> int:
        """The grant table version (1 or 2) ``domid`` uses (``GNTTABOP_get_version``)."""
        rec = self._op(GnttabOp.get_version, GET_VERSION, {"dom": domid})
        if rec.version not in (1, 2):
            raise ProtocolError(f"GNTTABOP_get_version answered version {rec.version}")
        return int(rec.version)

    def set_version(self, version: int) -> int:
        """Switch the *calling* domain's grant table to ``version`` (``GNTTABOP_set_version``); returns the
        version in force. In dom0 only a no-op is safe (1 on Xen 4.17): its kernel owns the table.
        Raises ``InvalidArgument``, ``Busy`` when grants are in use, ``NotSupported``."""
        rec = self._op(GnttabOp.set_version, SET_VERSION, {"version": version})
        return int(rec.version)

