"""Small synthetic PV kernels for tests: ELF64 images with Xen notes, and bzImages wrapping them.

Rule 1: synthetic, not real: every byte is generated here, so a builder test needs no kernel on disk.

Built from the ELF-64 specification and the Linux boot protocol's setup header description; nothing here
is a real kernel, but the shapes (VIRT_BASE 0xffffffff80000000, load at 16 MiB, notes in a PT_NOTE
segment) are those a Linux x86_64 PV kernel has.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
from collections.abc import Mapping

__all__ = ["HYPERCALL_PAGE_NOTE", "PADDR", "VIRT_BASE", "XEN_NOTES", "make_bzimage", "make_elf", "note"]

VIRT_BASE = 0xFFFFFFFF80000000
PADDR = 0x1000000
#: A HYPERCALL_PAGE note for the image ``make_elf`` builds (Linux 6.1 as Debian ships it has none).
HYPERCALL_PAGE_NOTE = {2: struct.pack("<Q", VIRT_BASE + PADDR + 0x1000)}
XEN_NOTES: dict[int, bytes] = {
    6: b"linux\0",  # GUEST_OS
    7: b"2.6\0",  # GUEST_VERSION
    5: b"xen-3.0\0",  # XEN_VERSION
    3: struct.pack("<Q", VIRT_BASE),  # VIRT_BASE
    4: struct.pack("<Q", 0),  # PADDR_OFFSET
    1: struct.pack("<Q", VIRT_BASE + PADDR + 0x40),  # ENTRY
    10: b"!writable_page_tables|pae_pgdir_above_4gb\0",  # FEATURES
    17: struct.pack("<I", 0x801),  # SUPPORTED_FEATURES
    8: b"generic\0",  # LOADER
    12: struct.pack("<Q", 0xFFFF800000000000),  # HV_START_LOW
    16: struct.pack("<Q", 1),  # MOD_START_PFN
}


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def make_elf(
    *,
    notes: Mapping[int, bytes] | None = None,
    machine: int = 62,
    elf_class: int = 2,
    text: bytes = b"\x90" * 0x40 + b"\xf4" + b"K" * 0x2000,
    bss: int = 0x3000,
    paddr: int = PADDR,
    extra_notes: bytes = b"",
) -> bytes:
    """An ELF64 x86_64 executable: one RWX PT_LOAD (text + bss) and one PT_NOTE with Xen notes."""
    nt = XEN_NOTES if notes is None else notes
    notes_blob = b"".join(note(b"Xen\0", t, d) for t, d in nt.items()) + extra_notes
    phnum = 2
    ehsize, phsize = 64, 56
    note_off = ehsize + phnum * phsize
    text_off = (note_off + len(notes_blob) + 0xFFF) & ~0xFFF
    ident = b"\x7fELF" + bytes([elf_class, 1, 1, 0]) + bytes(8)
    entry = (VIRT_BASE + paddr + 0x40) & (2**64 - 1)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, machine, 1, entry, ehsize, 0, 0, ehsize, phsize, phnum, 64,
                       0, 0)
    vaddr = (VIRT_BASE + paddr) & (2**64 - 1)
    load = struct.pack("<IIQQQQQQ", 1, 7, text_off, vaddr, paddr, len(text), len(text) + bss, 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(notes_blob), len(notes_blob), 4)
    out = bytearray(ehdr + load + pnote + notes_blob)
    out += bytes(text_off - len(out))
    out += text
    return bytes(out)


def make_bzimage(elf: bytes, compression: str = "gzip", *, version: int = 0x020F, setup_sects: int = 4,
                 size_in_payload: bool = False) -> bytes:
    """A bzImage: setup sectors with the setup header, then protected-mode code holding the payload.

    ``size_in_payload``: the ELF's size ends the payload (what Linux's build appends to xz/lzma/bzip2
    payloads, and what gzip's trailer holds anyway) rather than following it."""
    if compression == "gzip":
        payload = gzip.compress(elf)
    elif compression == "xz":
        payload = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    elif compression == "lzma":
        payload = lzma.compress(elf, format=lzma.FORMAT_ALONE)
    elif compression == "bzip2":
        payload = bz2.compress(elf)
    elif compression == "zstd":
        payload = b"\x28\xb5\x2f\xfd" + bytes(32)
    elif compression == "raw":
        payload = elf
    else:
        raise ValueError(compression)
    if size_in_payload and compression != "gzip":
        payload += struct.pack("<I", len(elf))
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    decompressor = b"\xcc" * 0x200  # stands in for the real decompressor stub
    struct.pack_into("<II", setup, 0x248, len(decompressor), len(payload))
    return bytes(setup) + decompressor + payload + struct.pack("<I", len(elf))
