"""Map keys: the formats the MTAs look up, and nothing else."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dracd.keys import (
    Ipv6Keys,
    KeyStyle,
    canonical,
    code_entry,
    code_network,
    covering_code,
    entry_code,
    entry_network,
    key_siblings,
    parse_key,
    parse_key_code,
    parse_value,
    postfix_network_keys,
    relayable,
    sendmail_form,
    valid_code,
)

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

V4 = ipaddress.ip_address("192.0.2.7")
V6 = ipaddress.ip_address("2001:db8::b8:10")


def test_legacy_default_keys_and_values() -> None:
    style = KeyStyle()
    assert style.keys(V4) == [b"192.0.2.7"]
    assert style.keys(V6) == [b"2001:db8::b8:10"]
    assert style.value(1795892048) == b"1795892048"


def test_nul_terminated_style() -> None:
    style = KeyStyle(nul=True)
    assert style.keys(V4) == [b"192.0.2.7\0"]
    assert style.value(5) == b"5\0"


def test_cidr_suffix() -> None:
    style = KeyStyle(cidr=True)
    assert style.keys(V4) == [b"192.0.2.7/32"]
    assert style.keys(V6) == [b"2001:db8::b8:10/128"]


def test_ipv6_key_forms() -> None:
    assert sendmail_form(ipaddress.IPv6Address("2001:db8::7")) == "ipv6:2001:db8:0:0:0:0:0:7"
    assert KeyStyle(ipv6=Ipv6Keys.SENDMAIL).keys(V6) == [b"ipv6:2001:db8:0:0:0:0:b8:10"]
    assert KeyStyle(ipv6=Ipv6Keys.BOTH).keys(V6) == [b"2001:db8::b8:10", b"ipv6:2001:db8:0:0:0:0:b8:10"]
    assert KeyStyle(ipv6=Ipv6Keys.BOTH).keys(V4) == [b"192.0.2.7"]


def test_keys_are_lower_case() -> None:
    address = ipaddress.ip_address("2001:DB8::ABCD")
    for style in (KeyStyle(), KeyStyle(ipv6=Ipv6Keys.SENDMAIL)):
        assert all(key == key.lower() for key in style.keys(address))


@pytest.mark.parametrize(
    "key",
    [b"192.0.2.7", b"192.0.2.7\0", b"192.0.2.7/32", b"192.0.2.7/32\0", b"::ffff:192.0.2.7"],
)
def test_parse_key_reads_every_ipv4_style(key: bytes) -> None:
    assert parse_key(key) == V4


@pytest.mark.parametrize(
    "key", [b"2001:db8::b8:10", b"ipv6:2001:db8:0:0:0:0:b8:10", b"2001:db8::b8:10/128\0"]
)
def test_parse_key_reads_every_ipv6_style(key: bytes) -> None:
    assert parse_key(key) == V6


@pytest.mark.parametrize(
    "key",
    [b"unknown", b"", b"0.0.0.0", b"::", b"224.0.0.1", b"255.255.255.255", b"\xff\xfe", b"192.0.2.7 ",
     b"example.org", b"192.0.2.0/23", b"0.0", b"224.0.0", b"192.0.02", b"192.0.256", b"2001:db8", b"2001:db8:",
     b"2001:db8:1:2:", b"2001:db8::/63", b"::ffff:0:0/96", b"1.2.3.4.5", b"2001:db8:1:2:3:4:5:6:7"],
)
def test_parse_key_rejects_anything_that_is_not_a_host_or_network_entry(key: bytes) -> None:
    assert parse_key(key) is None


def test_parse_value() -> None:
    assert parse_value(b"1795892048") == 1795892048
    assert parse_value(b"1795892048\0") == 1795892048
    assert parse_value(b"999999999999") == 999_999_999_999  # 12 digits: the longest value read
    assert parse_value(b"000000000000\0") == 0
    for bad in (b"", b"12a", b"-1", b"1 ", b"9" * 13, b"1000000000000\0"):
        assert parse_value(bad) is None


# The IPv4 edges of the start-up fast path (parse_key_code reads a key without address
# objects): every one as parse_key reads it, the codes written out.
FAST_PATH_KEYS = {
    b"0.0.0.1": 0x00000001, b"0.0.0.0": None, b"223.255.255.255": 0xDFFFFFFF, b"224.0.0.0": None,
    b"224.0.0.1": None, b"239.255.255.255": None, b"240.0.0.0": 0xF0000000, b"255.255.255.254": 0xFFFFFFFE,
    b"255.255.255.255": None, b"255.255.255.255\0": None, b"192.0.2.7\0": 0xC0000207, b"192.0.2.07": None,
}


@pytest.mark.parametrize(("key", "code"), FAST_PATH_KEYS.items())
def test_parse_key_code_filters_broadcast_multicast_and_wildcard_at_their_edges(key: bytes, code: int | None) -> None:
    assert parse_key_code(key) == code
    entry = parse_key(key)
    assert (None if entry is None else entry_code(entry)) == code
    if code is not None:
        assert valid_code(code) and code_entry(code) == ipaddress.IPv4Address(code)


@pytest.mark.parametrize(("network", "keys"), [
    ("2a02::/48", ["2a02:0:0", "2a02:"]), ("2001:db8::/48", ["2001:db8:0", "2001:db8:"]),
    ("2001:db8::/64", ["2001:db8:0:0", "2001:db8:"]), ("2001:db8:1::/64", ["2001:db8:1:0", "2001:db8:1:"]),
    ("2001:db8:1:2::/64", ["2001:db8:1:2"]), ("2001:db8:1:2:3:4:5::/112", ["2001:db8:1:2:3:4:5"])])
def test_postfix_network_keys_literally(network: str, keys: list[str]) -> None:
    assert postfix_network_keys(ipaddress.IPv6Network(network)) == keys


@pytest.mark.parametrize(("key", "network"), [
    (b"192.0.255", "192.0.255.0/24"), (b"255", "255.0.0.0/8"), (b"10.255", "10.255.0.0/16"),
    (b"2001:db8:ffff", "2001:db8:ffff::/48"), (b"ipv6:2001:db8:ffff", "2001:db8:ffff::/48")])
def test_partial_keys_up_to_octet_255(key: bytes, network: str) -> None:
    assert parse_key(key) == ipaddress.ip_network(network)
    assert parse_key_code(key) == entry_code(ipaddress.ip_network(network))


@pytest.mark.parametrize("key", [b"192.0.256", b"256", b"10.2555", b"192.00.2", b"192.0.2.", b"2001:db8:10000",
                                 b"2001:db8:fffff"])
def test_partial_keys_past_255_or_misspelt_are_nothing(key: bytes) -> None:
    assert parse_key(key) is None and parse_key_code(key) is None


def test_entry_codes_of_networks_and_their_parts() -> None:
    """The code layout, with literals: IPv4 hosts are their value, bit 128 marks IPv6, bits 129
    and up hold a network's prefix length plus one."""
    net4, net6 = ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/48")
    assert entry_code(net4) == 0xC0000200 | 25 << 129
    assert entry_code(net6) == int(net6.network_address) | 1 << 128 | 49 << 129
    assert entry_code(ipaddress.ip_address("2001:db8::1")) == int(ipaddress.ip_address("2001:db8::1")) | 1 << 128
    assert code_network(entry_code(net4)) == (4, 24) and code_network(entry_code(net6)) == (6, 48)
    assert code_network(0xC0000201) is None and code_network(entry_code(ipaddress.ip_address("::2"))) is None
    assert covering_code(ipaddress.ip_address("192.0.2.99"), 4, 24) == entry_code(net4)
    assert covering_code(ipaddress.ip_address("192.0.2.99"), 6, 24) is None
    assert covering_code(ipaddress.ip_address("2001:db8::99"), 6, 48) == entry_code(net6)
    for code in (entry_code(net4), entry_code(net6), 0xC0000201):
        assert code_entry(code) in (net4, net6, ipaddress.ip_address("192.0.2.1")) and valid_code(code)
    # code_entry() inverts entry_code() for every prefix, /0 included (no entry, but a code all the same).
    for text in ("0.0.0.0/0", "::/0", "128.0.0.0/1", "8000::/1", "0.0.0.0", "::", "255.255.255.255/32"):
        entry = ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text)
        assert code_entry(entry_code(entry)) == entry
        assert code_network(entry_code(entry)) == (
            (entry.version, entry.prefixlen) if isinstance(entry, ipaddress.IPv4Network | ipaddress.IPv6Network)
            else None)


@pytest.mark.parametrize("code", [
    0, 0xE0000000, 0xEFFFFFFF, 0xFFFFFFFF, 1 << 32, -1, 130 << 129 | 1 << 128, 0xC0000200 | 33 << 129,
    0xC0000201 | 25 << 129, 0x20010DB8 << 96 | 1 << 128 | 57 << 129, 0x0A000000 | 9 << 129 | 1 << 128])
def test_valid_code_refuses_what_no_add_makes(code: int) -> None:
    assert valid_code(code) is False, hex(code)


@pytest.mark.parametrize("text", ["192.0.2.1", "2001:db8::1", "192.0.2.0/24", "2001:db8:1::/48", "10.0.0.0/8",
                                  "2001:db8:1:2:3:4:5::/112"])
def test_valid_code_takes_what_an_add_makes(text: str) -> None:
    entry = ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text)
    assert valid_code(entry_code(entry)) is True


@pytest.mark.parametrize("text", ["::ffff:192.0.2.1", "ff02::1", "::", "192.0.2.0/23", "2001:db8::/56",
                                  "224.0.0.0/8"])
def test_valid_code_refuses_entries_no_add_makes(text: str) -> None:
    """A v4-mapped address is stored as its IPv4 form; the rest may never become keys."""
    entry = ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text)
    assert valid_code(entry_code(entry)) is False


STYLES = [KeyStyle(), KeyStyle(nul=True), KeyStyle(cidr=True), KeyStyle(nul=True, cidr=True),
          KeyStyle(ipv6=Ipv6Keys.SENDMAIL), KeyStyle(ipv6=Ipv6Keys.BOTH, nul=True)]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("text", ["192.0.2.7", "0.0.0.1", "255.255.255.254", "2001:db8::7", "192.0.2.0/24",
                                  "2001:db8::/48"])
def test_code_keys_are_the_keys_of_the_entry(style: KeyStyle, text: str) -> None:
    entry = ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text)
    assert style.code_keys(entry_code(entry)) == style.keys(entry)


def test_code_keys_of_ipv4_hosts_literally() -> None:
    assert KeyStyle().code_keys(0xC0000207) == [b"192.0.2.7"]
    assert KeyStyle(nul=True).code_keys(0xC0000207) == [b"192.0.2.7\0"]
    assert KeyStyle(cidr=True).code_keys(0xC0000207) == [b"192.0.2.7/32"]
    assert KeyStyle(nul=True, cidr=True).code_keys(0x01020304) == [b"1.2.3.4/32\0"]
    assert KeyStyle().code_keys(entry_code(ipaddress.ip_network("10.20.0.0/16"))) == [b"10.20"]
    assert KeyStyle().code_keys(entry_code(ipaddress.ip_network("10.0.0.0/8"))) == [b"10"]


def test_canonical_and_relayable() -> None:
    assert canonical(ipaddress.ip_address("::ffff:192.0.2.7")) == V4
    assert canonical(V6) == V6
    assert relayable(V4) and relayable(V6)
    for bad in ("0.0.0.0", "::", "239.1.1.1", "ff02::1", "255.255.255.255"):
        assert not relayable(ipaddress.ip_address(bad))


@pytest.mark.parametrize("text", ["0.0.0.1", "223.255.255.255", "224.0.0.0", "239.255.255.255", "240.0.0.0",
                                  "255.255.255.254", "127.0.0.1"])
def test_relayable_ipv4_by_integer_is_relayable_by_ipaddress(text: str) -> None:
    """relayable() tests an IPv4 address's integer (a hot path); it must say what the
    ipaddress properties say, at the edges of every range it excludes."""
    address = ipaddress.IPv4Address(text)
    expected = not (address.is_unspecified or address.is_multicast or text == "255.255.255.255")
    assert relayable(address) is expected


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_relayable_ipv4_agrees_with_ipaddress(value: int) -> None:
    address = ipaddress.IPv4Address(value)
    assert relayable(address) is not (address.is_unspecified or address.is_multicast or value == 2**32 - 1)


N24 = ipaddress.ip_network("192.0.2.0/24")
N64 = ipaddress.ip_network("2001:db8:1:2::/64")


@pytest.mark.parametrize(("key", "network"), [
    (b"192.0.2", N24), (b"192.0.2\0", N24), (b"192.0", ipaddress.ip_network("192.0.0.0/16")),
    (b"10", ipaddress.ip_network("10.0.0.0/8")), (b"192.0.2.0/24", N24),
    (b"2001:db8:1:2", N64), (b"ipv6:2001:db8:1:2", N64), (b"2001:db8:1:2::/64", N64),
    (b"2001:db8:0", ipaddress.ip_network("2001:db8::/48")),
])
def test_parse_key_reads_network_keys(key: bytes, network: ipaddress.IPv4Network) -> None:
    assert parse_key(key) == network


def test_network_keys_in_every_style() -> None:
    assert KeyStyle().keys(N24) == [b"192.0.2"]
    assert KeyStyle(nul=True).keys(N24) == [b"192.0.2\0"]
    assert KeyStyle(cidr=True).keys(N24) == [b"192.0.2.0/24"]
    assert KeyStyle().keys(N64) == [b"2001:db8:1:2"]
    assert KeyStyle(ipv6=Ipv6Keys.SENDMAIL).keys(N64) == [b"ipv6:2001:db8:1:2"]
    assert KeyStyle(ipv6=Ipv6Keys.BOTH).keys(N64) == [b"2001:db8:1:2", b"ipv6:2001:db8:1:2"]
    # Trailing zero groups: the "::" of some hosts starts inside the prefix.
    assert KeyStyle().keys(ipaddress.ip_network("2001:db8::/64")) == [b"2001:db8:0:0", b"2001:db8:"]
    for style in (KeyStyle(), KeyStyle(ipv6=Ipv6Keys.BOTH), KeyStyle(cidr=True)):
        for key in style.keys(N64) + style.keys(N24):
            if not key.endswith(b":"):
                assert parse_key(key) in (N64, N24)


@pytest.mark.parametrize("text", ["192.0.2.0/23", "192.0.2.0/25", "0.0.0.0/8", "224.0.0.0/8",
                                  "2001:db8::/63", "2001:db8::/32", "ff02::/64", "::ffff:0:0/96"])
def test_only_networks_partial_lookups_can_match_become_entries(text: str) -> None:
    assert entry_network(ipaddress.ip_network(text)) is None


def test_a_host_network_is_the_host() -> None:
    assert entry_network(ipaddress.ip_network("192.0.2.7/32")) == V4
    assert entry_network(ipaddress.ip_network("::ffff:192.0.2.7/128")) == V4


def postfix_partial_lookups(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """What Postfix's check_addr_access() looks up: the text, then cut at the last
    "." or ":" again and again (compressed IPv6 text, as inet_ntop writes it)."""
    text = str(address)
    delimiter = ":" if address.version == 6 else "."
    lookups = [text]
    while delimiter in text:
        text = text.rsplit(delimiter, 1)[0]
        lookups.append(text)
    return lookups


def sample_hosts(network: ipaddress.IPv6Network, rng: random.Random) -> list[ipaddress.IPv6Address]:
    """Hosts in and around ``network``: random ones, and ones whose zero runs put "::" anywhere."""
    base = int(network.network_address)
    span = network.num_addresses
    hosts = {base + rng.randrange(span) for _ in range(200)}
    for run_start in range(8):
        for run_length in range(2, 8 - run_start + 1):
            value = int(ipaddress.IPv6Address(":".join(["1"] * 8)))
            for group in range(run_start, run_start + run_length):
                value &= ~(0xFFFF << (16 * (7 - group)))
            hosts.add(base | (value & (span - 1)))
    neighbours = {host ^ (1 << bit) for host in list(hosts)[:50] for bit in range(128 - network.prefixlen, 128)}
    return [ipaddress.IPv6Address(host) for host in hosts | neighbours]


@pytest.mark.parametrize("text", ["2001:db8:1:2::/64", "2001:db8::/64", "2001:db8:5::/64", "2001:db8::/48",
                                  "2001:db8:1::/48", "2001:db8:1:2:3::/80", "2001:0:0:5::/64", "2a02:1234:5600::/64",
                                  "2a02::/48", "2a02::/64", "2001:db8:1:2:3:4:5::/112"])
def test_postfix_network_keys_match_hosts_inside_and_never_outside(text: str) -> None:
    network = ipaddress.IPv6Network(text)
    keys = set(postfix_network_keys(network))
    rng = random.Random(text)
    missed = []
    for host in sample_hosts(network, rng):
        matched = bool(keys & set(postfix_partial_lookups(host)))
        if host in network:
            missed += [] if matched else [host]
        else:
            assert not matched, f"{host} is outside {network} but matches {keys}"
    # Only hosts whose "::" starts two or more groups before the prefix ends are missed.
    for host in missed:
        assert str(host).split("::")[0].count(":") + 2 < network.prefixlen // 16, (host, keys)
    if ":0:0" not in str(network.network_address.exploded).replace(":0000", ":0")[: network.prefixlen // 4]:
        assert not missed


def test_ipv4_networks_match_by_partial_lookup() -> None:
    (key,) = KeyStyle().keys(N24)
    assert key.decode() in postfix_partial_lookups(ipaddress.IPv4Address("192.0.2.200"))
    assert key.decode() not in postfix_partial_lookups(ipaddress.IPv4Address("192.0.20.1"))


def test_nested_networks_that_share_a_key_are_siblings() -> None:
    assert key_siblings(ipaddress.IPv6Network("2001:db8::/64")) == [ipaddress.IPv6Network("2001:db8::/48")]
    assert key_siblings(ipaddress.IPv6Network("2001:db8::/48")) == [ipaddress.IPv6Network("2001:db8::/64")]
    assert key_siblings(ipaddress.IPv6Network("2001:db8:1::/64")) == [ipaddress.IPv6Network("2001:db8:1::/80")]
    assert key_siblings(ipaddress.IPv6Network("2001:db8:1::/80")) == [ipaddress.IPv6Network("2001:db8:1::/64")]
    assert key_siblings(ipaddress.IPv6Network("2001:db8:1:2::/64")) == []  # one key, its own
    assert key_siblings(N64) == []
    assert key_siblings(N24) == []
