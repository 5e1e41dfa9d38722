"""The Linux seam's read-only mappings: Device.mmap(readonly=True) and the address of a read-only mmap."""

from __future__ import annotations

import mmap
import os

import pytest

from xenpure.kernel.linux import LinuxDevice, LinuxMapping


def mapped_ranges() -> list[tuple[int, int, str]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            out.append((lo, hi, perms))
    return out


def test_a_read_only_mapping_has_its_real_address(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "file")
    with open(path, "wb") as f:
        f.write(b"xen-3.0" + bytes(4096 - 7))
    fd = os.open(path, os.O_RDWR)
    dev = LinuxDevice(path, fd)
    try:
        m = dev.mmap(4096, readonly=True)
        assert isinstance(m, LinuxMapping)
        assert m.view.readonly and bytes(m.view[:7]) == b"xen-3.0"
        with pytest.raises(TypeError):
            m.view[0] = 0
        (perms,) = [p for lo, hi, p in mapped_ranges() if lo <= m.address < hi]
        assert perms.startswith("r-")  # PROT_READ only
        rw = dev.mmap(4096)
        (perms,) = [p for lo, hi, p in mapped_ranges() if lo <= rw.address < hi]
        assert perms.startswith("rw") and not rw.view.readonly
        rw.view[:3] = b"XEN"
        assert bytes(m.view[:3]) == b"XEN"  # the same file page, seen through both
        addr = m.address
        m.close()
        rw.close()
        assert not any(lo <= addr < hi for lo, hi, _ in mapped_ranges())
    finally:
        dev.close()


def test_address_of_an_anonymous_read_only_mmap() -> None:
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, mmap.PROT_READ)
    lm = LinuxMapping(m, "anonymous")
    assert any(lo <= lm.address < hi for lo, hi, _ in mapped_ranges())
    lm.close()
