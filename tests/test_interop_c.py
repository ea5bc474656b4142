"""Interop with the reference C client (rpcgen + libtirpc), found through the
system rpcbind exactly as legacy DRAC clients find rpc.dracd; Postfix's own
postmap then reads what the server wrote."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dracclient import rpcbind as rpcb
from dracclient.drac import DRACPROG
from tests.fixtures.cclient import EXIT_CREATE, EXIT_OK, build_dracadd, run_dracadd
from tests.fixtures.server import ServerThread

Make = Callable[..., ServerThread]


@pytest.fixture(scope="module")
def dracadd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dracadd(tmp_path_factory.mktemp("cbuild"))


def postmap_q(tmp_path: Path, map_path: Path, key: str, kind: str = "btree") -> str | None:
    """Postfix's reading of the map (postmap -q), with a private empty main.cf."""
    confdir = tmp_path / "postfix-conf"
    if not confdir.exists():
        confdir.mkdir()
        (confdir / "main.cf").write_text("myhostname = dracd.test.invalid\nmydomain = test.invalid\n")
        # Postfix pauses reading a main.cf modified in the last seconds, in case it is half written.
        os.utime(confdir / "main.cf", (time.time() - 60, time.time() - 60))
    spec = f"{kind}:{map_path.with_suffix('')}"
    result = subprocess.run(["postmap", "-c", str(confdir), "-q", key, spec],
                            capture_output=True, text=True, timeout=15)
    if result.returncode == 1 and not result.stderr:
        return None
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


CASES = [
    ("127.0.0.1", "udp", "192.0.2.10"),
    ("127.0.0.1", "tcp", "203.0.113.200"),
    ("127.0.0.1", "udp", "2001:db8::b8:10"),
    ("127.0.0.1", "tcp", "2001:db8:ff00::1"),
    ("::1", "udp6", "198.51.100.6"),
    ("::1", "tcp6", "2001:db8::6"),
]


def test_c_client_adds_through_rpcbind_and_postmap_finds_them(
    rpcbind: None, make_server: Make, dracadd: Path, tmp_path: Path
) -> None:
    server = make_server(rpcbind=True)
    prog = server.config.program
    for host, netid, address in CASES:
        result = run_dracadd(dracadd, host, netid, address, prog=prog)
        assert (result.returncode, result.stdout) == (EXIT_OK, "ADD_SUCCESS\n"), (netid, address, result.stderr)
    for _, _, address in CASES:
        value = postmap_q(tmp_path, server.config.map.path, address)
        assert value is not None and value.isdigit(), f"postmap -q {address}: {value!r}"
    assert postmap_q(tmp_path, server.config.map.path, "192.0.2.11") is None


def test_c_client_null_procedure(rpcbind: None, make_server: Make, dracadd: Path) -> None:
    server = make_server(rpcbind=True)
    for netid in ("udp", "tcp"):
        result = run_dracadd(dracadd, "127.0.0.1", netid, "192.0.2.1", prog=server.config.program, null_only=True)
        assert (result.returncode, result.stdout) == (EXIT_OK, "NULL_OK\n"), result.stderr


def test_unregistered_on_stop(rpcbind: None, make_server: Make, dracadd: Path) -> None:
    server = make_server(rpcbind=True)
    prog = server.config.program
    assert {(m.vers, m.netid) for m in rpcb.dump() if m.prog == prog} == {
        (v, n) for v in (1, 2) for n in ("udp", "tcp", "udp6", "tcp6")
    } | {(3, "tcp"), (3, "tcp6")}
    server.stop()
    assert not [m for m in rpcb.dump() if m.prog == prog]
    result = run_dracadd(dracadd, "127.0.0.1", "udp", "192.0.2.1", prog=prog, timeout=2)
    assert result.returncode == EXIT_CREATE


@pytest.mark.serial  # the system rpcbind's 900101: no other test may hold or expect it meanwhile
def test_real_program_number_900101(rpcbind: None, make_server: Make, dracadd: Path, tmp_path: Path) -> None:
    """clnt_create(host, 900101, 1, "udp"|"tcp") as legacy clients call it."""
    holders = [m for m in rpcb.dump() if m.prog == DRACPROG]
    assert not holders, (
        f"program {DRACPROG} is already registered with rpcbind by another server "
        f"({', '.join(f'{m.netid} {m.uaddr}' for m in holders)}): stop it (e.g. a `make run`) to run this test"
    )
    server = make_server(rpcbind=True, program=DRACPROG)
    for netid, address in (("udp", "192.0.2.21"), ("tcp", "192.0.2.22"), ("udp", "2001:db8::21")):
        result = run_dracadd(dracadd, "127.0.0.1", netid, address)
        assert (result.returncode, result.stdout) == (EXIT_OK, "ADD_SUCCESS\n"), result.stderr
    assert postmap_q(tmp_path, server.config.map.path, "192.0.2.22") is not None
    server.stop()
    assert not [m for m in rpcb.dump() if m.prog == DRACPROG]
