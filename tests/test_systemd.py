"""systemd integration: the sd_notify sequence dracd sends, and the unit file.

There is no systemd as PID 1 here, so the service manager's part is played
by a NOTIFY_SOCKET the test owns (tests/fixtures/process.py); the unit file
is parsed, and checked with ``systemd-analyze verify`` when that exists.
"""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dracclient import notify as sd
from dracd.config import DEFAULT_ADMIN_SOCKET
from dracd.config.hostpaths import DRAC_DIR, MAIL_DIR
from tests.fixtures.process import (
    DRACD,
    DracdProcess,
    expected_registrations,
    read_map,
    registered_port,
    registered_set,
    registrations,
)
from tests.fixtures.server import private_prog

pytestmark = pytest.mark.timeout(40)

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "contrib" / "systemd" / "dracd.service"

Start = Callable[..., DracdProcess]


@pytest.fixture
def prog(rpcbind: None) -> Iterator[int]:
    from dracclient import rpcbind as rpcb

    number = private_prog()
    assert not registrations(number)
    yield number
    for vers in {m.vers for m in registrations(number)}:
        rpcb.unregister(number, vers, "")


@pytest.fixture
def start(tmp_path: Path, prog: int) -> Iterator[Start]:
    """``start(*args)``: dracd on loopback with ``prog``, not yet awaited; killed at teardown."""
    started: list[DracdProcess] = []

    def start(*args: object, process: DracdProcess | None = None) -> DracdProcess:
        if process is None:
            process = DracdProcess(["--program", str(prog), "--listen", "127.0.0.1", "--listen", "::1",
                                    *map(str, args)], log_path=tmp_path / f"dracd-{len(started)}.log")
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()


def fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines() if "=" in line)


def wait_state(process: DracdProcess, state: str, timeout: float = 10.0) -> list[str]:
    """The datagrams up to the one holding ``state`` (the process log in the failure message)."""
    try:
        return process.notify.wait_for(state, timeout, process.alive)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- log ---\n{process.log()}") from None


def status(seen: list[str]) -> str:
    """The last STATUS= among ``seen`` (dracd sends it just before READY=1)."""
    found = [fields(message)["STATUS"] for message in seen if "STATUS" in fields(message)]
    assert found, f"no STATUS= in {seen}"
    return found[-1]


# 1. the notify sequence


def test_ready_only_once_the_map_exists_and_rpcbind_knows_it(start: Start, prog: int, tmp_path: Path) -> None:
    db = tmp_path / "dracd.db"
    process = start(db)
    seen = wait_state(process, "READY=1")
    # Checked at once, without polling: both must already hold when READY=1 arrives.
    assert db.exists(), "READY=1 before the map was written"
    assert read_map(db) == {}
    port = registered_port(prog)
    assert registered_set(prog) == expected_registrations(port)
    assert seen == [f"STATUS=serving 0 entries, map {db}", "READY=1"]


def test_sighup_sends_reloading_with_monotonic_usec_then_ready(start: Start, tmp_path: Path) -> None:
    process = start(tmp_path / "dracd.db")
    wait_state(process, "READY=1")
    before = time.monotonic_ns() // 1000
    process.send(signal.SIGHUP)
    reloading = wait_state(process, "RELOADING=1")[-1]
    after = time.monotonic_ns() // 1000
    stamp = int(fields(reloading)["MONOTONIC_USEC"])
    assert before <= stamp <= after, f"MONOTONIC_USEC {stamp} not within [{before}, {after}]"
    seen = wait_state(process, "READY=1")
    assert status(seen).startswith("serving 0 entries")
    # The daemon keeps serving after the reload.
    process.send(signal.SIGHUP)
    wait_state(process, "RELOADING=1")
    wait_state(process, "READY=1")
    assert process.alive()


def test_failed_reload_still_ends_with_ready_and_says_so(start: Start, tmp_path: Path) -> None:
    config = tmp_path / "dracd.yaml"
    config.write_text(f"map:\n  path: {tmp_path / 'dracd.db'}\nlifetime: 30m\n")
    process = start("-c", config)
    wait_state(process, "READY=1")
    config.write_text("lifetime: [not, a, duration]\n")
    process.send(signal.SIGHUP)
    wait_state(process, "RELOADING=1")
    seen = wait_state(process, "READY=1")
    assert status(seen).startswith("reload failed, running the previous configuration")
    assert process.alive()


def test_sigterm_sends_stopping_then_exits_0(start: Start, prog: int, tmp_path: Path) -> None:
    process = start(tmp_path / "dracd.db")
    wait_state(process, "READY=1")
    process.send(signal.SIGHUP)
    wait_state(process, "READY=1")
    process.send(signal.SIGTERM)
    wait_state(process, "STOPPING=1")
    assert process.wait(15) == 0
    states = [line for message in process.notify.received for line in message.splitlines()
              if not line.startswith(("STATUS=", "MONOTONIC_USEC="))]
    assert states == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    assert not registrations(prog)


def test_ready_after_user_switch_reaches_a_socket_the_user_cannot(start: Start, prog: int) -> None:
    """The notify socket's directory stays 0700 root: only a socket connected
    before the switch to nobody can deliver READY=1 and STOPPING=1."""
    from tests.test_privileges import NAMESPACE

    work = Path(tempfile.mkdtemp(prefix="dracd-sd-"))
    try:
        work.chmod(0o755)
        map_dir = work / "map"
        map_dir.mkdir()
        os.chown(map_dir, 65534, 65534)
        process = DracdProcess(
            ["--listen", "127.0.0.1", "--program", str(prog), "--admin-socket", str(work / "admin.sock"),
             "--user", "nobody", str(map_dir / "dracd.db")],
            log_path=work / "dracd.log", exe=Path(NAMESPACE[0]),
        )
        process.args = [*NAMESPACE, *process.args[1:]]
        assert os.stat(process.notify.directory).st_mode & 0o777 == 0o700
        start(process=process)
        wait_state(process, "READY=1")
        assert registrations(prog)
        process.send(signal.SIGHUP)
        wait_state(process, "RELOADING=1")
        wait_state(process, "READY=1")
        process.send(signal.SIGTERM)
        wait_state(process, "STOPPING=1")
        assert process.wait(15) == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


# 2. dracclient.notify itself


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], socket.socket]]:
    """``manager(address)``: a datagram socket bound there, NOTIFY_SOCKET naming it."""
    socks: list[socket.socket] = []

    def make(address: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + address[1:] if address.startswith("@") else address)
        sock.settimeout(5)
        socks.append(sock)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        return sock

    yield make
    sd.close()
    for sock in socks:
        sock.close()


def test_notify_abstract_socket(manager: Callable[[str], socket.socket]) -> None:
    sock = manager(f"@dracd-test-{os.getpid()}-{time.monotonic_ns()}")
    assert sd.notify("READY=1", "STATUS=x")
    assert sock.recv(4096) == b"READY=1\nSTATUS=x"
    assert sd.connect()
    assert sd.reloading()
    assert sock.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")


def test_notify_without_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sd.connect()
    assert not sd.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not sd.connect()
    assert not sd.notify("READY=1")


def test_connected_socket_survives_losing_access_and_falls_back_after_recreation(
    manager: Callable[[str], socket.socket], tmp_path: Path
) -> None:
    path = str(tmp_path / "notify")
    first = manager(path)
    assert sd.connect()
    os.rename(path, path + ".old")  # the path no longer leads to it: only the connection does
    assert sd.notify("READY=1")
    assert first.recv(4096) == b"READY=1"
    first.close()
    second = manager(path)  # the manager re-created its socket (daemon-reexec)
    assert sd.notify("STOPPING=1")
    assert second.recv(4096) == b"STOPPING=1"


# 3. the unit file


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_is_a_notify_service_reloaded_by_sighup() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"] == "/usr/local/bin/dracd -c /etc/dracd/dracd.yaml"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_unit_orders_rpcbind_before_and_the_mtas_after() -> None:
    section = unit()["Unit"]
    for key in ("Wants", "After"):
        assert {"rpcbind.service", "rpcbind.socket"} <= set(section[key].split())
    assert {"postfix.service", "sendmail.service", "exim4.service"} <= set(section["Before"].split())


def test_unit_has_no_user_and_says_why() -> None:
    service = unit()["Service"]
    assert "User" not in service and "DynamicUser" not in service and "Group" not in service
    text = UNIT.read_text()
    assert "# No User= on purpose" in text
    assert "`user:`" in text and "superuser" in text


def test_unit_hardening_still_lets_dracd_work() -> None:
    service = unit()["Service"]
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["NoNewPrivileges"] == "yes"
    # /run/dracd holds the default admin socket; both default maps' directories stay writable.
    assert service["RuntimeDirectory"] == DEFAULT_ADMIN_SOCKET.parent.name
    assert DEFAULT_ADMIN_SOCKET.parent == Path("/run") / service["RuntimeDirectory"]
    writable = [p.lstrip("-") for p in service["ReadWritePaths"].split()]
    assert str(DRAC_DIR) in writable and str(MAIL_DIR) in writable
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    caps = set(service["CapabilityBoundingSet"].split())
    assert {"CAP_SETUID", "CAP_SETGID"} <= caps
    assert "CAP_SYS_ADMIN" not in caps
    assert service["SystemCallFilter"] == "@system-service"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: `make install` installs the systemd package"
    # verify insists that ExecStart= exists: point it at this checkout's dracd.
    text = UNIT.read_text().replace("/usr/local/bin/dracd", str(DRACD))
    copy = tmp_path / "dracd.service"
    copy.write_text(text)
    # --man=no: the man pages in Documentation= need not be installed here.
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert "dracd.service" not in output, output


def test_unit_descriptor_limit_covers_the_default_limits_on_many_endpoints() -> None:
    """A flood of connects must not exhaust the descriptors the map and journal need
    (the hardening issue): LimitNOFILE holds 20 stream endpoints at the default
    max_connections, with what stream.fit_descriptors adds per endpoint and keeps back."""
    from dracd.config import Config
    from dracd.server.stream import ACCEPT_BATCH, RESERVE

    limit = int(unit()["Service"]["LimitNOFILE"])
    baseline = 64  # what dracd has open before the endpoints serve: listeners, journal, rpcbind...
    assert limit >= baseline + RESERVE + 20 * (Config().max_connections + 2 * ACCEPT_BATCH)
