"""RPC dispatch: an explicit (program, version, procedure) -> handler table.

Everything the protocol says about errors lives here (RFC 5531 §9): wrong
RPC version, unknown program, version or procedure, undecodable
arguments, and handlers that fail. A handler exception becomes SYSTEM_ERR
and is logged; the server keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dracclient.rpc import (
    AcceptStat,
    AuthFlavor,
    AuthStat,
    Call,
    OpaqueAuth,
    RpcVersionMismatch,
    decode_call,
    encode_accepted,
    encode_auth_error,
    encode_rpc_mismatch,
)
from dracclient.xdr import Unpacker, XdrError

from .keys import IPAddress
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeerCred:
    """The credentials of a caller on a UNIX socket (SO_PEERCRED, SO_PEERGROUPS)."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who called, and how; what handlers need besides the arguments.
    ``caller`` is None on a UNIX socket, where ``cred`` says who it is."""

    caller: IPAddress | None
    port: int
    transport: str
    call: Call
    cred: PeerCred | None = None

    def __str__(self) -> str:
        who = f"uid {self.cred.uid}" if self.cred is not None else str(self.caller)
        return f"{who}/{self.transport}"


class AuthRefused(Exception):
    """Raised by a handler to refuse the caller at the RPC level (MSG_DENIED, AUTH_ERROR)."""

    def __init__(self, stat: AuthStat = AuthStat.AUTH_TOOWEAK) -> None:
        super().__init__(stat.name)
        self.stat = stat


Handler = Callable[[bytes, CallContext], Awaitable[bytes]]


def _valid_auth_sys(body: bytes) -> bool:
    """RFC 5531 appendix A authsys_parms: stamp, machinename<255>, uid, gid, gids<16>."""
    try:
        reader = Unpacker(body)
        reader.uint()
        reader.opaque(255)
        reader.uint()
        reader.uint()
        count = reader.uint()
        if count > 16:
            return False
        for _ in range(count):
            reader.uint()
        reader.done()
    except XdrError:
        return False
    return True


def check_auth(cred: OpaqueAuth) -> AuthStat:
    """What the reference implementation accepts: AUTH_NONE and AUTH_SYS."""
    if cred.flavor == AuthFlavor.AUTH_NONE:
        return AuthStat.AUTH_OK
    if cred.flavor == AuthFlavor.AUTH_SYS:
        return AuthStat.AUTH_OK if _valid_auth_sys(cred.body) else AuthStat.AUTH_BADCRED
    return AuthStat.AUTH_REJECTEDCRED


class Dispatcher:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._handlers: dict[int, dict[int, dict[int, Handler]]] = {}
        self.metrics = metrics if metrics is not None else Metrics()

    def register(self, prog: int, vers: int, proc: int, handler: Handler) -> None:
        self._handlers.setdefault(prog, {}).setdefault(vers, {})[proc] = handler

    def versions(self, prog: int) -> list[int]:
        return sorted(self._handlers.get(prog, {}))

    async def handle(
        self, message: bytes, caller: IPAddress | None, port: int, transport: str, cred: PeerCred | None = None
    ) -> bytes | None:
        """The reply to ``message``, or None when there is nobody to answer."""
        try:
            call = decode_call(message)
        except RpcVersionMismatch as exc:
            self.metrics.rpc_errors.inc("RPC_MISMATCH")
            return encode_rpc_mismatch(exc.xid)
        except XdrError as exc:
            # As libtirpc does, an undecodable header is dropped: there is no xid to trust.
            self.metrics.rpc_errors.inc("dropped")
            log.debug("dropped %d-byte message from %s: %s", len(message), caller, exc)
            return None
        auth = check_auth(call.cred)
        if auth != AuthStat.AUTH_OK:
            self.metrics.rpc_errors.inc(auth.name)
            return encode_auth_error(call.xid, auth)
        versions = self._handlers.get(call.prog)
        if versions is None:
            self.metrics.rpc_errors.inc("PROG_UNAVAIL")
            return encode_accepted(call.xid, AcceptStat.PROG_UNAVAIL)
        procedures = versions.get(call.vers)
        if procedures is None:
            self.metrics.rpc_errors.inc("PROG_MISMATCH")
            return encode_accepted(call.xid, AcceptStat.PROG_MISMATCH, mismatch=(min(versions), max(versions)))
        handler = procedures.get(call.proc)
        if handler is None:
            self.metrics.rpc_errors.inc("PROC_UNAVAIL")
            return encode_accepted(call.xid, AcceptStat.PROC_UNAVAIL)
        try:
            results = await handler(call.args, CallContext(caller, port, transport, call, cred))
        except AuthRefused as exc:
            self.metrics.rpc_errors.inc(exc.stat.name)
            return encode_auth_error(call.xid, exc.stat)
        except XdrError as exc:
            self.metrics.rpc_errors.inc("GARBAGE_ARGS")
            log.info("garbage arguments from %s (prog %d vers %d proc %d): %s",
                     caller, call.prog, call.vers, call.proc, exc)
            return encode_accepted(call.xid, AcceptStat.GARBAGE_ARGS)
        except Exception:
            self.metrics.rpc_errors.inc("SYSTEM_ERR")
            log.exception("procedure %d.%d.%d failed for %s", call.prog, call.vers, call.proc, caller)
            return encode_accepted(call.xid, AcceptStat.SYSTEM_ERR)
        return encode_accepted(call.xid, AcceptStat.SUCCESS, results)
