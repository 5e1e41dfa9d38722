"""The ``xenpure`` command: a thin face over the library.

Rule 1: the CLI only parses arguments, calls the public API, and prints; every error the library raises
becomes one line on stderr and exit status 1 (as ``xl`` and ``virsh`` do), never a traceback.

``--sim`` gives each process a fresh simulated host with something to act on: Domain-0 and one running guest,
``demo`` (``xenpure.testing.demo_xen``), so ``xenpure --sim pause demo`` or ``console demo`` show the verbs
without Xen. ``create`` starts from Domain-0 alone (``connect("sim://")``), as the guest it builds is the one
to show.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import connect
from .domain import Domain, Host
from .errors import DeviceUnavailable, XenError
from .hypercall.abi import RELEASES, catalogue
from .hypercall.abi.sched import ShutdownReason

__all__ = ["main"]


def _host(args: argparse.Namespace) -> Host:
    if not args.sim:
        return connect(None)
    if not args.sim_demo:
        return connect("sim://")
    from .testing import SimKernel, demo_xen

    return connect(kernel=SimKernel(demo_xen()))


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
    if args.domain is not None:
        return cmd_domain_info(args)
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


def cmd_domain_info(args: argparse.Namespace) -> int:
    with _host(args) as host:
        d = host.domain(args.domain)
        info = d.info()
        data: dict[str, Any] = {
            "name": d.name,
            "id": info.domid,
            "uuid": str(info.uuid),
            "state": info.state.value,
            "flags": info.state_letters,
            "shutdown_reason": getattr(info.shutdown_reason, "name", info.shutdown_reason),
            "memory_kib": info.memory_kib,
            "max_memory_kib": info.max_memory_kib,
            "online_vcpus": info.online_vcpus,
            "cpu_time_s": info.cpu_time_ns / 1e9,
            "hvm": info.hvm,
            "vcpus": [
                {"vcpu": v.vcpu, "online": v.online, "running": v.running, "blocked": v.blocked, "cpu": v.cpu,
                 "cpu_time_s": v.cpu_time_ns / 1e9}
                for v in d.vcpus()
            ],
        }
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for k, val in data.items():
            if k != "vcpus":
                print(f"{k:<16}: {val}")
        for v in data["vcpus"]:
            state = "running" if v["running"] else "blocked" if v["blocked"] else "runnable"
            print(f"vcpu {v['vcpu']:<11}: cpu {v['cpu']}, {state}, {v['cpu_time_s']:.1f} s")
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    with _host(args) as host:
        d = host.domain(args.domain)
        reason = ShutdownReason.reboot if args.command == "reboot" else ShutdownReason.poweroff
        d.shutdown(reason, wait=args.wait, timeout=args.timeout)
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    with _host(args) as host:
        host.domain(args.domain).destroy(timeout=args.timeout)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    """`xenpure create FILE`: build, start, then hand the domain to a supervisor (on_poweroff/on_reboot/on_crash).

    Like `xl create`, the command returns once the guest runs and a background supervisor (`xenpure
    supervise`, in a session of its own, logging to a file) follows it; `-F` keeps the supervisor in the
    foreground instead (for systemd units and containers), `-e` runs none (nothing acts on on_*).
    """
    from .domain import ConfigError, LayoutError, load_xl_config

    if args.foreground and args.console:
        print("xenpure: -F and --console both want the foreground; pick one", file=sys.stderr)
        return 1
    path = Path(args.file).absolute()
    try:
        config = load_xl_config(path)
    except (ConfigError, OSError) as e:
        print(f"xenpure: {e}", file=sys.stderr)
        return 1
    with _host(args) as host:
        try:
            d = host.create(config)
        except LayoutError as e:
            print(f"xenpure: {e}", file=sys.stderr)
            return 1
        tty = None
        if args.console:
            # Attach before the first instruction runs, so the console shows the boot from its first line.
            tty = _console_tty(host, d.id, args.console_wait)
        if not args.paused:
            d.start()
        print(f"created domain {config.name} (id {d.id}){' paused' if args.paused else ''}", flush=True)
        if args.sim or args.no_supervise:
            pass  # the simulator lives in this process: nothing is left to follow once it exits
        elif args.foreground:
            return _supervise(host, config, d.id)
        else:
            _spawn_supervisor(d.id, path, config.name, args.supervisor_log)
        if args.console:
            if tty is None:
                return 1
            return _relay(tty)
    return 0


def _spawn_supervisor(domid: int, path: Path, name: str, log_path: str | None) -> int:
    """Start `xenpure supervise DOMID FILE` detached (own session, no terminal, output to a log file)."""
    import os
    import subprocess
    import tempfile

    if log_path is None:
        logdir = Path("/var/log/xen")
        if not (logdir.is_dir() and os.access(logdir, os.W_OK)):
            logdir = Path(tempfile.gettempdir())
        log_path = str(logdir / f"xenpure-supervise-{name}.log")
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xenpure", "supervise", str(domid), str(path)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True, close_fds=True,
        )
    print(f"xenpure: domain {name} is followed by supervisor pid {proc.pid} (log {log_path})", file=sys.stderr,
          flush=True)
    return proc.pid


def _supervise(host: Host, config: Any, domid: int, timeout: float | None = None) -> int:
    import logging

    from .domain import Supervisor

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sup = Supervisor(host, config, domid, on_action=lambda a: print(f"xenpure: {a}", flush=True))
    outcome = sup.run(timeout=timeout)
    print(f"xenpure: supervisor of {config.name} done: {outcome.value}", flush=True)
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    """`xenpure supervise DOMAIN FILE`: follow a running domain and apply FILE's on_* actions to it."""
    import dataclasses

    from .domain import ConfigError, load_xl_config

    try:
        config = load_xl_config(Path(args.file).absolute())
    except (ConfigError, OSError) as e:
        print(f"xenpure: {e}", file=sys.stderr)
        return 1
    with _host(args) as host:
        d = host.domain(args.domain)
        if d.name != config.name:
            print(f"xenpure: domain {args.domain} is named {d.name!r}, {args.file} describes {config.name!r}",
                  file=sys.stderr)
            return 1
        # A restart rebuilds FILE under the uuid the running domain has (xl keeps it across reboots).
        config = dataclasses.replace(config, uuid=d.info().uuid)
        return _supervise(host, config, d.id, args.timeout)


def _console_tty(host: Host, domid: int, timeout: float) -> int | None:
    """Open the pty xenconsoled publishes at console/tty (it appears once xenconsoled has attached)."""
    import os
    import termios
    import tty as tty_mod

    deadline = time.monotonic() + timeout
    name = b""
    while not name and time.monotonic() < deadline:
        try:
            name = bytes(host.xenstore.read(f"/local/domain/{domid}/console/tty"))
        except OSError:
            pass
        if not name:
            time.sleep(0.2)
    if not name:
        print(f"xenpure: no console tty for domain {domid} within {timeout:g} s (is xenconsoled running?)",
              file=sys.stderr)
        return None
    fd = os.open(name.decode(), os.O_RDWR | os.O_NOCTTY)
    try:
        tty_mod.setraw(fd)  # bytes as the guest wrote them: no echo, no newline translation
    except termios.error:
        pass
    return fd


def _relay(fd: int) -> int:
    """Relay the console pty to stdout, and stdin to the guest, until Ctrl-] or the pty closes.

    Without a terminal on stdin (a pipe, /dev/null, a file), stdin's end-of-file, or stdin being unpollable,
    only stops the input side: output is relayed until the guest's console goes away or the process is stopped.
    """
    import os
    import selectors
    import termios
    import tty as tty_mod

    stdin = sys.stdin.fileno()
    saved = None
    if os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty_mod.setraw(stdin)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
        sel.register(stdin, selectors.EVENT_READ)
    except (PermissionError, ValueError):
        pass  # /dev/null or a regular file cannot be polled (EPERM): there is no input to relay
    try:
        while True:
            for key, _ in sel.select():
                if key.fd == fd:
                    data = os.read(fd, 4096)
                    if not data:
                        return 0
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
                    continue
                data = os.read(stdin, 4096)
                if not data:
                    sel.unregister(stdin)  # no more input; keep showing output
                elif b"\x1d" in data:  # Ctrl-]: detach, as xl console does
                    return 0
                else:
                    os.write(fd, data)
    except OSError:
        return 0
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sel.close()
        os.close(fd)


def cmd_console(args: argparse.Namespace) -> int:
    with _host(args) as host, host.domain(args.domain).console() as con:
        print(f"xenpure: console of domain {args.domain} via {con.source}", file=sys.stderr)
        for text in con.follow(timeout=args.timeout):
            sys.stdout.write(text)
            sys.stdout.flush()
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    with _host(args) as host, host.events(timeout=args.timeout) as stream:
        # The stream has its first snapshot: whatever happens from here on is reported.
        print("xenpure: following lifecycle events", file=sys.stderr, flush=True)
        names: dict[int, str | None] = {}
        for n, ev in enumerate(stream, 1):
            if ev.domid not in names or names[ev.domid] is None:
                names[ev.domid] = host.domain_name(ev.domid)
            name = names[ev.domid]
            if args.json:
                reason = getattr(ev.reason, "name", ev.reason)
                print(json.dumps({"event": ev.kind.value, "id": ev.domid, "name": name, "uuid": str(ev.uuid),
                                  "reason": reason}), flush=True)
            else:
                print(f"{time.strftime('%H:%M:%S')} {ev} ({name or '?'})", flush=True)
            if n == args.count:
                break
    return 0


def cmd_dmesg(args: argparse.Namespace) -> int:
    with _host(args) as host:
        sys.stdout.write(host.dmesg(clear=args.clear))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    with _host(args) as host:
        before = {i.domid: i for i in host.domain_infos()}
        t0 = time.monotonic()
        n = 0
        while args.iterations is None or n < args.iterations:
            time.sleep(args.delay)
            now = {i.domid: i for i in host.domain_infos()}
            t1 = time.monotonic()
            rows = []
            for domid, info in now.items():
                prev = before.get(domid)
                used = info.cpu_time_ns - prev.cpu_time_ns if prev and prev.uuid == info.uuid else 0
                rows.append({"id": domid, "name": host.domain_name(domid), "state": info.state_letters,
                             "cpu_pct": round(100.0 * used / ((t1 - t0) * 1e9), 1),
                             "mem_kib": info.memory_kib, "vcpus": info.online_vcpus})
            if args.json:
                print(json.dumps(rows), flush=True)
            else:
                if sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")
                print(f"{'NAME':<24}{'ID':>5}{'STATE':>8}{'CPU(%)':>8}{'MEM(k)':>10}{'VCPUS':>6}")
                for r in rows:
                    print(f"{(r['name'] or '?'):<24}{r['id']:>5}{r['state']:>8}{r['cpu_pct']:>8}{r['mem_kib']:>10}"
                          f"{r['vcpus']:>6}", flush=True)
            before, t0, n = now, t1, n + 1
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


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a positive number")
    return n


def _parser() -> argparse.ArgumentParser:
    sim_help = ("use a simulated hypervisor instead of this host's Xen: a fresh one per run, with Domain-0 and"
                " a running guest named demo")
    p = argparse.ArgumentParser(prog="xenpure", description="Control Xen domains from dom0, in pure Python.")
    p.add_argument("--sim", action="store_true", help=sim_help)
    p.set_defaults(sim_demo=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--sim", action="store_true", default=argparse.SUPPRESS, help=sim_help)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, text: str, func: Any, *, data: bool = False, domain: bool = False) -> Any:
        s = sub.add_parser(name, help=text, parents=[common])
        if data:
            s.add_argument("--json", action="store_true", help="print JSON")
        if domain:
            s.add_argument("domain", help="domain id, name or uuid")
        s.set_defaults(func=func)
        return s

    command("list", "list domains (like `xl list`)", cmd_list, data=True)
    s = command("info", "host information (like `xl info`), or one domain's with DOMAIN", cmd_info, data=True)
    s.add_argument("domain", nargs="?", help="a domain id, name or uuid")
    verbs = (("pause", "pause a domain (libvirt: suspend)"), ("unpause", "unpause a domain (libvirt: resume)"))
    for verb, text in verbs:
        command(verb, text, lambda a, v=verb: _one_domain(a, v), domain=True)
    for verb in ("shutdown", "reboot"):
        s = command(verb, f"ask a domain to {'power off' if verb == 'shutdown' else 'reboot'}", cmd_shutdown,
                    domain=True)
        s.add_argument("-w", "--wait", action="store_true", help="wait until it has shut down")
        s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    s = command("create", "build and start a PV guest from an xl.cfg file (like `xl create`; with --sim, on a"
                " simulated host with Domain-0 alone)", cmd_create)
    s.set_defaults(sim_demo=False)  # with --sim: a host with Domain-0 alone, the guest built here is the one to see
    s.add_argument("file", help="the xl.cfg file (type=\"pv\": name, memory, maxmem, vcpus, kernel, ramdisk, extra)")
    s.add_argument("-p", "--paused", action="store_true", help="leave the domain paused")
    s.add_argument("-c", "--console", action="store_true", help="attach to its console afterwards (Ctrl-] detaches)")
    s.add_argument("--console-wait", type=float, default=60.0, help="seconds to wait for xenconsoled's tty")
    s.add_argument("-F", "--foreground", action="store_true",
                   help="supervise the domain (on_poweroff/on_reboot/on_crash) in the foreground until it is gone")
    s.add_argument("-e", "--no-supervise", action="store_true",
                   help="start no supervisor: nothing applies on_poweroff/on_reboot/on_crash")
    s.add_argument("--supervisor-log", default=None,
                   help="the background supervisor's log (default /var/log/xen/xenpure-supervise-NAME.log)")
    s = command("supervise", "follow a running domain and apply an xl.cfg's on_poweroff/on_reboot/on_crash",
                cmd_supervise, domain=True)
    s.add_argument("file", help="the xl.cfg the domain was created from (a restart rebuilds it)")
    s.add_argument("--timeout", type=float, default=None, help="stop following after this many seconds")
    s = command("destroy", "destroy a domain at once", cmd_destroy, domain=True)
    s.add_argument("--timeout", type=float, default=60.0)
    s = command("events", "follow lifecycle events (until --count, --timeout or Ctrl-C)", cmd_events, data=True)
    s.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    s.add_argument("-n", "--count", type=_positive, default=None, help="stop after N events")
    s = command("console", "follow a guest's console output (read-only) until it is gone, --timeout or Ctrl-C",
                cmd_console, domain=True)
    s.add_argument("--timeout", type=float, default=None,
                   help="stop after this many seconds (default: follow until the domain is gone)")
    s = command("dmesg", "the hypervisor's console (like `xl dmesg`)", cmd_dmesg)
    s.add_argument("-c", "--clear", action="store_true", help="clear the ring after reading")
    s = command("top", "cpu, memory and state per domain, refreshed", cmd_top, data=True)
    s.add_argument("-d", "--delay", type=float, default=1.0, help="seconds between refreshes")
    s.add_argument("-n", "--iterations", type=int, default=None, help="stop after N refreshes")

    s = command("abi", "print the declared hypercall ABI (records, offsets, constants, ioctls)", cmd_abi, data=True)
    s.add_argument("--xen", default="4.17", choices=[r.name for r in RELEASES])
    s.set_defaults(func=cmd_abi)
    s = command("xenstored", "run xenpure's xenstored on a Unix socket (SIGTERM stops it)", cmd_xenstored)
    from .xenstore.server._daemon import add_arguments as xenstored_arguments

    xenstored_arguments(s)
    return p


def cmd_xenstored(args: argparse.Namespace) -> int:
    """`xenpure xenstored`: the daemon in xenpure.xenstore.server (its own SIGTERM handling, restored after)."""
    from .xenstore.server._daemon import run

    return run(args)


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
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        pass
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
