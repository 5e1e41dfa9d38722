"""The host and its domains: the public face, shaped like libvirt's connection and domain objects.

Rule 1: ``Host`` and ``Domain`` compose the layers below (hypercall, later evtchn and xenstore) and never
touch a device themselves; every method says which hypercall it issues.
"""

from __future__ import annotations

import errno
import logging
import uuid as _uuid
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ArgumentOutOfRange, NoSuchDomain, ProtocolError
from ..hypercall._layout import Iface
from ..hypercall._privcmd import Privcmd
from ..hypercall._probe import probe_interface, xen_version_numbers
from ..hypercall.abi import release_for
from ..hypercall.abi.domctl import GETDOMAININFO, DomctlCmd
from ..hypercall.abi.sysctl import SysctlCmd
from ..hypercall.abi.version import CAPABILITIES_INFO_LEN, CHANGESET_INFO_LEN, EXTRAVERSION_LEN, XenVer
from ..hypercall.abi.xen import DOMID_FIRST_RESERVED, DomId
from ..kernel import Kernel
from ._config import DomainConfig
from ._domain import Domain
from ._events import DEFAULT_INTERVAL, EventStream
from ._types import DomainInfo, PhysInfo, XenVersion

__all__ = ["Host"]

log = logging.getLogger("xenpure.domain")

#: How many getdomaininfo records one getdomaininfolist sysctl asks for.
_BATCH = 64


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


class Host:
    """A connection to one Xen host (the hypervisor under this dom0, or the simulated one).

    Obtain it with ``xenpure.connect()``. Construction opens /dev/xen/privcmd and probes the hypervisor's
    version and interface versions; ``close()`` (or ``with``) releases everything.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._xenstore: Any = None
        self._privcmd = Privcmd(kernel)
        try:
            self._major, self._minor = xen_version_numbers(self._privcmd)
            #: The domctl/sysctl interface versions this hypervisor speaks.
            self.interface: Iface = probe_interface(self._privcmd, self._major, self._minor)
        except BaseException:  # the Host owns the kernel (close() closes it): a failed one leaves nothing open
            self._privcmd.close()
            self.kernel.close()
            raise

    # -- lifetime ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the privcmd descriptor, buffers, the xenstore connection and the kernel. Idempotent."""
        if self._xenstore is not None:
            self._xenstore.close()
            self._xenstore = None
        self._privcmd.close()
        self.kernel.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Host Xen {self._major}.{self._minor} ({release_for(self.interface)}) via {self.kernel!r}>"

    @property
    def xenstore(self) -> Any:
        """The xenstore client (opened on first use: xenstored's socket, else /dev/xen/xenbus)."""
        if self._xenstore is None:
            from ..xenstore import Client

            self._xenstore = Client.open(self.kernel)
        return self._xenstore

    @property
    def privcmd(self) -> Privcmd:
        """The hypercall channel, for layers built on top (and for learning)."""
        return self._privcmd

    # -- host -------------------------------------------------------------------------------------------
    def version(self) -> XenVersion:
        """The hypervisor's version (``xen_version``: XENVER_version, extraversion, capabilities, changeset)."""
        _, extra = self._privcmd.xen_version(XenVer.extraversion, EXTRAVERSION_LEN)
        _, caps = self._privcmd.xen_version(XenVer.capabilities, CAPABILITIES_INFO_LEN)
        _, changeset = self._privcmd.xen_version(XenVer.changeset, CHANGESET_INFO_LEN)
        return XenVersion(self._major, self._minor, _cstr(extra), _cstr(caps), _cstr(changeset))

    def physinfo(self) -> PhysInfo:
        """CPUs, memory and capabilities of the machine (``XEN_SYSCTL_physinfo``)."""
        rec, _ = self._privcmd.sysctl(self.interface, SysctlCmd.physinfo)
        return PhysInfo.from_record(rec)

    def dmesg(self, *, clear: bool = False, chunk: int = 16384) -> str:
        """The hypervisor's console ring, like ``xl dmesg`` (``XEN_SYSCTL_readconsole``, incremental reads).

        ``clear`` empties the ring after reading it.
        """
        parts: list[bytes] = []
        index = 0
        while True:

            def request(addr: int, index: int = index) -> dict[str, int]:
                return {"incremental": 1, "index": index, "buffer": addr, "count": chunk}

            rec, tail = self._privcmd.sysctl(self.interface, SysctlCmd.readconsole, request, extra=chunk)
            n = int(rec.count)
            if n > chunk:
                raise ProtocolError(f"readconsole reported {n} bytes for a {chunk}-byte buffer")
            if n == 0:
                break
            parts.append(tail[:n])
            index = int(rec.index)
        if clear:
            self._privcmd.sysctl(self.interface, SysctlCmd.readconsole, {"clear": 1})
        return b"".join(parts).decode("utf-8", "replace")

    def domain_infos(self) -> list[DomainInfo]:
        """Every domain's info, fetched in batches with ``XEN_SYSCTL_getdomaininfolist`` (not per domid)."""
        lay = GETDOMAININFO.layout(self.interface)
        size, parse, from_record = lay.size, lay.parse, DomainInfo.from_record
        out: list[DomainInfo] = []
        first = 0
        while first < DOMID_FIRST_RESERVED:

            def request(addr: int, first: int = first) -> dict[str, int]:
                return {"first_domain": first, "max_domains": _BATCH, "buffer": addr}

            rec, tail = self._privcmd.sysctl(self.interface, SysctlCmd.getdomaininfolist, request, extra=_BATCH * size)
            n = int(rec["num_domains"])
            if n > _BATCH:
                raise ProtocolError(f"getdomaininfolist returned {n} domains for a buffer of {_BATCH}")
            raw = memoryview(tail)
            batch = [from_record(parse(raw[at : at + size])) for at in range(0, n * size, size)]
            last = first - 1
            for d in batch:  # ascending ids, none below first
                if d.domid <= last:
                    raise ProtocolError(f"getdomaininfolist returned domain ids out of order from {first}")
                last = d.domid
            out.extend(batch)
            if n < _BATCH:
                break
            first = last + 1
        return out

    def domains(self) -> list[Domain]:
        """Every domain, Domain-0 included, in domid order (one getdomaininfolist batch per 64 domains)."""
        return [Domain(self, d.domid) for d in self.domain_infos()]

    def __iter__(self) -> Iterator[Domain]:
        return iter(self.domains())

    def domain(self, key: int | str | _uuid.UUID) -> Domain:
        """Look a domain up by id, name (xenstore ``/local/domain/<id>/name``) or UUID.

        Raises ``NoSuchDomain``, and ``ArgumentOutOfRange`` for an id no domain can have: outside
        0..0x7FEF, or one of the reserved ``DOMID_*`` ids (``DOMID_SELF``...) of public/xen.h.

        The id range is checked here, once, rather than in ``Domain``: this is where a caller's number
        becomes a ``Domain``, and a ``Domain`` stands for one real domain (its xenstore home, its info), which
        a reserved id is not; the encoder would refuse only what overflows ``domid_t`` (a negative id, or one
        over 0xFFFF) and let a reserved id through to Xen. ``Domain`` itself stays a plain (host, id) pair:
        the others are made from ids Xen listed.
        """
        if isinstance(key, int):
            _check_domid(key)
            d = Domain(self, key)
            d._info()  # ESRCH -> NoSuchDomain
            return d
        if isinstance(key, _uuid.UUID):
            for info in self.domain_infos():
                if info.uuid == key:
                    return Domain(self, info.domid)
            raise NoSuchDomain(3, "getdomaininfolist", None, f"no domain has uuid {key}")
        if key.isdigit():
            return self.domain(int(key))
        for info in self.domain_infos():
            if self.domain_name(info.domid) == key:
                return Domain(self, info.domid)
        raise NoSuchDomain(3, "getdomaininfolist", None, f"no domain is named {key!r}")

    def create(self, config: DomainConfig, *, on_step: Callable[[str], None] | None = None) -> Domain:
        """Build ``config`` as a new 64-bit PV domain, left paused; ``Domain.start()`` runs it.

        The builder (``_builder.build_pv``) checks the kernel and layout first (``KernelImageError``,
        ``LayoutError``: no domain is created), then issues createdomain, max_vcpus, max_mem,
        XENMEM_set_memory_map, populate_physmap, EVTCHNOP_alloc_unbound, foreign mappings of the guest's frames
        (XEN_DOMCTL_hypercall_init for a kernel with a HYPERCALL_PAGE note), MMUEXT_PIN_L4_TABLE, the grant
        table seeding, setvcpucontext, the xenstore entries and XS_INTRODUCE; any failure after createdomain
        undoes it all and raises ``BuildError`` naming the step. Nothing here acts on the config's on_*
        actions: a ``Supervisor`` does (``xenpure create`` starts one).
        """
        from ._builder import build_pv

        return Domain(self, build_pv(self, config, on_step=on_step).domid)

    def events(self, *, timeout: float | None = None, interval: float = DEFAULT_INTERVAL) -> EventStream:
        """Lifecycle events from now on (introduced, paused, unpaused, shutdown, crashed, destroyed).

        Returns an ``EventStream``: iterate it with ``for`` or ``async for``, and close it (or use ``with``).
        It is woken by VIRQ_DOM_EXC and xenstored's @introduceDomain/@releaseDomain watches, and every
        ``interval`` seconds (pauses send no notification); each event is a difference between two
        getdomaininfolist snapshots. Iteration ends after ``timeout`` seconds (None: never).
        """
        return EventStream(self, timeout, interval)

    def domain_name(self, domid: int) -> str | None:
        """The name the toolstack gave ``domid`` in xenstore, or None if it has none."""
        return _xenstore_name(self, domid)

    # -- per-domain hypercalls (Domain delegates here) ---------------------------------------------------
    def _domctl(self, cmd: DomctlCmd, domid: int, payload: Any = None, extra: int = 0) -> tuple[int, Any, bytes]:
        return self._privcmd.domctl(self.interface, cmd, domid, payload, extra=extra)


def _check_domid(domid: int) -> None:
    """``ArgumentOutOfRange`` unless ``domid`` can be a real domain's id (0..DOMID_FIRST_RESERVED - 1)."""
    if 0 <= domid < DOMID_FIRST_RESERVED:
        return
    todo = "pass a real domain's id (Host.domains(), or `xenpure list`, shows them)"
    names = [n for n, m in DomId.__members__.items() if m == domid and n != "FIRST_RESERVED"]
    if names:
        todo = f"{domid:#x} is DOMID_{names[0]}, a reserved id that names no domain of its own; {todo}"
    elif domid > DOMID_FIRST_RESERVED:
        todo = f"ids from {DOMID_FIRST_RESERVED:#x} up are reserved; {todo}"
    raise ArgumentOutOfRange(None, "domid", domid, "a domain id", 0, DOMID_FIRST_RESERVED - 1, todo)


def _xenstore_name(host: Host, domid: int) -> str | None:
    try:
        value: bytes = host.xenstore.read(f"/local/domain/{domid}/name")
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return value.decode("utf-8", "replace")
