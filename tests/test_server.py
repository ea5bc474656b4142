"""The server's behaviour over real sockets: allow list, durability, expiry,
restarts and map failures."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dracclient.drac import DRACPROC_ADD, AddStat, encode_add_args
from dracclient.rpc import encode_call
from dracd.publish.maps import MapError
from tests.fixtures.mounts import set_readonly, tmpfs
from tests.fixtures.server import ServerThread, add_status, map_keys, wait_for

Make = Callable[..., ServerThread]


def test_add_is_in_the_map_before_the_reply(server: ServerThread) -> None:
    for transport in ("udp", "tcp"):
        for address in (f"192.0.2.{1 if transport == 'udp' else 2}", f"2001:db8::{transport == 'udp' and 1 or 2}"):
            assert add_status(server, address, transport=transport) == AddStat.ADD_SUCCESS
            assert address.encode() in map_keys(server.config.map.path)


def test_ipv6_listener_takes_calls_from_ipv6_callers(server: ServerThread) -> None:
    assert add_status(server, "192.0.2.9", source="::1") == AddStat.ADD_SUCCESS
    assert add_status(server, "2001:db8::9", source="::1", transport="tcp") == AddStat.ADD_SUCCESS


def test_ipv4_mapped_address_is_stored_as_ipv4(server: ServerThread) -> None:
    assert add_status(server, "::ffff:192.0.2.44") == AddStat.ADD_SUCCESS
    keys = map_keys(server.config.map.path)
    assert b"192.0.2.44" in keys and not any(k.startswith(b"::ffff") for k in keys)


def test_wildcard_and_multicast_addresses_never_become_keys(server: ServerThread) -> None:
    for address in ("0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1"):
        assert add_status(server, address) == AddStat.ADD_UNKOWN
    assert map_keys(server.config.map.path) == {}


def test_caller_outside_allow_list_gets_add_perm_and_map_is_unchanged(make_server: Make, tmp_path: Path) -> None:
    allow = tmp_path / "dracd.allow"
    allow.write_text("255.255.255.255 127.0.0.1\n::1/128\n")
    server = make_server()
    assert add_status(server, "192.0.2.1") == AddStat.ADD_SUCCESS
    before = (server.config.map.path.stat().st_ino, map_keys(server.config.map.path))
    for transport in ("udp", "tcp"):
        assert add_status(server, "198.51.100.9", source="127.0.0.2", transport=transport) == AddStat.ADD_PERM
    assert (server.config.map.path.stat().st_ino, map_keys(server.config.map.path)) == before


def test_concurrent_adds_share_map_rewrites(server: ServerThread) -> None:
    # Every map write the server makes, whole or incremental (it counted a method the
    # server never calls, so it could not fail).
    writes: list[str] = []
    writer = server.daemon.writer  # type: ignore[union-attr]
    for name in ("write_codes", "update_codes", "update_in_place"):
        real = getattr(writer, name)

        def counting(*args: object, real: Any = real, name: str = name, **kwargs: object) -> Any:
            result = real(*args, **kwargs)
            if result is not False:  # update_in_place: False when it wrote nothing
                writes.append(name)
            return result

        setattr(writer, name, counting)
    count = 100  # within the default socket buffer: no datagram is dropped
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        for n in range(count):
            args = encode_add_args(ipaddress.IPv4Address(0xC6336400 + n))
            sock.sendto(encode_call(n, server.config.program, 1, DRACPROC_ADD, args), ("127.0.0.1", server.port))
        replies = {sock.recv(100)[:4] for _ in range(count)}
    assert len(replies) == count
    assert len(map_keys(server.config.map.path)) == count
    assert 0 < len(writes) < count / 3, f"{len(writes)} map writes for {count} concurrent ADDs"


def test_one_add_at_a_time_is_written_on_the_event_loop_thread(server: ServerThread) -> None:
    # Issue 21: one login at a time, the spare takes the change in place on the loop
    # thread; waking the map thread for it cost more CPU than the update itself.
    import threading

    calls: list[tuple[str, str, object]] = []
    writer = server.daemon.writer  # type: ignore[union-attr]
    for name in ("update_codes", "update_in_place"):
        real = getattr(writer, name)

        def recording(*args: object, real: Any = real, name: str = name, **kwargs: object) -> Any:
            result = real(*args, **kwargs)
            calls.append((threading.current_thread().name, name, result))
            return result

        setattr(writer, name, recording)
    for n in range(6):
        assert add_status(server, f"192.0.2.{100 + n}") == AddStat.ADD_SUCCESS
        assert f"192.0.2.{100 + n}".encode() in map_keys(server.config.map.path)
    # The first ones may copy (no spare yet), in the map thread; then every one is in place.
    last = calls[-3:]
    assert [(name, result) for _, name, result in last] == [("update_in_place", True)] * 3, calls
    assert not any(thread.startswith("dracd-map") for thread, _, _ in last), calls


def test_restart_keeps_entries_and_initialize_drops_them(make_server: Make) -> None:
    first = make_server()
    assert add_status(first, "192.0.2.50") == AddStat.ADD_SUCCESS
    expiry = map_keys(first.config.map.path)[b"192.0.2.50"]
    first.stop()
    second = make_server()
    assert map_keys(second.config.map.path) == {b"192.0.2.50": expiry}
    assert ipaddress.ip_address("192.0.2.50") in second.daemon.table  # type: ignore[union-attr]
    second.stop()
    third = make_server(initialize=True)
    assert map_keys(third.config.map.path) == {}


def test_restart_reuses_its_own_map_and_rewrites_another_style(make_server: Make) -> None:
    first = make_server()
    for address in ("192.0.2.51", "2001:db8::51"):
        assert add_status(first, address) == AddStat.ADD_SUCCESS
    first.stop()
    path = first.config.map.path
    inode = path.stat().st_ino
    second = make_server()  # the map is exactly what dracd writes: adopted, not rewritten
    assert path.stat().st_ino == inode
    assert add_status(second, "192.0.2.52") == AddStat.ADD_SUCCESS
    assert set(map_keys(path)) == {b"192.0.2.51", b"2001:db8::51", b"192.0.2.52"}
    second.stop()
    third = make_server(map_nul_terminated=True)  # another key style: rewritten before serving
    assert set(map_keys(path)) == {b"192.0.2.51\0", b"2001:db8::51\0", b"192.0.2.52\0"}
    third.stop()


def test_entry_leaves_the_map_within_a_second_of_expiry(make_server: Make) -> None:
    server = make_server(lifetime=1)
    assert add_status(server, "192.0.2.77") == AddStat.ADD_SUCCESS
    expiry = int(map_keys(server.config.map.path)[b"192.0.2.77"])
    assert wait_for(lambda: b"192.0.2.77" not in map_keys(server.config.map.path), timeout=4.0)
    assert time.time() < expiry + 1.0


def test_read_only_map_directory_gives_syserr_and_recovers(make_server: Make, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "maps") as directory:
        server = make_server(map_path=directory / "dracd.db", allow_file=None)
        assert add_status(server, "192.0.2.1") == AddStat.ADD_SUCCESS
        set_readonly(directory, True)
        try:
            assert add_status(server, "192.0.2.2") == AddStat.ADD_SYSERR
            assert add_status(server, "192.0.2.3", transport="tcp") == AddStat.ADD_SYSERR
            assert set(map_keys(directory / "dracd.db")) == {b"192.0.2.1"}
        finally:
            set_readonly(directory, False)
        # Recovers by itself: the retry writes what the table holds, without a new ADD.
        assert wait_for(lambda: b"192.0.2.3" in map_keys(directory / "dracd.db"), timeout=5.0)
        assert add_status(server, "192.0.2.4") == AddStat.ADD_SUCCESS
        server.stop()


def test_stop_writes_the_map_a_last_time(make_server: Make) -> None:
    server = make_server()
    assert add_status(server, "192.0.2.5") == AddStat.ADD_SUCCESS

    def drop() -> None:
        server.daemon.table.remove(ipaddress.ip_address("192.0.2.5"))  # type: ignore[union-attr]

    server.call(drop)
    server.stop()
    assert map_keys(server.config.map.path) == {}


def test_unwritable_map_at_start_is_fatal(make_server: Make, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro") as directory:
        set_readonly(directory, True)
        try:
            try:
                make_server(map_path=directory / "dracd.db")
            except MapError as exc:
                assert "cannot write" in str(exc)
            else:
                raise AssertionError("server started without being able to create its map")
        finally:
            set_readonly(directory, False)


def test_map_replaced_behind_our_back_is_rewritten_whole(server: ServerThread, tmp_path: Path) -> None:
    from berkeleydb import db

    assert add_status(server, "192.0.2.1") == AddStat.ADD_SUCCESS
    foreign = tmp_path / "foreign.db"
    table = db.DB()
    table.open(str(foreign), dbtype=db.DB_BTREE, flags=db.DB_CREATE)
    table.put(b"unknown", b"1")
    table.close()
    foreign.rename(server.config.map.path)
    assert add_status(server, "192.0.2.2") == AddStat.ADD_SUCCESS
    assert set(map_keys(server.config.map.path)) == {b"192.0.2.1", b"192.0.2.2"}


def test_second_server_on_the_same_map_fails_before_touching_it(make_server: Make) -> None:
    from dracd.app.daemon import MapInUse

    first = make_server()
    assert add_status(first, "192.0.2.1") == AddStat.ADD_SUCCESS
    before = (first.config.map.path.stat().st_ino, map_keys(first.config.map.path))
    try:
        make_server(initialize=True)
    except MapInUse as exc:
        assert str(first.config.map.path) in str(exc) and str(os.getpid()) in str(exc)
    else:
        raise AssertionError("a second server started on a map in use")
    assert (first.config.map.path.stat().st_ino, map_keys(first.config.map.path)) == before
    assert add_status(first, "192.0.2.2") == AddStat.ADD_SUCCESS


def test_stale_registration_naming_another_host_is_replaced_without_probing_it(
    rpcbind: None, make_server: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dracd.server.registration
    from dracclient import rpcbind as rpcb
    from tests.fixtures.server import private_prog

    probed: list[str] = []
    # Recorded, never sent: a regression must not put a packet on the wire.
    monkeypatch.setattr(dracd.server.registration, "_alive", lambda host, *args: probed.append(host) or False)
    prog = private_prog()
    assert rpcb.register(prog, 1, "udp", "198.51.100.7.4.1")
    assert rpcb.register(prog, 1, "tcp", "127.0.0.1.4.1")
    try:
        server = make_server(rpcbind=True, program=prog, listen=("127.0.0.1",))
        assert probed == ["127.0.0.1"]
        found = {(m.vers, m.netid): m.port for m in rpcb.dump() if m.prog == prog}
        assert found == {(v, n): server.port for v in (1, 2) for n in ("udp", "tcp")} | {(3, "tcp"): server.port}
    finally:
        for vers in (1, 2, 3):
            rpcb.unregister(prog, vers)


def test_map_in_an_unsafe_directory_is_refused_unless_allowed(make_server: Make, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    try:
        make_server(map_path=shared / "dracd.db")
    except MapError as exc:
        assert str(shared) in str(exc) and "allow_unsafe_directory" in str(exc)
    else:
        raise AssertionError("started with its map in a world-writable directory")
    assert not (shared / "dracd.db").exists()
    server = make_server(map_path=shared / "dracd.db", map_allow_unsafe_directory=True)
    assert add_status(server, "192.0.2.1") == AddStat.ADD_SUCCESS


def test_full_disk_gives_syserr_and_recovers_when_space_returns(make_server: Make, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", size="256k") as directory:
        server = make_server(map_path=directory / "dracd.db")
        assert add_status(server, "192.0.2.1") == AddStat.ADD_SUCCESS
        filler = directory / "filler"
        with open(filler, "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:
                pass  # the file system is full now
        # An update that fits in the map's existing pages needs no new block and may still
        # succeed; one that needs space fails, and nothing acknowledged is lost.
        acked, refused = {b"192.0.2.1"}, []
        for host in range(2, 2000):
            address = f"10.0.{host // 256}.{host % 256}"
            status = add_status(server, address)
            assert status in (AddStat.ADD_SUCCESS, AddStat.ADD_SYSERR)
            if status == AddStat.ADD_SYSERR:
                refused.append(address)
                break
            acked.add(address.encode())
        assert refused, "a full file system never refused an ADD"
        assert set(map_keys(directory / "dracd.db")) == acked
        filler.unlink()
        assert wait_for(lambda: refused[0].encode() in map_keys(directory / "dracd.db"), timeout=5.0)
        assert add_status(server, "192.0.2.3") == AddStat.ADD_SUCCESS
        assert acked <= set(map_keys(directory / "dracd.db"))
        server.stop()
