"""/dev/xen/evtchn: bind event channels in dom0's kernel and receive their events in this process.

Rule 1: one core. Fired ports come from one place (``_take``: a non-blocking read of the device, parsed and
queued); ``pending`` and ``wait`` wait for the descriptor with ``poll``, ``events`` with the running asyncio
loop's reader, and both then call that same core. The handle is itself selectable (``fileno``), so any
``selectors`` selector or event loop can wait on it too. Nothing is written twice for sync and async.

How the driver behaves underneath (Linux 6.1 on Xen 4.17, as observed in the lab): each bind ioctl issues
the matching EVTCHNOP_* hypercall and returns the local port; when a port fires the driver queues it for
``read`` and masks it, so it fires again only after userspace writes the port back (``unmask``); closing
the file unbinds every port it bound.
"""

from __future__ import annotations

import asyncio
import select
import threading
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType

from ..errors import ProtocolError, TryAgain
from ..hypercall._device import RecordCodec, device_ioctl, device_read, device_write, flat_codec
from ..hypercall._layout import check_domid, u32
from ..hypercall.abi._ioctl import Ioctl
from ..hypercall.abi.event_channel import Virq
from ..hypercall.abi.linux_evtchn import (
    BIND_INTERDOMAIN,
    BIND_UNBOUND_PORT,
    BIND_VIRQ,
    IOCTL_EVTCHN_BIND_INTERDOMAIN,
    IOCTL_EVTCHN_BIND_UNBOUND_PORT,
    IOCTL_EVTCHN_BIND_VIRQ,
    IOCTL_EVTCHN_NOTIFY,
    IOCTL_EVTCHN_RESET,
    IOCTL_EVTCHN_RESTRICT_DOMID,
    IOCTL_EVTCHN_UNBIND,
    NOTIFY,
    PORT_SIZE,
    RESTRICT_DOMID,
    UNBIND,
)
from ..kernel import Device, Kernel

__all__ = ["Channel", "EventChannels"]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

#: Ports read at most per read(2): the driver's queue is one page of them.
_READ_PORTS = 1024
#: What the device reads and writes: evtchn_port_t, one after the other.
_PORT = RecordCodec("<I", "write(/dev/xen/evtchn)", [("port", u32)])
assert _PORT.size == PORT_SIZE


class Channel:
    """One port this process bound through /dev/xen/evtchn. ``close()`` (or ``with``) unbinds it.

    ``kind`` is ``"unbound"``, ``"interdomain"`` or ``"virq"``; ``remote_domid``/``remote_port`` and
    ``virq`` say what it was bound to.
    """

    def __init__(
        self,
        handle: EventChannels,
        port: int,
        kind: str,
        *,
        remote_domid: int | None = None,
        remote_port: int | None = None,
        virq: int | None = None,
    ) -> None:
        self.handle = handle
        self.port = port
        self.kind = kind
        self.remote_domid = remote_domid
        self.remote_port = remote_port
        self.virq = virq
        self.closed = False

    def notify(self) -> None:
        """Send an event to the other end (``IOCTL_EVTCHN_NOTIFY``, EVTCHNOP_send underneath)."""
        self.handle.notify(self.port)

    def unmask(self) -> None:
        """Re-arm the port after it fired (write it back to the device)."""
        self.handle.unmask(self.port)

    def close(self) -> None:
        """Unbind (``IOCTL_EVTCHN_UNBIND``, EVTCHNOP_close underneath). Idempotent; a no-op once the handle
        is closed (closing the device unbound every port)."""
        if not self.closed:
            self.handle.unbind(self.port)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.kind
        return f"<Channel port {self.port} {state}>"


class EventChannels:
    """An open /dev/xen/evtchn: xenevtchn_handle's equivalent. Pollable: ``fileno()`` is the device's fd.

    Thread-safe. ``close()`` (or ``with``) closes the device, which unbinds every port it bound.
    """

    def __init__(self, device: Device) -> None:
        self.device = device
        self._fired: deque[int] = deque()
        self._channels: dict[int, Channel] = {}
        self._lock = threading.Lock()  # the channels
        self._rlock = threading.Lock()  # the fired ports: one reader at a time
        self._closed = False
        # Readiness checks and sync waits: a poll object holds no descriptor of its own.
        self._poll = select.poll()
        self._poll.register(device.fileno(), select.POLLIN)

    # -- lifetime: xenevtchn_open / fdopen / close / fd ------------------------------------------------
    @classmethod
    def open(cls, kernel: Kernel) -> EventChannels:
        """Open /dev/xen/evtchn through ``kernel`` (``host.kernel``). Raises ``DeviceUnavailable``,
        ``NotPrivileged``."""
        return cls(kernel.open("evtchn"))

    @classmethod
    def fdopen(cls, device: Device) -> EventChannels:
        """Adopt an already open evtchn device (the handle closes it)."""
        return cls(device)

    def fileno(self) -> int:
        """The device's descriptor: readable when a bound port has fired."""
        return self.device.fileno()

    def close(self) -> None:
        """Close the device (the driver unbinds every port). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for ch in self._channels.values():
                ch.closed = True
            self._channels.clear()
            self._fired.clear()
        self.device.close()

    def __enter__(self) -> EventChannels:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- binding ---------------------------------------------------------------------------------------
    def _bind(self, io: Ioctl, arg: bytes, kind: str, **kw: int | None) -> Channel:
        port = device_ioctl(self.device, io, bytearray(arg))
        ch = Channel(self, port, kind, **kw)
        with self._lock:
            self._channels[port] = ch
        return ch

    def bind_unbound_port(self, remote_domid: int) -> Channel:
        """A new local port that ``remote_domid`` may bind (``IOCTL_EVTCHN_BIND_UNBOUND_PORT``,
        EVTCHNOP_alloc_unbound underneath). Raises ``NoSuchDomain``, ``AccessDenied`` on a restricted handle."""
        check_domid(BIND_UNBOUND_PORT.cname, "remote_domain", remote_domid)  # the driver narrows it to domid_t
        arg = flat_codec(BIND_UNBOUND_PORT).pack(remote_domid)
        return self._bind(IOCTL_EVTCHN_BIND_UNBOUND_PORT, arg, "unbound", remote_domid=remote_domid)

    def bind_interdomain(self, remote_domid: int, remote_port: int) -> Channel:
        """A local port connected to ``remote_domid``'s unbound ``remote_port``
        (``IOCTL_EVTCHN_BIND_INTERDOMAIN``, EVTCHNOP_bind_interdomain underneath). Xen marks the new port
        pending, so it fires once at once. Raises ``InvalidArgument`` if the remote port is not unbound for
        dom0, ``NoSuchDomain``, ``AccessDenied`` on a handle restricted to another domain."""
        check_domid(BIND_INTERDOMAIN.cname, "remote_domain", remote_domid)
        arg = flat_codec(BIND_INTERDOMAIN).pack(remote_domid, remote_port)
        return self._bind(
            IOCTL_EVTCHN_BIND_INTERDOMAIN, arg, "interdomain", remote_domid=remote_domid, remote_port=remote_port
        )

    def bind_virq(self, virq: Virq | int) -> Channel:
        """A local port for VIRQ ``virq`` (``IOCTL_EVTCHN_BIND_VIRQ``, EVTCHNOP_bind_virq on vcpu 0).

        Raises ``AlreadyExists`` (EEXIST) when this domain has bound that VIRQ already (in dom0 xenstored
        holds VIRQ_DOM_EXC), ``InvalidArgument`` for a VIRQ out of range.
        """
        arg = flat_codec(BIND_VIRQ).pack(int(virq))
        return self._bind(IOCTL_EVTCHN_BIND_VIRQ, arg, "virq", virq=int(virq))

    def unbind(self, port: int) -> None:
        """Unbind a port this handle bound (``IOCTL_EVTCHN_UNBIND``). Raises ``HypercallError`` ENOTCONN for
        a port it did not bind."""
        device_ioctl(self.device, IOCTL_EVTCHN_UNBIND, bytearray(flat_codec(UNBIND).pack(port)))
        with self._lock:
            ch = self._channels.pop(port, None)
            if ch is not None:
                ch.closed = True

    def notify(self, port: int) -> None:
        """Send an event on a port this handle bound (``IOCTL_EVTCHN_NOTIFY``, EVTCHNOP_send underneath)."""
        device_ioctl(self.device, IOCTL_EVTCHN_NOTIFY, bytearray(flat_codec(NOTIFY).pack(port)))

    def unmask(self, port: int) -> None:
        """Re-arm ``port`` after it fired: write it back to the device. A port that fired again meanwhile is
        delivered at once. Ports this handle did not bind are ignored by the driver."""
        device_write(self.device, _PORT.pack(port), "evtchn write (unmask)")

    def restrict(self, domid: int) -> None:
        """Let this handle bind only interdomain channels to ``domid`` from now on
        (``IOCTL_EVTCHN_RESTRICT_DOMID``); it cannot be lifted."""
        device_ioctl(self.device, IOCTL_EVTCHN_RESTRICT_DOMID, bytearray(RESTRICT_DOMID.layout().build(domid=domid)))

    def reset(self) -> None:
        """Forget the ports that fired but were not read yet (``IOCTL_EVTCHN_RESET``); bindings stay."""
        device_ioctl(self.device, IOCTL_EVTCHN_RESET, bytearray(0))
        with self._rlock:
            self._fired.clear()

    @property
    def channels(self) -> dict[int, Channel]:
        """The channels bound through this handle and not unbound, by port."""
        with self._lock:
            return dict(self._channels)

    # -- the core: fired ports ---------------------------------------------------------------------------
    # One reader at a time (``_rlock``): it owns the queue and is the only one to poll and read, so a read
    # that poll said would not block cannot be raced into blocking by another thread.
    def _take(self, timeout_ms: int | None = 0) -> None:
        """Wait up to ``timeout_ms`` (None: for ever; 0: not at all) for the device to be readable, then read
        every fired port it has onto the queue. Caller holds ``_rlock``."""
        if self._closed or not self._poll.poll(timeout_ms) or self._closed:
            return
        self._read()

    def _read(self) -> None:
        try:
            data = device_read(self.device, _READ_PORTS * PORT_SIZE, "evtchn read (pending)")
        except TryAgain:
            return
        if len(data) % PORT_SIZE:
            raise ProtocolError(f"evtchn read returned {len(data)} bytes, not a whole number of ports")
        self._fired.extend(p for (p,) in _PORT.iter_unpack(data))

    def _next(self, timeout_ms: int | None = 0) -> int | None:
        with self._rlock:
            if not self._fired:
                self._take(timeout_ms)
            return self._fired.popleft() if self._fired else None

    def pending(self, timeout: float | None = 0) -> int | None:
        """The next port that fired, or None if none fires within ``timeout`` seconds (0: do not wait;
        None: wait for ever). The port stays masked until ``unmask``."""
        return self._next(None if timeout is None else max(0, round(timeout * 1000)))

    def wait(self, timeout: float | None = None) -> list[int]:
        """Every port that has fired, waiting up to ``timeout`` seconds for the first (empty list: none)."""
        first = self.pending(timeout)
        if first is None:
            return []
        with self._rlock:
            self._take()
            rest = list(self._fired)
            self._fired.clear()
        return [first, *rest]

    async def events(self) -> AsyncIterator[int]:
        """Fired ports, for ``async for port in handle.events()``, waiting with the running loop's reader.

        Each port stays masked until ``unmask`` (as with ``pending``): re-arm it once its event is handled.
        The loop's reader is registered only while the iterator waits for the device.
        """
        loop = asyncio.get_running_loop()
        fd = self.fileno()
        while True:
            port = self._next()  # polls again: another reader may have drained what woke us
            if port is not None:
                yield port
                continue
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
