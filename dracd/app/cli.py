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
from dataclasses import replace
from pathlib import Path
from typing import Any

from dracclient import notify as sd
from dracclient.cli import Parser

from .. import __version__
from ..config import Config, ConfigError, add_options, apply_options, load_config
from ..publish.maps import MapError
from ..server.registration import AlreadyRegistered
from ..server.transport import AdminSocketInUse
from .assemble import event_loop
from .daemon import Daemon, MapInUse, unsafe_map_directory
from .privileges import PrivilegeError
from .process import Pidfile, PidfileError, show_name

log = logging.getLogger("dracd")

EX_OK = 0
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_OSERR = 71
EX_CANTCREAT = 73
EX_CONFIG = 78


def _minutes(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of minutes")
    return int(text) * 60


def build_parser(prog: str = "dracd") -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog, description="Dynamic Relay Authorization Control server (drop-in for rpc.dracd)."
    )
    parser.add_argument("dbfile", nargs="?", type=Path,
                        help="map file (default /etc/drac/dracd.db if /etc/drac exists, else /etc/mail/dracd.db)")
    parser.add_argument("-i", dest="initialize", action="store_true", default=None,
                        help="start with an empty table instead of reloading the map")
    parser.add_argument("-e", dest="expire_minutes", type=_minutes, metavar="MINUTES",
                        help="entry lifetime in minutes (legacy; default 30)")
    parser.add_argument("-c", "--config", type=Path, help="YAML configuration file")
    add_options(parser)
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    """The YAML file (if any) with the command line on top; raises ConfigError."""
    if args.expire_minutes is not None and args.lifetime is not None:
        raise ConfigError("command line: give -e or --lifetime, not both")
    # Relative paths on the command line mean what they meant at start, also on a
    # SIGHUP after rpc.dracd changed to "/".
    cwd = getattr(args, "cwd", None) or Path.cwd()
    config = apply_options(load_config(args.config), args, cwd)
    # The legacy command line: rpc.dracd [-i] [-e minutes] [dbfile].
    if args.dbfile is not None:
        config = replace(config, map=replace(config.map, path=cwd / args.dbfile))
    if args.initialize:
        config = replace(config, initialize=True)
    if args.expire_minutes is not None:
        config = replace(config, lifetime=args.expire_minutes)
    return config


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
    # At info every ADD is a line (issue 21: logging was the biggest cost of a lone ADD after
    # the flush): skip what the formats above never show, the caller's file and line (a
    # stack walk per record), the thread and the multiprocessing names (the logging
    # HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


async def run(args: argparse.Namespace, config: Config, on_ready: Any = None,
              pidfile: Pidfile | None = None) -> int:
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
            daemon.reload(resolve_config(args))
            logging.getLogger().setLevel(daemon.config.log_level.upper())
        except (ConfigError, OSError) as exc:
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
        if pidfile is not None:  # before the parent of rpc.dracd exits: start-stop-daemon reads it next
            pidfile.write()
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
    args.cwd = Path.cwd()
    if args.config is not None:
        args.config = args.config.absolute()
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
    try:  # as root, before `user:`, in the serving process (after the fork)
        pidfile = None if config.pidfile is None else Pidfile(config.pidfile)
    except PidfileError as exc:
        log.error("%s", exc)
        return EX_CANTCREAT
    log.info("event loop: %s", loop_name)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(run(args, config, on_ready, pidfile))
    except ConfigError as exc:
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
    finally:
        if pidfile is not None:  # stopped, or never started
            pidfile.remove()


def map_directory_problem(config: Config) -> str | None:
    """What keeps dracd from writing its map (and the journal and lock beside it), or None.
    Checked as the user running the check; with ``user:``, dracd checks again once it runs as that user."""
    path = config.map.path
    directory = path.parent
    if not directory.exists():
        return f"map {path}: directory {directory} does not exist"
    if not directory.is_dir():
        return f"map {path}: {directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"map {path}: directory {directory} is not writable"
    return unsafe_map_directory(config)


def _check(prog: str, config: Config) -> int:
    from ..config.hostpaths import allow_reason, map_reason
    from ..relay.policy import load_allow
    from ..server.wrappers import from_setting as wrappers_from
    from ..server.wrappers import name_patterns

    problem = map_directory_problem(config)
    if problem is None and config.pidfile is not None and not config.pidfile.parent.is_dir():
        problem = f"pidfile {config.pidfile}: directory {config.pidfile.parent} does not exist"
    if problem is not None:
        print(f"{prog}: {config.source}: {problem}", file=sys.stderr)
        return EX_CONFIG
    try:
        allow = load_allow(config.allow_path, quiet=True)
    except OSError as exc:
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
            from ..relay.shared import require as require_redis

            require_redis()
        wrappers, wrappers_reason = wrappers_from(config.tcp_wrappers)  # loads libwrap when on
        if config.dovecot_policy is not None:
            from ..programs.dovecot import check_config as check_dovecot

            print(check_dovecot(config.dovecot_policy))
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EX_CONFIG
    print(f"map {config.map.path}: {map_reason(config.map.path)}")
    print(allow_reason(config.allow_file, config.map.path))
    print(wrappers_reason)
    problems = [*allow.problems, *(name_patterns() if wrappers is not None else ())]
    for problem in problems[len(allow.problems):]:
        print(f"{prog}: warning: {problem}", file=sys.stderr)
    print(f"{config.source}: OK (map {config.map.path}, allow list {allow.source}, lifetime {config.lifetime} s, "
          f"event loop {loop_name})" + (f", {len(problems)} warning(s)" if problems else ""))
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
    """Entry point of ``rpc.dracd``: named so that pidof, pgrep -x and start-stop-daemon --name find it."""
    show_name("rpc.dracd")
    return main(prog="rpc.dracd", background=True)


def console_main() -> int:
    show_name("dracd")
    return main()
