"""ONC RPC version 2 messages (RFC 5531), encoded and decoded on bytes only."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TypeVar

from .xdr import Packer, Unpacker, XdrError

RPC_VERSION = 2
#: RFC 5531 §8.2: "opaque body<400>".
MAX_AUTH_BYTES = 400


class MsgType(enum.IntEnum):
    CALL = 0
    REPLY = 1


class ReplyStat(enum.IntEnum):
    MSG_ACCEPTED = 0
    MSG_DENIED = 1


class AcceptStat(enum.IntEnum):
    SUCCESS = 0
    PROG_UNAVAIL = 1
    PROG_MISMATCH = 2
    PROC_UNAVAIL = 3
    GARBAGE_ARGS = 4
    SYSTEM_ERR = 5


class RejectStat(enum.IntEnum):
    RPC_MISMATCH = 0
    AUTH_ERROR = 1


class AuthStat(enum.IntEnum):
    AUTH_OK = 0
    AUTH_BADCRED = 1
    AUTH_REJECTEDCRED = 2
    AUTH_BADVERF = 3
    AUTH_REJECTEDVERF = 4
    AUTH_TOOWEAK = 5
    AUTH_INVALIDRESP = 6
    AUTH_FAILED = 7


class AuthFlavor(enum.IntEnum):
    AUTH_NONE = 0
    AUTH_SYS = 1
    AUTH_SHORT = 2
    AUTH_DH = 3
    RPCSEC_GSS = 6


class RpcError(XdrError):
    """A message that is valid XDR but not an RPC message we can act on."""


class NotACall(RpcError):
    """The message is a reply (or unknown type) where a call was expected."""


class RpcVersionMismatch(RpcError):
    """The call uses an RPC version other than 2; it must be answered RPC_MISMATCH."""

    def __init__(self, xid: int, rpcvers: int) -> None:
        super().__init__(f"RPC version {rpcvers}, expected {RPC_VERSION}")
        self.xid = xid


@dataclass(frozen=True, slots=True)
class OpaqueAuth:
    flavor: int
    body: bytes = b""


AUTH_NONE = OpaqueAuth(AuthFlavor.AUTH_NONE)


@dataclass(frozen=True, slots=True)
class Call:
    xid: int
    prog: int
    vers: int
    proc: int
    cred: OpaqueAuth
    verf: OpaqueAuth
    args: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded reply. ``accept_stat`` is set for accepted replies, ``reject_stat``
    for denied ones; ``mismatch`` carries (low, high) for PROG_MISMATCH and
    RPC_MISMATCH; ``results`` holds the undecoded procedure results."""

    xid: int
    reply_stat: ReplyStat
    accept_stat: AcceptStat | None = None
    reject_stat: RejectStat | None = None
    auth_stat: AuthStat | None = None
    mismatch: tuple[int, int] | None = None
    verf: OpaqueAuth = AUTH_NONE
    results: bytes = b""


def _pack_auth(packer: Packer, auth: OpaqueAuth) -> None:
    packer.uint(auth.flavor).opaque(auth.body)


def _unpack_auth(reader: Unpacker) -> OpaqueAuth:
    flavor = reader.uint()
    return OpaqueAuth(flavor, reader.opaque(MAX_AUTH_BYTES))


_E = TypeVar("_E", bound=enum.IntEnum)


def _enum(kind: type[_E], value: int) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise RpcError(f"unknown {kind.__name__} {value}") from None


def encode_call(
    xid: int,
    prog: int,
    vers: int,
    proc: int,
    args: bytes = b"",
    *,
    cred: OpaqueAuth = AUTH_NONE,
    verf: OpaqueAuth = AUTH_NONE,
) -> bytes:
    packer = Packer().uint(xid).uint(MsgType.CALL).uint(RPC_VERSION)
    packer.uint(prog).uint(vers).uint(proc)
    _pack_auth(packer, cred)
    _pack_auth(packer, verf)
    return packer.raw(args).bytes()


_CALL_HEAD = struct.Struct(">8I")  # xid, CALL, 2, prog, vers, proc, cred flavor, cred length
_AUTH_HEAD = struct.Struct(">2I")


def _padded(length: int) -> int:
    return (length + 3) & ~3


def _fast_call(data: bytes) -> Call | None:
    """A well-formed call in two struct calls (a server's hot path); None for anything
    else, which the field-by-field path then decodes or explains."""
    if len(data) < 40:
        return None
    xid, mtype, rpcvers, prog, vers, proc, flavor, length = _CALL_HEAD.unpack_from(data)
    if mtype != MsgType.CALL or rpcvers != RPC_VERSION or length > MAX_AUTH_BYTES:
        return None
    verf_at = 32 + _padded(length)
    if len(data) < verf_at + 8:
        return None
    vflavor, vlength = _AUTH_HEAD.unpack_from(data, verf_at)
    args_at = verf_at + 8 + _padded(vlength)
    if vlength > MAX_AUTH_BYTES or len(data) < args_at:
        return None
    if data[32 + length : verf_at].strip(b"\0") or data[verf_at + 8 + vlength : args_at].strip(b"\0"):
        return None
    # Most calls carry AUTH_NONE twice (DRAC's clients do): no objects to build for it.
    cred = AUTH_NONE if flavor == length == 0 else OpaqueAuth(flavor, data[32 : 32 + length])
    verf = AUTH_NONE if vflavor == vlength == 0 else OpaqueAuth(vflavor, data[verf_at + 8 : verf_at + 8 + vlength])
    return Call(xid, prog, vers, proc, cred, verf, data[args_at:])


def decode_call(data: bytes) -> Call:
    """Decode a call message.

    Raises :class:`XdrError` (or its subclasses) for anything that is not a
    well-formed version 2 call; :class:`RpcVersionMismatch` carries the xid so
    the caller can still answer.
    """
    call = _fast_call(data)
    return call if call is not None else _careful_call(data)


def _careful_call(data: bytes) -> Call:
    reader = Unpacker(data)
    xid = reader.uint()
    if reader.uint() != MsgType.CALL:
        raise NotACall("not a call message")
    rpcvers = reader.uint()
    if rpcvers != RPC_VERSION:
        raise RpcVersionMismatch(xid, rpcvers)
    prog, vers, proc = reader.uint(), reader.uint(), reader.uint()
    cred = _unpack_auth(reader)
    verf = _unpack_auth(reader)
    return Call(xid, prog, vers, proc, cred, verf, reader.rest())


_ACCEPTED_OK = struct.Struct(">6I")  # xid, REPLY, MSG_ACCEPTED, AUTH_NONE verifier, SUCCESS


def encode_accepted(
    xid: int,
    stat: AcceptStat = AcceptStat.SUCCESS,
    results: bytes = b"",
    *,
    mismatch: tuple[int, int] | None = None,
    verf: OpaqueAuth = AUTH_NONE,
) -> bytes:
    if stat == AcceptStat.SUCCESS and verf == AUTH_NONE:
        return _ACCEPTED_OK.pack(xid, MsgType.REPLY, ReplyStat.MSG_ACCEPTED, 0, 0, AcceptStat.SUCCESS) + results
    packer = Packer().uint(xid).uint(MsgType.REPLY).uint(ReplyStat.MSG_ACCEPTED)
    _pack_auth(packer, verf)
    packer.uint(stat)
    if stat == AcceptStat.SUCCESS:
        packer.raw(results)
    elif stat == AcceptStat.PROG_MISMATCH:
        low, high = mismatch if mismatch is not None else (0, 0)
        packer.uint(low).uint(high)
    return packer.bytes()


def encode_rpc_mismatch(xid: int, low: int = RPC_VERSION, high: int = RPC_VERSION) -> bytes:
    packer = Packer().uint(xid).uint(MsgType.REPLY).uint(ReplyStat.MSG_DENIED)
    return packer.uint(RejectStat.RPC_MISMATCH).uint(low).uint(high).bytes()


def encode_auth_error(xid: int, stat: AuthStat) -> bytes:
    packer = Packer().uint(xid).uint(MsgType.REPLY).uint(ReplyStat.MSG_DENIED)
    return packer.uint(RejectStat.AUTH_ERROR).uint(stat).bytes()


def peek_xid(data: bytes) -> int | None:
    """The xid of a message, or None if it is too short to have one."""
    return Unpacker(data).uint() if len(data) >= 4 else None


def decode_reply(data: bytes) -> Reply:
    """Decode a reply message; raises :class:`XdrError` on anything malformed."""
    reader = Unpacker(data)
    xid = reader.uint()
    if reader.uint() != MsgType.REPLY:
        raise RpcError("not a reply message")
    reply_stat = _enum(ReplyStat, reader.uint())
    if reply_stat == ReplyStat.MSG_DENIED:
        reject = _enum(RejectStat, reader.uint())
        if reject == RejectStat.RPC_MISMATCH:
            mismatch = (reader.uint(), reader.uint())
            reader.done()
            return Reply(xid, ReplyStat.MSG_DENIED, reject_stat=RejectStat.RPC_MISMATCH, mismatch=mismatch)
        auth = _enum(AuthStat, reader.uint())
        reader.done()
        return Reply(xid, ReplyStat.MSG_DENIED, reject_stat=RejectStat.AUTH_ERROR, auth_stat=auth)
    verf = _unpack_auth(reader)
    accept = _enum(AcceptStat, reader.uint())
    if accept == AcceptStat.SUCCESS:
        return Reply(xid, ReplyStat.MSG_ACCEPTED, accept_stat=accept, verf=verf, results=reader.rest())
    prog_mismatch = None
    if accept == AcceptStat.PROG_MISMATCH:
        prog_mismatch = (reader.uint(), reader.uint())
    reader.done()
    return Reply(xid, ReplyStat.MSG_ACCEPTED, accept_stat=accept, mismatch=prog_mismatch, verf=verf)
