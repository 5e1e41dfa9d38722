"""Simulated grant tables, and dom0's gntdev and gntalloc drivers.

Rule 1: a grant table lives in machine frames (``SimMemory``), as ``grant_entry_v1`` records encoded with
the same declaration the client decodes with; mapping a domain's grant table frames (MMAP_RESOURCE) shows
the very entries the model checks. Xen's side (``SimGrantTables``) validates a map or copy against the
granting domain's entry (type, grantee, read-only) and keeps map counts, setting GTF_reading/GTF_writing
while a grant is mapped; the drivers (``SimGntdevFile``, ``SimGntallocFile``) keep Linux's per-file state:
mmap offsets, the mappings, unmap notifications.
"""

from __future__ import annotations

import errno
import functools
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..hypercall.abi.grant_table import (
    GET_VERSION,
    GRANT_ENTRY_V1,
    QUERY_SIZE,
    SET_VERSION,
    SETUP_TABLE,
    CopyFlag,
    GntSt,
    GnttabOp,
    GrantFlag,
    GrantType,
    NrReservedEntries,
)
from ..hypercall.abi.linux_gntalloc import (
    ALLOC_GREF,
    DEALLOC_GREF,
    IOCTL_GNTALLOC_ALLOC_GREF,
    IOCTL_GNTALLOC_DEALLOC_GREF,
    IOCTL_GNTALLOC_SET_UNMAP_NOTIFY,
    GntallocFlag,
)
from ..hypercall.abi.linux_gntalloc import UNMAP_NOTIFY as ALLOC_UNMAP_NOTIFY
from ..hypercall.abi.linux_gntdev import (
    GET_OFFSET_FOR_VADDR,
    GRANT_COPY,
    GRANT_COPY_SEGMENT,
    GRANT_REF,
    IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR,
    IOCTL_GNTDEV_GRANT_COPY,
    IOCTL_GNTDEV_MAP_GRANT_REF,
    IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
    IOCTL_GNTDEV_UNMAP_GRANT_REF,
    MAP_GRANT_REF,
    UNMAP_GRANT_REF,
    UNMAP_NOTIFY,
    UnmapNotify,
)
from ..hypercall.abi.xen import DomId
from ._memory import PAGE, SimMapping

__all__ = ["SimGntallocFile", "SimGntdevFile", "SimGrantTables"]

_ENTRY = GRANT_ENTRY_V1.layout()
ENTRIES_PER_FRAME = PAGE // _ENTRY.size
#: Xen 4.17's default gnttab_max_frames, and the frames a domain starts with.
MAX_FRAMES = 64
INITIAL_FRAMES = 1


def _err(code: int, why: str) -> Exception:
    from ._hypervisor import XenErrno

    return XenErrno(code, why)


class GrantError(Exception):
    """A per-entry failure: the GNTST_* code Xen writes into the op's status."""

    def __init__(self, status: GntSt, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class _Table:
    frames: list[int]
    version: int = 1
    #: (ref) -> [readers, writers] mapped by some grantee
    maps: dict[int, list[int]] = field(default_factory=dict)


class SimGrantTables:
    """Every domain's grant table, in machine frames."""

    def __init__(self, xen: Any) -> None:
        self.xen = xen
        self.tables: dict[int, _Table] = {}
        self.max_frames = MAX_FRAMES
        xen.domain_hooks.append(self._domain_event)

    def _table(self, domid: int) -> _Table:
        self.xen._domain(domid)
        t = self.tables.get(domid)
        if t is None:
            t = self.tables[domid] = _Table(self.xen.memory.alloc(domid, INITIAL_FRAMES))
        return t

    def frames(self, domid: int) -> list[int]:
        return list(self._table(domid).frames)

    def grow(self, domid: int, nr_frames: int) -> list[int]:
        t = self._table(domid)
        if nr_frames > self.max_frames:
            raise _err(errno.EINVAL, f"{nr_frames} grant frames, at most {self.max_frames}")
        if nr_frames > len(t.frames):
            t.frames += self.xen.memory.alloc(domid, nr_frames - len(t.frames))
        return list(t.frames)

    def _domain_event(self, event: str, d: Any) -> None:
        if event == "destroyed":
            self.tables.pop(d.domid, None)

    # -- entries -------------------------------------------------------------------------------------------
    def _slot(self, domid: int, ref: int) -> memoryview:
        t = self._table(domid)
        if ref >= len(t.frames) * ENTRIES_PER_FRAME:
            raise GrantError(GntSt.bad_gntref, f"ref {ref} beyond domain {domid}'s table")
        frame, i = divmod(ref, ENTRIES_PER_FRAME)
        page: memoryview = self.xen.memory.page(t.frames[frame])
        return page[i * _ENTRY.size : (i + 1) * _ENTRY.size]

    def entry(self, domid: int, ref: int) -> tuple[int, int, int]:
        """(flags, domid, frame) of ``domid``'s entry ``ref``."""
        flags, grantee, frame = struct.unpack("<HHI", self._slot(domid, ref))
        return flags, grantee, frame

    def set_entry(self, domid: int, ref: int, flags: int, grantee: int, frame: int) -> None:
        """What the granting domain's kernel writes (frame first, flags last, as a guest must)."""
        slot = self._slot(domid, ref)
        slot[:] = _ENTRY.build(flags=flags, domid=grantee, frame=frame)

    def in_use(self, domid: int, ref: int) -> bool:
        return sum(self._table(domid).maps.get(ref, [0, 0])) > 0

    def free_refs(self, domid: int, n: int) -> list[int]:
        """``n`` refs of ``domid`` whose entries are invalid and unmapped (what its kernel's free list has),
        growing the table as a kernel would."""
        out: list[int] = []
        ref = int(NrReservedEntries.NR_RESERVED_ENTRIES)
        while len(out) < n:
            if ref >= len(self._table(domid).frames) * ENTRIES_PER_FRAME:
                self.grow(domid, len(self._table(domid).frames) + 1)
            flags, _, _ = self.entry(domid, ref)
            if flags & int(GrantFlag.type_mask) == int(GrantType.invalid) and not self.in_use(domid, ref):
                out.append(ref)
            ref += 1
        return out

    def _check(self, me: int, domid: int, ref: int, write: bool) -> int:
        """Validate ``me``'s access to ``domid``'s grant ``ref``; the granted frame."""
        if domid not in self.xen.domains:
            raise GrantError(GntSt.bad_domain, f"no domain {domid}")
        flags, grantee, frame = self.entry(domid, ref)
        if flags & int(GrantFlag.type_mask) != int(GrantType.permit_access) or grantee != me:
            raise GrantError(GntSt.permission_denied, f"ref {ref} of domain {domid} is not granted to {me}")
        if write and flags & GrantFlag.readonly:
            raise GrantError(GntSt.permission_denied, f"ref {ref} of domain {domid} is read-only")
        if self.xen.memory.owner.get(frame) != domid:
            raise GrantError(GntSt.bad_page, f"frame {frame:#x} is not domain {domid}'s")
        return frame

    def map(self, me: int, domid: int, ref: int, write: bool) -> int:
        """GNTTABOP_map_grant_ref's effect: count the mapping, flag the entry; the frame."""
        frame = self._check(me, domid, ref, write)
        counts = self._table(domid).maps.setdefault(ref, [0, 0])
        counts[1 if write else 0] += 1
        self._flag(domid, ref)
        return frame

    def unmap(self, domid: int, ref: int, write: bool) -> None:
        t = self.tables.get(domid)
        if t is None or ref not in t.maps:
            return  # the granting domain died meanwhile
        t.maps[ref][1 if write else 0] -= 1
        if not any(t.maps[ref]):
            del t.maps[ref]
        self._flag(domid, ref)

    def _flag(self, domid: int, ref: int) -> None:
        readers, writers = self._table(domid).maps.get(ref, [0, 0])
        flags, grantee, frame = self.entry(domid, ref)
        flags &= ~(GrantFlag.reading | GrantFlag.writing)
        flags |= (GrantFlag.reading if readers or writers else 0) | (GrantFlag.writing if writers else 0)
        self.set_entry(domid, ref, flags, grantee, frame)

    # -- GNTTABOP_* from dom0 through privcmd ----------------------------------------------------------------
    def hypercall(self, mem: Any, args: list[int], privileged: bool) -> int:
        cmd, addr, count = args[0], args[1], args[2]
        me = 0
        try:
            op = GnttabOp(cmd)
        except ValueError:
            raise _err(errno.ENOSYS, f"GNTTABOP {cmd}") from None
        decl = {
            GnttabOp.query_size: QUERY_SIZE,
            GnttabOp.setup_table: SETUP_TABLE,
            GnttabOp.get_version: GET_VERSION,
            GnttabOp.set_version: SET_VERSION,
        }.get(op)
        if decl is None:
            raise _err(errno.ENOSYS, f"GNTTABOP_{op.name} is not simulated")
        if op in (GnttabOp.get_version, GnttabOp.set_version) and count != 1:
            raise _err(errno.EINVAL, f"GNTTABOP_{op.name} takes one record")
        lay = decl.layout()
        for i in range(count):
            view = mem.resolve(addr + i * lay.size, lay.size)
            req = lay.parse(view)
            reply = getattr(self, f"_op_{op.name}")(mem, me, req, privileged)
            self.xen._reply(op.name, view, lay.build(reply))
        return 0

    def _target(self, me: int, dom: int, privileged: bool) -> int | None:
        dom = me if dom == DomId.SELF else dom
        if dom != me and not privileged:
            return None
        return dom if dom in self.xen.domains else -1

    def _op_query_size(self, mem: Any, me: int, req: Any, privileged: bool) -> dict[str, Any]:
        dom = self._target(me, req.dom, privileged)
        if dom is None or dom < 0:
            st = GntSt.permission_denied if dom is None else GntSt.bad_domain
            return dict(req, status=int(st))
        return dict(req, nr_frames=len(self._table(dom).frames), max_nr_frames=self.max_frames, status=0)

    def _op_setup_table(self, mem: Any, me: int, req: Any, privileged: bool) -> dict[str, Any]:
        dom = self._target(me, req.dom, privileged)
        if dom is None or dom < 0:
            st = GntSt.permission_denied if dom is None else GntSt.bad_domain
            return dict(req, status=int(st))
        if req.nr_frames > self.max_frames:
            return dict(req, status=int(GntSt.general_error))
        frames = self.grow(dom, req.nr_frames)[: req.nr_frames]
        if frames:
            out = mem.resolve(req.frame_list, 8 * len(frames))
            out[:] = struct.pack(f"<{len(frames)}Q", *frames)
        return dict(req, status=0)

    def _op_get_version(self, mem: Any, me: int, req: Any, privileged: bool) -> dict[str, Any]:
        dom = self._target(me, req.dom, privileged)
        if dom is None:
            raise _err(errno.EPERM, "get_version of another domain")
        if dom < 0:
            raise _err(errno.ESRCH, f"no domain {req.dom}")
        return dict(req, version=self._table(dom).version)

    def _op_set_version(self, mem: Any, me: int, req: Any, privileged: bool) -> dict[str, Any]:
        t = self._table(me)
        if req.version not in (1, 2):
            raise _err(errno.EINVAL, f"grant table version {req.version}")
        if req.version == 2:
            raise _err(errno.ENOSYS, "grant table v2 is disabled (gnttab=max-ver:1)")
        return dict(req, version=t.version)

    # -- GNTTABOP_copy's checks, for gntdev's GRANT_COPY --------------------------------------------------------
    def copy(self, me: int, src: tuple[int, int, int] | memoryview, dst: tuple[int, int, int] | memoryview,
             length: int) -> GntSt:
        """Copy ``length`` bytes; each end is local memory or (domid, ref, offset). The GNTST_* status."""
        try:
            s = self._end(me, src, length, write=False)
            d = self._end(me, dst, length, write=True)
        except GrantError as e:
            return e.status
        d[:length] = s[:length]
        return GntSt.okay

    def _end(self, me: int, end: tuple[int, int, int] | memoryview, length: int, write: bool) -> memoryview:
        if isinstance(end, memoryview):
            return end
        domid, ref, offset = end
        if offset + length > PAGE:
            raise GrantError(GntSt.bad_copy_arg, "copy crosses the granted page")
        frame = self._check(me, domid, ref, write)
        page: memoryview = self.xen.memory.page(frame)
        return page[offset : offset + length]


# -------------------------------------------------------------------------------------------------------------
# dom0's drivers
# -------------------------------------------------------------------------------------------------------------


@dataclass
class _Notify:
    offset: int  # byte offset inside the range
    action: UnmapNotify
    port: int


@dataclass
class _Range:
    """One MAP_GRANT_REF (gntdev) or ALLOC_GREF (gntalloc): ``count`` pages at mmap offset ``index``."""

    index: int
    grants: list[tuple[int, int]]  # (domid, ref)
    frames: list[int] = field(default_factory=list)
    mapping: SimMapping | None = None
    writable: bool = True
    notify: _Notify | None = None
    released: bool = False  # the ioctl that ends it was issued


class _File:
    """What gntdev and gntalloc share: a real descriptor, ranges by mmap offset, unmap notifications."""

    source = ""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.xen = kernel.xen
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.ranges: dict[int, _Range] = {}
        self._next_index = 0
        self._handlers: dict[int, Callable[[bytearray], int]] = {}

    def fileno(self) -> int:
        return self._fd

    def ioctl(self, request: int, arg: bytearray) -> int:
        handler = self._handlers.get(request)
        if handler is None:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        with self.xen.lock:
            return handler(arg)

    def _new_range(self, grants: list[tuple[int, int]]) -> _Range:
        r = _Range(self._next_index, grants)
        self._next_index += len(grants) * PAGE
        if grants:  # an empty range takes no offset (the next one starts at the same index)
            self.ranges[r.index] = r
        return r

    def _range_of(self, offset: int) -> _Range | None:
        for r in self.ranges.values():
            if r.index <= offset < r.index + len(r.grants) * PAGE:
                return r
        return None

    def _set_notify(self, arg: bytearray, lay: Any) -> int:
        req = lay.parse(arg)
        r = self._range_of(req.index)
        action = UnmapNotify(req.action & 3)
        if r is None:
            raise _err(errno.ENOENT, f"no mapping holds offset {req.index:#x}")
        if req.action & ~3:
            raise _err(errno.EINVAL, f"unmap notify action {req.action:#x}")
        if action & UnmapNotify.SEND_EVENT and req.event_channel_port not in self.xen.evtchn.ports.get(0, {}):
            raise _err(errno.EINVAL, f"port {req.event_channel_port} is not an event channel of dom0")
        r.notify = _Notify(req.index - r.index, action, req.event_channel_port)
        return 0

    def _fire_notify(self, r: _Range) -> None:
        n, r.notify = r.notify, None
        if n is None:
            return
        if n.action & UnmapNotify.CLEAR_BYTE and r.mapping is not None and r.writable:
            r.mapping.view[n.offset] = 0
        if n.action & UnmapNotify.SEND_EVENT:
            p = self.xen.evtchn.ports.get(0, {}).get(n.port)
            if p is not None:
                self.xen.evtchn.send(0, n.port)

    def close(self) -> None:
        with self.xen.lock:
            for r in list(self.ranges.values()):
                if r.mapping is not None:
                    r.mapping.close()
                self._end_range(r)
            self.ranges.clear()
        os.close(self._fd)

    def _end_range(self, r: _Range) -> None:
        raise NotImplementedError


class SimGntdevFile(_File):
    """One open /dev/xen/gntdev: map other domains' grants into this process."""

    source = "/dev/xen/gntdev"

    def __init__(self, kernel: Any) -> None:
        super().__init__(kernel)
        self._handlers = {
            IOCTL_GNTDEV_MAP_GRANT_REF.request: self._map_grant_ref,
            IOCTL_GNTDEV_UNMAP_GRANT_REF.request: self._unmap_grant_ref,
            IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR.request: self._offset_for_vaddr,
            IOCTL_GNTDEV_SET_UNMAP_NOTIFY.request: lambda arg: self._set_notify(arg, UNMAP_NOTIFY.layout()),
            IOCTL_GNTDEV_GRANT_COPY.request: self._grant_copy,
        }

    def _map_grant_ref(self, arg: bytearray) -> int:
        lay = MAP_GRANT_REF.layout()
        count = int.from_bytes(arg[0:4], "little")
        if count == 0 or 16 + count * GRANT_REF.layout().size > len(arg):
            raise _err(errno.EINVAL, f"count {count}")
        refs = [struct.unpack_from("<II", arg, 16 + 8 * i) for i in range(count)]
        r = self._new_range([(d & 0xFFFF, ref) for d, ref in refs])
        arg[: lay.size] = lay.build(dict(lay.parse(arg), index=r.index))
        return 0

    def _unmap_grant_ref(self, arg: bytearray) -> int:
        req = UNMAP_GRANT_REF.layout().parse(arg)
        r = self.ranges.get(req.index)
        if r is None or len(r.grants) != req.count:
            raise _err(errno.ENOENT, f"no grant range at {req.index:#x}")
        del self.ranges[req.index]
        r.released = True
        return 0  # a range still mmapped is unmapped by its munmap

    def _offset_for_vaddr(self, arg: bytearray) -> int:
        lay = GET_OFFSET_FOR_VADDR.layout()
        req = lay.parse(arg)
        for r in self.ranges.values():
            if r.mapping is not None and r.mapping.address == req.vaddr:
                arg[: lay.size] = lay.build(dict(req, offset=r.index, count=len(r.grants)))
                return 0
        raise _err(errno.EINVAL, f"no grant mapping at {req.vaddr:#x}")

    def mmap(self, length: int, offset: int, readonly: bool) -> SimMapping:
        with self.xen.lock:
            r = self.ranges.get(offset)
            if r is None or length != len(r.grants) * PAGE or r.mapping is not None:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            write = not readonly
            done: list[tuple[int, int]] = []
            try:
                for domid, ref in r.grants:
                    r.frames.append(self.xen.gnttab.map(0, domid, ref, write))
                    done.append((domid, ref))
            except GrantError:
                for domid, ref in done:
                    self.xen.gnttab.unmap(domid, ref, write)
                r.frames.clear()
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None
            r.writable = write
            m: SimMapping = self.xen.memory.map(self.kernel, length, readonly, self.source)
            for i, frame in enumerate(r.frames):
                m.put(i, frame)
            r.mapping = m
            m.on_close.append(functools.partial(self._munmap, r))
            return m

    def _munmap(self, r: _Range, _m: SimMapping | None = None) -> None:
        with self.xen.lock:
            self._fire_notify(r)
            for domid, ref in r.grants:
                self.xen.gnttab.unmap(domid, ref, r.writable)
            r.frames.clear()
            r.mapping = None

    def _end_range(self, r: _Range) -> None:
        pass  # the mapping's close did the unmap

    def _grant_copy(self, arg: bytearray) -> int:
        req = GRANT_COPY.layout().parse(arg)
        slay = GRANT_COPY_SEGMENT.layout()
        segs = self.kernel.resolve(req.segments, req.count * slay.size) if req.count else memoryview(b"")
        for i in range(req.count):
            raw = segs[i * slay.size : (i + 1) * slay.size]
            seg = slay.parse(raw)
            if seg.len > PAGE:
                raise _err(errno.EINVAL, f"segment {i}: {seg.len} bytes")
            ends = []
            for name, flag in (("source", CopyFlag.source_gref), ("dest", CopyFlag.dest_gref)):
                u = seg[name]
                if seg.flags & flag:
                    f = u.foreign
                    if f.offset + seg.len > PAGE:
                        raise _err(errno.EINVAL, f"segment {i}: {name} crosses its page")
                    ends.append((f.domid, f.ref, f.offset))
                else:
                    ends.append(self.kernel.resolve(u.virt, seg.len))
            status = self.xen.gnttab.copy(0, ends[0], ends[1], seg.len)
            raw[slay.offsets["status"] : slay.offsets["status"] + 2] = struct.pack("<h", int(status))
        return 0


class SimGntallocFile(_File):
    """One open /dev/xen/gntalloc: grant pages of dom0 to another domain."""

    source = "/dev/xen/gntalloc"

    def __init__(self, kernel: Any) -> None:
        super().__init__(kernel)
        self._handlers = {
            IOCTL_GNTALLOC_ALLOC_GREF.request: self._alloc,
            IOCTL_GNTALLOC_DEALLOC_GREF.request: self._dealloc,
            IOCTL_GNTALLOC_SET_UNMAP_NOTIFY.request: lambda arg: self._set_notify(arg, ALLOC_UNMAP_NOTIFY.layout()),
        }

    def _alloc(self, arg: bytearray) -> int:
        lay = ALLOC_GREF.layout()
        req = lay.parse(arg)
        if 16 + 4 * req.count > len(arg):
            raise _err(errno.EFAULT, f"count {req.count} beyond the argument")
        # Neither a count of 0 nor a domain that does not exist is refused: the grant just names it.
        gt = self.xen.gnttab
        refs = gt.free_refs(0, req.count)
        frames = self.xen.memory.alloc(0, req.count)
        writable = bool(req.flags & GntallocFlag.WRITABLE)
        flags = int(GrantType.permit_access) | (0 if writable else int(GrantFlag.readonly))
        for ref, frame in zip(refs, frames, strict=True):
            gt.set_entry(0, ref, flags, req.domid, frame)
        r = self._new_range([(0, ref) for ref in refs])
        r.frames, r.writable = frames, writable
        arg[:16] = lay.build(dict(req, index=r.index))[:16]
        struct.pack_into(f"<{req.count}I", arg, 16, *refs)
        return 0

    def _dealloc(self, arg: bytearray) -> int:
        req = DEALLOC_GREF.layout().parse(arg)
        r = self.ranges.get(req.index)
        if r is None or len(r.grants) != req.count:
            raise _err(errno.EINVAL, f"no shared range at {req.index:#x}")
        del self.ranges[req.index]
        r.released = True
        if r.mapping is None:
            self._end_range(r)
        return 0

    def mmap(self, length: int, offset: int, readonly: bool) -> SimMapping:
        with self.xen.lock:
            r = self.ranges.get(offset)
            if r is None or length != len(r.grants) * PAGE or r.mapping is not None:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            m: SimMapping = self.xen.memory.map(self.kernel, length, readonly, self.source)
            for i, frame in enumerate(r.frames):
                m.put(i, frame)
            r.mapping = m
            m.on_close.append(functools.partial(self._munmap, r))
            return m

    def _munmap(self, r: _Range, _m: SimMapping | None = None) -> None:
        with self.xen.lock:
            self._fire_notify(r)
            r.mapping = None
            if r.released:
                self._end_range(r)

    def _end_range(self, r: _Range) -> None:
        """End the grants (invalidate the entries) and give the pages back; a page still mapped by the
        grantee stays with it until unmapped, as Linux leaves such pages to the grantee."""
        gt = self.xen.gnttab
        if 0 not in self.xen.domains:
            return
        for (_, ref), frame in zip(r.grants, r.frames, strict=False):
            if gt.in_use(0, ref):
                continue
            gt.set_entry(0, ref, 0, 0, 0)
            self.xen.memory.free([frame])
        r.frames = []
