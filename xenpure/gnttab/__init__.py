"""Grant tables, natively: map other domains' grants (gntdev), share our pages (gntalloc), and the
GNTTABOP_* hypercalls (libxengnttab's and libxengntshr's equivalent).

Rule 1: every mapping and every share is a context manager that undoes exactly what it did, in reverse,
even when an exception interrupts it; nothing is left mapped or granted.

libxengnttab / libxengntshr -> xenpure::

    xengnttab_open / close                    GrantDevice.open(kernel) / .close()
    xengnttab_map_grant_ref(s)                GrantDevice.map_grant_ref(domid, ref) / .map_grant_refs([...])
    xengnttab_map_domain_grant_refs           GrantDevice.map_domain_grant_refs(domid, refs)
    xengnttab_map_grant_ref_notify            GrantDevice.map_grant_refs(..., notify_offset=, notify_port=)
    xengnttab_unmap                           GrantMapping.close() (or leave its ``with``)
    xengnttab_set_max_grants                  GrantDevice.set_max_grants(n) -> False: Linux has no limit
    xengnttab_grant_copy                      GrantDevice.grant_copy([...]) / copy_from / copy_to
    xengntshr_open / close                    GrantAllocator.open(kernel) / .close()
    xengntshr_share_pages / share_page_notify GrantAllocator.share_pages(domid, n, notify_offset=, notify_port=)
    xengntshr_unshare                         GrantShare.close()
    GNTTABOP_query_size / setup_table         GnttabOps(host.privcmd).query_size(domid) / .setup_table(domid, n)
    GNTTABOP_get_version / set_version        GnttabOps.get_version(domid) / .set_version(v)

    >>> import xenpure
    >>> from xenpure.gnttab import GrantAllocator, GrantDevice
    >>> with xenpure.connect("sim://") as host, GrantAllocator.open(host.kernel) as gntshr, \\
    ...         GrantDevice.open(host.kernel) as gnttab:
    ...     with gntshr.share_pages(0, 1) as share, gnttab.map_grant_ref(0, share.refs[0]) as m:
    ...         share.view[:5] = b"hello"
    ...         bytes(m.view[:5])
    b'hello'
"""

from __future__ import annotations

from ..hypercall.abi.grant_table import GntSt
from ._gntalloc import GrantAllocator, GrantShare
from ._gntdev import CopyResult, GrantCopyError, GrantDevice, GrantMapping, GrantRef
from ._ops import GnttabOps, GrantTableError, GrantTableSize

__all__ = [
    "CopyResult",
    "GntSt",
    "GnttabOps",
    "GrantAllocator",
    "GrantCopyError",
    "GrantDevice",
    "GrantMapping",
    "GrantRef",
    "GrantShare",
    "GrantTableError",
    "GrantTableSize",
]
