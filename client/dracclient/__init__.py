"""Client for DRAC (Dynamic Relay Authorization Control) servers.

``add()`` and ``ping()`` block; ``dracclient.aio`` has asyncio twins with the
same signatures (imported on demand, so hooks that do not use it never load
asyncio).
"""

from .client import add, ping
from .drac import DRACPROG, DRACVERS, DRACVERS6, AddStat
from .errors import (
    BadReply,
    DracError,
    InvalidRequest,
    PermissionRefused,
    RpcRefused,
    RpcTimeout,
    ServerError,
    ServerResult,
    Unavailable,
)

#: The version of dracclient and of dracd, released together (dracd requires exactly this one).
__version__ = "0.1.0"

__all__ = [
    "__version__",
    "add",
    "ping",
    "ServerResult",
    "AddStat",
    "DRACPROG",
    "DRACVERS",
    "DRACVERS6",
    "BadReply",
    "DracError",
    "InvalidRequest",
    "PermissionRefused",
    "RpcRefused",
    "RpcTimeout",
    "ServerError",
    "Unavailable",
]
