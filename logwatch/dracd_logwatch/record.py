"""Log lines become records: (program, PID, message), parsed once, up front.

Why up front: a pattern run over a whole log line can be fooled by text that
*another* program logged, e.g. an SMTP client's ``MAIL FROM`` that Postfix
writes into its reject line (that is how pop-before-smtp's qpopper pattern
once made an open relay). Here the header is split off first, and a preset
then only sees the message of a line whose program is its own.

Formats (no I/O here; every parser takes text and returns a record or None):

* syslog files, as rsyslog writes them: ``Mmm dd hh:mm:ss host prog[pid]: msg``
  (RSYSLOG_TraditionalFileFormat) or with an RFC 3339 timestamp
  (RSYSLOG_FileFormat, Debian 12's default);
* syslog datagrams (RFC 3164 as syslog(3) and ``logger`` send them, with or
  without timestamp and host, and RFC 5424);
* Dovecot's own log file (``log_path``/``info_log_path``):
  ``Mmm dd hh:mm:ss pop3-login: Info: Login: ...``. The file has a single
  writer, Dovecot's log process, so its lines need no tag;
* journald entries (``journalctl -o json``): the PID is journald's ``_PID``,
  which the kernel vouches for, never the ``[pid]`` a sender wrote.

A line with control characters is refused whole: a message is one line, and
an embedded newline would let a sender start a forged one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log message and who wrote it."""

    program: str
    #: None when the line carries no PID (``prog: msg``).
    pid: int | None
    message: str
    #: The source has a single writer (Dovecot's own log file): the program is
    #: known from the source, not from a tag, and a PID is not needed.
    sole_writer: bool = False
    #: journald's ``_EXE``: the sender's executable as the kernel reports it.
    exe: str | None = None
    #: journald's ``_UID`` (or the socket's SCM_CREDENTIALS): the sender's uid as the kernel reports it.
    uid: int | None = None


_TS3164 = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d"
_TS3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)"
_PROGRAM = r"[^\s\[\]:]+"
_TAG = rf"(?P<program>{_PROGRAM})(?:\[(?P<pid>\d{{1,10}})\])?: "
_HOST = r"[^\s\[\]:]+"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# In a file the host is always there, so it is simply the first field (an IPv6 literal included).
_FILE_LINE = re.compile(rf"(?:{_TS3164}|{_TS3339}) [^\s\[\]]+ {_TAG}(?P<message>.*)")
# syslog(3) sends no host; rsyslog's forwarding formats and `logger --rfc3164`
# do. A host is followed by a tag, and a tag ends in ':', which no host does.
_DATAGRAM_3164 = re.compile(
    rf"<(?P<pri>\d{{1,3}})>(?:(?:{_TS3164}|{_TS3339}) )?(?:{_HOST} (?={_PROGRAM}(?:\[\d+\])?: ))?{_TAG}"
    rf"(?P<message>.*)"
)
_DATAGRAM_5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) (?P<rest>.*)"
)
_TS_DOVECOT = r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?"
_DOVECOT_LINE = re.compile(
    rf"(?:(?:{_TS3164}|{_TS_DOVECOT}) )?(?P<service>\S+?): (?P<level>Debug|Info|Warning|Error|Fatal|Panic): "
    rf"(?P<message>.*)"
)


def _clean(text: str) -> str | None:
    """``text`` without its line ending; None if it holds other control characters."""
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return None if _CONTROL.search(text) else text


def _pid(text: str | None) -> int | None:
    return int(text) if text is not None else None


def parse_syslog_line(line: str) -> LogRecord | None:
    """A line of a syslog file (traditional or RFC 3339 timestamp, then host and tag)."""
    text = _clean(line)
    match = _FILE_LINE.fullmatch(text) if text is not None else None
    if match is None:
        return None
    return LogRecord(match["program"], _pid(match["pid"]), match["message"])


def parse_dovecot_line(line: str) -> LogRecord | None:
    """A line of Dovecot's own log file, as the record the ``dovecot`` syslog tag would give.

    ``Nov 28 19:32:36 pop3-login: Info: Login: ...`` becomes program ``dovecot``
    with message ``pop3-login: Login: ...``; other levels keep their label, so
    only Info lines look like what Dovecot sends to syslog.
    """
    text = _clean(line)
    match = _DOVECOT_LINE.fullmatch(text) if text is not None else None
    if match is None:
        return None
    level = "" if match["level"] == "Info" else f"{match['level']}: "
    return LogRecord("dovecot", None, f"{match['service']}: {level}{match['message']}", sole_writer=True)


def parse_syslog_datagram(data: bytes) -> LogRecord | None:
    """One datagram received on a syslog socket (RFC 3164 or RFC 5424)."""
    raw = data.rstrip(b"\0")
    text = _clean(raw.decode("utf-8", errors="replace"))
    if text is None:
        return None
    if (match := _DATAGRAM_5424.fullmatch(text)) is not None:
        return _rfc5424(match)
    if (match := _DATAGRAM_3164.fullmatch(text)) is not None:
        return LogRecord(match["program"], _pid(match["pid"]), match["message"])
    return None


def _rfc5424(match: re.Match[str]) -> LogRecord | None:
    """RFC 5424 §6: APP-NAME and PROCID are the tag; STRUCTURED-DATA is skipped."""
    app, procid = match["app"], match["procid"]
    if app == "-":
        return None
    message = _skip_structured_data(match["rest"])
    if message is None:
        return None
    message = message.removeprefix("\ufeff")
    return LogRecord(app, int(procid) if procid.isdigit() else None, message)


def _skip_structured_data(rest: str) -> str | None:
    """The MSG after STRUCTURED-DATA (``-`` or ``[id k="v"]...``); None if malformed."""
    if rest == "-" or rest.startswith("- "):
        return rest[2:]
    i = 0
    if not rest.startswith("["):
        return None
    while i < len(rest) and rest[i] == "[":
        i += 1
        in_quotes = False
        while True:
            if i >= len(rest):
                return None
            char = rest[i]
            if in_quotes and char == "\\":
                i += 2
                continue
            if char == '"':
                in_quotes = not in_quotes
            elif char == "]" and not in_quotes:
                i += 1
                break
            i += 1
    if i == len(rest):
        return ""
    return rest[i + 1:] if rest[i] == " " else None


def parse_journal_entry(entry: Mapping[str, Any]) -> LogRecord | None:
    """One ``journalctl -o json`` object.

    The program is SYSLOG_IDENTIFIER (what syslog files show; Dovecot's log
    process sends ``dovecot``), else ``_COMM``; the PID is ``_PID``, set by
    journald from the sender's credentials (the sender's own SYSLOG_PID is
    ignored). MESSAGE arrives as a list of bytes when it is not UTF-8: refused.
    """
    message = entry.get("MESSAGE")
    program = entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM")
    pid = entry.get("_PID")
    if not isinstance(message, str) or not isinstance(program, str) or not program:
        return None
    if not isinstance(pid, str) or not pid.isdigit():
        return None
    if _CONTROL.search(message) or _CONTROL.search(program) or " " in program:
        return None
    exe = entry.get("_EXE")
    uid = entry.get("_UID")
    return LogRecord(program, int(pid), message, exe=exe if isinstance(exe, str) else None,
                     uid=int(uid) if isinstance(uid, str) and uid.isdigit() else None)
