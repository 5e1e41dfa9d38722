"""Kernel loading: ELF64 + Xen notes, bzImage unwrapping, and hostile input rejected with a clear reason."""

from __future__ import annotations

import glob
import os
import random
import struct
from pathlib import Path

import pytest

from xenpure.domain._kernel_image import (
    KernelImageError,
    XenFeature,
    load_kernel,
    load_kernel_file,
    unwrap_bzimage,
)
from xenpure.testing._kernels import HYPERCALL_PAGE_NOTE, PADDR, VIRT_BASE, XEN_NOTES, make_bzimage, make_elf, note


def test_elf_notes_honoured() -> None:
    k = load_kernel(make_elf(notes={**XEN_NOTES, **HYPERCALL_PAGE_NOTE}))
    n = k.notes
    assert (n.guest_os, n.guest_version, n.xen_version, n.loader) == ("linux", "2.6", "xen-3.0", "generic")
    assert k.virt_base == VIRT_BASE and n.paddr_offset == 0
    assert k.entry == VIRT_BASE + PADDR + 0x40
    assert k.hypercall_page == VIRT_BASE + PADDR + 0x1000
    assert k.virt_kstart == VIRT_BASE + PADDR
    assert k.virt_kend == VIRT_BASE + PADDR + 0x6000  # 0x2041 text + 0x3000 bss, page-rounded
    assert k.kernel_pfn == PADDR // 4096 and k.nr_kernel_pages == 6
    assert n.features_required == {XenFeature.writable_page_tables}
    assert {XenFeature.pae_pgdir_above_4gb, XenFeature.writable_page_tables, XenFeature.dom0} <= n.features_supported
    assert n.hv_start_low == 0xFFFF800000000000 and n.mod_start_pfn == 1
    assert k.compression is None


def test_pages_skip_zeroes_and_carry_content() -> None:
    k = load_kernel(make_elf())
    pages = dict(k.pages())
    assert sorted(pages) == [0, 1, 2]  # text spans three pages; bss pages are zero and left out
    assert pages[0][:0x40] == b"\x90" * 0x40 and pages[0][0x40] == 0xF4
    assert pages[2][: 0x41] == b"K" * 0x41 and pages[2][0x41:] == bytes(4096 - 0x41)


def test_paddr_offset_relocates() -> None:
    notes = dict(XEN_NOTES)
    notes[4] = struct.pack("<Q", VIRT_BASE)  # legacy: paddr held the virtual address
    elf = make_elf(notes=notes, paddr=VIRT_BASE + PADDR)
    # the ELF's paddr is VIRT_BASE + PADDR; minus PADDR_OFFSET plus VIRT_BASE -> same virtual address
    assert load_kernel(elf).virt_kstart == VIRT_BASE + PADDR


def test_entry_defaults_to_e_entry() -> None:
    notes = {k: v for k, v in XEN_NOTES.items() if k != 1}
    assert load_kernel(make_elf(notes=notes)).entry == VIRT_BASE + PADDR + 0x40


@pytest.mark.parametrize("compression", ["gzip", "xz", "lzma", "bzip2"])
def test_bzimage(compression: str) -> None:
    elf = make_elf()
    k = load_kernel(make_bzimage(elf, compression))
    assert k.elf == elf and k.compression == compression
    assert k.entry == load_kernel(elf).entry


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:40], "truncated ELF header"),
        (lambda b: b[:200], "run past the end"),  # program headers fine, notes cut
        (lambda b: b[:0x1800], "run past the end"),  # the PT_LOAD's bytes cut
        (lambda b: b"MZ" + b[2:], "neither an ELF image nor a bzImage"),
        (lambda b: b"", "neither an ELF"),
    ],
)
def test_truncated_or_garbage(mutate: object, match: str) -> None:
    with pytest.raises(KernelImageError, match=match):
        load_kernel(mutate(make_elf()))  # type: ignore[operator]


def test_wrong_architecture_and_class() -> None:
    with pytest.raises(KernelImageError, match=r"wrong architecture: .*AArch64"):
        load_kernel(make_elf(machine=183))
    with pytest.raises(KernelImageError, match=r"wrong architecture: .*i386"):
        load_kernel(make_elf(machine=3))
    with pytest.raises(KernelImageError, match="32-bit ELF"):
        load_kernel(make_elf(elf_class=1))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({3: None, 4: None, 1: None, 2: None, 5: None, 6: None, 7: None, 8: None, 10: None, 12: None, 16: None,
          17: None}, "no Xen ELF notes"),
        ({1: struct.pack("<Q", 0x1234)}, "entry point 0x1234 lies outside"),
        ({2: struct.pack("<Q", VIRT_BASE + PADDR + 8)}, "HYPERCALL_PAGE .* not a page-aligned"),
        ({1: b"\x01\x02\x03"}, "ENTRY is a number but 3 bytes"),
        ({5: b"xen-2.0\0"}, "XEN_VERSION note 'xen-2.0'"),
        ({8: b"bsd\0"}, "LOADER note 'bsd'"),
        ({10: b"!auto_translated_physmap\0"}, "cannot have: auto_translated_physmap"),
        ({10: b"!no_such_feature\0"}, "requires Xen feature 'no_such_feature'"),
        ({3: struct.pack("<Q", VIRT_BASE + 1)}, "VIRT_BASE .* not page aligned"),
        ({4: struct.pack("<Q", PADDR * 2)}, "below PADDR_OFFSET"),
        ({6: b"\xff\xfe\0"}, "GUEST_OS is not ASCII"),
        ({1: None, 18: struct.pack("<I", 0x1000000)}, "PVH-only kernel"),
        ({15: struct.pack("<Q", 0x8000000001)}, "INIT_P2M .* not page aligned"),
    ],
)
def test_bad_notes(change: dict[int, bytes | None], match: str) -> None:
    notes = dict(XEN_NOTES)
    for k, v in change.items():
        if v is None:
            notes.pop(k, None)
        else:
            notes[k] = v
    with pytest.raises(KernelImageError, match=match):
        load_kernel(make_elf(notes=notes))


def test_note_overruns_its_area_and_duplicates() -> None:
    bad = struct.pack("<III", 4, 0x1000, 1) + b"Xen\0"  # claims a 4 KiB descriptor that is not there
    with pytest.raises(KernelImageError, match="runs past its note area"):
        load_kernel(make_elf(extra_notes=bad))
    dup = note(b"Xen\0", 6, b"linux\0")
    with pytest.raises(KernelImageError, match="GUEST_OS appears twice"):
        load_kernel(make_elf(extra_notes=dup))


def test_other_owners_notes_are_ignored() -> None:
    k = load_kernel(make_elf(extra_notes=note(b"GNU\0", 3, b"\x01" * 20) + note(b"Linux\0", 1, b"x")))
    assert k.notes.guest_os == "linux"


def test_bzimage_errors() -> None:
    elf = make_elf()
    with pytest.raises(KernelImageError, match="zstd-compressed; xenpure decompresses only gzip, xz"):
        load_kernel(make_bzimage(elf, "zstd"))
    with pytest.raises(KernelImageError, match=r"boot protocol 2\.06 has no payload"):
        load_kernel(make_bzimage(elf, version=0x0206))
    with pytest.raises(KernelImageError, match="outside the"):
        load_kernel(make_bzimage(elf)[:3000])
    bz = bytearray(make_bzimage(elf, "xz"))
    cut = bytes(bz[: len(bz) - 200])
    struct.pack_into("<I", bz, 0x24C, len(cut) - 5 * 512 - 0x200)
    with pytest.raises(KernelImageError, match=r"truncated|corrupt"):
        unwrap_bzimage(bytes(bz[: len(cut)]))
    with pytest.raises(KernelImageError, match="not an ELF image"):
        load_kernel(make_bzimage(b"\0" * 4096, "gzip"))
    with pytest.raises(KernelImageError, match="not a compression format"):
        load_kernel(make_bzimage(elf, "raw"))
    flipped = bytearray(make_bzimage(elf, "gzip"))
    flipped[5 * 512 + 0x200 + 40] ^= 0xFF
    with pytest.raises(KernelImageError, match=r"corrupt|not an ELF|truncated"):
        load_kernel(bytes(flipped))


def test_fuzz_never_crashes() -> None:
    """Random corruption of a good image raises KernelImageError or loads; nothing else escapes."""
    rnd = random.Random(7)
    good = make_elf()
    for _ in range(400):
        b = bytearray(good)
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(0, 0x400)
            b[i] = rnd.randrange(256)
        try:
            load_kernel(bytes(b))
        except KernelImageError:
            pass


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "vmlinux"
    p.write_bytes(make_elf(machine=3))
    with pytest.raises(KernelImageError, match=f"kernel {p}: wrong architecture"):
        load_kernel_file(p)
    with pytest.raises(KernelImageError, match="cannot read it"):
        load_kernel_file(tmp_path / "missing")


def _real_kernels() -> list[str]:
    found = [p for p in ("/var/lib/xenpure-lab/guest/vmlinux", "/var/lib/xenpure-lab/guest/vmlinuz")
             if os.path.exists(p)]
    found += sorted(glob.glob("/boot/vmlinuz-*-amd64"))[-1:]
    env = os.environ.get("XENPURE_TEST_KERNEL")
    if env:
        found.append(env)
    return found


@pytest.mark.skipif(not _real_kernels(), reason="no real Debian kernel on this machine (/boot/vmlinuz-*-amd64, "
                    "/var/lib/xenpure-lab/guest, or XENPURE_TEST_KERNEL)")
@pytest.mark.parametrize("path", _real_kernels() or ["none"])
def test_real_debian_kernel(path: str) -> None:
    k = load_kernel_file(path)
    assert k.virt_base == 0xFFFFFFFF80000000
    assert k.notes.guest_os == "linux" and k.notes.xen_version == "xen-3.0"
    assert k.virt_kstart <= k.entry < k.virt_kend
    assert XenFeature.writable_page_tables in k.notes.features_supported


def test_flat_image_matches_pages() -> None:
    k = load_kernel(make_elf())
    flat = k.flat()
    assert len(flat) == k.virt_kend - k.virt_kstart
    pages = dict(k.pages())
    for i in range(len(flat) // 4096):
        assert bytes(flat[i * 4096 : (i + 1) * 4096]) == pages.get(i, bytes(4096))


def test_copy_into_matches_flat() -> None:
    k = load_kernel(make_elf())
    flat = k.flat()
    for off, n in ((0, 4096), (4096, 8192), (0x1000 - 8, 16), (0, len(flat))):
        buf = bytearray(b"\xaa" * n)
        k.copy_into(memoryview(buf), off)
        assert bytes(buf) == bytes(flat[off : off + n])


@pytest.mark.parametrize(("compression", "size_in_payload"), [(None, False), ("gzip", False), ("xz", True),
                                                              ("xz", False), ("bzip2", True)])
def test_large_kernels_load_the_same_through_populated_memory(tmp_path: Path, compression: str | None,
                                                              size_in_payload: bool) -> None:
    """Above 1 MiB a kernel is read or decompressed into populated memory, sized by the payload's size hint
    when there is one (else grown): the image is byte for byte the one loaded from memory."""
    import random

    text = b"\x90" * 0x40 + b"\xf4" + random.Random(7).randbytes(3 << 20)
    elf = make_elf(text=text)
    want = load_kernel(elf)
    p = tmp_path / "kernel"
    p.write_bytes(elf if compression is None else make_bzimage(elf, compression, size_in_payload=size_in_payload))
    got = load_kernel_file(p)
    assert isinstance(got.elf, memoryview) and len(got.elf) == len(elf)
    assert got.compression == compression and (got.source is None) == (compression is not None)
    if compression is not None:
        assert got.elf == elf
    assert got.flat() == want.flat() and got.segments == want.segments and got.notes == want.notes
    buf = bytearray(3 * 4096)
    got.copy_into(memoryview(buf), 4096)
    assert buf == want.flat()[4096 : 4 * 4096]


def test_a_large_elf_file_is_checked_from_its_headers_and_read_at_load(tmp_path: Path) -> None:
    """A large uncompressed ELF is checked without reading its segments, which are read from the file when
    copied; a file cut short after the check fails the copy with a clear error, and the checks still refuse
    a broken one."""
    text = b"\x90" * 0x40 + b"\xf4" + b"K" * (3 << 20)
    p = tmp_path / "vmlinux"
    p.write_bytes(make_elf(text=text))
    k = load_kernel_file(p)
    assert k.source is not None
    assert bytes(k.elf[0x1000 : 0x1000 + 16]) == bytes(16)  # segment bytes were never read into memory
    assert k.flat()[: 0x42] == text[: 0x42]
    with p.open("r+b") as f:
        f.truncate(len(make_elf(text=text)) // 2)
    with pytest.raises(KernelImageError, match=r"the file ends at .*\(changed since\?\)"):
        k.flat()
    p.write_bytes(make_elf(text=text, machine=183))
    with pytest.raises(KernelImageError, match="wrong architecture"):
        load_kernel_file(p)
    p.write_bytes(make_elf(text=text, notes={}))
    with pytest.raises(KernelImageError, match="no Xen ELF notes"):
        load_kernel_file(p)
    p.write_bytes(make_elf(text=text)[: 1 << 20])
    with pytest.raises(KernelImageError, match="past the end"):
        load_kernel_file(p)
