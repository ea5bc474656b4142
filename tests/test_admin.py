"""The admin interface (version 3 of program 900101, docs/drac.x) against a real
server: AdminClient over the UNIX socket and TCP, who may call it, and paged
listing of large tables."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import os
import select
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dracd
import dracd.programs.admin
from dracclient.admin import AdminClient, InvalidRequest, ListingExpired, NotFound
from dracclient.adminproto import (
    DRACPROC_ADD3,
    DRACPROC_DEL3,
    DRACPROC_FLUSH3,
    DRACPROC_GET3,
    DRACPROC_LIST3,
    DRACPROC_STATUS3,
    DRACVERS_ADMIN,
    MAX_LIST,
    AdminStat,
    decode_adminstat,
    decode_get3_res,
    decode_list3_res,
    encode_add3,
    encode_list3_args,
    encode_target,
)
from dracclient.drac import DRACPROC_ADD, DRACVERS, AddStat, decode_addstat, encode_add_args
from dracclient.errors import PermissionRefused, RpcRefused
from dracclient.rpc import AcceptStat, AuthStat, ReplyStat
from dracclient.rpcbind import dump as rpcbind_dump
from dracclient.rpccall import call
from dracd.keys import IPAddress
from tests.fixtures.server import ServerThread, map_keys

Make = Callable[..., ServerThread]

LOOPBACK_ADMINS = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
LIFETIME = 1234  # the servers' own lifetime: unlike any lifetime a test passes
NOBODY = 65534
ADMIN_GID = 4242
CHILD_TIMEOUT = 20.0


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def table_of(server: ServerThread) -> dict[IPAddress, int | None]:
    """The server's table, read on its own loop."""
    def read() -> dict[IPAddress, int | None]:
        assert server.daemon is not None
        table = server.daemon.table
        return {address: table.get(address) for address in table}
    result: dict[IPAddress, int | None] = server.call(read)
    return result


def set_entries(server: ServerThread, entries: dict[IPAddress, int]) -> None:
    """Change the table directly, on the server's loop (nothing is written)."""
    def change() -> None:
        assert server.daemon is not None
        for address, expiry in entries.items():
            server.daemon.table.set(address, expiry)
    server.call(change)


def fill(server: ServerThread, entries: dict[IPAddress, int]) -> None:
    """Put ``entries`` in the table and wait until the map holds them."""
    set_entries(server, entries)
    assert server.daemon is not None
    asyncio.run_coroutine_threadsafe(server.daemon.committer.commit(), server.loop).result(60)


def unix_client(server: ServerThread, timeout: float = 5.0) -> AdminClient:
    return AdminClient(socket_path=str(server.config.admin_socket), prog=server.config.program, timeout=timeout)


def client_for(server: ServerThread, how: str) -> AdminClient:
    if how == "unix":
        return unix_client(server)
    host = {"tcp4": "127.0.0.1", "tcp6": "::1"}[how]
    return AdminClient(server=host, port=server.port, prog=server.config.program)


def map_value(server: ServerThread, key: str) -> int:
    return int(map_keys(server.config.map.path)[key.encode()])


def raw(server: ServerThread, proc: int, args: bytes = b"", *, host: str = "127.0.0.1", transport: str = "tcp",
        source: tuple[str, int] | None = None) -> bytes:
    """A version 3 call without AdminClient (any transport, any source address)."""
    address: tuple[str, int] | str = str(server.config.admin_socket) if transport == "unix" else (host, server.port)
    return call(address, server.config.program, DRACVERS_ADMIN, proc, args, transport=transport,  # type: ignore[arg-type]
                timeout=3.0, source=source)


def refusal(server: ServerThread, proc: int, args: bytes = b"", **how: Any) -> RpcRefused:
    with pytest.raises(RpcRefused) as info:
        raw(server, proc, args, **how)
    return info.value


def map_state(server: ServerThread) -> tuple[int, int, dict[bytes, bytes], dict[IPAddress, int | None]]:
    """What must not change when a caller is refused: the map file (inode, mtime, records) and the table."""
    info = os.stat(server.config.map.path)
    return info.st_ino, info.st_mtime_ns, map_keys(server.config.map.path), table_of(server)


@pytest.fixture
def admin_server(make_server: Make) -> ServerThread:
    """A server that takes admin calls over TCP from 127.0.0.1 and ::1."""
    return make_server(admin_allow=LOOPBACK_ADMINS, lifetime=LIFETIME)


HOW = ["unix", "tcp4", "tcp6"]


# ---- the procedures, over each transport ----

@pytest.mark.parametrize("how", HOW)
def test_add_get_delete(admin_server: ServerThread, how: str) -> None:
    admin = client_for(admin_server, how)
    before = time.time()
    admin.add("192.0.2.1", lifetime=600)
    assert abs(map_value(admin_server, "192.0.2.1") - (before + 600)) <= 2
    admin.add("2001:db8::1", 0)  # 0: the server's lifetime
    assert abs(map_value(admin_server, "2001:db8::1") - (before + LIFETIME)) <= 2

    assert admin.get("192.0.2.1") == map_value(admin_server, "192.0.2.1")
    assert admin.get(ip("2001:db8::1")) == map_value(admin_server, "2001:db8::1")
    assert admin.get("192.0.2.99") is None

    admin.delete("192.0.2.1")
    # Written before the reply: the map has no such key the moment delete returns.
    assert set(map_keys(admin_server.config.map.path)) == {b"2001:db8::1"}
    assert admin.get("192.0.2.1") is None
    with pytest.raises(NotFound, match="192.0.2.1"):
        admin.delete("192.0.2.1")
    admin.delete("2001:db8::1")
    assert map_keys(admin_server.config.map.path) == {}


@pytest.mark.parametrize("how", HOW)
def test_flush_status_ping(admin_server: ServerThread, how: str) -> None:
    admin = client_for(admin_server, how)
    started = admin.status()
    assert started.entries == 0 and started.server_version == dracd.__version__
    assert started.map_path == str(admin_server.config.map.path) and started.map_type == "btree"
    assert started.lifetime == LIFETIME and abs(started.started - time.time()) < 60

    written = int(time.time())
    for address in ("192.0.2.1", "192.0.2.2", "2001:db8::3"):
        admin.add(address, 300)
    status = admin.status()
    assert status.entries == 3
    assert written <= status.last_write <= time.time() + 1 and status.last_write_us > 0

    assert admin.flush() == 3
    assert map_keys(admin_server.config.map.path) == {}  # written before the reply
    assert table_of(admin_server) == {} and admin.status().entries == 0
    assert admin.flush() == 0

    rtt = admin.ping()
    assert 0 < rtt < admin.timeout


@pytest.mark.parametrize("how", HOW)
def test_invalid_addresses_and_lifetimes(admin_server: ServerThread, how: str) -> None:
    admin = client_for(admin_server, how)
    for address in ("0.0.0.0", "224.0.0.1", "255.255.255.255", "::", "ff02::1"):
        with pytest.raises(InvalidRequest, match="rejected"):
            admin.add(address, 60)
    limit = dracd.programs.admin.MAX_LIFETIME
    assert limit >= 10 * 365 * 86400
    with pytest.raises(ValueError, match="ten years"):  # the client says so before any traffic
        admin.add("192.0.2.1", limit + 1)
    # and dracd refuses it too (a raw call, past the client's check)
    too_long = encode_add3(ip("192.0.2.1"), limit + 1)
    assert decode_adminstat(raw(admin_server, DRACPROC_ADD3, too_long)) == AdminStat.ADMIN_INVAL
    assert map_keys(admin_server.config.map.path) == {}
    assert table_of(admin_server) == {}
    before = time.time()
    admin.add("192.0.2.1", limit)  # the limit itself is fine
    assert abs(map_value(admin_server, "192.0.2.1") - (before + limit)) <= 2


def test_ipv4_mapped_addresses_are_ipv4(admin_server: ServerThread) -> None:
    mapped = ip("::ffff:192.0.2.5")
    # Raw calls, so the server (not AdminClient) does the folding.
    assert decode_adminstat(raw(admin_server, DRACPROC_ADD3, encode_add3(mapped, 60))) == AdminStat.ADMIN_OK
    assert set(map_keys(admin_server.config.map.path)) == {b"192.0.2.5"}
    stat, expiry = decode_get3_res(raw(admin_server, DRACPROC_GET3, encode_target(mapped)))
    assert stat == AdminStat.ADMIN_OK and expiry == map_value(admin_server, "192.0.2.5")
    assert decode_adminstat(raw(admin_server, DRACPROC_DEL3, encode_target(mapped))) == AdminStat.ADMIN_OK
    assert map_keys(admin_server.config.map.path) == {}
    # And through AdminClient.
    admin = unix_client(admin_server)
    admin.add("192.0.2.6", 60)
    admin.delete("::ffff:192.0.2.6")
    assert map_keys(admin_server.config.map.path) == {} and table_of(admin_server) == {}


def test_admin_over_udp_is_refused(admin_server: ServerThread) -> None:
    """Even from a caller in admin_allow: UDP sources can be forged. Version 3 does not
    exist over UDP: every call gets PROG_MISMATCH (1, 2)."""
    unix_client(admin_server).add("192.0.2.1", 600)
    before = map_state(admin_server)
    calls = [
        (DRACPROC_ADD3, encode_add3(ip("192.0.2.9"), 60)),
        (DRACPROC_DEL3, encode_target(ip("192.0.2.1"))),
        (DRACPROC_FLUSH3, b""),
        (DRACPROC_STATUS3, b""),
    ]
    for host in ("127.0.0.1", "::1"):
        for proc, args in calls:
            reply = refusal(admin_server, proc, args, host=host, transport="udp").reply
            assert reply.reply_stat == ReplyStat.MSG_ACCEPTED and reply.accept_stat == AcceptStat.PROG_MISMATCH
            assert reply.mismatch == (1, 2)
    assert map_state(admin_server) == before


def test_rpcbind_registers_admin_version_on_tcp_only(rpcbind: None, make_server: Make) -> None:
    server = make_server(rpcbind=True, admin_allow=LOOPBACK_ADMINS)
    prog = server.config.program
    mine = [m for m in rpcbind_dump() if m.prog == prog]
    assert {m.netid for m in mine if m.vers == DRACVERS_ADMIN} == {"tcp", "tcp6"}
    assert {m.netid for m in mine if m.vers == DRACVERS} == {"udp", "tcp", "udp6", "tcp6"}
    assert all(m.port == server.port for m in mine)
    # AdminClient without a port finds the admin version through rpcbind.
    AdminClient(server="127.0.0.1", prog=prog).add("192.0.2.1", 60)
    AdminClient(server="::1", prog=prog).add("192.0.2.2", 60)
    assert set(map_keys(server.config.map.path)) == {b"192.0.2.1", b"192.0.2.2"}


def test_admin_tcp_caller_need_not_be_in_the_mra_allow_list(make_server: Make, tmp_path: Path) -> None:
    """admin_allow decides for admin calls; dracd.allow is for MRAs."""
    (tmp_path / "dracd.allow").write_text("192.0.2.0/24\n")
    server = make_server(admin_allow=LOOPBACK_ADMINS)
    AdminClient(server="127.0.0.1", port=server.port, prog=server.config.program).add("198.51.100.1", 60)
    assert b"198.51.100.1" in map_keys(server.config.map.path)


# ---- who may call it ----

@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory everyone may traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="dracd-admin-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_as(uid: int, gid: int, groups: list[int], job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``job`` in a forked child with these credentials; its result, through a pipe."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with the server thread running
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_fd)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            payload = {"uid": os.geteuid(), "gid": os.getegid(), "groups": sorted(os.getgroups()),
                       "result": job()}
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            payload = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            os.write(write_fd, json.dumps(payload).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    data = b""
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"child uid {uid} did not finish in {CHILD_TIMEOUT} s")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    payload = json.loads(data)
    assert "error" not in payload, payload["error"]
    assert (payload["uid"], payload["gid"], payload["groups"]) == (uid, gid, sorted(groups))
    result: dict[str, Any] = payload["result"]
    return result


def outcomes(socket_path: str, prog: int) -> dict[str, Any]:
    """Every admin call, and a legacy ADD, over the UNIX socket: what each gave."""
    admin = AdminClient(socket_path=socket_path, prog=prog, timeout=3.0)
    attempts: dict[str, Callable[[], object]] = {
        "add": lambda: admin.add("198.51.100.1", 60),
        "delete": lambda: admin.delete("192.0.2.1"),
        "flush": admin.flush,
        "list": lambda: list(admin.entries()),
        "get": lambda: admin.get("192.0.2.1"),
        "status": admin.status,
    }
    found: dict[str, Any] = {}
    for name, attempt in attempts.items():
        try:
            attempt()
        except Exception as exc:  # noqa: BLE001 - the class name is the result
            found[name] = type(exc).__name__
        else:
            found[name] = "ok"
    results = call(socket_path, prog, DRACVERS, DRACPROC_ADD, encode_add_args(ip("198.51.100.2")), transport="unix",
                   timeout=3.0)
    found["legacy_add"] = decode_addstat(results).name
    return found


def test_non_root_on_the_unix_socket_is_refused(make_server: Make, open_dir: Path) -> None:
    server = make_server(admin_socket=open_dir / "dracd.sock")
    unix_client(server).add("192.0.2.1", 600)
    before = map_state(server)
    socket_path, prog = str(server.config.admin_socket), server.config.program
    found = run_as(NOBODY, NOBODY, [], lambda: outcomes(socket_path, prog))
    assert found == {"add": "PermissionRefused", "delete": "PermissionRefused", "flush": "PermissionRefused",
                     "list": "PermissionRefused", "get": "PermissionRefused", "status": "PermissionRefused",
                     "legacy_add": AddStat.ADD_PERM.name}
    assert map_state(server) == before


@pytest.mark.parametrize(("gid", "groups"), [
    pytest.param(ADMIN_GID, [], id="primary-group"),
    pytest.param(NOBODY, [ADMIN_GID], id="supplementary-group"),
])
def test_admin_group_member_is_allowed(make_server: Make, open_dir: Path, gid: int, groups: list[int]) -> None:
    server = make_server(admin_socket=open_dir / "dracd.sock", admin_groups=(ADMIN_GID,))
    unix_client(server).add("192.0.2.1", 600)
    socket_path, prog = str(server.config.admin_socket), server.config.program
    found = run_as(NOBODY, gid, groups, lambda: outcomes(socket_path, prog))
    # flush ran after delete found its entry; the legacy ADD came last.
    assert found == {"add": "ok", "delete": "ok", "flush": "ok", "list": "ok", "get": "ok", "status": "ok",
                     "legacy_add": AddStat.ADD_SUCCESS.name}
    assert set(map_keys(server.config.map.path)) == {b"198.51.100.2"}


def test_other_group_is_refused_where_admin_group_is_set(make_server: Make, open_dir: Path) -> None:
    server = make_server(admin_socket=open_dir / "dracd.sock", admin_groups=(ADMIN_GID,))
    before = map_state(server)
    socket_path, prog = str(server.config.admin_socket), server.config.program
    found = run_as(NOBODY, ADMIN_GID + 1, [ADMIN_GID + 2], lambda: outcomes(socket_path, prog))
    assert set(found.values()) == {"PermissionRefused", AddStat.ADD_PERM.name}
    assert map_state(server) == before


def changing_calls() -> list[tuple[int, bytes]]:
    return [
        (DRACPROC_ADD3, encode_add3(ip("198.51.100.1"), 60)),
        (DRACPROC_DEL3, encode_target(ip("192.0.2.1"))),
        (DRACPROC_FLUSH3, b""),
        (DRACPROC_GET3, encode_target(ip("192.0.2.1"))),
        (DRACPROC_LIST3, encode_list3_args(0, 0, 10)),
        (DRACPROC_STATUS3, b""),
        (DRACPROC_ADD3, b"garbage"),  # refused before its arguments are looked at
    ]


def test_network_caller_with_empty_admin_allow_is_refused(make_server: Make) -> None:
    server = make_server()
    unix_client(server).add("192.0.2.1", 600)
    before = map_state(server)
    for host in ("127.0.0.1", "::1"):
        for proc, args in changing_calls():
            reply = refusal(server, proc, args, host=host).reply
            assert reply.reply_stat == ReplyStat.MSG_DENIED and reply.auth_stat == AuthStat.AUTH_TOOWEAK
        with pytest.raises(PermissionRefused, match="AUTH_TOOWEAK"):
            AdminClient(server=host, port=server.port, prog=server.config.program).flush()
    assert map_state(server) == before


def test_network_caller_outside_admin_allow_is_refused(make_server: Make) -> None:
    server = make_server(admin_allow=(ipaddress.ip_network("127.0.0.1/32"),))
    unix_client(server).add("192.0.2.1", 600)
    before = map_state(server)
    for proc, args in changing_calls():
        reply = refusal(server, proc, args, source=("127.0.0.2", 0)).reply
        assert reply.reply_stat == ReplyStat.MSG_DENIED and reply.auth_stat == AuthStat.AUTH_TOOWEAK
    assert map_state(server) == before
    # The same call from 127.0.0.1 is taken.
    assert decode_adminstat(raw(server, DRACPROC_DEL3, encode_target(ip("192.0.2.1")),
                                source=("127.0.0.1", 0))) == AdminStat.ADMIN_OK
    assert map_keys(server.config.map.path) == {}


# ---- listing ----

def addresses(count: int) -> list[IPAddress]:
    """``count`` distinct addresses, IPv4 and IPv6 interleaved."""
    found: list[IPAddress] = []
    for i in range((count + 1) // 2):
        found += [ipaddress.IPv4Address(0x0A00_0000 + i), ipaddress.IPv6Address((0x2001_0DB8 << 96) + i)]
    return found[:count]


def table(count: int) -> dict[IPAddress, int]:
    base = int(time.time()) + 3600
    return {address: base + i % 5000 for i, address in enumerate(addresses(count))}


def listed(entries: Iterator[Any]) -> dict[IPAddress, int]:
    """Entries as a dict, failing on any duplicate."""
    found: dict[IPAddress, int] = {}
    for entry in entries:
        assert entry.address not in found, f"{entry.address} listed twice"
        found[entry.address] = entry.expiry
    return found


def test_list_100k_entries(server: ServerThread) -> None:
    expected = table(100_000)
    fill(server, expected)
    assert len(map_keys(server.config.map.path)) == 100_000
    started = time.monotonic()
    found = listed(unix_client(server, timeout=30.0).entries())
    elapsed = time.monotonic() - started
    print(f"\nlisted 100000 entries over the UNIX socket in {elapsed:.2f} s "
          f"({-(-100_000 // MAX_LIST)} pages of {MAX_LIST})")
    assert found == expected


def test_list_in_small_pages(server: ServerThread) -> None:
    expected = table(10_000)
    fill(server, expected)
    admin = unix_client(server)
    assert listed(admin.entries(page_size=1000)) == expected
    assert listed(admin.entries(page_size=MAX_LIST + 1000)) == expected  # more than the server gives a page
    with pytest.raises(ValueError):
        admin.entries(page_size=0)


def test_list_pages_on_the_wire(server: ServerThread) -> None:
    fill(server, table(2500))
    first = decode_list3_res(raw(server, DRACPROC_LIST3, encode_list3_args(0, 0, 1000), transport="unix"))
    assert (first.status, first.total, len(first.entries), first.more) == (AdminStat.ADMIN_OK, 2500, 1000, True)
    assert first.cookie != 0
    pages = [first]
    for offset in (1000, 2000):
        pages.append(decode_list3_res(raw(server, DRACPROC_LIST3, encode_list3_args(first.cookie, offset, 1000),
                                          transport="unix")))
    assert [(p.total, len(p.entries), p.more) for p in pages] == [(2500, 1000, True), (2500, 1000, True),
                                                                  (2500, 500, False)]
    assert len({e.address for p in pages for e in p.entries}) == 2500
    # The last page ended the listing: its cookie is gone.
    gone = decode_list3_res(raw(server, DRACPROC_LIST3, encode_list3_args(first.cookie, 1000, 1000),
                                transport="unix"))
    assert gone.status == AdminStat.ADMIN_EXPIRED and gone.entries == []
    # More than DRAC_MAX_LIST asked: at most DRAC_MAX_LIST given.
    fill(server, table(MAX_LIST + 10))
    big = decode_list3_res(raw(server, DRACPROC_LIST3, encode_list3_args(0, 0, MAX_LIST * 2), transport="unix"))
    assert (len(big.entries), big.more, big.total) == (MAX_LIST, True, MAX_LIST + 10)


def test_changes_during_a_listing(server: ServerThread) -> None:
    initial = table(10_000)
    fill(server, initial)
    admin = unix_client(server)
    pages = admin.entries(page_size=1000)
    seen = listed(itertools.islice(pages, 1000))
    assert len(seen) == 1000 and all(initial[a] == e for a, e in seen.items())
    unseen = [address for address in initial if address not in seen]

    removed = set(unseen[:100])
    for address in unseen[:50]:
        admin.delete(address)
    assert server.daemon is not None
    table_ = server.daemon.table

    def remove() -> None:
        for address in unseen[50:100]:
            table_.remove(address)
    server.call(remove)
    added = addresses(10_400)[10_000:]
    for address in added[:20]:
        admin.add(address, 600)
    set_entries(server, dict.fromkeys(added[20:], int(time.time()) + 900))
    # New expiries for entries seen and not yet seen: no duplicates either way.
    renewed = {address: int(time.time()) + 7200 for address in list(seen)[:50] + unseen[100:150]}
    set_entries(server, renewed)

    rest = listed(pages)
    assert not set(rest) & set(seen), "an entry was listed twice"
    assert not set(rest) & removed, "an entry removed during the listing was listed"
    assert not set(rest) & set(added), "an entry added after the snapshot was listed"
    assert set(seen) | set(rest) == set(initial) - removed
    current = table_of(server)
    assert all(rest[address] == current[address] for address in rest)  # expiries as they are now
    assert all(rest[address] == renewed[address] for address in unseen[100:150])
    # A new listing sees the table as it is now.
    assert listed(admin.entries(page_size=1000)) == current


def test_idle_listing_expires(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(server, table(50))
    admin = unix_client(server)
    pages = admin.entries(page_size=10)
    assert len(listed(itertools.islice(pages, 10))) == 10
    monkeypatch.setattr(dracd.programs.admin, "LIST_IDLE", 0.0)  # any pause is now too long
    with pytest.raises(ListingExpired, match="dropped the listing .*start again"):
        list(pages)
    monkeypatch.undo()
    assert len(listed(admin.entries(page_size=10))) == 50  # starting again works
