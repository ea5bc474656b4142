"""dracd as Dovecot's authentication policy server (dracd/programs/dovecot.py, served by
the one stream server with the HTTP framing of dracd/server/http.py).

First the endpoint over raw sockets against a real dracd (ServerThread): a
``report`` of a successful login authorizes ``remote`` (IPv4, IPv6, v4-mapped
as IPv4) once the map holds it; ``allow`` and failed logins change nothing;
no, wrong or non-Bearer secrets get 401 and change nothing; garbage gets
400/404/405/413/431 and never costs the server; keep-alive, pipelining in
order, clients that do not read, slow senders and connection floods stay
bounded; the allow list governs who may report; SIGHUP re-reads the secret.

Then end to end with the real Dovecot 2.3 from Debian (tests/fixtures/dovecot.py)
configured with ``auth_policy_server_url`` and no post-login script: POP3 and
IMAP logins over IPv4 and IPv6 put the client in the map and Postfix relays for
it; failed logins add nothing; a Dovecot sending no or a wrong secret adds
nothing; dracd stopped (connection refused) or hanging (accepts, never answers)
leaves logins working, within Dovecot's auth_policy_server_timeout_msecs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dracd.config import ConfigError, DovecotPolicyConfig, config_from_dict
from dracd.programs.dovecot import DovecotPolicy
from tests.fixtures.dovecot import DovecotInstance, Login, policy_conf
from tests.fixtures.postfix import PostfixInstance
from tests.fixtures.server import ServerThread, map_keys, wait_for
from tests.fixtures.tools import free_port

SECRET = "0123456789abcdef0123456789abcdef"


# ----------------------------------------------------------------- helpers


def write_secret(path: Path, secret: str = SECRET) -> Path:
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def policy_of(server: ServerThread) -> DovecotPolicy:
    assert server.daemon is not None and server.daemon.dovecot is not None
    return server.daemon.dovecot


def port_of(server: ServerThread) -> int:
    bound = policy_of(server).bound
    assert bound is not None
    return bound.port


@pytest.fixture
def policy_server(make_server: Callable[..., ServerThread], tmp_path: Path) -> Callable[..., ServerThread]:
    """``policy_server(**changes)``: a dracd with dovecot_policy on 127.0.0.1, port picked."""
    secret = write_secret(tmp_path / "dovecot.secret")

    def make(listen: str = "inet:127.0.0.1:0", **changes: object) -> ServerThread:
        return make_server(dovecot_policy=DovecotPolicyConfig(listen, secret), **changes)

    return make


def request(path: str = "/?command=report", body: bytes | dict[str, object] = b"", *, method: str = "POST",
            secret: str | None = SECRET, headers: tuple[str, ...] = (), scheme: str = "Bearer") -> bytes:
    """One HTTP/1.1 request's bytes, as Dovecot's http-client writes it."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Content-Length: {len(data)}", *headers]
    if secret is not None:
        lines.append(f"Authorization: {scheme} {secret}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def report(remote: str, success: bool = True, **fields: object) -> dict[str, object]:
    """A report as Dovecot 2.3's default auth_policy_request_attributes make it."""
    return {"login": "alice", "pwhash": "8b1", "remote": remote, "device_id": "", "protocol": "imap",
            "session_id": "abc", "success": success, "policy_reject": False, "tls": False, **fields}


class Client:
    """One keep-alive connection; responses parsed by hand (status, headers, body)."""

    def __init__(self, address: tuple[str, int] | str, timeout: float = 5.0) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while (end := self.buffer.find(b"\r\n\r\n", 0, 8192)) < 0:
            self._more()
        head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
        status_line, *header_lines = head.decode().split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by dracd (buffered {self.buffer[:80]!r})")
        self.buffer += chunk

    def call(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        self.send(data)
        return self.response()

    def closed(self, timeout: float = 5.0) -> bool:
        """Whether dracd closes the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(address: tuple[str, int] | str, timeout: float = 5.0) -> Client:
        client = Client(address, timeout)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


CARRY_ON = {"status": 0, "msg": ""}


# ----------------------------------------------------------------- the endpoint


@pytest.mark.parametrize(("remote", "key"), [("192.0.2.7", b"192.0.2.7"), ("2001:db8::7", b"2001:db8::7"),
                                             ("::ffff:192.0.2.8", b"192.0.2.8")])
def test_a_successful_login_is_in_the_map_when_answered(
    policy_server: Callable[..., ServerThread], clients: Callable[..., Client], remote: str, key: bytes
) -> None:
    server = policy_server(lifetime=1800)
    client = clients(("127.0.0.1", port_of(server)))
    status, headers, body = client.call(request(body=report(remote)))
    now = time.time()
    assert (status, json.loads(body)) == (200, CARRY_ON)
    assert headers["content-type"] == "application/json"
    keys = map_keys(server.config.map.path)
    assert list(keys) == [key]
    assert now + 1800 - 5 <= int(keys[key]) <= now + 1800 + 5
    # Counted as an ADD over transport dovecot.
    assert server.daemon is not None
    assert server.daemon.metrics.adds.get("1" if b"." in key else "2", "dovecot", "ADD_SUCCESS") == 1


def test_allow_and_failed_logins_change_nothing(
    policy_server: Callable[..., ServerThread], clients: Callable[..., Client]
) -> None:
    server = policy_server()
    client = clients(("127.0.0.1", port_of(server)))
    for data in (request("/?command=allow", report("192.0.2.1")),
                 request("/?command=allow", {"remote": "192.0.2.2"}),
                 request(body=report("192.0.2.3", success=False)),
                 request(body=report("192.0.2.4", success=False, policy_reject=True)),
                 request(body=report("192.0.2.5", success="true")),  # only JSON true is success
                 request(body={"success": True}),  # no remote configured: nothing to add
                 request("/policy/endpoint?x=1&command=allow", report("192.0.2.6"))):
        status, _, body = client.call(data)
        assert (status, json.loads(body)) == (200, CARRY_ON), data
    assert map_keys(server.config.map.path) == {}


@pytest.mark.parametrize("secret", [None, "", "wrong-secret-wrong-secret-wrong-x", SECRET[:-1], SECRET + "x",
                                    SECRET.upper()])
def test_a_request_without_the_secret_gets_401_and_adds_nothing(
    policy_server: Callable[..., ServerThread], clients: Callable[..., Client], secret: str | None
) -> None:
    server = policy_server()
    client = clients(("127.0.0.1", port_of(server)))
    for command in ("report", "allow"):
        status, headers, _ = client.call(request(f"/?command={command}", report("192.0.2.9"), secret=secret))
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
    # Other schemes carrying the right secret are refused too.
    for scheme in ("Basic", "bearer-ish", ""):
        status, _, _ = client.call(request(body=report("192.0.2.10"), scheme=scheme))
        assert status == 401, scheme
    # The connection stays usable, and the right secret works on it.
    status, _, _ = client.call(request(body=report("192.0.2.11")))
    assert status == 200
    assert list(map_keys(server.config.map.path)) == [b"192.0.2.11"]


def test_malformed_requests_are_answered_and_cost_nothing(
    policy_server: Callable[..., ServerThread], clients: Callable[..., Client]
) -> None:
    server = policy_server()
    address = ("127.0.0.1", port_of(server))
    client = clients(address)
    # Well-framed but wrong: answered, the connection stays open.
    for data, expected in ((request(method="GET"), 405), (request(method="PUT", body=b"{}"), 405),
                           (request("/?command=delete", report("192.0.2.12")), 404),
                           (request("/", report("192.0.2.12")), 404),
                           (request("/?command=report&command=allow", report("192.0.2.12")), 404),
                           (request(body=b"{not json"), 400), (request(body=b"\xff\xfe"), 400),
                           (request(body=b"[1, 2]"), 400), (request(body=b"[" * 100_000), 413),
                           (request(body=b"[" * 20_000 + b"]" * 20_000), 400),
                           (request(body=report("not-an-address")), 400),
                           (request(body=report("192.0.2.300")), 400)):
        status, _, body = client.call(data)
        assert status == expected, (data[:60], status, body)
        if status != 413:
            continue
        assert client.closed()
        client = clients(address)
    # Not HTTP at all, or beyond the limits: answered, then closed.
    for data, expected in ((b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64 + b"\r\n\r\n", 400),
                           (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
                           (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n", 413),
                           (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + (b"8000\r\n" + b"x" * 0x8000 + b"\r\n") * 3, 413),
                           (b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
                           (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
                           (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
                           (b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000, 431)):
        client = clients(address)
        client.send(data)
        status, headers, _ = client.response()
        assert (status, headers.get("connection")) == (expected, "close"), data[:60]
        assert client.closed()
    # The server is fine, and nothing was added by any of it.
    client = clients(address)
    assert client.call(request(body=report("192.0.2.13")))[0] == 200
    assert list(map_keys(server.config.map.path)) == [b"192.0.2.13"]


def test_keep_alive_and_pipelined_requests_are_answered_in_order(
    policy_server: Callable[..., ServerThread], clients: Callable[..., Client]
) -> None:
    server = policy_server()
    client = clients(("127.0.0.1", port_of(server)))
    # A mix of immediate answers and ADDs that wait for the map, all in one write.
    batch, expected = [], []
    for i in range(60):
        kind = i % 3
        if kind == 0:
            batch.append(request(body=report(f"192.0.2.{i}")))
            expected.append(200)
        elif kind == 1:
            batch.append(request("/?command=nope", b"{}"))
            expected.append(404)
        else:
            batch.append(request(body=report(f"192.0.2.{i}"), secret="x" * 32))
            expected.append(401)
    client.send(b"".join(batch))
    assert [client.response()[0] for _ in batch] == expected
    assert sorted(map_keys(server.config.map.path)) == sorted(f"192.0.2.{i}".encode() for i in range(0, 60, 3))
    # HTTP/1.0 and Connection: close are answered, then closed.
    for data in (request(body=report("192.0.2.100")).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
                 request(body=report("192.0.2.101"), headers=("Connection: close",))):
        client = clients(("127.0.0.1", port_of(server)))
        assert client.call(data)[0] == 200
        assert client.closed()


def test_a_client_that_never_reads_is_not_read_and_others_are_served(
    policy_server: Callable[..., ServerThread], clients: Callable[..., Client]
) -> None:
    server = policy_server()
    address = ("127.0.0.1", port_of(server))
    greedy = clients(address)
    greedy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    greedy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    one = request("/?command=allow", b"{}")
    # Small kernel buffers on dracd's side too, so that its own limits show at once.
    assert wait_for(lambda: server.call(lambda: len(policy_of(server).server.active)) == 1, 5)
    server.call(lambda: [c.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                         for c in policy_of(server).server.active])
    greedy.sock.setblocking(False)
    batch = one * 64
    sent, offset, deadline, stalls = 0, 0, time.monotonic() + 10, 0
    while time.monotonic() < deadline and sent < 8 * 1024 * 1024 and stalls < 3:  # bounded
        try:
            n = greedy.sock.send(batch[offset:])
        except BlockingIOError:
            stalls += 1
            time.sleep(0.2)
            continue
        stalls = 0
        sent += n
        offset = (offset + n) % len(batch)
    # dracd stopped reading it long before 8 MiB: the kernel buffers filled up.
    assert stalls == 3 and sent < 8 * 1024 * 1024, sent
    def held() -> list[tuple[bool, int, int]]:
        return [(c._read_paused, c.transport.get_write_buffer_size(), len(c.framer.conn.trailing_data[0]))
                for c in policy_of(server).server.active]
    [(paused, unsent, unparsed)] = server.call(held)
    # Not read, and what it costs dracd is bounded: one read's worth of requests and their answers.
    assert paused and unsent < 1024 * 1024 and unparsed < 1024 * 1024, (paused, unsent, unparsed)
    other = clients(address)
    assert other.call(request(body=report("192.0.2.20")))[0] == 200
    # The greedy client then reads: every answer it is owed arrives, in order.
    greedy.sock.setblocking(True)
    greedy.sock.settimeout(10)
    for _ in range(sent // len(one)):
        assert greedy.response()[0] == 200


def test_slow_senders_and_floods_are_bounded(
    policy_server: Callable[..., ServerThread], clients: Callable[..., Client]
) -> None:
    server = policy_server(record_timeout=1, max_connections=8)
    address = ("127.0.0.1", port_of(server))
    # Slowloris: a request trickled a byte at a time is cut off by record_timeout.
    slow = clients(address)
    data = request(body=report("192.0.2.30"))
    start = time.monotonic()
    with pytest.raises(OSError):
        for byte in data:
            slow.send(bytes([byte]))
            time.sleep(0.05)
    assert 0.9 <= time.monotonic() - start < 3
    # 20 idle connections on a limit of 8: the quietest make room, a new client is served.
    idle = [clients(address) for _ in range(20)]
    assert wait_for(lambda: server.call(lambda: len(policy_of(server).server.active)) <= 8, 5)
    fresh = clients(address)
    assert fresh.call(request(body=report("192.0.2.31")))[0] == 200
    assert sum(client.closed(0.5) for client in idle) >= 12
    assert list(map_keys(server.config.map.path)) == [b"192.0.2.31"]


def test_the_allow_list_decides_who_may_report(
    policy_server: Callable[..., ServerThread], clients: Callable[..., Client], tmp_path: Path
) -> None:
    allow = tmp_path / "dracd.allow"
    allow.write_text("127.0.0.2/32\n")
    server = policy_server(allow_file=allow)
    refused = clients(("127.0.0.1", port_of(server)))
    status, _, body = refused.call(request(body=report("192.0.2.40")))
    assert (status, json.loads(body)) == (200, {"status": 0, "msg": "ADD_PERM"})
    allowed = socket.socket()
    allowed.bind(("127.0.0.2", 0))
    allowed.connect(("127.0.0.1", port_of(server)))
    allowed.sendall(request(body=report("192.0.2.41")))
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += allowed.recv(4096)
    allowed.close()
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert list(map_keys(server.config.map.path)) == [b"192.0.2.41"]


def test_unix_socket_endpoint(
    policy_server: Callable[..., ServerThread], clients: Callable[..., Client], tmp_path: Path
) -> None:
    path = tmp_path / "policy.sock"
    server = policy_server(listen=f"unix:{path}")
    client = clients(str(path))
    assert client.call(request(body=report("2001:db8::42")))[0] == 200  # root: an admin of dracd
    assert list(map_keys(server.config.map.path)) == [b"2001:db8::42"]
    server.stop()
    assert not path.exists()


def test_sighup_rereads_the_secret(
    policy_server: Callable[..., ServerThread], clients: Callable[..., Client], tmp_path: Path
) -> None:
    server = policy_server()
    client = clients(("127.0.0.1", port_of(server)))
    new = "fedcba9876543210fedcba9876543210"
    write_secret(tmp_path / "dovecot.secret", new)
    server.call(lambda: policy_of(server).reload(server.config.dovecot_policy))
    assert client.call(request(body=report("192.0.2.50")))[0] == 401
    assert client.call(request(body=report("192.0.2.51"), secret=new))[0] == 200
    # An unusable secret file keeps the secret in force.
    (tmp_path / "dovecot.secret").write_text("short\n")
    server.call(lambda: policy_of(server).reload(server.config.dovecot_policy))
    assert client.call(request(body=report("192.0.2.52"), secret=new))[0] == 200
    assert sorted(map_keys(server.config.map.path)) == [b"192.0.2.51", b"192.0.2.52"]


@pytest.mark.unit
def test_config(tmp_path: Path) -> None:
    config = config_from_dict({"dovecot_policy": {"listen": "inet:[::1]:8090", "secret_file": "s"}},
                              tmp_path / "dracd.yaml")
    assert config.dovecot_policy == DovecotPolicyConfig("inet:[::1]:8090", tmp_path / "s")
    config = config_from_dict({"dovecot_policy": {"listen": "unix:p.sock", "secret_file": "/s"}},
                              tmp_path / "dracd.yaml")
    assert config.dovecot_policy == DovecotPolicyConfig(f"unix:{tmp_path / 'p.sock'}", Path("/s"))
    for bad, key in (({"listen": "inet:127.0.0.1:8090"}, "dovecot_policy.secret_file"),
                     ({"listen": "http://x", "secret_file": "s"}, "dovecot_policy.listen"),
                     ({"listen": "inet:127.0.0.1:1", "secret_file": "s", "x": 1}, "dovecot_policy.x"),
                     ("inet:127.0.0.1:1", "dovecot_policy")):
        with pytest.raises(ConfigError, match=key):
            config_from_dict({"dovecot_policy": bad}, tmp_path / "dracd.yaml")


def test_a_missing_or_weak_secret_stops_the_start(
    make_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    for secret, why in ((None, "needs secret_file"), (tmp_path / "absent", "No such file"),
                        (write_secret(tmp_path / "weak", "short"), "16 to")):
        with pytest.raises(ConfigError, match=why):
            make_server(dovecot_policy=DovecotPolicyConfig("inet:127.0.0.1:0", secret))
    # Nothing left listening or locked: a good config starts.
    server = make_server(dovecot_policy=DovecotPolicyConfig("inet:127.0.0.1:0", write_secret(tmp_path / "s")))
    assert port_of(server) > 0
    assert replace(server.config).dovecot_policy is not None


# ----------------------------------------------------------------- with the real Dovecot 2.3

REPLIES = {"pop3": "+OK Logged in.", "imap": "OK Logged in"}
#: Dovecot's auth_policy_server_timeout_msecs in these tests.
POLICY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def policy_port() -> int:
    """The port Dovecot's auth_policy_server_url names: each test puts its dracd (or
    nothing, or a listener that hangs) there."""
    return free_port()


@pytest.fixture(scope="module")
def dovecot(policy_port: int) -> Iterator[DovecotInstance]:
    """One Dovecot with the auth policy client and no post-login script."""
    conf = policy_conf(f"http://127.0.0.1:{policy_port}/", header=f"Authorization: Bearer {SECRET}",
                       timeout_msecs=int(POLICY_TIMEOUT * 1000))
    with DovecotInstance(postlogin=None, extra_conf=conf) as instance:
        yield instance
        assert instance.dns_queries() == [], "Dovecot sent DNS queries"


def login(dovecot: DovecotInstance, protocol: str, client: str, **kwargs: str) -> Login:
    return dovecot.pop3_login(client, **kwargs) if protocol == "pop3" else dovecot.imap_login(client, **kwargs)


def relay_code(postfix: PostfixInstance, client: str) -> int:
    code, text = postfix.probe_relay(client)
    assert code in (250, 554), f"{client}: unexpected {code} {text}"
    return code


@pytest.fixture
def dracd_on(policy_server: Callable[..., ServerThread], policy_port: int) -> Callable[..., ServerThread]:
    """``dracd_on(**changes)``: a dracd serving Dovecot's policy URL (its port freed by
    the previous test's dracd a moment ago: retried briefly)."""
    def make(**changes: object) -> ServerThread:
        deadline = time.monotonic() + 5
        while True:
            try:
                return policy_server(listen=f"inet:127.0.0.1:{policy_port}", **changes)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    return make


@pytest.mark.parametrize("client", ["127.0.0.5", "::1"])
@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_a_login_authorizes_the_client_and_postfix_relays(
    dovecot: DovecotInstance, dracd_on: Callable[..., ServerThread],
    postfix_factory: Callable[..., PostfixInstance], protocol: str, client: str
) -> None:
    server = dracd_on(lifetime=1800)
    postfix = postfix_factory(server.config.map.path)
    assert relay_code(postfix, client) == 554
    mark = len(dovecot.log_text())

    result = login(dovecot, protocol, client)
    assert result.ok and result.reply == REPLIES[protocol], result
    assert result.after.startswith(("+OK", "OK")), result
    start = time.monotonic()
    assert wait_for(lambda: client.encode() in map_keys(server.config.map.path), 5), dovecot.diagnostics()
    # The report is sent as the login completes: the map has it within a fraction of a second.
    assert time.monotonic() - start < 1.0
    keys = map_keys(server.config.map.path)
    assert list(keys) == [client.encode()]
    assert abs(int(keys[client.encode()]) - (time.time() + 1800)) < 10
    assert relay_code(postfix, client) == 250
    assert relay_code(postfix, "127.0.0.6") == 554
    assert "Error" not in dovecot.log_text()[mark:] and "Fatal" not in dovecot.log_text()[mark:]


def test_failed_logins_add_nothing(dovecot: DovecotInstance, dracd_on: Callable[..., ServerThread]) -> None:
    server = dracd_on()
    assert not dovecot.pop3_login("127.0.0.31", password="wrong").ok
    assert not dovecot.imap_login("127.0.0.32", password="wrong").ok
    assert not dovecot.imap_login("127.0.0.34", user="mallory").ok
    # A good login afterwards: its report comes after the failed ones' on the same client.
    assert dovecot.pop3_login("127.0.0.33").ok
    assert wait_for(lambda: map_keys(server.config.map.path) != {}, 5)
    time.sleep(0.3)
    assert list(map_keys(server.config.map.path)) == [b"127.0.0.33"]


def test_a_dovecot_with_the_wrong_secret_adds_nothing(
    dovecot: DovecotInstance, dracd_on: Callable[..., ServerThread], tmp_path: Path
) -> None:
    server = dracd_on()
    write_secret(tmp_path / "dovecot.secret", "another-secret-another-secret-00")
    server.call(lambda: policy_of(server).reload(server.config.dovecot_policy))
    mark = len(dovecot.log_text())
    for protocol, client in (("pop3", "127.0.0.41"), ("imap", "127.0.0.42")):
        result = login(dovecot, protocol, client)
        assert result.ok and result.reply == REPLIES[protocol], result
    # Dovecot got its 401s (and logs them); the logins went on; nothing was added.
    assert wait_for(lambda: dovecot.log_text()[mark:].count("Policy server HTTP error") >= 2, 5), \
        dovecot.diagnostics()
    assert map_keys(server.config.map.path) == {}


def test_a_dovecot_without_the_secret_adds_nothing(
    policy_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    port = free_port()
    server = policy_server(listen=f"inet:127.0.0.1:{port}")
    with DovecotInstance(postlogin=None, extra_conf=policy_conf(f"http://127.0.0.1:{port}/", header=None)) as dv:
        mark = len(dv.log_text())
        assert dv.imap_login("127.0.0.43").ok
        assert dv.pop3_login("::1").ok
        assert wait_for(lambda: dv.log_text()[mark:].count("Policy server HTTP error") >= 2, 5), dv.diagnostics()
        assert map_keys(server.config.map.path) == {}


class Hanging:
    """A listener on the policy port that accepts connections and requests, never answers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.sock.settimeout(0.1)
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hanging-policy", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)  # read nothing, answer nothing

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("outage", ["stopped", "hanging"])
def test_logins_go_on_when_dracd_is_down_or_hangs(
    dovecot: DovecotInstance, policy_port: int, outage: str
) -> None:
    hanging = Hanging(policy_port) if outage == "hanging" else None
    try:
        mark = len(dovecot.log_text())
        for protocol, client in (("pop3", "127.0.0.51"), ("imap", "127.0.0.52"), ("imap", "::1")):
            result = login(dovecot, protocol, client)
            assert result.ok and result.reply == REPLIES[protocol], result
            assert result.after, result
            # Never slower than Dovecot's policy timeout (the report does not hold the login).
            assert result.seconds < POLICY_TIMEOUT, f"{protocol} login took {result.seconds:.2f} s"
        if hanging is not None:
            assert wait_for(lambda: hanging.held != [], 5), "Dovecot never connected to the hanging listener"
        else:
            assert wait_for(lambda: "Policy server HTTP error" in dovecot.log_text()[mark:], 5)
    finally:
        if hanging is not None:
            hanging.close()


def test_check_config_reads_the_secret(tmp_path: Path) -> None:
    dracd = Path(sys.executable).parent / "dracd"
    config = tmp_path / "dracd.yaml"
    for secret, ok in ((write_secret(tmp_path / "good"), True), (write_secret(tmp_path / "weak", "short"), False),
                       (tmp_path / "absent", False)):
        config.write_text(json.dumps({"map": {"path": str(tmp_path / "dracd.db")}, "dovecot_policy": {
            "listen": "inet:127.0.0.1:8090", "secret_file": str(secret)}}))
        result = subprocess.run([str(dracd), "--check-config", "-c", str(config)], capture_output=True, text=True,
                                timeout=60, check=False)
        assert (result.returncode == 0) == ok, result
        assert ("Dovecot auth policy server on inet:127.0.0.1:8090" in result.stdout) == ok, result
        assert ok or str(secret) in result.stderr
