"""Smaller mismatches between dracd, its docs and legacy (issue 16, fault 8),
each against a real server: a disk-full outage logs one line, not one per
ADD; version 3 does not exist on UDP, its NULL procedure included; bytes
after an ADD's arguments are ignored, as libtirpc servers ignore them; and
ADD_SYSERR means "not on disk yet", as docs/security.md says.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from dracclient.adminproto import DRACVERS_ADMIN
from dracclient.drac import DRACPROC_ADD, DRACPROC_NULL, AddStat, decode_addstat, encode_add_args, version_for
from dracclient.errors import RpcRefused
from dracclient.rpc import AcceptStat
from dracclient.rpccall import call
from tests.fixtures.mounts import set_readonly, tmpfs
from tests.fixtures.server import ServerThread, add_status, map_keys, wait_for

pytestmark = pytest.mark.timeout(60)

Make = Callable[..., ServerThread]
REPO = Path(__file__).resolve().parent.parent


def raw_add(server: ServerThread, address: str, extra: bytes, transport: str = "udp") -> AddStat:
    addr = ipaddress.ip_address(address)
    results = call(("127.0.0.1", server.port), server.config.program, version_for(addr), DRACPROC_ADD,
                   encode_add_args(addr) + extra, transport=transport, timeout=5.0)  # type: ignore[arg-type]
    return decode_addstat(results)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("address", ["192.0.2.8", "2001:db8::8"])
def test_bytes_after_add_arguments_are_ignored_like_libtirpc(server: ServerThread, transport: str,
                                                             address: str) -> None:
    assert raw_add(server, address, b"\0\0\0\0junk", transport) == AddStat.ADD_SUCCESS
    keys = map_keys(server.config.map.path)
    assert address.encode() in keys


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_version_3_null_over_udp_is_prog_mismatch(make_server: Make, host: str) -> None:
    server = make_server(admin_allow=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")))
    with pytest.raises(RpcRefused) as info:
        call((host, server.port), server.config.program, DRACVERS_ADMIN, DRACPROC_NULL, b"", transport="udp",
             timeout=3.0)
    assert info.value.reply.accept_stat == AcceptStat.PROG_MISMATCH and info.value.reply.mismatch == (1, 2)
    # Over TCP, version 3 is there.
    assert call((host, server.port), server.config.program, DRACVERS_ADMIN, DRACPROC_NULL, b"",
                transport="tcp", timeout=3.0) == b""


def test_a_map_outage_logs_one_line_and_syserr_means_not_yet(
    make_server: Make, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The map's file system stops taking writes (read-only here; a full disk fails the same
    way once the journal's preallocated room is used up) while 40 ADDs arrive."""
    with tmpfs(tmp_path / "maps") as directory:
        server = make_server(map_path=directory / "dracd.db")
        try:
            assert add_status(server, "192.0.2.1") == AddStat.ADD_SUCCESS
            set_readonly(directory, True)
            try:
                with caplog.at_level(logging.INFO):
                    statuses = [add_status(server, f"198.51.100.{n}") for n in range(1, 41)]
                assert set(statuses) == {AddStat.ADD_SYSERR}, statuses
                failed = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "dracd.programs.drac"]
                assert len(failed) == 1, [r.getMessage() for r in failed]
            finally:
                set_readonly(directory, False)
            # ADD_SYSERR meant "not on disk yet": once writable, the entries reach the map by themselves.
            wanted = {f"198.51.100.{n}".encode() for n in range(1, 41)}
            assert wait_for(lambda: wanted <= set(map_keys(directory / "dracd.db")), 40)
        finally:
            server.stop()
    security = (REPO / "docs" / "security.md").read_text()
    assert "ADD_SYSERR" in security and "not on disk yet" in security
