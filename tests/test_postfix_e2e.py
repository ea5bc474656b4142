"""End to end with a real Postfix on loopback: relay refused, allowed after a
DRAC ADD, refused again after `dracctl del` and once an entry's lifetime
has passed; for btree and hash maps, keys with and without NUL, IPv4 and
IPv6 clients, in smtpd_relay_restrictions and smtpd_recipient_restrictions."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from dracclient import add
from dracclient.cli import main as dracctl
from tests.fixtures.postfix import PostfixInstance
from tests.fixtures.server import ServerThread, map_keys, wait_for

LIFETIME = 3

# Every map type, key style and restriction appears twice across the cases.
CASES = [
    ("btree", False, "relay"),
    ("hash", False, "recipient"),
    ("btree", True, "recipient"),
    ("hash", True, "relay"),
]


def refused(postfix: PostfixInstance, client: str) -> bool:
    code, text = postfix.probe_relay(client)
    assert code in (250, 554), f"{client}: unexpected {code} {text}"
    return code == 554 and "Relay access denied" in text


@pytest.mark.parametrize(("map_type", "nul", "restriction"), CASES)
def test_relay_follows_the_drac_table(
    make_server: Callable[..., ServerThread],
    postfix_factory: Callable[..., PostfixInstance],
    map_type: str,
    nul: bool,
    restriction: str,
) -> None:
    server = make_server(lifetime=LIFETIME, map_type=map_type, map_nul_terminated=nul)
    postfix = postfix_factory(server.config.map.path, map_type, restriction)
    prog = server.config.program

    assert refused(postfix, "127.0.0.5") and refused(postfix, "::1")

    add("127.0.0.5", servers="127.0.0.1", port=server.port, prog=prog)
    add("::1", servers="::1", port=server.port, prog=prog, transport="tcp")
    added = time.time()
    assert not refused(postfix, "127.0.0.5") and not refused(postfix, "::1")
    assert refused(postfix, "127.0.0.6")
    assert (postfix.postmap_query("127.0.0.5") or "").isdigit()

    assert dracctl(["-S", str(server.config.admin_socket), "--program", str(prog), "del", "127.0.0.5"]) == 0
    assert refused(postfix, "127.0.0.5") and not refused(postfix, "::1")

    assert wait_for(lambda: b"::1" not in {k.rstrip(b"\0") for k in map_keys(server.config.map.path)},
                    timeout=LIFETIME + 3)
    assert time.time() - added < LIFETIME + 2
    assert refused(postfix, "::1")


def test_map_rewrites_during_an_open_session_never_break_it(
    make_server: Callable[..., ServerThread], postfix_factory: Callable[..., PostfixInstance]
) -> None:
    """Legacy DRAC updated the map in place and crashed smtpd (DB_PAGE_NOTFOUND)
    when the file grew under an open session; a renamed new file cannot."""
    import ipaddress
    import smtplib

    server = make_server()
    postfix = postfix_factory(server.config.map.path)
    prog = server.config.program
    smtp = smtplib.SMTP(timeout=10, local_hostname="client.test.invalid", source_address=("127.0.0.5", 0))
    try:
        assert smtp.connect("127.0.0.1", postfix.port)[0] == 220
        assert smtp.ehlo()[0] == 250 and smtp.mail("a@example.com")[0] == 250
        # The map grows from one page to hundreds while the session has it open.
        add("127.0.0.5", servers="127.0.0.1", port=server.port, prog=prog)
        for n in range(0, 3000, 100):
            addresses = [ipaddress.IPv4Address(0x0A000000 + n + i) for i in range(100)]
            server.call(lambda addresses=addresses: [server.daemon.table.add(a, 600)  # type: ignore[union-attr]
                                                     for a in addresses])
            add(f"10.1.0.{n // 100 + 1}", servers="127.0.0.1", port=server.port, prog=prog)
        code, text = smtp.rcpt("x@example.org")
        assert code in (250, 554), f"open session broken by map rewrites: {code} {text!r}"
        assert smtp.noop()[0] == 250
    finally:
        smtp.close()
    assert len(map_keys(server.config.map.path)) > 3000
    assert not refused(postfix, "127.0.0.5"), "the next session must see the new map"
    log = postfix.log_text()
    assert "fatal" not in log and "-30986" not in log and "panic" not in log, log
