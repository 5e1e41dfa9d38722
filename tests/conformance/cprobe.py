"""Ask gcc what the real C headers say, for everything one release's ABI catalogue claims.

Rule 1: every expected number comes from gcc compiling the real headers; nothing in this tier knows a size,
an offset or a value by itself. The catalogue says *what* to measure (record names, member paths, macro
names, C type spellings); gcc says what the answer is.

How: ``program()`` turns a catalogue into ONE C file, one ``printf`` line per check, each line starting with
the check's index. ``probe()`` compiles and runs it and maps every output line back to its check. A check
that does not compile (a member path or macro the header does not have, a nested struct of another type) is
not fatal: gcc's diagnostics name the offending line, that check is recorded as a compile error with gcc's
message and dropped, and the program is rebuilt, so one typo fails one test, not the whole tier.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: C scalar spellings the catalogue uses -> (size, signed). ``None``: C leaves it to the platform (plain
#: ``char``), so only the size is checked.
SCALARS: dict[str, tuple[int, bool | None]] = {
    "uint8_t": (1, False),
    "uint16_t": (2, False),
    "uint32_t": (4, False),
    "uint64_t": (8, False),
    "int8_t": (1, True),
    "int16_t": (2, True),
    "int32_t": (4, True),
    "int64_t": (8, True),
    "unsigned long": (8, False),
    "char": (1, None),
}

#: Linux's uapi xen/privcmd.h includes the kernel's copy of Xen's public xen.h, which userspace does not
#: have. The real public header, from libxen-dev, defines the same domid_t and xen_pfn_t.
SHIM_XEN_H = """\
/* Stand-in for the Linux kernel's <xen/interface/xen.h>: Xen's own public xen.h defines the same types. */
#include <xen/xen.h>
"""


@dataclass(frozen=True)
class Check:
    """One thing to measure. ``key`` names it: ``(cname, "")`` for a record, ``(cname, path)`` for a member,
    ``("constants" | "ioctls", macro)``; ``header`` is the catalogue's header it comes from; ``expr`` are the
    C expressions printed for it and ``expect`` what the catalogue says each of them is."""

    key: tuple[str, str]
    header: str
    expr: Mapping[str, str]
    expect: Mapping[str, int]


@dataclass
class Probe:
    """What gcc said about ``checks``: measured values by check key, gcc's message for those that did not
    compile, and the generated source (kept, for reading)."""

    source: Path
    checks: list[Check]
    values: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    errors: dict[tuple[str, str], str] = field(default_factory=dict)

    def mismatches(self, chk: Check) -> list[str]:
        """One line per difference between the catalogue and gcc for ``chk``; empty when they agree."""
        group, name = chk.key
        what = f"{group}: {name}" if name and group not in ("constants", "ioctls") else (name or group)
        if chk.key in self.errors:
            return [f"{what}: does not compile against the headers: {self.errors[chk.key]}"]
        got = self.values[chk.key]
        return [
            f"{what}: {field}: ours {_fmt(field, want)}, gcc {_fmt(field, got[field])}"
            for field, want in chk.expect.items()
            if want != got[field]
        ]

    def differences(self, where: Callable[[Check], bool] = lambda chk: True) -> list[str]:
        """Every mismatch of the checks ``where`` selects, in catalogue order."""
        return [line for chk in self.checks if where(chk) for line in self.mismatches(chk)]


def c_header(header: str) -> str:
    """The ``#include`` target of a catalogue header: ``linux:xen/privcmd.h`` is Linux's uapi
    ``<xen/privcmd.h>``; anything else is one of Xen's public headers under ``<xen/…>``."""
    if header.startswith("linux:"):
        return header.removeprefix("linux:")
    return f"xen/{header}"


def _member_check(cname: str, header: str, m: Mapping[str, Any], tagged: set[str]) -> Check:
    path, ctype = m["path"], m["ctype"]
    lvalue = f"((({cname} *)0)->{path})"
    expr = {"offset": f"offsetof({cname}, {path})", "size": f"sizeof({lvalue})"}
    expect = {"offset": m["offset"], "size": m["size"]}
    # "uint32_t[8]" (or nested "uint8_t[3][2]"): check the element too, so a size that adds up by accident
    # (uint32_t[2] for a uint64_t) still fails. Subscripting [0] once per dimension reaches the element.
    base = ctype.split("[", 1)[0]
    elem = lvalue + "[0]" * ctype.count("[")
    if base in SCALARS:
        size, signed = SCALARS[base]
        expr["element size"] = f"sizeof({elem})"
        expect["element size"] = size
        if signed is not None:
            # (T)-1 < 0 holds exactly for signed integer types; it doesn't compile for structs and arrays.
            expr["signed"] = f"((__typeof__({elem}))-1 < 0)"
            expect["signed"] = int(signed)
    elif base in tagged:
        expr["is " + base] = f"__builtin_types_compatible_p(__typeof__({elem}), {base})"
        expect["is " + base] = 1
    elif base.startswith("struct ") or base == "union":
        # An untagged struct (the catalogue's name for it is its own invention) or a union: check the kind.
        # gcc's type classes, stable since forever: 12 is a struct, 13 a union.
        kind = "union" if base == "union" else "struct"
        expr[f"is a {kind}"] = f"(__builtin_classify_type({elem}) == {13 if kind == 'union' else 12})"
        expect[f"is a {kind}"] = 1
    # A "guest handle" is a struct, a pointer or a uint64_t depending on the header: offset and size it is.
    return Check((cname, path), header, expr, expect)


def checks(cat: Mapping[str, Any]) -> list[Check]:
    """Every check one catalogue asks for, in catalogue order."""
    out: list[Check] = []
    tagged = {rec["cname"] for rec in cat["records"]}  # struct tags the headers really declare
    for rec in cat["records"]:
        cname = rec["cname"]
        out.append(
            Check(
                (cname, ""),
                rec["header"],
                {"size": f"sizeof({cname})", "align": f"_Alignof({cname})"},
                {"size": rec["size"], "align": rec["align"]},
            )
        )
        out.extend(_member_check(cname, rec["header"], m, tagged) for m in rec["members"])
    for kind in ("constants", "ioctls"):
        for name, c in cat[kind].items():
            out.append(Check((kind, name), c["header"], {"value": name}, {"value": c["value"]}))
    return out


def _print_line(i: int, chk: Check) -> str:
    if chk.key[0] in ("constants", "ioctls"):
        # Macros may be negative (GNTST_*) or above LLONG_MAX; print each in the type that holds it.
        v = f"({chk.expr['value']})"
        return (
            f'if ({v} < 0) printf("{i} %lld\\n", (long long){v}); else printf("{i} %llu\\n", (unsigned long long){v});'
        )
    fmt = " ".join("%llu" for _ in chk.expr)
    args = ", ".join(f"(unsigned long long)({e})" for e in chk.expr.values())
    return f'printf("{i} {fmt}\\n", {args});'


def includes(cat: Mapping[str, Any]) -> list[str]:
    """The headers a catalogue's checks need, as ``#include`` targets, in the order they must be included:
    Xen's public headers first, ``xen/xen.h`` leading, then Linux's uapi ones, which use domid_t from it."""
    used = {r["header"] for r in cat["records"]}
    used |= {c["header"] for kind in ("constants", "ioctls") for c in cat[kind].values()}
    order = sorted(used, key=lambda h: (h.startswith("linux:"), h != "xen.h", h))
    return [c_header(h) for h in order]


def program(
    cat: Mapping[str, Any], all_checks: list[Check], todo: Iterable[int], headers: list[str]
) -> tuple[str, dict[int, int | str]]:
    """The C source measuring checks ``todo``, and what each of its lines is: a check index or a header."""
    lines: list[str] = [
        f"/* Generated by tests/conformance/cprobe.py for Xen {cat['xen']}. Do not edit. */",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#include <stdio.h>",
        "#include <sys/ioctl.h> /* _IOC, which Linux's uapi ioctl macros use without including it */",
    ]
    what: dict[int, int | str] = {}
    for h in headers:
        what[len(lines) + 1] = h
        lines.append(f"#include <{h}>")
    lines += ["", "int main(void)", "{"]
    for i in todo:
        what[len(lines) + 1] = i
        lines.append("    " + _print_line(i, all_checks[i]))
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines), what


_DIAG = re.compile(
    r"^(?P<file>[^:\s][^:]*):(?P<line>\d+):(?:\d+:)? (?P<sev>fatal error|error|warning|note): (?P<msg>.*)$"
)
_INCLUDED = re.compile(r"^(?:In file included from|\s+from) (?P<file>[^:]+):(?P<line>\d+)[:,]$")


def _blame(stderr: str, source: str) -> dict[int, str]:
    """Map gcc's errors to the lines of ``source`` that caused them.

    An error inside a header is blamed on the ``#include`` line that pulled the header in, or, when a macro
    from a header failed to expand, on the line whose ``note: in expansion of macro`` points back at us.
    """
    blamed: dict[int, str] = {}
    include_line: int | None = None
    pending: str | None = None  # an error in a header that no include chain explained yet
    for raw in stderr.splitlines():
        inc = _INCLUDED.match(raw)
        if inc:
            if Path(inc["file"]).name == source:
                include_line = int(inc["line"])
            continue
        d = _DIAG.match(raw)
        if not d:
            if raw.startswith(f"{source}: In function"):
                include_line = None
            continue
        ours = Path(d["file"]).name == source
        line, sev, msg = int(d["line"]), d["sev"], d["msg"]
        if sev in ("error", "fatal error"):
            if ours:
                blamed.setdefault(line, msg)
                include_line = None
            elif include_line is not None:
                blamed.setdefault(include_line, f"{d['file']}:{line}: {msg}")
            else:
                pending = f"{d['file']}:{line}: {msg}"
        elif sev == "note" and ours and pending is not None:
            blamed.setdefault(line, pending)
            pending = None
    return blamed


def probe(cat: Mapping[str, Any], build: Path, cflags: list[str], gcc: str = "gcc") -> Probe:
    """Compile and run every check of ``cat`` in the directory ``build``; see the module docstring."""
    all_checks = checks(cat)
    shim = build / "shim"
    (shim / "xen" / "interface").mkdir(parents=True, exist_ok=True)
    (shim / "xen" / "interface" / "xen.h").write_text(SHIM_XEN_H)
    result = Probe(build / "probe.c", all_checks)
    todo = list(range(len(all_checks)))
    headers = includes(cat)
    exe = build / "probe"
    # Each round either compiles or drops at least one check or header, so this ends.
    while True:
        text, what = program(cat, all_checks, todo, headers)
        result.source.write_text(text)
        cmd = [gcc, "-std=gnu11", "-fdiagnostics-color=never", "-fno-diagnostics-show-caret", *cflags]
        cmd += ["-I", str(shim), "-o", str(exe), str(result.source)]
        cc = subprocess.run(cmd, capture_output=True, text=True)
        if cc.returncode == 0:
            break
        blamed = _blame(cc.stderr, result.source.name)
        culprits = {line: what.get(line) for line in blamed}
        if not blamed or None in culprits.values():
            raise RuntimeError(f"gcc failed outside any check:\n$ {' '.join(cmd)}\n{cc.stderr}")
        for line, item in culprits.items():
            if isinstance(item, str):  # a header that is missing or broken: every check needing it fails
                headers.remove(item)
                for i in [i for i in todo if c_header(all_checks[i].header) == item]:
                    result.errors[all_checks[i].key] = f"#include <{item}>: {blamed[line]}"
                    todo.remove(i)
            elif item is not None:
                result.errors[all_checks[item].key] = blamed[line]
                todo.remove(item)
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    for out in run.stdout.splitlines():
        index, *nums = out.split()
        chk = all_checks[int(index)]
        result.values[chk.key] = dict(zip(chk.expr, map(int, nums), strict=True))
    silent = [all_checks[i].key for i in todo if all_checks[i].key not in result.values]
    if silent:
        raise RuntimeError(f"the probe printed nothing for {silent[:5]}; its output ends:\n{run.stdout[-2000:]}")
    return result


def _fmt(field: str, v: int) -> str:
    return f"{v} ({v:#x})" if field == "value" and v >= 0 else str(v)
