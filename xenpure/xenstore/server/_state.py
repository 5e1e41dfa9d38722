"""Saving and restoring a xenstored's state: a snapshot line, then one journal line per change.

Rule 1: nothing a client was told is committed may be lost. The daemon appends every change the core made
(``Store.journal``) to the file and fsyncs it *before* it sends the replies of that batch; at start the
snapshot is loaded, the journal replayed (a torn last line -- a crash mid-append -- was never acknowledged
and is dropped), and the file is compacted to a new snapshot written aside, fsynced and renamed into place.

Format (JSON, one object per line): first ``{"snapshot": 1, "nodes": {...}, "meta": {...}}``, then
``{"n": path, "v": node-or-null}`` for a node and ``{"meta": {...}}`` when domains, quotas or the special
watches' permissions changed. A node is ``[value-base64, [perm strings], [children], generation]``.
"""

from __future__ import annotations

import base64
import json
import os
from typing import IO, Any

from .._server_core import Node, ServerCore, Store, _Domain
from .._wire import Perm

__all__ = ["StateFile", "dump_meta", "load_meta"]


def _node_json(node: Node) -> list[Any]:
    return [base64.b64encode(node.value).decode(), [str(p) for p in node.perms], list(node.children), node.generation]


def _node_from(v: list[Any]) -> Node:
    return Node(base64.b64decode(v[0]), tuple(Perm.parse(p) for p in v[1]), tuple(v[2]), int(v[3]))


def dump_meta(core: ServerCore) -> dict[str, Any]:
    """Everything but the tree: introduced domains, quotas, features, special watches' permissions."""
    return {
        "domains": [[d.domid, d.gfn, d.evtchn, d.features, d.target] for d in core.domains.values()],
        "quotas": dict(core.quotas),
        "domain_quotas": {str(k): dict(v) for k, v in core.domain_quotas.items()},
        "domain_features": {str(k): v for k, v in core.domain_features.items()},
        "special_perms": {k: [str(p) for p in v] for k, v in core.special_perms.items()},
    }


def load_meta(core: ServerCore, meta: dict[str, Any]) -> None:
    core.domains = {d[0]: _Domain(d[0], d[1], d[2], d[3], d[4]) for d in meta.get("domains", [])}
    core.quotas.update(meta.get("quotas", {}))
    core.domain_quotas = {int(k): dict(v) for k, v in meta.get("domain_quotas", {}).items()}
    core.domain_features = {int(k): int(v) for k, v in meta.get("domain_features", {}).items()}
    for k, v in meta.get("special_perms", {}).items():
        core.special_perms[k] = tuple(Perm.parse(p) for p in v)


class StateFile:
    """The ``--state`` file of one daemon: ``restore`` at start, ``record`` after every batch."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f: IO[str] | None = None
        self._meta: dict[str, Any] | None = None

    def restore(self, core: ServerCore) -> int:
        """Load the file (if any) into ``core``, compact it, and start journaling; how many changes were
        replayed."""
        nodes: dict[str, Node] | None = None
        replayed = 0
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().split("\n")
            for i, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    if i >= len(lines) - 2:
                        break  # a torn last append: never acknowledged
                    raise
                if "snapshot" in rec:
                    nodes = {p: _node_from(v) for p, v in rec["nodes"].items()}
                    load_meta(core, rec.get("meta", {}))
                elif "n" in rec and nodes is not None:
                    if rec["v"] is None:
                        nodes.pop(rec["n"], None)
                    else:
                        nodes[rec["n"]] = _node_from(rec["v"])
                    replayed += 1
                elif "meta" in rec:
                    load_meta(core, rec["meta"])
        if nodes is not None:
            core.store = Store.from_nodes(nodes)
        self.compact(core)
        return replayed

    def compact(self, core: ServerCore) -> None:
        """Write a fresh snapshot aside, fsync, rename it into place, and journal after it."""
        if self._f is not None:
            self._f.close()
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            self._meta = dump_meta(core)
            nodes = {p: _node_json(n) for p, n in core.store.nodes.items()}
            f.write(json.dumps({"snapshot": 1, "nodes": nodes, "meta": self._meta}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._f = open(self.path, "a", encoding="utf-8")
        core.store.journal = []

    def record(self, core: ServerCore) -> bool:
        """Append what changed since the last call and fsync; whether anything was written."""
        assert self._f is not None, "restore() first"
        journal = core.store.journal
        if journal is None:  # the store was replaced: journal from here
            core.store.journal = []
            journal = []
        lines = [json.dumps({"n": p, "v": None if n is None else _node_json(n)}) for p, n in journal]
        journal.clear()
        meta = dump_meta(core)
        if meta != self._meta:
            self._meta = meta
            lines.append(json.dumps({"meta": meta}))
        if not lines:
            return False
        self._f.write("\n".join(lines) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        return True

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
