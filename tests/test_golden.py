"""Golden wire bytes captured from the legacy DRAC 1.12 programs and a libtirpc
client (tests/vectors/README.md): our encoders produce them, our decoders
read them, and our server answers the golden calls with the golden
replies, byte for byte, in-process and over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from dracclient.drac import (
    DRACPROC_ADD,
    DRACPROG,
    DRACVERS,
    DRACVERS6,
    AddStat,
    decode_add_v1,
    decode_add_v2,
    decode_addstat,
    encode_add_args,
    encode_addstat,
)
from dracclient.record import LAST_FRAGMENT, RecordReader, encode_record
from dracclient.rpc import AUTH_NONE, AcceptStat, ReplyStat, decode_call, decode_reply, encode_accepted, encode_call
from dracd.keys import IPAddress, KeyStyle
from dracd.programs.drac import Settings
from dracd.relay.policy import AllowList, NetRule
from tests.fixtures.maps import EntryMap, read_entries
from tests.fixtures.server import ServerThread
from tests.fixtures.stack import running_stack

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

TIMEOUT = 5.0
#: Copied from tests/vectors/README.md (test_vectors_match_readme keeps them in step).
GOLDEN: dict[str, dict[str, bytes]] = {
    "v1": {
        "call": bytes.fromhex(
            "6b053c89 00000000 00000002 000dbc05 00000001 00000001"
            " 00000000 00000000 00000000 00000000 c000020a"
        ),
        "reply": bytes.fromhex("6b053c89 00000001 00000000 00000000 00000000 00000000 00000000"),
    },
    "v2_testing6": {
        "call": bytes.fromhex(
            "6b052fb0 00000000 00000002 000dbc05 00000002 00000001"
            " 00000000 00000000 00000000 00000000"
            " 00000020 00000001 0000000d ffffffb8 00000000 00000000 00000000 00000000"
            " 00000000 00000000 00000000 00000000 00000000 ffffffb8 00000000 00000010"
        ),
        "reply": bytes.fromhex("6b052fb0 00000001 00000000 00000000 00000000 00000000 00000000"),
    },
    "v2_libtirpc": {
        "call": bytes.fromhex(
            "6b051e85 00000000 00000002 000dbc05 00000002 00000001"
            " 00000000 00000000 00000000 00000000"
            " 00000020 00000001 0000000d ffffffb8 ffffffff 00000000 00000000 00000000"
            " 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001"
        ),
        "reply": bytes.fromhex("6b051e85 00000001 00000000 00000000 00000000 00000000 00000000"),
    },
    "tcp": {
        "call": bytes.fromhex(
            "8000002c 927d399b 00000000 00000002 000dbc05 00000001 00000001"
            " 00000000 00000000 00000000 00000000 cb0071c8"
        ),
        "reply": bytes.fromhex("8000001c 927d399b 00000001 00000000 00000000 00000000 00000000 00000000"),
    },
    "perm": {
        "call": bytes.fromhex(
            "00e069ba 00000000 00000002 000dbc05 00000001 00000001"
            " 00000000 00000000 00000000 00000000 c6336409"
        ),
        "reply": bytes.fromhex("00e069ba 00000001 00000000 00000000 00000000 00000000 00000001"),
    },
}
#: (version, address, result) of each golden call.
MEANING = {
    "v1": (DRACVERS, "192.0.2.10", AddStat.ADD_SUCCESS),
    "v2_testing6": (DRACVERS6, "2001:db8::b8:10", AddStat.ADD_SUCCESS),
    "v2_libtirpc": (DRACVERS6, "2001:db8:ff00::1", AddStat.ADD_SUCCESS),
    "tcp": (DRACVERS, "203.0.113.200", AddStat.ADD_SUCCESS),
    "perm": (DRACVERS, "198.51.100.9", AddStat.ADD_PERM),
}
UDP_CASES = ["v1", "v2_testing6", "v2_libtirpc", "perm"]
README = Path(__file__).parent / "vectors" / "README.md"


def xid_of(message: bytes) -> int:
    return int.from_bytes(message[:4], "big")


def record_body(record: bytes) -> bytes:
    """The message inside a one-fragment record."""
    assert int.from_bytes(record[:4], "big") == LAST_FRAGMENT | (len(record) - 4)
    return record[4:]


def with_program(call: bytes, prog: int) -> bytes:
    """The call with its program word (offset 12) replaced: test servers use a private number."""
    assert call[12:16] == DRACPROG.to_bytes(4, "big")
    return call[:12] + prog.to_bytes(4, "big") + call[16:]


# --- the vectors themselves -------------------------------------------------


def test_vectors_match_readme() -> None:
    """Every call/reply in the README is one of ours, and every one of ours is there."""
    text = README.read_text()
    found = []
    for match in re.finditer(r"(call|reply)\s*:\s*([0-9a-f]{8}(?:\s+[0-9a-f]{8})*)", text):
        found.append((match.group(1), bytes.fromhex(match.group(2))))
    ours = [(kind, GOLDEN[name][kind]) for name in GOLDEN for kind in ("call", "reply")]
    assert len(found) == 10
    assert sorted(found) == sorted(ours)


# --- our encoders produce the golden bytes -----------------------------------


@pytest.mark.parametrize("name", ["v1", "v2_testing6", "v2_libtirpc", "perm"])
def test_encode_golden_udp_call(name: str) -> None:
    vers, address, _ = MEANING[name]
    golden = GOLDEN[name]["call"]
    args = encode_add_args(ipaddress.ip_address(address))
    assert encode_call(xid_of(golden), DRACPROG, vers, DRACPROC_ADD, args) == golden


def test_encode_golden_tcp_call() -> None:
    golden = GOLDEN["tcp"]["call"]
    call = encode_call(xid_of(golden[4:]), DRACPROG, DRACVERS, DRACPROC_ADD,
                       encode_add_args(ipaddress.IPv4Address("203.0.113.200")))
    assert encode_record(call) == golden


@pytest.mark.parametrize("name", UDP_CASES)
def test_encode_golden_udp_reply(name: str) -> None:
    golden = GOLDEN[name]["reply"]
    assert encode_accepted(xid_of(golden), AcceptStat.SUCCESS, encode_addstat(MEANING[name][2])) == golden


def test_encode_golden_tcp_reply() -> None:
    golden = GOLDEN["tcp"]["reply"]
    assert encode_record(encode_accepted(xid_of(golden[4:]), results=encode_addstat(AddStat.ADD_SUCCESS))) == golden


def test_plain_v2_encoding_differs_from_golden_only_in_high_bytes() -> None:
    """Unextended chars (what a careful encoder might send) differ from the C clients' bytes."""
    golden = GOLDEN["v2_libtirpc"]["call"]
    plain = encode_call(xid_of(golden), DRACPROG, DRACVERS6, DRACPROC_ADD,
                        encode_add_args(ipaddress.IPv6Address("2001:db8:ff00::1"), sign_extend=False))
    differing = [i // 4 for i in range(len(golden)) if golden[i] != plain[i]]
    assert sorted(set(differing)) == [13, 14]  # the words of 0xb8 and 0xff
    assert decode_add_v2(decode_call(plain).args) == decode_add_v2(decode_call(golden).args)


# --- our decoders read the golden bytes ---------------------------------------


@pytest.mark.parametrize("name", list(GOLDEN))
def test_decode_golden_call(name: str) -> None:
    vers, address, _ = MEANING[name]
    message = GOLDEN[name]["call"]
    if name == "tcp":
        (message,) = RecordReader(1024).feed(message)
    call = decode_call(message)
    assert (call.prog, call.vers, call.proc) == (DRACPROG, vers, DRACPROC_ADD)
    assert call.cred == call.verf == AUTH_NONE
    decode = decode_add_v1 if vers == DRACVERS else decode_add_v2
    assert decode(call.args) == ipaddress.ip_address(address)


@pytest.mark.parametrize("name", list(GOLDEN))
def test_decode_golden_reply(name: str) -> None:
    message = GOLDEN[name]["reply"]
    if name == "tcp":
        (message,) = RecordReader(1024).feed(message)
    reply = decode_reply(message)
    assert reply.xid == xid_of(GOLDEN[name]["call"][4:] if name == "tcp" else GOLDEN[name]["call"])
    assert (reply.reply_stat, reply.accept_stat, reply.verf) == (ReplyStat.MSG_ACCEPTED, AcceptStat.SUCCESS, AUTH_NONE)
    assert decode_addstat(reply.results) is MEANING[name][2]


# --- the server, in-process -------------------------------------------------

NOW = 1_700_000_000
LIFETIME = 1800
LOOPBACK_ONLY = AllowList((NetRule(ipaddress.ip_network("127.0.0.1/32")),), "test: 127.0.0.1/32")


def serve_in_process(
    tmp_path: Path, messages: list[tuple[bytes, str, str]]
) -> tuple[list[bytes | None], dict[IPAddress, int]]:
    """Run the real Dispatcher + DracService (map in ``tmp_path``) on ``(message, caller, transport)``;
    return the replies and what the map holds afterwards."""
    writer = EntryMap(tmp_path / "dracd.db", "btree", KeyStyle())

    async def main() -> list[bytes | None]:
        async with running_stack(writer, Settings(LOOPBACK_ONLY, LIFETIME), lambda: NOW) as stack:
            return [await stack.dispatcher.handle(message, ipaddress.ip_address(caller), 1023, transport)
                    for message, caller, transport in messages]

    replies = asyncio.run(main())
    return replies, writer.read()


@pytest.mark.parametrize("name", ["v1", "v2_testing6", "v2_libtirpc"])
def test_dispatcher_answers_golden_udp_call(tmp_path: Path, name: str) -> None:
    replies, stored = serve_in_process(tmp_path, [(GOLDEN[name]["call"], "127.0.0.1", "udp")])
    assert replies == [GOLDEN[name]["reply"]]
    assert stored == {ipaddress.ip_address(MEANING[name][1]): NOW + LIFETIME}


def test_dispatcher_answers_golden_tcp_call(tmp_path: Path) -> None:
    (record,) = RecordReader(1024).feed(GOLDEN["tcp"]["call"])
    replies, stored = serve_in_process(tmp_path, [(record, "127.0.0.1", "tcp")])
    assert replies[0] is not None
    assert encode_record(replies[0]) == GOLDEN["tcp"]["reply"]
    assert stored == {ipaddress.IPv4Address("203.0.113.200"): NOW + LIFETIME}


def test_dispatcher_refuses_caller_outside_allow_list(tmp_path: Path) -> None:
    replies, stored = serve_in_process(tmp_path, [(GOLDEN["perm"]["call"], "127.0.0.2", "udp")])
    assert replies == [GOLDEN["perm"]["reply"]]
    assert stored == {}


def test_dispatcher_answers_all_golden_calls_in_one_run(tmp_path: Path) -> None:
    messages = [(GOLDEN[name]["call"], "127.0.0.1", "udp") for name in ("v1", "v2_testing6", "v2_libtirpc")]
    messages.append((record_body(GOLDEN["tcp"]["call"]), "127.0.0.1", "tcp"))
    messages.append((GOLDEN["perm"]["call"], "127.0.0.2", "udp"))
    replies, stored = serve_in_process(tmp_path, messages)
    assert replies == [GOLDEN[n]["reply"] for n in ("v1", "v2_testing6", "v2_libtirpc")] + [
        record_body(GOLDEN["tcp"]["reply"]), GOLDEN["perm"]["reply"]]
    # The same four addresses the legacy server wrote to legacy-dracd.db.
    assert sorted(map(str, stored)) == sorted(["192.0.2.10", "2001:db8::b8:10", "2001:db8:ff00::1", "203.0.113.200"])


# --- the server, over loopback sockets ----------------------------------------


MakeServer = Callable[..., ServerThread]


def map_entries(server: ServerThread) -> dict[IPAddress, int]:
    """What the running server's map holds (read on the server's loop)."""
    daemon = server.daemon
    assert daemon is not None
    entries: dict[IPAddress, int] = server.call(lambda: read_entries(daemon.writer))
    return entries


def udp_exchange(host: str, port: int, message: bytes, source: str | None = None) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        if source is not None:
            sock.bind((source, 0))
        sock.sendto(message, (host, port))
        data, peer = sock.recvfrom(65536)
        assert peer[1] == port
        return data


def tcp_connect(port: int, host: str = "127.0.0.1", source: str | None = None) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=TIMEOUT,
                                    source_address=(source, 0) if source else None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_records(sock: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` whole records (with their marks, re-encoded) from a TCP socket."""
    reader = RecordReader(1 << 16)
    records: list[bytes] = []
    while len(records) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(records)} of {count} records"
        records += reader.feed(chunk)
    assert reader.pending == 0
    return records


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def tcp_call(prog: int) -> bytes:
    """The golden TCP call with the private program number (record mark at 0, so the word is at 16)."""
    golden = GOLDEN["tcp"]["call"]
    return golden[:4] + with_program(golden[4:], prog)


@pytest.mark.parametrize("name", ["v1", "v2_testing6", "v2_libtirpc"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_server_answers_golden_udp_call(make_server: MakeServer, name: str, host: str) -> None:
    server = make_server()
    reply = udp_exchange(host, server.port, with_program(GOLDEN[name]["call"], server.config.program))
    assert reply == GOLDEN[name]["reply"]
    stored = map_entries(server)
    assert ipaddress.ip_address(MEANING[name][1]) in stored


def test_server_refuses_golden_call_from_outside_allow_list(make_server: MakeServer) -> None:
    # No allow file: the legacy default (127.0.0.1, ::1, this host's addresses); 127.0.0.2 is outside.
    server = make_server()
    call = with_program(GOLDEN["perm"]["call"], server.config.program)
    assert udp_exchange("127.0.0.1", server.port, call, source="127.0.0.2") == GOLDEN["perm"]["reply"]
    with tcp_connect(server.port, source="127.0.0.2") as sock:
        sock.sendall(encode_record(call))
        assert read_exactly(sock, len(GOLDEN["perm"]["reply"]) + 4) == encode_record(GOLDEN["perm"]["reply"])
    assert ipaddress.IPv4Address("198.51.100.9") not in map_entries(server)


@pytest.mark.parametrize("piece", [1, 3, 4096])
def test_server_answers_golden_tcp_call_in_pieces(make_server: MakeServer, piece: int) -> None:
    server = make_server()
    call = tcp_call(server.config.program)
    with tcp_connect(server.port) as sock:
        for start in range(0, len(call), piece):
            sock.sendall(call[start : start + piece])
        assert read_exactly(sock, len(GOLDEN["tcp"]["reply"])) == GOLDEN["tcp"]["reply"]
    assert ipaddress.IPv4Address("203.0.113.200") in map_entries(server)


def test_server_answers_multi_fragment_record(make_server: MakeServer) -> None:
    server = make_server()
    message = with_program(record_body(GOLDEN["tcp"]["call"]), server.config.program)
    sizes = [1, 5, 7]
    stream = b""
    start = 0
    for index in range(len(message)):
        size = sizes[index % 3]
        chunk = message[start : start + size]
        start += len(chunk)
        last = start >= len(message)
        stream += (len(chunk) | (LAST_FRAGMENT if last else 0)).to_bytes(4, "big") + chunk
        if last:
            break
    marks, offset = [], 0
    while offset < len(stream):
        mark = int.from_bytes(stream[offset : offset + 4], "big")
        marks.append(mark)
        offset += 4 + (mark & ~LAST_FRAGMENT)
    assert [m & ~LAST_FRAGMENT for m in marks[:3]] == [1, 5, 7]
    assert [bool(m & LAST_FRAGMENT) for m in marks] == [False] * (len(marks) - 1) + [True]
    with tcp_connect(server.port) as sock:
        sock.sendall(stream)
        assert read_exactly(sock, len(GOLDEN["tcp"]["reply"])) == GOLDEN["tcp"]["reply"]


def test_server_answers_pipelined_calls(make_server: MakeServer) -> None:
    server = make_server()
    first = with_program(record_body(GOLDEN["tcp"]["call"]), server.config.program)
    second = with_program(GOLDEN["v2_libtirpc"]["call"], server.config.program)
    with tcp_connect(server.port) as sock:
        sock.sendall(encode_record(first) + encode_record(second))
        replies = read_records(sock, 2)
    assert sorted(replies) == sorted([record_body(GOLDEN["tcp"]["reply"]), GOLDEN["v2_libtirpc"]["reply"]])


def test_server_answers_golden_tcp_call_over_ipv6(make_server: MakeServer) -> None:
    server = make_server()
    with tcp_connect(server.port, host="::1") as sock:
        sock.sendall(tcp_call(server.config.program))
        assert read_exactly(sock, len(GOLDEN["tcp"]["reply"])) == GOLDEN["tcp"]["reply"]
