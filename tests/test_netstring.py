"""Netstring framing: whole strings out of any pieces, typed errors for bad input."""

from __future__ import annotations

import pytest

from dracd.server.netstring import NetstringError, NetstringReader, NetstringTooLong, encode

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit


def test_encode() -> None:
    assert encode(b"") == b"0:,"
    assert encode(b"drac 192.0.2.7") == b"14:drac 192.0.2.7,"


@pytest.mark.parametrize("piece", [1, 3, 4096])
def test_pieces(piece: int) -> None:
    payloads = [b"drac 192.0.2.7", b"", b"x" * 10000, b"drac ipv6:2001:db8:0:0:0:0:0:7"]
    stream = b"".join(encode(p) for p in payloads)
    reader = NetstringReader()
    out = []
    for i in range(0, len(stream), piece):
        out += reader.feed(stream[i : i + piece])
    assert out == payloads
    assert not reader.pending


def test_several_in_one_feed_and_partial_tail() -> None:
    reader = NetstringReader()
    assert reader.feed(b"1:a,2:bc,3:d") == [b"a", b"bc"]
    assert reader.pending
    assert reader.feed(b"ef,") == [b"def"]


@pytest.mark.parametrize("data", [b"x:a,", b"-1:a,", b"01:a,", b":a,", b"1a:,", b" 1:a,", b"1:ab,", b"1:a;"])
def test_bad_framing(data: bytes) -> None:
    reader = NetstringReader()
    with pytest.raises(NetstringError) as info:
        reader.feed(data)
    assert not isinstance(info.value, NetstringTooLong)
    with pytest.raises(NetstringError):  # stays broken
        reader.feed(b"1:a,")


def test_bad_prefix_detected_before_the_colon() -> None:
    with pytest.raises(NetstringError):
        NetstringReader().feed(b"GET ")


@pytest.mark.parametrize("data", [b"10001:", b"99999999", b"123456", b"123456:", b"100000:x"])
def test_too_long(data: bytes) -> None:
    reader = NetstringReader()
    with pytest.raises(NetstringTooLong):
        for byte in data:
            reader.feed(bytes([byte]))
    with pytest.raises(NetstringTooLong):
        NetstringReader().feed(data)  # all at once, colon included


def test_custom_limit() -> None:
    reader = NetstringReader(max_length=5)
    assert reader.feed(b"5:abcde,") == [b"abcde"]
    with pytest.raises(NetstringTooLong):
        reader.feed(b"6:")


def test_the_default_limit_is_postfix_s_10000_bytes() -> None:
    """socketmap_table(5): 10000, written here as a literal, not taken from the module."""
    reader = NetstringReader()
    assert reader.feed(b"10000:" + b"x" * 10000 + b",") == [b"x" * 10000]
    with pytest.raises(NetstringTooLong, match="10001 bytes exceeds 10000"):
        reader.feed(b"10001:")


def test_a_broken_reader_raises_the_same_error_again_whatever_comes() -> None:
    reader = NetstringReader()
    with pytest.raises(NetstringError) as first:
        reader.feed(b"1:ab,")
    for more in (b"", b"1:a,", b"x"):
        with pytest.raises(NetstringError) as again:
            reader.feed(more)
        assert again.value is first.value
