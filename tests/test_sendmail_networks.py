"""End to end with the real Sendmail 8.17: network entries (an authorized /24 or /64).

dracd writes a network as the key a partial lookup produces ("127.0.5" for
127.0.5.0/24, "ipv6:2001:db8:1:2" for 2001:db8:1:2::/64 with ``ipv6_keys:
sendmail``). Sendmail does no partial lookups of its own in a custom ruleset:
the DRAC ruleset of docs/mta.md (the one tests/fixtures/sendmail_files/
dracd-test.mc.in builds into every test instance) calls ``DracLookup``, which
retries with the last ``.octet`` or ``:group`` cut off, like proto.m4's
LookUpAddress does for the access map.

The private Sendmail (tests/fixtures/sendmail.py: own network, mount, UTS and
PID namespaces, only ``lo``) reads ``<module dir>/dracd``; each test starts its
own dracd on that map with ``initialize`` (one dracd per map at a time).
Clients: any 127.x.y.z is on the namespace's ``lo`` already (but 127.0.0.1 and
127.0.1.1 relay whatever the map says); the IPv6 ones are put there by
``client_addresses``. ``test_socketmap_ruleset_with_networks`` runs a second
instance over socketmap with the same ruleset.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dracclient import add
from dracclient.admin import AdminClient
from dracd.keys import Ipv6Keys
from tests.fixtures.sendmail import MC_TEMPLATE, SendmailError, SendmailInstance, ensure_sendmail
from tests.fixtures.server import ServerThread, map_keys

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[1]
DENIED = "Relaying denied"

# IPv4: /24 and /16 networks of 127/8, away from 127.0.0.1 and 127.0.1.1 (which Sendmail
# relays anyway). 127.0.55.7 starts with the text "127.0.5" but not with its octets.
NET24, IN24, OUT24 = "127.0.5.0/24", ("127.0.5.7", "127.0.5.200"), ("127.0.6.7", "127.0.55.7", "127.1.5.7")
NET16, IN16, OUT16 = "127.5.0.0/16", ("127.5.9.7",), ("127.6.9.7", "127.55.9.7")
# IPv6: a /64 with non-zero groups, one ending in zero groups, and hosts in and out of them.
NET64 = "2001:db8:1:2::/64"
IN64 = ("2001:db8:1:2::5", "2001:db8:1:2:ab:cd:ef:7")
OUT64 = ("2001:db8:1:3::5", "2001:db8:1:20::5", "2001:db8:1::5")
NET64Z = "2001:db8::/64"
IN64Z = ("2001:db8::5",)
OUT64Z = ("2001:db8:0:1::5",)
CLIENTS6 = IN64 + OUT64 + IN64Z + OUT64Z
FAIL_CLOSED = 'R$* <TMPF>\t$#error $@ 4.3.0 $: "451 Temporary DRAC lookup failure"'


@pytest.fixture(scope="module")
def map_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sendmail-net-map") / "dracd.db"


def start_sendmail(base_dir: Path, map_path: Path, drac_map: str | None = None,
                   tmpf_rule: str | None = None) -> SendmailInstance:
    try:
        instance = SendmailInstance(base_dir, map_path, dist=ensure_sendmail(), client_addresses=CLIENTS6,
                                    drac_map=drac_map, tmpf_rule=tmpf_rule)
        instance.start()
    except SendmailError as e:
        pytest.fail(f"cannot run the private Sendmail: {e}", pytrace=False)
    return instance


@pytest.fixture(scope="module")
def sendmail(tmp_path_factory: pytest.TempPathFactory, map_path: Path) -> Iterator[SendmailInstance]:
    instance = start_sendmail(tmp_path_factory.mktemp("sendmail-net"), map_path)
    yield instance
    instance.stop()  # raises if anything of the namespace is left


@pytest.fixture
def drac(make_server: Callable[..., ServerThread], map_path: Path) -> Callable[..., ServerThread]:
    """``drac(**config)``: a dracd writing the module's map (btree, Sendmail's IPv6 keys), empty."""
    def make(**changes: object) -> ServerThread:
        return make_server(map_path=map_path, map_type="btree", map_ipv6_keys=Ipv6Keys.SENDMAIL,
                           initialize=True, **changes)
    return make


def admin(server: ServerThread) -> AdminClient:
    return AdminClient(socket_path=str(server.config.admin_socket), prog=server.config.program, timeout=5)


def assert_denied(sendmail: SendmailInstance, *clients: str) -> None:
    for client in clients:
        code, text = reply = sendmail.probe_relay(client)
        assert code == 550 and text.startswith("5.7.1") and DENIED in text, \
            f"{client}: expected 550 5.7.1 ... {DENIED}, got {reply}\n{sendmail.diagnostics()}"


def assert_relays(sendmail: SendmailInstance, *clients: str) -> None:
    for client in clients:
        reply = sendmail.probe_relay(client)
        assert reply[0] == 250, f"{client}: expected 250, got {reply}\n{sendmail.diagnostics()}"


def drac_lookup(sendmail: SendmailInstance, client_addr: str) -> str:
    """What the ruleset's ``DracLookup`` returns for ``client_addr`` (``sendmail -bt``)."""
    out = sendmail.bt(f"DracLookup {client_addr}")
    returns = re.findall(r"^(?:> )?DracLookup\s+returns: (.*)$", out, re.MULTILINE)
    assert returns, out
    return str(returns[-1]).replace(" ", "")


def test_the_cf_has_the_truncating_ruleset(sendmail: SendmailInstance) -> None:
    cf = sendmail.cf_path.read_text()
    assert "R$+\t\t$: $>DracLookup $1\n" in cf
    assert "\nSDracLookup\n" in cf and "R$+ . $- $| ?\t$@ $>DracLookup $1\n" in cf


def test_docs_show_the_tested_ruleset() -> None:
    """docs/mta.md's Sendmail ruleset is the fixture's, rule for rule (TABs included)."""
    template = MC_TEMPLATE.read_text()
    rules = template[template.index("LOCAL_RULESETS\n"):].replace("@DRACTMPF@\n", "").strip()
    block = "\n".join("    " + line if line else "" for line in rules.splitlines())
    section = (REPO / "docs/mta.md").read_text().split("\n## Sendmail\n", 1)[1].split("\n## ", 1)[0]
    assert block in section, f"docs/mta.md's Sendmail section lacks the ruleset:\n{block}"
    readme = (REPO / "README.md").read_text()
    assert block[block.index("    SLocal_check_rcpt"):] in readme, "README's Sendmail ruleset is not the tested one"


@pytest.mark.parametrize(("network", "key", "inside", "outside"), [
    (NET24, "127.0.5", IN24, OUT24),
    (NET16, "127.5", IN16, OUT16),
])
def test_ipv4_network_relays_hosts_inside_it(
    sendmail: SendmailInstance, drac: Callable[..., ServerThread], map_path: Path,
    network: str, key: str, inside: tuple[str, ...], outside: tuple[str, ...],
) -> None:
    client = admin(drac())
    assert_denied(sendmail, *inside, *outside)

    client.add(network)
    assert set(map_keys(map_path)) == {key.encode()}
    assert sendmail.map_lookup(key) is not None
    assert sendmail.map_lookup(inside[0]) is None  # no host key: only the truncated lookup finds it
    assert drac_lookup(sendmail, inside[0]) == map_keys(map_path)[key.encode()].decode()
    assert drac_lookup(sendmail, outside[0]) == "?"
    assert_relays(sendmail, *inside)
    assert_denied(sendmail, *outside)

    client.delete(network)
    assert map_keys(map_path) == {}
    assert_denied(sendmail, *inside, *outside)


def test_ipv6_network_relays_hosts_inside_it(
    sendmail: SendmailInstance, drac: Callable[..., ServerThread], map_path: Path,
) -> None:
    assert sendmail.client_addr(IN64[0]) == "IPv6:2001:db8:1:2:0:0:0:5"
    client = admin(drac())
    assert_denied(sendmail, *IN64, *OUT64, *IN64Z, *OUT64Z)

    client.add(NET64)
    assert set(map_keys(map_path)) == {b"ipv6:2001:db8:1:2"}
    assert drac_lookup(sendmail, "IPv6:2001:db8:1:2:ab:cd:ef:7") != "?"
    assert drac_lookup(sendmail, "IPv6:2001:db8:1:3:0:0:0:5") == "?"
    assert_relays(sendmail, *IN64)
    assert_denied(sendmail, *OUT64, *IN64Z, *OUT64Z)

    # A /64 ending in zero groups: Sendmail's uncompressed form has no "::" to get in the way.
    client.add(NET64Z)
    assert set(map_keys(map_path)) == {b"ipv6:2001:db8:1:2", b"ipv6:2001:db8:0:0"}
    assert_relays(sendmail, *IN64, *IN64Z)
    assert_denied(sendmail, *OUT64, *OUT64Z)

    client.delete(NET64)
    assert_denied(sendmail, *IN64, *OUT64, *OUT64Z)
    assert_relays(sendmail, *IN64Z)
    client.delete(NET64Z)
    assert map_keys(map_path) == {}
    assert_denied(sendmail, *IN64, *OUT64, *IN64Z, *OUT64Z)


def test_host_entries_still_relay(
    sendmail: SendmailInstance, drac: Callable[..., ServerThread], map_path: Path,
) -> None:
    server = drac()
    client = admin(server)
    host4, host6 = IN24[0], IN64[0]
    assert_denied(sendmail, host4, host6)

    # Exact keys, as before networks existed (the first lookup hits, no truncation).
    add(host4, servers="127.0.0.1", port=server.port, prog=server.config.program)
    client.add(host6)
    assert set(map_keys(map_path)) == {host4.encode(), b"ipv6:2001:db8:1:2:0:0:0:5"}
    assert_relays(sendmail, host4, host6)
    assert_denied(sendmail, IN24[1], IN64[1], *OUT24, *OUT64)

    # Host and network side by side: each entry keeps relaying when the other goes.
    client.add(NET24)
    client.add(NET64)
    assert_relays(sendmail, *IN24, *IN64)
    client.delete(NET24)
    client.delete(NET64)
    assert_relays(sendmail, host4, host6)
    assert_denied(sendmail, IN24[1], IN64[1])
    client.delete(host4)
    client.delete(host6)
    assert map_keys(map_path) == {}
    assert_denied(sendmail, host4, host6)


@pytest.fixture(scope="module")
def sock_path() -> Iterator[Path]:
    # As in test_sendmail_socketmap.py: short, world-searchable, not below world-writable /tmp.
    directory = Path(tempfile.mkdtemp(prefix="dracd-smnet-", dir="/run"))
    directory.chmod(0o755)
    yield directory / "socketmap.sock"
    shutil.rmtree(directory, ignore_errors=True)


def test_socketmap_ruleset_with_networks(
    tmp_path: Path, sock_path: Path, make_server: Callable[..., ServerThread],
) -> None:
    """The same ruleset over socketmap: dracd answers a host inside a network entry on the
    first (exact) lookup; misses walk the truncated keys; dracd down still gives 451."""
    sm = start_sendmail(tmp_path / "sm-socket", tmp_path / "unused.db",
                        drac_map=f"socket -T<TMPF> local:{sock_path}", tmpf_rule=FAIL_CLOSED)
    try:
        server = make_server(socketmap=(f"unix:{sock_path}",))
        client = admin(server)
        assert_denied(sm, IN24[0], IN64[0])
        client.add(NET24)
        client.add(NET64)
        assert sm.map_lookup(IN24[0]) is not None  # the exact key already finds the network
        assert_relays(sm, *IN24, *IN64)
        assert_denied(sm, *OUT24, *OUT64)
        client.delete(NET24)
        client.delete(NET64)
        assert_denied(sm, *IN24, *IN64)

        client.add(NET24)
        server.stop()
        for host in (IN24[0], OUT24[0], IN64[0]):
            code, text = sm.probe_relay(host)
            assert code == 451 and "Temporary DRAC lookup failure" in text, \
                f"{host}: expected 451, got {(code, text)}\n{sm.diagnostics()}"
    finally:
        sm.stop()
