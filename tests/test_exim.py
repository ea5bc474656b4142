"""End to end with the real Exim 4 (Debian 12's exim4-daemon-light) in its own
namespaces: the map dracd writes decides Exim's RCPT ACL.

Exim's rule (tests/fixtures/exim.py)::

    accept condition = ${lookup{$sender_host_address}dbmnz{MAP}{yes}{no}}
    deny   message = relay not permitted

``dbmnz`` looks keys up without a trailing NUL (dracd's default
``nul_terminated: false``), ``dbm`` with one; Exim opens btree and hash
files alike. ``$sender_host_address`` is the compressed IPv6 form, so
dracd's default ``ipv6_keys: postfix`` serves Exim too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dracclient import add
from dracclient.admin import AdminClient
from dracclient.cli import main as dracctl
from tests.fixtures.exim import (
    DENY_MESSAGE,
    KEY_LOG_PREFIX,
    EximInstance,
    exim_factory,  # noqa: F401  (a fixture, used by name)
)
from tests.fixtures.process import map_format
from tests.fixtures.server import ServerThread, map_keys, wait_for

pytestmark = pytest.mark.timeout(60)

LIFETIME = 3
CLIENT = "127.0.0.5"
OTHER = "127.0.0.6"
IPV6_EXTRA = "2001:db8::7"  # exists only on lo inside Exim's network namespace

ServerFactory = Callable[..., ServerThread]
EximFactory = Callable[..., EximInstance]


@pytest.fixture
def map_path(tmp_path: Path) -> Path:
    """The map's directory must be searchable by the Exim user (the daemon does not run as root)."""
    directory = tmp_path / "map"
    directory.mkdir()
    directory.chmod(0o755)
    return directory / "dracd.db"


def drac_add(server: ServerThread, address: str) -> None:
    """A DRAC ADD the way an MRA sends it (v1 over UDP for IPv4, v2 over TCP to ::1 for IPv6)."""
    if ":" in address:
        add(address, servers="::1", port=server.port, prog=server.config.program, transport="tcp")
    else:
        add(address, servers="127.0.0.1", port=server.port, prog=server.config.program)


def admin(server: ServerThread) -> AdminClient:
    return AdminClient(socket_path=str(server.config.admin_socket), prog=server.config.program)


def assert_refused(exim: EximInstance, client: str) -> None:
    code, text = exim.probe_relay(client)
    assert (code, text) == (550, DENY_MESSAGE), f"relay from {client}: expected a 550 refusal, got {code} {text}"


def assert_relays(exim: EximInstance, client: str) -> None:
    code, text = exim.probe_relay(client)
    assert code == 250, f"relay from {client}: expected 250, got {code} {text}"


def assert_clean_logs(exim: EximInstance) -> None:
    assert exim.panic_text() == "", exim.panic_text()
    log = exim.log_text()
    for bad in ("temporarily rejected", "Temporary local problem", "failed to open"):
        assert bad not in log, f"{bad!r} in Exim's mainlog:\n{log}"


def test_relay_follows_add_expiry_and_delete(
    make_server: ServerFactory, exim_factory: EximFactory, map_path: Path  # noqa: F811
) -> None:
    server = make_server(lifetime=LIFETIME, map_path=map_path, map_type="btree", map_nul_terminated=False)
    exim = exim_factory(server.config.map.path, lookup="dbmnz")

    assert_refused(exim, CLIENT)
    assert exim.probe_relay(CLIENT, rcpt="postmaster@test.invalid")[0] == 250, "the local domain is always accepted"

    drac_add(server, CLIENT)
    added = time.monotonic()
    assert map_keys(map_path).keys() == {CLIENT.encode()}, "btree, no trailing NUL"
    assert exim.lookup(CLIENT) is not None
    assert_relays(exim, CLIENT)
    assert_refused(exim, OTHER)

    # Expiry: dracd deletes the key on time and Exim's next session sees it.
    assert wait_for(lambda: CLIENT.encode() not in map_keys(map_path), timeout=LIFETIME + 3)
    assert time.monotonic() - added < LIFETIME + 2
    assert_refused(exim, CLIENT)

    # Delete through the admin socket after a fresh add.
    drac_add(server, CLIENT)
    assert_relays(exim, CLIENT)
    assert dracctl(["-S", str(server.config.admin_socket), "--program", str(server.config.program),
                    "del", CLIENT]) == 0
    assert CLIENT.encode() not in map_keys(map_path), "DEL is answered once the map is rewritten"
    assert_refused(exim, CLIENT)

    log = exim.log_text()
    assert f"{KEY_LOG_PREFIX} <{CLIENT}>" in log
    assert_clean_logs(exim)


def test_ipv6_clients_use_the_compressed_key(
    make_server: ServerFactory, exim_factory: EximFactory, map_path: Path  # noqa: F811
) -> None:
    server = make_server(map_path=map_path)  # ipv6_keys: postfix (compressed form only)
    exim = exim_factory(server.config.map.path, extra_lo_addresses=(IPV6_EXTRA,))

    assert_refused(exim, "::1")
    drac_add(server, "::1")
    assert_relays(exim, "::1")

    assert_refused(exim, IPV6_EXTRA)
    drac_add(server, IPV6_EXTRA)
    assert set(map_keys(map_path)) == {b"::1", IPV6_EXTRA.encode()}
    assert_relays(exim, IPV6_EXTRA)
    assert_refused(exim, "127.0.0.1")  # an IPv4 client still needs its own key

    # What Exim looked up: $sender_host_address, compressed like inet_ntop prints it.
    log = exim.log_text()
    assert f"{KEY_LOG_PREFIX} <::1>" in log and f"{KEY_LOG_PREFIX} <{IPV6_EXTRA}>" in log, log
    assert "0:0:0" not in log and "2001:0db8" not in log
    assert_clean_logs(exim)


def test_map_rewrites_never_break_an_open_session(
    make_server: ServerFactory, exim_factory: EximFactory, map_path: Path  # noqa: F811
) -> None:
    server = make_server(map_path=map_path)
    exim = exim_factory(server.config.map.path)
    drac_add(server, CLIENT)

    with exim.session(CLIENT) as a, exim.session(OTHER) as b:
        assert a.mail("a@example.com")[0] == 250
        assert a.rcpt("x@example.org")[0] == 250  # session A has looked the map up: it holds it open
        assert b.mail("b@example.com")[0] == 250  # session B has not looked anything up yet
        assert exim.open_map_files() == [str(exim.ns_map_path)]

        # Ten rewrites (dracd never updates in place: each one renames a new file over the map).
        for i in range(8):
            drac_add(server, f"127.1.0.{i}")
            assert f"127.1.0.{i}".encode() in map_keys(map_path)
            if i == 3:
                drac_add(server, OTHER)
                admin(server).delete(CLIENT)
                assert set(map_keys(map_path)) >= {OTHER.encode()} and CLIENT.encode() not in map_keys(map_path)
        assert exim.open_map_files() == [f"{exim.ns_map_path} (deleted)"], "session A must keep the old file"

        # Exim 4.96 answers 250 here (stale but consistent): a session keeps the map it opened,
        # and its lookups, until the connection ends; only the next connection sees the delete.
        code_a, text_a = a.rcpt("y@example.org")
        assert code_a in (250, 550), f"session A after the rewrites: {code_a} {text_a!r}"
        a.rset()
        assert a.mail("a@example.com")[0] == 250
        code_a2, text_a2 = a.rcpt("z@example.org")
        assert code_a2 in (250, 550), f"session A, next message: {code_a2} {text_a2!r}"
        code_b, text_b = b.rcpt("x@example.org")
        assert code_b == 250, f"session B looked up after its key was added: {code_b} {text_b!r}"
        assert a.noop()[0] == 250 and b.noop()[0] == 250, "both sessions must still be alive"
        assert exim.open_map_files() == [str(exim.ns_map_path), f"{exim.ns_map_path} (deleted)"]

    # The next sessions see the new map.
    assert_relays(exim, OTHER)
    assert_refused(exim, CLIENT)
    assert_relays(exim, "127.1.0.7")
    assert_clean_logs(exim)


def test_hash_map_with_nul_keys_and_the_dbm_lookup(
    make_server: ServerFactory, exim_factory: EximFactory, map_path: Path  # noqa: F811
) -> None:
    server = make_server(map_path=map_path, map_type="hash", map_nul_terminated=True)
    exim = exim_factory(server.config.map.path, lookup="dbm")

    assert_refused(exim, CLIENT)
    drac_add(server, CLIENT)
    assert set(map_keys(map_path)) == {CLIENT.encode() + b"\0"}
    assert_relays(exim, CLIENT)
    assert_refused(exim, OTHER)
    assert_clean_logs(exim)


@pytest.mark.parametrize("map_type", ["btree", "hash"])
@pytest.mark.parametrize("nul", [False, True], ids=["no-nul", "nul"])
def test_lookup_types_and_key_styles(
    make_server: ServerFactory, exim_factory: EximFactory, map_path: Path, map_type: str, nul: bool  # noqa: F811
) -> None:
    """``exim -be`` over every map type and NUL style: dbm finds NUL-terminated keys, dbmnz the others."""
    server = make_server(map_path=map_path, map_type=map_type, map_nul_terminated=nul)
    drac_add(server, CLIENT)
    drac_add(server, "::1")
    assert map_format(map_path)[0] == map_type
    exim = exim_factory(server.config.map.path, start=False)

    now = time.time()
    for lookup, finds in (("dbm", nul), ("dbmnz", not nul)):
        for key in (CLIENT, "::1"):
            value = exim.lookup(key, lookup)  # type: ignore[arg-type]
            assert (value is not None) == finds, f"{lookup} lookup of {key} in a {map_type} map (nul={nul}): {value}"
            if value is not None:
                assert now < int(value) <= now + server.config.lifetime + 1, value
        assert exim.lookup(OTHER, lookup) is None  # type: ignore[arg-type]
