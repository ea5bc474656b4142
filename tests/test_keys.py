"""Map keys: the formats the MTAs look up, and nothing else."""

from __future__ import annotations

import ipaddress

import pytest

from dracd.keys import Ipv6Keys, KeyStyle, canonical, parse_key, parse_value, relayable, sendmail_form

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
    [b"unknown", b"127.0.0", b"192.0.2", b"", b"192.0.2.0/24", b"0.0.0.0", b"::", b"224.0.0.1",
     b"255.255.255.255", b"\xff\xfe", b"192.0.2.7 ", b"example.org"],
)
def test_parse_key_rejects_anything_that_is_not_one_host(key: bytes) -> None:
    assert parse_key(key) is None


def test_parse_value() -> None:
    assert parse_value(b"1795892048") == 1795892048
    assert parse_value(b"1795892048\0") == 1795892048
    for bad in (b"", b"12a", b"-1", b"1 ", b"9" * 13):
        assert parse_value(bad) is None


def test_canonical_and_relayable() -> None:
    assert canonical(ipaddress.ip_address("::ffff:192.0.2.7")) == V4
    assert canonical(V6) == V6
    assert relayable(V4) and relayable(V6)
    for bad in ("0.0.0.0", "::", "239.1.1.1", "ff02::1", "255.255.255.255"):
        assert not relayable(ipaddress.ip_address(bad))
