"""dracclient.rpcbind against the real system rpcbind (loopback only), plus a
fake rpcbind on a UNIX socket for replies the real one never sends.

Only private program numbers this process registered are ever touched:
0x31000000 + (pid % 0x10000) * 0x10 + n, always unregistered in ``finally``.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dracclient import rpcbind
from dracclient.errors import BadReply, DracError
from dracclient.record import RecordReader, encode_record
from dracclient.rpc import decode_call, encode_accepted
from dracclient.xdr import Packer
from tests.fixtures.server import ensure_rpcbind

TIMEOUT = 3.0
NETIDS = {"udp": "127.0.0.1", "tcp": "127.0.0.1", "udp6": "::1", "tcp6": "::1"}
_numbers = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def system_rpcbind() -> None:
    ensure_rpcbind()


@pytest.fixture
def prog() -> Iterator[int]:
    """A private program number of ours; every version of it is unregistered afterwards."""
    number = 0x3100_0000 + (os.getpid() % 0x10000) * 0x10 + next(_numbers) % 0x10
    try:
        yield number
    finally:
        for vers in range(1, 4):
            rpcbind.unregister(number, vers, timeout=TIMEOUT)
        assert not ours(number)


def ours(prog: int) -> list[rpcbind.Mapping]:
    return [m for m in rpcbind.dump(timeout=TIMEOUT) if m.prog == prog]


# --- universal addresses -------------------------------------------------------


@pytest.mark.parametrize(
    "host, port, uaddr",
    [
        ("127.0.0.1", 111, "127.0.0.1.0.111"),
        ("0.0.0.0", 2049, "0.0.0.0.8.1"),
        ("::1", 65535, "::1.255.255"),
        ("::", 1, "::.0.1"),
        ("2001:0db8:0000::0007", 40000, "2001:db8::7.156.64"),
        ("::ffff:127.0.0.1", 256, "::ffff:7f00:1.1.0"),
    ],
)
def test_uaddr_round_trip(host: str, port: int, uaddr: str) -> None:
    assert rpcbind.format_uaddr(host, port) == uaddr
    parsed_host, parsed_port = rpcbind.parse_uaddr(uaddr)
    assert parsed_port == port
    assert parsed_host == str(ipaddress.ip_address(host))


def test_parse_uaddr_accepts_mapped_dotted_form() -> None:
    assert rpcbind.parse_uaddr("::ffff:127.0.0.1.4.1") == ("::ffff:7f00:1", 1025)


@pytest.mark.parametrize(
    "uaddr",
    [
        "",
        "127.0.0.1",  # no port at all
        "localhost.0.111",  # host names are not addresses
        "127.0.0.1.0.0",  # port 0
        "127.0.0.1.0.256",  # low byte out of range
        "127.0.0.1.256.0",  # high byte out of range
        "127.0.0.1.1.-1",
        "127.0.0.1.+1.1",
        "127.0.0.1.0. 1",
        "127.0.0.1.x.1",
        "127.0.0.1..1",
        "::1",
        "::1.1",
        "1:2:3:4:5:6:7:8:9.0.1",
        "127.0.0.256.0.1",
    ],
)
def test_parse_uaddr_rejects_malformed(uaddr: str) -> None:
    with pytest.raises(ValueError):
        rpcbind.parse_uaddr(uaddr)


@pytest.mark.parametrize("host, port", [("localhost", 1), ("127.0.0.1", -1), ("127.0.0.1", 65536), ("::1", 70000)])
def test_format_uaddr_rejects_bad_input(host: str, port: int) -> None:
    with pytest.raises(ValueError):
        rpcbind.format_uaddr(host, port)


def test_netid_route_uses_the_netids_own_transport() -> None:
    route = rpcbind._netid_route  # noqa: SLF001 - the routing rule is what this checks
    assert route("udp", None) == ("127.0.0.1", "udp")
    assert route("tcp", None) == ("127.0.0.1", "tcp")
    assert route("udp6", None) == ("::1", "udp")
    assert route("tcp6", None) == ("::1", "tcp")
    assert route("tcp", "127.0.0.9") == ("127.0.0.9", "tcp")


# --- the real rpcbind ----------------------------------------------------------


def test_register_getaddr_dump_unregister(prog: int) -> None:
    ports = {netid: 40100 + i for i, netid in enumerate(NETIDS)}
    for netid, host in NETIDS.items():
        assert rpcbind.register(prog, 1, netid, rpcbind.format_uaddr(host, ports[netid]), timeout=TIMEOUT)
    # Each netid asked over its own transport and family.
    for netid, host in NETIDS.items():
        assert rpcbind.getaddr(prog, 1, netid, timeout=TIMEOUT) == (host, ports[netid])
    mappings = {m.netid: m for m in ours(prog)}
    assert set(mappings) == set(NETIDS)
    for netid, mapping in mappings.items():
        assert (mapping.prog, mapping.vers) == (prog, 1)
        assert mapping.port == ports[netid]
        assert rpcbind.parse_uaddr(mapping.uaddr) == (NETIDS[netid], ports[netid])
        # Registered as root over the UNIX socket: owned by the superuser.
        assert mapping.owner == ("superuser" if os.getuid() == 0 else str(os.getuid()))
    assert rpcbind.unregister(prog, 1, "udp", timeout=TIMEOUT)
    assert {m.netid for m in ours(prog)} == {"tcp", "udp6", "tcp6"}
    assert rpcbind.getaddr(prog, 1, "udp", timeout=TIMEOUT) is None
    assert rpcbind.getaddr(prog, 1, "tcp", timeout=TIMEOUT) == ("127.0.0.1", ports["tcp"])


def test_unregister_with_empty_netid_removes_ipv6_too(prog: int) -> None:
    for vers in (1, 2):
        for netid, host in NETIDS.items():
            assert rpcbind.register(prog, vers, netid, rpcbind.format_uaddr(host, 40200 + vers), timeout=TIMEOUT)
    assert len(ours(prog)) == 8
    assert rpcbind.unregister(prog, 1, timeout=TIMEOUT)
    remaining = ours(prog)
    assert {(m.vers, m.netid) for m in remaining} == {(2, netid) for netid in NETIDS}
    for netid in NETIDS:
        assert rpcbind.getaddr(prog, 2, netid, timeout=TIMEOUT) is not None


def test_getaddr_unregistered_program_is_none(prog: int) -> None:
    for netid in NETIDS:
        assert rpcbind.getaddr(prog, 1, netid, timeout=TIMEOUT) is None
    assert rpcbind.getport(prog, 1, "udp", timeout=TIMEOUT) is None
    assert rpcbind.lookup(prog, 1, "127.0.0.1", "tcp", timeout=TIMEOUT) is None
    assert rpcbind.lookup(prog, 1, "::1", "udp", timeout=TIMEOUT) is None


def test_getport_finds_udp_and_tcp(prog: int) -> None:
    assert rpcbind.register(prog, 1, "udp", "127.0.0.1.157.1", timeout=TIMEOUT)
    assert rpcbind.register(prog, 1, "tcp", "127.0.0.1.157.2", timeout=TIMEOUT)
    assert rpcbind.getport(prog, 1, "udp", timeout=TIMEOUT) == 157 * 256 + 1
    assert rpcbind.getport(prog, 1, "tcp", timeout=TIMEOUT) == 157 * 256 + 2


def test_lookup(prog: int) -> None:
    assert rpcbind.register(prog, 1, "udp", "127.0.0.1.157.11", timeout=TIMEOUT)
    assert rpcbind.register(prog, 1, "tcp6", "::1.157.12", timeout=TIMEOUT)
    # Registered on the wildcard: the caller gets the host it asked.
    assert rpcbind.register(prog, 2, "tcp", "0.0.0.0.157.13", timeout=TIMEOUT)
    assert rpcbind.register(prog, 2, "udp6", "::.157.14", timeout=TIMEOUT)
    assert rpcbind.lookup(prog, 1, "127.0.0.1", "udp", timeout=TIMEOUT) == ("127.0.0.1", 157 * 256 + 11)
    assert rpcbind.lookup(prog, 1, "::1", "tcp", timeout=TIMEOUT) == ("::1", 157 * 256 + 12)
    assert rpcbind.lookup(prog, 2, "127.0.0.1", "tcp", timeout=TIMEOUT) == ("127.0.0.1", 157 * 256 + 13)
    assert rpcbind.lookup(prog, 2, "::1", "udp", timeout=TIMEOUT) == ("::1", 157 * 256 + 14)


def test_register_refused_while_a_live_server_holds_it(prog: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as live:
        live.bind(("127.0.0.1", 0))
        port = live.getsockname()[1]
        assert rpcbind.register(prog, 1, "udp", rpcbind.format_uaddr("127.0.0.1", port), timeout=TIMEOUT)
        # rpcbind sees the registered address still bound, so it refuses the new one.
        other = rpcbind.format_uaddr("127.0.0.1", 40999 if port != 40999 else 40998)
        assert not rpcbind.register(prog, 1, "udp", other, timeout=TIMEOUT)
        assert rpcbind.getaddr(prog, 1, "udp", timeout=TIMEOUT) == ("127.0.0.1", port)


def test_udp_fallback_when_unix_socket_missing(prog: int, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such.sock")
    assert rpcbind.register(prog, 1, "udp", "127.0.0.1.157.21", timeout=TIMEOUT, socket_path=missing)
    found = [m for m in rpcbind.dump(timeout=TIMEOUT, socket_path=missing) if m.prog == prog]
    assert [(m.netid, m.port) for m in found] == [("udp", 157 * 256 + 21)]
    assert rpcbind.unregister(prog, 1, timeout=TIMEOUT, socket_path=missing)
    assert not ours(prog)


# --- a fake rpcbind on a UNIX socket ----------------------------------------------


def fake_unix_rpcbind(path: Path, results: Callable[[int], bytes]) -> threading.Thread:
    """Answer one call on ``path`` with SUCCESS and ``results(proc)``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(TIMEOUT)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                reader = RecordReader(1 << 16)
                records: list[bytes] = []
                while not records:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    records = reader.feed(chunk)
                call = decode_call(records[0])
                assert (call.prog, call.vers) == (rpcbind.RPCBPROG, rpcbind.RPCBVERS4)
                conn.sendall(encode_record(encode_accepted(call.xid, results=results(call.proc))))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def rpcb_entry(prog: int, vers: int, netid: str, uaddr: str, owner: str) -> Packer:
    return Packer().uint(1).uint(prog).uint(vers).string(netid).string(uaddr).string(owner)


def test_dump_parses_the_list(tmp_path: Path) -> None:
    path = tmp_path / "rpcbind.sock"
    body = (rpcb_entry(7, 1, "udp", "127.0.0.1.0.111", "superuser").bytes()
            + rpcb_entry(7, 2, "tcp6", "::1.4.1", "1000").bytes() + Packer().uint(0).bytes())
    thread = fake_unix_rpcbind(path, lambda proc: body if proc == rpcbind.RPCBPROC_DUMP else b"")
    assert rpcbind.dump(timeout=TIMEOUT, socket_path=str(path)) == [
        rpcbind.Mapping(7, 1, "udp", "127.0.0.1.0.111", "superuser"),
        rpcbind.Mapping(7, 2, "tcp6", "::1.4.1", "1000"),
    ]
    thread.join(TIMEOUT)
    assert not thread.is_alive()


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no list terminator
        Packer().uint(1).uint(7).bytes(),  # entry cut short
        rpcb_entry(7, 1, "udp", "x", "y").bytes(),  # no terminator after the entry
        Packer().uint(0).uint(0).bytes(),  # trailing word
        Packer().uint(1).uint(7).uint(1).uint(2000).bytes(),  # netid longer than allowed
    ],
)
def test_dump_malformed_reply_is_bad_reply(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "rpcbind.sock"
    thread = fake_unix_rpcbind(path, lambda proc: body)
    with pytest.raises(BadReply):
        rpcbind.dump(timeout=TIMEOUT, socket_path=str(path))
    thread.join(TIMEOUT)


@pytest.mark.parametrize("body", [b"", b"\0\0\0\1\0\0\0\0", b"\0\0"])
def test_register_malformed_reply_is_bad_reply(tmp_path: Path, prog: int, body: bytes) -> None:
    path = tmp_path / "rpcbind.sock"
    thread = fake_unix_rpcbind(path, lambda proc: body)
    with pytest.raises(BadReply) as info:
        rpcbind.register(prog, 1, "udp", "127.0.0.1.0.111", timeout=TIMEOUT, socket_path=str(path))
    assert isinstance(info.value, DracError)
    thread.join(TIMEOUT)


@pytest.mark.parametrize("value, expected", [(0, False), (1, True)])
def test_register_reads_the_bool(tmp_path: Path, prog: int, value: int, expected: bool) -> None:
    path = tmp_path / "rpcbind.sock"
    thread = fake_unix_rpcbind(path, lambda proc: value.to_bytes(4, "big") if proc == rpcbind.RPCBPROC_SET else b"")
    assert rpcbind.register(prog, 1, "udp", "127.0.0.1.0.111", timeout=TIMEOUT,
                            socket_path=str(path)) is expected
    thread.join(TIMEOUT)
