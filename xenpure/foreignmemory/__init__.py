"""Foreign memory: map other domains' frames and resources into this process (libxenforeignmemory's
equivalent), through /dev/xen/privcmd.

Rule 1: a mapping is returned only whole (or, when asked with ``partial=True``, with every failed frame
listed); anything that fails on the way is unmapped before the exception leaves.

Why a package of its own rather than a corner of ``xenpure.hypercall``: like libxenforeignmemory it is a
user-facing handle with its own privcmd descriptor (mappings belong to the descriptor that made them) and
its own objects (mappings, per-frame errors); ``hypercall`` stays the layer that encodes hypercalls.

libxenforeignmemory -> xenpure::

    xenforeignmemory_open / close      ForeignMemory.open(kernel) / .close()
    xenforeignmemory_map(2)            ForeignMemory.map(domid, frames, readonly=, partial=)
    xenforeignmemory_map_resource      ForeignMemory.map_resource(domid, type, id, frame, nr_frames)
    xenforeignmemory_unmap(_resource)  ForeignMapping.close() (or leave its ``with``)
"""

from __future__ import annotations

from ..hypercall.abi.memory import ResourceGrantTableId, ResourceType
from ._foreign import ForeignMapping, ForeignMemory, FrameError, FramesUnmapped

__all__ = ["ForeignMapping", "ForeignMemory", "FrameError", "FramesUnmapped", "ResourceGrantTableId", "ResourceType"]
