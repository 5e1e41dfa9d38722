"""xl.cfg files, parsed (never evaluated) into a ``DomainConfig``.

Rule 1: the file is data. A tokenizer turns the text into tokens (names, strings, numbers, ``=``, ``[``,
``]``, ``,``, statement ends), a small recursive-descent parser turns tokens into ``{key: value}``, and a
table maps the supported keys onto ``DomainConfig`` fields. Nothing in the file is ever executed, and every
error names the file, the line and the key.

The syntax is xl.cfg(5)'s: ``KEY = VALUE`` statements separated by newlines or ``;``; a value is a string
in single or double quotes, a number (decimal, octal with a leading ``0``, hexadecimal with ``0x``), or a
list ``[v, v, ...]`` of values (nested, heterogeneous, a trailing comma allowed); ``#`` starts a comment.
Strings understand the C escapes ``\\\\ \\" \\' \\n \\t \\r \\a \\b \\f \\v`` and octal/hex bytes.

The subset xenpure builds is a PV guest: ``type="pv"`` (or the deprecated ``builder="generic"``),
``name``, ``uuid``, ``memory``, ``maxmem``, ``vcpus`` (``maxvcpus`` only equal to it), ``kernel``,
``ramdisk``, ``cmdline`` or ``root`` + ``extra``, and ``on_poweroff``/``on_reboot``/``on_crash``.
"""

from __future__ import annotations

import uuid as _uuid
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ._config import Action, ConfigError, DomainConfig

__all__ = ["Token", "TokenKind", "Value", "load", "parse", "parse_values", "tokenize"]

#: A parsed value: a string, an integer, or a list of values.
Value = str | int | list["Value"]


class TokenKind(Enum):
    NAME = "name"
    STRING = "string"
    NUMBER = "number"
    EQUALS = "'='"
    PLUS_EQUALS = "'+='"
    LBRACKET = "'['"
    RBRACKET = "']'"
    COMMA = "','"
    END = "end of statement"  # a newline or ';'
    EOF = "end of file"


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    value: str | int
    line: int


_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v"}
_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_NAME_CHARS = _NAME_START + "0123456789"
#: Bound on a config file: a real one is a few KiB; refuse anything absurd before tokenizing.
MAX_CONFIG_BYTES = 1 << 20


def tokenize(text: str, source: str = "") -> Iterator[Token]:
    """The tokens of ``text``; ``ConfigError`` (with the line) for a character that starts no token."""
    i, line, n = 0, 1, len(text)

    def fail(msg: str) -> ConfigError:
        return ConfigError(msg, line=line, source=source)

    while i < n:
        c = text[i]
        if c == "\n":
            yield Token(TokenKind.END, "\n", line)
            line += 1
            i += 1
        elif c in " \t\r\f\v":
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c == ";":
            yield Token(TokenKind.END, ";", line)
            i += 1
        elif c == "=":
            yield Token(TokenKind.EQUALS, "=", line)
            i += 1
        elif c == "+" and text.startswith("+=", i):
            yield Token(TokenKind.PLUS_EQUALS, "+=", line)
            i += 2
        elif c == "[":
            yield Token(TokenKind.LBRACKET, "[", line)
            i += 1
        elif c == "]":
            yield Token(TokenKind.RBRACKET, "]", line)
            i += 1
        elif c == ",":
            yield Token(TokenKind.COMMA, ",", line)
            i += 1
        elif c in "\"'":
            start_line = line
            i += 1
            out: list[str] = []
            while True:
                if i >= n:
                    raise ConfigError(f"string opened with {c} is never closed", line=start_line, source=source)
                ch = text[i]
                if ch == c:
                    i += 1
                    break
                if ch == "\n":
                    raise fail(f"newline inside a string opened with {c}")
                if ch == "\\":
                    if i + 1 >= n:
                        raise fail("backslash at the end of the file")
                    e = text[i + 1]
                    if e in _ESCAPES:
                        out.append(_ESCAPES[e])
                        i += 2
                    elif e == "x":
                        digits = _take(text, i + 2, "0123456789abcdefABCDEF", 2)
                        if not digits:
                            raise fail("\\x needs hexadecimal digits")
                        out.append(chr(int(digits, 16)))
                        i += 2 + len(digits)
                    elif e in "01234567":
                        digits = _take(text, i + 1, "01234567", 3)
                        out.append(chr(int(digits, 8)))
                        i += 1 + len(digits)
                    else:
                        raise fail(f"unknown escape \\{e} in a string")
                    continue
                out.append(ch)
                i += 1
            yield Token(TokenKind.STRING, "".join(out), start_line)
        elif c.isdigit() or (c == "-" and i + 1 < n and text[i + 1].isdigit()):
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            yield Token(TokenKind.NUMBER, _number(word, fail), line)
            i = j
        elif c in _NAME_START:
            j = i + 1
            while j < n and text[j] in _NAME_CHARS:
                j += 1
            yield Token(TokenKind.NAME, text[i:j], line)
            i = j
        else:
            raise fail(f"unexpected character {c!r}")
    yield Token(TokenKind.EOF, "", line)


def _take(text: str, i: int, allowed: str, most: int) -> str:
    j = i
    while j < len(text) and j - i < most and text[j] in allowed:
        j += 1
    return text[i:j]


def _number(word: str, fail: Any) -> int:
    neg = word.startswith("-")
    body = word[1:] if neg else word
    try:
        if body[:2] in ("0x", "0X"):
            v = int(body[2:], 16)
        elif len(body) > 1 and body[0] == "0":
            v = int(body[1:], 8)
        else:
            v = int(body, 10)
    except ValueError:
        raise fail(f"{word!r} is not a number (decimal, 0-prefixed octal or 0x hexadecimal)") from None
    return -v if neg else v


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens = list(tokenize(text, source))
        self.pos = 0

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def take(self) -> Token:
        t = self.tokens[self.pos]
        if t.kind is not TokenKind.EOF:
            self.pos += 1
        return t

    def fail(self, msg: str, tok: Token, key: str | None = None) -> ConfigError:
        return ConfigError(msg, key=key, line=tok.line, source=self.source)

    def statements(self) -> dict[str, tuple[Value, int]]:
        out: dict[str, tuple[Value, int]] = {}
        while True:
            t = self.take()
            if t.kind is TokenKind.EOF:
                return out
            if t.kind is TokenKind.END:
                continue
            if t.kind is not TokenKind.NAME:
                raise self.fail(f"expected a key, found {t.kind.value}", t)
            key = str(t.value)
            op = self.take()
            if op.kind is TokenKind.PLUS_EQUALS:
                raise self.fail(f"{key} += ...: appending is not supported, write the whole value", op, key)
            if op.kind is not TokenKind.EQUALS:
                raise self.fail(f"expected '=' after {key}, found {op.kind.value}", op, key)
            value = self.value(key, 0)
            end = self.take()
            if end.kind not in (TokenKind.END, TokenKind.EOF):
                raise self.fail(f"expected the end of the {key} statement, found {end.kind.value}", end, key)
            if key in out:
                raise self.fail(f"{key} is set twice (first on line {out[key][1]})", t, key)
            out[key] = (value, t.line)
            if end.kind is TokenKind.EOF:
                return out

    def value(self, key: str, depth: int) -> Value:
        t = self.take()
        while t.kind is TokenKind.END and t.value == "\n" and depth > 0:  # lists may span lines
            t = self.take()
        if t.kind in (TokenKind.STRING, TokenKind.NUMBER):
            return t.value
        if t.kind is TokenKind.LBRACKET:
            if depth >= 16:
                raise self.fail("lists nested more than 16 deep", t, key)
            items: list[Value] = []
            while True:
                self._skip_newlines()
                if self.peek().kind is TokenKind.RBRACKET:
                    self.take()
                    return items
                items.append(self.value(key, depth + 1))
                self._skip_newlines()
                sep = self.take()
                if sep.kind is TokenKind.RBRACKET:
                    return items
                if sep.kind is not TokenKind.COMMA:
                    raise self.fail(f"expected ',' or ']' in the list of {key}, found {sep.kind.value}", sep, key)
        if t.kind is TokenKind.NAME:
            raise self.fail(f"{key} = {t.value}: a string value needs quotes", t, key)
        raise self.fail(f"expected a value for {key}, found {t.kind.value}", t, key)

    def _skip_newlines(self) -> None:
        while self.peek().kind is TokenKind.END and self.peek().value == "\n":
            self.take()


def parse_values(text: str, source: str = "") -> dict[str, tuple[Value, int]]:
    """Every ``KEY = VALUE`` of ``text`` as ``{key: (value, line)}``, whatever the keys are."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config is {len(text)} characters, more than {MAX_CONFIG_BYTES}", source=source)
    return _Parser(text, source).statements()


#: xl.cfg keys xenpure knows but does not build (yet): named as unsupported rather than unknown.
_UNSUPPORTED = frozenset({
    "pool", "maxvcpus", "cpus", "cpus_soft", "cpu_weight", "cap", "vnuma", "claim_mode", "bootloader",
    "bootloader_args", "e820_host", "disk", "vif", "vtpm", "p9", "pvcalls", "vfb", "channel", "rdm", "usbctrl",
    "usbdev", "pci", "pci_permissive", "pci_msitranslate", "pci_seize", "pci_power_mgmt", "gfx_passthru",
    "rdm_mem_boundary", "dtdev", "ioports", "iomem", "irqs", "max_event_channels", "vdispl", "vsnd", "vkb",
    "tee", "device_model_version", "device_model_override", "device_tree", "seclabel", "init_seclabel",
    "max_grant_frames", "max_maptrack_frames", "max_grant_version", "nomigrate", "driver_domain",
    "passthrough", "on_watchdog", "on_soft_reset", "tsc_mode", "localtime", "rtc_timeoffset", "vcpu_hard_affinity",
    "vcpu_soft_affinity", "cpuid", "altp2m", "nestedhvm", "apic", "acpi", "viridian", "hap", "oos", "shadow_memory",
    "firmware", "bios", "boot", "device_model_args", "serial", "vnc", "sdl", "stdvga", "videoram", "usb",
    "usbdevice", "soundhw", "xen_platform_pci", "pvshim", "pvshim_path", "pvshim_cmdline", "pvshim_extra",
    "gic_version", "vuart", "dm_restrict", "vmtrace_buf_kb", "vpmu", "trap_unmapped_accesses",
})

_KNOWN = ("type", "builder", "name", "uuid", "memory", "maxmem", "vcpus", "maxvcpus", "kernel", "ramdisk",
          "cmdline", "root", "extra", "on_poweroff", "on_reboot", "on_crash")


def parse(text: str, source: str = "", *, base: Path | None = None) -> DomainConfig:
    """A ``DomainConfig`` from the xl.cfg text ``text``.

    ``source`` names the file in errors; relative ``kernel``/``ramdisk`` paths are taken relative to ``base``
    (the current directory if None, as ``xl`` does). Raises ``ConfigError`` naming the key and line of any
    syntax error, unknown or unsupported key, wrong type, or invalid value.
    """
    values = parse_values(text, source)

    def err(msg: str, key: str) -> ConfigError:
        return ConfigError(msg, key=key, line=values[key][1] if key in values else None, source=source)

    for key in values:
        if key in _UNSUPPORTED and key != "maxvcpus":
            raise err(f"{key} is an xl.cfg key xenpure does not support (it builds PV guests from: "
                      f"{', '.join(_KNOWN)})", key)
        if key not in _KNOWN and key not in _UNSUPPORTED:
            raise err(f"unknown key {key!r} (xenpure understands: {', '.join(_KNOWN)})", key)

    def get_str(key: str) -> str | None:
        if key not in values:
            return None
        v = values[key][0]
        if not isinstance(v, str):
            raise err(f"{key} must be a string in quotes, got {_show(v)}", key)
        return v

    def get_int(key: str) -> int | None:
        if key not in values:
            return None
        v = values[key][0]
        if not isinstance(v, int):
            raise err(f"{key} must be a number, got {_show(v)}", key)
        return v

    kind = get_str("type")
    builder = get_str("builder")
    if kind is not None and kind != "pv":
        raise err(f'type="{kind}": xenpure builds PV guests only (type="pv")', "type")
    if builder is not None and builder != "generic":
        raise err(f'builder="{builder}": xenpure builds PV guests only (builder="generic")', "builder")
    name = get_str("name")
    if name is None:
        raise ConfigError("name is mandatory", key="name", source=source)
    kernel = get_str("kernel")
    if kernel is None:
        raise ConfigError("kernel is mandatory for a PV guest (xenpure has no bootloader)", key="kernel", source=source)
    kw: dict[str, Any] = {"name": name, "kernel": _path(kernel, base)}
    ramdisk = get_str("ramdisk")
    if ramdisk is not None:
        kw["ramdisk"] = _path(ramdisk, base)
    for key in ("memory", "maxmem", "vcpus"):
        v = get_int(key)
        if v is not None:
            kw[key] = v
    maxvcpus = get_int("maxvcpus")
    if maxvcpus is not None and maxvcpus != kw.get("vcpus", 1):
        raise err(f"maxvcpus={maxvcpus} differs from vcpus: offline vcpus are not supported yet", "maxvcpus")
    u = get_str("uuid")
    if u is not None:
        try:
            kw["uuid"] = _uuid.UUID(u)
        except ValueError:
            raise err(f"uuid {u!r} is not a UUID", "uuid") from None
    cmdline = get_str("cmdline")
    root, extra = get_str("root"), get_str("extra")
    if cmdline is not None and (root is not None or extra is not None):
        raise err("cmdline replaces root and extra: give one or the other", "cmdline")
    if cmdline is None:
        parts = ([f"root={root}"] if root else []) + ([extra] if extra else [])
        cmdline = " ".join(parts)
    kw["cmdline"] = cmdline
    for key in ("on_poweroff", "on_reboot", "on_crash"):
        action = get_str(key)
        if action is not None:
            try:
                kw[key] = Action.parse(action, key)
            except ConfigError as e:
                raise err(str(e), key) from None
    try:
        return DomainConfig(**kw)
    except ConfigError as e:
        raise err(str(e), e.key or "name") from None


def load(path: str | Path) -> DomainConfig:
    """Read and ``parse`` the xl.cfg file at ``path`` (errors name it); relative paths inside stay
    relative to the current directory, as with ``xl create``."""
    p = Path(path)
    data = p.read_bytes()
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{len(data)} bytes is too large for a config file", source=str(p))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=str(p)) from None
    return parse(text, str(p))


def _path(text: str, base: Path | None) -> Path:
    p = Path(text)
    return base / p if base is not None and not p.is_absolute() else p


def _show(v: Value) -> str:
    if isinstance(v, list):
        return "a list"
    if isinstance(v, int):
        return f"the number {v}"
    return f"the string {v!r}"
