"""The allow list: legacy dracd.allow lines, CIDR lines and the legacy default."""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import json
import logging
import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracclient.rpc import decode_call, encode_call
from dracd.relay.policy import AdminPolicy, NetRule, inet_addr, load_allow, load_allow_file, parse_allow_line
from dracd.server.dispatch import CallContext, PeerCred
from tests.fixtures.tools import which

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dracd.allow"
    path.write_text(text)
    return path


def test_legacy_format_mask_first(tmp_path: Path) -> None:
    allow = load_allow_file(write(tmp_path, "# legacy\n255.255.255.0 192.0.2.0\n255.255.255.255 127.0.0.1\n"))
    assert allow.permits(ip("192.0.2.99")) and allow.permits(ip("127.0.0.1"))
    assert not allow.permits(ip("192.0.3.1")) and not allow.permits(ip("127.0.0.2"))


def test_legacy_addr_bits_outside_mask_match_nobody_like_drac() -> None:
    """DRAC compared (caller & mask) == addr: an address with bits outside its mask matches no caller."""
    rule = parse_allow_line("255.255.255.0 192.0.2.77")
    assert rule is not None and not rule.matches(ip("192.0.2.1")) and not rule.matches(ip("192.0.2.77"))


def test_cidr_lines_ipv4_and_ipv6(tmp_path: Path) -> None:
    allow = load_allow_file(write(tmp_path, "192.0.2.0/24\n2001:db8::/32  # MRAs\n::1/128\n"))
    assert allow.permits(ip("192.0.2.5")) and allow.permits(ip("2001:db8:1::5")) and allow.permits(ip("::1"))
    assert not allow.permits(ip("2001:db9::1")) and not allow.permits(ip("198.51.100.1"))


def test_ipv4_mapped_caller_is_checked_as_ipv4(tmp_path: Path) -> None:
    allow = load_allow_file(write(tmp_path, "255.255.255.255 127.0.0.1\n"))
    assert allow.permits(ip("::ffff:127.0.0.1"))


def test_empty_file_allows_nobody(tmp_path: Path) -> None:
    allow = load_allow_file(write(tmp_path, "# nobody\n\n"))
    assert not allow.permits(ip("127.0.0.1"))


@pytest.mark.parametrize("line", ["255.255.255.0", "192.0.2.0/33", "a b c", "255.255.255.0 2001:db8::", "bogus"])
def test_bad_line_is_reported_naming_file_and_line_and_allows_nobody(tmp_path: Path, line: str) -> None:
    """DRAC skipped these (or, for '255.255.255.0 2001:db8::', read '2001': 0.0.7.209, matching nobody)."""
    path = write(tmp_path, f"127.0.0.1/32\n{line}\n")
    allow = load_allow_file(path)
    assert len(allow.problems) == 1 and allow.problems[0].startswith(f"{path}, line 2: ")
    assert allow.permits(ip("127.0.0.1")) and not allow.permits(ip("192.0.2.1"))
    assert not allow.permits(ip("0.0.7.209"))


def interface_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The host's addresses as iproute2 lists them: a source independent of dracd's (psutil)."""
    ip_tool = which("ip")
    assert ip_tool is not None, "ip (iproute2) is needed to list this host's addresses"
    listing = json.loads(subprocess.run([ip_tool, "-j", "address", "show"], capture_output=True, text=True,
                                        check=True, timeout=10).stdout)
    return {ipaddress.ip_address(info["local"]) for link in listing for info in link.get("addr_info", [])}


def test_default_when_absent_is_loopback_and_own_addresses() -> None:
    """Exactly one host rule per address: 127.0.0.1, ::1 and every interface address."""
    own = interface_addresses()
    assert ip("127.0.0.1") in own and any(address not in (ip("127.0.0.1"), ip("::1")) for address in own), (
        f"this host has no address but loopback ({own}): the test could not tell own addresses from none")
    allow = load_allow(None)
    for address in own | {ip("127.0.0.1"), ip("::1")}:
        assert allow.permits(address), address
        bits = address.max_prefixlen
        neighbour = ipaddress.ip_address(int(address) ^ 1) if address.version == 4 else ipaddress.IPv6Address(
            int(address) ^ 1)
        assert neighbour in own or not allow.permits(neighbour), f"{neighbour}: a host rule, not a /{bits - 1}"
    assert not allow.permits(ip("127.0.0.2")) and not allow.permits(ip("198.51.100.1"))
    assert {rule.network for rule in allow.rules if isinstance(rule, NetRule)} == {
        ipaddress.ip_network(address) for address in own | {ip("127.0.0.1"), ip("::1")}}
    assert len(allow.rules) == len(own | {ip("127.0.0.1"), ip("::1")}) and not allow.problems


@pytest.mark.parametrize(("line", "inside"), [("192.0.2.5/24", "192.0.2.5"), ("2001:db8::5/64", "2001:db8::1")])
def test_cidr_line_with_host_bits_set_matches_nobody_and_says_so(tmp_path: Path, line: str, inside: str) -> None:
    path = write(tmp_path, f"{line}\n")
    allow = load_allow_file(path)
    assert not allow.permits(ip(inside)) and not allow.permits(ip(line.split("/")[0]))
    assert len(allow.problems) == 1 and "bits outside the /" in allow.problems[0]
    assert allow.problems[0].startswith(f"{path}, line 1: ")


def test_explicitly_named_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_allow(tmp_path / "missing.allow")


# --- DRAC's inet_addr(), against glibc's own ---------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_libc.inet_addr.argtypes = [ctypes.c_char_p]
_libc.inet_addr.restype = ctypes.c_uint32


def glibc_inet_addr(text: str) -> int:
    """glibc's inet_addr(), in host order: INADDR_NONE (255.255.255.255) for a failure, as
    for "255.255.255.255" itself; DRAC could not tell them apart, and neither can a rule."""
    return int(socket.ntohl(_libc.inet_addr(text.encode())))


def as_drac_read(text: str) -> int:
    value = inet_addr(text)
    return 0xFFFFFFFF if value is None else value


INET_ADDR_EDGES = [
    "0", "1", "4294967294", "4294967295", "4294967296", "255.16777215", "255.16777216", "256.1", "1.65535",
    "1.2.65535", "1.2.65536", "1.2.3.255", "1.2.3.256", "255.255.255.255", "255.255.255.254", "1.2.3.4.5",
    "1..2", ".1", "1.", "", "010", "08", "0377.0377.0377.0376", "0400.1", "00", "0.0.0.0", "192.168.010.1",
    "10.1", "10.0.1", "127.1", "1.2.3", "9.9.9.9", "07777777777", "037777777777", "040000000000",
    "1.16777215", "1.16777216", "1.2.0377", "4294967294",  # (hex, "0x..", never reaches it: not [0-9.])
]


@pytest.mark.parametrize("text", INET_ADDR_EDGES)
def test_inet_addr_reads_as_glibc_does(text: str) -> None:
    assert as_drac_read(text) == glibc_inet_addr(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789.", max_size=16))
def test_inet_addr_reads_any_digits_and_dots_as_glibc_does(text: str) -> None:
    assert as_drac_read(text) == glibc_inet_addr(text)


@pytest.mark.parametrize(("line", "permitted", "refused"), [
    ("255.255.255.0 192.0.2.0", ["192.0.2.0", "192.0.2.255"], ["192.0.3.0", "192.0.1.255"]),
    ("255.255.255.255 192.0.2.7 trailing words", ["192.0.2.7"], ["192.0.2.6", "192.0.2.8"]),
    ("0.0.0.0 0.0.0.0", ["192.0.2.7", "255.255.255.255", "0.0.0.1"], ["2001:db8::1"]),
    ("255.255.255.0\t192.0.2.0", ["192.0.2.9"], ["192.0.3.9"]),
    ("255.255.255.0 192.0.2.0;x", ["192.0.2.9"], ["192.0.3.9"]),
    ("255.0 10.1", [], ["10.0.0.1", "10.0.0.2"]),  # 255.0.0.0 and 10.0.0.1: bits outside the mask, nobody
    ("999.1.1.1 192.0.2.1", ["192.0.2.1"], ["192.0.2.0", "192.0.2.3"]),  # the mask failed: one host
    ("192.0.2.0/24 # a comment", ["192.0.2.0", "192.0.2.255"], ["192.0.3.0"]),
    ("  192.0.2.0/24", ["192.0.2.1"], ["192.0.3.1"]),
    ("2001:db8::/32", ["2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"], ["2001:db9::", "2001:db7::"]),
    ("0.0.0.0/0", ["192.0.2.1", "::ffff:192.0.2.1"], ["2001:db8::1"]),
])
def test_allow_lines_at_their_edges(tmp_path: Path, line: str, permitted: list[str], refused: list[str]) -> None:
    allow = load_allow_file(write(tmp_path, line + "\n"))
    for address in permitted:
        assert allow.permits(ip(address)), (line, address)
    for address in refused:
        assert not allow.permits(ip(address)), (line, address)


@pytest.mark.parametrize(("line", "problem"), [
    ("255.255.255.0 192.0.2.77", "bits outside mask 255.255.255.0"),
    ("255.255.255.0 192.0.2.0 x", None),
    ("255.255.255.0 192.0.2.0", None),
    ("255.255.255.0 192.0.02.0", "'192.0.02.0' reads as 192.0.2.0"),
    ("999.1.1.1 192.0.2.0", "mask '999.1.1.1' is not an address"),
    ("255.255.255.255 999.1.1.1", "address '999.1.1.1' is not an address"),
    ("999.1.1.1 192.0.2.1", "so the line allows 192.0.2.1 alone"),
    ("192.0.2.0/24 extra", "'extra' after the network is ignored"),
    ("192.0.2.0/24 extra words", "'extra words' after the network is ignored"),
    ("192.0.2.0/24 # a comment", None),
    ("192.0.2.0/24 #", None),
    ("192.0.2.0/24", None),
    (" 255.255.255.0 192.0.2.0", "skipped: it starts with a blank"),
    ("# 255.255.255.0 192.0.2.0", None),
])
def test_each_line_s_problem_is_named(tmp_path: Path, line: str, problem: str | None) -> None:
    allow = load_allow_file(write(tmp_path, line + "\n"))
    if problem is None:
        assert allow.problems == ()
    else:
        assert len(allow.problems) == 1 and problem in allow.problems[0], allow.problems


def test_a_line_is_said_to_start_with_a_blank_only_when_it_does(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="starts with a blank"):
        parse_allow_line(" 255.255.255.0 192.0.2.0")  # the last line of a file, no newline
    for line in (" example.org", "bogus", "example.org \n", "\t\n x"):
        with pytest.raises(ValueError, match="^expected 'NETMASK NETADDR'"):
            parse_allow_line(line)


def test_problems_are_logged_unless_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "bogus\n192.0.2.0/24\n")
    with caplog.at_level(logging.WARNING, logger="dracd.relay.policy"):
        quiet = load_allow(path, quiet=True)
        assert not caplog.records
        loud = load_allow(path)
    assert quiet.rules == loud.rules and quiet.problems == loud.problems and len(loud.problems) == 1
    assert [r.getMessage() for r in caplog.records] == list(loud.problems)
    assert loud.permits(ip("192.0.2.9")) and loud.source == str(path)


# --- the admin policy ------------------------------------------------------------------


def context(transport: str, caller: str | None = None, cred: PeerCred | None = None) -> CallContext:
    return CallContext(None if caller is None else ip(caller), 0, transport, decode_call(encode_call(1, 2, 3, 4)),
                       cred)


@pytest.mark.parametrize(("cred", "permitted"), [
    (PeerCred(1, 0, 0), True),  # root
    (PeerCred(1, 4242, 4242), True),  # dracd's own user
    (PeerCred(1, 1000, 600), True),  # an admin group as primary group
    (PeerCred(1, 1000, 1000, frozenset({5, 600})), True),  # or as a supplementary one
    (PeerCred(1, 1000, 1000, frozenset({5, 6})), False),
    (PeerCred(1, 1, 1), False),
    (None, False),  # a UNIX socket that could not say who called
])
def test_admin_policy_on_a_unix_socket_goes_by_the_kernel_s_word(cred: PeerCred | None, permitted: bool) -> None:
    policy = AdminPolicy(groups=frozenset({600}), allow=(ipaddress.ip_network("0.0.0.0/0"),), uid=4242)
    assert policy.permits(context("unix", cred=cred)) is permitted
    if cred is not None:  # credentials from a UNIX socket of another transport name count the same
        assert policy.permits(context("tcp", "192.0.2.1", cred=cred)) is permitted


def test_admin_policy_over_the_network_takes_tcp_from_the_admin_allow_list_only() -> None:
    policy = AdminPolicy(allow=(ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")),
                         uid=4242)
    assert policy.permits(context("tcp", "192.0.2.9")) is True
    assert policy.permits(context("tcp", "::ffff:192.0.2.9")) is True  # seen as the IPv4 caller it is
    assert policy.permits(context("tcp", "2001:db8::9")) is True
    assert policy.permits(context("tcp", "198.51.100.1")) is False
    assert policy.permits(context("udp", "192.0.2.9")) is False  # a UDP source can be forged
    assert policy.permits(context("tcp")) is False
    assert AdminPolicy(uid=4242).permits(context("tcp", "127.0.0.1")) is False  # empty by default
