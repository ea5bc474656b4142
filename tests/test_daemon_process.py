"""The real dracd and rpc.dracd as subprocesses: readiness, command line,
config checking, signals, forking and rpcbind ownership.

Every server here registers a private program number (``--program``) with
the system rpcbind, listens on loopback only, and is killed in teardown
whatever happens. Readiness is the daemon's own ``READY=1`` on a
NOTIFY_SOCKET the test owns; nothing sleeps to wait for a start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import psutil
import pytest

from dracclient import add
from dracclient.drac import AddStat
from dracclient.errors import PermissionRefused
from tests.fixtures.process import (
    DRACD,
    RPC_DRACD,
    DracdProcess,
    NotifySocket,
    add_status,
    expected_registrations,
    map_format,
    read_map,
    registered_port,
    registered_set,
    registrations,
    run_command,
    wait_until,
)
from tests.fixtures.server import private_prog

pytestmark = pytest.mark.timeout(40)

REPO = Path(__file__).resolve().parent.parent
GOLDEN_MAP = REPO / "tests" / "vectors" / "legacy-dracd.db"
GOLDEN_EXPIRY = 1795892048
GOLDEN_KEYS = {"192.0.2.10", "2001:db8::b8:10", "2001:db8:ff00::1", "203.0.113.200"}
EX_UNAVAILABLE = 69
EX_CONFIG = 78

Start = Callable[..., DracdProcess]


@pytest.fixture
def prog(rpcbind: None) -> Iterator[int]:
    """A private program number; whatever a killed server left registered under it is removed."""
    from dracclient import rpcbind as rpcb

    number = private_prog()
    assert not registrations(number), f"private program {number} is already registered with rpcbind"
    yield number
    for vers in {m.vers for m in registrations(number)}:
        rpcb.unregister(number, vers, "")


@pytest.fixture
def start(tmp_path: Path, prog: int) -> Iterator[Start]:
    """``start(*args, ready=True, exe=DRACD, cwd=tmp_path)``: a dracd subprocess, killed at teardown
    (before ``prog`` cleans up what a killed server left in rpcbind)."""
    started: list[DracdProcess] = []

    def start(*args: object, ready: bool = True, exe: Path = DRACD, cwd: Path = tmp_path) -> DracdProcess:
        process = DracdProcess([str(a) for a in args], log_path=tmp_path / f"dracd-{len(started)}.log",
                               cwd=cwd, exe=exe)
        started.append(process)
        process.start()
        if ready:
            process.wait_ready(10)
        return process

    yield start
    for process in started:
        process.kill()


def loopback(prog: int, *hosts: str) -> list[str]:
    args = ["--program", str(prog)]
    for host in hosts or ("127.0.0.1", "::1"):
        args += ["--listen", host]
    return args


def added(port: int, prog: int, address: str, source: str = "127.0.0.1") -> Callable[[], None]:
    """An ADD from ``source`` that must succeed, for :func:`expiry_window`."""
    def call() -> None:
        status = add_status(port, prog, address, source=source)
        assert status == AddStat.ADD_SUCCESS, f"ADD {address} from {source}: {status.name}"
    return call


def expiry_window(lifetime: int, call: Callable[[], object]) -> range:
    """Run ``call``; the expiry values an entry it added may carry."""
    before = int(time.time())
    call()
    after = int(time.time())
    return range(before + lifetime, after + lifetime + 1)


# 1. readiness


def test_ready_means_registered_everywhere_and_adds_work_through_rpcbind(
    start: Start, prog: int, tmp_path: Path
) -> None:
    db = tmp_path / "dracd.db"
    start(*loopback(prog), db)
    # No polling: READY=1 is only sent once rpcbind holds every registration.
    found = registrations(prog)
    port = registered_port(prog)
    assert {(m.vers, m.netid, m.uaddr) for m in found} == expected_registrations(port)
    assert len(found) == 10
    # Registered over rpcbind's unix socket as root: other local users cannot UNSET it.
    assert {m.owner for m in found} == {"superuser"}
    # No port given: dracclient asks rpcbind (GETADDR) for each netid.
    add("192.0.2.7", servers="127.0.0.1", prog=prog)
    add("192.0.2.8", servers="127.0.0.1", prog=prog, transport="tcp")
    add("2001:db8::7", servers="::1", prog=prog)
    add("2001:db8::8", servers="::1", prog=prog, transport="tcp")
    assert set(read_map(db)) == {"192.0.2.7", "192.0.2.8", "2001:db8::7", "2001:db8::8"}


# 2. the legacy command line


def test_legacy_expire_minutes_and_relative_positional_dbfile(start: Start, prog: int, tmp_path: Path) -> None:
    start(*loopback(prog, "127.0.0.1"), "-e", "1", "legacy.db", cwd=tmp_path)
    window = expiry_window(60, lambda: add("192.0.2.7", servers="127.0.0.1", prog=prog))
    entries = read_map(tmp_path / "legacy.db")
    assert set(entries) == {"192.0.2.7"}
    assert entries["192.0.2.7"] in window, f"expiry {entries['192.0.2.7']} not now+60 s ({window})"
    assert map_format(tmp_path / "legacy.db")[0] == "btree"


def test_restart_keeps_entries_and_dash_i_drops_them(start: Start, prog: int, tmp_path: Path) -> None:
    db = tmp_path / "dracd.db"
    args = [*loopback(prog, "127.0.0.1"), "-e", "5", db]
    first = start(*args)
    add("192.0.2.1", servers="127.0.0.1", prog=prog)
    kept = read_map(db)["192.0.2.1"]
    assert first.stop() == 0

    second = start(*args)
    # Reloaded with its original expiry (not renewed), and written back at start.
    assert read_map(db) == {"192.0.2.1": kept}
    add("192.0.2.2", servers="127.0.0.1", prog=prog)
    assert set(read_map(db)) == {"192.0.2.1", "192.0.2.2"}
    assert second.stop() == 0

    third = start("-i", *args)
    assert read_map(db) == {}, "-i must start with an empty table and write it at once"
    add("192.0.2.3", servers="127.0.0.1", prog=prog)
    assert set(read_map(db)) == {"192.0.2.3"}
    assert third.stop() == 0
    assert "starting with an empty table (-i)" in third.log()


def _set_values(path: Path, values: dict[str, int]) -> None:
    """Change values inside a copy of the legacy file, keeping its own format (btree, 512-byte pages)."""
    from berkeleydb import db

    table = db.DB()
    table.open(str(path), dbtype=db.DB_UNKNOWN)
    try:
        for key, value in values.items():
            table.put(key.encode(), str(value).encode())
    finally:
        table.close()


@pytest.mark.parametrize("variant", ["as-shipped", "all-expired", "half-expired"])
def test_legacy_map_accepted_and_expired_entries_dropped(
    start: Start, prog: int, tmp_path: Path, variant: str
) -> None:
    db = tmp_path / "dracd.db"
    shutil.copyfile(GOLDEN_MAP, db)
    assert map_format(db) == ("btree", 512)
    assert read_map(db) == dict.fromkeys(GOLDEN_KEYS, GOLDEN_EXPIRY)
    now = int(time.time())
    if variant == "as-shipped":
        # The shipped values expire at a fixed instant: stay clear of it so the
        # expectation below cannot race the server's own clock.
        if abs(now - GOLDEN_EXPIRY) <= 2:
            time.sleep(GOLDEN_EXPIRY - now + 3)
            now = int(time.time())
        values = dict.fromkeys(GOLDEN_KEYS, GOLDEN_EXPIRY)
    elif variant == "all-expired":
        values = dict.fromkeys(GOLDEN_KEYS, now - 60)
    else:
        ordered = sorted(GOLDEN_KEYS)
        values = {key: now - 60 if i % 2 else now + 600 for i, key in enumerate(ordered)}
    _set_values(db, values)
    inode = db.stat().st_ino

    server = start(*loopback(prog, "127.0.0.1"), db)
    expected = {key: value for key, value in values.items() if value > now}
    dropped = len(values) - len(expected)
    assert read_map(db) == expected
    assert db.stat().st_ino != inode, "the map must be rewritten at start"
    assert map_format(db)[0] == "btree"
    assert f"reloaded {len(expected)} entries from {db} ({dropped} already expired)" in server.log()
    if variant == "all-expired":
        assert read_map(db) == {}


def test_default_allow_file_next_to_map_in_legacy_format(start: Start, prog: int, tmp_path: Path) -> None:
    db = tmp_path / "maps" / "dracd.db"
    db.parent.mkdir()
    (db.parent / "dracd.allow").write_text(
        "# legacy format: NETMASK NETADDR\n"
        "255.255.255.255 127.0.0.1\n"
        "\n"
        "255.255.255.254 127.0.0.4\n"  # 127.0.0.4 and 127.0.0.5
    )
    start(*loopback(prog, "127.0.0.1"), db)
    port = registered_port(prog)
    before = db.read_bytes(), db.stat().st_ino
    for source in ("127.0.0.2", "127.0.0.6"):
        for transport in ("udp", "tcp"):
            assert add_status(port, prog, "192.0.2.9", source=source, transport=transport) == AddStat.ADD_PERM
    assert (db.read_bytes(), db.stat().st_ino) == before, "a refused ADD must leave the map alone"
    assert read_map(db) == {}

    assert add_status(port, prog, "192.0.2.1", source="127.0.0.1") == AddStat.ADD_SUCCESS
    assert add_status(port, prog, "192.0.2.4", source="127.0.0.4", transport="tcp") == AddStat.ADD_SUCCESS
    assert add_status(port, prog, "192.0.2.5", source="127.0.0.5") == AddStat.ADD_SUCCESS
    assert set(read_map(db)) == {"192.0.2.1", "192.0.2.4", "192.0.2.5"}


def test_add_from_refused_caller_is_perm_via_add_too(start: Start, prog: int, tmp_path: Path) -> None:
    """The allow list is consulted on the caller's address even for add() through rpcbind."""
    db = tmp_path / "dracd.db"
    (tmp_path / "dracd.allow").write_text("255.255.255.255 127.0.0.2\n")
    start(*loopback(prog, "127.0.0.1"), db)
    with pytest.raises(PermissionRefused):
        add("192.0.2.9", servers="127.0.0.1", prog=prog, timeout=3)
    assert read_map(db) == {}


# 3. --check-config

GOOD_YAML = """\
map:
  path: maps/dracd.db
  type: hash
lifetime: 45m
allow_file: dracd.allow
listen: [127.0.0.1, "::1"]
port: 0
rpcbind: false
log_level: debug
"""


def test_check_config_accepts_good_files(tmp_path: Path) -> None:
    config = tmp_path / "dracd.yaml"
    config.write_text(GOOD_YAML)
    (tmp_path / "maps").mkdir()
    (tmp_path / "dracd.allow").write_text("255.255.255.255 127.0.0.1\n127.0.0.0/8\n::1/128\n")
    result = run_command([DRACD, "--check-config", "-c", config])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert str(config) in result.stdout and "OK" in result.stdout and "2700 s" in result.stdout
    assert list((tmp_path / "maps").iterdir()) == [], "--check-config must not create anything"

    # The shipped config, in a checkout's layout where `make run` made var/.
    (tmp_path / "etc").mkdir()
    (tmp_path / "var").mkdir()
    shutil.copy(REPO / "etc" / "dracd.yaml", tmp_path / "etc" / "dracd.yaml")
    shipped = run_command([DRACD, "--check-config", "-c", tmp_path / "etc" / "dracd.yaml"])
    assert shipped.returncode == 0, shipped.stderr
    assert "OK" in shipped.stdout


BAD_CONFIGS = {
    "unknown key": ("lifetime: 30m\nlifetim: 30m\n", "'lifetim'"),
    "unknown map key": ("map:\n  pathh: x.db\n", "'map.pathh'"),
    "wrong type": ("rpcbind: 'yes'\n", "'rpcbind'"),
    "wrong type port": ("port: '111'\n", "'port'"),
    "duration without unit": ("lifetime: 30\n", "'lifetime'"),
    "bad listen address": ("listen: [127.0.0.1, 256.1.1.1]\n", "'listen'"),
    "bad map type": ("map:\n  type: gdbm\n", "'map.type'"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_check_config_rejects_bad_key_with_one_message(tmp_path: Path, case: str) -> None:
    text, key = BAD_CONFIGS[case]
    config = tmp_path / "dracd.yaml"
    config.write_text(text)
    result = run_command([DRACD, "--check-config", "-c", config])
    assert result.returncode == EX_CONFIG, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one message, got: {result.stderr!r}"
    assert str(config) in lines[0] and key in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_check_config_warns_of_a_bad_allow_line_naming_file_and_line(tmp_path: Path) -> None:
    """DRAC read '127.0.0.x' as '127.0.0.' (inet_addr: 255.255.255.255): a line matching nobody, not an error."""
    config = tmp_path / "dracd.yaml"
    config.write_text("map:\n  path: dracd.db\n")
    allow = tmp_path / "dracd.allow"  # the default: next to the map
    allow.write_text("# comment\n255.255.255.255 127.0.0.1\n255.255.255.0 127.0.0.x\n")
    result = run_command([DRACD, "--check-config", "-c", config])
    assert result.returncode == 0, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(allow) in lines[0] and "line 3" in lines[0] and "warning" in lines[0], lines[0]
    assert f"allow file {allow}, next to the map" in result.stdout and "1 warning" in result.stdout


def test_check_config_rejects_invalid_yaml_naming_the_line(tmp_path: Path) -> None:
    config = tmp_path / "dracd.yaml"
    config.write_text("map:\n  path: x.db\n type: btree\nlifetime: 30m\n")
    result = run_command([DRACD, "--check-config", "-c", config])
    assert result.returncode == EX_CONFIG, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0] and "line 3" in lines[0], lines[0]


def test_bad_config_at_start_exits_78_without_serving(start: Start, prog: int, tmp_path: Path) -> None:
    config = tmp_path / "dracd.yaml"
    config.write_text("lifetime: 30\n")
    server = start("-c", config, *loopback(prog, "127.0.0.1"), ready=False)
    assert server.wait(10) == EX_CONFIG
    assert "'lifetime'" in server.log()
    assert registrations(prog) == []


# 4. signals


def test_sigterm_exits_0_writes_map_and_unregisters(start: Start, prog: int, tmp_path: Path) -> None:
    db = tmp_path / "dracd.db"
    server = start(*loopback(prog), db)
    add("192.0.2.7", servers="127.0.0.1", prog=prog)
    inode = db.stat().st_ino
    assert registrations(prog)
    assert server.stop() == 0
    assert db.stat().st_ino != inode, "the map must be written a last time on SIGTERM"
    assert set(read_map(db)) == {"192.0.2.7"}
    assert registrations(prog) == [], "SIGTERM must unregister every netid and version"
    assert "STOPPING=1" in server.notify.drain()
    assert "stopped" in server.log()


def _yaml(lifetime: str, prog: int) -> str:
    return (f"map:\n  path: dracd.db\nlifetime: {lifetime}\nallow_file: dracd.allow\n"
            f"listen: [127.0.0.1]\nprogram: {prog}\n")


def test_sighup_reloads_allow_file_and_lifetime_and_survives_a_broken_config(
    start: Start, prog: int, tmp_path: Path
) -> None:
    config, allow, db = tmp_path / "dracd.yaml", tmp_path / "dracd.allow", tmp_path / "dracd.db"
    config.write_text(_yaml("10m", prog))
    allow.write_text("255.255.255.255 127.0.0.1\n")
    server = start("-c", config)
    port = registered_port(prog)
    window = expiry_window(600, added(port, prog, "192.0.2.1"))
    first = read_map(db)["192.0.2.1"]
    assert first in window
    assert add_status(port, prog, "192.0.2.2", source="127.0.0.2") == AddStat.ADD_PERM

    allow.write_text("255.255.255.255 127.0.0.1\n255.255.255.255 127.0.0.2\n")
    config.write_text(_yaml("2m", prog))
    server.send(signal.SIGHUP)
    server.notify.wait_for("READY=1", 5, server.alive)  # sent once the reload is done
    window = expiry_window(120, added(port, prog, "192.0.2.2", source="127.0.0.2"))
    entries = read_map(db)
    assert entries["192.0.2.2"] in window, "the new lifetime (2m) must apply after SIGHUP"
    assert entries["192.0.2.1"] == first, "entries survive a reload untouched"
    assert server.alive() and registered_port(prog) == port

    # A broken config: error logged, old settings kept, still serving.
    config.write_text(_yaml("2", prog))  # no unit
    server.send(signal.SIGHUP)
    server.notify.wait_for("READY=1", 5, server.alive)
    allow.unlink()  # named by the config, so it must exist: this reload fails too
    config.write_text(_yaml("5m", prog))
    server.send(signal.SIGHUP)
    server.notify.wait_for("READY=1", 5, server.alive)
    assert server.alive()
    window = expiry_window(120, added(port, prog, "192.0.2.3", source="127.0.0.2"))
    assert read_map(db)["192.0.2.3"] in window, "a failed reload must keep the running lifetime and allow list"
    assert registered_port(prog) == port
    log = server.log()
    failures = [line for line in log.splitlines() if "reload failed" in line]
    assert len(failures) == 2, log
    assert "ERROR" in failures[0] and str(config) in failures[0] and "'lifetime'" in failures[0]
    assert "ERROR" in failures[1] and str(allow) in failures[1]

    # A line DRAC skipped is skipped with a warning: the reload applies the rest.
    allow.write_text("255.255.255.255 127.0.0.1\nnot an allow line\n")
    server.send(signal.SIGHUP)
    server.notify.wait_for("READY=1", 5, server.alive)
    assert add_status(port, prog, "192.0.2.4", source="127.0.0.2") == AddStat.ADD_PERM
    log = server.log()
    assert len([line for line in log.splitlines() if "reload failed" in line]) == 2, log
    assert f"WARNING {allow}, line 2: 'not an allow line': skipped" in log, log
    assert server.stop() == 0
    assert set(read_map(db)) == {"192.0.2.1", "192.0.2.2", "192.0.2.3"}


# 5. rpc.dracd forks


def _find_daemons(prog: int) -> list[psutil.Process]:
    """rpc.dracd processes started with ``--program prog`` (unique per test)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(part.endswith("rpc.dracd") for part in cmdline) and any(
            flag == "--program" and value == str(prog) for flag, value in zip(cmdline, cmdline[1:], strict=False)
        ):
            found.append(process)
    return found


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def forked(prog: int) -> Iterator[int]:
    """``prog``, and any background rpc.dracd serving it is killed at teardown."""
    yield prog
    for process in _find_daemons(prog):
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
        wait_until(partial(_gone, process), 10, f"background rpc.dracd {process.pid} to die")


def _run_rpc_dracd(args: Sequence[object], log: Path, cwd: Path, notify: NotifySocket | None = None) -> int:
    # stdout/stderr go to a file: the child inherits them (there is no
    # /dev/log to switch to), so a pipe would stay open after the parent exits.
    env = {**os.environ, "NOTIFY_SOCKET": notify.path} if notify else None
    with open(log, "ab") as out:
        return subprocess.run([str(RPC_DRACD), *map(str, args)], stdin=subprocess.DEVNULL, stdout=out,
                              stderr=out, cwd=cwd, env=env, timeout=20).returncode


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def test_rpc_dracd_forks_serves_reloads_and_stops(
    forked: int, prog: int, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    log = tmp_path / "rpc.dracd.log"
    config = tmp_path / "dracd.yaml"
    config.write_text("lifetime: 10m\n")
    # Allows 127.0.0.3, which the built-in default (loopback + own addresses) would refuse.
    (tmp_path / "dracd.allow").write_text("255.255.255.255 127.0.0.1\n255.255.255.255 127.0.0.3\n")
    args = ["-c", "dracd.yaml", *loopback(prog), "fork.db"]  # relative paths on purpose
    assert _run_rpc_dracd(args, log, tmp_path, notify_socket) == 0, log.read_text()
    assert "READY=1" in notify_socket.drain()  # the child's, before the parent exited

    # The command returned only once the child served: no waiting needed.
    port = registered_port(prog)
    assert registered_set(prog) == expected_registrations(port)
    daemons = _find_daemons(forked)
    assert len(daemons) == 1, f"expected one background rpc.dracd, found {daemons}"
    child = daemons[0]
    assert child.ppid() != os.getpid(), "the daemon must not be our child (it forked)"
    assert os.getsid(child.pid) == child.pid, "the daemon must lead its own session (setsid)"
    assert child.cwd() == "/"
    db = tmp_path / "fork.db"
    window = expiry_window(600, lambda: add("192.0.2.7", servers="127.0.0.1", prog=prog))
    assert read_map(db)["192.0.2.7"] in window
    assert add_status(port, prog, "192.0.2.8", source="127.0.0.3") == AddStat.ADD_SUCCESS

    # SIGHUP after chdir("/"): the relative paths must still mean what they meant.
    config.write_text("lifetime: 2m\n")
    child.send_signal(signal.SIGHUP)
    notify_socket.wait_for("READY=1", 5)  # sent when the reload is done, failed or not
    text = log.read_text()
    assert "reload failed" not in text and "restart dracd to apply" not in text, text
    window = expiry_window(120, lambda: add("192.0.2.9", servers="127.0.0.1", prog=prog))
    assert read_map(db)["192.0.2.9"] in window
    assert add_status(port, prog, "192.0.2.10", source="127.0.0.3") == AddStat.ADD_SUCCESS
    assert add_status(port, prog, "192.0.2.11", source="127.0.0.2") == AddStat.ADD_PERM

    child.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1", 5)
    wait_until(lambda: _gone(child), 10, "rpc.dracd to exit on SIGTERM")
    assert registrations(prog) == []
    assert set(read_map(db)) == {"192.0.2.7", "192.0.2.8", "192.0.2.9", "192.0.2.10"}
    assert "stopped" in log.read_text()


def test_rpc_dracd_reports_a_failed_start(forked: int, start: Start, prog: int, tmp_path: Path) -> None:
    holder = start(*loopback(prog, "127.0.0.1"), tmp_path / "holder.db")
    held = registered_set(prog)
    log = tmp_path / "rpc.dracd.log"
    status = _run_rpc_dracd([*loopback(prog, "127.0.0.1"), tmp_path / "second.db"], log, tmp_path)
    assert status == EX_UNAVAILABLE, log.read_text()
    assert "already registered" in log.read_text()
    wait_until(lambda: not [p for p in _find_daemons(forked) if not _gone(p)], 5, "the failed child to exit")
    assert registered_set(prog) == held and holder.alive()


# 6. two servers, one program


def test_second_server_refuses_then_takes_over_a_stale_registration(
    start: Start, prog: int, tmp_path: Path
) -> None:
    first = start(*loopback(prog), tmp_path / "first.db")
    first_port = registered_port(prog)
    held = registered_set(prog)

    second = start(*loopback(prog), tmp_path / "second.db", ready=False)
    assert second.wait(10) == EX_UNAVAILABLE, second.log()
    assert "already registered" in second.log() and "another dracd" in second.log()
    assert registered_set(prog) == held, "a refused server must not touch the live registration"
    assert not (tmp_path / "second.db").exists() or read_map(tmp_path / "second.db") == {}

    first.send(signal.SIGKILL)
    first.wait(10)
    assert registered_set(prog) == held, "SIGKILL leaves the registration behind (the stale case)"

    third = start(*loopback(prog), tmp_path / "third.db")
    third_port = registered_port(prog)
    assert registered_set(prog) == expected_registrations(third_port)
    if third_port != first_port:
        assert "removing stale rpcbind registration" in third.log()
    add("192.0.2.7", servers="127.0.0.1", prog=prog)
    add("2001:db8::7", servers="::1", prog=prog, transport="tcp")
    assert set(read_map(tmp_path / "third.db")) == {"192.0.2.7", "2001:db8::7"}
    assert third.stop() == 0
    assert registrations(prog) == []


def test_live_server_on_a_specific_address_is_not_taken_for_stale(start: Start, prog: int, tmp_path: Path) -> None:
    """The liveness probe must go where the registration points, not always to 127.0.0.1."""
    first = start(*loopback(prog, "127.0.0.2"), tmp_path / "first.db")
    held = registered_set(prog)
    assert held == expected_registrations(registered_port(prog), hosts=("127.0.0.2",))

    second = start(*loopback(prog, "127.0.0.1"), tmp_path / "second.db", ready=False)
    assert second.wait(10) == EX_UNAVAILABLE, second.log()
    assert registered_set(prog) == held
    assert first.alive()
    assert "refused to register" not in first.log()
