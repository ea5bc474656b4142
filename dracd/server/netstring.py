"""Netstrings (https://cr.yp.to/proto/netstrings.txt), sans-IO.

``LENGTH ":" DATA ","`` with LENGTH in decimal, no sign, no leading zeros
(except ``0`` itself). Postfix's socketmap_table(5) frames every request
and reply this way and caps them at 10000 bytes; so do we.
"""

from __future__ import annotations

MAX_LENGTH = 10000


class NetstringError(ValueError):
    """The stream is not a valid netstring; it cannot be resynchronised."""


class NetstringTooLong(NetstringError):
    """A netstring announces more than the allowed length."""


def encode(data: bytes) -> bytes:
    """``data`` framed as one netstring."""
    return str(len(data)).encode() + b":" + data + b","


class NetstringReader:
    """Feed bytes in any pieces; get back the complete netstrings' payloads.

    After an error the reader stays broken: every later ``feed`` raises it again.
    """

    def __init__(self, max_length: int = MAX_LENGTH) -> None:
        self.max_length = max_length
        #: A longer length prefix is refused before its colon arrives.
        self._max_digits = len(str(max_length))
        self._buffer = bytearray()
        self._error: NetstringError | None = None

    @property
    def pending(self) -> bool:
        """Whether part of a netstring has arrived but not all of it."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        out: list[bytes] = []
        try:
            while (item := self._next()) is not None:
                out.append(item)
        except NetstringError as exc:
            self._error = exc
            raise
        return out

    def _next(self) -> bytes | None:
        colon = self._buffer.find(b":", 0, self._max_digits + 1)
        if colon < 0:
            head = bytes(self._buffer[: self._max_digits + 1])
            if not head.isdigit() and head:
                raise NetstringError(f"bad length prefix {head[:16]!r}")
            if len(head) > self._max_digits:
                raise NetstringTooLong(f"length prefix {head!r}... exceeds {self.max_length}")
            return None
        digits = bytes(self._buffer[:colon])
        if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
            raise NetstringError(f"bad length prefix {digits[:16]!r}")
        length = int(digits)
        if length > self.max_length:
            raise NetstringTooLong(f"netstring of {length} bytes exceeds {self.max_length}")
        end = colon + 1 + length
        if len(self._buffer) <= end:
            return None
        if self._buffer[end] != ord(","):
            raise NetstringError("netstring not terminated by ','")
        payload = bytes(self._buffer[colon + 1 : end])
        del self._buffer[: end + 1]
        return payload
