"""PV guest kernels: ELF64 images and their Xen ELF notes, bzImages unwrapped with the standard library.

Rule 1: a kernel file is hostile input. Every offset and size read from it is checked against the file
before it is used, with plain ``struct`` reads (no compiled parser on untrusted data), and every way a
kernel can be unfit for a 64-bit PV domain (wrong class, wrong machine, truncated, overlapping or
out-of-range segments, malformed or contradictory Xen notes, a required feature Xen cannot give a PV
guest) is a ``KernelImageError`` raised by ``load_kernel`` -- before any domain exists.

What Xen's public headers say the notes mean (public/elfnote.h) and how they combine:

* a loadable segment's guest-virtual address is ``p_paddr - PADDR_OFFSET + VIRT_BASE`` (both default 0);
  its pseudo-physical address is that minus ``VIRT_BASE``, so the initial mapping is 1:1 from VIRT_BASE
  onwards (public/xen.h, start-of-day layout, point 5);
* ENTRY is the virtual entry point (else ``e_entry``); HYPERCALL_PAGE the virtual address of the page Xen
  fills with hypercall stubs; INIT_P2M asks for the p2m list at that virtual address instead of after the
  ramdisk; MOD_START_PFN says the kernel accepts ``start_info.mod_start`` as a pfn;
* FEATURES is ``name|!name|...`` from public/features.h (``!`` = required), SUPPORTED_FEATURES a bitmap
  of the same numbers.

A bzImage (the Linux boot protocol, Documentation/arch/x86/boot.rst) carries the ELF compressed: the setup
header at 0x1f1 gives ``setup_sects``, and from protocol 2.08 ``payload_offset``/``payload_length``
locate the compressed ELF relative to the protected-mode code at ``(setup_sects + 1) * 512``. gzip, xz,
lzma and bzip2 payloads are unpacked with ``zlib``/``lzma``/``bz2``; zstd, lzo and lz4 are named and
refused.
"""

from __future__ import annotations

import bz2
import dataclasses
import io
import itertools
import lzma
import mmap
import os
import struct
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from ..errors import XenError
from ..hypercall.abi.elfnote import ElfNote

__all__ = [
    "MAX_KERNEL_BYTES",
    "PV_FEATURES",
    "KernelImage",
    "KernelImageError",
    "Segment",
    "XenFeature",
    "XenNotes",
    "load_kernel",
    "load_kernel_file",
    "unwrap_bzimage",
]

PAGE = 4096
#: The largest (decompressed) kernel xenpure accepts: bounds decompression of a hostile bzImage.
MAX_KERNEL_BYTES = 256 << 20
#: From this size on, a kernel (read or decompressed) goes into populated memory rather than a bytes object.
_POPULATE_FROM = 1 << 20
#: The largest decompression ratio a payload's size hint is believed for (Debian's xz kernel: about 8).
_MAX_RATIO = 32


class KernelImageError(XenError, ValueError):
    """The kernel (or bzImage) cannot boot as a 64-bit PV guest; the message says what is wrong where."""


class XenFeature(IntEnum):
    """``XENFEAT_*`` (public/features.h): the names FEATURES lists and SUPPORTED_FEATURES' bit numbers."""

    writable_page_tables = 0
    writable_descriptor_tables = 1
    auto_translated_physmap = 2
    supervisor_mode_kernel = 3
    pae_pgdir_above_4gb = 4
    mmu_pt_update_preserve_ad = 5
    highmem_assist = 6
    gnttab_map_avail_bits = 7
    hvm_callback_vector = 8
    hvm_safe_pvclock = 9
    hvm_pirqs = 10
    dom0 = 11
    grant_map_identity = 12
    memory_op_vnode_supported = 13
    ARM_SMCCC_supported = 14
    linux_rsdp_unrestricted = 15
    not_direct_mapped = 16
    direct_mapped = 17


#: What an x86_64 PV domU can be given (so may be *required* by its kernel): Xen emulates writes to page
#: tables and descriptor tables for PV guests, and accepts an L3/L4 above 4 GiB. Translated physmap,
#: supervisor-mode kernels and the HVM features are not available to a PV guest, dom0 is not a domU.
PV_FEATURES = frozenset({
    XenFeature.writable_page_tables,
    XenFeature.writable_descriptor_tables,
    XenFeature.pae_pgdir_above_4gb,
    XenFeature.mmu_pt_update_preserve_ad,
    XenFeature.highmem_assist,
    XenFeature.gnttab_map_avail_bits,
})

# ELF constants (the ELF-64 specification and the x86_64 psABI).
_ELFMAG = b"\x7fELF"
_ELFCLASS64, _ELFCLASS32 = 2, 1
_ELFDATA2LSB = 1
_ET_EXEC, _ET_DYN = 2, 3
_MACHINES = {3: "i386 (EM_386)", 62: "x86_64 (EM_X86_64)", 40: "ARM (EM_ARM)", 183: "AArch64 (EM_AARCH64)",
             243: "RISC-V (EM_RISCV)"}
_EM_X86_64 = 62
_PT_LOAD, _PT_NOTE = 1, 4
_SHT_NOTE = 7
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr, 64 bytes
_NHDR = struct.Struct("<III")
#: At most this many program headers / sections / notes: a real kernel has a handful; bounds the work.
_MAX_PHDRS = 256
_MAX_SHDRS = 4096
_MAX_NOTES = 1024
_MAX_NOTE_DESC = 4096

#: Notes whose value is a number (a little-endian 4- or 8-byte descriptor).
_NUMERIC = frozenset({
    ElfNote.ENTRY, ElfNote.HYPERCALL_PAGE, ElfNote.VIRT_BASE, ElfNote.PADDR_OFFSET, ElfNote.HV_START_LOW,
    ElfNote.SUSPEND_CANCEL, ElfNote.INIT_P2M, ElfNote.MOD_START_PFN, ElfNote.SUPPORTED_FEATURES,
    ElfNote.PHYS32_ENTRY,
})
#: Notes whose value is a NUL-terminated string.
_STRING = frozenset({
    ElfNote.INFO, ElfNote.XEN_VERSION, ElfNote.GUEST_OS, ElfNote.GUEST_VERSION, ElfNote.LOADER,
    ElfNote.PAE_MODE, ElfNote.FEATURES, ElfNote.BSD_SYMTAB,
})


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD segment: ``filesz`` bytes from ``offset`` of the file, zero-filled to ``memsz``, at guest
    virtual address ``vaddr`` (already relocated through VIRT_BASE/PADDR_OFFSET)."""

    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True)
class XenNotes:
    """The ``XEN_ELFNOTE_*`` notes of a kernel, decoded. Absent notes are None (or empty)."""

    entry: int | None = None
    hypercall_page: int | None = None
    virt_base: int | None = None
    paddr_offset: int | None = None
    xen_version: str | None = None
    guest_os: str | None = None
    guest_version: str | None = None
    loader: str | None = None
    pae_mode: str | None = None
    hv_start_low: int | None = None
    suspend_cancel: int | None = None
    init_p2m: int | None = None
    mod_start_pfn: int | None = None
    phys32_entry: int | None = None
    features_required: frozenset[XenFeature] = frozenset()
    features_supported: frozenset[XenFeature] = frozenset()
    #: Every Xen note as found (type -> raw descriptor), unknown types included.
    raw: dict[int, bytes] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class KernelImage:
    """A 64-bit PV kernel, checked and ready to lay out.

    ``virt_base`` is where the guest's initial mapping starts (pfn 0); the kernel occupies
    ``[virt_kstart, virt_kend)``; ``entry`` is the first instruction. ``elf`` holds the ELF bytes the
    segments refer to (after decompression, for a bzImage); ``compression`` names the bzImage payload's
    format, or None for a plain ELF.

    A large uncompressed ELF read from a file keeps the file open instead (``source``): ``elf`` then holds
    only what was checked (headers and notes; the rest reads as zero) and segment bytes are read from the
    file straight into their destination, so a 66 MB kernel is never copied through dom0 memory. If the
    file shrinks meanwhile, copying raises ``KernelImageError``.
    """

    elf: bytes | bytearray | memoryview = field(repr=False)  # never modified
    segments: tuple[Segment, ...]
    notes: XenNotes
    entry: int
    virt_base: int
    virt_kstart: int
    virt_kend: int
    compression: str | None = None
    source: _FileSource | None = field(default=None, repr=False, compare=False)

    def _read(self, dest: memoryview, at: int) -> None:
        """Fill ``dest`` with the ELF's bytes from offset ``at``."""
        if self.source is not None:
            self.source.read_into(dest, at)
        else:
            dest[:] = memoryview(self.elf)[at : at + len(dest)]

    @property
    def hypercall_page(self) -> int | None:
        """The virtual address of the hypercall page, if the kernel has one."""
        return self.notes.hypercall_page

    @property
    def kernel_pfn(self) -> int:
        """The pseudo-physical frame the kernel's first page goes to."""
        return (self.virt_kstart - self.virt_base) // PAGE

    @property
    def nr_kernel_pages(self) -> int:
        return (self.virt_kend - self.virt_kstart + PAGE - 1) // PAGE

    def copy_into(self, dest: memoryview, offset: int) -> None:
        """Write bytes ``[offset, offset + len(dest))`` of the in-memory kernel (see ``flat``) into ``dest``:
        segment bytes where segments lie, zero elsewhere. No copy of the whole image is made."""
        end = offset + len(dest)
        pos = offset  # everything before ``pos`` is written
        for seg in self.segments:  # sorted by address, not overlapping
            lo = max(offset, seg.vaddr - self.virt_kstart)
            hi = min(end, seg.vaddr - self.virt_kstart + seg.filesz)
            if lo < hi:
                if lo > pos:
                    dest[pos - offset : lo - offset] = bytes(lo - pos)
                at = seg.offset + lo - (seg.vaddr - self.virt_kstart)
                self._read(dest[lo - offset : hi - offset], at)
                pos = hi
        if pos < end:
            dest[pos - offset :] = bytes(end - pos)

    def flat(self) -> bytearray:
        """The kernel as it lies in memory: ``[virt_kstart, virt_kend)`` with every segment copied in and the
        gaps and bss zero (one copy per segment)."""
        out = bytearray(self.virt_kend - self.virt_kstart)
        for seg in self.segments:
            pos = seg.vaddr - self.virt_kstart
            self._read(memoryview(out)[pos : pos + seg.filesz], seg.offset)
        return out

    def pages(self) -> Iterator[tuple[int, bytes]]:
        """The kernel's non-zero content as (page index from ``virt_kstart``, 4096 bytes), in order.

        Pages that would be all zero (bss, gaps) are left out: freshly populated guest memory is zeroed
        by Xen already.
        """
        out: dict[int, bytearray] = {}
        for seg in self.segments:
            data = bytearray(seg.filesz)
            self._read(memoryview(data), seg.offset)
            pos = seg.vaddr - self.virt_kstart
            i = 0
            while i < len(data):
                idx, off = divmod(pos + i, PAGE)
                n = min(PAGE - off, len(data) - i)
                chunk = data[i : i + n]
                if chunk.count(0) != n:
                    page = out.setdefault(idx, bytearray(PAGE))
                    page[off : off + n] = chunk
                i += n
        for idx in sorted(out):
            yield idx, bytes(out[idx])


class _FileSource:
    """An open kernel file that segment bytes are read from (``KernelImage.source``); closed with the image."""

    def __init__(self, fd: int, size: int, name: str) -> None:
        self.fd, self.size, self.name = fd, size, name
        self._finalizer = weakref.finalize(self, os.close, fd)

    def read_into(self, dest: memoryview, at: int) -> None:
        done = 0
        while done < len(dest):
            n = os.preadv(self.fd, [dest[done:]], at + done)
            if n <= 0:
                raise KernelImageError(f"kernel {self.name}: the file ends at {at + done:#x}, it was "
                                       f"{self.size:#x} bytes when checked (changed since?)")
            done += n


def _sparse_elf(fd: int, size: int) -> memoryview:
    """``size`` bytes that read as the ELF file wherever ``_parse_elf`` looks (the ELF header, the program
    headers, the note segments, else the section headers and note sections) and as zero elsewhere: an
    anonymous mapping of which only those pages are ever touched. Out-of-bounds fields are left for
    ``_parse_elf`` to report."""
    buf = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(buf)

    def fill(start: int, length: int) -> None:
        if 0 <= start and length > 0 and start + length <= size:
            got = os.preadv(fd, [view[start : start + length]], start)
            if got != length:
                raise KernelImageError(f"short read at {start:#x} (the file changed while being read?)")

    fill(0, min(_EHDR.size, size))
    if size < _EHDR.size:
        return view
    fields = _EHDR.unpack_from(view, 0)
    phoff, shoff, phentsize, phnum, shentsize, shnum = fields[5], fields[6], fields[9], fields[10], fields[11], \
        fields[12]
    if phentsize != _PHDR.size or phnum > _MAX_PHDRS:
        return view
    fill(phoff, phnum * _PHDR.size)
    notes = False
    if phoff + phnum * _PHDR.size <= size:
        for i in range(phnum):
            p_type, _fl, p_offset, _va, _pa, p_filesz, *_ = _PHDR.unpack_from(view, phoff + i * _PHDR.size)
            if p_type == _PT_NOTE:
                notes = True
                fill(p_offset, p_filesz)
    if notes or shentsize != _SHDR.size or shnum > _MAX_SHDRS:
        return view
    fill(shoff, shnum * _SHDR.size)
    if shoff + shnum * _SHDR.size <= size:
        for i in range(shnum):
            _name, sh_type, _f, _a, sh_offset, sh_size, *_ = _SHDR.unpack_from(view, shoff + i * _SHDR.size)
            if sh_type == _SHT_NOTE:
                fill(sh_offset, sh_size)
    return view


def load_kernel_file(path: str | Path) -> KernelImage:
    """Read ``path`` (at most ``MAX_KERNEL_BYTES``) and ``load_kernel`` it; errors name the file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_KERNEL_BYTES:
                raise KernelImageError(f"kernel {p}: {size} bytes is larger than the {MAX_KERNEL_BYTES >> 20} MiB "
                                       "xenpure accepts")
            if size >= _POPULATE_FROM and os.pread(f.fileno(), 4, 0) == _ELFMAG:
                return _load_elf_file(p, f.fileno(), size)
            data = _read_exactly(f, size)
    except OSError as e:
        raise KernelImageError(f"kernel {p}: cannot read it ({e.strerror})") from e
    try:
        return load_kernel(data)
    except KernelImageError as e:
        msg = f"kernel {p}: {e}"
    # Raised outside the handler, with the image dropped: a traceback that keeps this frame (and a cycle
    # through the caught exception) would otherwise keep tens of MiB alive until the cyclic GC runs.
    del data
    raise KernelImageError(msg)


def _load_elf_file(p: Path, fd: int, size: int) -> KernelImage:
    """A large uncompressed ELF: checked from its headers and notes alone, its segments left in the file."""
    source = _FileSource(os.dup(fd), size, str(p))
    try:
        image = _parse_elf(_sparse_elf(source.fd, size), None)
    except KernelImageError as e:
        msg = f"kernel {p}: {e}"
    else:
        return dataclasses.replace(image, source=source)
    raise KernelImageError(msg)


def _populated(size: int) -> mmap.mmap:
    """``size`` zeroed bytes of anonymous memory, faulted in by the kernel up front (MAP_POPULATE): one
    system call instead of a page fault per page, which is what a 66 MB kernel costs in a PV dom0, where
    every fault bounces through Xen."""
    return mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0))


def _read_exactly(f: io.BufferedReader, size: int) -> bytes | memoryview:
    """The whole of ``f`` (``size`` bytes by fstat); large files go into populated memory (``_populated``)."""
    if size < _POPULATE_FROM:
        return f.read(size)  # exactly the file's size: read(n) would first allocate all n bytes
    buf = _populated(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return view[:got]


def load_kernel(data: bytes | bytearray | memoryview) -> KernelImage:
    """Check and decode a PV kernel: an ELF64 x86_64 image with Xen notes, or a bzImage wrapping one.

    Raises ``KernelImageError`` for anything that cannot boot as a 64-bit PV domU.
    """
    if len(data) > MAX_KERNEL_BYTES:
        raise KernelImageError(f"{len(data)} bytes is larger than the {MAX_KERNEL_BYTES >> 20} MiB xenpure accepts")
    compression = None
    if data[:4] != _ELFMAG:
        if _is_bzimage(data):
            data, compression = unwrap_bzimage(data)
        else:
            raise KernelImageError("neither an ELF image nor a bzImage (no \\x7fELF magic, no HdrS setup header)")
    return _parse_elf(data, compression)


# -- bzImage ---------------------------------------------------------------------------------------------

_SETUP_SECTS = 0x1F1
_HDRS = 0x202
_VERSION = 0x206
_PAYLOAD_OFFSET = 0x248
_PAYLOAD_LENGTH = 0x24C

_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x89LZO", "lzo"),
    (b"\x02\x21\x4c\x18", "lz4"),
)


def _is_bzimage(data: bytes | bytearray | memoryview) -> bool:
    return len(data) >= _PAYLOAD_LENGTH + 4 and data[_HDRS : _HDRS + 4] == b"HdrS"


def unwrap_bzimage(data: bytes | bytearray | memoryview) -> tuple[bytes | memoryview, str]:
    """The ELF inside a bzImage and the compression it was stored with.

    Raises ``KernelImageError`` for a boot protocol before 2.08 (no payload fields), a payload outside the
    file, an unsupported compression (named), or a payload that does not decompress to at most
    ``MAX_KERNEL_BYTES``.
    """
    if not _is_bzimage(data):
        raise KernelImageError("not a bzImage: no 'HdrS' setup header at 0x202")
    version = int.from_bytes(data[_VERSION : _VERSION + 2], "little")
    if version < 0x0208:
        raise KernelImageError(f"bzImage boot protocol {version >> 8}.{version & 0xFF:02d} has no payload fields "
                               "(2.08 or later is needed)")
    setup_sects = data[_SETUP_SECTS] or 4
    pm_start = (setup_sects + 1) * 512
    off = int.from_bytes(data[_PAYLOAD_OFFSET : _PAYLOAD_OFFSET + 4], "little")
    length = int.from_bytes(data[_PAYLOAD_LENGTH : _PAYLOAD_LENGTH + 4], "little")
    start = pm_start + off
    if length == 0 or start + length > len(data):
        raise KernelImageError(f"bzImage payload [{start:#x}, +{length:#x}) lies outside the {len(data)}-byte file "
                               "(truncated?)")
    payload = memoryview(data)[start : start + length]
    kind = next((name for magic, name in _MAGICS if payload[: len(magic)] == magic), None)
    if kind is None:
        raise KernelImageError(f"bzImage payload starts with {bytes(payload[:6]).hex()}: not a compression format "
                               "xenpure knows")
    if kind not in ("gzip", "xz", "lzma", "bzip2"):
        raise KernelImageError(f"bzImage payload is {kind}-compressed; xenpure decompresses only gzip, xz, "
                               "lzma and bzip2 (the Python standard library's); use an uncompressed vmlinux")
    try:
        out, done = _inflate(kind, payload)
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as e:
        raise KernelImageError(f"bzImage {kind} payload is corrupt: {e}") from None
    if len(out) > MAX_KERNEL_BYTES:
        raise KernelImageError(f"bzImage payload decompresses to more than {MAX_KERNEL_BYTES >> 20} MiB")
    if not done:
        raise KernelImageError(f"bzImage {kind} payload is truncated (the stream does not end)")
    if out[:4] != _ELFMAG:
        raise KernelImageError(f"bzImage {kind} payload is not an ELF image")
    return out, kind


class _Output:
    """Where decompressed bytes go: populated memory sized by the size hint (``_populated``), grown by
    copying if the hint was short, trimmed to what was written at the end."""

    def __init__(self, hint: int) -> None:
        self.buf = _populated(max(hint, PAGE))
        self.n = 0

    def write(self, chunk: bytes) -> None:
        end = self.n + len(chunk)
        if end > len(self.buf):
            bigger = _populated(max(end, 2 * len(self.buf)))
            bigger[: self.n] = self.buf[: self.n]
            self.buf.close()
            self.buf = bigger
        self.buf[self.n : end] = chunk
        self.n = end

    def result(self) -> bytes | memoryview:
        if self.n < _POPULATE_FROM:
            data = self.buf[: self.n]  # small: a plain copy, and the mapping goes
            self.buf.close()
            return data
        return memoryview(self.buf)[: self.n]


def _inflate(kind: str, payload: bytes | bytearray | memoryview) -> tuple[bytes | memoryview, bool]:
    """Decompress in 1 MiB steps (temporaries the allocator reuses) into one buffer sized by the hint Linux
    leaves in a payload's last four bytes (gzip's ISIZE, the size appended to xz/lzma/bzip2 payloads),
    believed only up to ``MAX_KERNEL_BYTES`` and ``_MAX_RATIO`` times the payload (a small hostile file must not
    make us fault in 256 MiB before a byte is decoded). Returns (data, whether the stream ended); more than
    ``MAX_KERNEL_BYTES`` stops early."""
    step = 1 << 20
    hint = int.from_bytes(payload[-4:], "little") if len(payload) >= 4 else 0
    out = _Output(hint if hint <= min(MAX_KERNEL_BYTES, _MAX_RATIO * len(payload)) else step)
    if kind == "gzip":
        z = zlib.decompressobj(wbits=31)
        data: bytes | bytearray | memoryview = payload
        while out.n <= MAX_KERNEL_BYTES:
            out.write(z.decompress(data, step))
            data = z.unconsumed_tail
            if z.eof or not data:
                return out.result(), z.eof
        return out.result(), False
    d = bz2.BZ2Decompressor() if kind == "bzip2" else lzma.LZMADecompressor(
        lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE)
    chunk: bytes | bytearray | memoryview = payload
    while out.n <= MAX_KERNEL_BYTES:
        out.write(d.decompress(chunk, step))
        chunk = b""
        if d.eof or d.needs_input:
            return out.result(), d.eof
    return out.result(), False


# -- ELF -------------------------------------------------------------------------------------------------


def _parse_elf(data: bytes | bytearray | memoryview, compression: str | None) -> KernelImage:
    n = len(data)
    if n < _EHDR.size:
        raise KernelImageError(f"truncated ELF header ({n} bytes, need {_EHDR.size})")
    (ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, _flags, e_ehsize, e_phentsize, e_phnum,
     e_shentsize, e_shnum, _shstrndx) = _EHDR.unpack_from(data, 0)
    if ident[4] == _ELFCLASS32:
        raise KernelImageError("a 32-bit ELF kernel: xenpure builds 64-bit PV guests only")
    if ident[4] != _ELFCLASS64:
        raise KernelImageError(f"ELF class {ident[4]} is not ELFCLASS64")
    if ident[5] != _ELFDATA2LSB:
        raise KernelImageError("a big-endian ELF: x86_64 kernels are little-endian")
    if ident[6] != 1 or e_version != 1:
        raise KernelImageError(f"ELF version {ident[6]}/{e_version} is not EV_CURRENT")
    if e_machine != _EM_X86_64:
        what = _MACHINES.get(e_machine, f"machine {e_machine}")
        raise KernelImageError(f"wrong architecture: the kernel is for {what}, a PV guest here needs x86_64")
    if e_type not in (_ET_EXEC, _ET_DYN):
        raise KernelImageError(f"ELF type {e_type} is not an executable (ET_EXEC)")
    if e_ehsize < _EHDR.size:
        raise KernelImageError(f"e_ehsize {e_ehsize} is smaller than an ELF64 header")
    if e_phnum == 0:
        raise KernelImageError("no program headers: nothing to load")
    if e_phentsize != _PHDR.size or e_phnum > _MAX_PHDRS:
        raise KernelImageError(f"program headers of {e_phentsize} bytes x {e_phnum} (expect 56 x at most {_MAX_PHDRS})")
    if e_phoff + e_phnum * _PHDR.size > n:
        raise KernelImageError(f"program headers at {e_phoff:#x} run past the end of the {n}-byte file (truncated?)")

    loads: list[tuple[int, int, int, int, int]] = []  # (paddr, offset, filesz, memsz, flags)
    note_areas: list[tuple[int, int]] = []
    for i in range(e_phnum):
        p_type, p_flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = _PHDR.unpack_from(
            data, e_phoff + i * _PHDR.size)
        if p_type == _PT_LOAD:
            if p_memsz == 0:
                continue
            if p_filesz > p_memsz:
                raise KernelImageError(f"segment {i}: filesz {p_filesz:#x} > memsz {p_memsz:#x}")
            if p_offset + p_filesz > n:
                raise KernelImageError(f"segment {i}: bytes [{p_offset:#x}, +{p_filesz:#x}) run past the end of "
                                       f"the {n}-byte file (truncated?)")
            if p_paddr + p_memsz > 1 << 64:
                raise KernelImageError(f"segment {i}: address range wraps around")
            loads.append((p_paddr, p_offset, p_filesz, p_memsz, p_flags))
        elif p_type == _PT_NOTE:
            if p_offset + p_filesz > n:
                raise KernelImageError(f"note segment {i} runs past the end of the file (truncated?)")
            note_areas.append((p_offset, p_filesz))
    if not loads:
        raise KernelImageError("no PT_LOAD segment: nothing to load")
    if not note_areas and e_shnum:
        note_areas = _note_sections(data, e_shoff, e_shentsize, e_shnum)
    notes = _xen_notes(data, note_areas)
    return _image(data, loads, notes, e_entry, compression)


_Data = bytes | bytearray | memoryview


def _note_sections(data: _Data, shoff: int, shentsize: int, shnum: int) -> list[tuple[int, int]]:
    if shentsize != _SHDR.size or shnum > _MAX_SHDRS or shoff + shnum * _SHDR.size > len(data):
        raise KernelImageError("section headers out of bounds (truncated?)")
    out = []
    for i in range(shnum):
        _name, sh_type, _fl, _addr, sh_offset, sh_size, *_ = _SHDR.unpack_from(data, shoff + i * _SHDR.size)
        if sh_type == _SHT_NOTE:
            if sh_offset + sh_size > len(data):
                raise KernelImageError(f"note section {i} runs past the end of the file (truncated?)")
            out.append((sh_offset, sh_size))
    return out


def _xen_notes(data: bytes | bytearray | memoryview, areas: list[tuple[int, int]]) -> XenNotes:
    raw: dict[int, bytes] = {}
    count = 0
    for start, size in areas:
        pos, end = start, start + size
        while pos + _NHDR.size <= end:
            namesz, descsz, ntype = _NHDR.unpack_from(data, pos)
            count += 1
            if count > _MAX_NOTES:
                raise KernelImageError(f"more than {_MAX_NOTES} ELF notes")
            name_at = pos + _NHDR.size
            desc_at = name_at + _align4(namesz)
            nxt = desc_at + _align4(descsz)
            if nxt > end:
                raise KernelImageError(f"ELF note at {pos:#x} (namesz {namesz}, descsz {descsz}) runs past its "
                                       "note area")
            name = bytes(data[name_at : name_at + namesz])
            if name.rstrip(b"\0") == b"Xen":
                if descsz > _MAX_NOTE_DESC:
                    raise KernelImageError(f"Xen note {_note_name(ntype)} is {descsz} bytes long")
                if ntype in raw:
                    raise KernelImageError(f"Xen note {_note_name(ntype)} appears twice")
                raw[ntype] = bytes(data[desc_at : desc_at + descsz])
            pos = nxt
    if not raw:
        raise KernelImageError("no Xen ELF notes: not a Xen PV kernel (or an old kernel with only the legacy "
                               "__xen_guest section, which xenpure does not read)")
    values: dict[str, object] = {}
    for ntype, desc in raw.items():
        if ntype not in ElfNote._value2member_map_:
            continue
        note = ElfNote(ntype)
        if note in _NUMERIC:
            if len(desc) not in (1, 2, 4, 8):
                raise KernelImageError(f"Xen note {note.name} is a number but {len(desc)} bytes long")
            values[note.name.lower()] = int.from_bytes(desc, "little")
        elif note in _STRING:
            text = desc.split(b"\0", 1)[0]
            try:
                values[note.name.lower()] = text.decode("ascii")
            except UnicodeDecodeError:
                raise KernelImageError(f"Xen note {note.name} is not ASCII text") from None
    required: set[XenFeature] = set()
    supported: set[XenFeature] = set()
    feat_text = values.pop("features", None)
    if isinstance(feat_text, str) and feat_text:
        for item in feat_text.split("|"):
            must = item.startswith("!")
            fname = item[1:] if must else item
            if not fname:
                continue
            feat = XenFeature.__members__.get(fname)
            if feat is None:
                if must:
                    raise KernelImageError(f"the kernel requires Xen feature {fname!r}, which xenpure does not know")
                continue
            (required if must else supported).add(feat)
            supported.add(feat)
    bitmap = values.pop("supported_features", None)
    if isinstance(bitmap, int):
        supported |= {f for f in XenFeature if bitmap >> f & 1}
    values.pop("info", None)
    values.pop("bsd_symtab", None)
    return XenNotes(features_required=frozenset(required), features_supported=frozenset(supported), raw=raw,
                    **values)  # type: ignore[arg-type]


def _note_name(ntype: int) -> str:
    return ElfNote(ntype).name if ntype in ElfNote._value2member_map_ else str(ntype)


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _image(data: _Data, loads: list[tuple[int, int, int, int, int]], notes: XenNotes, e_entry: int,
           compression: str | None) -> KernelImage:
    if notes.xen_version is not None and notes.xen_version != "xen-3.0":
        raise KernelImageError(f"XEN_VERSION note {notes.xen_version!r}: only 'xen-3.0' kernels exist for Xen 3+")
    if notes.loader is not None and notes.loader != "generic":
        raise KernelImageError(f"LOADER note {notes.loader!r}: only the 'generic' loader exists")
    if notes.entry is None and notes.phys32_entry is not None:
        raise KernelImageError("a PVH-only kernel (PHYS32_ENTRY without ENTRY): it cannot boot as a PV guest")
    missing = notes.features_required - PV_FEATURES
    if missing:
        names = ", ".join(sorted(f.name for f in missing))
        raise KernelImageError(f"the kernel requires Xen feature(s) a PV domU cannot have: {names}")
    virt_base = notes.virt_base or 0
    paddr_offset = notes.paddr_offset or 0
    if virt_base % PAGE:
        raise KernelImageError(f"VIRT_BASE {virt_base:#x} is not page aligned")
    segs = []
    for paddr, offset, filesz, memsz, flags in loads:
        if paddr < paddr_offset:
            raise KernelImageError(f"segment at paddr {paddr:#x} lies below PADDR_OFFSET {paddr_offset:#x}")
        vaddr = paddr - paddr_offset + virt_base
        if vaddr + memsz > 1 << 64:
            raise KernelImageError(f"segment at {vaddr:#x} (+{memsz:#x}) runs past the top of the address space")
        segs.append(Segment(vaddr, offset, filesz, memsz, flags))
    segs.sort(key=lambda s: s.vaddr)
    for a, b in itertools.pairwise(segs):
        if a.vaddr + a.memsz > b.vaddr:
            raise KernelImageError(f"segments at {a.vaddr:#x} and {b.vaddr:#x} overlap")
    kstart = segs[0].vaddr & ~(PAGE - 1)
    kend = (max(s.vaddr + s.memsz for s in segs) + PAGE - 1) & ~(PAGE - 1)
    if kstart < virt_base:
        raise KernelImageError(f"the kernel starts at {kstart:#x}, below VIRT_BASE {virt_base:#x}")
    # A PV kernel lives in the upper half, clear of the hypervisor's reserved hole.
    hole_lo, hole_hi = 0xFFFF800000000000, 0xFFFF880000000000  # HYPERVISOR_VIRT_START/END, xen-x86_64.h
    if kstart < hole_hi and kend > hole_lo:
        raise KernelImageError(f"the kernel [{kstart:#x}, {kend:#x}) overlaps Xen's reserved virtual range")
    entry = notes.entry if notes.entry is not None else e_entry
    if not kstart <= entry < kend:
        raise KernelImageError(f"entry point {entry:#x} lies outside the kernel [{kstart:#x}, {kend:#x})")
    hp = notes.hypercall_page
    if hp is not None and (hp % PAGE or not kstart <= hp < kend):
        raise KernelImageError(f"HYPERCALL_PAGE {hp:#x} is not a page-aligned address inside the kernel")
    p2m = notes.init_p2m
    if p2m is not None and p2m % PAGE:
        raise KernelImageError(f"INIT_P2M {p2m:#x} is not page aligned")
    return KernelImage(data, tuple(segs), notes, entry, virt_base, kstart, kend, compression)
