"""dracctl: talk to a DRAC server from the command line."""

from __future__ import annotations

import argparse
import sys

from .client import add
from .drac import DRACPROG
from .errors import DracError, PermissionRefused, RpcTimeout, ServerError, Unavailable

EX_OK = 0
EX_REFUSED = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dracctl", description="Control a DRAC server (dracd or rpc.dracd).")
    parser.add_argument("-s", "--server", default="localhost", help="server host (default: localhost)")
    parser.add_argument("-p", "--port", type=int, help="server port (default: ask rpcbind)")
    parser.add_argument("--tcp", action="store_true", help="use TCP instead of UDP")
    parser.add_argument("-t", "--timeout", type=float, default=5.0, help="seconds for the whole call")
    parser.add_argument("--program", type=int, default=DRACPROG, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    add_cmd = sub.add_parser("add", help="authorize addresses for relaying")
    add_cmd.add_argument("addresses", nargs="+", metavar="ADDRESS")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return EX_USAGE if exc.code else EX_OK
    server = "127.0.0.1" if args.server == "localhost" else args.server
    status = EX_OK
    for address in args.addresses:
        try:
            add(server, address, timeout=args.timeout, transport="tcp" if args.tcp else "udp",
                port=args.port, prog=args.program)
        except ValueError as exc:
            print(f"dracctl: {exc}", file=sys.stderr)
            return EX_USAGE
        except (PermissionRefused, ServerError) as exc:
            print(f"dracctl: {address}: {exc}", file=sys.stderr)
            status = max(status, EX_REFUSED)
        except (Unavailable, RpcTimeout) as exc:
            print(f"dracctl: {address}: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE
        except DracError as exc:
            print(f"dracctl: {address}: {exc}", file=sys.stderr)
            return EX_SOFTWARE
        else:
            print(f"{address}: added")
    return status


if __name__ == "__main__":
    sys.exit(main())
