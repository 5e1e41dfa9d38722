"""The struct fast path of every declared record encodes and decodes exactly as construct does."""

import random

import pytest

from xenpure.hypercall._layout import Array, CType, Decl, Union, _fill, declarations
from xenpure.hypercall.abi import RELEASES

# Every record of 4.17 and 4.19, but those with arrays of records, which only construct handles.
LAYOUTS = [
    (r.name, lay)
    for r in (RELEASES[0], RELEASES[2])
    for d in declarations().values()
    if (lay := d.layout(r.iface if d.family else None))._flat is not None
]


def _random_value(t, rng: random.Random):  # type: ignore[no-untyped-def]
    if isinstance(t, CType):
        bits = t.size * 8
        if t.cname.startswith("int"):
            return rng.randrange(-(1 << (bits - 1)), 1 << (bits - 1))
        return rng.randrange(0, 1 << bits)
    if isinstance(t, Array):
        if isinstance(t.of, CType) and t.of.size == 1 and t.of.cname in ("uint8_t", "char", "int8_t"):
            return bytes(rng.randrange(256) for _ in range(t.n))
        return [_random_value(t.of, rng) for _ in range(t.n)]
    if isinstance(t, Decl):
        lay = t.layout()
        return {n: _random_value(lay.types[n], rng) for n in lay.offsets if not isinstance(lay.types[n], Union)}
    raise TypeError(t)


@pytest.mark.parametrize(("release", "lay"), LAYOUTS, ids=[f"{r}-{lay.cname}" for r, lay in LAYOUTS])
def test_fast_path_agrees_with_construct(release: str, lay) -> None:  # type: ignore[no-untyped-def]
    flat = lay._flat
    rng = random.Random(lay.cname)
    values = {
        n: _random_value(t, rng)
        for n, t in lay.types.items()
        if not isinstance(t, Union) and not (isinstance(t, Decl) and t.layout(lay.iface)._flat is None)
    }
    values = {n: v for n, v in values.items() if not (isinstance(lay.types[n], Decl) and lay.types[n].versioned)}
    fast = flat.build(values)
    slow = lay._codec.build(_fill(lay, values))
    assert fast == slow
    raw = bytes(rng.randrange(256) for _ in range(lay.size))
    if not flat.has_unions:
        assert flat.parse(raw) == lay._codec.parse(raw)


def test_fast_build_refuses_what_does_not_fit() -> None:
    lay = declarations()["xen_domctl_getdomaininfo"].layout(RELEASES[0].iface)
    with pytest.raises(ValueError, match="do not fit"):
        lay.build(handle=bytes(17))
