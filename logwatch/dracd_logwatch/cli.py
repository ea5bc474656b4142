"""``dracd-logwatch``: the command line.

``dracd-logwatch [-c FILE] [--file PATH]... [--preset NAME]...
[--admin-socket PATH | --server ADDR...] [--from-start] [--check-config]``

Options add to the YAML file (files, presets) or replace its value (target,
log level). SIGTERM and SIGINT stop cleanly (queued ADDs get a bounded
time to finish); SIGHUP reloads the configuration and reopens the files.
Exit codes follow sysexits: 64 usage, 69 syslog socket in use, 71 other
start-up failures, 78 configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import replace
from os import EX_CONFIG, EX_OK, EX_OSERR, EX_UNAVAILABLE, EX_USAGE  # sysexits.h
from pathlib import Path
from typing import Any

from dracclient import __version__
from dracclient.checks import LOG_LEVELS, ConfigError
from dracclient.notify import notify

from .config import FileSource, LogwatchConfig, load_config, validate
from .daemon import Watcher, make_target, trusted_networks
from .policy import MynetworksError
from .presets import PRESETS, RuleOptions
from .sources import SocketInUse
from .trust import forgery_warnings
from .values import servers

PROG = "dracd-logwatch"
log = logging.getLogger("dracd_logwatch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Follow mail logs and authorize the address of every successful POP3/IMAP "
                               "login with dracd (like pop-before-smtp).")
    parser.add_argument("-c", "--config", type=Path, help="YAML configuration file")
    parser.add_argument("--file", action="append", type=Path, default=[], metavar="PATH",
                        help="a syslog file to follow (repeatable)")
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS), default=[], metavar="NAME",
                        help=f"enable a preset (repeatable): {', '.join(PRESETS)}")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--admin-socket", metavar="PATH", help="send ADDs to dracd's admin socket")
    target.add_argument("--server", action="append", metavar="ADDR",
                        help="send ADDs with the DRAC protocol to this server (repeatable)")
    parser.add_argument("--port", type=int, metavar="N", help="the servers' port (default: ask rpcbind)")
    parser.add_argument("--from-start", action="store_true", default=None,
                        help="read the files from their start instead of their end")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="log verbosity (default info)")
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--program", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def resolve_config(args: argparse.Namespace) -> LogwatchConfig:
    """The YAML file (if any) with the command line on top, validated; raises ConfigError."""
    config = load_config(args.config)
    sources = config.sources
    known = {source.path for source in sources.files}
    files = sources.files + tuple(FileSource(path.absolute()) for path in args.file if path.absolute() not in known)
    sources = replace(sources, files=files, from_start=args.from_start or sources.from_start)
    configured = {name for name, _ in config.presets}
    presets = config.presets + tuple((name, RuleOptions()) for name in dict.fromkeys(args.preset)
                                     if name not in configured)
    target = config.target
    if args.admin_socket is not None:
        target = replace(target, admin_socket=Path(args.admin_socket).absolute(), servers=())
    elif args.server:
        try:
            target = replace(target, admin_socket=None, servers=servers(args.server))
        except ValueError as exc:
            raise ConfigError(f"command line: --server: {exc}") from None
    if args.port is not None:
        if not 0 < args.port < 65536:
            raise ConfigError(f"command line: --port {args.port}: expected 1..65535")
        target = replace(target, port=args.port)
    if args.program is not None:
        target = replace(target, program=args.program)
    config = replace(config, sources=sources, presets=presets, target=target,
                     log_level=args.log_level or config.log_level)
    return validate(config)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {PROG}[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def run(args: argparse.Namespace, config: LogwatchConfig) -> int:
    watcher = Watcher(config)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    reloading: set[asyncio.Task[None]] = set()
    one_at_a_time = asyncio.Lock()

    async def reload() -> None:
        async with one_at_a_time:
            try:
                new = resolve_config(args)
                await watcher.reload(new)
                logging.getLogger().setLevel(new.log_level.upper())
            except (ConfigError, MynetworksError, OSError) as exc:
                log.error("reload failed, keeping the running configuration: %s", exc)
            notify("READY=1")

    def on_hup() -> None:
        task = asyncio.create_task(reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await watcher.start()
    notify("READY=1")
    await stopping.wait()
    notify("STOPPING=1")
    log.info("stopping on signal")
    for task in list(reloading):
        await task
    await watcher.stop()
    return EX_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if not exc.code else EX_USAGE
    if args.config is not None:
        args.config = args.config.absolute()
    try:
        config = resolve_config(args)
        if args.check_config:
            return _check(config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(config.log_level)
    try:
        return asyncio.run(run(args, config))
    except MynetworksError as exc:
        log.error("%s: %s", config.source, exc)
        return EX_CONFIG
    except SocketInUse as exc:
        log.error("%s", exc)
        return EX_UNAVAILABLE
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EX_OSERR


def _check(config: LogwatchConfig) -> int:
    try:
        trusted = trusted_networks(config)
    except MynetworksError as exc:
        print(f"{PROG}: {config.source}: {exc}", file=sys.stderr)
        return EX_CONFIG
    sources: list[Any] = [f"{s.path} ({s.format})" for s in config.sources.files]
    if config.sources.syslog_socket:
        checked = config.sources.syslog_socket_executables
        sources.append(f"syslog socket {config.sources.syslog_socket}"
                       + (f" (senders running {', '.join(checked)})" if checked else ""))
    if config.sources.journald:
        sources.append("journald")
    rules = ", ".join(rule.name for rule in config.rules())
    target = make_target(config.target).describe()
    print(f"{config.source}: OK (reading {', '.join(sources)}; rules {rules}; {len(trusted)} trusted networks; "
          f"sending to {target})")
    for warning in forgery_warnings(config):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return EX_OK
