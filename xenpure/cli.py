"""The ``xenpure`` command: a thin face over the library.

Rule 1: the CLI only parses arguments, calls the public API, and prints; every error the library raises
becomes one line on stderr and exit status 1 (as ``xl`` and ``virsh`` do), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import connect
from .domain import Domain, Host
from .errors import DeviceUnavailable, XenError
from .hypercall.abi import RELEASES, catalogue

__all__ = ["main"]


def _host(args: argparse.Namespace) -> Host:
    return connect("sim://" if args.sim else None)


def _domain_row(d: Domain) -> dict[str, Any]:
    info = d.info()
    return {
        "name": d.name,
        "id": info.domid,
        "mem_mib": info.memory_kib // 1024,
        "vcpus": info.online_vcpus,
        "state": info.state_letters,
        "time_s": round(info.cpu_time_ns / 1e9, 1),
        "uuid": str(info.uuid),
    }


def cmd_list(args: argparse.Namespace) -> int:
    with _host(args) as host:
        rows = [_domain_row(d) for d in host.domains()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'Name':<40}{'ID':>5}{'Mem':>7}{'VCPUs':>6}{'State':>10}{'Time(s)':>10}")
    for r in rows:
        name = r["name"] or "(null)"
        print(f"{name:<40}{r['id']:>5}{r['mem_mib']:>7}{r['vcpus']:>6}{r['state']:>10}{r['time_s']:>10}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with _host(args) as host:
        v = host.version()
        p = host.physinfo()
        data = {
            "xen_major": v.major,
            "xen_minor": v.minor,
            "xen_extra": v.extra,
            "xen_version": str(v),
            "xen_caps": v.capabilities,
            "xen_changeset": v.changeset,
            "domctl_interface": host.interface.domctl,
            "sysctl_interface": host.interface.sysctl,
            "nr_cpus": p.nr_cpus,
            "nr_nodes": p.nr_nodes,
            "cores_per_socket": p.cores_per_socket,
            "threads_per_core": p.threads_per_core,
            "cpu_mhz": p.cpu_khz // 1000,
            "virt_caps": " ".join(p.virt_caps),
            "total_memory": p.total_memory_mib,
            "free_memory": p.free_memory_mib,
        }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for k, val in data.items():
            shown = f"{val:#x}" if k.endswith("_interface") else val
            print(f"{k:<22}: {shown}")
    return 0


def _one_domain(args: argparse.Namespace, verb: str) -> int:
    with _host(args) as host:
        d = host.domain(args.domain)
        getattr(d, verb)()
    return 0


def cmd_abi(args: argparse.Namespace) -> int:
    cat = catalogue(args.xen)
    if args.json:
        print(json.dumps(cat, indent=1, sort_keys=True))
        return 0
    print(f"Xen {cat['xen']}: domctl {cat['interface']['domctl']:#x}, sysctl {cat['interface']['sysctl']:#x}")
    for rec in cat["records"]:
        print(f"\n{rec['cname']}  ({rec['header']}, size {rec['size']}, align {rec['align']})")
        for m in rec["members"]:
            depth = m["path"].count(".")
            print(f"  {'  ' * depth}{m['path'].rsplit('.', 1)[-1]:<28} +{m['offset']:<5} {m['size']:>5}  {m['ctype']}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xenpure", description="Control Xen domains from dom0, in pure Python.")
    p.add_argument("--sim", action="store_true", help="use the simulated hypervisor instead of this host's Xen")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list domains (like `xl list`)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("info", help="hypervisor and host information (like `xl info`)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    verbs = (("pause", "pause a domain (libvirt: suspend)"), ("unpause", "unpause a domain (libvirt: resume)"))
    for verb, text in verbs:
        s = sub.add_parser(verb, help=text)
        s.add_argument("domain", help="domain id or name")
        s.set_defaults(func=lambda a, v=verb: _one_domain(a, v))

    s = sub.add_parser("abi", help="print the declared hypercall ABI (records, offsets, constants, ioctls)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--xen", default="4.17", choices=[r.name for r in RELEASES])
    s.set_defaults(func=cmd_abi)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except DeviceUnavailable as e:
        print(f"xenpure: Xen is not available on this machine ({', '.join(e.tried)} missing); "
              "try --sim for the simulated hypervisor", file=sys.stderr)
    except XenError as e:
        print(f"xenpure: {e}", file=sys.stderr)
    except BrokenPipeError:
        pass
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
