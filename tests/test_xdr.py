"""XDR (RFC 4506) encoding and the bounds-checked decoder, plus the DRAC
argument and result encodings built on it (dracclient.xdr, dracclient.drac).

The decoders face hostile bytes from the network, so besides exact
encodings we check that every read past the end, every over-long opaque
and every non-zero pad byte raises XdrError, and (with hypothesis) that
arbitrary bytes can never raise anything else.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracclient.drac import (
    DRACPROC_ADD,
    DRACPROC_NULL,
    DRACPROG,
    DRACVERS,
    DRACVERS6,
    AddStat,
    decode_add_v1,
    decode_add_v2,
    decode_addstat,
    encode_add_args,
    encode_addstat,
    version_for,
)
from dracclient.xdr import Packer, Unpacker, XdrError, pad

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

FAST = settings(max_examples=300, deadline=None)


# --- Packer ---------------------------------------------------------------


def test_pad_aligns_to_four() -> None:
    assert [pad(n) for n in range(9)] == [0, 3, 2, 1, 0, 3, 2, 1, 0]


def test_packer_encodings_are_big_endian_words() -> None:
    data = (
        Packer()
        .uint(0xC000020A)
        .int(-72)
        .opaque(b"abcde")
        .string("hi")
        .raw(b"\x01\x02\x03\x04")
        .opaque(b"")
        .bytes()
    )
    assert data == bytes.fromhex(
        "c000020a" "ffffffb8" "00000005" "6162636465000000" "00000002" "68690000" "01020304" "00000000"
    )


def test_packer_chains_and_starts_empty() -> None:
    assert Packer().bytes() == b""
    packer = Packer()
    for add in (packer.uint, packer.int, packer.uhyper, packer.bool):
        assert add(1) is packer


def test_packer_hyper_and_bool_encodings() -> None:
    """Literal bytes: a bool is the word 0 or 1 (RFC 4506 section 4.4), never another non-zero."""
    assert Packer().uhyper(0x0102030405060708).bytes() == bytes.fromhex("0102030405060708")
    assert Packer().bool(True).bool(False).bytes() == bytes.fromhex("00000001" "00000000")


@pytest.mark.parametrize("value", [-1, 1 << 32])
def test_packer_uint_rejects_out_of_range(value: int) -> None:
    with pytest.raises(struct.error):  # encoding a bad value is a programming error, not XdrError
        Packer().uint(value)


# --- Unpacker: values -------------------------------------------------------


def test_unpacker_uhyper_reads_eight_bytes_big_endian() -> None:
    reader = Unpacker(bytes.fromhex("0102030405060708" "ffffffffffffffff" "00"))
    assert reader.uhyper() == 0x0102030405060708
    assert reader.uhyper() == 0xFFFFFFFFFFFFFFFF
    assert reader.pos == 16 and reader.remaining() == 1
    with pytest.raises(XdrError, match="need 8 bytes at offset 0, 7 left"):
        Unpacker(bytes(7)).uhyper()


@pytest.mark.parametrize(("word", "expected"), [("00000000", False), ("00000001", True)])
def test_unpacker_bool_reads_0_and_1(word: str, expected: bool) -> None:
    assert Unpacker(bytes.fromhex(word)).bool() is expected


@pytest.mark.parametrize("word", ["00000002", "80000000", "ffffffff"])
def test_unpacker_bool_rejects_any_other_word(word: str) -> None:
    """A hostile 2 must not decode as False (or True): it is no XDR bool."""
    with pytest.raises(XdrError, match="neither 0 nor 1"):
        Unpacker(bytes.fromhex(word)).bool()


def test_unpacker_reads_what_packer_wrote() -> None:
    data = Packer().uint(0xFFFFFFFF).int(-2).opaque(b"\x00\x01\x02").string("drac").uint(7).bytes()
    reader = Unpacker(data)
    assert reader.uint() == 0xFFFFFFFF
    assert reader.int() == -2
    assert reader.opaque(3) == b"\x00\x01\x02"
    assert reader.string(4) == "drac"
    assert reader.pos == len(data) - 4
    assert reader.remaining() == 4
    assert reader.rest() == b"\x00\x00\x00\x07"
    assert reader.remaining() == 0
    reader.done()


def test_unpacker_int_is_signed_and_uint_is_not() -> None:
    assert Unpacker(b"\xff\xff\xff\xb8").int() == -72
    assert Unpacker(b"\xff\xff\xff\xb8").uint() == 0xFFFFFFB8
    assert Unpacker(b"\x80\x00\x00\x00").int() == -(1 << 31)


def test_unpacker_starts_at_offset() -> None:
    reader = Unpacker(b"\0\0\0\1\0\0\0\2", 4)
    assert reader.pos == 4
    assert reader.uint() == 2


# --- Unpacker: every read past the end -------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3])
@pytest.mark.parametrize("read", ["uint", "int"])
def test_word_reads_past_the_end(read: str, size: int) -> None:
    reader = Unpacker(b"\x01" * size)
    with pytest.raises(XdrError):
        getattr(reader, read)()
    assert reader.pos == 0  # a failed read consumes nothing


def test_word_read_after_last_word() -> None:
    reader = Unpacker(b"\0\0\0\1")
    reader.uint()
    with pytest.raises(XdrError):
        reader.uint()
    with pytest.raises(XdrError):
        reader.int()


@pytest.mark.parametrize(
    "data",
    [
        b"",  # no length word
        b"\0\0\0",  # partial length word
        b"\0\0\0\5abcd",  # body cut short
        b"\0\0\0\5abcde",  # padding missing entirely
        b"\0\0\0\5abcde\0\0",  # padding cut short
        b"\xff\xff\xff\xfc",  # huge length, nothing behind it
    ],
)
@pytest.mark.parametrize("read", ["opaque", "string"])
def test_opaque_and_string_past_the_end(read: str, data: bytes) -> None:
    with pytest.raises(XdrError):
        getattr(Unpacker(data), read)(0xFFFFFFFF)


def test_done_rejects_trailing_bytes() -> None:
    reader = Unpacker(b"\0\0\0\1\0")
    reader.uint()
    with pytest.raises(XdrError, match="1 trailing"):
        reader.done()


def test_rest_of_nothing_is_empty() -> None:
    reader = Unpacker(b"")
    assert reader.rest() == b""
    reader.done()


# --- Unpacker: opaque limits and padding -------------------------------------


def test_opaque_at_limit_is_accepted_and_over_limit_rejected() -> None:
    data = Packer().opaque(b"x" * 8).bytes()
    assert Unpacker(data).opaque(8) == b"x" * 8
    with pytest.raises(XdrError, match="exceeds limit"):
        Unpacker(data).opaque(7)


def test_opaque_limit_checked_before_the_body() -> None:
    # A 1 GiB length with no body: the limit, not the missing data, is reported.
    with pytest.raises(XdrError, match="exceeds limit"):
        Unpacker(b"\x40\x00\x00\x00").opaque(400)


@pytest.mark.parametrize("pad_bytes", [b"\1\0\0", b"\0\0\1", b"\0\x80\0"])
def test_opaque_non_zero_padding_rejected(pad_bytes: bytes) -> None:
    data = b"\0\0\0\1" + b"a" + pad_bytes
    with pytest.raises(XdrError, match="padding"):
        Unpacker(data).opaque(10)
    with pytest.raises(XdrError, match="padding"):
        Unpacker(data).string(10)


def test_opaque_zero_padding_consumed() -> None:
    reader = Unpacker(b"\0\0\0\1a\0\0\0\0\0\0\x09")
    assert reader.opaque(4) == b"a"
    assert reader.uint() == 9


def test_string_must_be_utf8() -> None:
    with pytest.raises(XdrError, match="UTF-8"):
        Unpacker(Packer().opaque(b"\xff\xfe").bytes()).string(10)


def test_xdr_error_is_a_value_error() -> None:
    assert issubclass(XdrError, ValueError)


# --- DRAC arguments and results ----------------------------------------------


def test_v1_argument_is_the_address_as_uint() -> None:
    address = ipaddress.IPv4Address("192.0.2.7")
    assert encode_add_args(address) == bytes.fromhex("c0000207")
    assert decode_add_v1(bytes.fromhex("c0000207")) == address
    assert version_for(address) == 1


def test_v2_argument_is_sixteen_char_words() -> None:
    address = ipaddress.IPv6Address("2001:db8::b8:10")
    signed = encode_add_args(address)
    plain = encode_add_args(address, sign_extend=False)
    assert len(signed) == len(plain) == 64
    assert signed[12:16] == b"\xff\xff\xff\xb8"
    assert plain[12:16] == b"\x00\x00\x00\xb8"
    assert decode_add_v2(signed) == decode_add_v2(plain) == address
    assert version_for(address) == 2


@pytest.mark.parametrize("data", ["", "c0", "c00002", "c000020700", "c000020700000000"])
def test_v1_argument_truncated_or_long(data: str) -> None:
    with pytest.raises(XdrError):
        decode_add_v1(bytes.fromhex(data))


def test_v1_argument_with_trailing_bytes_allowed() -> None:
    """As a libtirpc server reads it: the first word, whatever follows; too short is still an error."""
    address = ipaddress.IPv4Address("192.0.2.7")
    assert decode_add_v1(bytes.fromhex("c000020700"), trailing=True) == address
    assert decode_add_v1(bytes.fromhex("c000020700000000"), trailing=True) == address
    with pytest.raises(XdrError):
        decode_add_v1(bytes.fromhex("c00002"), trailing=True)


@pytest.mark.parametrize("word", ["00000100", "ffffff00", "ffffff7f", "7fffffff", "80000000"])
def test_v2_word_out_of_char_range(word: str) -> None:
    args = bytearray(64)
    args[20:24] = bytes.fromhex(word)
    with pytest.raises(XdrError, match="out of range"):
        decode_add_v2(bytes(args))


@pytest.mark.parametrize("word, byte", [("000000ff", 0xFF), ("ffffffff", 0xFF), ("ffffff80", 0x80), ("0000007f", 0x7F)])
def test_v2_word_range_edges(word: str, byte: int) -> None:
    args = bytearray(64)
    args[60:64] = bytes.fromhex(word)
    assert decode_add_v2(bytes(args)).packed[15] == byte


@pytest.mark.parametrize("length", [0, 60, 63, 65, 68])
def test_v2_argument_wrong_length(length: int) -> None:
    with pytest.raises(XdrError):
        decode_add_v2(bytes(length))


def test_trailing_bytes_after_an_add_argument_are_refused_unless_asked_to_ignore_them() -> None:
    """A libtirpc server (legacy rpc.dracd) ignores them: ``trailing=True`` does too."""
    v1, v2 = bytes.fromhex("c0000207") + b"\0\0\0\0", encode_add_args(ipaddress.IPv6Address("2001:db8::7")) + bytes(4)
    for decode, args in ((decode_add_v1, v1), (decode_add_v2, v2)):
        with pytest.raises(XdrError, match="trailing"):
            decode(args)
    assert decode_add_v1(v1, trailing=True) == ipaddress.IPv4Address("192.0.2.7")
    assert decode_add_v2(v2, trailing=True) == ipaddress.IPv6Address("2001:db8::7")


def test_program_numbers_and_result_codes_are_drac_x_s() -> None:
    """docs/drac.x, as literals: what every DRAC client and server on the wire agrees on."""
    assert (DRACPROG, DRACVERS, DRACVERS6, DRACPROC_NULL, DRACPROC_ADD) == (900101, 1, 2, 0, 1)
    assert [(stat.name, stat.value) for stat in AddStat] == [
        ("ADD_SUCCESS", 0), ("ADD_PERM", 1), ("ADD_SYSERR", 2), ("ADD_UNKOWN", 3)]
    assert encode_addstat(AddStat.ADD_SYSERR) == bytes.fromhex("00000002")


def test_addstat_round_trip_and_unknowns() -> None:
    for stat in AddStat:
        assert encode_addstat(stat) == stat.to_bytes(4, "big")
        assert decode_addstat(encode_addstat(stat)) is stat
    with pytest.raises(XdrError, match="unknown addstat"):
        decode_addstat(b"\0\0\0\4")
    with pytest.raises(XdrError):
        decode_addstat(b"\0\0\0")
    with pytest.raises(XdrError):
        decode_addstat(b"\0\0\0\0\0\0\0\0")


# --- properties -------------------------------------------------------------


@FAST
@given(st.binary(max_size=80))
def test_decode_add_v1_only_raises_xdr_error(data: bytes) -> None:
    try:
        assert decode_add_v1(data).version == 4
    except XdrError:
        assert len(data) != 4


@FAST
@given(st.one_of(st.binary(max_size=80), st.lists(st.integers(-300, 300), min_size=15, max_size=17).map(
    lambda words: b"".join(w.to_bytes(4, "big", signed=True) for w in words))))
def test_decode_add_v2_only_raises_xdr_error(data: bytes) -> None:
    try:
        assert decode_add_v2(data).version == 6
    except XdrError:
        pass


@FAST
@given(st.binary(max_size=16))
def test_decode_addstat_only_raises_xdr_error(data: bytes) -> None:
    try:
        assert decode_addstat(data) in set(AddStat)
    except XdrError:
        pass


@FAST
@given(st.binary(max_size=64), st.integers(0, 100))
def test_unpacker_only_raises_xdr_error(data: bytes, limit: int) -> None:
    reader = Unpacker(data)
    for read in (reader.uint, reader.int, lambda: reader.opaque(limit), lambda: reader.string(limit)) * 4:
        try:
            read()
        except XdrError:
            pass
        assert 0 <= reader.pos <= len(data)


@FAST
@given(st.ip_addresses(v=4))
def test_v1_round_trip(address: ipaddress.IPv4Address) -> None:
    args = encode_add_args(address)
    assert len(args) == 4
    assert decode_add_v1(args) == address


@FAST
@given(st.ip_addresses(v=6), st.booleans())
def test_v2_round_trip(address: ipaddress.IPv6Address, sign_extend: bool) -> None:
    args = encode_add_args(address, sign_extend=sign_extend)
    assert len(args) == 64
    words = [int.from_bytes(args[i : i + 4], "big", signed=True) for i in range(0, 64, 4)]
    if sign_extend:
        assert all(-128 <= w <= 127 for w in words)
    else:
        assert all(0 <= w <= 255 for w in words)
    assert decode_add_v2(args) == address


@FAST
@given(st.lists(st.one_of(
    st.tuples(st.just("uint"), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("int"), st.integers(-(1 << 31), (1 << 31) - 1)),
    st.tuples(st.just("opaque"), st.binary(max_size=20)),
    st.tuples(st.just("string"), st.text(max_size=10)),
), max_size=10))
def test_packer_unpacker_round_trip(items: list[tuple[str, object]]) -> None:
    packer = Packer()
    for kind, value in items:
        getattr(packer, kind)(value)
    data = packer.bytes()
    assert len(data) % 4 == 0
    reader = Unpacker(data)
    for kind, value in items:
        got = getattr(reader, kind)(1000) if kind in ("opaque", "string") else getattr(reader, kind)()
        assert got == value
    reader.done()
