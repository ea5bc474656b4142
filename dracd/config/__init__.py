"""dracd's YAML configuration: typed, validated, every error names its key.

An empty file means all defaults. Relative paths are taken relative to
the directory of the config file, so a config can travel with its data.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dracclient.checks import LOG_LEVELS as LOG_LEVELS
from dracclient.checks import ConfigError as ConfigError
from dracclient.checks import (
    SubkeyError,
    boolean,
    choice,
    convert,
    expect,
    int_range,
    networks,
    read_yaml,
    resolve,
    string,
)
from dracclient.drac import DRACPROG

from ..keys import Ipv6Keys
from .hostpaths import default_map, find_allow
from .values import (
    auto_boolean,
    cli_int,
    duration,
    group_ids,
    host_ports,
    listen_addresses,
    metrics_address,
    optional_path,
    parse_listen,
    parse_metrics_listen,
    parse_redis_url,
    parse_spec,
    redis_prefix,
    relative_path,
    relative_specs,
    seconds,
    socketmap_specs,
    udp_sources,
)

DEFAULT_ADMIN_SOCKET = Path("/run/dracd/dracd.sock")
DEFAULT_LIFETIME = 30 * 60
#: auto: uvloop when it is installed (the uvloop extra), else asyncio's own loop.
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
#: Berkeley DB access methods a map may use.
MAP_TYPES = ("btree", "hash")


@dataclass(frozen=True)
class DovecotPolicyConfig:
    """Dovecot's authentication policy server (auth_policy_server_url): where it listens,
    ``inet:HOST:PORT`` or ``unix:PATH``, and the file holding the Bearer secret that
    Dovecot sends (auth_policy_server_api_header); None: given on the command line alone."""

    listen: str
    secret_file: Path | None = None


def _subkeys(section: str, value: dict[Any, Any], known: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """A section's keys parsed by ``known``; errors name ``section.KEY`` (see config_from_dict)."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            raise SubkeyError(f"{section}.{key}",
                              f"unknown key (known: {', '.join(f'{section}.{k}' for k in known)})")
        try:
            out[key] = known[key](item)
        except ValueError as exc:
            raise SubkeyError(f"{section}.{key}", str(exc)) from None
    return out


def _dovecot_policy(value: Any) -> DovecotPolicyConfig | None:
    """The ``dovecot_policy`` section (None: off). Its errors name ``dovecot_policy.KEY``."""
    if value is None:
        return None
    expect("a mapping with listen: and secret_file:, or null", isinstance(value, dict), value)
    known: dict[str, Callable[[Any], Any]] = {
        "listen": lambda v: str(parse_spec(string(v))), "secret_file": lambda v: Path(string(v))}
    out = _subkeys("dovecot_policy", value, known)
    for key in known:
        if key not in out:
            raise SubkeyError(f"dovecot_policy.{key}", "required")
    return DovecotPolicyConfig(**out)


def _relative_policy(value: DovecotPolicyConfig | str, base: Path) -> DovecotPolicyConfig | str:
    if isinstance(value, str):  # --dovecot-policy SPEC
        return relative_specs((value,), base)[0]
    listen = relative_specs((value.listen,), base)[0]
    secret = None if value.secret_file is None else resolve(base, str(value.secret_file))
    return DovecotPolicyConfig(listen, secret)


def _dovecot_policy_option(config: Config, listen: str) -> Config:
    # The address from the command line; the secret file from the config file.
    base = config.dovecot_policy
    return replace(config, dovecot_policy=DovecotPolicyConfig(listen, base.secret_file if base else None))


@dataclass(frozen=True)
class MapConfig:
    #: Computed when a config is made, not at import: /etc/drac's or /etc/mail's (hostpaths).
    path: Path = field(default_factory=default_map)
    type: str = "btree"
    nul_terminated: bool = False
    cidr_keys: bool = False
    ipv6_keys: Ipv6Keys = Ipv6Keys.POSTFIX
    #: Like Sendmail's DontBlameSendmail=MapInUnsafeDirPath: accept a map whose
    #: directory (or an ancestor) others may write to without the sticky bit.
    allow_unsafe_directory: bool = False


@dataclass(frozen=True)
class RedisConfig:
    """The shared table: exactly one of ``url``, ``sentinels`` (with ``service``) or ``cluster``."""

    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    cluster: tuple[tuple[str, int], ...] = ()
    #: Database number for Sentinel (a URL names its own; a cluster has only 0).
    db: int = 0
    password: str | None = None
    prefix: str = "dracd:"
    #: Seconds to wait for Redis before an ADD answers ADD_SYSERR.
    timeout: float = 1.0

    @property
    def mode(self) -> str:
        return "url" if self.url else "sentinel" if self.sentinels else "cluster"


#: Config.source when dracd runs without -c (messages start with the source).
NO_CONFIG_FILE = "no config file (-c): defaults and the command line"


@dataclass(frozen=True)
class Config:
    map: MapConfig = field(default_factory=MapConfig)
    lifetime: int = DEFAULT_LIFETIME
    #: None: the first found of ``dracd.allow`` next to the map, in /etc/drac, in /etc/mail
    #: (hostpaths); none: the legacy default.
    allow_file: Path | None = None
    initialize: bool = False
    listen: tuple[str, ...] = ("0.0.0.0", "::")
    port: int = 0
    rpcbind: bool = True
    #: For tests and private deployments that must not collide with a real dracd.
    program: int = DRACPROG
    log_level: str = "info"
    #: None: syslog for the forking rpc.dracd, stderr for dracd; True/False forces it.
    syslog: bool | None = None
    #: None: no admin socket.
    admin_socket: Path | None = DEFAULT_ADMIN_SOCKET
    admin_groups: tuple[int, ...] = ()
    admin_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: UDP sources can be forged: None accepts any (legacy), else only these networks.
    udp_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    max_entries: int = 1_000_000
    rate_per_caller: int = 0
    #: Run as this user (and group) once bound and registered; None: stay as started.
    user: str | None = None
    group: str | None = None
    max_connections: int = 256
    max_record: int = 64 * 1024
    idle_timeout: int = 120
    record_timeout: int = 10
    #: ADDR:PORT of the Prometheus endpoint (needs the metrics extra); None: off.
    metrics_listen: str | None = None
    #: socketmap endpoints, ``inet:ADDR:PORT`` or ``unix:PATH``; empty: none.
    socketmap: tuple[str, ...] = ()
    #: The shared table in Redis; None: this dracd's table is its own.
    redis: RedisConfig | None = None
    #: Dovecot's auth policy client reports logins here; None: off.
    dovecot_policy: DovecotPolicyConfig | None = None
    #: One of EVENT_LOOPS.
    event_loop: str = "auto"
    #: hosts_access(5) for daemon dracd too; None: auto, on in the Debian layout (wrappers.decide).
    tcp_wrappers: bool | None = None
    #: Where the serving process writes its pid once it serves (for init scripts); None: none.
    pidfile: Path | None = None
    #: Where the settings come from: the file, or no file at all.
    source: str = NO_CONFIG_FILE

    @property
    def allow_path(self) -> Path | None:
        """The allow file to read, looked for now; None: none configured or found (the legacy default)."""
        return find_allow(self.allow_file, self.map.path)


_REDIS_KEYS: dict[str, Any] = {
    "url": lambda v: parse_redis_url(string(v)),
    "sentinels": host_ports,
    "service": string,
    "cluster": host_ports,
    "db": int_range(0, 1_000_000),
    "password": string,
    "prefix": lambda v: redis_prefix(string(v)),
    "timeout": seconds,
}


def _redis(value: Any) -> RedisConfig | None:
    """The ``redis`` section (None: off). Its own errors name ``redis.KEY`` (see config_from_dict)."""
    if value is None:
        return None
    expect("a mapping (url:, sentinels: with service:, or cluster:) or null", isinstance(value, dict), value)
    out = _subkeys("redis", value, _REDIS_KEYS)
    given = [key for key in ("url", "sentinels", "cluster") if key in out]
    if len(given) != 1:
        raise ValueError("give exactly one of redis.url, redis.sentinels (with redis.service) or redis.cluster")
    if ("sentinels" in out) != ("service" in out):
        raise ValueError("redis.sentinels and redis.service go together")
    if "cluster" in out and out.get("db", 0) != 0:
        raise SubkeyError("redis.db", "a Redis Cluster has only database 0")
    return RedisConfig(**out)


@dataclass(frozen=True)
class Option:
    """How a key is also given on dracd's command line (it then wins over the file)."""

    flag: str
    help: str
    #: value (--flag VALUE), append (repeatable), on (--flag sets true), off (--flag sets false).
    kind: str = "value"
    #: The option's text -> the value; None: the key's own parser, on the text.
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    hidden: bool = False
    #: Set the value into a config itself (for a value that replaces more than one field).
    apply: Callable[[Config, Any], Config] | None = None


@dataclass(frozen=True)
class Key:
    """One configuration key, declared once. The YAML loader, the command line,
    SIGHUP (what it may change) and the documentation tests all read this table."""

    #: As written in YAML; "map.path" inside the map section, "redis" for the whole section.
    name: str
    #: A YAML value -> the typed value; ValueError (or SubkeyError) says what was expected.
    parse: Callable[[Any], Any]
    #: The Config (or MapConfig) attribute, when it is not the name.
    attribute: str = ""
    option: Option | None = None
    #: SIGHUP applies a new value; a change to any other key is logged as needing a restart.
    reloadable: bool = False
    #: Paths in the value are taken relative to the config file (the current directory on the command line).
    resolve: Callable[[Any, Path], Any] | None = None

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0] if "." in self.name else ""

    @property
    def field(self) -> str:
        return self.attribute or self.name.rsplit(".", 1)[-1]

    def get(self, config: Config) -> Any:
        return getattr(config.map if self.section == "map" else config, self.field)


def _redis_url_option(config: Config, url: str) -> Config:
    # A URL names one server: it replaces Sentinel or Cluster addresses from the file.
    base = config.redis or RedisConfig()
    return replace(config, redis=replace(base, url=url, sentinels=(), service=None, cluster=(), db=0))


KEYS: tuple[Key, ...] = (
    Key("map.path", string, resolve=relative_path),
    Key("map.type", choice(MAP_TYPES), option=Option("--map-type", "Berkeley DB map type", choices=MAP_TYPES)),
    Key("map.nul_terminated", boolean),
    Key("map.cidr_keys", boolean),
    Key("map.ipv6_keys", lambda v: Ipv6Keys(choice(tuple(Ipv6Keys))(v))),
    Key("map.allow_unsafe_directory", boolean),
    Key("lifetime", duration, reloadable=True,
        option=Option("--lifetime", "entry lifetime, e.g. 90s, 30m", metavar="DURATION")),
    Key("allow_file", string, reloadable=True, resolve=relative_path,
        option=Option("--allow", "allow file", metavar="FILE")),
    Key("initialize", boolean),
    Key("listen", listen_addresses, option=Option(
        "--listen", "address to listen on (repeatable; default all IPv4 and IPv6)", kind="append",
        parse=parse_listen, metavar="ADDR")),
    Key("port", int_range(0, 65535), option=Option(
        "--port", "port for UDP and TCP (0 = any free port)", parse=cli_int(int_range(0, 65535)), metavar="N")),
    Key("rpcbind", boolean, option=Option("--no-rpcbind", "do not register with rpcbind", kind="off")),
    Key("program", int_range(1, 0xFFFFFFFF), option=Option(
        "--program", "", parse=cli_int(int_range(1, 0xFFFFFFFF)), hidden=True)),
    Key("log_level", choice(LOG_LEVELS), reloadable=True,
        option=Option("--log-level", "log verbosity (default info)", choices=LOG_LEVELS)),
    Key("syslog", boolean, option=Option(
        "--syslog", "log to syslog, facility mail (default: rpc.dracd yes, dracd stderr)", kind="on")),
    Key("admin_socket", optional_path, resolve=relative_path, option=Option(
        "--admin-socket", "UNIX socket for dracctl (default /run/dracd/dracd.sock; '' disables it)",
        parse=str, metavar="PATH")),
    Key("admin_group", group_ids, attribute="admin_groups", reloadable=True),
    Key("admin_allow", networks, reloadable=True),
    Key("udp_from", udp_sources, reloadable=True),
    Key("max_entries", int_range(1, 100_000_000), reloadable=True),
    Key("rate_per_caller", int_range(0, 1_000_000), reloadable=True),
    Key("tcp_wrappers", auto_boolean, reloadable=True),
    Key("user", string, option=Option("--user", "run as USER once bound and registered (needs root)", metavar="USER")),
    Key("group", string, option=Option("--group", "with --user: run with this group", metavar="GROUP")),
    Key("max_connections", int_range(1, 65_536)),
    Key("max_record", int_range(1024, 16 * 1024 * 1024)),
    Key("idle_timeout", duration),
    Key("record_timeout", duration),
    Key("metrics_listen", metrics_address, option=Option(
        "--metrics-listen", "serve Prometheus metrics there (needs the metrics extra; default off)",
        parse=parse_metrics_listen, metavar="ADDR:PORT")),
    Key("socketmap", socketmap_specs, resolve=relative_specs, option=Option(
        "--socketmap", "answer socketmap lookups on inet:ADDR:PORT or unix:PATH (repeatable; default none)",
        kind="append", parse=lambda text: str(parse_spec(text)), metavar="SPEC")),
    Key("redis", _redis, option=Option(
        "--redis", "share the table with other dracd hosts through Redis at redis://HOST:PORT/DB "
        "(needs the redis extra; overrides redis: in the config)", parse=parse_redis_url, metavar="URL",
        apply=_redis_url_option)),
    Key("dovecot_policy", _dovecot_policy, resolve=_relative_policy, option=Option(
        "--dovecot-policy", "be Dovecot's auth policy server on inet:ADDR:PORT or unix:PATH "
        "(dovecot_policy.secret_file: from the config; default off)",
        parse=lambda text: str(parse_spec(text)), metavar="SPEC", apply=_dovecot_policy_option)),
    Key("event_loop", choice(EVENT_LOOPS), option=Option(
        "--event-loop", "asyncio's loop or uvloop (the uvloop extra); auto: uvloop if installed (default)",
        choices=EVENT_LOOPS)),
    Key("pidfile", optional_path, resolve=relative_path, option=Option(
        "--pidfile", "write the serving process's pid there, e.g. /run/rpc.dracd.pid (default none)",
        parse=str, metavar="PATH")),
)
#: The keys of each section, by the name written there.
SECTIONS: dict[str, dict[str, Key]] = {
    section: {key.name.rsplit(".", 1)[-1]: key for key in KEYS if key.section == section}
    for section in ("", "map")
}
REDIS_KEYS = tuple(_REDIS_KEYS)


def _section(section: dict[str, Any], prefix: str, source: str, base: Path) -> dict[str, Any]:
    """The typed values of one section of dracd's config, by attribute, paths resolved."""
    keys = SECTIONS[prefix.rstrip(".")]
    values = convert(section, {name: key.parse for name, key in keys.items()}, prefix, source)
    out = {}
    for name, value in values.items():
        key = keys[name]
        out[key.field] = value if key.resolve is None or value is None else key.resolve(value, base)
    return out


def load_config(path: Path | None) -> Config:
    """The configuration in ``path`` (defaults when None); raises ConfigError."""
    if path is None:
        return Config()
    return config_from_dict(read_yaml(path), path)


def config_from_dict(data: Any, path: Path) -> Config:
    source = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    data = dict(data)
    map_section = data.pop("map", None) or {}
    if not isinstance(map_section, dict):
        raise ConfigError(f"{source}: key 'map': expected a mapping")
    map_values = _section(map_section, "map.", source, path.parent)
    top = _section(data, "", source, path.parent)
    return Config(map=MapConfig(**map_values), source=source, **top)


def add_options(parser: argparse.ArgumentParser) -> None:
    """One command-line option per key that declares one."""
    for key in KEYS:
        option = key.option
        if option is None:
            continue
        help_text = argparse.SUPPRESS if option.hidden else option.help
        if option.kind in ("on", "off"):
            parser.add_argument(option.flag, dest=key.name, action="store_true" if option.kind == "on"
                                else "store_false", default=None, help=help_text)
            continue
        parse = option.parse or key.parse
        if option.choices is not None:
            parser.add_argument(option.flag, dest=key.name, choices=option.choices, help=help_text)
        else:
            parser.add_argument(option.flag, dest=key.name, type=_argument(parse), help=help_text,
                                metavar=option.metavar, action="append" if option.kind == "append" else "store")


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def apply_options(config: Config, args: argparse.Namespace, cwd: Path) -> Config:
    """``config`` with every option given on the command line on top."""
    for key in KEYS:
        option = key.option
        if option is None or (value := getattr(args, key.name, None)) is None:
            continue
        if option.kind == "append":
            value = tuple(value)
        if value == "":
            value = None  # --admin-socket '': none
        elif key.resolve is not None:
            value = key.resolve(value, cwd)
        config = option.apply(config, value) if option.apply is not None else set_value(config, key, value)
    return config


def set_value(config: Config, key: Key, value: Any) -> Config:
    if key.section == "map":
        return replace(config, map=replace(config.map, **{key.field: value}))
    return replace(config, **{key.field: value})


def needs_restart(old: Config, new: Config) -> list[str]:
    """The keys whose change SIGHUP cannot apply (logged; a restart applies them)."""
    return [key.name for key in KEYS if not key.reloadable and key.get(old) != key.get(new)]
