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
