"""Hypercalls of the ``(cmd, pointer to records[, count])`` shape: event_channel_op, grant_table_op,
memory_op and their kin.

Rule 1: the records are encoded and decoded only through their declarations, in a hypercall-safe buffer
from ``Privcmd.buffer``, and the errno goes through ``Privcmd.hypercall``: the one place it becomes an
exception.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any

from ._layout import Decl
from ._privcmd import Privcmd
from .abi.xen import Hypercall

__all__ = ["record_op", "records_op"]

log = logging.getLogger("xenpure.hypercall")


def record_op(pc: Privcmd, op: Hypercall, cmd: IntEnum, decl: Decl, fields: Mapping[str, Any]) -> Any:
    """``op(cmd, &record)`` with one ``decl`` record built from ``fields``; the record as Xen left it."""
    return records_op(pc, op, cmd, decl, [fields], count=None)[0]


def records_op(
    pc: Privcmd,
    op: Hypercall,
    cmd: IntEnum,
    decl: Decl,
    items: Sequence[Mapping[str, Any]],
    *,
    count: int | None = -1,
) -> list[Any]:
    """``op(cmd, records, count)``: ``items`` encoded as an array of ``decl``; the records as Xen left them.

    ``count`` -1 passes ``len(items)`` as the third argument (grant_table_op); None passes only two.
    """
    lay = decl.layout()
    size = lay.size * len(items)
    with pc.buffer(max(size, 1)) as buf:
        for i, fields in enumerate(items):
            buf.view[i * lay.size : (i + 1) * lay.size] = lay.build(fields)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s request %s", op.name, cmd.name, [dict(f) for f in items])
        args = [int(cmd), buf.address] + ([] if count is None else [len(items) if count == -1 else count])
        pc.hypercall(op, *args, subop=cmd.name)
        raw = bytes(buf.view[:size])
    out = [lay.parse(raw[i * lay.size : (i + 1) * lay.size]) for i in range(len(items))]
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s reply %s", op.name, cmd.name, [{k: v for k, v in r.items() if k[0] != "_"} for r in out])
    return out
