"""The xenstore wire codec: every message whole, byte by byte and with trailing data; malformed input raises
ProtocolError; requests over a protocol limit are refused before a byte is sent."""

from __future__ import annotations

import errno
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenpure import errors as E
from xenpure.xenstore import _wire as W
from xenpure.xenstore._wire import Perm, PermAccess, XsType

# One request of every type a client may send, with a reply value for each.
REQUESTS: list[tuple[W.Request[Any], Any]] = [
    (W.Control("check"), b"OK"),
    (W.Control("live-update", (b"-d", b"4", b"\x01\x02")), b"OK"),
    (W.Directory("/local/domain"), ("0", "1", "17")),
    (W.Directory("/empty"), ()),
    (W.Read("/local/domain/0/name"), b"Domain-0"),
    (W.Read("/bin"), b"\x00\xff\x00binary"),
    (W.Read("/empty"), b""),
    (W.GetPerms("/local"), (Perm(0, PermAccess.NONE), Perm(3, PermAccess.READ))),
    (W.Watch("/local/domain", "tok"), None),
    (W.Watch("@releaseDomain", "rel", depth=1), None),
    (W.Unwatch("/local/domain", "tok"), None),
    (W.TransactionStart(), 7),
    (W.TransactionEnd(True), None),
    (W.TransactionEnd(False), None),
    (W.Introduce(5, 0xFEFFF, 3), None),
    (W.Introduce(5, -1, 3), None),
    (W.Release(5), None),
    (W.GetDomainPath(5), "/local/domain/5"),
    (W.Write("/a/b", b"value"), None),
    (W.Write("/a/b", b""), None),
    (W.Write("/a/b", b"with\0nul"), None),
    (W.Mkdir("/a/b"), None),
    (W.Rm("/a/b"), None),
    (W.SetPerms("/a", (Perm(1, PermAccess.NONE), Perm(0, PermAccess.BOTH), Perm(2, PermAccess.WRITE))), None),
    (W.IsDomainIntroduced(5), True),
    (W.IsDomainIntroduced(6), False),
    (W.Resume(5), None),
    (W.SetTarget(5, 6), None),
    (W.ResetWatches(), None),
    (W.DirectoryPart("/local/domain", 0), W.DirectoryChunk(42, ("0", "1"), False, 4)),
    (W.DirectoryPart("/local/domain", 4), W.DirectoryChunk(42, ("2",), True, 2)),
    (W.GetFeature(), 4),
    (W.GetFeature(3), 1),
    (W.SetFeature(3, 5), None),
    (W.GetQuota("nodes"), 1000),
    (W.GetQuota("nodes", 3), 0),
    (W.ListQuotas(), ("nodes", "watches")),
    (W.SetQuota("nodes", 10), None),
    (W.SetQuota("nodes", 10, 3), None),
    (W.Read("relative/path"), b"v"),
]
IDS = [f"{r.TYPE.name}-{i}" for i, (r, _) in enumerate(REQUESTS)]


def _feed_whole(data: bytes) -> list[W.Message]:
    f = W.Framer()
    f.receive_data(data)
    out = []
    while (m := f.next_message()) is not None:
        out.append(m)
    return out


def _feed_bytewise(data: bytes) -> list[W.Message]:
    f = W.Framer()
    out = []
    for i in range(len(data)):
        f.receive_data(data[i : i + 1])
        while (m := f.next_message()) is not None:
            out.append(m)
    return out


def test_header_layout_is_four_little_endian_uint32() -> None:
    data = W.Read("/a").encode(req_id=7, tx_id=3)
    assert data == struct.pack("<IIII", 2, 7, 3, 3) + b"/a\0"
    assert W.HEADER_SIZE == 16


def test_type_numbers_match_xs_wire_h() -> None:
    # Spelled out from xen/include/public/io/xs_wire.h (4.21): a renumbering here must be deliberate.
    expect = {
        "CONTROL": 0, "DIRECTORY": 1, "READ": 2, "GET_PERMS": 3, "WATCH": 4, "UNWATCH": 5,
        "TRANSACTION_START": 6, "TRANSACTION_END": 7, "INTRODUCE": 8, "RELEASE": 9, "GET_DOMAIN_PATH": 10,
        "WRITE": 11, "MKDIR": 12, "RM": 13, "SET_PERMS": 14, "WATCH_EVENT": 15, "ERROR": 16,
        "IS_DOMAIN_INTRODUCED": 17, "RESUME": 18, "SET_TARGET": 19, "RESET_WATCHES": 21,
        "DIRECTORY_PART": 22, "GET_FEATURE": 23, "SET_FEATURE": 24, "GET_QUOTA": 25, "SET_QUOTA": 26,
        "INVALID": 0xFFFF,
    }  # fmt: skip
    assert {t.name: int(t) for t in XsType} == expect
    assert 20 not in {int(t) for t in XsType}  # RESTRICT was removed
    assert W.XSD_ERRORS[0] == "EINVAL" and W.XSD_ERRORS[-1] == "EPERM" and len(W.XSD_ERRORS) == 16


_C_PROBE = r"""
#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stddef.h>
#include <xen/io/xs_wire.h>
int main(void) {
    printf("size %zu\n", sizeof(struct xsd_sockmsg));
    printf("off %zu %zu %zu %zu\n", offsetof(struct xsd_sockmsg, type), offsetof(struct xsd_sockmsg, req_id),
           offsetof(struct xsd_sockmsg, tx_id), offsetof(struct xsd_sockmsg, len));
    printf("limits %d %d %d\n", XENSTORE_PAYLOAD_MAX, XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX);
    printf("types");
    int t[] = {XS_CONTROL, XS_DIRECTORY, XS_READ, XS_GET_PERMS, XS_WATCH, XS_UNWATCH, XS_TRANSACTION_START,
               XS_TRANSACTION_END, XS_INTRODUCE, XS_RELEASE, XS_GET_DOMAIN_PATH, XS_WRITE, XS_MKDIR, XS_RM,
               XS_SET_PERMS, XS_WATCH_EVENT, XS_ERROR, XS_IS_DOMAIN_INTRODUCED, XS_RESUME, XS_SET_TARGET,
               XS_RESET_WATCHES, XS_DIRECTORY_PART};
    for (unsigned i = 0; i < sizeof(t) / sizeof(t[0]); i++) printf(" %d", t[i]);
    printf("\nerrors");
    for (unsigned i = 0; i < sizeof(xsd_errors) / sizeof(xsd_errors[0]); i++)
        printf(" %s=%d", xsd_errors[i].errstring, xsd_errors[i].errnum);
    printf("\n");
    return 0;
}
"""


@pytest.mark.skipif(
    shutil.which("cc") is None or not Path("/usr/include/xen/io/xs_wire.h").exists(),
    reason="needs a C compiler and Xen's public headers",
)
def test_against_the_c_header(tmp_path: Path) -> None:
    src = tmp_path / "probe.c"
    src.write_text(_C_PROBE)
    exe = tmp_path / "probe"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True, capture_output=True)
    lines = dict(line.split(" ", 1) for line in subprocess.run([str(exe)], check=True, capture_output=True,
                                                               text=True).stdout.splitlines())  # fmt: skip
    assert int(lines["size"]) == W.HEADER_SIZE
    assert lines["off"].split() == ["0", "4", "8", "12"]
    assert [int(x) for x in lines["limits"].split()] == [
        W.XENSTORE_PAYLOAD_MAX,
        W.XENSTORE_ABS_PATH_MAX,
        W.XENSTORE_REL_PATH_MAX,
    ]
    names = [
        "CONTROL", "DIRECTORY", "READ", "GET_PERMS", "WATCH", "UNWATCH", "TRANSACTION_START", "TRANSACTION_END",
        "INTRODUCE", "RELEASE", "GET_DOMAIN_PATH", "WRITE", "MKDIR", "RM", "SET_PERMS", "WATCH_EVENT", "ERROR",
        "IS_DOMAIN_INTRODUCED", "RESUME", "SET_TARGET", "RESET_WATCHES", "DIRECTORY_PART",
    ]  # fmt: skip
    assert [int(x) for x in lines["types"].split()] == [XsType[n] for n in names]
    pairs = [p.split("=") for p in lines["errors"].split()]
    assert tuple(n for n, _ in pairs) == W.XSD_ERRORS
    assert all(int(v) == getattr(errno, n) for n, v in pairs)


@pytest.mark.parametrize(("request_", "value"), REQUESTS, ids=IDS)
def test_request_round_trips_whole_bytewise_and_with_trailing_data(request_: W.Request[Any], value: Any) -> None:
    data = request_.encode(req_id=9, tx_id=4)
    other = W.Read("/next").encode(req_id=10)
    for msgs in (_feed_whole(data), _feed_bytewise(data)):
        assert len(msgs) == 1
        m = msgs[0]
        assert (m.type, m.req_id, m.tx_id) == (request_.TYPE, 9, 4)
        assert W.decode_request(m) == request_
    # Trailing data: a following message, and then the start of another.
    msgs = _feed_whole(data + other + other[:7])
    assert [m.req_id for m in msgs] == [9, 10]
    assert W.decode_request(msgs[1]) == W.Read("/next")


@pytest.mark.parametrize(("request_", "value"), REQUESTS, ids=IDS)
def test_reply_round_trips(request_: W.Request[Any], value: Any) -> None:
    payload = request_.reply_payload(value)
    assert len(payload) <= W.XENSTORE_PAYLOAD_MAX
    assert request_.parse_reply(payload) == value
    reply = W.Message(request_.TYPE, 9, 0, payload).encode()
    for msgs in (_feed_whole(reply), _feed_bytewise(reply), _feed_whole(reply + reply)[:1]):
        assert request_.parse_reply(msgs[0].payload) == value


def test_ok_replies_and_single_strings_accept_a_missing_final_nul() -> None:
    W.Write("/a", b"").parse_reply(b"OK")
    assert W.TransactionStart().parse_reply(b"12") == 12
    assert W.GetDomainPath(1).parse_reply(b"/local/domain/1") == "/local/domain/1"
    assert W.Directory("/a").parse_reply(b"\0") == ()  # an empty list may come as a lone NUL


def test_watch_event_and_error_messages() -> None:
    data = W.encode_watch_event("/a/b", "tok")
    (m,) = _feed_whole(data)
    assert (m.type, m.req_id, m.tx_id) == (XsType.WATCH_EVENT, 0, 0)
    assert W.parse_watch_event(m.payload) == ("/a/b", "tok")
    for name in W.XSD_ERRORS:
        (m,) = _feed_bytewise(W.encode_error(5, 1, name))
        assert (m.type, m.req_id, m.tx_id) == (XsType.ERROR, 5, 1)
        assert W.parse_error(m.payload) == name


def test_perm_strings() -> None:
    assert [str(Perm.parse(s)) for s in ("n0", "r1", "w2", "b3", "b65535")] == ["n0", "r1", "w2", "b3", "b65535"]
    assert Perm.parse(b"r12") == Perm(12, PermAccess.READ)
    assert PermAccess.BOTH.can_read and PermAccess.BOTH.can_write and not PermAccess.NONE.can_read
    for bad in ("", "r", "x1", "r-1", "r65536", "r1x", "1r", "r 1"):
        with pytest.raises(E.ProtocolError):
            Perm.parse(bad)


# -- malformed input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("<IIII", 2, 1, 0, 4097) + b"x" * 4097,  # over XENSTORE_PAYLOAD_MAX
        struct.pack("<IIII", 2, 1, 0, 0xFFFFFFFF),  # absurd length: refused from the header alone
        struct.pack("<IIII", 20, 1, 0, 0),  # RESTRICT, removed
        struct.pack("<IIII", 27, 1, 0, 0),  # past XS_TYPE_COUNT
        struct.pack("<IIII", 0xFFFF, 1, 0, 0),  # XS_INVALID
    ],
    ids=["len-4097", "len-huge", "type-20", "type-27", "type-invalid"],
)
def test_bad_headers_raise_protocol_error_and_stay_broken(data: bytes) -> None:
    f = W.Framer()
    f.receive_data(data)
    with pytest.raises(E.ProtocolError):
        f.next_message()
    with pytest.raises(E.ProtocolError):  # a byte stream cannot be resynchronised
        f.next_message()
    with pytest.raises(E.ProtocolError):
        f.receive_data(W.Read("/a").encode(1))


def test_unknown_types_pass_as_invalid_for_a_server() -> None:
    f = W.Framer(unknown_types=True)
    f.receive_data(struct.pack("<IIII", 20, 1, 2, 1) + b"\0")
    m = f.next_message()
    assert m is not None and m.type is XsType.INVALID and (m.req_id, m.tx_id) == (1, 2)
    f.receive_data(struct.pack("<IIII", 2, 1, 0, 4097))
    with pytest.raises(E.ProtocolError):  # the length limit still holds
        f.next_message()


def test_truncated_stream_raises_at_end_not_hangs() -> None:
    whole = W.Read("/a").encode(1)
    for cut in range(1, len(whole)):
        f = W.Framer()
        f.receive_data(whole[:cut])
        assert f.next_message() is None  # needs more bytes: not an error yet
        f.receive_data(b"")  # ... but the stream ended
        with pytest.raises(E.ProtocolError):
            f.next_message()
    f = W.Framer()
    f.receive_data(whole)
    f.receive_data(b"")
    assert f.next_message() is not None and f.next_message() is None and f.closed
    with pytest.raises(E.ProtocolError):
        W.Header.unpack(whole[:15])


@pytest.mark.parametrize(
    ("request_", "payload"),
    [
        (W.GetPerms("/a"), b"r0"),  # missing NUL
        (W.GetPerms("/a"), b""),  # no owner
        (W.GetPerms("/a"), b"q0\0"),
        (W.Directory("/a"), b"a\0b"),  # last name without NUL
        (W.Directory("/a"), b"\xff\0"),  # not UTF-8
        (W.TransactionStart(), b"abc\0"),
        (W.TransactionStart(), b"0\0"),  # 0 is "no transaction"
        (W.TransactionStart(), b"4294967296\0"),
        (W.TransactionStart(), b"1\x002\x00"),
        (W.IsDomainIntroduced(1), b"Y\0"),
        (W.Write("/a", b""), b"KO\0"),
        (W.DirectoryPart("/a"), b"12"),  # no NUL after the generation
        (W.DirectoryPart("/a"), b"x\0a\0"),
        (W.GetFeature(), b"-1\0"),
        (W.GetQuota("nodes"), b"\0"),
    ],
)
def test_malformed_reply_payloads_raise_protocol_error(request_: W.Request[Any], payload: bytes) -> None:
    with pytest.raises(E.ProtocolError):
        request_.parse_reply(payload)


@pytest.mark.parametrize("payload", [b"", b"E", b"ENOENT\0junk\0", b"enoent\0", b"E NO\0", b"\xff\0"])
def test_malformed_error_replies(payload: bytes) -> None:
    with pytest.raises(E.ProtocolError):
        W.parse_error(payload)


@pytest.mark.parametrize("payload", [b"", b"/a\0", b"/a\0tok", b"/a"])
def test_malformed_watch_events(payload: bytes) -> None:
    with pytest.raises(E.ProtocolError):
        W.parse_watch_event(payload)


@pytest.mark.parametrize(
    ("t", "payload"),
    [
        (XsType.READ, b"/a"),  # no NUL
        (XsType.READ, b"/a\0/b\0"),
        (XsType.WRITE, b"/a"),
        (XsType.SET_PERMS, b"/a\0"),
        (XsType.SET_PERMS, b"/a\0z9\0"),
        (XsType.WATCH, b"/a\0"),
        (XsType.WATCH, b"/a\0t\0deep\0"),
        (XsType.TRANSACTION_END, b"X\0"),
        (XsType.INTRODUCE, b"1\x002\x00"),
        (XsType.RELEASE, b"dom\0"),
        (XsType.RELEASE, b"65536\0"),
        (XsType.CONTROL, b""),
        (XsType.TRANSACTION_START, b"x\0"),
        (XsType.SET_QUOTA, b"a\0"),
    ],
)
def test_malformed_requests_raise_protocol_error(t: XsType, payload: bytes) -> None:
    with pytest.raises(E.ProtocolError):
        W.decode_request(W.Message(t, 1, 0, payload))


# -- limits are refused locally ------------------------------------------------------------------------


def test_path_limits() -> None:
    W.Read("/" + "a" * (W.XENSTORE_ABS_PATH_MAX - 1)).encode(1)  # exactly 3072: fine
    with pytest.raises(E.XenstoreInvalid, match="XENSTORE_ABS_PATH_MAX"):
        W.Read("/" + "a" * W.XENSTORE_ABS_PATH_MAX).encode(1)
    W.Read("a" * W.XENSTORE_REL_PATH_MAX).encode(1)
    with pytest.raises(E.XenstoreInvalid, match="XENSTORE_REL_PATH_MAX"):
        W.Read("a" * (W.XENSTORE_REL_PATH_MAX + 1)).encode(1)
    W.Watch("@" + "a" * (W.XENSTORE_ABS_PATH_MAX - 1), "t").encode(1)
    for bad in ("", "/a\0b"):
        with pytest.raises(E.XenstoreInvalid, match="not sent"):
            W.Read(bad).encode(1)
    with pytest.raises(E.XenstoreInvalid):
        W.Watch("/a", "to\0ken").encode(1)
    with pytest.raises(E.XenstoreInvalid):
        W.Release(65536).encode(1)
    with pytest.raises(E.XenstoreInvalid):
        W.SetPerms("/a", ()).encode(1)


def test_payload_limit() -> None:
    path = "/a"
    room = W.XENSTORE_PAYLOAD_MAX - len(path) - 1
    data = W.Write(path, b"v" * room).encode(1)
    assert len(data) == W.HEADER_SIZE + W.XENSTORE_PAYLOAD_MAX
    with pytest.raises(E.TooBig, match="XENSTORE_PAYLOAD_MAX") as info:
        W.Write(path, b"v" * (room + 1)).encode(1)
    assert info.value.errno == errno.E2BIG and info.value.path == path and "not sent" in str(info.value)


# -- fuzz ----------------------------------------------------------------------------------------------


@given(st.binary(max_size=256), st.integers(min_value=1, max_value=64))
def test_framer_on_garbage_only_ever_raises_protocol_error(data: bytes, chunk: int) -> None:
    f = W.Framer()
    try:
        for i in range(0, len(data), chunk):
            f.receive_data(data[i : i + chunk])
            while (m := f.next_message()) is not None:
                assert len(m.payload) <= W.XENSTORE_PAYLOAD_MAX
        f.receive_data(b"")
        while f.next_message() is not None:
            pass
    except E.ProtocolError:
        pass


@given(st.sampled_from(REQUESTS), st.binary(max_size=64))
def test_reply_parsers_on_garbage_only_ever_raise_protocol_error(req: Any, payload: bytes) -> None:
    try:
        req[0].parse_reply(payload)
    except E.ProtocolError:
        pass


@given(st.sampled_from(sorted(W.REQUEST_TYPES)), st.binary(max_size=64))
def test_request_decoders_on_garbage_only_ever_raise_protocol_error(t: XsType, payload: bytes) -> None:
    try:
        W.decode_request(W.Message(t, 1, 0, payload))
    except E.ProtocolError:
        pass
