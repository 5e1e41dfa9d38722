"""Declarations from Linux's xen/xenbus_dev.h: the ioctls of /dev/xen/xenbus_backend.

Rule 1: /dev/xen/xenbus_backend is how a xenstored running in dom0 reaches dom0's own xenstore ring: an
``mmap`` of one page at offset 0 is the ring page dom0's kernel allocated, and
``IOCTL_XENBUS_BACKEND_EVTCHN`` returns, as the ioctl's result, the unbound event channel port the kernel
allocated for xenstored to bind (remote domain 0). Neither ioctl takes an argument. Linux keeps this header
outside its uapi tree; Xen ships a copy (tools/include/xen-sys/Linux), installed by libxen-dev as
``<xen/sys/xenbus_dev.h>``, which is what the conformance tier compiles against.
"""

from __future__ import annotations

from ._ioctl import ioctl

__all__ = ["IOCTL_XENBUS_BACKEND_EVTCHN", "IOCTL_XENBUS_BACKEND_SETUP"]

_H = "linux:xen/sys/xenbus_dev.h"

#: Returns dom0's xenstore event channel port (unbound, for domain 0 to bind).
IOCTL_XENBUS_BACKEND_EVTCHN = ioctl("IOCTL_XENBUS_BACKEND_EVTCHN", "B", 0, None, _H)
#: For a xenstore stub domain's setup; xenpure never issues it (its xenstored runs in dom0), it is declared
#: so the catalogue lists the whole header.
IOCTL_XENBUS_BACKEND_SETUP = ioctl("IOCTL_XENBUS_BACKEND_SETUP", "B", 1, None, _H)
