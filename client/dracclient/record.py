"""TCP record marking (RFC 5531 §11): a feed-bytes, get-records reader."""

from __future__ import annotations

import struct

from .xdr import XdrError

LAST_FRAGMENT = 0x8000_0000
MAX_FRAGMENT = 0x7FFF_FFFF
_MARK = struct.Struct(">I")


class RecordTooLarge(XdrError):
    """A record (the sum of its fragments) is longer than the reader's limit."""


def encode_record(data: bytes, fragment_size: int = MAX_FRAGMENT) -> bytes:
    """Frame ``data`` as one record, split into fragments of at most ``fragment_size``."""
    if fragment_size < 1 or fragment_size > MAX_FRAGMENT:
        raise ValueError(f"fragment size {fragment_size} out of range")
    parts = []
    offsets = range(0, len(data), fragment_size) if data else [0]
    for start in offsets:
        chunk = data[start : start + fragment_size]
        last = start + fragment_size >= len(data)
        parts.append(_MARK.pack(len(chunk) | (LAST_FRAGMENT if last else 0)) + chunk)
    return b"".join(parts)


class RecordReader:
    """Reassembles records from a byte stream delivered in arbitrary pieces.

    The limit applies to the whole record, checked as soon as a fragment
    header announces a length that would exceed it, so a peer cannot make
    us buffer more than ``max_record`` bytes.
    """

    def __init__(self, max_record: int) -> None:
        self.max_record = max_record
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._record_size = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every record they complete (possibly none)."""
        self._buffer += data
        records = []
        while len(self._buffer) >= 4:
            (mark,) = _MARK.unpack_from(self._buffer)
            length = mark & MAX_FRAGMENT
            if self._record_size + length > self.max_record:
                raise RecordTooLarge(
                    f"record of at least {self._record_size + length} bytes exceeds {self.max_record}"
                )
            if len(self._buffer) < 4 + length:
                break
            if length:
                # Empty fragments carry nothing; keeping them would let a peer grow the list forever.
                self._fragments.append(bytes(self._buffer[4 : 4 + length]))
            del self._buffer[: 4 + length]
            self._record_size += length
            if mark & LAST_FRAGMENT:
                records.append(b"".join(self._fragments))
                self._fragments.clear()
                self._record_size = 0
        return records

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete record."""
        return len(self._buffer) + self._record_size
