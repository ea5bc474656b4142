"""dracd's YAML configuration: typed, validated, every error names its key.

An empty file means all defaults. Relative paths are taken relative to
the directory of the config file, so a config can travel with its data.
"""

from __future__ import annotations

import argparse
import grp
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
from dracclient.durations import parse_duration

from ..keys import Ipv6Keys
from .hostpaths import default_map, find_allow

DEFAULT_ADMIN_SOCKET = Path("/run/dracd/dracd.sock")
DEFAULT_LIFETIME = 30 * 60
#: auto: uvloop when it is installed (the uvloop extra), else asyncio's own loop.
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
#: Berkeley DB access methods a map may use.
MAP_TYPES = ("btree", "hash")


def parse_listen(text: str) -> str:
    """A listen address: an IPv4 or IPv6 literal (brackets allowed)."""
    return str(ipaddress.ip_address(text.strip().strip("[]")))


def parse_metrics_listen(text: str) -> str:
    """``ADDR:PORT`` for the Prometheus endpoint, IPv6 in brackets: ``[::1]:9150``."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{text!r}: expected ADDR:PORT, e.g. 127.0.0.1:9150")
    address = ipaddress.ip_address(host.strip("[]"))
    return f"[{address}]:{int(port)}" if address.version == 6 else f"{address}:{int(port)}"


@dataclass(frozen=True)
class SocketmapSpec:
    """Where to serve socketmap: ``inet:HOST:PORT`` (port 0: any free port) or ``unix:PATH``."""

    kind: str
    host: str = ""
    port: int = 0
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


def parse_spec(text: str) -> SocketmapSpec:
    """``inet:HOST:PORT`` (IPv6 HOST in brackets or not) or ``unix:PATH``; ValueError otherwise."""
    kind, sep, rest = text.strip().partition(":")
    if sep and kind == "unix" and rest:
        return SocketmapSpec("unix", path=Path(rest))
    if sep and kind == "inet":
        host, sep, port = rest.rpartition(":")
        if sep and port.isdigit() and int(port) <= 65535:
            try:
                address = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                pass
            else:
                return SocketmapSpec("inet", host=str(address), port=int(port))
    raise ValueError(f"{text!r}: expected inet:ADDR:PORT (e.g. inet:127.0.0.1:8800) or unix:PATH")


@dataclass(frozen=True)
class DovecotPolicyConfig:
    """Dovecot's authentication policy server (auth_policy_server_url): where it listens,
    ``inet:HOST:PORT`` or ``unix:PATH``, and the file holding the Bearer secret that
    Dovecot sends (auth_policy_server_api_header); None: given on the command line alone."""

    listen: str
    secret_file: Path | None = None


def _dovecot_policy(value: Any) -> DovecotPolicyConfig | None:
    """The ``dovecot_policy`` section (None: off). Its errors name ``dovecot_policy.KEY``."""
    if value is None:
        return None
    expect("a mapping with listen: and secret_file:, or null", isinstance(value, dict), value)
    known: dict[str, Callable[[Any], Any]] = {
        "listen": lambda v: str(parse_spec(string(v))), "secret_file": lambda v: Path(string(v))}
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            raise SubkeyError(f"dovecot_policy.{key}",
                              "unknown key (known: dovecot_policy.listen, dovecot_policy.secret_file)")
        try:
            out[key] = known[key](item)
        except ValueError as exc:
            raise SubkeyError(f"dovecot_policy.{key}", str(exc)) from None
    for key in known:
        if key not in out:
            raise SubkeyError(f"dovecot_policy.{key}", "required")
    return DovecotPolicyConfig(**out)


def _relative_policy(value: DovecotPolicyConfig | str, base: Path) -> DovecotPolicyConfig | str:
    if isinstance(value, str):  # --dovecot-policy SPEC
        return _relative_specs((value,), base)[0]
    listen = _relative_specs((value.listen,), base)[0]
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


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) for Sentinel and Cluster addresses."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:26379")
    return host, int(port)


def parse_redis_url(text: str) -> str:
    """A redis-py URL: ``redis://[:PASSWORD@]HOST:PORT/DB``, ``rediss://...`` or ``unix://PATH``."""
    scheme, sep, rest = text.strip().partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix") or not rest:
        raise ValueError(f"{text!r}: expected redis://HOST:PORT/DB, rediss://... or unix://PATH")
    return text.strip()


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


def _listen(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    expect("an address or a list of addresses", isinstance(items, list) and bool(items), value)
    return tuple(parse_listen(string(item)) for item in items)


def _groups(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    gids = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            gids.append(item)
            continue
        expect("a group name or number", isinstance(item, str) and item != "", item)
        try:
            gids.append(grp.getgrnam(item).gr_gid)
        except KeyError:
            raise ValueError(f"no such group {item!r}") from None
    return tuple(gids)


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _udp_from(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    """``any`` (legacy), ``loopback``, or a list of networks."""
    if value == "any":
        return None
    if value == "loopback":
        return LOOPBACK
    if isinstance(value, list):
        return networks(value)
    raise ValueError(f"expected any, loopback or a list of networks, got {value!r}")


def _optional_path(value: Any) -> str | None:
    return None if value in (None, "") else string(value)


def _metrics_listen(value: Any) -> str | None:
    if value in (None, ""):
        return None
    return parse_metrics_listen(string(value))


def _socketmap(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    expect("a list of inet:ADDR:PORT or unix:PATH", isinstance(items, list), value)
    return tuple(str(parse_spec(string(item))) for item in items)


def _addresses(value: Any) -> tuple[tuple[str, int], ...]:
    items = [value] if isinstance(value, str) else value
    expect("a list of HOST:PORT", isinstance(items, list) and bool(items), value)
    return tuple(parse_host_port(string(item)) for item in items)


def _timeout(value: Any) -> float:
    expect("seconds between 0.05 and 60", isinstance(value, int | float) and not isinstance(value, bool)
            and 0.05 <= value <= 60, value)
    return float(value)


def _prefix(text: str) -> str:
    # The prefix is matched as a glob (SCAN MATCH, PSUBSCRIBE): no glob characters in it.
    expect("a string without * ? [ ] or \\", not any(c in text for c in "*?[]\\"), text)
    return text


_REDIS_KEYS: dict[str, Any] = {
    "url": lambda v: parse_redis_url(string(v)),
    "sentinels": _addresses,
    "service": string,
    "cluster": _addresses,
    "db": int_range(0, 1_000_000),
    "password": string,
    "prefix": lambda v: _prefix(string(v)),
    "timeout": _timeout,
}


def _redis(value: Any) -> RedisConfig | None:
    """The ``redis`` section (None: off). Its own errors name ``redis.KEY`` (see config_from_dict)."""
    if value is None:
        return None
    expect("a mapping (url:, sentinels: with service:, or cluster:) or null", isinstance(value, dict), value)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in _REDIS_KEYS:
            raise SubkeyError(f"redis.{key}", f"unknown key (known: {', '.join('redis.' + k for k in _REDIS_KEYS)})")
        try:
            out[key] = _REDIS_KEYS[key](item)
        except ValueError as exc:
            raise SubkeyError(f"redis.{key}", str(exc)) from None
    given = [key for key in ("url", "sentinels", "cluster") if key in out]
    if len(given) != 1:
        raise ValueError("give exactly one of redis.url, redis.sentinels (with redis.service) or redis.cluster")
    if ("sentinels" in out) != ("service" in out):
        raise ValueError("redis.sentinels and redis.service go together")
    if "cluster" in out and out.get("db", 0) != 0:
        raise SubkeyError("redis.db", "a Redis Cluster has only database 0")
    return RedisConfig(**out)


def _auto_boolean(value: Any) -> bool | None:
    expect("true, false or auto", isinstance(value, bool) or value == "auto", value)
    return None if value == "auto" else bool(value)


def _duration(value: Any) -> int:
    return parse_duration(str(value) if isinstance(value, int) and not isinstance(value, bool) else string(value))


def _cli_int(check: Callable[[Any], int]) -> Callable[[str], int]:
    """An integer option: the text as a number, then the key's own range check."""
    def convert(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        return check(number)
    return convert


def _relative(value: Any, base: Path) -> Any:
    return None if value is None else resolve(base, str(value))


def _relative_specs(specs: tuple[str, ...], base: Path) -> tuple[str, ...]:
    return tuple(f"unix:{resolve(base, spec[5:])}" if spec.startswith("unix:") else spec for spec in specs)


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
    Key("map.path", string, resolve=_relative),
    Key("map.type", choice(MAP_TYPES), option=Option("--map-type", "Berkeley DB map type", choices=MAP_TYPES)),
    Key("map.nul_terminated", boolean),
    Key("map.cidr_keys", boolean),
    Key("map.ipv6_keys", lambda v: Ipv6Keys(choice(tuple(Ipv6Keys))(v))),
    Key("map.allow_unsafe_directory", boolean),
    Key("lifetime", _duration, reloadable=True,
        option=Option("--lifetime", "entry lifetime, e.g. 90s, 30m", metavar="DURATION")),
    Key("allow_file", string, reloadable=True, resolve=_relative,
        option=Option("--allow", "allow file", metavar="FILE")),
    Key("initialize", boolean),
    Key("listen", _listen, option=Option(
        "--listen", "address to listen on (repeatable; default all IPv4 and IPv6)", kind="append",
        parse=parse_listen, metavar="ADDR")),
    Key("port", int_range(0, 65535), option=Option(
        "--port", "port for UDP and TCP (0 = any free port)", parse=_cli_int(int_range(0, 65535)), metavar="N")),
    Key("rpcbind", boolean, option=Option("--no-rpcbind", "do not register with rpcbind", kind="off")),
    Key("program", int_range(1, 0xFFFFFFFF), option=Option(
        "--program", "", parse=_cli_int(int_range(1, 0xFFFFFFFF)), hidden=True)),
    Key("log_level", choice(LOG_LEVELS), reloadable=True,
        option=Option("--log-level", "log verbosity (default info)", choices=LOG_LEVELS)),
    Key("syslog", boolean, option=Option(
        "--syslog", "log to syslog, facility mail (default: rpc.dracd yes, dracd stderr)", kind="on")),
    Key("admin_socket", _optional_path, resolve=_relative, option=Option(
        "--admin-socket", "UNIX socket for dracctl (default /run/dracd/dracd.sock; '' disables it)",
        parse=str, metavar="PATH")),
    Key("admin_group", _groups, attribute="admin_groups", reloadable=True),
    Key("admin_allow", networks, reloadable=True),
    Key("udp_from", _udp_from, reloadable=True),
    Key("max_entries", int_range(1, 100_000_000), reloadable=True),
    Key("rate_per_caller", int_range(0, 1_000_000), reloadable=True),
    Key("tcp_wrappers", _auto_boolean, reloadable=True),
    Key("user", string, option=Option("--user", "run as USER once bound and registered (needs root)", metavar="USER")),
    Key("group", string, option=Option("--group", "with --user: run with this group", metavar="GROUP")),
    Key("max_connections", int_range(1, 65_536)),
    Key("max_record", int_range(1024, 16 * 1024 * 1024)),
    Key("idle_timeout", _duration),
    Key("record_timeout", _duration),
    Key("metrics_listen", _metrics_listen, option=Option(
        "--metrics-listen", "serve Prometheus metrics there (needs the metrics extra; default off)",
        parse=parse_metrics_listen, metavar="ADDR:PORT")),
    Key("socketmap", _socketmap, resolve=_relative_specs, option=Option(
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
    Key("pidfile", _optional_path, resolve=_relative, option=Option(
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
