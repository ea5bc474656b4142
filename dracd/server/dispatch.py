"""RPC dispatch: an explicit (program, version, procedure) -> handler table.

Everything the protocol says about errors lives here (RFC 5531 §9): wrong
RPC version, unknown program, version or procedure, undecodable
arguments, and handlers that fail. A handler exception becomes SYSTEM_ERR
and is logged; the server keeps serving.

A handler is called synchronously and returns its results (answered at
once), ``PENDING`` (it answers later through ``ctx.reply``), or a
coroutine (an ``async def`` handler), which runs as a task and is answered
when it finishes. The synchronous forms exist for the hot path: a task and
its handles cost more than the whole DRAC ADD.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

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

from ..keys import IPAddress
from ..metrics import Metrics
from ..ratelog import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeerCred:
    """The credentials of a caller on a UNIX socket (SO_PEERCRED, SO_PEERGROUPS)."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


class Pending(enum.Enum):
    """What a handler returns when it will answer later, through ``ctx.reply``."""

    PENDING = "pending"


PENDING: Final = Pending.PENDING

#: Sends a whole reply message to the caller of one call (the transport's part).
Respond = Callable[[bytes], None]


def _nobody(reply: bytes) -> None:
    """The default ``respond``: a context built outside a transport answers no one."""


@dataclass(slots=True)
class CallContext:
    """Who called, and how; what handlers need besides the arguments.
    ``caller`` is None on a UNIX socket, where ``cred`` says who it is.
    Not frozen: one is built per call, and a frozen dataclass costs three times as much."""

    caller: IPAddress | None
    port: int
    transport: str
    call: Call
    cred: PeerCred | None = None
    respond: Respond = _nobody

    def __str__(self) -> str:
        who = f"uid {self.cred.uid}" if self.cred is not None else str(self.caller)
        return f"{who}/{self.transport}"

    def reply(self, results: bytes) -> None:
        """Answer SUCCESS with ``results``: for handlers that returned PENDING."""
        self.respond(encode_accepted(self.call.xid, AcceptStat.SUCCESS, results))


class AuthRefused(Exception):
    """Raised by a handler to refuse the caller at the RPC level (MSG_DENIED, AUTH_ERROR)."""

    def __init__(self, stat: AuthStat = AuthStat.AUTH_TOOWEAK) -> None:
        super().__init__(stat.name)
        self.stat = stat


#: Results now, PENDING (answers through ctx.reply), or a coroutine to run as a task.
Handler = Callable[[bytes, CallContext], bytes | Pending | Coroutine[Any, Any, bytes]]


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


def _settle(future: asyncio.Future[bytes | None], reply: bytes) -> None:
    if not future.done():  # the awaiting handle() may have been cancelled
        future.set_result(reply)


class Dispatcher:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._handlers: dict[int, dict[int, dict[int, Handler]]] = {}
        self.metrics = metrics if metrics is not None else Metrics()
        #: The same table without the versions not served over UDP: there they do not exist.
        self._udp_handlers: dict[int, dict[int, dict[int, Handler]]] = {}
        #: A failing handler logs its traceback once a minute per procedure, not per call.
        self.limited = RateLimitedLog(log)
        #: Coroutine handlers running; held here so they are not garbage-collected mid-call.
        self.tasks: set[asyncio.Task[None]] = set()

    def register(self, prog: int, vers: int, proc: int, handler: Handler, *, udp: bool = True) -> None:
        """``udp=False``: the version is not served over UDP, where a call to it gets
        PROG_MISMATCH (give the same for all its procedures)."""
        self._handlers.setdefault(prog, {}).setdefault(vers, {})[proc] = handler
        if udp:
            self._udp_handlers.setdefault(prog, {}).setdefault(vers, {})[proc] = handler

    def versions(self, prog: int, transport: str | None = None) -> list[int]:
        """The versions of ``prog`` served (over ``transport``, if given)."""
        return sorted((self._udp_handlers if transport == "udp" else self._handlers).get(prog, {}))

    def dispatch(self, message: bytes, caller: IPAddress | None, port: int, transport: str,
                 cred: PeerCred | None, respond: Respond) -> bytes | Pending | None:
        """The reply to ``message`` if it is known now; PENDING if ``respond`` will be called
        with it (once, maybe before this returns; never if the server stops first, which
        cancels coroutine handlers); None when there is nobody to answer. Never raises."""
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
        if call.cred.flavor != AuthFlavor.AUTH_NONE:  # AUTH_NONE: nothing to check
            auth = check_auth(call.cred)
            if auth != AuthStat.AUTH_OK:
                self.metrics.rpc_errors.inc(auth.name)
                return encode_auth_error(call.xid, auth)
        versions = (self._udp_handlers if transport == "udp" else self._handlers).get(call.prog)
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
        ctx = CallContext(caller, port, transport, call, cred, respond)
        try:
            results = handler(call.args, ctx)
        except Exception as exc:
            return self._failed(ctx, exc)
        if isinstance(results, bytes):
            return encode_accepted(call.xid, AcceptStat.SUCCESS, results)
        if results is PENDING:
            return PENDING
        task = asyncio.get_running_loop().create_task(self._finish(results, ctx))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return PENDING

    async def _finish(self, results: Coroutine[Any, Any, bytes], ctx: CallContext) -> None:
        """Run a coroutine handler and answer with what it returns (or the error it raises)."""
        try:
            reply = encode_accepted(ctx.call.xid, AcceptStat.SUCCESS, await results)
        except Exception as exc:
            reply = self._failed(ctx, exc)
        ctx.respond(reply)

    def _failed(self, ctx: CallContext, exc: Exception) -> bytes:
        """The reply for a handler that raised ``exc``."""
        call = ctx.call
        if isinstance(exc, AuthRefused):
            self.metrics.rpc_errors.inc(exc.stat.name)
            return encode_auth_error(call.xid, exc.stat)
        if isinstance(exc, XdrError):
            self.metrics.rpc_errors.inc("GARBAGE_ARGS")
            log.info("garbage arguments from %s (prog %d vers %d proc %d): %s",
                     ctx.caller, call.prog, call.vers, call.proc, exc)
            return encode_accepted(call.xid, AcceptStat.GARBAGE_ARGS)
        self.metrics.rpc_errors.inc("SYSTEM_ERR")
        self.limited.error(f"failed-{call.prog}.{call.vers}.{call.proc}", "procedure %d.%d.%d failed for %s",
                           call.prog, call.vers, call.proc, ctx.caller, exc_info=exc)
        return encode_accepted(call.xid, AcceptStat.SYSTEM_ERR)

    async def handle(
        self, message: bytes, caller: IPAddress | None, port: int, transport: str, cred: PeerCred | None = None
    ) -> bytes | None:
        """The reply to ``message``, or None when there is nobody to answer (waits for it)."""
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        reply = self.dispatch(message, caller, port, transport, cred, lambda r: _settle(future, r))
        if reply is PENDING:
            return await future
        return reply
