"""XDR (RFC 4506) encoding and a bounds-checked decoder, on bytes only.

Only the types ONC RPC and the DRAC protocol need are here. Every read checks
what remains and raises :class:`XdrError`, so a hostile byte string can only
ever produce that one error.
"""

from __future__ import annotations

import builtins
import struct

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")


class XdrError(ValueError):
    """The bytes are not a valid XDR encoding of what was expected."""


def pad(length: int) -> int:
    """Return the number of zero bytes that align ``length`` to 4 (RFC 4506 §3)."""
    return -length % 4


class Packer:
    """Accumulates XDR items into one byte string."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def uint(self, value: int) -> Packer:
        self._parts.append(_U32.pack(value))
        return self

    def int(self, value: int) -> Packer:
        self._parts.append(_I32.pack(value))
        return self

    def uhyper(self, value: builtins.int) -> Packer:
        self._parts.append(_U64.pack(value))
        return self

    def bool(self, value: builtins.bool) -> Packer:
        return self.uint(1 if value else 0)

    def opaque(self, data: bytes) -> Packer:
        """Variable-length opaque: length word, bytes, padding."""
        self._parts.append(_U32.pack(len(data)) + data + b"\0" * pad(len(data)))
        return self

    def string(self, text: str) -> Packer:
        return self.opaque(text.encode())

    def raw(self, data: bytes) -> Packer:
        """Already-encoded XDR (e.g. a procedure's arguments)."""
        self._parts.append(data)
        return self

    def bytes(self) -> bytes:
        return b"".join(self._parts)


class Unpacker:
    """Reads XDR items from ``data``; never reads past its end."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self._data = data
        self._pos = pos

    @property
    def pos(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise XdrError(f"need {size} bytes at offset {self._pos}, {self.remaining()} left")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def uint(self) -> int:
        value: int = _U32.unpack(self._take(4))[0]
        return value

    def int(self) -> int:
        value: int = _I32.unpack(self._take(4))[0]
        return value

    def uhyper(self) -> builtins.int:
        value: int = _U64.unpack(self._take(8))[0]
        return value

    def bool(self) -> builtins.bool:
        value = self.uint()
        if value > 1:
            raise XdrError(f"bool {value} is neither 0 nor 1")
        return value == 1

    def opaque(self, max_length: builtins.int) -> bytes:
        """Variable-length opaque of at most ``max_length`` bytes; padding must be zero."""
        length = self.uint()
        if length > max_length:
            raise XdrError(f"opaque of {length} bytes exceeds limit {max_length}")
        data = self._take(length)
        if self._take(pad(length)).strip(b"\0"):
            raise XdrError("non-zero XDR padding")
        return data

    def string(self, max_length: builtins.int) -> str:
        try:
            return self.opaque(max_length).decode()
        except UnicodeDecodeError as exc:
            raise XdrError(f"string is not UTF-8: {exc}") from None

    def rest(self) -> bytes:
        return self._take(self.remaining())

    def done(self) -> None:
        """Raise unless every byte has been consumed."""
        if self.remaining():
            raise XdrError(f"{self.remaining()} trailing bytes")
