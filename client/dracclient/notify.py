"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.

``connect()`` opens the socket once, early, while the daemon still runs as
root: a datagram socket connected to the manager's socket keeps working
after ``user:`` dropped privileges, even if the new user may not search the
socket's directory (connect() checks the path, later sends do not).
``notify()`` uses that socket, and falls back to a fresh ``sendto`` (the
manager may have re-created its socket, e.g. after ``systemctl
daemon-reexec``). Paths and abstract (``@name``) sockets are supported.
"""

from __future__ import annotations

import os
import socket
import time

_sock: socket.socket | None = None


def _address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return None  # unset, or a kind we do not speak (vsock:...)
    return "\0" + address[1:] if address.startswith("@") else address


def connect() -> bool:
    """Connect to the service manager now; False if there is none (or it cannot be reached)."""
    global _sock
    address = _address()
    if address is None:
        return False
    close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        return False
    _sock = sock
    return True


def close() -> None:
    global _sock
    if _sock is not None:
        _sock.close()
        _sock = None


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. ``READY=1``, ``STATUS=...``) in one datagram; False if nobody got it."""
    message = "\n".join(states).encode()
    if _sock is not None:
        try:
            _sock.send(message)
            return True
        except OSError:
            pass
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def reloading() -> bool:
    """``RELOADING=1`` with ``MONOTONIC_USEC`` (CLOCK_MONOTONIC), as systemd >= 253 wants for
    Type=notify-reload; older managers ignore the extra field."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
