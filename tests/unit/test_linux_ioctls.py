"""The Linux uapi records and ioctl numbers of evtchn, gntdev and gntalloc, as xenpure declares them.

The conformance tier checks them against gcc; these check the encodings the code relies on: the numbers the
kernel expects (spelled out from the header's _IOC formula), the registry, and the variable-length and
union records byte for byte.
"""

from __future__ import annotations

import struct

import pytest

from xenpure.hypercall.abi import IOCTLS, catalogue
from xenpure.hypercall.abi import linux_evtchn as E
from xenpure.hypercall.abi import linux_gntalloc as A
from xenpure.hypercall.abi import linux_gntdev as G
from xenpure.hypercall.abi._ioctl import Ioctl, ioctl, register


def ioc_none(kind: str, nr: int, size: int) -> int:
    return (size << 16) | (ord(kind) << 8) | nr


@pytest.mark.parametrize(
    ("io", "kind", "nr", "size"),
    [
        (E.IOCTL_EVTCHN_BIND_VIRQ, "E", 0, 4),
        (E.IOCTL_EVTCHN_BIND_INTERDOMAIN, "E", 1, 8),
        (E.IOCTL_EVTCHN_BIND_UNBOUND_PORT, "E", 2, 4),
        (E.IOCTL_EVTCHN_UNBIND, "E", 3, 4),
        (E.IOCTL_EVTCHN_NOTIFY, "E", 4, 4),
        (E.IOCTL_EVTCHN_RESET, "E", 5, 0),
        (E.IOCTL_EVTCHN_RESTRICT_DOMID, "E", 6, 2),
        (G.IOCTL_GNTDEV_MAP_GRANT_REF, "G", 0, 24),
        (G.IOCTL_GNTDEV_UNMAP_GRANT_REF, "G", 1, 16),
        (G.IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR, "G", 2, 24),
        (G.IOCTL_GNTDEV_SET_MAX_GRANTS, "G", 3, 4),
        (G.IOCTL_GNTDEV_SET_UNMAP_NOTIFY, "G", 7, 16),
        (G.IOCTL_GNTDEV_GRANT_COPY, "G", 8, 16),
        (A.IOCTL_GNTALLOC_ALLOC_GREF, "G", 5, 24),
        (A.IOCTL_GNTALLOC_DEALLOC_GREF, "G", 6, 16),
        (A.IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, "G", 7, 16),
    ],
    ids=lambda v: v.name if isinstance(v, Ioctl) else None,
)
def test_numbers(io: Ioctl, kind: str, nr: int, size: int) -> None:
    assert io.request == ioc_none(kind, nr, size)
    assert IOCTLS[io.name] is io


def test_the_catalogue_lists_every_device() -> None:
    names = set(catalogue("4.17")["ioctls"])
    want = {"IOCTL_EVTCHN_NOTIFY", "IOCTL_GNTDEV_GRANT_COPY", "IOCTL_GNTALLOC_ALLOC_GREF", "IOCTL_PRIVCMD_HYPERCALL"}
    assert want <= names
    # gntdev's and gntalloc's SET_UNMAP_NOTIFY share a number; both are listed, under their own names
    assert G.IOCTL_GNTDEV_SET_UNMAP_NOTIFY.request == A.IOCTL_GNTALLOC_SET_UNMAP_NOTIFY.request


def test_an_ioctl_is_declared_once() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        register(E.IOCTL_EVTCHN_NOTIFY)
    with pytest.raises(ValueError, match="declared twice"):
        ioctl("IOCTL_EVTCHN_NOTIFY", "E", 4, E.NOTIFY, "linux:xen/evtchn.h")


def test_map_grant_ref_is_variable_length() -> None:
    lay = G.MAP_GRANT_REF.layout()
    assert (lay.size, lay.offsetof("index"), lay.offsetof("refs")) == (24, 8, 16)
    one = lay.build(count=1, refs=[{"domid": 7, "ref": 9}])
    assert one == struct.pack("<IIQII", 1, 0, 0, 7, 9)
    # count > 1: the header, then count refs; the ioctl number keeps sizeof with refs[1]
    parsed = lay.parse(one + struct.pack("<II", 8, 10))
    assert parsed.count == 1 and parsed.refs[0].ref == 9


def test_alloc_gref_layout() -> None:
    lay = A.ALLOC_GREF.layout()
    assert (lay.offsetof("count"), lay.offsetof("index"), lay.offsetof("gref_ids"), lay.size) == (4, 8, 16, 24)
    raw = lay.build(domid=3, flags=int(A.GntallocFlag.WRITABLE), count=1, index=0x2000, gref_ids=[42])
    assert raw == struct.pack("<HHIQI", 3, 1, 1, 0x2000, 42) + bytes(4)


def test_grant_copy_segment_union() -> None:
    lay = G.GRANT_COPY_SEGMENT.layout()
    assert (lay.offsetof("dest"), lay.offsetof("len"), lay.offsetof("status"), lay.size) == (8, 16, 20, 24)
    raw = lay.build(source={"foreign": {"ref": 5, "offset": 16, "domid": 2}}, dest={"virt": 0x7F0000001000},
                    len=100, flags=1)
    assert raw == struct.pack("<IHHQHHh", 5, 16, 2, 0x7F0000001000, 100, 1, 0) + bytes(2)
    back = lay.parse(raw[:20] + struct.pack("<h", -3) + bytes(2))
    assert back.source.foreign.ref == 5 and back.dest.virt == 0x7F0000001000 and back.status == -3
