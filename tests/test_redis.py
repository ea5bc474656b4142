"""The shared table in Redis (issue 9): two dracd instances, each with its own
map and socketmap, on one real redis-server (also behind a real Sentinel and a
real 3-node Cluster). An ADD through one is in the other's map and socketmap
within a second; DEL and expiry reach both; a kill -9 of Redis (no persistence)
loses no acknowledged entry, ADDs answer ADD_SYSERR meanwhile and lookups keep
answering."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from dracclient.admin import AdminClient, NotFound
from dracclient.drac import AddStat
from dracd.app.cli import build_parser, resolve_config
from dracd.config import ConfigError, RedisConfig, config_from_dict
from dracd.relay.store import SharedStore
from dracd.server.netstring import NetstringReader, encode
from tests.fixtures.redis import Cluster, RedisServer, Sentinel
from tests.fixtures.server import ServerThread, add_status, map_keys, wait_for

Make = Callable[..., ServerThread]
VISIBLE = 1.0  # the bound: an ADD anywhere is everywhere within a second


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def start_pair(make_server: Make, tmp_path: Path, redis: RedisConfig, **changes: Any) -> tuple[ServerThread, ...]:
    """Two dracd instances on one shared table, each with its own map, admin socket and socketmap."""
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir(exist_ok=True)
        servers.append(make_server(map_path=tmp_path / name / "dracd.db", admin_socket=tmp_path / name / "sock",
                                   socketmap=("inet:127.0.0.1:0",), redis=redis, **changes))
    return tuple(servers)


@pytest.fixture
def pair(redis_server: RedisServer, make_server: Make, tmp_path: Path) -> tuple[ServerThread, ...]:
    return start_pair(make_server, tmp_path, RedisConfig(url=redis_server.url))


def lookup(server: ServerThread, address: str) -> bytes:
    """One socketmap lookup, as Postfix would make it."""
    assert server.daemon is not None and server.daemon.socketmap is not None
    port = server.daemon.socketmap.bound[0].port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(encode(b"drac " + address.encode()))
        reader = NetstringReader()
        while not (replies := reader.feed(sock.recv(4096))):
            pass
        return replies[0]


def in_map(server: ServerThread, address: str) -> bool:
    return address.encode() in map_keys(server.config.map.path)


def everywhere(servers: tuple[ServerThread, ...], address: str) -> bool:
    return all(in_map(s, address) and lookup(s, address).startswith(b"OK ") for s in servers)


def nowhere(servers: tuple[ServerThread, ...], address: str) -> bool:
    return not any(in_map(s, address) or lookup(s, address).startswith(b"OK ") for s in servers)


def dracd_connections(port: int) -> list[str]:
    """The connections to this Redis (or Sentinel) that a dracd opened: it names them "dracd"."""
    probe = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)
    try:
        return [client["addr"] for client in probe.client_list() if client.get("name") == "dracd"]
    finally:
        probe.close()


def stop_leaves_no_connection(servers: tuple[ServerThread, ...], ports: list[int]) -> None:
    """A clean stop closes every client and pool dracd opened (redis-py 7.x/8.0 left
    the Sentinel's own connections open: ResourceWarnings at the end of the run)."""
    assert all(dracd_connections(port) for port in ports)
    for server in servers:
        server.stop()
    assert wait_for(lambda: not any(dracd_connections(port) for port in ports), 2.0), \
        {port: dracd_connections(port) for port in ports}


def admin(server: ServerThread) -> AdminClient:
    return AdminClient(socket_path=str(server.config.admin_socket), prog=server.config.program)


def test_add_on_one_is_in_the_others_map_and_socketmap_within_a_second(
        pair: tuple[ServerThread, ...], redis_server: RedisServer) -> None:
    a, b = pair
    assert add_status(a, "192.0.2.7") == AddStat.ADD_SUCCESS
    assert wait_for(lambda: everywhere(pair, "192.0.2.7"), VISIBLE)
    expiry = int(redis_server.client().get("dracd:192.0.2.7"))
    assert lookup(b, "192.0.2.7") == b"OK %d" % expiry
    assert map_keys(b.config.map.path)[b"192.0.2.7"] == str(expiry).encode()
    assert 0 < redis_server.client().ttl("dracd:192.0.2.7") <= 1800
    # Both ways, both families, over TCP too.
    assert add_status(b, "2001:db8::7", source="::1", transport="tcp") == AddStat.ADD_SUCCESS
    assert wait_for(lambda: everywhere(pair, "2001:db8::7"), VISIBLE)
    stop_leaves_no_connection(pair, [redis_server.port])


def test_admin_add_del_and_flush_reach_every_instance(pair: tuple[ServerThread, ...],
                                                      redis_server: RedisServer) -> None:
    a, b = pair
    admin(a).add("192.0.2.8", 600)
    assert wait_for(lambda: everywhere(pair, "192.0.2.8"), VISIBLE)
    assert 590 < redis_server.client().ttl("dracd:192.0.2.8") <= 600
    admin(a).delete("192.0.2.8")
    assert wait_for(lambda: nowhere(pair, "192.0.2.8"), VISIBLE)
    assert redis_server.client().get("dracd:192.0.2.8") is None
    with pytest.raises(NotFound):
        admin(b).delete("192.0.2.8")
    for address in ("192.0.2.9", "192.0.2.10"):
        assert add_status(b, address) == AddStat.ADD_SUCCESS
    assert wait_for(lambda: everywhere(pair, "192.0.2.10"), VISIBLE)
    assert admin(a).flush() == 2
    assert wait_for(lambda: nowhere(pair, "192.0.2.9") and nowhere(pair, "192.0.2.10"), VISIBLE)
    assert redis_server.client().keys("dracd:*") == []


def test_network_entries_are_shared_too(pair: tuple[ServerThread, ...], redis_server: RedisServer) -> None:
    a, b = pair
    admin(a).add("198.51.100.0/24", 600)
    assert redis_server.client().get("dracd:198.51.100.0/24") is not None
    # B writes the network's key and its socketmap finds any host inside.
    assert wait_for(lambda: b"198.51.100" in map_keys(b.config.map.path), VISIBLE)
    assert lookup(b, "198.51.100.77").startswith(b"OK ")
    admin(b).delete("198.51.100.0/24")
    assert wait_for(lambda: b"198.51.100" not in map_keys(a.config.map.path), VISIBLE)
    assert lookup(a, "198.51.100.77") == b"NOTFOUND "


def test_expiry_removes_the_entry_everywhere(redis_server: RedisServer, make_server: Make, tmp_path: Path) -> None:
    pair = start_pair(make_server, tmp_path, RedisConfig(url=redis_server.url), lifetime=2)
    assert add_status(pair[0], "192.0.2.11") == AddStat.ADD_SUCCESS
    assert wait_for(lambda: everywhere(pair, "192.0.2.11"), VISIBLE)
    assert wait_for(lambda: nowhere(pair, "192.0.2.11"), 4.0)
    assert redis_server.client().get("dracd:192.0.2.11") is None


def test_a_redis_restart_loses_no_acknowledged_entry(pair: tuple[ServerThread, ...],
                                                     redis_server: RedisServer) -> None:
    a, b = pair
    acknowledged = [f"192.0.2.{i}" for i in range(20, 30)]
    for i, address in enumerate(acknowledged):
        assert add_status(pair[i % 2], address) == AddStat.ADD_SUCCESS
    assert wait_for(lambda: all(everywhere(pair, x) for x in acknowledged), VISIBLE)
    redis_server.kill()
    # Outage: never a false success, and lookups keep answering from the last known table.
    assert add_status(a, "192.0.2.99") == AddStat.ADD_SYSERR
    assert add_status(b, "192.0.2.99", transport="tcp") == AddStat.ADD_SYSERR
    with pytest.raises(Exception, match="SYSERR"):
        admin(a).add("192.0.2.98", 60)
    assert all(lookup(s, x).startswith(b"OK ") for s in pair for x in acknowledged)
    assert lookup(b, "192.0.2.99") == b"NOTFOUND "
    redis_server.start()  # empty: no persistence
    client = redis_server.client()
    assert wait_for(lambda: all(client.get(f"dracd:{x}") for x in acknowledged), 10.0), \
        f"not written back: {[x for x in acknowledged if not client.get(f'dracd:{x}')]}"
    assert all(everywhere(pair, x) for x in acknowledged)
    assert nowhere(pair, "192.0.2.99")
    # Back in business: ADDs succeed and travel again.
    assert wait_for(lambda: add_status(a, "192.0.2.31") == AddStat.ADD_SUCCESS, 5.0)
    assert wait_for(lambda: everywhere(pair, "192.0.2.31"), VISIBLE)


def test_an_instance_that_missed_a_delete_takes_redis_word_for_it(
        pair: tuple[ServerThread, ...], redis_server: RedisServer) -> None:
    """Same Redis (same run_id) after a disconnection: Redis is right, nothing is resurrected."""
    a, b = pair
    assert add_status(a, "192.0.2.40") == AddStat.ADD_SUCCESS
    assert wait_for(lambda: everywhere(pair, "192.0.2.40"), VISIBLE)
    client = redis_server.client()
    # Cut every client off, and delete while B cannot hear it.
    client.client_kill_filter(_type="pubsub")
    client.delete("dracd:192.0.2.40")
    assert wait_for(lambda: nowhere(pair, "192.0.2.40"), 3.0)
    assert client.get("dracd:192.0.2.40") is None


def test_another_instance_starting_later_gets_the_shared_table(
        redis_server: RedisServer, make_server: Make, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    a = make_server(map_path=tmp_path / "a" / "dracd.db", admin_socket=tmp_path / "a" / "sock",
                    redis=RedisConfig(url=redis_server.url, prefix="site1:"))
    assert add_status(a, "192.0.2.50") == AddStat.ADD_SUCCESS
    assert redis_server.client().get("site1:192.0.2.50")
    (tmp_path / "b").mkdir()
    b = make_server(map_path=tmp_path / "b" / "dracd.db", admin_socket=tmp_path / "b" / "sock",
                    redis=RedisConfig(url=redis_server.url, prefix="site1:"))
    # Synced before it was ready: the map holds the entry from the start.
    assert in_map(b, "192.0.2.50")
    # Keys outside the prefix, or not addresses, are none of dracd's business.
    client = redis_server.client()
    client.set("other:192.0.2.51", 9999999999)
    client.set("site1:not-an-address", 9999999999)
    client.set("site1:0.0.0.0", 9999999999)
    # A valid key set after them: once B has it, B has seen (and must have ignored) those
    # before it, as keyspace notifications arrive in order on one connection.
    client.set("site1:192.0.2.52", 9999999999)
    assert wait_for(lambda: in_map(b, "192.0.2.52"), 10.0)
    assert set(map_keys(b.config.map.path)) == {b"192.0.2.50", b"192.0.2.52"}


def test_dracd_without_redis_starts_and_catches_up_when_it_appears(
        make_server: Make, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    a = make_server(redis=RedisConfig(url=server.url, timeout=0.2))
    assert add_status(a, "192.0.2.60") == AddStat.ADD_SYSERR
    server.start()
    try:
        assert wait_for(lambda: add_status(a, "192.0.2.60") == AddStat.ADD_SUCCESS, 10.0)
        assert server.client().get("dracd:192.0.2.60")
    finally:
        server.stop()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Sentinel]:
    setup = Sentinel(tmp_path / "sentinel")
    try:
        yield setup.start()
    finally:
        setup.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    setup = Cluster(tmp_path / "cluster")
    try:
        yield setup.start()
    finally:
        setup.stop()


def test_sentinel(sentinel: Sentinel, make_server: Make, tmp_path: Path) -> None:
    pair = start_pair(make_server, tmp_path, RedisConfig(sentinels=(("127.0.0.1", sentinel.port),),
                                                         service=sentinel.service, db=2))
    assert add_status(pair[0], "192.0.2.70") == AddStat.ADD_SUCCESS
    assert wait_for(lambda: everywhere(pair, "192.0.2.70"), VISIBLE)
    master = sentinel.master.client()
    master.select(2)
    assert master.get("dracd:192.0.2.70")
    stop_leaves_no_connection(pair, [sentinel.port, sentinel.master.port])


def test_cluster(cluster: Cluster, make_server: Make, tmp_path: Path) -> None:
    first = cluster.nodes[0]
    pair = start_pair(make_server, tmp_path, RedisConfig(cluster=(("127.0.0.1", first.port),)))
    # Enough addresses to land on every node's slots.
    addresses = [f"192.0.2.{i}" for i in range(80, 92)]
    for i, address in enumerate(addresses):
        assert add_status(pair[i % 2], address) == AddStat.ADD_SUCCESS
    assert wait_for(lambda: all(everywhere(pair, x) for x in addresses), VISIBLE)
    assert all(node.client().dbsize() > 0 for node in cluster.nodes)
    admin(pair[1]).delete("192.0.2.80")
    assert wait_for(lambda: nowhere(pair, "192.0.2.80"), VISIBLE)
    stop_leaves_no_connection(pair, [node.port for node in cluster.nodes])


# Configuration.

@pytest.mark.parametrize(("data", "message"), [
    ({"redis": "redis://x"}, "key 'redis': expected a mapping"),
    ({"redis": {}}, "exactly one of redis.url"),
    ({"redis": {"url": "http://x"}}, "key 'redis.url'"),
    ({"redis": {"url": "redis://x", "cluster": ["h:1"]}}, "exactly one of"),
    ({"redis": {"sentinels": ["h:26379"]}}, "go together"),
    ({"redis": {"sentinels": ["h"], "service": "m"}}, "key 'redis.sentinels': 'h': expected HOST:PORT"),
    ({"redis": {"cluster": ["h:1"], "db": 1}}, "key 'redis.db'"),
    ({"redis": {"url": "redis://x", "prefix": "a*"}}, "key 'redis.prefix'"),
    ({"redis": {"url": "redis://x", "timeout": 0}}, "key 'redis.timeout'"),
    ({"redis": {"url": "redis://x", "bogus": 1}}, "key 'redis.bogus': unknown key"),
])
def test_bad_redis_config_names_file_and_key(data: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^" + str(tmp_path / "c.yaml").replace(".", r"\.") + ".*" + message):
        config_from_dict(data, tmp_path / "c.yaml")


def test_redis_config_forms(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    assert config_from_dict({}, path).redis is None
    assert config_from_dict({"redis": None}, path).redis is None
    url = config_from_dict({"redis": {"url": "redis://127.0.0.1:6379/3", "prefix": "x:", "timeout": 0.5}}, path)
    assert url.redis == RedisConfig(url="redis://127.0.0.1:6379/3", prefix="x:", timeout=0.5)
    sentinel = config_from_dict({"redis": {"sentinels": ["10.0.0.1:26379", "[2001:db8::1]:26379"],
                                           "service": "mymaster", "db": 1, "password": "s"}}, path).redis
    assert sentinel == RedisConfig(sentinels=(("10.0.0.1", 26379), ("2001:db8::1", 26379)), service="mymaster",
                                   db=1, password="s")
    cluster = config_from_dict({"redis": {"cluster": "10.0.0.1:7000"}}, path).redis
    assert cluster is not None and cluster.cluster == (("10.0.0.1", 7000),)


def test_redis_flag_overrides_the_config(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("redis: {sentinels: ['h:26379'], service: m, prefix: 'p:'}\n")
    args = build_parser().parse_args(["-c", str(conf), "--redis", "redis://127.0.0.1:6390/4"])
    config = resolve_config(args)
    assert config.redis == RedisConfig(url="redis://127.0.0.1:6390/4", prefix="p:")
    assert resolve_config(build_parser().parse_args(["--redis", "redis://h:1/0"])).redis == \
        RedisConfig(url="redis://h:1/0")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--redis", "h:6379"])


def test_check_config_with_the_flag(tmp_path: Path, redis_server: RedisServer) -> None:
    """--check-config accepts --redis (redis-py is there) and refuses a bad URL as a usage error."""
    import sys

    dracd = Path(sys.executable).parent / "dracd"
    result = subprocess.run([str(dracd), "--check-config", "--redis", redis_server.url, str(tmp_path / "m.db")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    bad = subprocess.run([str(dracd), "--check-config", "--redis", "nope"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 64 and "--redis" in bad.stderr


def test_reload_keeps_the_redis_settings(pair: tuple[ServerThread, ...]) -> None:
    a, _ = pair
    assert a.daemon is not None
    a.call(lambda: a.daemon.reload(replace(a.config, redis=None)))  # type: ignore[union-attr]
    assert isinstance(a.daemon.store, SharedStore) and add_status(a, "192.0.2.120") == AddStat.ADD_SUCCESS


def test_two_dracd_processes_share_a_table_with_the_flag(redis_server: RedisServer, tmp_path: Path) -> None:
    """The real command line, `dracd --redis URL`, as two processes: ADD on one, in the other's map,
    and both stop cleanly on SIGTERM."""
    from tests.fixtures.process import DracdProcess
    from tests.fixtures.process import add_status as process_add
    from tests.fixtures.redis import free_port
    from tests.fixtures.server import private_prog

    prog, processes, ports = private_prog(), [], []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            ports.append(free_port())
            processes.append(DracdProcess(
                ["--no-rpcbind", "--listen", "127.0.0.1", "--port", str(ports[-1]), "--program", str(prog),
                 "--redis", redis_server.url, str(tmp_path / name / "dracd.db")],
                log_path=tmp_path / f"{name}.log").start_ready())
        assert process_add(ports[0], prog, "192.0.2.130") == AddStat.ADD_SUCCESS
        assert wait_for(lambda: b"192.0.2.130" in map_keys(tmp_path / "b" / "dracd.db"), VISIBLE)
        assert all(process.stop() == 0 for process in processes)
        assert "synchronised" in processes[1].log()
    finally:
        for process in processes:
            process.kill()
