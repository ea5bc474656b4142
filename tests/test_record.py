"""TCP record marking (RFC 5531 §11): dracclient.record."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracclient.record import LAST_FRAGMENT, RecordReader, RecordTooLarge, encode_record
from dracclient.xdr import XdrError

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

FAST = settings(max_examples=200, deadline=None)


def mark(length: int, last: bool) -> bytes:
    return (length | (LAST_FRAGMENT if last else 0)).to_bytes(4, "big")


def test_encode_single_fragment() -> None:
    assert encode_record(b"abcdef") == bytes.fromhex("80000006") + b"abcdef"


def test_encode_zero_length_record() -> None:
    assert encode_record(b"") == bytes.fromhex("80000000")


def test_encode_splits_into_fragments_with_only_the_last_marked() -> None:
    assert encode_record(b"abcdefg", fragment_size=3) == (
        mark(3, False) + b"abc" + mark(3, False) + b"def" + mark(1, True) + b"g"
    )
    # An exact multiple: no empty trailing fragment.
    assert encode_record(b"abcdef", fragment_size=3) == mark(3, False) + b"abc" + mark(3, True) + b"def"


@pytest.mark.parametrize("size", [0, -1, 0x8000_0000])
@pytest.mark.parametrize("data", [b"x", b""])
def test_encode_rejects_bad_fragment_size(size: int, data: bytes) -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_record(data, fragment_size=size)


def test_encode_takes_the_extreme_fragment_sizes() -> None:
    assert encode_record(b"ab", fragment_size=1) == bytes.fromhex("00000001") + b"a" + bytes.fromhex("80000001") + b"b"
    assert encode_record(b"ab", fragment_size=0x7FFF_FFFF) == bytes.fromhex("80000002") + b"ab"


def test_round_trip() -> None:
    reader = RecordReader(1000)
    assert reader.feed(encode_record(b"hello")) == [b"hello"]
    assert reader.pending == 0


def test_several_records_in_one_feed() -> None:
    stream = encode_record(b"one") + encode_record(b"") + encode_record(b"three", fragment_size=2)
    assert RecordReader(100).feed(stream) == [b"one", b"", b"three"]


def test_zero_length_record_alone() -> None:
    reader = RecordReader(0)
    assert reader.feed(bytes.fromhex("80000000")) == [b""]
    assert reader.pending == 0


@pytest.mark.parametrize("piece", [1, 3, 4096])
def test_reader_fed_in_pieces(piece: int) -> None:
    records = [b"first record", bytes(range(256)) * 3, b"", b"last"]
    stream = b"".join(encode_record(r, fragment_size=100) for r in records)
    reader = RecordReader(10_000)
    got: list[bytes] = []
    for start in range(0, len(stream), piece):
        got += reader.feed(stream[start : start + piece])
    assert got == records
    assert reader.pending == 0


def test_multi_fragment_record_of_uneven_fragments() -> None:
    payload = bytes(range(13))
    stream = mark(1, False) + payload[:1] + mark(5, False) + payload[1:6] + mark(7, True) + payload[6:]
    reader = RecordReader(13)
    assert reader.feed(stream[:-1]) == []
    assert reader.feed(stream[-1:]) == [payload]


def test_empty_fragments_inside_a_record() -> None:
    stream = mark(0, False) + mark(2, False) + b"ab" + mark(0, False) + mark(0, True)
    assert RecordReader(2).feed(stream) == [b"ab"]


def test_pending_counts_unfinished_bytes() -> None:
    reader = RecordReader(100)
    assert reader.pending == 0
    assert reader.feed(b"\x80\x00") == []
    assert reader.pending == 2
    assert reader.feed(b"\x00\x05abc") == []
    assert reader.pending == 7
    assert reader.feed(b"de" + mark(3, False)) == [b"abcde"]
    assert reader.pending == 4
    assert reader.feed(b"xyz") == []
    # The finished fragment's data is still pending until the record completes.
    assert reader.pending == 3
    assert reader.feed(mark(1, True) + b"!") == [b"xyz!"]
    assert reader.pending == 0


def test_record_at_limit_is_accepted() -> None:
    assert RecordReader(10).feed(encode_record(b"0123456789", fragment_size=4)) == [b"0123456789"]


def test_too_large_raised_on_the_header_alone() -> None:
    reader = RecordReader(10)
    # Only the four header bytes: the data has not arrived yet.
    with pytest.raises(RecordTooLarge, match="exceeds 10"):
        reader.feed(mark(11, True))


def test_too_large_raised_when_fragments_add_up() -> None:
    reader = RecordReader(10)
    assert reader.feed(mark(6, False) + b"abcdef") == []
    with pytest.raises(RecordTooLarge):
        reader.feed(mark(5, True))


def test_huge_announcement_rejected_without_data() -> None:
    with pytest.raises(RecordTooLarge):
        RecordReader(1 << 16).feed(b"\xff\xff\xff\xff")


def test_limit_is_per_record() -> None:
    reader = RecordReader(4)
    stream = b"".join(encode_record(b"abcd") for _ in range(10))
    assert reader.feed(stream) == [b"abcd"] * 10


def test_record_too_large_is_an_xdr_error() -> None:
    assert issubclass(RecordTooLarge, XdrError)


def test_empty_fragments_do_not_accumulate() -> None:
    """A peer sending endless empty non-final fragments must not make the reader grow."""
    reader = RecordReader(16)
    chunk = mark(0, False) * 1000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            assert reader.feed(chunk) == []
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert reader.pending == 0
    assert grown < 64 * 1024, f"{grown} bytes kept for 50000 empty fragments"
    assert reader.feed(mark(1, True) + b"z") == [b"z"]


@FAST
@given(st.lists(st.binary(max_size=50), max_size=6), st.integers(1, 20), st.integers(1, 30))
def test_round_trip_any_fragmentation(records: list[bytes], fragment: int, piece: int) -> None:
    stream = b"".join(encode_record(r, fragment_size=fragment) for r in records)
    reader = RecordReader(50)
    got: list[bytes] = []
    for start in range(0, len(stream), piece):
        got += reader.feed(stream[start : start + piece])
    assert got == records
    assert reader.pending == 0


@FAST
@given(st.lists(st.binary(max_size=40), max_size=5), st.integers(0, 64))
def test_feed_only_raises_xdr_error(pieces: list[bytes], limit: int) -> None:
    reader = RecordReader(limit)
    try:
        for piece in pieces:
            for record in reader.feed(piece):
                assert len(record) <= limit
    except XdrError:
        pass
