"""The Linux uapi records and ioctl numbers of evtchn, gntdev and gntalloc, as xenpure declares them.

The conformance tier checks them against gcc; these check the encodings the code relies on: the numbers the
kernel expects (spelled out from the header's _IOC formula), the registry, and the variable-length and
union records byte for byte.
"""

from __future__ import annotations

import random
import struct

import pytest

from xenpure.hypercall._device import flat_codec, member_codec
from xenpure.hypercall._layout import CType, declarations
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


def test_flat_codecs_encode_as_the_declarations_do() -> None:
    """The hot paths' struct codecs, derived from the declarations, agree with construct on every flat
    record of the catalogue (the uapi ones and every other all-scalar record), both ways."""
    rng = random.Random(4)
    checked = 0
    for decl in declarations().values():
        lay = decl.layout() if decl.family is None else None
        if lay is None or not all(isinstance(t, CType) for t in lay.types.values()):
            continue
        values = {}
        for name, t in lay.types.items():
            assert isinstance(t, CType)
            bits = 8 * t.size
            signed = t.cname.startswith("int")
            values[name] = rng.randrange(-(1 << (bits - 1)), 1 << (bits - 1)) if signed else rng.randrange(1 << bits)
        raw = flat_codec(decl).pack(*values.values())
        assert raw == lay.build(values), decl.cname
        assert flat_codec(decl).unpack(raw) == tuple(values.values())
        for name, v in values.items():
            codec, off = member_codec(decl, name)
            assert codec.unpack_from(raw, off) == (v,)
        checked += 1
    assert checked >= 20
    with pytest.raises(TypeError):
        flat_codec(G.MAP_GRANT_REF)  # refs[] is an array
