"""A guest's console: read what the guest printed, from wherever it can be had without stealing it.

Rule 1: prefer the copy nobody else consumes. In order:

1. ``log``: xenconsoled's log of the guest (``/var/log/xen/console/guest-<name>.log``, written when
   xenconsoled runs with ``--log=guest``): the whole history, shared with anyone.
2. ``pty``: the pseudo-terminal xenconsoled publishes at ``console/tty`` in xenstore (what ``xl console``
   attaches to): output from now on.
3. ``ring``: with no xenconsoled attached, we are the console backend: the guest's console page (xenstore
   ``console/ring-ref``, a machine frame for a PV guest) is mapped through privcmd and its ``out`` ring is
   consumed. Every index on that page is guest-written and checked before use. As a backend we also hold
   the guest's console event channel (xenstore ``console/port``, bound interdomain through
   /dev/xen/evtchn): the guest signals it after writing, which wakes ``read``, and we signal it after
   consuming, so a guest whose ring was full (its hvc driver waits for room) writes the rest. The port is
   unbound again on ``close``, free for the next backend; a port some other backend holds is refused.
"""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgument, ProtocolError, XenError
from ..hypercall.abi.io_console import XENCONS_INTERFACE

if TYPE_CHECKING:
    from ._domain import Domain

__all__ = ["CONSOLE_LOG_DIR", "GuestConsole"]

CONSOLE_LOG_DIR = Path("/var/log/xen/console")

_CONS = XENCONS_INTERFACE.layout()
_OUT = _CONS.offsetof("out")
_OUT_SIZE = _CONS.offsetof("in_cons") - _OUT  # sizeof(out): the ring is the array between them
_OUT_CONS = _CONS.offsetof("out_cons")
_OUT_PROD = _CONS.offsetof("out_prod")
#: The longest a ring ``read`` sleeps between looks at the ring when the guest's event does not come.
_RING_POLL = 0.05


class GuestConsole:
    """Reads a guest's console output. ``source`` says which of the three ways is in use.

    ``read(timeout)`` returns the text that arrived since the last read (waiting up to ``timeout`` seconds
    for some); ``follow()`` yields it as it comes. Close it (or use ``with``).
    """

    def __init__(self, domain: Domain, *, log_dir: Path = CONSOLE_LOG_DIR) -> None:
        self.domain = domain
        self._fd = -1
        self._pos = 0
        self._map: Any = None
        self._fm: Any = None
        self._evt: Any = None
        self._chan: Any = None
        self._hung_up = False  # the pty's other end is gone: nothing to select on any more
        name = domain.name
        log_file = log_dir / f"guest-{name}.log" if name else None
        tty = domain._read(f"{domain.path}/console/tty")
        if log_file is not None and log_file.exists():
            self.source = "log"
            self._fd = os.open(log_file, os.O_RDONLY | os.O_CLOEXEC)
        elif tty:
            self.source = "pty"
            self._fd = os.open(tty, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        else:
            self.source = "ring"
            self._open_ring()

    def _open_ring(self) -> None:
        from ..evtchn import EventChannels
        from ..foreignmemory import ForeignMemory

        domid, home = self.domain.id, self.domain.path
        ref = self.domain._read(f"{home}/console/ring-ref")
        if ref is None or not ref.strip().isdigit():
            raise XenError(f"domain {domid} has no console ring-ref in xenstore (got {ref!r})")
        port = self.domain._read(f"{home}/console/port")
        if port is None or not port.strip().isdigit():
            raise XenError(f"domain {domid} has no console port in xenstore (got {port!r})")
        kernel = self.domain.host.kernel
        try:
            self._fm = ForeignMemory.open(kernel)
            self._map = self._fm.map(domid, [int(ref)], readonly=False)
            self._evt = EventChannels.open(kernel)
            try:
                self._chan = self._evt.bind_interdomain(domid, int(port))
            except InvalidArgument as e:
                raise XenError(
                    f"domain {domid}'s console port {int(port)} is not free for dom0: another console backend"
                    f" (xenconsoled?) holds it ({e})"
                ) from e
        except BaseException:
            self.close()
            raise

    # -- reading ----------------------------------------------------------------------------------------
    def _take(self) -> bytes:
        if self.source == "ring":
            return self._take_ring()
        try:
            return os.read(self._fd, 65536)
        except BlockingIOError:
            return b""
        except OSError as e:
            if e.errno == errno.EIO:  # the pty's other end is gone (the domain died)
                self._hung_up = True
                return b""
            raise

    def _take_ring(self) -> bytes:
        page = self._map.view
        cons = int.from_bytes(page[_OUT_CONS : _OUT_CONS + 4], "little")
        prod = int.from_bytes(page[_OUT_PROD : _OUT_PROD + 4], "little")
        n = (prod - cons) & 0xFFFFFFFF
        if n > _OUT_SIZE:
            raise ProtocolError(
                f"domain {self.domain.id}'s console ring claims {n} unread bytes in a {_OUT_SIZE}-byte ring"
            )
        out = bytearray()
        for i in range(n):
            out.append(page[_OUT + (cons + i) % _OUT_SIZE])
        page[_OUT_CONS : _OUT_CONS + 4] = prod.to_bytes(4, "little")
        if n:
            self._chan.notify()  # there is room again: a guest waiting on a full ring writes the rest
        return bytes(out)

    def _wait_ring(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the guest's event (it signals after writing), then re-arm the port."""
        if self._evt.wait(seconds):
            self._chan.unmask()

    def read(self, timeout: float = 0.0) -> str:
        """What arrived since the last read; waits up to ``timeout`` seconds for at least one byte."""
        deadline = time.monotonic() + timeout
        while True:
            data = self._take()
            if data or time.monotonic() >= deadline:
                return data.decode("utf-8", "replace")
            left = max(0.0, deadline - time.monotonic())
            if self.source == "pty" and not self._hung_up:
                select.select([self._fd], [], [], left)
            elif self.source == "ring":
                self._wait_ring(min(_RING_POLL, left))
            else:
                time.sleep(min(0.05, left))

    def follow(self, *, timeout: float | None = None, poll: float = 0.2) -> Iterator[str]:
        """Yield console text as it arrives, until ``timeout`` seconds pass (None: until the domain is gone)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            text = self.read(poll)
            if text:
                yield text
            elif deadline is None and not self.domain.exists():
                return

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._evt is not None:
            self._evt.close()  # unbinds the console port: the guest's end is unbound again, for the next backend
            self._evt = self._chan = None
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fm is not None:
            self._fm.close()
            self._fm = None

    def __enter__(self) -> GuestConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
