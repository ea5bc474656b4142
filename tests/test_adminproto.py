"""The admin (version 3) codec: round trips, and only XdrError on any bytes."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracclient import adminproto as ap
from dracclient.errors import BadReply
from dracclient.rpcbind import parse_getaddr
from dracclient.xdr import XdrError

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
)
networks = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 31)).map(
        lambda t: ipaddress.IPv4Network((t[0], t[1]), strict=False)),
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 127)).map(
        lambda t: ipaddress.IPv6Network((t[0], t[1]), strict=False)),
)
targets = st.one_of(addresses, networks)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=50)

DECODERS = [
    ap.decode_target, ap.decode_add3, ap.decode_adminstat, ap.decode_get3_res, ap.decode_list3_args,
    ap.decode_list3_res, ap.decode_flush3_res, ap.decode_status3_res,
]


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_decoders_raise_only_xdr_errors(data: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(data)  # type: ignore[operator]
        except XdrError:
            pass
    try:
        parse_getaddr(data)
    except BadReply:
        pass


@given(targets, u32)
def test_add3_round_trip(target: ap.Target, lifetime: int) -> None:
    assert ap.decode_add3(ap.encode_add3(target, lifetime)) == (target, lifetime)
    assert ap.decode_target(ap.encode_target(target)) == target


def test_a_target_is_the_address_then_its_prefix_length() -> None:
    host = ipaddress.ip_address("192.0.2.7")
    assert ap.encode_target(host) == b"\0\0\0\x04\xc0\x00\x02\x07\0\0\0\x20"
    assert ap.encode_target(ipaddress.ip_network("192.0.2.0/24"))[-4:] == b"\0\0\0\x18"
    assert ap.decode_target(ap.encode_target(ipaddress.ip_network("2001:db8:1:2::/64"))) == \
        ipaddress.ip_network("2001:db8:1:2::/64")


@given(st.sampled_from(ap.AdminStat), u64, u32, st.lists(st.tuples(targets, u64), max_size=20), st.booleans())
def test_list3_round_trip(stat: ap.AdminStat, cookie: int, total: int,
                          entries: list[tuple[ap.Target, int]],
                          more: bool) -> None:
    page = ap.ListPage(stat, cookie, total, [ap.Entry(a, e) for a, e in entries], more)
    assert ap.decode_list3_res(ap.encode_list3_res(page)) == page
    assert ap.decode_list3_args(ap.encode_list3_args(cookie, total, 7)) == (cookie, total, 7)


counters = st.lists(st.builds(ap.Counter, text, u64), max_size=20).map(tuple)


@given(st.builds(ap.Status, u32, text, text, u64, u32, u32, u64, text, counters))
def test_status3_round_trip(status: ap.Status) -> None:
    assert ap.decode_status3_res(ap.encode_status3_res(status)) == status


def test_status3_counters_are_last_and_bounded() -> None:
    plain = ap.Status(1, "/m", "btree", 2, 3, 4, 5, "9.8.7")
    counted = ap.Status(1, "/m", "btree", 2, 3, 4, 5, "9.8.7", (ap.Counter("expired_total", 7),))
    # The counters array is appended after server_version: the rest is unchanged.
    assert ap.encode_status3_res(counted).startswith(ap.encode_status3_res(plain)[:-4])
    assert ap.encode_status3_res(plain).endswith(b"\0\0\0\0")
    too_many = ap.encode_status3_res(plain)[:-4] + (ap.MAX_COUNTERS + 1).to_bytes(4, "big")
    with pytest.raises(XdrError, match="exceed"):
        ap.decode_status3_res(too_many)


def test_bad_values_are_rejected() -> None:
    with pytest.raises(XdrError, match="4 or 16"):
        ap.decode_target(b"\0\0\0\x05" + b"abcde" + b"\0\0\0" + b"\0\0\0\x20")
    with pytest.raises(XdrError, match="not a network"):  # host bits set
        ap.decode_target(b"\0\0\0\x04\xc0\x00\x02\x07\0\0\0\x18")
    with pytest.raises(XdrError, match="not a network"):
        ap.decode_target(b"\0\0\0\x04\xc0\x00\x02\x07\0\0\0\x21")
    with pytest.raises(XdrError, match="adminstat"):
        ap.decode_adminstat(b"\0\0\0\x09")
    with pytest.raises(XdrError, match="exceed"):
        ap.decode_list3_res(b"\0" * 16 + (ap.MAX_LIST + 1).to_bytes(4, "big"))
    assert ap.decode_get3_res(ap.encode_get3_res(ap.AdminStat.ADMIN_OK, 5)) == (ap.AdminStat.ADMIN_OK, 5)
    assert ap.decode_flush3_res(ap.encode_flush3_res(ap.AdminStat.ADMIN_OK, 3)) == (ap.AdminStat.ADMIN_OK, 3)


# --- the numbers and limits, as literals (docs/drac.x) ----------------------------------


def test_version_procedure_and_status_numbers_are_drac_x_s() -> None:
    assert (ap.DRACVERS_ADMIN, ap.DRACPROC_ADD3, ap.DRACPROC_DEL3, ap.DRACPROC_GET3, ap.DRACPROC_LIST3,
            ap.DRACPROC_FLUSH3, ap.DRACPROC_STATUS3) == (3, 1, 2, 3, 4, 5, 6)
    assert [(s.name, s.value) for s in ap.AdminStat] == [
        ("ADMIN_OK", 0), ("ADMIN_NOTFOUND", 1), ("ADMIN_SYSERR", 2), ("ADMIN_INVAL", 3), ("ADMIN_EXPIRED", 4)]
    assert ap.MAX_LIFETIME == 315_360_000  # ten years of 365 days


def list_page(count: int) -> bytes:
    entry = ap.encode_target(ipaddress.IPv4Address("192.0.2.1")) + (7).to_bytes(8, "big")
    return (bytes(4) + (1).to_bytes(8, "big") + count.to_bytes(4, "big") + count.to_bytes(4, "big")
            + entry * count + bytes(4))


def test_a_list_page_holds_8192_entries_and_no_more() -> None:
    page = ap.decode_list3_res(list_page(8192))
    assert len(page.entries) == 8192 and page.entries[-1] == ap.Entry(ipaddress.IPv4Address("192.0.2.1"), 7)
    with pytest.raises(XdrError, match="8193 entries in one page exceed 8192"):
        ap.decode_list3_res(list_page(8193))


def status_bytes(counters: int, name_length: int = 1, text_length: int = 1) -> bytes:
    def string(length: int) -> bytes:
        return length.to_bytes(4, "big") + b"x" * length + bytes(-length % 4)

    return (bytes(4) + string(text_length) + string(1) + bytes(8) + bytes(4) + bytes(4) + bytes(8) + string(1)
            + counters.to_bytes(4, "big") + (string(name_length) + bytes(8)) * counters)


def test_status_holds_4096_counters_and_strings_of_4096_bytes_and_no_more() -> None:
    assert len(ap.decode_status3_res(status_bytes(4096)).counters) == 4096
    with pytest.raises(XdrError, match="4097 counters exceed 4096"):
        ap.decode_status3_res(status_bytes(4097))
    assert ap.decode_status3_res(status_bytes(1, name_length=4096, text_length=4096)).map_path == "x" * 4096
    for name_length, text_length in ((4097, 1), (1, 4097)):
        with pytest.raises(XdrError, match="4097 bytes exceeds limit 4096"):
            ap.decode_status3_res(status_bytes(1, name_length=name_length, text_length=text_length))


def test_fixed_encodings_as_literal_words() -> None:
    def words(*values: int) -> bytes:
        return b"".join(v.to_bytes(4, "big") for v in values)

    v4, net6 = ipaddress.IPv4Address("192.0.2.7"), ipaddress.IPv6Network("2001:db8::/48")
    assert ap.encode_target(v4) == words(4, 0xC0000207, 32)
    assert ap.encode_target(net6) == words(16, 0x20010DB8, 0, 0, 0, 48)
    assert ap.encode_add3(v4, 3600) == words(4, 0xC0000207, 32, 3600)
    assert ap.encode_adminstat(ap.AdminStat.ADMIN_INVAL) == words(3)
    assert ap.decode_adminstat(words(3)) is ap.AdminStat.ADMIN_INVAL
    assert ap.decode_get3_res(words(1, 0, 0)) == (ap.AdminStat.ADMIN_NOTFOUND, 0)
    assert ap.encode_get3_res(ap.AdminStat.ADMIN_NOTFOUND) == words(1, 0, 0)
    assert ap.encode_get3_res(ap.AdminStat.ADMIN_OK, 0x1_0000_0002) == words(0, 1, 2)
    assert ap.encode_list3_args(0x1_0000_0002, 3, 4) == words(1, 2, 3, 4)
    assert ap.encode_flush3_res(ap.AdminStat.ADMIN_OK, 9) == words(0, 9)


@pytest.mark.parametrize(("decode", "data"), [
    (ap.decode_target, ap.encode_target(ipaddress.IPv4Address("192.0.2.7"))),
    (ap.decode_add3, ap.encode_add3(ipaddress.IPv4Address("192.0.2.7"), 3600)),
    (ap.decode_adminstat, ap.encode_adminstat(ap.AdminStat.ADMIN_OK)),
    (ap.decode_get3_res, ap.encode_get3_res(ap.AdminStat.ADMIN_OK, 5)),
    (ap.decode_list3_args, ap.encode_list3_args(1, 2, 3)),
    (ap.decode_flush3_res, ap.encode_flush3_res(ap.AdminStat.ADMIN_OK, 2)),
    (ap.decode_list3_res, ap.encode_list3_res(ap.ListPage(ap.AdminStat.ADMIN_OK, 1, 0, [], False))),
    (ap.decode_status3_res, status_bytes(1)),
])
def test_every_decoder_refuses_trailing_bytes(decode: object, data: bytes) -> None:
    assert callable(decode)
    decode(data)
    with pytest.raises(XdrError, match="4 trailing bytes"):
        decode(data + bytes(4))
