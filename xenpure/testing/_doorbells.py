"""A xenstore ring's doorbell without Xen: one end of a socketpair.

Rule 1: a byte on the socket is a notification; nothing else travels on it. For rings whose two ends (or
whose server) run in one process with no event channel underneath: unit tests of ring code, and the
conformance suite's hostile-ring cases. ``SimPortDoorbell`` is the simulated event channel's equivalent,
and ``xenpure.xenstore.EvtchnDoorbell`` the real one.

    a, b = socket.socketpair()
    front = RingDevice(XenstoreRing(page), SocketDoorbell(a))
    back = RingDevice(XenstoreRing(page, back=True), SocketDoorbell(b))
"""

from __future__ import annotations

import contextlib
import socket

__all__ = ["SocketDoorbell"]


class SocketDoorbell:
    """``Doorbell`` over one end of a socketpair (made non-blocking): ``notify`` sends a byte to the peer
    (dropped if the peer's buffer is full: it has notifications pending anyway), ``ack`` drains ours, and
    ``fileno`` is readable while a notification is pending."""

    def __init__(self, mine: socket.socket) -> None:
        self.sock = mine
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def notify(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self.sock.send(b"!")

    def ack(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.sock.recv(4096):
                pass
