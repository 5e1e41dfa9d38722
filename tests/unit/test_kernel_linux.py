"""The Linux kernel seam: device lookup order, typed errors, and hypercall buffers on this machine."""

import errno
import os

import pytest
from pyfakefs.fake_filesystem_unittest import Patcher

import xenpure
from xenpure.errors import DeviceUnavailable, NotPrivileged
from xenpure.kernel import LinuxKernel


@pytest.fixture
def fakefs():  # type: ignore[no-untyped-def]
    with Patcher() as p:
        yield p.fs


def test_dev_xen_is_preferred(fakefs) -> None:  # type: ignore[no-untyped-def]
    fakefs.create_file("/dev/xen/privcmd")
    fakefs.create_file("/proc/xen/privcmd")
    with LinuxKernel().open("privcmd") as dev:
        assert dev.path == "/dev/xen/privcmd"


def test_falls_back_to_proc_xen(fakefs) -> None:  # type: ignore[no-untyped-def]
    fakefs.create_file("/proc/xen/privcmd")
    dev = LinuxKernel().open("privcmd")
    fd = dev.fileno()
    assert dev.path == "/proc/xen/privcmd"
    dev.close()
    dev.close()  # idempotent
    with pytest.raises(OSError) as ei:
        os.fstat(fd)
    assert ei.value.errno == errno.EBADF


def test_missing_everywhere_names_the_paths_tried(fakefs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DeviceUnavailable) as ei:
        LinuxKernel().open("evtchn")
    assert ei.value.tried == ("/dev/xen/evtchn", "/proc/xen/evtchn")


def test_unreadable_device_is_not_privileged(fakefs) -> None:  # type: ignore[no-untyped-def]
    fakefs.create_file("/dev/xen/privcmd", st_mode=0o100600)
    os.chown("/dev/xen/privcmd", 0, 0)
    from pyfakefs.helpers import set_uid

    set_uid(1000)
    try:
        with pytest.raises(NotPrivileged, match="/dev/xen/privcmd"):
            LinuxKernel().open("privcmd")
    finally:
        set_uid(0)


def test_connect_without_xen_raises_device_unavailable() -> None:
    if any(os.path.exists(f"{d}/privcmd") for d in ("/dev/xen", "/proc/xen")):
        pytest.skip("this machine has Xen devices; the lab tier covers it")
    with pytest.raises(DeviceUnavailable) as ei:
        xenpure.connect()
    assert ei.value.tried == ("/dev/xen/privcmd", "/proc/xen/privcmd")


def test_anonymous_fallback_buffer_is_usable_and_released() -> None:
    k = LinuxKernel(dirs=("/nonexistent",))
    assert k.buffer_source == "locked anonymous memory"
    buf = k.alloc_buffer(100)
    assert len(buf.view) == 4096 and buf.address % 4096 == 0 and buf.source == "locked anonymous memory"
    buf.view[:5] = b"hello"
    maps = open("/proc/self/maps").read()
    assert f"{buf.address:x}-" in maps
    buf.close()
    buf.close()
    assert f"{buf.address:x}-" not in open("/proc/self/maps").read()
    with pytest.raises(ValueError):
        buf.view  # noqa: B018
    k.close()


def test_unix_socket_missing_is_device_unavailable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DeviceUnavailable, match="socket"):
        LinuxKernel().connect_socket(str(tmp_path / "nothing"))


@pytest.fixture
def listener(tmp_path):  # type: ignore[no-untyped-def]
    import socket

    path = str(tmp_path / "sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    yield path, srv
    srv.close()


def _rcvtimeo(fd: int) -> int:
    """SO_RCVTIMEO of ``fd`` in microseconds (0: no limit)."""
    import socket
    import struct

    s = socket.socket(fileno=os.dup(fd))
    try:
        sec, usec = struct.unpack("@ll", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
        return int(sec * 1_000_000 + usec)
    finally:
        s.close()


def _about(us: int, want: int) -> bool:
    """The kernel keeps SO_RCVTIMEO in clock ticks, rounded up (at HZ=100, up to 10 ms more)."""
    return want <= us <= want + 10_000


def test_socket_read_within_is_one_blocking_read_with_the_kernel_deadline(listener) -> None:  # type: ignore[no-untyped-def]
    """connect_socket's device reads with SO_RCVTIMEO: bytes when they are there, None when the deadline
    passes (early rather than late), b"" at the end of the stream, no limit with None. The option is set to
    95% of the timeout and left alone while the timeouts asked for stay within 100-111% of it, as a
    caller's shrinking remainder does."""
    from xenpure.kernel import TimedReader, timed_reader

    path, srv = listener
    dev = LinuxKernel().connect_socket(path)
    peer, _ = srv.accept()
    try:
        assert isinstance(dev, TimedReader)
        assert timed_reader(dev) == dev.read_within
        assert dev.read_within(100, 0.02) is None  # nothing sent: the kernel's deadline expires
        assert _about(_rcvtimeo(dev.fileno()), 19_000)
        assert dev.read_within(100, 0) is None  # 0: look, do not wait (SO_RCVTIMEO 0 would mean forever)
        peer.sendall(b"abc")
        assert dev.read_within(100, 10.0) == b"abc"
        assert _about(_rcvtimeo(dev.fileno()), 9_500_000)
        peer.sendall(b"d")
        assert dev.read_within(100, 9.6) == b"d"  # 9.5 s is within 90-100% of 9.6 s: not set again
        assert _about(_rcvtimeo(dev.fileno()), 9_500_000)
        peer.sendall(b"e")
        assert dev.read_within(100, 9.4) == b"e"  # 9.5 s would be later than asked: set to 95% of 9.4 s
        assert _about(_rcvtimeo(dev.fileno()), 8_930_000)
        peer.sendall(b"f")
        assert dev.read_within(100, 100.0) == b"f"  # far more time than 9.5 s: set again, to 95 s
        assert _about(_rcvtimeo(dev.fileno()), 95_000_000)
        peer.sendall(b"g")
        assert dev.read_within(100, None) == b"g"
        assert _rcvtimeo(dev.fileno()) == 0
        peer.close()
        assert dev.read_within(100, 1.0) == b""
    finally:
        dev.close()
        peer.close()
    with pytest.raises(ValueError, match="closed"):
        dev.fileno()


def test_socket_stays_blocking_under_a_default_socket_timeout(listener) -> None:  # type: ignore[no-untyped-def]
    """socket.setdefaulttimeout() would make new sockets non-blocking underneath: read_within would then
    take an immediate EAGAIN for its deadline. connect_socket makes its socket blocking again."""
    import socket

    path, srv = listener
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5.0)
    try:
        dev = LinuxKernel().connect_socket(path)
    finally:
        socket.setdefaulttimeout(old)
    peer, _ = srv.accept()
    try:
        assert os.get_blocking(dev.fileno())

        def later() -> None:
            import time

            time.sleep(0.05)
            peer.sendall(b"late")

        import threading

        t = threading.Thread(target=later)
        t.start()
        assert dev.read_within(100, 10.0) == b"late"
        t.join()
    finally:
        dev.close()
        peer.close()


def test_read_within_falls_back_to_select_for_other_devices() -> None:
    """A device without read_within (a pipe here, standing in for a character device): select, then read;
    None on timeout and when the read would block after a wake-up."""
    from xenpure.kernel import read_within

    class Pipe:
        path = "pipe"

        def __init__(self) -> None:
            self.r, self.w = os.pipe()
            self.spurious = False

        def fileno(self) -> int:
            return self.r

        def read(self, n: int) -> bytes:
            if self.spurious:
                raise BlockingIOError(errno.EAGAIN, "woken for nothing")
            return os.read(self.r, n)

    p = Pipe()
    try:
        assert read_within(p, 10, 0.01) is None  # type: ignore[arg-type]
        os.write(p.w, b"xy")
        assert read_within(p, 10, 1.0) == b"xy"  # type: ignore[arg-type]
        os.write(p.w, b"z")
        p.spurious = True
        assert read_within(p, 10, 1.0) is None  # type: ignore[arg-type]
    finally:
        os.close(p.r)
        os.close(p.w)
