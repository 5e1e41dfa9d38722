"""DomainConfig and the xl.cfg parser: syntax, the supported subset, and clear errors for the rest."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from xenpure.domain._config import Action, ConfigError, DomainConfig
from xenpure.domain._xlcfg import TokenKind, load, parse, parse_values, tokenize

GOOD = """\
# a tiny PV guest
type = "pv"
name = 'guest1'
memory = 256 ; maxmem = 0x200   # 512 MiB
vcpus = 2
kernel = "/var/lib/g/vmlinux"
ramdisk = "/var/lib/g/initrd.cpio.gz"
extra = "console=hvc0 quiet"
root = "/dev/xvda1"
uuid = "6f2a6e4e-4a0f-4a4e-9d9b-3f4f3b7c0a11"
on_poweroff = "destroy"
on_reboot = "restart"
on_crash = "preserve"
"""


def test_good_config() -> None:
    c = parse(GOOD, "g.cfg")
    assert c.name == "guest1"
    assert (c.memory, c.maxmem, c.vcpus) == (256, 512, 2)
    assert c.kernel == Path("/var/lib/g/vmlinux")
    assert c.ramdisk == Path("/var/lib/g/initrd.cpio.gz")
    assert c.cmdline == "root=/dev/xvda1 console=hvc0 quiet"
    assert c.uuid == uuid.UUID("6f2a6e4e-4a0f-4a4e-9d9b-3f4f3b7c0a11")
    assert (c.on_poweroff, c.on_reboot, c.on_crash) == (Action.DESTROY, Action.RESTART, Action.PRESERVE)
    assert c.maxmem_kib == 512 * 1024 and c.nr_pages == 256 * 256


def test_defaults_and_frozen() -> None:
    c = parse('name="a"\nkernel="k"')
    assert (c.memory, c.maxmem, c.vcpus, c.cmdline, c.ramdisk) == (128, None, 1, "", None)
    assert c.maxmem_kib == c.memory_kib
    with pytest.raises(AttributeError):
        c.name = "b"  # type: ignore[misc]


def test_cmdline_key() -> None:
    assert parse('name="a"; kernel="k"; cmdline="console=hvc0"').cmdline == "console=hvc0"
    with pytest.raises(ConfigError, match="cmdline replaces root and extra"):
        parse('name="a"; kernel="k"; cmdline="x"; extra="y"')


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("x = 10", 10),
        ("x = 010", 8),
        ("x = 0x1F", 31),
        ("x = 0", 0),
        ("x = -3", -3),
        (r'x = "a\"b\\c\n\x41\101"', 'a"b\\c\nAA'),
        ("x = 'single \"inner\"'", 'single "inner"'),
        ('x = [ "a", 1, [2, "b"], ]', ["a", 1, [2, "b"]]),
        ('x = [\n  "a",\n  "b"\n]', ["a", "b"]),
        ("x = []", []),
    ],
)
def test_values(text: str, value: object) -> None:
    assert parse_values(text)["x"][0] == value


def test_byte_by_byte_and_statement_separators() -> None:
    vals = parse_values('a=1;b="2"\n\n;c=[3]\r\n')
    assert {k: v for k, (v, _) in vals.items()} == {"a": 1, "b": "2", "c": [3]}
    assert [t.kind for t in tokenize("a=1")] == [TokenKind.NAME, TokenKind.EQUALS, TokenKind.NUMBER, TokenKind.EOF]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('name="a"\nkernel="k"\ndisk=["phy:/dev/x,xvda,w"]', r"<config>:3: disk is an xl.cfg key xenpure does not"),
        ('name="a"\nkernel="k"\nbogus=1', r"unknown key 'bogus'"),
        ('name="a"\nkernel="k"\ntype="hvm"', r'type="hvm": xenpure builds PV guests only'),
        ('kernel="k"', "name is mandatory"),
        ('name="a"', "kernel is mandatory"),
        ('name="a"\nkernel="k"\nmemory="128"', r"memory must be a number, got the string '128'"),
        ('name="a"\nkernel="k"\nname="b"', r"name is set twice \(first on line 1\)"),
        ('name="a"\nkernel="k"\nmemory=8', r"memory 8 MiB is too small"),
        ('name="a"\nkernel="k"\nmemory=128\nmaxmem=64', r"maxmem 64 .* >= memory"),
        ('name="a"\nkernel="k"\nvcpus=0', "vcpus must be a positive integer"),
        ('name="a"\nkernel="k"\non_crash="explode"', r"on_crash: unknown action 'explode'"),
        ('name="a"\nkernel="k"\non_reboot="soft-reset"',
         r"<config>:3: on_reboot='soft-reset' is an xl action xenpure does not support"),
        ('name="a"\nkernel="k"\non_crash="coredump-restart"', r"does not support \(it supports: destroy, restart"),
        ('name="a"\nkernel=k', "a string value needs quotes"),
        ('name="a\nkernel="k"', "newline inside a string"),
        ('name="a', "never closed"),
        ('name="a" kernel="k"', "expected the end of the name statement"),
        ('name="a"\nkernel="k"\nmemory=12z', "is not a number"),
        ('name="a"\nkernel="k"\nx += 1', r"appending is not supported"),
        ('name="a"\n@', "unexpected character '@'"),
        ('name="a"\nkernel="k"\nuuid="nope"', "is not a UUID"),
        ('name="12"\nkernel="k"', "not a valid domain name"),
        ('name="a/b"\nkernel="k"', "not a valid domain name"),
        ('name="a"\nkernel="k"\nvcpus=2\nmaxvcpus=4', "offline vcpus are not supported"),
        ('name="a"\nkernel="k"\nx=[1 2]', "expected ',' or ']'"),
        ('name="a"\nkernel="k"\nx=' + "[" * 20 + "]" * 20, "nested more than 16"),
        ('name="a"\nkernel="k"\nextra="' + "x" * 1024 + '"', "at most 1023"),
        (r'x="\q"', r"unknown escape \\q"),
    ],
)
def test_errors_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse(text)


def test_error_carries_key_and_line() -> None:
    with pytest.raises(ConfigError) as ei:
        parse('name="a"\nkernel="k"\n\nvif=[]', "my.cfg")
    assert (ei.value.key, ei.value.line, ei.value.source) == ("vif", 4, "my.cfg")
    assert str(ei.value).startswith("my.cfg:4: ")


def test_never_evaluates() -> None:
    with pytest.raises(ConfigError):
        parse('name="a"\nkernel="k"\nmemory=__import__("os").system("false")')


def test_load_file(tmp_path: Path) -> None:
    f = tmp_path / "g.cfg"
    f.write_text(GOOD)
    assert load(f).name == "guest1"
    f.write_bytes(b'name="\xff"')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(f)


def test_base_for_relative_paths(tmp_path: Path) -> None:
    c = parse('name="a"\nkernel="vmlinux"\nramdisk="/abs/initrd"', base=tmp_path)
    assert c.kernel == tmp_path / "vmlinux" and c.ramdisk == Path("/abs/initrd")


def test_direct_construction_coerces() -> None:
    c = DomainConfig(name="x", kernel="k", on_crash="preserve")  # type: ignore[arg-type]
    assert c.kernel == Path("k") and c.on_crash is Action.PRESERVE
