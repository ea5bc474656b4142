"""dracctl against a real server: every command, its output and exit codes."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import dracd
from dracclient.cli import EX_OK, EX_REFUSED, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, local_time, main
from dracd.config import load_config
from tests.fixtures.mounts import set_readonly, tmpfs
from tests.fixtures.server import ServerThread, map_keys

Make = Callable[..., ServerThread]


def ctl(server: ServerThread, *args: str) -> int:
    return main(["--program", str(server.config.program), "-p", str(server.port), *args])


def test_add_prints_and_exits_0(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(server, "add", "192.0.2.7", "2001:db8::7") == EX_OK
    assert capsys.readouterr().out == "192.0.2.7: added\n2001:db8::7: added\n"
    assert {b"192.0.2.7", b"2001:db8::7"} <= set(map_keys(server.config.map.path))
    assert ctl(server, "--tcp", "add", "192.0.2.8") == EX_OK
    assert b"192.0.2.8" in map_keys(server.config.map.path)


def test_add_through_rpcbind_without_a_port(rpcbind: None, make_server: Make) -> None:
    server = make_server(rpcbind=True)
    assert main(["--program", str(server.config.program), "add", "192.0.2.9"]) == EX_OK
    assert main(["--program", str(server.config.program), "-s", "::1", "--tcp", "add", "192.0.2.10"]) == EX_OK
    assert {b"192.0.2.9", b"192.0.2.10"} <= set(map_keys(server.config.map.path))


def test_refused_caller_exits_1(make_server: Make, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dracd.allow").write_text("255.255.255.255 127.0.0.9\n")
    server = make_server()
    assert ctl(server, "add", "192.0.2.7") == EX_REFUSED
    assert "ADD_PERM" in capsys.readouterr().err
    assert map_keys(server.config.map.path) == {}


def test_unreachable_server_exits_69(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert main(["-p", str(port), "--tcp", "-t", "1", "add", "192.0.2.7"]) == EX_UNAVAILABLE
    assert "192.0.2.7" in capsys.readouterr().err


def test_bad_address_and_usage_exit_64(server: ServerThread) -> None:
    assert ctl(server, "add", "not-an-address") == EX_USAGE
    assert main(["frobnicate"]) == EX_USAGE
    assert main([]) == EX_USAGE


def test_console_script_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "dracclient.cli", "--help"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0 and "add" in result.stdout


# ---- every command, against a real server ----

LOOPBACK_ADMINS = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
Capsys = pytest.CaptureFixture[str]


def prog(server: ServerThread) -> list[str]:
    return ["--program", str(server.config.program)]


def sock(server: ServerThread, *args: str) -> int:
    """dracctl over the server's admin socket."""
    return main([*prog(server), "-S", str(server.config.admin_socket), *args])


def tcp_admin(server: ServerThread, host: str, *args: str) -> int:
    """dracctl admin commands over TCP to ``host``."""
    return main([*prog(server), "-p", str(server.port), "-s", host, *args])


def one_error(err: str, *fragments: str) -> str:
    """stderr is one line starting with 'dracctl: ', mentioning ``fragments``, and no traceback."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dracctl: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)
    return lines[0]


def errors(err: str) -> list[str]:
    """Several error lines (one per failed address or server), each well-formed."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines and all(line.startswith("dracctl: ") for line in lines), err
    return lines


def expiry_in_map(server: ServerThread, key: str) -> int:
    return int(map_keys(server.config.map.path)[key.encode()])


@pytest.fixture
def admin_server(make_server: Make) -> ServerThread:
    return make_server(admin_allow=LOOPBACK_ADMINS)


def test_add_with_lifetime_over_the_socket(server: ServerThread, capsys: Capsys) -> None:
    before = time.time()
    assert sock(server, "add", "--lifetime", "45m", "192.0.2.7", "2001:db8::7") == EX_OK
    assert capsys.readouterr().out == "192.0.2.7: added\n2001:db8::7: added\n"
    for key in ("192.0.2.7", "2001:db8::7"):
        assert abs(expiry_in_map(server, key) - (before + 45 * 60)) <= 2
    # Without --lifetime, -S still means the admin socket: the server's lifetime.
    assert sock(server, "add", "192.0.2.8") == EX_OK
    assert abs(expiry_in_map(server, "192.0.2.8") - (before + server.config.lifetime)) <= 2
    assert capsys.readouterr().out == "192.0.2.8: added\n"
    assert sock(server, "--json", "add", "--lifetime", "1h", "192.0.2.9") == EX_OK
    assert json.loads(capsys.readouterr().out) == [{"address": "192.0.2.9", "ok": True}]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_add_with_lifetime_over_tcp(admin_server: ServerThread, host: str, capsys: Capsys) -> None:
    before = time.time()
    assert tcp_admin(admin_server, host, "add", "--lifetime", "2h", "192.0.2.7") == EX_OK
    assert capsys.readouterr().out == "192.0.2.7: added\n"
    assert abs(expiry_in_map(admin_server, "192.0.2.7") - (before + 7200)) <= 2


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("transport", [[], ["--tcp"]], ids=["udp", "tcp"])
def test_add_and_ping_over_each_transport_and_family(server: ServerThread, host: str, transport: list[str],
                                                     capsys: Capsys) -> None:
    assert ctl(server, *transport, "-s", host, "add", "192.0.2.20") == EX_OK
    assert capsys.readouterr().out == "192.0.2.20: added\n"
    assert b"192.0.2.20" in map_keys(server.config.map.path)
    assert ctl(server, *transport, "-s", host, "ping") == EX_OK
    assert re.fullmatch(rf"{re.escape(host)}: NULL answered in \d+\.\d\d ms\n", capsys.readouterr().out)
    assert ctl(server, *transport, "-s", host, "--json", "ping") == EX_OK
    [record] = json.loads(capsys.readouterr().out)
    assert record["server"] == host and record["ok"] is True and record["rtt_ms"] > 0


def test_ping_over_the_socket(server: ServerThread, capsys: Capsys) -> None:
    assert sock(server, "ping") == EX_OK
    assert re.fullmatch(rf"{re.escape(str(server.config.admin_socket))}: NULL answered in \d+\.\d\d ms\n",
                        capsys.readouterr().out)


@pytest.mark.parametrize("transport", [[], ["--tcp"]], ids=["udp", "tcp"])
def test_one_server_down_the_live_one_gets_the_add(server: ServerThread, transport: list[str],
                                                   capsys: Capsys) -> None:
    # Nothing listens on 127.0.0.3 (the server binds 127.0.0.1): refused at once, on either transport.
    assert ctl(server, *transport, "-t", "3", "-s", "127.0.0.1", "-s", "127.0.0.3", "add", "192.0.2.30") \
        == EX_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == "192.0.2.30: added on 127.0.0.1\n"
    [line] = errors(err)
    assert line.startswith("dracctl: 192.0.2.30 on 127.0.0.3: ") and "127.0.0.3" in line[len("dracctl: 192.0"):]
    assert b"192.0.2.30" in map_keys(server.config.map.path)


def test_del(server: ServerThread, capsys: Capsys) -> None:
    assert sock(server, "add", "--lifetime", "10m", "192.0.2.1", "192.0.2.2", "2001:db8::1") == EX_OK
    capsys.readouterr()
    assert sock(server, "del", "192.0.2.1", "2001:db8::1") == EX_OK
    assert capsys.readouterr().out == "192.0.2.1: deleted\n2001:db8::1: deleted\n"
    assert set(map_keys(server.config.map.path)) == {b"192.0.2.2"}  # written before dracctl returned
    assert sock(server, "del", "192.0.2.1") == EX_REFUSED
    out, err = capsys.readouterr()
    assert out == ""
    one_error(err, "192.0.2.1", "not in the table")
    # One missing address among several: the others are still deleted, exit 1.
    assert sock(server, "del", "192.0.2.9", "192.0.2.2") == EX_REFUSED
    out, err = capsys.readouterr()
    assert out == "192.0.2.2: deleted\n"
    one_error(err, "192.0.2.9")
    assert map_keys(server.config.map.path) == {}


def test_list_and_list_json(server: ServerThread, capsys: Capsys) -> None:
    assert sock(server, "list") == EX_OK
    assert capsys.readouterr().out == ""
    assert sock(server, "add", "--lifetime", "1h", "2001:db8::1", "192.0.2.10") == EX_OK
    assert sock(server, "add", "--lifetime", "10m", "192.0.2.9") == EX_OK
    capsys.readouterr()
    expiry = {key.decode(): int(value) for key, value in map_keys(server.config.map.path).items()}
    now = time.time()

    assert sock(server, "list") == EX_OK
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["192.0.2.9", "192.0.2.10", "2001:db8::1"]  # family, then value
    for line in lines:
        address = line.split()[0]
        assert local_time(expiry[address]) in line
        assert abs(int(line.split()[-1]) - (expiry[address] - now)) <= 2

    for args in (["list", "--json"], ["--json", "list"]):
        assert sock(server, *args) == EX_OK
        records = json.loads(capsys.readouterr().out)
        assert [r["address"] for r in records] == ["192.0.2.9", "192.0.2.10", "2001:db8::1"]
        for record in records:
            assert set(record) == {"address", "expiry", "expires", "seconds_left"}
            assert record["expiry"] == expiry[record["address"]]
            assert record["expires"] == local_time(record["expiry"])
            assert abs(record["seconds_left"] - (record["expiry"] - now)) <= 2


def test_flush(server: ServerThread, capsys: Capsys) -> None:
    assert sock(server, "add", "--lifetime", "10m", "192.0.2.1", "2001:db8::1") == EX_OK
    capsys.readouterr()
    assert sock(server, "flush") == EX_OK
    assert capsys.readouterr().out == "flushed 2 entries\n"
    assert map_keys(server.config.map.path) == {}
    assert sock(server, "--json", "flush") == EX_OK
    assert json.loads(capsys.readouterr().out) == {"removed": 0}


def test_status(server: ServerThread, capsys: Capsys) -> None:
    assert sock(server, "add", "--lifetime", "10m", "192.0.2.1") == EX_OK
    capsys.readouterr()
    assert sock(server, "status") == EX_OK
    out = capsys.readouterr().out
    assert "entries:     1\n" in out
    assert f"map:         btree:{server.config.map.path}\n" in out
    assert f"lifetime:    {server.config.lifetime} s\n" in out and "last write:  never" not in out
    assert "counters:" in out and "\n  table_entries 1\n" in out
    assert sock(server, "status", "--json") == EX_OK
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"entries", "map_path", "map_type", "last_write", "last_write_ms", "lifetime", "started",
                         "version", "counters"}
    assert data["counters"]["table_entries"] == 1 and data["counters"]["map_write_us_count"] >= 2
    assert (data["entries"], data["map_path"], data["map_type"], data["lifetime"]) == (
        1, str(server.config.map.path), "btree", server.config.lifetime)
    assert abs(data["last_write"] - time.time()) < 60 and data["version"] == dracd.__version__


def test_check(server: ServerThread, capsys: Capsys) -> None:
    assert sock(server, "add", "--lifetime", "10m", "192.0.2.1") == EX_OK
    capsys.readouterr()
    assert sock(server, "check", "192.0.2.1") == EX_OK
    match = re.fullmatch(r"192\.0\.2\.1: authorized until (.+) \((\d+) s left\)\n", capsys.readouterr().out)
    assert match and match[1] == local_time(expiry_in_map(server, "192.0.2.1")) and 590 <= int(match[2]) <= 600
    assert sock(server, "check", "::ffff:192.0.2.1") == EX_OK  # the IPv4-mapped form is the same client
    capsys.readouterr()
    assert sock(server, "check", "192.0.2.2") == EX_REFUSED
    assert capsys.readouterr().out == "192.0.2.2: not authorized\n"
    assert sock(server, "--json", "check", "192.0.2.2") == EX_REFUSED
    assert json.loads(capsys.readouterr().out) == {"address": "192.0.2.2", "authorized": False}
    assert sock(server, "--json", "check", "192.0.2.1") == EX_OK
    data = json.loads(capsys.readouterr().out)
    assert data["authorized"] is True and data["expiry"] == expiry_in_map(server, "192.0.2.1")


# ---- where the admin socket comes from ----

def test_socket_from_environment(server: ServerThread, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                 capsys: Capsys) -> None:
    assert sock(server, "add", "--lifetime", "10m", "192.0.2.1") == EX_OK
    capsys.readouterr()
    monkeypatch.setenv("DRACD_SOCKET", str(server.config.admin_socket))
    assert main([*prog(server), "check", "192.0.2.1"]) == EX_OK
    assert main([*prog(server), "--json", "list"]) == EX_OK
    capsys.readouterr()
    # -S wins over the environment.
    monkeypatch.setenv("DRACD_SOCKET", str(tmp_path / "nothing-here.sock"))
    assert sock(server, "check", "192.0.2.1") == EX_OK
    assert main([*prog(server), "check", "192.0.2.1"]) == EX_UNAVAILABLE
    one_error(capsys.readouterr().err, "nothing-here.sock")


def test_socket_from_dracd_config(make_server: Make, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  capsys: Capsys) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "dracd.yaml"
    config.write_text("admin_socket: x.sock   # relative to this file\nlifetime: 20m\n")
    assert load_config(config).admin_socket == etc / "x.sock"  # as dracd reads it
    server = make_server(admin_socket=etc / "x.sock")
    monkeypatch.delenv("DRACD_SOCKET", raising=False)
    assert main([*prog(server), "-c", str(config), "add", "--lifetime", "10m", "192.0.2.1"]) == EX_OK
    monkeypatch.chdir(tmp_path)  # a relative -c: the socket is still relative to the file
    assert main([*prog(server), "-c", "etc/dracd.yaml", "check", "192.0.2.1"]) == EX_OK
    monkeypatch.setenv("DRACD_CONFIG", str(config))
    assert main([*prog(server), "del", "192.0.2.1"]) == EX_OK
    assert capsys.readouterr().out.endswith("192.0.2.1: deleted\n")
    assert map_keys(server.config.map.path) == {}
    assert main([*prog(server), "-c", str(tmp_path / "missing.yaml"), "list"]) == EX_USAGE
    one_error(capsys.readouterr().err, "missing.yaml")


# ---- exit codes and errors ----

def test_usage_errors_exit_64(server: ServerThread, capsys: Capsys) -> None:
    cases = [
        (["add", "--lifetime", "45m", "not-an-address"], "not-an-address"),
        (["del", "192.0.2.300"], "192.0.2.300"),
        (["check", "example.org"], "example.org"),
        (["add", "--lifetime", "45x", "192.0.2.1"], "45x"),
        (["add", "--lifetime", "0m", "192.0.2.1"], "positive"),
        (["add", "--lifetime", "45", "192.0.2.1"], "'45'"),
        (["frobnicate"], "frobnicate"),
        (["del"], "ADDRESS"),
        ([], "COMMAND"),
        (["add", "--lifetime", "45m", "224.0.0.1"], "rejected 224.0.0.1: not a unicast host address"),  # ADMIN_INVAL
        (["add", "--lifetime", "4000d", "192.0.2.1"], "lifetime 4000d is over ten years"),  # before any call
        (["add", "--lifetime", "1h", "0.0.0.0"], "rejected 0.0.0.0: not a unicast host address"),
    ]
    for args, fragment in cases:
        assert sock(server, *args) == EX_USAGE, args
        one_error(capsys.readouterr().err, fragment)
    assert main(["-s", "mail.example.org", "ping"]) == EX_USAGE  # host names are never resolved
    one_error(capsys.readouterr().err, "mail.example.org")
    assert map_keys(server.config.map.path) == {}


def test_unavailable_exits_69(server: ServerThread, tmp_path: Path, capsys: Capsys) -> None:
    for command in (["list"], ["status"], ["del", "192.0.2.1"], ["ping"], ["check", "192.0.2.1"]):
        assert main([*prog(server), "-S", str(tmp_path / "absent.sock"), *command]) == EX_UNAVAILABLE
        one_error(capsys.readouterr().err, "absent.sock")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = str(closed.getsockname()[1])
        assert main([*prog(server), "-p", port, "-s", "127.0.0.1", "-t", "2", "status"]) == EX_UNAVAILABLE
        one_error(capsys.readouterr().err, "127.0.0.1")
        assert main([*prog(server), "-p", port, "-s", "127.0.0.1", "-t", "2", "--tcp", "ping"]) == EX_UNAVAILABLE
        one_error(capsys.readouterr().err, "127.0.0.1")


def test_non_admin_network_caller_exits_1(server: ServerThread, capsys: Capsys) -> None:
    """The default admin_allow is empty: TCP admin calls from loopback are refused."""
    assert sock(server, "add", "--lifetime", "10m", "192.0.2.1") == EX_OK
    capsys.readouterr()
    for command in (["list"], ["flush"], ["del", "192.0.2.1"], ["add", "--lifetime", "1h", "192.0.2.2"]):
        assert tcp_admin(server, "127.0.0.1", *command) == EX_REFUSED
        one_error(capsys.readouterr().err, "not an admin caller", "AUTH_TOOWEAK")
    assert set(map_keys(server.config.map.path)) == {b"192.0.2.1"}


def test_map_write_failure_exits_75(make_server: Make, tmp_path: Path, capsys: Capsys) -> None:
    with tmpfs(tmp_path / "maps") as directory:
        server = make_server(map_path=directory / "dracd.db")
        try:
            assert sock(server, "add", "--lifetime", "10m", "192.0.2.1") == EX_OK
            capsys.readouterr()
            set_readonly(directory, True)
            try:
                assert sock(server, "add", "--lifetime", "45m", "192.0.2.2") == EX_TEMPFAIL
                one_error(capsys.readouterr().err, "192.0.2.2", "could not write its map")
                assert sock(server, "del", "192.0.2.1") == EX_TEMPFAIL
                one_error(capsys.readouterr().err, "192.0.2.1", "could not write its map")
                assert ctl(server, "add", "192.0.2.3") == EX_TEMPFAIL  # a legacy ADD: ADD_SYSERR
                one_error(capsys.readouterr().err, "192.0.2.3", "ADD_SYSERR")
                assert set(map_keys(directory / "dracd.db")) == {b"192.0.2.1"}
            finally:
                set_readonly(directory, False)
        finally:
            server.stop()


def test_dracctl_console_script(server: ServerThread) -> None:
    assert sock(server, "add", "--lifetime", "10m", "192.0.2.77") == EX_OK
    script = Path(sys.executable).parent / "dracctl"
    result = subprocess.run([str(script), *prog(server), "-S", str(server.config.admin_socket), "list"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "192.0.2.77" and result.stderr == ""
    result = subprocess.run([str(script), *prog(server), "-S", str(server.config.admin_socket), "del", "192.0.2.1"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == EX_REFUSED and "Traceback" not in result.stderr
    assert result.stderr.startswith("dracctl: ") and result.stderr.count("\n") == 1


def test_legacy_add_of_a_non_host_address_exits_64(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(server, "add", "224.0.0.1") == EX_USAGE
    err = capsys.readouterr().err
    assert err.startswith("dracctl: ") and "ADD_UNKOWN" in err and "Traceback" not in err
    assert map_keys(server.config.map.path) == {}
