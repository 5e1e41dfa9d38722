"""The declare-once layout framework: padding, versions, unions, and strict decoding."""

import pytest

from xenpure.errors import ProtocolError
from xenpure.hypercall import _layout
from xenpure.hypercall._layout import Array, Decl, F, Iface, Union, u8, u16, u32, u64

PAD = Decl("t_pad", "test.h", (F("a", u8), F("b", u64), F("c", u16)), register=False)


def test_natural_alignment_and_trailing_padding() -> None:
    lay = PAD.layout()
    assert lay.offsets == {"a": 0, "b": 8, "c": 16}
    assert (lay.size, lay.align) == (24, 8)
    assert len(lay.build(a=1, b=2, c=3)) == lay.size


def test_build_parse_round_trip_and_zero_fill() -> None:
    lay = PAD.layout()
    c = lay.parse(lay.build(b=0x1122334455667788))
    assert (c.a, c.b, c.c) == (0, 0x1122334455667788, 0)


def test_unknown_member_is_refused() -> None:
    with pytest.raises(TypeError, match="no member"):
        PAD.layout().build(nope=1)


def test_short_buffer_is_a_protocol_error() -> None:
    lay = PAD.layout()
    with pytest.raises(ProtocolError, match="needs 24 bytes, got 23"):
        lay.parse(bytes(23))


def test_versioned_member_appears_only_from_its_version() -> None:
    d = Decl("t_ver", "test.h", (F("x", u32), F("new", u32, since=0x17), F("y", u32)), family="domctl",
             register=False)
    old, new = d.layout(Iface(0x15, 0x15)), d.layout(Iface(0x17, 0x15))
    assert "new" not in old.offsets and old.offsets["y"] == 4
    assert new.offsets["new"] == 4 and new.offsets["y"] == 8
    assert d.versioned


def test_versioned_member_in_unversioned_record_is_rejected() -> None:
    d = Decl("t_bad", "test.h", (F("x", u32, since=2),), register=False)
    with pytest.raises(ValueError, match="versioned member"):
        d.layout()


def test_union_members_share_an_offset_and_pad_to_size() -> None:
    inner = Decl("t_inner", "test.h", (F("v", u64),), register=False)
    d = Decl("t_u", "test.h", (F("h", u32), F("u", Union((F("inner", inner), F("w", u16)), size=16))),
             register=False)
    lay = d.layout()
    paths = {m.path: (m.offset, m.size) for m in lay.members()}
    assert paths["u"] == (8, 16)
    assert paths["u.inner"] == (8, 8) and paths["u.w"] == (8, 2) and paths["u.inner.v"] == (8, 8)
    raw = lay.build(h=1, u={"inner": {"v": 7}})
    assert lay.parse(raw).u.inner.v == 7
    assert lay.parse(lay.build(h=1)).u.w == 0
    with pytest.raises(ValueError, match="one member"):
        lay.build(u={"inner": {"v": 1}, "w": 2})


def test_byte_arrays_decode_as_bytes_and_overflow_is_refused() -> None:
    d = Decl("t_arr", "test.h", (F("s", Array(u8, 4)), F("n", Array(u32, 2))), register=False)
    lay = d.layout()
    c = lay.parse(lay.build(s=b"ab", n=[5]))
    assert c.s == b"ab\0\0" and list(c.n) == [5, 0]
    with pytest.raises(ValueError, match="do not fit"):
        lay.build(s=b"abcde")


def test_registering_a_name_twice_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_layout, "_DECLS", dict(_layout._DECLS))  # leave the real registry untouched
    Decl("t_once", "test.h", (F("x", u8),))
    with pytest.raises(ValueError, match="declared twice"):
        Decl("t_once", "test.h", (F("x", u8),))
