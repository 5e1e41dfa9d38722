"""Map other domains' memory into this process through /dev/xen/privcmd (libxenforeignmemory's equivalent).

Rule 1: a foreign mapping is an mmap of privcmd (through the kernel seam's ``Device.mmap``) that an ioctl
then fills: ``IOCTL_PRIVCMD_MMAPBATCH_V2`` with a domain's frames (each frame's errno reported on its own),
``IOCTL_PRIVCMD_MMAP_RESOURCE`` with a resource's frames (``XENMEM_acquire_resource`` underneath). If the
fill fails the mmap is undone before the exception leaves; ``close`` unmaps.

A PV domain's frames are machine frames (MFNs); an HVM/PVH domain's are guest frames (GFNs).
"""

from __future__ import annotations

import dataclasses
import errno
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from ..errors import HypercallError, XenError
from ..hypercall._device import device_ioctl, errno_error
from ..hypercall._layout import pack_scalars, ulong
from ..hypercall.abi.memory import ResourceGrantTableId, ResourceType
from ..hypercall.abi.privcmd import (
    IOCTL_PRIVCMD_MMAP_RESOURCE,
    IOCTL_PRIVCMD_MMAPBATCH_V2,
    PRIVCMD_MMAP_RESOURCE,
    PRIVCMD_MMAPBATCH_V2,
)
from ..kernel import Device, Kernel, Mapping

__all__ = ["ForeignMapping", "ForeignMemory", "FrameError", "FramesUnmapped"]

PAGE = 4096
#: x86-64 page table entry bits used by ``translate``.
_PRESENT, _PSE = 1 << 0, 1 << 7
_ADDR_MASK = 0x000F_FFFF_FFFF_F000
#: The frames IOCTL_PRIVCMD_MMAPBATCH_V2's ``arr`` points at: ``xen_pfn_t``, an unsigned long on x86-64.
_PFN = dataclasses.replace(ulong, cname="xen_pfn_t")


@dataclass(frozen=True)
class FrameError:
    """One frame of a batch that could not be mapped: its index in the batch, the frame, and why."""

    index: int
    frame: int
    error: HypercallError


class FramesUnmapped(XenError):
    """Some frames of a batch could not be mapped (and nothing stays mapped). ``errors`` lists each."""

    def __init__(self, domid: int, errors: Sequence[FrameError]) -> None:
        self.domid = domid
        self.errors = tuple(errors)
        first = ", ".join(f"#{e.index} {e.frame:#x}: {e.error}" for e in self.errors[:3])
        more = f" (+{len(self.errors) - 3} more)" if len(self.errors) > 3 else ""
        super().__init__(f"{len(self.errors)} frame(s) of domain {domid} could not be mapped: {first}{more}")


class ForeignMapping:
    """Frames of another domain mapped here. ``view`` covers every page; with ``partial=True`` pages that
    failed (listed in ``errors``) must not be touched (the kernel faults such an access with SIGBUS).
    ``close()`` (or ``with``) unmaps."""

    def __init__(self, domid: int, frames: Sequence[int], mapping: Mapping, readonly: bool,
                 errors: Sequence[FrameError] = ()) -> None:
        self.domid = domid
        self.frames = tuple(frames)
        self.readonly = readonly
        self.errors = tuple(errors)
        self._mapping: Mapping | None = mapping

    @property
    def view(self) -> memoryview:
        if self._mapping is None:
            raise ValueError("foreign mapping is closed")
        return self._mapping.view

    @property
    def address(self) -> int:
        if self._mapping is None:
            raise ValueError("foreign mapping is closed")
        return self._mapping.address

    @property
    def closed(self) -> bool:
        return self._mapping is None

    def page(self, i: int) -> memoryview:
        """Page ``i`` of the mapping."""
        return self.view[i * PAGE : (i + 1) * PAGE]

    def close(self) -> None:
        """Unmap (xenforeignmemory_unmap). Idempotent."""
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            mapping.close()

    def __enter__(self) -> ForeignMapping:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._mapping is None else f"{len(self.frames)} page(s)"
        return f"<ForeignMapping of domain {self.domid}, {state}>"


class ForeignMemory:
    """An open /dev/xen/privcmd for mapping: xenforeignmemory_handle's equivalent. Thread-safe."""

    def __init__(self, device: Device, kernel: Kernel) -> None:
        self.device = device
        self.kernel = kernel
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, kernel: Kernel) -> ForeignMemory:
        """Open /dev/xen/privcmd through ``kernel`` (``host.kernel``) for mapping."""
        return cls(kernel.open("privcmd"), kernel)

    def close(self) -> None:
        """Close the device (mappings already made stay valid until unmapped). Idempotent."""
        if not self._closed:
            self._closed = True
            self.device.close()

    def __enter__(self) -> ForeignMemory:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _vma(self, pages: int, readonly: bool) -> Mapping:
        try:
            return self.device.mmap(pages * PAGE, 0, readonly=readonly)
        except OSError as e:
            if e.errno is None or isinstance(e, XenError):
                raise
            raise HypercallError.from_errno(e.errno, "mmap /dev/xen/privcmd") from None

    def map(
        self, domid: int, frames: Sequence[int], *, readonly: bool = False, partial: bool = False
    ) -> ForeignMapping:
        """Map ``frames`` of ``domid`` contiguously (xenforeignmemory_map: ``IOCTL_PRIVCMD_MMAPBATCH_V2``).

        Every frame's outcome is reported on its own. Without ``partial`` any failed frame raises
        ``FramesUnmapped`` listing each, typed by errno (``OperationNotPermitted`` for a frame the domain does
        not own, as Xen 4.17 answers; a paged-out frame is ENOENT and is not retried here)
        and nothing stays mapped; with ``partial`` the mapping is returned with ``errors`` set.
        Raises ``NoSuchDomain``, ``InvalidArgument`` for a malformed request.
        """
        n = len(frames)
        if n == 0:
            raise ValueError("no frames to map")
        vma = self._vma(n, readonly)
        try:
            errors = self._batch(domid, frames, vma)
            if errors and not partial:
                raise FramesUnmapped(domid, errors)
        except BaseException:
            vma.close()
            raise
        return ForeignMapping(domid, frames, vma, readonly, errors)

    def _batch(self, domid: int, frames: Sequence[int], vma: Mapping) -> list[FrameError]:
        n = len(frames)
        buf = self.kernel.alloc_buffer(n * 12)
        try:
            buf.view[: n * 8] = pack_scalars(_PFN, frames, "privcmd_mmapbatch_v2", "arr")
            arg = bytearray(PRIVCMD_MMAPBATCH_V2.layout().build(
                num=n, dom=domid, addr=vma.address, arr=buf.address, err=buf.address + n * 8))
            try:
                device_ioctl(self.device, IOCTL_PRIVCMD_MMAPBATCH_V2, arg, detail=f"domain {domid}")
            except HypercallError as e:
                if e.errno != errno.ENOENT:  # ENOENT: some frame is paged out; err[] says which
                    raise
            errs = struct.unpack(f"<{n}i", bytes(buf.view[n * 8 : n * 12]))
        finally:
            buf.close()
        return [
            FrameError(i, frames[i], errno_error(-e, IOCTL_PRIVCMD_MMAPBATCH_V2.name, f"frame {frames[i]:#x}"))
            for i, e in enumerate(errs)
            if e != 0
        ]

    def resource_size(self, domid: int, type: ResourceType | int, id: int = 0) -> int:
        """How many frames resource ``type``/``id`` of ``domid`` has (``IOCTL_PRIVCMD_MMAP_RESOURCE`` with
        num 0: XENMEM_acquire_resource's size query)."""
        lay = PRIVCMD_MMAP_RESOURCE.layout()
        arg = bytearray(lay.build(dom=domid, type=int(type), id=id))
        device_ioctl(self.device, IOCTL_PRIVCMD_MMAP_RESOURCE, arg, detail=f"domain {domid} size query")
        return int(lay.parse(arg).num)

    def map_resource(self, domid: int, type: ResourceType | int, id: int = 0, frame: int = 0, nr_frames: int = 1,
                     *, readonly: bool = False) -> ForeignMapping:
        """Map ``nr_frames`` frames from ``frame`` of a domain's resource (xenforeignmemory_map_resource:
        ``IOCTL_PRIVCMD_MMAP_RESOURCE``), e.g. ``ResourceType.grant_table`` id ``shared``: the domain's grant
        entries. Raises ``InvalidArgument`` past the resource's end, ``NotSupported``, ``NoSuchDomain``."""
        if nr_frames <= 0:
            raise ValueError(f"nr_frames {nr_frames}")
        vma = self._vma(nr_frames, readonly)
        try:
            arg = bytearray(PRIVCMD_MMAP_RESOURCE.layout().build(
                dom=domid, type=int(type), id=id, idx=frame, num=nr_frames, addr=vma.address))
            device_ioctl(self.device, IOCTL_PRIVCMD_MMAP_RESOURCE, arg, detail=f"domain {domid}")
        except BaseException:
            vma.close()
            raise
        return ForeignMapping(domid, range(frame, frame + nr_frames), vma, readonly)

    def map_grant_table(self, domid: int, nr_frames: int = 1, *, readonly: bool = True) -> ForeignMapping:
        """``domid``'s grant table (its shared entries), frames 0..nr_frames-1, read-only by default."""
        return self.map_resource(domid, ResourceType.grant_table, ResourceGrantTableId.shared, 0, nr_frames,
                                 readonly=readonly)

    def translate(self, domid: int, cr3: int, va: int) -> int:
        """The machine frame a PV domain's virtual address ``va`` maps to under page table root ``cr3`` (as
        ``vcpu_guest_context.ctrlreg[3]`` holds it): a 4-level walk, one read-only foreign mapping per level.
        Raises ``InvalidArgument`` where an entry is not present."""
        frame = (cr3 & _ADDR_MASK) >> 12
        for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
            with self.map(domid, [frame], readonly=True) as table:
                (entry,) = struct.unpack_from("<Q", table.view, ((va >> shift) & 0x1FF) * 8)
            if not entry & _PRESENT:
                raise errno_error(errno.EINVAL, "page walk", f"L{level} entry for {va:#x} not present")
            if level in (3, 2) and entry & _PSE:  # a 1 GiB / 2 MiB page
                return int(((entry & _ADDR_MASK) >> 12) + ((va >> 12) & ((1 << (shift - 12)) - 1)))
            frame = (entry & _ADDR_MASK) >> 12
        return int(frame)
