"""Which configured sources let a local user forge a login line, in one sentence each.

A forged login line authorizes the forger's address to relay. Any local user
can send syslog messages with any tag and PID through /dev/log (``logger -t
ipop3d --id=4242``), and the syslog daemon writes them to the mail log like
the MRA's own, so in a syslog file a PID is only text; Dovecot and Courier
log no PID at all, and journald relays their syslog(3) lines unchanged, so
``logger -t dovecot`` writes exactly Dovecot's line. The plain syslog socket
gets whatever the syslog daemon forwards, and journald without
``executables`` names the program after SYSLOG_IDENTIFIER, the sender's
choice. What the kernel vouches for cannot be forged: journald's ``_PID``,
``_EXE`` and ``_UID``, and the sender credentials of the credential-checking
socket (:mod:`.sources`). The daemon logs these sentences as warnings at
start and reload; ``--check-config`` prints them.
"""

from __future__ import annotations

import contextlib
import os
import stat

from .config import LogwatchConfig

#: Where the warnings point: the sources a local user cannot forge.
FORGERY_PROOF = ("sources.journald with executables, or sources.syslog_socket with executables "
                 "(see SECURITY in dracd-logwatch(8))")


def forgeable_sources(config: LogwatchConfig) -> list[str]:
    """Why each configured source lets a local user forge a login line (one clause each)."""
    why = []
    for source in config.sources.files:
        if source.format == "syslog":
            why.append(f"{source.path} is a syslog file: any local user can write lines into it "
                       "(logger -t PROGRAM --id=PID), PID included")
            continue
        with contextlib.suppress(OSError):
            if stat.S_IMODE(os.stat(source.path).st_mode) & 0o022:
                why.append(f"{source.path} (Dovecot's own log file) may be written by group or others")
    if config.sources.syslog_socket is not None and not config.sources.syslog_socket_executables:
        why.append(f"the syslog socket {config.sources.syslog_socket} believes the tag and PID its writers "
                   "send, and a syslog daemon forwarding to it relays any local user's lines")
    journal = config.sources.journald
    if journal is not None and not journal.executables:
        why.append("journald without executables takes the program from SYSLOG_IDENTIFIER, which any local "
                   "user picks (logger -t PROGRAM)")
    return why


def forgery_warnings(config: LogwatchConfig) -> list[str]:
    """The warnings to give for ``config``'s forgeable sources."""
    return [f"{why}, so logins read from it can be forged: safe only on a host without untrusted local users; "
            f"elsewhere use {FORGERY_PROOF}" for why in forgeable_sources(config)]
