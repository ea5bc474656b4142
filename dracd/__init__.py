"""dracd: Dynamic Relay Authorization Control server, a drop-in for rpc.dracd."""

__version__ = "0.1.0"
