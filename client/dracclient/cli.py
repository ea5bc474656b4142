"""dracctl: see and change a dracd's relay table from the command line.

Exit codes: 0 ok; 1 refused (ADD_PERM, not an admin) or not found / not
authorized; 64 usage; 69 dracd unavailable (unreachable, timed out, not
registered); 70 bad reply or unexpected RPC error; 75 dracd could not write
its map (try again).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .admin import DEFAULT_SOCKET, AdminClient, NotFound, parse_target
from .adminproto import MAX_LIFETIME, Entry, Target
from .client import add, add_address, ping
from .drac import DRACPROG
from .durations import parse_duration
from .errors import DracError, InvalidRequest, PermissionRefused, RpcTimeout, ServerError, ServerResult, Unavailable

EX_OK = 0
EX_REFUSED = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_TEMPFAIL = 75

EXIT_CODES = """exit codes: 0 ok, 1 refused or not found, 64 usage, 69 dracd unavailable,
70 bad reply, 75 dracd could not write its map"""


def exit_code(exc: DracError) -> int:
    if isinstance(exc, (PermissionRefused, NotFound)):
        return EX_REFUSED
    if isinstance(exc, InvalidRequest):
        return EX_USAGE  # ADMIN_INVAL: a bad address or lifetime; trying again will not help
    if isinstance(exc, (RpcTimeout, Unavailable)):
        return EX_UNAVAILABLE
    if isinstance(exc, ServerError):
        return EX_TEMPFAIL
    return EX_SOFTWARE


def _lifetime(text: str) -> int:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds > MAX_LIFETIME:
        raise argparse.ArgumentTypeError(f"lifetime {text} is over ten years, the most dracd takes")
    return seconds


class Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr, like every other error of the command (dracctl,
    and dracd's commands, which use this parser too)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split()[0]  # a subcommand's parser is "dracctl add"
        self.exit(2, f"{command}: {message} (see {command} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dracctl", description="See and change a dracd relay table.", epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-s", "--server", action="append",
                        help="dracd host, repeatable (default: $DRACD_SERVER or localhost)")
    parser.add_argument("-p", "--port", type=int, help="dracd port (default: ask rpcbind)")
    parser.add_argument("-S", "--socket", help="dracd admin socket (default: $DRACD_SOCKET, the config's "
                        f"admin_socket, {DEFAULT_SOCKET})")
    parser.add_argument("-c", "--config", help="dracd config file to take admin_socket from ($DRACD_CONFIG)")
    parser.add_argument("--tcp", action="store_true", help="use TCP for network calls (default UDP)")
    parser.add_argument("-t", "--timeout", type=float, default=5.0, help="seconds for each call (default 5)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--program", type=int, default=DRACPROG, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
        return cmd

    cmd = command("add", "authorize addresses for relaying")
    cmd.add_argument("addresses", nargs="+", metavar="ADDRESS")
    cmd.add_argument("--lifetime", type=_lifetime, metavar="DURATION", help="e.g. 45m (admin; default: dracd's)")
    command("del", "remove addresses from the table").add_argument("addresses", nargs="+", metavar="ADDRESS")
    command("list", "list the table: address, expiry, seconds left")
    command("flush", "remove every entry")
    command("status", "table size, map, last write, counters")
    command("ping", "call the NULL procedure and print the round-trip time")
    command("check", "exit 0 if ADDRESS is authorized now").add_argument("address", metavar="ADDRESS")
    return parser


def config_socket(path: str) -> str | None:
    """admin_socket from a dracd config file, read without a YAML library."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    match = re.search(r"^admin_socket:[ \t]*['\"]?([^'\"#\n]*?)['\"]?[ \t]*(#.*)?$", text, re.MULTILINE)
    if not match or not match.group(1):
        return None
    return str(Path(path).parent / match.group(1))


def admin_client(args: argparse.Namespace) -> AdminClient:
    """Explicit servers mean TCP to that server; otherwise the admin socket."""
    if args.server:
        if len(args.server) > 1:
            raise ValueError(f"{args.command} takes one server")
        return AdminClient(server=args.server[0], port=args.port, prog=args.program, timeout=args.timeout)
    socket = args.socket or os.environ.get("DRACD_SOCKET")
    config = args.config or os.environ.get("DRACD_CONFIG")
    if not socket and config:
        socket = config_socket(config)
    return AdminClient(socket_path=socket or DEFAULT_SOCKET, prog=args.program, timeout=args.timeout)


def servers(args: argparse.Namespace) -> list[str]:
    if args.server:
        return list(args.server)
    return [s.strip() for s in os.environ.get("DRACD_SERVER", "localhost").split(",") if s.strip()]


class Output:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.status = EX_OK
        self.records: list[dict[str, Any]] = []

    def ok(self, text: str, **record: Any) -> None:
        if self.json:
            self.records.append(record)
        else:
            print(text)

    def fail(self, text: str, code: int, **record: Any) -> None:
        print(f"dracctl: {text}", file=sys.stderr)
        self.status = max(self.status, code)
        if self.json:
            self.records.append(record)

    def done(self, data: Any = None) -> int:
        if self.json:
            print(json.dumps(self.records if data is None else data, indent=2))
        return self.status


def local_time(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def targets(addresses: Sequence[str]) -> list[tuple[str, Target]]:
    """Every address (or network) parsed before anything is sent: one bad argument changes nothing."""
    return [(address, parse_target(address)) for address in addresses]


def cmd_add(args: argparse.Namespace, out: Output) -> None:
    # Networks and lifetimes exist only in the admin procedures; the DRAC ADD carries one host.
    if args.lifetime is not None or args.socket or any("/" in address for address in args.addresses):
        checked = targets(args.addresses)
        admin = admin_client(args)
        for address, target in checked:
            try:
                admin.add(target, args.lifetime or 0)
            except DracError as exc:
                out.fail(f"{address}: {exc}", exit_code(exc), address=address, ok=False, error=str(exc))
            else:
                out.ok(f"{address}: added", address=address, ok=True)
        return
    for address in args.addresses:
        add_address(address)
    hosts = servers(args)
    for address in args.addresses:
        try:
            results = add(address, servers=hosts, timeout=args.timeout, transport="tcp" if args.tcp else "udp",
                          port=args.port, prog=args.program)
        except DracError as exc:
            results = getattr(exc, "results", [ServerResult(hosts[0], exc)])
        for result in results:
            where = "" if len(hosts) == 1 else f" on {result.server}"
            record = {"address": address, "server": result.server, "ok": result.ok,
                      "error": None if result.error is None else str(result.error)}
            if result.error is None:
                out.ok(f"{address}: added{where}", **record)
            else:
                out.fail(f"{address}{where}: {result.error}", exit_code(result.error), **record)


def cmd_del(args: argparse.Namespace, out: Output) -> None:
    checked = targets(args.addresses)
    admin = admin_client(args)
    for address, target in checked:
        try:
            admin.delete(target)
        except DracError as exc:
            out.fail(f"{address}: {exc}", exit_code(exc), address=address, ok=False, error=str(exc))
        else:
            out.ok(f"{address}: deleted", address=address, ok=True)


def _order(entry: Entry) -> tuple[int, int, int]:
    """Hosts and networks together, by family then address (a network before its hosts)."""
    target = entry.address
    if isinstance(target, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return target.version, int(target.network_address), target.prefixlen
    return target.version, int(target), target.max_prefixlen


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    now = int(time.time())
    entries = sorted(admin_client(args).entries(), key=_order)
    if out.json:
        return out.done([{"address": str(e.address), "expiry": e.expiry, "expires": local_time(e.expiry),
                          "seconds_left": max(e.expiry - now, 0)} for e in entries])
    for entry in entries:
        print(f"{str(entry.address):<40} {local_time(entry.expiry):<24} {max(entry.expiry - now, 0):>8}")
    return EX_OK


def cmd_flush(args: argparse.Namespace, out: Output) -> int:
    removed = admin_client(args).flush()
    out.ok(f"flushed {removed} entries")
    return out.done({"removed": removed})


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    status = admin_client(args).status()
    data = {
        "entries": status.entries, "map_path": status.map_path, "map_type": status.map_type,
        "last_write": status.last_write or None, "last_write_ms": round(status.last_write_us / 1000, 3),
        "lifetime": status.lifetime, "started": status.started, "version": status.server_version,
        "counters": {counter.name: counter.value for counter in status.counters},
    }
    if out.json:
        return out.done(data)
    last = local_time(status.last_write) if status.last_write else "never"
    print(f"entries:     {status.entries}\nmap:         {status.map_type}:{status.map_path}\n"
          f"last write:  {last} ({data['last_write_ms']} ms)\nlifetime:    {status.lifetime} s\n"
          f"started:     {local_time(status.started)}\nversion:     dracd {status.server_version}")
    if status.counters:
        print("counters:    (durations in microseconds)")
        for counter in status.counters:
            print(f"  {counter.name} {counter.value}")
    return EX_OK


def cmd_ping(args: argparse.Namespace, out: Output) -> None:
    if args.socket:
        rtt = admin_client(args).ping()
        out.ok(f"{args.socket}: NULL answered in {rtt * 1000:.2f} ms", server=args.socket, rtt_ms=rtt * 1000)
        return
    for host in servers(args):
        try:
            rtt = ping(host, timeout=args.timeout, transport="tcp" if args.tcp else "udp", port=args.port,
                       prog=args.program)
        except DracError as exc:
            out.fail(str(exc), exit_code(exc), server=host, ok=False, error=str(exc))
        else:
            out.ok(f"{host}: NULL answered in {rtt * 1000:.2f} ms", server=host, ok=True, rtt_ms=rtt * 1000)


def cmd_check(args: argparse.Namespace, out: Output) -> int:
    expiry = admin_client(args).get(args.address)
    if expiry is None:
        out.status = EX_REFUSED
        out.ok(f"{args.address}: not authorized")
        return out.done({"address": args.address, "authorized": False})
    left = max(expiry - int(time.time()), 0)
    out.ok(f"{args.address}: authorized until {local_time(expiry)} ({left} s left)")
    return out.done({"address": args.address, "authorized": True, "expiry": expiry, "seconds_left": left})


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int | None]] = {
    "add": cmd_add, "del": cmd_del, "list": cmd_list, "flush": cmd_flush,
    "status": cmd_status, "ping": cmd_ping, "check": cmd_check,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return EX_OK if not exc.code else EX_USAGE
    out = Output(args.json)
    try:
        code = COMMANDS[args.command](args, out)
    except ValueError as exc:
        print(f"dracctl: {exc}", file=sys.stderr)
        return EX_USAGE
    except DracError as exc:
        print(f"dracctl: {exc}", file=sys.stderr)
        return exit_code(exc)
    return out.done() if code is None else code


if __name__ == "__main__":
    sys.exit(main())
