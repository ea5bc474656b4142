"""One exception tree for every way a DRAC call can fail.

Every error is a :class:`DracError`; its message is one line that names the
server, e.g. ``cannot reach dracd on 127.0.0.1: timed out after 5.0 s``.
When :func:`dracclient.add` raises because no server took the address, the
error is the first server's and carries every server's outcome in
:attr:`DracError.results`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rpc import Reply


class DracError(Exception):
    """The DRAC call failed."""

    #: Set by ``add()`` on the error it raises: one result per server, in the order given.
    results: list[ServerResult] | None = None


@dataclass(frozen=True)
class ServerResult:
    """What one server made of an ``add()``: ``error`` is None if it took the address."""

    server: str  # as given by the caller
    error: DracError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class RpcTimeout(DracError):
    """No reply arrived before the deadline."""


class Unavailable(DracError):
    """The server could not be reached (connection refused, not registered with rpcbind)."""


class BadReply(DracError):
    """The server answered with bytes that are not a valid reply."""


class RpcRefused(DracError):
    """The server answered the call with an RPC-level error (wrong program or
    version, authentication refused, garbage arguments, system error)."""

    def __init__(self, reply: Reply, peer: str | None = None) -> None:
        status = reply.accept_stat or reply.auth_stat or reply.reject_stat
        detail = f" {reply.mismatch}" if reply.mismatch else ""
        name = status.name if status is not None else "?"
        super().__init__(f"{peer} refused the call: {name}{detail}" if peer else f"RPC refused: {name}{detail}")
        self.reply = reply


class PermissionRefused(DracError):
    """The server refused the caller (ADD_PERM): check its allow list."""


class ServerError(DracError):
    """The server could not record the address (ADD_SYSERR or ADD_UNKOWN)."""


class InvalidRequest(ServerError):
    """The server rejected the request itself (ADD_UNKOWN, ADMIN_INVAL): not a
    unicast host address, or a lifetime over its limit. Trying again will not help."""
