"""The exception tree: one root, errno-named subclasses, and OSError compatibility."""

import errno

import pytest

from xenpure import errors as E


@pytest.mark.parametrize(
    ("err", "cls", "builtin"),
    [
        (errno.ESRCH, E.NoSuchDomain, ProcessLookupError),
        (errno.EACCES, E.AccessDenied, PermissionError),
        (errno.EPERM, E.OperationNotPermitted, PermissionError),
        (errno.EEXIST, E.AlreadyExists, FileExistsError),
        (errno.EAGAIN, E.TryAgain, BlockingIOError),
        (errno.EINVAL, E.InvalidArgument, OSError),
        (errno.ENOTTY, E.NotSupported, OSError),
    ],
)
def test_from_errno_picks_the_named_class(err: int, cls: type, builtin: type) -> None:
    exc = E.HypercallError.from_errno(err, "domctl", "getdomaininfo")
    assert type(exc) is cls
    assert isinstance(exc, E.XenError) and isinstance(exc, builtin) and isinstance(exc, OSError)
    assert exc.errno == err and exc.op == "domctl" and exc.subop == "getdomaininfo"
    assert str(exc).startswith(f"domctl/getdomaininfo failed: {errno.errorcode[err]}")


def test_unknown_errno_stays_a_plain_hypercall_error() -> None:
    exc = E.HypercallError.from_errno(errno.EXDEV, "memory_op")
    assert type(exc) is E.HypercallError and exc.errno == errno.EXDEV


def test_device_unavailable_names_every_path_and_the_way_out() -> None:
    exc = E.DeviceUnavailable("privcmd", ["/dev/xen/privcmd", "/proc/xen/privcmd"])
    assert isinstance(exc, FileNotFoundError) and exc.errno == errno.ENOENT
    assert "/dev/xen/privcmd, /proc/xen/privcmd" in str(exc) and "sim://" in str(exc)


def test_unsupported_interface_lists_known_versions() -> None:
    exc = E.UnsupportedInterface("domctl", [0x15, 0x17])
    assert "0x15, 0x17" in str(exc)
