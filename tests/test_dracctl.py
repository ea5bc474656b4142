"""dracctl add against a real server: output and exit codes."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dracclient.cli import EX_OK, EX_REFUSED, EX_UNAVAILABLE, EX_USAGE, main
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
