"""socketmap lookups from the live table: raw netstrings over TCP and a UNIX
socket, expiry to the second without any file, and a real Postfix using
``check_client_access socketmap:...`` (relay, refuse, 451 when dracd is down)."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dracclient import add
from dracclient.cli import main as dracctl
from dracd.config import ConfigError, config_from_dict
from dracd.programs.socketmap import parse_spec
from dracd.server.netstring import NetstringReader, encode
from tests.fixtures.postfix import PostfixInstance
from tests.fixtures.server import ServerThread


class Client:
    """One socketmap connection, like an MTA's: several lookups on it."""

    def __init__(self, address: tuple[str, int] | str) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(address)
        self.reader = NetstringReader()
        self.replies: list[bytes] = []

    def raw(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        while not self.replies:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed")
            self.replies += self.reader.feed(chunk)
        return self.replies.pop(0)

    def lookup(self, key: str | bytes, name: bytes = b"drac") -> bytes:
        key = key.encode() if isinstance(key, str) else key
        return self.raw(encode(name + b" " + key))

    def close(self) -> None:
        self.sock.close()


def inet_port(server: ServerThread) -> int:
    assert server.daemon is not None and server.daemon.socketmap is not None
    return next(spec.port for spec in server.daemon.socketmap.bound if spec.kind == "inet")


@pytest.fixture
def sm_server(make_server: Callable[..., ServerThread], tmp_path: Path) -> ServerThread:
    return make_server(socketmap=("inet:127.0.0.1:0", f"unix:{tmp_path / 'socketmap.sock'}"))


def test_lookups_over_tcp_and_unix(sm_server: ServerThread, tmp_path: Path) -> None:
    prog = sm_server.config.program
    add("192.0.2.7", servers="127.0.0.1", port=sm_server.port, prog=prog)
    add("2001:db8::7", servers="127.0.0.1", port=sm_server.port, prog=prog)
    for address in [("127.0.0.1", inet_port(sm_server)), str(tmp_path / "socketmap.sock")]:
        client = Client(address)
        try:
            ok = client.lookup("192.0.2.7")
            assert ok.startswith(b"OK ") and int(ok[3:]) > time.time()
            assert client.lookup("192.0.2.8") == b"NOTFOUND "
            assert client.lookup("2001:db8::7").startswith(b"OK ")
            assert client.lookup("2001:DB8::7") == client.lookup("2001:db8::7")
            assert client.lookup("ipv6:2001:db8:0:0:0:0:0:7").startswith(b"OK ")
            assert client.lookup("IPv6:2001:DB8:0:0:0:0:0:7").startswith(b"OK ")
            assert client.lookup(b"192.0.2.7\0").startswith(b"OK ")
            assert client.lookup("192.0.2.7/32").startswith(b"OK ")
            assert client.lookup("anything-else 192.0.2.7", name=b"other").startswith(b"NOTFOUND")
            assert client.lookup("192.0.2.7", name=b"other").startswith(b"OK ")  # any NAME
            for garbage in ["unknown", "127.0.0", "192.0.2", "0.0.0.0", "::", "255.255.255.255", "224.0.0.1",
                            "192.0.2.7/24", "x" * 200, "\xe9"]:
                assert client.lookup(garbage) == b"NOTFOUND ", garbage
            assert client.raw(encode(b"drac")) == b"PERM bad request"
            assert client.raw(encode(b"drac ")) == b"PERM bad request"
            assert client.raw(encode(b"")) == b"PERM bad request"
            assert client.lookup("192.0.2.7").startswith(b"OK ")  # still serving after a bad request
        finally:
            client.close()


def test_pieces_and_pipelining(sm_server: ServerThread) -> None:
    add("192.0.2.9", servers="127.0.0.1", port=sm_server.port, prog=sm_server.config.program)
    client = Client(("127.0.0.1", inet_port(sm_server)))
    try:
        stream = encode(b"drac 192.0.2.9") + encode(b"drac 192.0.2.10")
        for byte in stream[:-1]:
            client.sock.sendall(bytes([byte]))
        assert client.raw(stream[-1:]).startswith(b"OK ")
        assert client.raw(b"") == b"NOTFOUND "
    finally:
        client.close()


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.0\r\n\r\n", b"10001:", b"3:abc;"])
def test_broken_framing_closes(sm_server: ServerThread, junk: bytes) -> None:
    client = Client(("127.0.0.1", inet_port(sm_server)))
    try:
        assert client.raw(junk) == b"PERM bad request"
        assert client.sock.recv(100) == b""
    finally:
        client.close()
    client = Client(("127.0.0.1", inet_port(sm_server)))  # the server goes on
    try:
        assert client.lookup("192.0.2.1") == b"NOTFOUND "
    finally:
        client.close()


def test_expiry_is_exact_to_the_second(make_server: Callable[..., ServerThread]) -> None:
    now = [1_800_000_000.0]
    server = make_server(clock=lambda: now[0], lifetime=2, socketmap=("inet:127.0.0.1:0",))
    daemon = server.daemon
    assert daemon is not None
    server.call(lambda: daemon.table.add(ipaddress.ip_address("192.0.2.20"), 2))
    client = Client(("127.0.0.1", inet_port(server)))
    try:
        assert client.lookup("192.0.2.20") == b"OK 1800000002"
        now[0] = 1_800_000_001.999
        assert client.lookup("192.0.2.20") == b"OK 1800000002"
        now[0] = 1_800_000_002.0
        assert client.lookup("192.0.2.20") == b"NOTFOUND "
    finally:
        client.close()


def test_expiry_with_the_real_clock(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(lifetime=2, socketmap=("inet:127.0.0.1:0",))
    add("192.0.2.21", servers="127.0.0.1", port=server.port, prog=server.config.program)
    client = Client(("127.0.0.1", inet_port(server)))
    try:
        reply = client.lookup("192.0.2.21")
        assert reply.startswith(b"OK ")
        expiry = int(reply[3:])
        while time.time() < expiry - 0.05:
            assert client.lookup("192.0.2.21") == reply
            time.sleep(0.1)
        while time.time() < expiry:
            time.sleep(0.005)
        assert client.lookup("192.0.2.21") == b"NOTFOUND "
    finally:
        client.close()


def test_config_and_specs(tmp_path: Path) -> None:
    config = config_from_dict({"socketmap": ["inet:127.0.0.1:8800", "inet:[::1]:8800", "unix:sm.sock"]},
                              tmp_path / "dracd.yaml")
    assert config.socketmap == ("inet:127.0.0.1:8800", "inet:[::1]:8800", f"unix:{tmp_path / 'sm.sock'}")
    assert config_from_dict({"socketmap": []}, tmp_path / "x.yaml").socketmap == ()
    for bad in ["tcp:127.0.0.1:1", "inet:localhost:1", "inet:127.0.0.1", "inet:127.0.0.1:70000", "unix:", 5]:
        with pytest.raises(ConfigError, match="socketmap"):
            config_from_dict({"socketmap": [bad]}, tmp_path / "x.yaml")
    assert str(parse_spec("inet:::1:25")) == "inet:[::1]:25"


def test_cli_flag(tmp_path: Path) -> None:
    from dracd.app.cli import build_parser, resolve_config

    args = build_parser().parse_args(["--socketmap", "inet:127.0.0.1:8800", "--socketmap", "unix:sm.sock"])
    config = resolve_config(args)
    assert config.socketmap == ("inet:127.0.0.1:8800", f"unix:{Path('sm.sock').absolute()}")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--socketmap", "inet:nowhere"])


def test_postfix_socketmap_end_to_end(
    make_server: Callable[..., ServerThread],
    postfix_factory: Callable[..., PostfixInstance],
) -> None:
    server = make_server(socketmap=("inet:127.0.0.1:0",))
    port = inet_port(server)
    rule = (f"permit_mynetworks, check_client_access socketmap:inet:127.0.0.1:{port}:drac, "
            "reject_unauth_destination")
    postfix = postfix_factory(server.config.map.path, extra_main_cf={"smtpd_relay_restrictions": rule})
    prog = server.config.program

    code, text = postfix.probe_relay("127.0.0.5")
    assert code == 554 and "Relay access denied" in text, (code, text)

    add("127.0.0.5", servers="127.0.0.1", port=server.port, prog=prog)
    assert postfix.probe_relay("127.0.0.5")[0] == 250
    assert postfix.probe_relay("127.0.0.6")[0] == 554

    assert dracctl(["-S", str(server.config.admin_socket), "--program", str(prog), "del", "127.0.0.5"]) == 0
    assert postfix.probe_relay("127.0.0.5")[0] == 554

    add("127.0.0.5", servers="127.0.0.1", port=server.port, prog=prog)
    assert postfix.probe_relay("127.0.0.5")[0] == 250
    # dracd down: a temporary failure, never a relay (Postfix says 4.3.5 "Server configuration error").
    server.stop()
    code, text = postfix.probe_relay("127.0.0.5")
    assert code == 451 and "4.3.5" in text, (code, text)
