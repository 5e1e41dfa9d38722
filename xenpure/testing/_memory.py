"""Simulated machine memory, and dom0's privcmd driver's mapping ioctls (MMAPBATCH_V2, MMAP_RESOURCE).

Rule 1: a frame is a real page. Machine memory is one sparse memfd; every mapping the simulated drivers
hand out (privcmd, gntdev, gntalloc) maps the very pages of that memfd into this process (``MAP_SHARED |
MAP_FIXED``, one page at a time), so bytes written through one mapping are seen through every other and
by the simulated hypervisor, exactly as two mappings of one machine frame behave on Xen.

Frames belong to domains (``owner``). PV domains are addressed by machine frame number, as the toolstack
addresses them on Xen (a PV guest's p2m maps its pfns to those MFNs). ``build_pv`` lays out what a PV
domain builder leaves behind: start_info, the xenstore and console pages, page tables that map start_info
at the kernel's virtual address, and vcpu 0's registers pointing at them (rsi, cr3).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import struct
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ..hypercall.abi.arch_x86 import VCPU_GUEST_CONTEXT
from ..hypercall.abi.grant_table import GnttabReserved, GrantType
from ..hypercall.abi.memory import ResourceGrantTableId, ResourceType
from ..hypercall.abi.privcmd import (
    IOCTL_PRIVCMD_MMAP_RESOURCE,
    IOCTL_PRIVCMD_MMAPBATCH_V2,
    PRIVCMD_MMAP_RESOURCE,
    PRIVCMD_MMAPBATCH_V2,
)
from ..hypercall.abi.xen import START_INFO
from ..kernel.linux import _address_of

__all__ = ["SimMapping", "SimMemory", "SimPrivcmdFile"]

PAGE = 4096
#: Machine frames the simulated host has (sparse: untouched frames cost nothing).
NR_FRAMES = 1 << 16
#: Where build_pv maps a PV kernel (Linux's __START_KERNEL_map) and start_info's pfn in it.
PV_VIRT_BASE = 0xFFFFFFFF80000000

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.mmap.restype = ctypes.c_void_p
        _libc.mmap.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
        ]
    return _libc


def _err(code: int, why: str) -> Exception:
    from ._hypervisor import XenErrno

    return XenErrno(code, why)


class SimMapping:
    """A real mapping of this process whose pages may be machine frames; registered in the simulated
    kernel's address table under ``address`` (what the client passes back to ioctls).

    ``on_close`` runs before the pages go (the driver's munmap: grant unmap, unmap-notify).
    """

    def __init__(self, kernel: Any, memory: SimMemory, address: int, size: int, readonly: bool, source: str) -> None:
        self.kernel = kernel
        self.memory = memory
        self.address = address
        self.size = size
        self.readonly = readonly
        self.source = source
        prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
        self._mmap: mmap.mmap | None = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot)
        self._real = _address_of(self._mmap)
        self._view: memoryview | None = memoryview(self._mmap)
        self.frames: list[int | None] = [None] * (size // PAGE)
        self.on_close: list[Callable[[SimMapping], None]] = []

    @property
    def view(self) -> memoryview:
        if self._view is None:
            raise ValueError("mapping is closed")
        return self._view

    def put(self, index: int, mfn: int) -> None:
        """Map machine frame ``mfn`` as page ``index`` of this mapping."""
        prot = mmap.PROT_READ if self.readonly else mmap.PROT_READ | mmap.PROT_WRITE
        want = self._real + index * PAGE
        got = _c().mmap(want, PAGE, prot, mmap.MAP_SHARED | 0x10, self.memory.fd, mfn * PAGE)  # 0x10: MAP_FIXED
        if got != want:
            raise OSError(ctypes.get_errno(), f"cannot map frame {mfn:#x}")
        self.frames[index] = mfn

    def close(self) -> None:
        if self._mmap is None:
            return
        for hook in self.on_close:
            hook(self)
        self.on_close.clear()
        self.kernel._unmap(self)
        assert self._view is not None
        self._view.release()
        self._view = None
        self._mmap.close()
        self._mmap = None

    def __len__(self) -> int:
        return self.size

    def __enter__(self) -> SimMapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimMemory:
    """Machine frames (a memfd), who owns each, and the frames of simulated PV domains."""

    def __init__(self, xen: Any) -> None:
        self.xen = xen
        self.fd = os.memfd_create("xenpure-sim-machine", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, NR_FRAMES * PAGE)
        self.machine = mmap.mmap(self.fd, NR_FRAMES * PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # The host's memory goes with the host (no close: a SimXen is dropped, not closed).
        weakref.finalize(self, os.close, self.fd)
        self.owner: dict[int, int] = {}
        self._next = 0x100  # low frames stay unused, as Xen keeps its own there
        self._free: list[int] = []
        self._lock = threading.Lock()
        #: PV domains built here: domid -> {"start_info": mfn, "store": mfn, "console": mfn, ...}
        self.pv: dict[int, dict[str, int]] = {}
        xen.domain_hooks.append(self._domain_event)

    def alloc(self, domid: int, n: int = 1) -> list[int]:
        """``n`` zeroed frames owned by ``domid``."""
        out = []
        with self._lock:
            for _ in range(n):
                if self._free:
                    mfn = self._free.pop()
                else:
                    if self._next >= NR_FRAMES:
                        raise _err(errno.ENOMEM, "the simulated host is out of frames")
                    mfn, self._next = self._next, self._next + 1
                self.page(mfn)[:] = bytes(PAGE)
                self.owner[mfn] = domid
                out.append(mfn)
        return out

    def alloc_contiguous(self, domid: int, order: int) -> int:
        """``2**order`` zeroed frames owned by ``domid``, contiguous and aligned to their size (a superpage);
        returns the first."""
        n = 1 << order
        with self._lock:
            start = (self._next + n - 1) & ~(n - 1)
            if start + n > NR_FRAMES:
                raise _err(errno.ENOMEM, f"no free aligned run of {n} frames")
            self._free.extend(range(self._next, start))  # the frames skipped for alignment stay usable
            self._next = start + n
            self.machine[start * PAGE : (start + n) * PAGE] = bytes(n * PAGE)
            for mfn in range(start, start + n):
                self.owner[mfn] = domid
        return start

    def free(self, mfns: Sequence[int]) -> None:
        with self._lock:
            for mfn in mfns:
                if self.owner.pop(mfn, None) is not None:
                    self._free.append(mfn)

    def page(self, mfn: int) -> memoryview:
        return memoryview(self.machine)[mfn * PAGE : (mfn + 1) * PAGE]

    def _domain_event(self, event: str, d: Any) -> None:
        if event == "destroyed":
            self.free([m for m, owner in list(self.owner.items()) if owner == d.domid])
            self.pv.pop(d.domid, None)

    def map(self, kernel: Any, length: int, readonly: bool, source: str) -> SimMapping:
        """An empty VMA of ``length`` bytes registered in ``kernel``'s address table."""
        if length <= 0 or length % PAGE:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        m: SimMapping = kernel._place(length, lambda addr: SimMapping(kernel, self, addr, length, readonly, source))
        return m

    # -- memory_op: nothing a dom0 process issues is modelled yet ----------------------------------------
    def hypercall(self, mem: Any, args: list[int], privileged: bool) -> int:
        raise _err(errno.ENOSYS, f"XENMEM {args[0]} is not simulated")

    # -- a PV domain's boot layout -------------------------------------------------------------------------
    def build_pv(
        self, domid: int, *, nr_pages: int = 64, store_evtchn: int = 1, console_evtchn: int = 2
    ) -> dict[str, int]:
        """Give ``domid`` the frames a PV builder leaves: kernel pages, start_info, xenstore and console
        pages, page tables mapping them at ``PV_VIRT_BASE``, and vcpu 0 context with rsi/cr3 set.

        Returns the MFNs by name (``start_info``, ``store``, ``console``, ``l4``) and ``start_info_va``.
        """
        d = self.xen._domain(domid)
        frames = self.alloc(domid, nr_pages)
        si_pfn, store_pfn, cons_pfn = nr_pages - 3, nr_pages - 2, nr_pages - 1
        l4, l3, l2, l1 = self.alloc(domid, 4)

        def pte(mfn: int) -> int:
            return (mfn << 12) | 0x7  # present, writable, user

        va = PV_VIRT_BASE
        idx = [(va >> s) & 0x1FF for s in (39, 30, 21)]
        struct.pack_into("<Q", self.page(l4), idx[0] * 8, pte(l3))
        struct.pack_into("<Q", self.page(l3), idx[1] * 8, pte(l2))
        struct.pack_into("<Q", self.page(l2), idx[2] * 8, pte(l1))
        for pfn, mfn in enumerate(frames[:512]):
            struct.pack_into("<Q", self.page(l1), pfn * 8, pte(mfn))
        info = START_INFO.layout().build(
            magic=b"xen-3.0-x86_64",
            nr_pages=nr_pages,
            shared_info=0x1000 + domid,
            flags=0,
            store_mfn=frames[store_pfn],
            store_evtchn=store_evtchn,
            console={"domU": {"mfn": frames[cons_pfn], "evtchn": console_evtchn}},
            pt_base=va + nr_pages * PAGE,
            nr_pt_frames=4,
        )
        self.page(frames[si_pfn])[: len(info)] = info
        si_va = va + si_pfn * PAGE
        ctx = VCPU_GUEST_CONTEXT.layout().build(
            user_regs={"rsi": si_va, "rip": va},
            ctrlreg=[0, 0, 0, l4 << 12, 0, 0, 0, 0],
            flags=0,
        )
        if d.vcpus:
            d.vcpus[0].context = ctx
        # What the toolstack writes into a new guest's grant table: xenstored's and xenconsoled's rings.
        gt = self.xen.gnttab
        for ref, mfn in ((GnttabReserved.CONSOLE, frames[cons_pfn]), (GnttabReserved.XENSTORE, frames[store_pfn])):
            gt.set_entry(domid, int(ref), int(GrantType.permit_access), 0, mfn)
        layout = {
            "start_info": frames[si_pfn],
            "store": frames[store_pfn],
            "console": frames[cons_pfn],
            "l4": l4,
            "start_info_va": si_va,
        }
        self.pv[domid] = layout
        return layout


class SimPrivcmdFile:
    """dom0's privcmd driver, as far as mapping: an mmap is an empty VMA; MMAPBATCH_V2 and MMAP_RESOURCE
    fill it with foreign frames, reporting per-frame errors as Linux does."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._handlers: dict[int, Callable[[bytearray], int]] = {
            IOCTL_PRIVCMD_MMAPBATCH_V2.request: self._mmapbatch_v2,
            IOCTL_PRIVCMD_MMAP_RESOURCE.request: self._mmap_resource,
        }

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        os.close(self._fd)

    def mmap(self, length: int, offset: int, readonly: bool) -> SimMapping:
        if offset:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        m: SimMapping = self.kernel.xen.memory.map(self.kernel, length, readonly, "/dev/xen/privcmd")
        return m

    def ioctl(self, request: int, arg: bytearray) -> int:
        handler = self._handlers.get(request)
        if handler is None:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        with self.kernel.xen.lock:
            return handler(arg)

    def _vma(self, addr: int, num: int) -> SimMapping:
        vma = self.kernel.mapping_at(addr)
        if not isinstance(vma, SimMapping) or vma.source != "/dev/xen/privcmd" or num * PAGE > vma.size:
            raise _err(errno.EINVAL, f"no privcmd mapping of {num} pages at {addr:#x}")
        return vma

    def _mmapbatch_v2(self, arg: bytearray) -> int:
        req = PRIVCMD_MMAPBATCH_V2.layout().parse(arg)
        if req.num == 0:
            return 0
        vma = self._vma(req.addr, req.num)
        if any(f is not None for f in vma.frames[: req.num]):
            raise _err(errno.EBUSY, "the mapping is already populated")  # V2 maps a VMA once
        self.kernel.xen._domain(req.dom)
        mfns = struct.unpack(f"<{req.num}Q", self.kernel.resolve(req.arr, req.num * 8))
        errs = self.kernel.resolve(req.err, req.num * 4)
        memory: SimMemory = self.kernel.xen.memory
        for i, mfn in enumerate(mfns):
            code = 0
            if memory.owner.get(mfn) != req.dom:
                code = -errno.EPERM  # not a frame of that domain: Xen refuses it (EPERM in the lab)
            else:
                vma.put(i, mfn)
            struct.pack_into("<i", errs, i * 4, code)
        return 0

    def _mmap_resource(self, arg: bytearray) -> int:
        lay = PRIVCMD_MMAP_RESOURCE.layout()
        req = lay.parse(arg)
        self.kernel.xen._domain(req.dom)
        if req.type != ResourceType.grant_table or req.id != ResourceGrantTableId.shared:
            raise _err(errno.EOPNOTSUPP, f"resource type {req.type} id {req.id} is not simulated")
        frames = self.kernel.xen.gnttab.frames(req.dom)
        if req.num == 0 and req.addr == 0:
            arg[:] = lay.build(dict(req, num=self.kernel.xen.gnttab.max_frames))
            return 0
        if req.idx + req.num > self.kernel.xen.gnttab.max_frames:
            raise _err(errno.EINVAL, f"grant table frames {req.idx}..{req.idx + req.num}")
        if req.dom == 0:
            raise _err(errno.EPERM, "a domain cannot acquire its own grant table (observed on Xen 4.17)")
        frames = self.kernel.xen.gnttab.grow(req.dom, req.idx + req.num)
        vma = self._vma(req.addr, req.num)
        for i in range(req.num):
            vma.put(i, frames[req.idx + i])
        return 0
