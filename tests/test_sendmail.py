"""End to end with the real Sendmail 8.17: the map dracd writes is honoured.

One private Sendmail (tests/fixtures/sendmail.py: own network, mount, UTS and
PID namespaces; only ``lo``) serves the whole module and reads
``<module dir>/dracd``; every test starts its own dracd (in this process, on
the machine's loopback) on that same map with ``initialize`` so it starts
empty. dracd holds ``<map>.lock``, so only one dracd per map at a time:
make_server's teardown stops each test's server before the next one starts.

Clients: 127.0.0.5 for IPv4 and 2001:db8::5 (an address on the namespace's
``lo`` only) for IPv6. Sendmail's own Relay_ok ruleset always relays for
127.0.0.1 and ::1 ("originated locally"), whatever the map says, so neither
can show the map's effect; ``test_ipv6_client`` asserts that for ::1.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dracclient import add
from dracclient.cli import main as dracctl
from dracd.keys import Ipv6Keys
from tests.fixtures.sendmail import SendmailError, SendmailInstance, ensure_sendmail
from tests.fixtures.server import ServerThread, map_keys, wait_for

pytestmark = pytest.mark.timeout(60)

LIFETIME = 3
CLIENT = "127.0.0.5"
CLIENT6 = "2001:db8::5"
CLIENT6_KEY = "ipv6:2001:db8:0:0:0:0:0:5"  # what Sendmail looks up for CLIENT6
LOOPBACK6_KEY = "ipv6:0:0:0:0:0:0:0:1"
DENIED = "Relaying denied"


@pytest.fixture(scope="module")
def map_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sendmail-map") / "dracd.db"


@pytest.fixture(scope="module")
def sendmail(tmp_path_factory: pytest.TempPathFactory, map_path: Path) -> Iterator[SendmailInstance]:
    try:
        instance = SendmailInstance(tmp_path_factory.mktemp("sendmail"), map_path, dist=ensure_sendmail(),
                                    client_addresses=(CLIENT6,))
        instance.start()
    except SendmailError as e:
        pytest.fail(f"cannot run the private Sendmail: {e}", pytrace=False)
    yield instance
    instance.stop()  # raises if anything of the namespace is left


@pytest.fixture
def drac(make_server: Callable[..., ServerThread], map_path: Path) -> Callable[..., ServerThread]:
    """``drac(**config)``: a dracd writing the module's map, starting from an empty one."""
    def make(**changes: object) -> ServerThread:
        return make_server(map_path=map_path, initialize=True, **changes)
    return make


def add_v4(server: ServerThread, address: str) -> None:
    add(address, servers="127.0.0.1", port=server.port, prog=server.config.program)


def assert_denied(reply: tuple[int, str], sendmail: SendmailInstance) -> None:
    code, text = reply
    assert code == 550 and text.startswith("5.7.1") and DENIED in text, \
        f"expected 550 5.7.1 ... {DENIED}, got {reply}\n{sendmail.diagnostics()}"


def assert_relays(reply: tuple[int, str], sendmail: SendmailInstance) -> None:
    assert reply[0] == 250, f"expected 250, got {reply}\n{sendmail.diagnostics()}"


def test_relay_follows_add_expiry_and_delete(
    sendmail: SendmailInstance, drac: Callable[..., ServerThread], map_path: Path
) -> None:
    server = drac(lifetime=LIFETIME)
    assert_denied(sendmail.probe_relay(CLIENT), sendmail)

    add_v4(server, CLIENT)
    added = time.monotonic()
    assert_relays(sendmail.probe_relay(CLIENT), sendmail)
    assert sendmail.map_lookup(CLIENT) == map_keys(map_path)[CLIENT.encode()].decode()
    assert_denied(sendmail.probe_relay("127.0.0.6"), sendmail)

    # dracd deletes the key on time; Sendmail (which never looks at the value) then refuses.
    assert wait_for(lambda: CLIENT.encode() not in map_keys(map_path), timeout=LIFETIME + 3)
    assert time.monotonic() - added < LIFETIME + 2
    assert_denied(sendmail.probe_relay(CLIENT), sendmail)
    assert sendmail.map_lookup(CLIENT) is None

    add_v4(server, CLIENT)
    assert_relays(sendmail.probe_relay(CLIENT), sendmail)
    assert dracctl(["-S", str(server.config.admin_socket), "--program", str(server.config.program),
                    "del", CLIENT]) == 0
    assert_denied(sendmail.probe_relay(CLIENT), sendmail)
    assert sendmail.map_lookup(CLIENT) is None


def test_ipv6_client(sendmail: SendmailInstance, drac: Callable[..., ServerThread], map_path: Path) -> None:
    # What the DRAC ruleset gets from ${client_addr}: "IPv6:" + all eight groups, no "::".
    assert sendmail.client_addr(CLIENT6) == "IPv6:2001:db8:0:0:0:0:0:5"
    assert sendmail.client_addr("::1") == "IPv6:0:0:0:0:0:0:0:1"
    assert sendmail.client_addr(CLIENT) == CLIENT

    # Postfix-style keys (compressed form) do not match what Sendmail asks for.
    server = drac(map_ipv6_keys=Ipv6Keys.POSTFIX)
    add(CLIENT6, servers="::1", port=server.port, prog=server.config.program, transport="tcp")
    assert set(map_keys(map_path)) == {CLIENT6.encode()}
    assert_denied(sendmail.probe_relay(CLIENT6), sendmail)
    server.stop()  # one dracd per map: release it for the next one

    server = drac(map_ipv6_keys=Ipv6Keys.SENDMAIL)
    assert_denied(sendmail.probe_relay(CLIENT6), sendmail)
    # ::1 relays with an empty map: Sendmail's Relay_ok treats it as "originated locally".
    assert_relays(sendmail.probe_relay("::1"), sendmail)

    add(CLIENT6, servers="::1", port=server.port, prog=server.config.program, transport="tcp")
    assert set(map_keys(map_path)) == {CLIENT6_KEY.encode()}
    assert_relays(sendmail.probe_relay(CLIENT6), sendmail)
    assert sendmail.map_lookup(CLIENT6_KEY) == map_keys(map_path)[CLIENT6_KEY.encode()].decode()
    assert sendmail.map_lookup(CLIENT6_KEY.replace("ipv6", "IPv6")) is not None, "Sendmail lower-cases keys"
    assert sendmail.map_lookup("2001:db8::5") is None

    add("::1", servers="::1", port=server.port, prog=server.config.program, transport="tcp")
    assert sendmail.map_lookup(LOOPBACK6_KEY) is not None
    assert_relays(sendmail.probe_relay("::1"), sendmail)
    assert_denied(sendmail.probe_relay("127.0.0.6"), sendmail)


def test_map_rewrite_during_open_session(
    sendmail: SendmailInstance, drac: Callable[..., ServerThread], map_path: Path
) -> None:
    server = drac()
    with sendmail.session(CLIENT) as smtp:
        assert smtp.mail("a@example.com")[0] == 250
        # The first RCPT makes this session's Sendmail open the map (an empty one).
        assert_denied(smtp.reply(*smtp.rcpt("x@example.org")), sendmail)
        before = os.stat(map_path)

        # Many rewrites (each add replaces the file), growing it by several pages: growth under an
        # open reader is what breaks Sendmail (451) when a map is updated in place (DESIGN.md section 3).
        add_v4(server, CLIENT)
        for i in range(1, 251):
            add_v4(server, f"192.0.2.{i}")
        after = os.stat(map_path)
        assert after.st_ino != before.st_ino and after.st_size > before.st_size, (before, after)
        assert len(map_keys(map_path)) == 251

        # Sendmail 8.17 answers 550 here: the session keeps reading the file it opened (the old
        # inode, consistent but stale). Either answer is fine; a 4xx or a dropped session is not.
        code, text = smtp.reply(*smtp.rcpt("y@example.org"))
        assert code in (250, 550), f"the open session broke: {code} {text}\n{sendmail.diagnostics()}"
        assert smtp.noop()[0] == 250, "the session must still be usable"

    # The next session reads the new file.
    assert_relays(sendmail.probe_relay(CLIENT), sendmail)
    assert sendmail.map_lookup("192.0.2.250") is not None
    assert sendmail.dump_map() == {k.decode(): v.decode() for k, v in map_keys(map_path).items()}
    assert_denied(sendmail.probe_relay("127.0.0.6"), sendmail)
