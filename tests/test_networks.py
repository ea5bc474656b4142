"""Network entries: an authorized /24 or /64 (what pop-before-smtp's prefix option
gives), through the admin procedures and dracctl, into the map as the keys the
MTAs' partial lookups produce, and through socketmap; a real Postfix relays for
hosts inside the network and for no host outside it."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

import pytest

from dracclient.admin import AdminClient
from dracclient.cli import main as dracctl
from dracclient.errors import InvalidRequest
from dracd.relay.table import RelayTable
from tests.fixtures.postfix import PostfixInstance
from tests.fixtures.server import ServerThread, map_keys, wait_for
from tests.test_socketmap import Client, inet_port

net = ipaddress.ip_network
ip = ipaddress.ip_address


def admin(server: ServerThread) -> AdminClient:
    return AdminClient(socket_path=str(server.config.admin_socket), prog=server.config.program, timeout=5)


def test_table_lookup_goes_through_network_entries() -> None:
    now = [1000.0]
    table = RelayTable(clock=lambda: now[0])
    table.add(net("192.0.2.0/24"), 10)
    table.add(net("2001:db8:1:2::/64"), 20)
    table.add(ip("192.0.2.7"), 30)
    assert table.lookup(ip("192.0.2.7")) == 1030  # the later of host and network
    assert table.lookup(ip("192.0.2.8")) == 1010
    assert table.lookup(ip("192.0.3.8")) is None
    assert table.lookup(ip("2001:db8:1:2::99")) == 1020
    assert table.lookup(ip("2001:db8:1:3::99")) is None
    table.remove(net("192.0.2.0/24"))
    assert table.lookup(ip("192.0.2.8")) is None
    now[0] = 1025.0
    assert table.expire() == [net("2001:db8:1:2::/64")]
    assert table.lookup(ip("2001:db8:1:2::99")) is None
    table.add(net("198.51.100.0/24"), 5)
    table.clear()
    assert table.lookup(ip("198.51.100.1")) is None and not table._prefixes


def test_admin_network_entries_and_their_map_keys(make_server: Callable[..., ServerThread]) -> None:
    server = make_server()
    client = admin(server)
    client.add("192.0.2.0/24", 600)
    client.add("2001:db8:1:2::/64")
    client.add(net("2001:db8::/64"))
    keys = map_keys(server.config.map.path)
    assert {b"192.0.2", b"2001:db8:1:2", b"2001:db8:0:0", b"2001:db8:"} <= set(keys)
    assert not any(key.startswith(b"192.0.2.") for key in keys)
    expiry = client.get("192.0.2.0/24")
    assert expiry is not None and abs(expiry - (time.time() + 600)) < 3
    assert client.get("192.0.2.5") is None  # GET names an entry, not a covered host
    listed = {str(entry.address) for entry in client.entries()}
    assert listed == {"192.0.2.0/24", "2001:db8:1:2::/64", "2001:db8::/64"}
    client.delete("2001:db8::/64")
    keys = map_keys(server.config.map.path)
    assert b"2001:db8:" not in keys and b"2001:db8:0:0" not in keys and b"2001:db8:1:2" in keys


@pytest.mark.parametrize(("target", "why"), [
    ("192.0.2.0/23", "not a network the MTAs' partial lookups can match"),
    ("192.0.2.0/25", "not a network the MTAs' partial lookups can match"),
    ("2001:db8::/63", "not a network the MTAs' partial lookups can match"),
    ("2001:db8::/32", "not a network the MTAs' partial lookups can match"),
    ("224.0.0.0/8", "not a network the MTAs' partial lookups can match"),
    ("2001:db8::/48", "would share a map key with the entry 2001:db8::/64"),
])
def test_networks_the_map_cannot_express_are_refused(
    make_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture, target: str, why: str,
) -> None:
    server = make_server()
    admin(server).add("2001:db8::/64")
    with pytest.raises(InvalidRequest):
        admin(server).add(target)
    assert why in caplog.text
    assert {str(entry.address) for entry in admin(server).entries()} == {"2001:db8::/64"}


def test_dracctl_adds_lists_and_deletes_networks(
    make_server: Callable[..., ServerThread], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = make_server()
    base = ["-S", str(server.config.admin_socket), "--program", str(server.config.program)]
    # A network goes to the admin socket even without -S or --lifetime (the DRAC ADD has no prefix).
    monkeypatch.setenv("DRACD_SOCKET", str(server.config.admin_socket))
    assert dracctl(["--program", str(server.config.program), "add", "198.51.100.0/24"]) == 0
    assert dracctl([*base, "add", "198.51.100.0/24", "2001:db8:5:6::/64"]) == 0
    assert dracctl([*base, "list"]) == 0
    out = capsys.readouterr().out
    assert "198.51.100.0/24" in out and "2001:db8:5:6::/64" in out
    assert dracctl([*base, "del", "198.51.100.0/24"]) == 0
    assert dracctl([*base, "del", "198.51.100.0/24"]) == 1  # not found
    assert b"198.51.100" not in map_keys(server.config.map.path)


def test_socketmap_answers_hosts_inside_a_network(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(socketmap=("inet:127.0.0.1:0",))
    admin(server).add("192.0.2.0/24")
    admin(server).add("2001:db8:0:0::/64")
    client = Client(("127.0.0.1", inet_port(server)))
    try:
        for inside in ("192.0.2.1", "192.0.2.254", "2001:db8::5", "2001:db8::1:0:0:5", "ipv6:2001:db8:0:0:1:2:3:4",
                       "192.0.2", "2001:db8:0:0"):
            assert client.lookup(inside).startswith(b"OK "), inside
        for outside in ("192.0.3.1", "2001:db8:0:1::5", "2001:db8:", "192.0", "2001:db8::/48"):
            assert client.lookup(outside) == b"NOTFOUND ", outside
        admin(server).delete("192.0.2.0/24")
        assert client.lookup("192.0.2.1") == b"NOTFOUND "
    finally:
        client.close()


# Hosts inside and outside each network, chosen so that the "::" of their compressed
# text falls before, inside and after the prefix: Postfix cuts that text, not the address.
POSTFIX_CASES = [
    ("192.0.2.0/24", ["192.0.2.1", "192.0.2.200"], ["192.0.3.1", "192.0.20.1"]),
    ("2001:db8:1:2::/64", ["2001:db8:1:2::5", "2001:db8:1:2:a:b:c:d"], ["2001:db8:1:3::5", "2001:db8:1:20::5"]),
    ("2001:db8::/64", ["2001:db8::5", "2001:db8::1:0:0:5", "2001:db8:0:0:1::"], ["2001:db8:0:1::5", "2001:db8:1::5"]),
    ("2001:db8:5::/64", ["2001:db8:5::1:2:3", "2001:db8:5:0:1:2:3:4"], ["2001:db8:5:1::5", "2001:db8::5"]),
]


@pytest.mark.parametrize("lookup", ["btree", "socketmap"])
def test_postfix_relays_for_hosts_inside_a_network_entry_only(
    make_server: Callable[..., ServerThread],
    postfix_factory: Callable[..., PostfixInstance],
    lookup: str,
) -> None:
    server = make_server(socketmap=("inet:127.0.0.1:0",))
    table = (f"socketmap:inet:127.0.0.1:{inet_port(server)}:drac" if lookup == "socketmap"
             else f"btree:{str(server.config.map.path).removesuffix('.db')}")
    postfix = postfix_factory(server.config.map.path, extra_main_cf={
        "smtpd_authorized_xclient_hosts": "127.0.0.1",
        "smtpd_relay_restrictions": f"permit_mynetworks, check_client_access {table}, reject_unauth_destination",
    })
    client = admin(server)
    for network, inside, outside in POSTFIX_CASES:
        assert all(postfix.probe_relay_as(host)[0] == 554 for host in inside), network
        client.add(network)
        for host in inside:
            assert postfix.probe_relay_as(host)[0] == 250, (network, host)
        for host in outside:
            assert postfix.probe_relay_as(host)[0] == 554, (network, host)
        client.delete(network)
        assert wait_for(lambda host=inside[0]: postfix.probe_relay_as(host)[0] == 554, 5), network
