"""Tests of tests/fixtures/postfix.py: a real Postfix honours a BDB map.

The map is written here directly with the ``berkeleydb`` binding (the way
dracd writes it: keys without a trailing NUL, replaced atomically by
rename), so these tests prove the fixture, not dracd.  Nothing is skipped:
if Postfix cannot start, the test fails with Postfix's own reason.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
from berkeleydb import db

try:
    from tests.fixtures.postfix import (  # noqa: F401  (postfix_factory is a fixture)
        PostfixError,
        PostfixInstance,
        postfix_factory,
    )
except ImportError:  # tests/ on sys.path instead of the repo root
    from fixtures.postfix import (  # type: ignore[no-redef]  # noqa: F401
        PostfixError,
        PostfixInstance,
        postfix_factory,
    )

EXPIRY = b"1999999999"


def write_map(path: Path, keys: list[str], dbtype: int = db.DB_BTREE) -> None:
    """Replace the map at ``path`` atomically with ``keys`` (value EXPIRY).

    A complete new file in the same directory, fsynced, renamed over the old
    one -- never an in-place update (DESIGN.md section 3).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    d = db.DB()
    d.open(str(tmp), dbtype=dbtype, flags=db.DB_CREATE, mode=0o644)
    try:
        for k in keys:
            d.put(k.encode("ascii"), EXPIRY)
        d.sync()
    finally:
        d.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def assert_refused(pf: PostfixInstance, ip: str) -> None:
    code, text = pf.probe_relay(ip)
    assert (code, "Relay access denied" in text) == (554, True), (
        f"relay from {ip} should be refused, got {code} {text!r}\n{pf.log_text()}"
    )


def assert_relayed(pf: PostfixInstance, ip: str) -> None:
    code, text = pf.probe_relay(ip)
    assert code == 250 and text.startswith("2.1.5"), (
        f"relay from {ip} should be allowed, got {code} {text!r}\n{pf.log_text()}"
    )


def test_btree_map_ipv4_and_ipv6(tmp_path: Path, postfix_factory) -> None:
    map_path = tmp_path / "var" / "dracd.db"
    write_map(map_path, [])
    pf = postfix_factory(map_path)  # btree, smtpd_relay_restrictions

    # (1) empty map: refused, for IPv4 and for ::1 (not in mynetworks)
    assert_refused(pf, "127.0.0.5")
    assert_refused(pf, "::1")
    assert pf.postmap_query("127.0.0.5") is None
    # mynetworks (127.0.0.1/32) still relays: the restriction list is intact
    assert pf.probe_relay("127.0.0.1")[0] == 250

    # (2) atomic replacement, picked up by the running instance
    write_map(map_path, ["127.0.0.5", "::1"])
    assert_relayed(pf, "127.0.0.5")
    assert_relayed(pf, "::1")
    assert_refused(pf, "127.0.0.6")  # only listed clients

    # (3) postmap sees exactly what dracd wrote (no trailing NUL)
    assert pf.postmap_query("127.0.0.5") == EXPIRY.decode()
    assert pf.postmap_query("::1") == EXPIRY.decode()
    assert pf.postmap_query("127.0.0.6") is None

    # ... and back: deleting the key revokes relaying for new sessions
    write_map(map_path, ["::1"])
    assert_refused(pf, "127.0.0.5")
    assert_relayed(pf, "::1")

    # the maillog works (lines arrive asynchronously via postlogd)
    pf.wait_for_log("NOQUEUE: reject: RCPT from unknown[127.0.0.5]: 554 5.7.1")
    pf.wait_for_log("NOQUEUE: reject: RCPT from unknown[::1]: 554 5.7.1")


def test_two_instances_hash_map_and_recipient_restrictions(
    tmp_path: Path, postfix_factory
) -> None:
    map_a = tmp_path / "a" / "dracd.db"
    map_b = tmp_path / "b" / "dracd.db"
    write_map(map_a, [], db.DB_HASH)
    write_map(map_b, [])
    a = postfix_factory(map_a, map_type="hash")
    b = postfix_factory(str(map_b)[: -len(".db")], restriction="recipient")
    assert a.port != b.port
    assert a.queue_dir != b.queue_dir
    assert a.master_pid() != b.master_pid()
    assert "check_client_access hash:" in (a.config_dir / "main.cf").read_text()

    for pf in (a, b):
        assert_refused(pf, "127.0.0.7")
        assert_refused(pf, "127.0.0.8")

    write_map(map_a, ["127.0.0.7"], db.DB_HASH)
    write_map(map_b, ["127.0.0.8"])
    assert_relayed(a, "127.0.0.7")
    assert_refused(a, "127.0.0.8")
    assert_relayed(b, "127.0.0.8")
    assert_refused(b, "127.0.0.7")
    assert a.postmap_query("127.0.0.7") == EXPIRY.decode()
    assert b.postmap_query("127.0.0.7") is None

    # stopping one leaves the other alone, and leaves nothing behind
    port_a = a.port
    pids_a = a.instance_pids()
    assert a.master_pid() in pids_a
    a.stop()
    assert not any(_alive(p) for p in pids_a)
    assert not a.is_running()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port_a), timeout=2).close()
    assert b.is_running()
    assert_relayed(b, "127.0.0.8")
    pids_b = b.instance_pids()
    assert b.master_pid() in pids_b
    b.stop()
    assert not any(_alive(p) for p in pids_b)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_missing_map_is_refused_before_start(tmp_path: Path) -> None:
    pf = PostfixInstance(tmp_path / "pf", tmp_path / "nowhere" / "dracd.db")
    with pytest.raises(PostfixError, match="does not exist"):
        pf.start()
    assert not pf.is_running()


def test_unusable_map_is_refused_before_start(tmp_path: Path) -> None:
    map_path = tmp_path / "dracd.db"
    write_map(map_path, ["127.0.0.5"], db.DB_HASH)
    pf = PostfixInstance(tmp_path / "pf", map_path, map_type="btree")
    try:
        with pytest.raises(PostfixError, match="not a usable btree table"):
            pf.start()
    finally:
        pf.stop()
    assert not pf.is_running()


def test_config_error_is_explained(tmp_path: Path) -> None:
    map_path = tmp_path / "dracd.db"
    write_map(map_path, [])
    pf = PostfixInstance(
        tmp_path / "pf",
        map_path,
        extra_main_cf={"mail_owner": "no-such-user-dracdtest"},
    )
    try:
        # postfix(1) says nothing without a tty: the reason comes from the
        # rerun under script(1)
        with pytest.raises(PostfixError, match="unknown user name value: "
                           "no-such-user-dracdtest"):
            pf.start()
    finally:
        pf.stop()
    assert not pf.is_running()
