"""Client for DRAC (Dynamic Relay Authorization Control) servers."""

from .client import add, ping
from .drac import DRACPROG, DRACVERS, DRACVERS6, AddStat
from .errors import (
    BadReply,
    DracError,
    PermissionRefused,
    RpcRefused,
    RpcTimeout,
    ServerError,
    Unavailable,
)

__all__ = [
    "add",
    "ping",
    "AddStat",
    "DRACPROG",
    "DRACVERS",
    "DRACVERS6",
    "BadReply",
    "DracError",
    "PermissionRefused",
    "RpcRefused",
    "RpcTimeout",
    "ServerError",
    "Unavailable",
]
