"""A xenstore ring's doorbell over a real event channel (``xenpure.evtchn``).

Rule 1: one /dev/xen/evtchn handle per doorbell, so its descriptor is readable exactly when *this* ring's
port fired; ``ack`` drains what fired and re-arms the port (the driver masks a port once it fires).

A ring (``XenstoreRing``) is only a shared page; the doorbell is how each end tells the other "I moved an
index". ``Doorbell`` in ``_ring`` is the protocol; ``EvtchnDoorbell`` implements it over a ``Channel``:

    with EventChannels.open(kernel) as evt:
        bell = EvtchnDoorbell(evt.bind_interdomain(domid, port))    # xenstored's end of a guest's channel
        Xenstored(...).add_ring(domid, XenstoreRing(page, back=True), bell)
"""

from __future__ import annotations

from types import TracebackType

from ..evtchn import Channel

__all__ = ["EvtchnDoorbell"]


class EvtchnDoorbell:
    """``Doorbell`` over one bound ``Channel``, alone on its ``EventChannels`` handle.

    ``fileno`` is the handle's descriptor (readable while the port has fired and was not acked), ``notify``
    is ``IOCTL_EVTCHN_NOTIFY`` (EVTCHNOP_send underneath), ``ack`` reads every fired port without waiting
    and unmasks ours. ``close`` closes the handle, which unbinds the port.
    """

    def __init__(self, channel: Channel) -> None:
        others = set(channel.handle.channels) - {channel.port}
        if others:
            # A second port on the handle would make fileno() readable for events that are not ours.
            raise ValueError(f"the doorbell's handle also has ports {sorted(others)} bound: give it its own")
        self.channel = channel
        self.handle = channel.handle

    @property
    def port(self) -> int:
        return self.channel.port

    def fileno(self) -> int:
        return self.handle.fileno()

    def notify(self) -> None:
        self.channel.notify()

    def ack(self) -> None:
        fired = False
        while self.handle.pending(0) is not None:
            fired = True
        if fired:
            self.channel.unmask()

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> EvtchnDoorbell:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EvtchnDoorbell port {self.channel.port} ({self.channel.kind})>"
