"""dracd: Dynamic Relay Authorization Control server, a drop-in for rpc.dracd."""

# One version for both distributions: dracd requires the dracclient of its own version.
from dracclient import __version__

__all__ = ["__version__"]
