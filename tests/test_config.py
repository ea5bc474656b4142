"""YAML config and command line: typed, validated, errors name file and key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dracclient.durations import parse_duration
from dracd.app.cli import build_parser, resolve_config
from dracd.config import Config, ConfigError, hostpaths, load_config
from dracd.keys import Ipv6Keys

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent


def cfg(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dracd.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private /etc: hostpaths' /etc/drac and /etc/mail point into it (neither exists yet)."""
    root = tmp_path / "etc"
    root.mkdir()
    monkeypatch.setattr(hostpaths, "DRAC_DIR", root / "drac")
    monkeypatch.setattr(hostpaths, "MAIL_DIR", root / "mail")
    return root


def test_empty_file_means_defaults(tmp_path: Path, etc: Path) -> None:
    config = load_config(cfg(tmp_path, ""))
    assert config.map == Config().map and config.lifetime == 1800
    assert config.map.path == etc / "mail/dracd.db" and config.allow_path is None


def test_default_map_follows_the_host_when_computed(etc: Path) -> None:
    """Upstream DRAC's /etc/mail, unless /etc/drac exists (Debian, Ubuntu, RPM builds)."""
    assert Config().map.path == etc / "mail/dracd.db"
    (etc / "mail").mkdir()
    assert Config().map.path == etc / "mail/dracd.db"
    (etc / "drac").mkdir()
    assert Config().map.path == etc / "drac/dracd.db"
    assert "Debian" in hostpaths.map_reason(Config().map.path)
    assert hostpaths.map_reason(etc / "x.db") == "as configured"


def test_allow_file_is_the_first_found_unless_configured(tmp_path: Path, etc: Path) -> None:
    args = build_parser().parse_args(["-e", "30", str(tmp_path / "lib/dracd.db")])
    config = resolve_config(args)
    assert config.allow_path is None
    assert "none of" in hostpaths.allow_reason(None, config.map.path)
    for directory in ("mail", "drac"):
        (etc / directory).mkdir()
        (etc / directory / "dracd.allow").touch()
        assert config.allow_path == etc / directory / "dracd.allow", directory
        assert f"found in {etc / directory}" in hostpaths.allow_reason(None, config.map.path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/dracd.allow").touch()
    assert config.allow_path == tmp_path / "lib/dracd.allow"
    assert "next to the map" in hostpaths.allow_reason(None, config.map.path)
    named = resolve_config(build_parser().parse_args(["--allow", str(tmp_path / "absent"), "x.db"]))
    assert named.allow_path == tmp_path / "absent", "a configured file is read (and must exist) as named"


def test_full_config_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(cfg(tmp_path, """
map: {path: var/dracd.db, type: hash, nul_terminated: true, cidr_keys: true, ipv6_keys: both}
lifetime: 90s
allow_file: dracd.allow
listen: ["[::1]", 127.0.0.1]
port: 0
rpcbind: false
log_level: debug
"""))
    assert config.map.path == tmp_path / "var/dracd.db" and config.map.type == "hash"
    assert config.map.nul_terminated and config.map.cidr_keys and config.map.ipv6_keys == Ipv6Keys.BOTH
    assert config.lifetime == 90 and config.allow_path == tmp_path / "dracd.allow"
    assert config.listen == ("::1", "127.0.0.1") and not config.rpcbind


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("lifetme: 30m", "lifetme"),
        ("map: {pth: /x}", "map.pth"),
        ("lifetime: 30", "lifetime"),
        ("lifetime: 0m", "lifetime"),
        ("port: 70000", "port"),
        ("port: yes", "port"),
        ("listen: [localhost]", "listen"),
        ("map: {type: dbm}", "map.type"),
        ("map: {ipv6_keys: exim}", "map.ipv6_keys"),
        ("rpcbind: 1", "rpcbind"),
        ("map: 3", "map"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = cfg(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = cfg(tmp_path, "lifetime: 30m\nmap: [\n")
    with pytest.raises(ConfigError, match=rf"{path}, line \d"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(cfg(tmp_path, "- a\n- b\n"))


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90s", "30m", "2h", "1d")] == [90, 1800, 7200, 86400]
    for bad in ("30", "m", "-5m", "1.5h", "5 minutes"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_legacy_command_line(tmp_path: Path, etc: Path) -> None:
    args = build_parser().parse_args(["-i", "-e", "45", str(tmp_path / "x.db")])
    config = resolve_config(args)
    assert config.initialize and config.lifetime == 45 * 60 and config.map.path == tmp_path / "x.db"
    (tmp_path / "dracd.allow").touch()
    assert config.allow_path == tmp_path / "dracd.allow"


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = cfg(tmp_path, "lifetime: 10m\nport: 5\nmap: {type: hash}\n")
    args = build_parser().parse_args(
        ["-c", str(path), "--lifetime", "90s", "--port", "0", "--map-type", "btree", "--listen", "::1",
         "--no-rpcbind", "--allow", str(tmp_path / "a")]
    )
    config = resolve_config(args)
    assert (config.lifetime, config.port, config.map.type, config.listen, config.rpcbind) == (
        90, 0, "btree", ("::1",), False)
    assert config.allow_file == tmp_path / "a"


def test_e_and_lifetime_conflict(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="-e or --lifetime"):
        resolve_config(build_parser().parse_args(["-e", "5", "--lifetime", "5m"]))


def test_shipped_run_config_is_valid() -> None:
    config = load_config(REPO / "etc/dracd.yaml")
    assert config.map.path == REPO / "var/dracd.db" and config.listen == ("127.0.0.1", "::1")


class CaptureHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_syslog_logging_uses_facility_mail(tmp_path: Path) -> None:
    import logging
    import socket

    from dracd.app.cli import setup_logging

    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(path))
        sink.settimeout(5)
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        globals_ = logging._srcfile, logging.logThreads, logging.logMultiprocessing  # type: ignore[attr-defined]
        records: list[logging.LogRecord] = []
        try:
            setup_logging("info", syslog=True, address=str(path))
            root.addHandler(CaptureHandler(records))
            logging.getLogger("dracd.test").info("ADD 192.0.2.7 from 127.0.0.1/udp ok")
            message = sink.recv(4096).decode()
        finally:
            for handler in root.handlers:
                handler.close()
            root.handlers[:], _ = saved
            root.setLevel(saved[1])
            logging._srcfile, logging.logThreads, logging.logMultiprocessing = globals_  # type: ignore[attr-defined]
    # <PRI> = facility mail (2) * 8 + info (6)
    assert message.startswith("<22>dracd[") and "ADD 192.0.2.7 from 127.0.0.1/udp ok" in message
    # A line per ADD at info: no stack walk for a caller's file and line the format never shows.
    assert records[0].lineno == 0 and records[0].threadName is None


def test_syslog_key_and_flag(tmp_path: Path) -> None:
    path = cfg(tmp_path, "syslog: true\n")
    assert load_config(path).syslog is True
    assert resolve_config(build_parser().parse_args(["--syslog"])).syslog is True
    assert resolve_config(build_parser().parse_args([])).syslog is None


def test_every_setting_is_declared_once() -> None:
    """config.KEYS is the one place a key is declared: each Config and MapConfig field
    (but the bookkeeping ``source``) has exactly one declaration, and each declaration
    has its field, so the YAML loader, the command line and SIGHUP cannot disagree."""
    from dataclasses import fields

    from dracd.config import KEYS, MapConfig

    declared = [(key.section, key.field) for key in KEYS]
    assert len(declared) == len(set(declared))
    wanted = {("", f.name) for f in fields(Config) if f.name not in ("map", "source")}
    wanted |= {("map", f.name) for f in fields(MapConfig)}
    assert set(declared) == wanted


def test_command_line_options_come_from_the_declarations() -> None:
    from dracd.config import KEYS

    parser = build_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {key.option.flag for key in KEYS if key.option is not None} <= flags
    args = parser.parse_args(["--no-rpcbind", "--socketmap", "inet:127.0.0.1:0", "--socketmap", "unix:x.sock",
                              "--admin-socket", "", "--port", "111", "--redis", "redis://127.0.0.1:6379/2"])
    config = resolve_config(args)
    assert config.rpcbind is False and config.admin_socket is None and config.port == 111
    assert config.socketmap == ("inet:127.0.0.1:0", f"unix:{Path.cwd() / 'x.sock'}")
    assert config.redis is not None and config.redis.url == "redis://127.0.0.1:6379/2"
    with pytest.raises(SystemExit):
        parser.parse_args(["--port", "70000"])


def test_reload_names_what_needs_a_restart() -> None:
    from dataclasses import replace

    from dracd.config import needs_restart

    old = Config()
    new = replace(old, lifetime=60, listen=("127.0.0.1",), map=replace(old.map, type="hash"), event_loop="asyncio")
    assert needs_restart(old, new) == ["map.type", "listen", "event_loop"]
