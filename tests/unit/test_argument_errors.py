"""A value that does not fit the C field it is packed into raises ``ArgumentOutOfRange`` naming the record,
the field, the value, the C type and its range; never ``struct.error`` or a construct error. What fits
encodes byte for byte as it did before the check existed (the hex below was produced by the encoders as
they were before it)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import construct as cs
import pytest

import xenpure
from xenpure.errors import ArgumentOutOfRange, XenError
from xenpure.hypercall._device import flat_codec, member_codec
from xenpure.hypercall._layout import CType, Decl, declarations, pack_scalars, ulong
from xenpure.hypercall.abi import RELEASES
from xenpure.hypercall.abi.domctl import DOMCTL, MAX_MEM, DomctlCmd
from xenpure.hypercall.abi.linux_evtchn import BIND_INTERDOMAIN, NOTIFY, RESTRICT_DOMID
from xenpure.hypercall.abi.linux_gntalloc import ALLOC_GREF
from xenpure.hypercall.abi.linux_gntdev import GRANT_COPY_SEGMENT, GRANT_REF, MAP_GRANT_REF, UNMAP_GRANT_REF
from xenpure.hypercall.abi.memory import MEMORY_RESERVATION
from xenpure.hypercall.abi.privcmd import PRIVCMD_MMAPBATCH_V2

IFACE = RELEASES[0].iface  # Xen 4.17
U16, U32, U64 = 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF


def _map_count(n: int) -> bytes:
    codec, off = member_codec(MAP_GRANT_REF, "count")
    buf = bytearray(24)
    codec.pack_into(buf, off, n)
    return bytes(buf)


# name: (encode in-range values, the bytes the encoders produced for them before ArgumentOutOfRange existed)
IN_RANGE: dict[str, tuple[Callable[[], bytes], str]] = {
    "domctl": (
        lambda: DOMCTL.layout(IFACE).build(
            cmd=int(DomctlCmd.pausedomain), interface_version=IFACE.domctl, domain=0x7FEF
        ),
        "0300000015000000ef7f" + "00" * 134,
    ),
    "domctl_max_mem": (lambda: MAX_MEM.layout(IFACE).build(max_memkb=U64), "ffffffffffffffff"),
    "evtchn_bind_interdomain": (lambda: flat_codec(BIND_INTERDOMAIN).pack(0x7FEF, U32), "ef7f0000ffffffff"),
    "evtchn_notify": (lambda: flat_codec(NOTIFY).pack(U32), "ffffffff"),
    "evtchn_restrict": (lambda: RESTRICT_DOMID.layout().build(domid=U16), "ffff"),
    "gntdev_grant_ref": (lambda: flat_codec(GRANT_REF).pack(0x7FEF, U32), "ef7f0000ffffffff"),
    "gntdev_unmap": (lambda: flat_codec(UNMAP_GRANT_REF).pack(U64, 3, 0), "ffffffffffffffff0300000000000000"),
    "gntdev_map_count": (lambda: _map_count(U32), "ffffffff" + "00" * 20),
    "gntdev_copy_segment": (  # unions: construct's path
        lambda: GRANT_COPY_SEGMENT.layout().build(
            {
                "source": {"foreign": {"ref": 9, "offset": U16, "domid": 0x7FEF}},
                "dest": {"virt": U64},
                "flags": 1,
                "len": 4096,
                "status": -32768,
            }
        ),
        "09000000ffffef7fffffffffffffffff0010010000800000",
    ),
    "gntalloc_alloc": (
        lambda: ALLOC_GREF.layout().build(domid=0x7FEF, flags=1, count=U32),
        "ef7f0100ffffffff" + "00" * 16,
    ),
    "memory_reservation": (
        lambda: MEMORY_RESERVATION.layout().build(
            extent_start=0x1000, nr_extents=U64, extent_order=9, mem_flags=0, domid=0x7FF0
        ),
        "0010000000000000ffffffffffffffff0900000000000000f07f000000000000",
    ),
    "mmapbatch_v2": (
        lambda: PRIVCMD_MMAPBATCH_V2.layout().build(num=3, dom=0x7FEF, addr=U64, arr=0x2000, err=0x3000),
        "03000000ef7f0000ffffffffffffffff00200000000000000030000000000000",
    ),
    "pfn_frames": (
        lambda: pack_scalars(ulong, [0, 1, U64], "privcmd_mmapbatch_v2", "arr"),
        "00000000000000000100000000000000ffffffffffffffff",
    ),
}


@pytest.mark.parametrize("name", sorted(IN_RANGE))
def test_in_range_values_encode_as_before(name: str) -> None:
    encode, expected = IN_RANGE[name]
    assert encode().hex() == expected


# (encode a value into a field, record, field, C type, lo, hi)
FIELDS: list[tuple[Callable[[int], Any], str, str, str, int, int]] = [
    (
        lambda v: DOMCTL.layout(IFACE).build(cmd=int(DomctlCmd.pausedomain), interface_version=IFACE.domctl, domain=v),
        "xen_domctl", "domain", "uint16_t", 0, U16,
    ),
    (lambda v: MAX_MEM.layout(IFACE).build(max_memkb=v), "xen_domctl_max_mem", "max_memkb", "uint64_t", 0, U64),
    (lambda v: flat_codec(NOTIFY).pack(v), "ioctl_evtchn_notify", "port", "uint32_t", 0, U32),
    (
        lambda v: flat_codec(BIND_INTERDOMAIN).pack(1, v),
        "ioctl_evtchn_bind_interdomain", "remote_port", "uint32_t", 0, U32,
    ),
    (lambda v: RESTRICT_DOMID.layout().build(domid=v), "ioctl_evtchn_restrict_domid", "domid", "uint16_t", 0, U16),
    (
        lambda v: flat_codec(GRANT_REF).pack_into(bytearray(8), 0, v, 1),
        "ioctl_gntdev_grant_ref", "domid", "uint32_t", 0, U32,
    ),
    (lambda v: _map_count(v), "ioctl_gntdev_map_grant_ref", "count", "uint32_t", 0, U32),
    (
        lambda v: GRANT_COPY_SEGMENT.layout().build({"source": {"foreign": {"ref": 1, "domid": v}}, "len": 8}),
        "gntdev_grant_copy_segment", "source.foreign.domid", "uint16_t", 0, U16,
    ),
    (
        lambda v: GRANT_COPY_SEGMENT.layout().build({"status": v}),
        "gntdev_grant_copy_segment", "status", "int16_t", -0x8000, 0x7FFF,
    ),
    (lambda v: ALLOC_GREF.layout().build(domid=v, count=1), "ioctl_gntalloc_alloc_gref", "domid", "uint16_t", 0, U16),
    (
        lambda v: MEMORY_RESERVATION.layout().build(nr_extents=1, domid=v),
        "xen_memory_reservation", "domid", "uint16_t", 0, U16,
    ),
    (
        lambda v: MEMORY_RESERVATION.layout().build(nr_extents=v),
        "xen_memory_reservation", "nr_extents", "unsigned long", 0, U64,
    ),
    (lambda v: pack_scalars(ulong, [0, 5, v], "privcmd_mmapbatch_v2", "arr"), "privcmd_mmapbatch_v2", "arr[2]",
     "unsigned long", 0, U64),
]
FIELD_IDS = [f"{rec}.{field}" for _, rec, field, _, _, _ in FIELDS]


@pytest.mark.parametrize(("encode", "record", "field", "ctype", "lo", "hi"), FIELDS, ids=FIELD_IDS)
@pytest.mark.parametrize("over", [False, True], ids=["below", "above"])
def test_a_value_out_of_range_names_the_record_and_field(
    encode: Callable[[int], Any], record: str, field: str, ctype: str, lo: int, hi: int, over: bool
) -> None:
    value = hi + 1 if over else lo - 1  # lo - 1 is negative for the unsigned fields
    with pytest.raises(ArgumentOutOfRange) as ei:
        encode(value)
    e = ei.value
    assert isinstance(e, XenError) and isinstance(e, ValueError)
    assert (e.record, e.field, e.value, e.ctype, e.lo, e.hi) == (record, field, value, ctype, lo, hi)
    msg = str(e)
    assert msg.startswith(f"{record}.{field} = {value} is out of range for {ctype} ({lo}..{hi},")
    assert "pass an integer in that range" in msg
    assert e.__cause__ is None and e.__suppress_context__  # no struct.error in the traceback


@pytest.mark.parametrize(("encode", "record", "field", "ctype", "lo", "hi"), FIELDS, ids=FIELD_IDS)
def test_the_range_ends_still_encode(
    encode: Callable[[int], Any], record: str, field: str, ctype: str, lo: int, hi: int
) -> None:
    encode(lo)
    encode(hi)


def test_the_field_named_is_the_one_that_does_not_fit_not_a_neighbour_at_its_range_end() -> None:
    with pytest.raises(ArgumentOutOfRange) as ei:
        flat_codec(BIND_INTERDOMAIN).pack(U32, U32 + 1)
    assert ei.value.field == "remote_port"
    with pytest.raises(ArgumentOutOfRange) as ei:
        GRANT_COPY_SEGMENT.layout().build({"len": U16, "flags": 0, "status": -0x8000, "source": {"virt": -1}})
    assert ei.value.field == "source.virt"
    with pytest.raises(ArgumentOutOfRange) as ei:
        MEMORY_RESERVATION.layout().build(extent_start=U64, nr_extents=0, extent_order=U32, domid=U16 + 1)
    assert ei.value.field == "domid"


def test_a_non_integer_is_a_type_error_naming_the_field() -> None:
    with pytest.raises(TypeError, match=r"^ioctl_evtchn_notify\.port is a uint32_t: it takes an integer, not str"):
        flat_codec(NOTIFY).pack("7")
    with pytest.raises(TypeError, match=r"^xen_memory_reservation\.domid is a uint16_t: .* not float 1\.5"):
        MEMORY_RESERVATION.layout().build(domid=1.5)
    with pytest.raises(TypeError, match="packs 1 values"):
        flat_codec(NOTIFY).pack(1, 2)


def test_the_public_root_exports_it() -> None:
    assert xenpure.ArgumentOutOfRange is ArgumentOutOfRange
    assert "ArgumentOutOfRange" in xenpure.__all__ and "ArgumentOutOfRange" in xenpure.errors.__all__


def _scalar_members() -> list[tuple[str, Decl, str, CType]]:
    out = []
    for d in declarations().values():
        lay = d.layout(IFACE if d.family else None)
        for name, t in lay.types.items():
            if isinstance(t, CType):
                out.append((f"{d.cname}.{name}", d, name, t))
    return out


SCALARS = _scalar_members()


@pytest.mark.parametrize(("path", "decl", "name", "t"), SCALARS, ids=[p for p, _, _, _ in SCALARS])
def test_every_declared_scalar_member_refuses_what_does_not_fit(path: str, decl: Decl, name: str, t: CType) -> None:
    """Whatever path a record takes (struct or construct), both ends of every scalar member are guarded."""
    lay = decl.layout(IFACE if decl.family else None)
    lo, hi = t.bounds
    assert lay.build({name: lo}) == lay.struct.build(_zeroes(lay, name, lo))
    for bad in (lo - 1, hi + 1):
        with pytest.raises(ArgumentOutOfRange) as ei:
            lay.build({name: bad})
        assert (ei.value.record, ei.value.field, ei.value.value) == (decl.cname, name, bad)
    try:
        codec = flat_codec(decl)
    except TypeError:
        return  # not a flat record
    at = list(lay.offsets).index(name)
    args = [0] * len(lay.offsets)
    args[at] = hi + 1
    with pytest.raises(ArgumentOutOfRange) as ei:
        codec.pack(*args)
    assert (ei.value.record, ei.value.field) == (decl.cname, name)


def _zeroes(lay: Any, name: str, value: int) -> dict[str, Any]:
    from xenpure.hypercall._layout import _fill

    return _fill(lay, {name: value})


def test_errors_are_not_the_codecs_own() -> None:
    """The exceptions this replaces: no ``struct.error`` or ``ConstructError`` escapes for a misfit."""
    for encode, *_ in FIELDS:
        for v in (-1, 1 << 64):
            try:
                encode(v)
            except (struct.error, cs.ConstructError) as e:  # pragma: no cover - the failure this guards
                pytest.fail(f"{type(e).__name__} leaked: {e}")
            except ArgumentOutOfRange:
                pass
