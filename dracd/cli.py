"""dracd and rpc.dracd command lines.

``dracd [-i] [-e MINUTES] [DBFILE]`` is the legacy rpc.dracd command line;
everything new is a long option mirroring a key of the YAML config.
``rpc.dracd`` forks into the background like the original.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from dracclient.durations import parse_duration

from . import __version__
from . import notify as sd
from .config import (
    EVENT_LOOPS,
    LOG_LEVELS,
    Config,
    ConfigError,
    RedisConfig,
    load_config,
    override,
    parse_listen,
    parse_metrics_listen,
    parse_redis_url,
)
from .daemon import Daemon, MapInUse
from .maps import BERKELEY_TYPES, MapError
from .policy import AllowFileError
from .privileges import PrivilegeError
from .registration import AlreadyRegistered
from .socketmap import parse_spec
from .transport import AdminSocketInUse

log = logging.getLogger("dracd")

EX_OK = 0
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_OSERR = 71
EX_CANTCREAT = 73
EX_CONFIG = 78


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen(text: str) -> str:
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _metrics_listen(text: str) -> str:
    try:
        return parse_metrics_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _socketmap(text: str) -> str:
    try:
        spec = parse_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return f"unix:{spec.path.absolute()}" if spec.path is not None else str(spec)


def _redis_url(text: str) -> str:
    try:
        return parse_redis_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _minutes(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of minutes")
    return int(text) * 60


def build_parser(prog: str = "dracd") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Dynamic Relay Authorization Control server (drop-in for rpc.dracd)."
    )
    parser.add_argument("dbfile", nargs="?", type=Path, help="map file (default /etc/mail/dracd.db)")
    parser.add_argument("-i", dest="initialize", action="store_true", default=None,
                        help="start with an empty table instead of reloading the map")
    parser.add_argument("-e", dest="expire_minutes", type=_minutes, metavar="MINUTES",
                        help="entry lifetime in minutes (legacy; default 30)")
    parser.add_argument("-c", "--config", type=Path, help="YAML configuration file")
    parser.add_argument("--lifetime", type=_duration, metavar="DURATION", help="entry lifetime, e.g. 90s, 30m")
    parser.add_argument("--allow", dest="allow_file", type=Path, metavar="FILE", help="allow file")
    parser.add_argument("--listen", action="append", type=_listen, metavar="ADDR",
                        help="address to listen on (repeatable; default all IPv4 and IPv6)")
    parser.add_argument("--port", type=int, metavar="N", help="port for UDP and TCP (0 = any free port)")
    parser.add_argument("--map-type", dest="type", choices=BERKELEY_TYPES, help="Berkeley DB map type")
    parser.add_argument("--no-rpcbind", dest="rpcbind", action="store_false", default=None,
                        help="do not register with rpcbind")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="log verbosity (default info)")
    parser.add_argument("--syslog", action="store_true", default=None,
                        help="log to syslog, facility mail (default: rpc.dracd yes, dracd stderr)")
    parser.add_argument("--user", metavar="USER", help="run as USER once bound and registered (needs root)")
    parser.add_argument("--group", metavar="GROUP", help="with --user: run with this group")
    parser.add_argument("--admin-socket", metavar="PATH",
                        help="UNIX socket for dracctl (default /run/dracd/dracd.sock; '' disables it)")
    parser.add_argument("--metrics-listen", type=_metrics_listen, metavar="ADDR:PORT",
                        help="serve Prometheus metrics there (needs the metrics extra; default off)")
    parser.add_argument("--socketmap", action="append", type=_socketmap, metavar="SPEC",
                        help="answer socketmap lookups on inet:ADDR:PORT or unix:PATH (repeatable; default none)")
    parser.add_argument("--redis", type=_redis_url, metavar="URL",
                        help="share the table with other dracd hosts through Redis at redis://HOST:PORT/DB "
                             "(needs the redis extra; overrides redis: in the config)")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS,
                        help="asyncio's loop or uvloop (the uvloop extra); auto: uvloop if installed (default)")
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--program", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    """The YAML file (if any) with the command line on top; raises ConfigError."""
    if args.expire_minutes is not None and args.lifetime is not None:
        raise ConfigError("command line: give -e or --lifetime, not both")
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"command line: --port {args.port}: expected 0..65535")
    config = load_config(args.config)
    changes: dict[str, Any] = {
        "path": args.dbfile.absolute() if args.dbfile else None,
        "type": args.type,
        "initialize": args.initialize,
        "lifetime": args.lifetime if args.lifetime is not None else args.expire_minutes,
        "allow_file": args.allow_file.absolute() if args.allow_file else None,
        "listen": tuple(args.listen) if args.listen else None,
        "port": args.port,
        "rpcbind": args.rpcbind,
        "program": args.program,
        "log_level": args.log_level,
        "user": args.user,
        "syslog": args.syslog,
        "group": args.group,
        "metrics_listen": args.metrics_listen,
        "socketmap": tuple(args.socketmap) if args.socketmap else None,
        "event_loop": args.event_loop,
    }
    config = override(config, **changes)
    if args.redis is not None:
        # A URL names one server: it replaces Sentinel or Cluster addresses from the file.
        base = config.redis or RedisConfig()
        config = replace(config, redis=replace(base, url=args.redis, sentinels=(), service=None, cluster=(), db=0))
    if args.admin_socket is not None:
        config = replace(config, admin_socket=Path(args.admin_socket).absolute() if args.admin_socket else None)
    return config


def event_loop(config: Config) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The event loop ``event_loop`` asks for: its name and factory. uvloop when asked for
    (ConfigError if it is not installed) or, with auto, when it is installed."""
    if config.event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if config.event_loop == "uvloop":
                raise ConfigError(f"{config.source}: key 'event_loop': uvloop is not installed: "
                                  "pip install 'dracd[uvloop]'") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def setup_logging(level: str, *, syslog: bool = False, address: str = "/dev/log") -> None:
    """stderr (journald picks it up under systemd), or syslog facility mail,
    where mail administrators look, when asked or for the forking rpc.dracd."""
    handler: logging.Handler
    if syslog and os.path.exists(address):
        handler = logging.handlers.SysLogHandler(address, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        handler.setFormatter(logging.Formatter("dracd[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s dracd[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def run(args: argparse.Namespace, config: Config, on_ready: Any = None) -> int:
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    # STATUS= goes in a datagram of its own, before READY=1: tests (and tools) that
    # look for the bare "READY=1" datagram keep matching.
    def status() -> str:
        return f"STATUS=serving {len(daemon.table)} entries, map {daemon.config.map.path}"

    started = False

    def reload() -> None:
        # A SIGHUP during start-up reloads too, but READY=1 must wait for ready().
        if started:
            sd.reloading()
        try:
            new = resolve_config(args)
            if new.event_loop != daemon.config.event_loop:
                log.warning("reload: event_loop changed; restart dracd to apply")
            daemon.reload(new)
            logging.getLogger().setLevel(new.log_level.upper())
        except (ConfigError, AllowFileError, OSError) as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            if started:
                sd.notify(f"STATUS=reload failed, running the previous configuration: {exc}")
                sd.notify("READY=1")
            return
        if started:
            sd.notify(status())
            sd.notify("READY=1")

    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload)

    def ready() -> None:
        nonlocal started
        started = True
        # Map written, sockets bound, rpcbind registration done (Daemon.start's order).
        sd.notify(status())
        sd.notify("READY=1")
        if on_ready is not None:
            on_ready()

    # Connected now, as root: READY=1 comes after `user:` dropped privileges.
    sd.connect()
    await daemon.start(ready)
    await stopping.wait()
    sd.notify("STOPPING=1")
    log.info("stopping on signal")
    await daemon.stop()
    return EX_OK


def main(argv: list[str] | None = None, *, prog: str = "dracd", background: bool = False) -> int:
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if not exc.code else EX_USAGE
    # SIGHUP resolves the command line again, after rpc.dracd changed to "/":
    # relative paths must keep meaning what they meant at start.
    for name in ("dbfile", "config", "allow_file"):
        value = getattr(args, name)
        if value is not None:
            setattr(args, name, value.absolute())
    if args.admin_socket:
        args.admin_socket = str(Path(args.admin_socket).absolute())
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.check_config:
        return _check(prog, config)
    try:
        loop_name, loop_factory = event_loop(config)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(config.log_level, syslog=background if config.syslog is None else config.syslog)
    on_ready = _daemonize() if background else None
    log.info("event loop: %s", loop_name)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(run(args, config, on_ready))
    except (ConfigError, AllowFileError) as exc:
        log.error("%s", exc)
        return EX_CONFIG
    except MapError as exc:
        log.error("%s", exc)
        return EX_CANTCREAT
    except (AlreadyRegistered, MapInUse, AdminSocketInUse, PrivilegeError) as exc:
        log.error("%s", exc)
        return EX_UNAVAILABLE
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EX_OSERR


def _check(prog: str, config: Config) -> int:
    from .policy import load_allow

    try:
        allow = load_allow(config.allow_path, config.allow_file is not None, quiet=True)
    except (AllowFileError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EX_CONFIG
    for problem in allow.problems:  # legal, as in DRAC, but surely not what was meant
        print(f"{prog}: warning: {problem}", file=sys.stderr)
    try:  # the optional extras the config needs (each error names the one to install)
        loop_name, _ = event_loop(config)
        if config.metrics_listen is not None:
            from .prometheus import require as require_metrics

            require_metrics()
        if config.redis is not None:
            from .shared import require as require_redis

            require_redis()
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EX_CONFIG
    print(f"{config.source}: OK (map {config.map.path}, allow list {allow.source}, lifetime {config.lifetime} s, "
          f"event loop {loop_name})" + (f", {len(allow.problems)} warning(s)" if allow.problems else ""))
    return EX_OK


def _daemonize() -> Any:
    """Fork like the original: the parent exits once the child serves (or failed)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child > 0:
        os.close(write_end)
        if os.read(read_end, 1) == b"0":
            os._exit(EX_OK)
        # The child failed to start and exited (the pipe closed with it): pass
        # on its own status (69 program taken, 73 map, 78 config, ...).
        code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        os._exit(code if code > 0 else EX_OSERR)
    os.close(read_end)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    # stdout is never used: closing it lets `$(rpc.dracd ...)` return. Without
    # syslog, stderr stays the only place the log can go.
    os.dup2(devnull, 1)
    if any(isinstance(h, logging.handlers.SysLogHandler) for h in logging.getLogger().handlers):
        os.dup2(devnull, 2)

    def ready() -> None:
        os.write(write_end, b"0")
        os.close(write_end)

    return ready


def legacy_main() -> int:
    """Entry point of ``rpc.dracd``."""
    return main(prog="rpc.dracd", background=True)


def console_main() -> int:
    return main()
