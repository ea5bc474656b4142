"""One exception tree for every way a DRAC call can fail."""

from __future__ import annotations

from .rpc import Reply


class DracError(Exception):
    """The DRAC call failed."""


class RpcTimeout(DracError):
    """No reply arrived before the deadline."""


class Unavailable(DracError):
    """The server could not be reached (connection refused, not registered)."""


class BadReply(DracError):
    """The server answered with bytes that are not a valid reply."""


class RpcRefused(DracError):
    """The server answered the call with an RPC-level error."""

    def __init__(self, reply: Reply) -> None:
        status = reply.accept_stat or reply.auth_stat or reply.reject_stat
        detail = f" {reply.mismatch}" if reply.mismatch else ""
        super().__init__(f"RPC refused: {status.name if status is not None else '?'}{detail}")
        self.reply = reply


class PermissionRefused(DracError):
    """The server refused the caller (ADD_PERM): check its allow list."""


class ServerError(DracError):
    """The server could not record the address (ADD_SYSERR or ADD_UNKOWN)."""
