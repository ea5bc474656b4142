"""Giving up root after start-up, and the one thing root is still needed for.

dracd binds, registers with rpcbind and opens its map as root, then runs as
an unprivileged user. rpcbind lets only a registration's owner
("superuser" for ours) remove it, so a tiny helper process keeps root,
waits for dracd to exit (its pipe closes), unregisters and removes the
admin socket, and exits. It never reads anything but that pipe.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
from collections.abc import Callable
from dataclasses import dataclass

from .process import show_helper


class PrivilegeError(Exception):
    """The user or group does not exist, or dropping privileges did not work."""


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int


def resolve(user: str, group: str | None) -> RunAs:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"no such user {user!r}") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"no such group {group!r}") from None
    return RunAs(entry.pw_name, entry.pw_uid, gid)


def start_guard(cleanup: Callable[[], None]) -> int:
    """Fork the root helper; returns the pipe end whose closing (our exit) sets it off."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        try:
            show_helper()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
            # Sockets, the map lock and the event loop's descriptors stay with dracd alone.
            os.closerange(3, read_end)
            os.closerange(read_end + 1, 65536)
            while os.read(read_end, 1):
                pass
            cleanup()
        finally:
            os._exit(0)
    os.close(read_end)
    return write_end


def drop(run_as: RunAs) -> None:
    """setgroups, setgid, setuid for real, then make sure root cannot come back."""
    os.setgroups([])
    os.setgid(run_as.gid)
    os.setuid(run_as.uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("root privileges could be regained after setuid")
