"""dracd-logwatch's YAML configuration, validated like dracd's.

Frozen dataclasses; unknown keys are refused; every error names the file and
the dotted key (``presets.uw.prefix6``) and says what was expected. Relative
paths are taken relative to the config file's directory. The cross-checks
that need the whole configuration (a source to read, something to match, a
lifetime only with the admin socket) run in :func:`validate`, after the
command line has had its say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dracclient.admin import DEFAULT_SOCKET
from dracclient.checks import (
    LOG_LEVELS,
    ConfigError,
    boolean,
    choice,
    convert,
    int_range,
    networks,
    read_yaml,
    resolve,
    string,
)
from dracclient.drac import DRACPROG

from .policy import MIN_PREFIX4, MIN_PREFIX6, IPNetwork, prefix_problem
from .presets import PRESETS, Rule, RuleOptions, custom_rule, preset_rule
from .values import WHY4, WHY6, dedup, duration, interval, prefix, programs, seconds, servers, strings, users

FILE_FORMATS = ("syslog", "dovecot")


@dataclass(frozen=True)
class FileSource:
    path: Path
    #: ``syslog``: a syslog file; ``dovecot``: Dovecot's own log_path/info_log_path.
    format: str = "syslog"


@dataclass(frozen=True)
class JournalSource:
    executables: tuple[str, ...] = ()
    #: uids; empty: any sender.
    users: tuple[int, ...] = ()
    command: tuple[str, ...] = ("journalctl",)


@dataclass(frozen=True)
class Sources:
    files: tuple[FileSource, ...] = ()
    syslog_socket: Path | None = None
    #: Credential checking: only datagrams whose sender (the kernel says) runs one of these...
    syslog_socket_executables: tuple[str, ...] = ()
    #: ...as one of these uids (empty: any).
    syslog_socket_users: tuple[int, ...] = ()
    journald: JournalSource | None = None
    from_start: bool = False
    poll_interval: float = 0.25


@dataclass(frozen=True)
class CustomPattern:
    name: str
    programs: tuple[str, ...]
    regex: re.Pattern[str]
    options: RuleOptions = field(default_factory=RuleOptions)


@dataclass(frozen=True)
class TargetConfig:
    admin_socket: Path | None = Path(DEFAULT_SOCKET)
    servers: tuple[str, ...] = ()
    port: int | None = None
    program: int = DRACPROG
    timeout: float = 5.0


@dataclass(frozen=True)
class LogwatchConfig:
    sources: Sources = field(default_factory=Sources)
    #: (preset name, options), in the order given.
    presets: tuple[tuple[str, RuleOptions], ...] = ()
    patterns: tuple[CustomPattern, ...] = ()
    target: TargetConfig = field(default_factory=TargetConfig)
    trusted: tuple[IPNetwork, ...] = ()
    #: Also trust Postfix's mynetworks (``postconf -h``), from this config directory if set.
    postfix_mynetworks: bool = False
    postfix_config: Path | None = None
    #: Seconds during which an address already sent is not sent again (0: always send).
    dedup: int = 60
    log_level: str = "info"
    source: str = "built-in defaults"

    def rules(self) -> list[Rule]:
        rules = [preset_rule(name, options) for name, options in self.presets]
        rules += [custom_rule(p.name, p.programs, p.regex, p.options) for p in self.patterns]
        return rules


_RULE_KEYS: dict[str, Any] = {
    "lifetime": duration,
    "prefix4": prefix(MIN_PREFIX4, 32, WHY4),
    "prefix6": prefix(MIN_PREFIX6, 128, WHY6),
    "require_pid": boolean,
    "programs": programs,
}
_PATTERN_KEYS: dict[str, Any] = {**_RULE_KEYS, "name": string, "program": programs, "regex": string}
_SOURCE_KEYS: dict[str, Any] = {
    "files": lambda v: v, "syslog_socket": lambda v: v, "journald": lambda v: v,
    "from_start": boolean, "poll_interval": interval,
}
_FILE_KEYS: dict[str, Any] = {"path": string, "format": choice(FILE_FORMATS)}
_JOURNAL_KEYS: dict[str, Any] = {"executables": strings, "users": users, "command": strings}
_SOCKET_KEYS: dict[str, Any] = {"path": string, "executables": strings, "users": users}
_TARGET_KEYS: dict[str, Any] = {
    "admin_socket": lambda v: None if v in (None, "") else string(v),
    "servers": servers,
    "port": int_range(1, 65535),
    "program": int_range(1, 0xFFFFFFFF),
    "timeout": seconds,
}
_TOP_KEYS: dict[str, Any] = {
    "sources": lambda v: v, "presets": lambda v: v, "patterns": lambda v: v, "target": lambda v: v,
    "trusted": networks,
    "postfix_mynetworks": lambda v: v if isinstance(v, bool) else string(v),
    "dedup": dedup,
    "log_level": choice(LOG_LEVELS),
}


def _section(data: Any, key: str, source: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key {key!r}: expected a mapping")
    return data


def _rule_options(data: dict[str, Any], prefix: str, source: str) -> RuleOptions:
    return RuleOptions(**convert(data, _RULE_KEYS, prefix, source))


def _presets(data: Any, source: str) -> tuple[tuple[str, RuleOptions], ...]:
    if data is None:
        return ()
    if isinstance(data, list):
        data = {name: None for name in data} if all(isinstance(n, str) for n in data) else data
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key 'presets': expected a list of preset names or a mapping of them")
    out = []
    for name, options in data.items():
        if name not in PRESETS:
            raise ConfigError(f"{source}: key 'presets': unknown preset {name!r} (known: {', '.join(PRESETS)})")
        out.append((name, _rule_options(_section(options, f"presets.{name}", source), f"presets.{name}.", source)))
    return tuple(out)


def _patterns(data: Any, source: str) -> tuple[CustomPattern, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError(f"{source}: key 'patterns': expected a list of patterns")
    out: list[CustomPattern] = []
    for index, item in enumerate(data):
        key = f"patterns[{index}]"
        values = convert(_section(item, key, source), _PATTERN_KEYS, f"{key}.", source)
        for required in ("name", "regex"):
            if required not in values:
                raise ConfigError(f"{source}: key '{key}.{required}': required")
        if ("program" in values) == ("programs" in values):
            raise ConfigError(f"{source}: key '{key}.program': give the program (syslog tag) the lines must "
                              "come from, as program or programs")
        name = values.pop("name")
        if name in PRESETS or name in {p.name for p in out}:
            raise ConfigError(f"{source}: key '{key}.name': {name!r} is already a preset or pattern name")
        try:
            regex = re.compile(values.pop("regex"))
        except re.error as exc:
            raise ConfigError(f"{source}: key '{key}.regex': not a valid regular expression: {exc}") from None
        if "ip" not in regex.groupindex:
            raise ConfigError(f"{source}: key '{key}.regex': needs a named group (?P<ip>...) for the address")
        names = values.pop("program", None) or values.pop("programs")
        out.append(CustomPattern(name, names, regex, RuleOptions(**values)))
    return tuple(out)


def _sources(data: dict[str, Any], base: Path, source: str) -> Sources:
    values = convert(data, _SOURCE_KEYS, "sources.", source)
    files = values.pop("files", None) or []
    if not isinstance(files, list):
        raise ConfigError(f"{source}: key 'sources.files': expected a list of paths")
    parsed = []
    for index, item in enumerate(files):
        item = {"path": item} if isinstance(item, str) else _section(item, f"sources.files[{index}]", source)
        file_values = convert(item, _FILE_KEYS, f"sources.files[{index}].", source)
        if "path" not in file_values:
            raise ConfigError(f"{source}: key 'sources.files[{index}].path': required")
        parsed.append(FileSource(resolve(base, file_values["path"]), file_values.get("format", "syslog")))
    values["files"] = tuple(parsed)
    sock = values.pop("syslog_socket", None)
    if isinstance(sock, dict):
        settings = convert(sock, _SOCKET_KEYS, "sources.syslog_socket.", source)
        if "path" not in settings:
            raise ConfigError(f"{source}: key 'sources.syslog_socket.path': required")
        sock = settings["path"]
        values["syslog_socket_executables"] = tuple(settings.get("executables", ()))
        values["syslog_socket_users"] = tuple(settings.get("users", ()))
        if values["syslog_socket_users"] and not values["syslog_socket_executables"]:
            raise ConfigError(f"{source}: key 'sources.syslog_socket.users': needs executables (only then are "
                              "senders checked)")
        for exe in values["syslog_socket_executables"]:
            if not exe.startswith("/"):
                raise ConfigError(f"{source}: key 'sources.syslog_socket.executables': {exe!r}: expected an "
                                  "absolute path (as /proc/PID/exe shows it)")
    if sock is not None:
        if not isinstance(sock, str) or not sock:
            raise ConfigError(f"{source}: key 'sources.syslog_socket': expected a socket path or a mapping "
                              "with path and executables")
        values["syslog_socket"] = resolve(base, sock)
    journal = values.pop("journald", False)
    if journal is True:
        values["journald"] = JournalSource()
    elif isinstance(journal, dict):
        values["journald"] = JournalSource(**convert(journal, _JOURNAL_KEYS, "sources.journald.", source))
    elif journal not in (False, None):
        raise ConfigError(f"{source}: key 'sources.journald': expected true, false or a mapping")
    return Sources(**values)


def _target(data: dict[str, Any], base: Path, source: str) -> TargetConfig:
    values = convert(data, _TARGET_KEYS, "target.", source)
    if values.get("admin_socket") and values.get("servers"):
        raise ConfigError(f"{source}: key 'target': give admin_socket or servers, not both")
    if "servers" in values:
        values.setdefault("admin_socket", None)
    if values.get("admin_socket"):
        values["admin_socket"] = resolve(base, values["admin_socket"])
    return TargetConfig(**values)


def load_config(path: Path | None) -> LogwatchConfig:
    """The configuration in ``path`` (defaults when None); raises ConfigError."""
    if path is None:
        return LogwatchConfig()
    return config_from_dict(read_yaml(path), path)


def config_from_dict(data: Any, path: Path) -> LogwatchConfig:
    source, base = str(path), path.parent
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    top = convert(data, _TOP_KEYS, "", source)
    mynetworks = top.pop("postfix_mynetworks", False)
    if isinstance(mynetworks, str):
        top["postfix_config"] = resolve(base, mynetworks)
    top["postfix_mynetworks"] = bool(mynetworks)
    top["sources"] = _sources(_section(top.pop("sources", None), "sources", source), base, source)
    top["presets"] = _presets(top.pop("presets", None), source)
    top["patterns"] = _patterns(top.pop("patterns", None), source)
    top["target"] = _target(_section(top.pop("target", None), "target", source), base, source)
    return LogwatchConfig(source=source, **top)


def validate(config: LogwatchConfig) -> LogwatchConfig:
    """The checks that need the whole configuration (after the command line); raises ConfigError."""
    source = config.source
    sources = config.sources
    if not (sources.files or sources.syslog_socket or sources.journald):
        raise ConfigError(f"{source}: nothing to read: give sources.files (or --file), sources.syslog_socket "
                          "or sources.journald")
    if not (config.presets or config.patterns):
        raise ConfigError(f"{source}: nothing to match: enable presets (or --preset) or give patterns")
    target = config.target
    if (target.admin_socket is None) == (not target.servers):
        raise ConfigError(f"{source}: key 'target': give admin_socket or servers (exactly one)")
    keyed = [(f"presets.{name}", options) for name, options in config.presets]
    keyed += [(f"patterns[{i}]", p.options) for i, p in enumerate(config.patterns)]
    networks = target.admin_socket is not None
    for key, options in keyed:
        for version, length in ((4, options.prefix4), (6, options.prefix6)):
            problem = prefix_problem(length, version, networks)
            if problem:
                raise ConfigError(f"{source}: key '{key}.prefix{version}': /{length}: {problem}")
    if target.admin_socket is None:
        for key, options in keyed:
            if options.lifetime:
                raise ConfigError(f"{source}: key '{key}.lifetime': a lifetime per preset needs "
                                  "target.admin_socket; the DRAC protocol's ADD carries no lifetime")
    return config
