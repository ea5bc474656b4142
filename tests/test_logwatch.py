"""dracd-logwatch without I/O: log lines -> records -> logins -> what to authorize, and the config.

Where each sample line's format comes from (addresses are replaced by
documentation addresses, 192.0.2.0/24, 198.51.100.0/24 and 2001:db8::/32):

* Dovecot: captured from Debian 12's Dovecot 2.3.19.1 on this machine: its
  own log file (``log_path``) and, with /dev/log pointed at a test socket in
  a private mount namespace, the syslog datagrams it sends (``dovecot:``,
  no PID: Dovecot's log process calls openlog() without LOG_PID), and the
  failed login of a crafted user name from the Dovecot of
  tests/fixtures/dovecot.py. The ``dovecot[PID]:`` form comes from relays
  that add the sender's PID (rsyslog's ``SysSock.UsePIDFromSystem``);
  journald relays syslog(3) datagrams to the syslog daemon unchanged, with
  no PID (tests/test_logwatch_forgery.py).
* UW ipop3d/imapd: the syslog() format strings of alpine-2.26's imap tree
  (ipopd/ipop3d.c, imapd/imapd.c, osdep/unix/env_unix.c; host from
  tcp_clienthost() in osdep/unix/tcp_unix.c), openlog(LOG_PID).
* Courier: ``LOGIN, user=..., ip=[...], port=[...], protocol=...`` from
  courier-libs' imap/pop3dserver.c and imap/imaplogin.c, sent to syslog
  by liblog/logger.c (courierlogger: openlog() without LOG_PID; the
  ``-name=`` tag, pop3d/imapd).
* qpopper: the ``POP login by user`` line is quoted from a user's log on a
  forum thread (in.qpopper 4.0.9); the ``Stats:`` line follows qpopper's
  pop_log format as pop-before-smtp's config documents it.
* Cyrus: a line published in the README of "greengrocer" (FastMail's log
  search tool), with the tag Debian's ``syslog_prefix`` gives
  (``cyrus/imap``); format string ``login: %s %s%s %s%s %s`` of Cyrus
  imapd.c/pop3d.c 2.x-3.x.
* popa3d: ``Session from %s`` (standalone.c, in the forked child) and
  ``Authentication %s for %s`` (pop_auth.c), as pop-before-smtp's config
  and its contrib/popa3d patch (``... -- [IP]``) show them.
* journald: entries shaped like ``journalctl -o json`` output per
  systemd.journal-fields(7); tests/test_logwatch_journald.py runs a real
  systemd-journald and journalctl.

Courier, Cyrus and popa3d lines captured from the real daemons are in
tests/vectors/logwatch/ and tested by tests/test_logwatch_captured.py.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dracd_logwatch import cli
from dracd_logwatch.config import LogwatchConfig, config_from_dict, load_config, validate
from dracd_logwatch.policy import (
    Policy,
    expand,
    parse_address,
    parse_mynetworks,
    postfix_mynetworks,
    prefix_problem,
)
from dracd_logwatch.presets import PRESETS, SESSION_TTL, Login, Matcher, RuleOptions, preset_rule
from dracd_logwatch.record import (
    LogRecord,
    parse_dovecot_line,
    parse_journal_entry,
    parse_syslog_datagram,
    parse_syslog_line,
)
from dracd_logwatch.sources import Journal

ALL = [preset_rule(name, RuleOptions()) for name in PRESETS]
H = "Nov 28 19:33:18 mail"  # a traditional rsyslog file header (timestamp, host)
H3339 = "2023-06-12T10:00:00.123456+02:00 mail"  # Debian 12's rsyslog default (RFC 3339)


def address_of(line: str, rules: list[Any] = ALL, parse: Any = parse_syslog_line) -> str | None:
    """The address one line authorizes (after validation), or None."""
    record = parse(line)
    if record is None:
        return None
    login = Matcher(rules).match(record)
    if login is None:
        return None
    address = parse_address(login.ip)
    return str(address) if address is not None else None


# -- every preset against real-format lines ---------------------------------------------------

ACCEPTED = [
    # Dovecot 2.3 via syslog directly (no PID), via journald (PID), RFC 3339 header, IPv6, mapped.
    (f"{H} dovecot: pop3-login: Login: user=<alice>, method=PLAIN, rip=192.0.2.1, lip=192.0.2.254, "
     "mpid=1137, secured, session=<x46mP1thvuZ/AAAB>", "192.0.2.1"),
    (f"{H} dovecot[812]: imap-login: Login: user=<alice>, method=PLAIN, rip=2001:db8::7, lip=2001:db8::1, "
     "mpid=1139, secured, session=<bLymP1thuIEAAAAAAAAAAAAAAAAAAAAB>", "2001:db8::7"),
    (f"{H3339} dovecot[812]: imap-login: Login: user=<bob@example.org>, method=LOGIN, rip=::ffff:192.0.2.2, "
     "lip=::ffff:192.0.2.254, mpid=1140, TLS, session=<AAAAAAAAAAAAAAAB>", "192.0.2.2"),
    # UW ipop3d: Login / Admin Login / Auth / APOP (mailbox opened: nmsgs=); imapd: Login / Authenticated.
    (f"{H} ipop3d[4242]: Login user=alice host=client.example.org [192.0.2.3] nmsgs=3/3", "192.0.2.3"),
    (f"{H} ipop3d[4242]: Admin Login user=alice host=[192.0.2.4] nmsgs=0/0", "192.0.2.4"),
    (f"{H} ipop3d[4242]: Auth user=alice host=[2001:db8::4] nmsgs=0/2", "2001:db8::4"),
    (f"{H} ipop3d[4242]: APOP user=alice host=dsl-5.example.net [192.0.2.5] nmsgs=1/1", "192.0.2.5"),
    (f"{H3339} imapd[4243]: Login user=alice host=client.example.org [192.0.2.6]", "192.0.2.6"),
    (f"{H} imapd[4243]: Authenticated user=alice host=[::ffff:192.0.2.7] mech=PLAIN", "192.0.2.7"),
    # Courier (courierlogger: no PID; journald adds one).
    (f"{H} pop3d: LOGIN, user=alice, ip=[::ffff:192.0.2.8], port=[51234], protocol=POP3", "192.0.2.8"),
    (f"{H} imapd-ssl[77]: LOGIN, user=alice@example.org, ip=[2001:db8::8], port=[443], protocol=IMAP",
     "2001:db8::8"),
    (f"{H} pop3d: LOGIN, user=alice, ip=[::ffff:192.0.2.9], port=[51235], protocol=POP3, stls=1", "192.0.2.9"),
    # qpopper.
    (f"{H} in.qpopper[7596]: (v4.0.9) POP login by user \"nick\" at (yw-out-2526.example.com) 192.0.2.10 "
     "[pop_log.c:244]", "192.0.2.10"),
    (f"{H} popper[7597]: Stats: nick 0 0 2 1234 client.example.org 192.0.2.11", "192.0.2.11"),
    # Cyrus.
    (f"{H3339} cyrus/imap[4101108]: login: frontend1.example.net [192.0.2.12] robntest plaintext User logged in "
     "SESSIONID=<sloti30t15-4101108-1450760746-1-6931901653674999381>", "192.0.2.12"),
    (f"{H} cyrus/pop3[99]: login: [2001:db8::12] alice plaintext+TLS User logged in", "2001:db8::12"),
    # popa3d with pop-before-smtp's patch (the stock two-line form: test_popa3d_joins_lines_by_pid).
    (f"{H} popa3d[321]: Authentication passed for alice -- [192.0.2.13]", "192.0.2.13"),
]


@pytest.mark.parametrize(("line", "expected"), ACCEPTED)
def test_presets_find_the_client_address(line: str, expected: str) -> None:
    assert address_of(line) == expected


def test_each_preset_only_reads_its_own_programs() -> None:
    for line, _ in ACCEPTED:
        record = parse_syslog_line(line)
        assert record is not None
        matching = {rule.name for rule in ALL if Matcher([rule]).match(record) is not None}
        assert len(matching) == 1, (line, matching)


DOVECOT_OWN_LOG = [
    # Captured from Dovecot 2.3.19.1's log_path file (addresses replaced).
    ("Nov 28 19:32:36 pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=192.0.2.20, lip=192.0.2.254, "
     "mpid=811, secured, session=<Fz8sPVthgoV/AAAB>", "192.0.2.20"),
    ("Nov 28 19:32:42 imap-login: Info: Login: user=<alice>, method=PLAIN, rip=2001:db8::20, lip=2001:db8::1, "
     "mpid=852, secured, session=<8YqBPVthAKgAAAAAAAAAAAAAAAAAAAAB>", "2001:db8::20"),
    # log_timestamp = "%Y-%m-%d %H:%M:%S "
    ("2024-01-02 03:04:05 pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=192.0.2.21, lip=192.0.2.254, "
     "mpid=1, session=<A>", "192.0.2.21"),
]


@pytest.mark.parametrize(("line", "expected"), DOVECOT_OWN_LOG)
def test_dovecot_own_log_file(line: str, expected: str) -> None:
    assert address_of(line, parse=parse_dovecot_line) == expected
    # The file carries no PID; it needs none (one writer), even when syslog lines must have one.
    strict = [preset_rule("dovecot", RuleOptions(require_pid=True))]
    assert address_of(line, strict, parse=parse_dovecot_line) == expected
    # A syslog file never yields such a line as Dovecot's.
    assert address_of(line) is None


NOTHING = [
    # Failed or unfinished logins.
    f"{H} dovecot: pop3-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 2 secs): "
    "user=<alice>, method=PLAIN, rip=192.0.2.30, lip=192.0.2.254, secured, session=<B6AsPVthhoV/AAAB>",
    f"{H} dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<x>, method=PLAIN, "
    "rip=192.0.2.30, lip=192.0.2.254, TLS, session=<B6AsPVthhoV/AAAB>",
    f"{H} ipop3d[4242]: Login failed user=alice auth=alice host=[192.0.2.31]",
    f"{H} ipop3d[4242]: AUTHENTICATE PLAIN failure host=[192.0.2.31]",
    f"{H} ipop3d[4242]: Login user=alice host=[192.0.2.31] no mailbox",
    f"{H} imapd[4243]: Login anonymous=guest host=[192.0.2.31]",
    f"{H} imapd[4243]: Authenticated anonymous=guest host=[192.0.2.31]",
    f"{H} imapd[4243]: Preauthenticated user=alice host=UNKNOWN",
    f"{H} imapd[4243]: Login user=alice host=SSH_CLIENT=192.0.2.31",
    f"{H} pop3d: LOGIN FAILED, user=alice, ip=[::ffff:192.0.2.32]",
    f"{H} cyrus/imap[9]: badlogin: client.example.org [192.0.2.33] plaintext alice SASL(-13): "
    "authentication failure: checkpass failed",
    f"{H} cyrus/imap[9]: login: client.example.org [192.0.2.33] anonymous x User logged in",
    f"{H} popa3d[321]: Authentication failed for alice -- [192.0.2.34]",
    # Captured: a failed POP3 login whose user name forges the fields that follow it.
    f"{H} dovecot: pop3-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 0 secs): "
    "user=<x>, method=PLAIN, rip=192.0.2.9, lip=>, method=PLAIN, rip=198.51.100.8, lip=192.0.2.254, "
    "session=<pIN4Z1thocZ/AAAI>",
    # Unrelated lines of the same programs, and of others.
    f"{H} dovecot: pop3(alice)<811><Fz8sPVthgoV/AAAB>: Disconnected: Logged out top=0/0, retr=0/0, del=0/0, size=0",
    f"{H} dovecot: master: Dovecot v2.3.19.1 (9b53102964) starting up for pop3, imap (core dumps disabled)",
    f"{H} ipop3d[4242]: Logout user=alice host=[192.0.2.35]",
    f"{H} postfix/smtpd[5150]: connect from unknown[192.0.2.36]",
    f"{H} sshd[77]: Accepted password for alice from 192.0.2.37 port 51234 ssh2",
    # Not a unicast host address.
    f"{H} ipop3d[4242]: Login user=alice host=[0.0.0.0] nmsgs=0/0",
    f"{H} ipop3d[4242]: Login user=alice host=[224.0.0.1] nmsgs=0/0",
    f"{H} ipop3d[4242]: Login user=alice host=[255.255.255.255] nmsgs=0/0",
    f"{H} ipop3d[4242]: Login user=alice host=[ff02::1] nmsgs=0/0",
    f"{H} ipop3d[4242]: Login user=alice host=[999.1.2.3] nmsgs=0/0",
    # A host name long enough for %.80s to cut the address short.
    f"{H} ipop3d[4242]: Login user=alice host={(('a' * 58) + '.example.org [2001:db8:1:2:3:4:5:6]')[:80]} "
    "nmsgs=0/0",
]


@pytest.mark.parametrize("line", NOTHING)
def test_failed_and_unrelated_lines_authorize_nothing(line: str) -> None:
    assert address_of(line) is None


FORGED = [
    # `logger -t x ...`: the right words, the wrong program.
    f"{H} x[123]: Login user=a host=b [192.0.2.40] nmsgs=0/0",
    f"{H} x: dovecot: pop3-login: Login: user=<a>, method=PLAIN, rip=192.0.2.40, lip=192.0.2.254",
    # The right program but no PID, where the program always logs one.
    f"{H} ipop3d: Login user=a host=b [192.0.2.41] nmsgs=0/0",
    f"{H} cyrus/imap: login: [192.0.2.41] alice plaintext User logged in",
    f"{H} in.qpopper: (v4.0.9) POP login by user \"a\" at (b) 192.0.2.41",
    # Another program's message quoting a login line (client-chosen text in a Postfix log line).
    f"{H} postfix/smtpd[5150]: NOQUEUE: reject: RCPT from unknown[198.51.100.7]: 554 5.7.1 <x@example.org>: "
    "Relay access denied; from=<a> to=<x@example.org> proto=ESMTP helo=< ipop3d[1]: Login user=a host=b "
    "[192.0.2.42] nmsgs=0/0>",
    f"{H} postfix/smtpd[5150]: warning: Illegal address syntax from unknown[198.51.100.7] in MAIL command: "
    "ipop3d[1]: Login user=a host=b [192.0.2.42]",
    # The historical pop-before-smtp hole: an unanchored qpopper pattern matched this MAIL FROM.
    f"{H} postfix/smtpd[5150]: NOQUEUE: reject: RCPT from x[198.51.100.7]: 554 Relay access denied; "
    "from=<\"POP login by user \"admin\" at (h) 192.0.2.43@example.org\">",
    f"{H} sendmail[66]: x1: \"POP login by user \"admin\" at (h) 192.0.2.43\"... Relaying denied",
    # A forged header inside the message of a real one.
    f"{H} imapd[4243]: Login user={H} ipop3d[1]: host=[192.0.2.44]",
    # A username crafted to look like a header, in a failed-login line.
    f"{H} dovecot: pop3-login: Disconnected (auth failed): user=< dovecot: pop3-login: Login: user=<a>, "
    "method=PLAIN, rip=192.0.2.45, lip=1.2.3.4>, method=PLAIN, rip=198.51.100.9, lip=192.0.2.254",
]


@pytest.mark.parametrize("line", FORGED)
def test_forged_lines_authorize_nothing(line: str) -> None:
    assert address_of(line) is None


def test_forged_lines_in_dovecots_own_log_authorize_nothing() -> None:
    # Another Dovecot service logging client-chosen text (a mailbox name) that quotes a login.
    line = ("Nov 28 19:32:42 imap(alice)<850><sNxDPVthxNR/AAAB>: Info: Mailbox created: pop3-login: Info: Login: "
            "user=<a>, method=PLAIN, rip=192.0.2.46, lip=192.0.2.254")
    assert address_of(line, parse=parse_dovecot_line) is None
    assert address_of("Nov 28 19:32:42 pop3-login: Error: Login: user=<a>, method=PLAIN, rip=192.0.2.46, "
                      "lip=192.0.2.254", parse=parse_dovecot_line) is None


def test_embedded_newlines_never_start_a_line() -> None:
    forged = "\nNov 28 19:33:18 mail ipop3d[1]: Login user=a host=[192.0.2.47] nmsgs=0/0"
    assert parse_syslog_line(f"{H} x[1]: hello{forged}") is None
    assert parse_syslog_datagram(f"<13>x[1]: hello{forged}".encode()) is None
    assert parse_syslog_datagram(b"<13>ipop3d[1]: Login user=a host=[192.0.2.47] nmsgs=0/0\n") is not None
    entry = {"MESSAGE": f"hello{forged}", "SYSLOG_IDENTIFIER": "ipop3d", "_PID": "1"}
    assert parse_journal_entry(entry) is None


def test_require_pid_can_be_asked_of_any_preset() -> None:
    strict = [preset_rule("dovecot", RuleOptions(require_pid=True))]
    line = "pop3-login: Login: user=<a>, method=PLAIN, rip=192.0.2.48, lip=192.0.2.254"
    assert address_of(f"{H} dovecot: {line}", strict) is None
    assert address_of(f"{H} dovecot[9]: {line}", strict) == "192.0.2.48"
    relaxed = [preset_rule("uw", RuleOptions(require_pid=False, programs=("ipop3s",)))]
    assert address_of(f"{H} ipop3s: Login user=a host=[192.0.2.49] nmsgs=0/0", relaxed) == "192.0.2.49"
    assert address_of(f"{H} ipop3d[1]: Login user=a host=[192.0.2.49] nmsgs=0/0", relaxed) is None


def test_popa3d_joins_lines_by_pid() -> None:
    now = [1000.0]
    matcher = Matcher([preset_rule("popa3d", RuleOptions())], clock=lambda: now[0])

    def feed(line: str) -> Login | None:
        record = parse_syslog_line(f"{H} {line}")
        assert record is not None
        return matcher.match(record)

    assert feed("popa3d[10]: Session from 192.0.2.50") is None
    assert feed("popa3d[11]: Session from 2001:db8::50") is None
    assert feed("popa3d[12]: Authentication passed for carol") is None  # no session for this PID
    assert feed("x[10]: Authentication passed for alice") is None  # another program
    login = feed("popa3d[10]: Authentication passed for alice")
    assert login is not None and login.ip == "192.0.2.50"
    assert feed("popa3d[10]: Authentication passed for alice") is None  # used once
    assert feed("popa3d[11]: Authentication failed for bob") is None
    now[0] += SESSION_TTL + 1  # a session that never logs in is forgotten
    assert feed("popa3d[11]: Authentication passed for bob") is None


def test_file_line_headers() -> None:
    message = "Login user=a host=[192.0.2.5] nmsgs=0/0"
    expected = LogRecord("ipop3d", 7, message)
    assert parse_syslog_line(f"Nov  2 01:02:03 mail ipop3d[7]: {message}") == expected
    assert parse_syslog_line(f"2023-06-12T10:00:00Z 2001:db8::5 ipop3d[7]: {message}") == expected
    assert parse_syslog_line(f"2023-06-12T10:00:00.1+02:00 mail ipop3d[7]: {message}") == expected
    assert parse_syslog_line(f"mail ipop3d[7]: {message}") is None  # no timestamp
    assert parse_syslog_line(f"Nov  2 01:02:03 ipop3d[7]: {message}") is None  # no host
    assert parse_syslog_line(f"Nov  2 01:02:03 mail ipop3d[7]:{message}") is None


def test_datagram_formats() -> None:
    expected = LogRecord("ipop3d", 4242, "Login user=u host=h [192.0.2.9] nmsgs=0/0")
    # As util-linux logger sends them: default (no host), --rfc3164 (host), --rfc5424.
    assert parse_syslog_datagram(b"<13>Nov 28 19:34:56 ipop3d[4242]: Login user=u host=h [192.0.2.9] nmsgs=0/0") \
        == expected
    assert parse_syslog_datagram(b"<13>Nov 28 19:34:56 vm ipop3d[4242]: Login user=u host=h [192.0.2.9] "
                                 b"nmsgs=0/0") == expected
    assert parse_syslog_datagram(b'<13>1 2026-11-28T19:34:56.248090+00:00 vm ipop3d 4242 - [timeQuality '
                                 b'tzKnown="1" isSynced="0"] Login user=u host=h [192.0.2.9] nmsgs=0/0') == expected
    assert parse_syslog_datagram(b"<13>ipop3d[4242]: Login user=u host=h [192.0.2.9] nmsgs=0/0") == expected
    # As Dovecot 2.3.19.1 sent it to /dev/log (captured).
    record = parse_syslog_datagram(b"<22>Nov 28 19:33:18 dovecot: pop3-login: Login: user=<alice>, method=PLAIN, "
                                   b"rip=127.0.0.1, lip=127.0.0.1, mpid=1137, secured, session=<x46mP1thvuZ/AAAB>")
    assert record is not None and (record.program, record.pid) == ("dovecot", None)
    assert parse_syslog_datagram(b"<13>1 2026-11-28T19:34:56Z vm ipop3d - - - hello") == \
        LogRecord("ipop3d", None, "hello")
    assert parse_syslog_datagram(b'<13>1 2026-11-28T19:34:56Z vm ipop3d 1 - [a b="]"] hi') == \
        LogRecord("ipop3d", 1, "hi")
    for junk in (b"", b"hello", b"<13>", b'<13>1 2026-11-28T19:34:56Z vm ipop3d 1 - [unterminated hi'):
        assert parse_syslog_datagram(junk) is None


# -- journald -------------------------------------------------------------------------------

JOURNAL_DOVECOT = {
    "__CURSOR": "s=0123;i=4a2;b=89ab;m=1f2e3d;t=60f1e2d3c4b5a;x=1a2b3c4d", "__REALTIME_TIMESTAMP": "1700000000000000",
    "PRIORITY": "6", "SYSLOG_FACILITY": "2", "SYSLOG_IDENTIFIER": "dovecot", "_PID": "812", "_UID": "0",
    "_GID": "0", "_COMM": "log", "_EXE": "/usr/lib/dovecot/log", "_CMDLINE": "dovecot/log",
    "_SYSTEMD_UNIT": "dovecot.service", "_TRANSPORT": "syslog",
    "MESSAGE": "pop3-login: Login: user=<alice>, method=PLAIN, rip=192.0.2.60, lip=192.0.2.254, mpid=9, secured, "
               "session=<x46mP1thvuZ/AAAB>",
}
JOURNAL_UW = {
    "PRIORITY": "6", "SYSLOG_FACILITY": "2", "SYSLOG_IDENTIFIER": "ipop3d", "SYSLOG_PID": "1", "_PID": "4242",
    "_UID": "1000", "_COMM": "ipop3d", "_EXE": "/usr/sbin/ipop3d", "_TRANSPORT": "syslog",
    "MESSAGE": "Login user=alice host=[2001:db8::61] nmsgs=0/0",
}


def test_journal_entries_use_journalds_pid() -> None:
    record = parse_journal_entry(JOURNAL_DOVECOT)
    assert record == LogRecord("dovecot", 812, JOURNAL_DOVECOT["MESSAGE"], exe="/usr/lib/dovecot/log", uid=0)
    uw = parse_journal_entry(JOURNAL_UW)
    assert uw is not None and uw.pid == 4242  # _PID, not the sender's SYSLOG_PID
    assert Matcher(ALL).match(uw) == Login(ALL[1], "2001:db8::61")
    # No SYSLOG_IDENTIFIER: the kernel's _COMM names the program.
    assert parse_journal_entry({**JOURNAL_UW, "SYSLOG_IDENTIFIER": None}) == uw
    for broken in ({**JOURNAL_UW, "MESSAGE": [76, 111, 103]}, {**JOURNAL_UW, "_PID": None},
                   {**JOURNAL_UW, "_PID": "x"}, {k: v for k, v in JOURNAL_UW.items() if k != "MESSAGE"}):
        assert parse_journal_entry(broken) is None


def test_journal_handles_lines_and_filters_executables() -> None:
    seen: list[LogRecord] = []
    journal = Journal(seen.append, programs=["ipop3d", "dovecot"], executables=["/usr/lib/dovecot/log"])
    journal.handle(json.dumps(JOURNAL_DOVECOT).encode())
    journal.handle(json.dumps(JOURNAL_UW).encode())  # /usr/sbin/ipop3d is not listed
    journal.handle(json.dumps({**JOURNAL_DOVECOT, "_EXE": "/tmp/dovecot"}).encode())  # a look-alike
    journal.handle(b"not json\n")
    journal.handle(b"[1, 2]\n")
    assert [r.program for r in seen] == ["dovecot"]
    assert journal.arguments() == [
        "journalctl", "--follow", "--output=json", "--lines=0", "--quiet",
        "SYSLOG_IDENTIFIER=dovecot", "SYSLOG_IDENTIFIER=ipop3d", "+", "_COMM=dovecot", "_COMM=ipop3d",
    ]


def test_journal_runs_and_restarts_journalctl(tmp_path: Path) -> None:
    """The subprocess plumbing, with a stand-in for journalctl that prints entries and exits."""
    fake = tmp_path / "journalctl.py"
    fake.write_text("import json, sys\n"
                    f"print(json.dumps({JOURNAL_UW!r}), flush=True)\n"
                    "print('x' * 10, flush=True)\n")
    seen: list[LogRecord] = []
    journal = Journal(seen.append, command=[sys.executable, str(fake)], restart_delay=0.05)

    async def scenario() -> None:
        task = asyncio.create_task(journal.run())
        try:
            for _ in range(250):
                if len(seen) >= 2:
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert len(seen) >= 2 and seen[0].pid == 4242  # read, exited, restarted, read again


def test_journal_keeps_trying_without_journalctl(caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(lambda record: None, command=["/nonexistent/journalctl"], restart_delay=0.01)

    def failures() -> int:
        return sum("cannot run /nonexistent/journalctl" in r.getMessage() for r in caplog.records)

    async def scenario() -> None:
        task = asyncio.create_task(journal.run())
        try:
            # Tried, failed, waited, tried again: a retry, not a one-off attempt (bounded: 10 s).
            for _ in range(1000):
                if failures() >= 2 or task.done():
                    break
                await asyncio.sleep(0.01)
            assert not task.done(), "Journal.run() ended instead of trying again"
            assert failures() >= 2, "Journal.run() did not try journalctl again within 10 s"
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


# -- addresses, trusted networks, de-duplication, prefixes ---------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("192.0.2.1", "192.0.2.1"), ("2001:db8::1", "2001:db8::1"), ("::ffff:192.0.2.1", "192.0.2.1"),
    ("[192.0.2.1]", "192.0.2.1"), ("2001:DB8::A", "2001:db8::a"), ("127.0.0.1", "127.0.0.1"),
    ("0.0.0.0", None), ("::", None), ("255.255.255.255", None), ("224.0.0.5", None), ("ff05::2", None),
    ("240.0.0.1", None), ("fe80::1%eth0", None), ("192.0.2", None), ("", None), ("::ffff:0.0.0.0", None),
])
def test_only_unicast_host_addresses(text: str, expected: str | None) -> None:
    address = parse_address(text)
    assert (str(address) if address is not None else None) == expected


def login(ip: str, **options: Any) -> Login:
    return Login(preset_rule("uw", RuleOptions(**options)), ip)


def test_trusted_networks_are_skipped() -> None:
    policy = Policy([ipaddress.ip_network("192.0.2.0/25"), ipaddress.ip_network("2001:db8::/64")])
    assert policy.decide(login("192.0.2.5")) is None
    assert policy.decide(login("::ffff:192.0.2.5")) is None
    assert policy.decide(login("2001:db8::5")) is None
    decided = policy.decide(login("192.0.2.200"))
    assert decided is not None and decided.entries == (ipaddress.ip_address("192.0.2.200"),)
    # A network entry inside a trusted network is skipped too; one that overlaps it is not.
    assert policy.decide(login("2001:db8::7", prefix6=64)) is None
    decided = policy.decide(login("192.0.2.201", prefix4=24))
    assert decided is not None and decided.entries == (ipaddress.ip_network("192.0.2.0/24"),)


def write_main_cf(directory: Path, text: str) -> None:
    """A main.cf dated in the past: Postfix waits a second or two before reading a file
    modified within the last second (in case it is still being written)."""
    path = directory / "main.cf"
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


def test_postfix_mynetworks(tmp_path: Path) -> None:
    networks, skipped = parse_mynetworks("127.0.0.0/8, [::ffff:127.0.0.0]/104 [::1]/128\n 192.0.2.0/28 "
                                         "hash:/etc/postfix/network_table /etc/postfix/nets !192.0.2.5")
    assert networks == [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::ffff:127.0.0.0/104", "::1/128",
                                                          "192.0.2.0/28")]
    assert skipped == ["hash:/etc/postfix/network_table", "/etc/postfix/nets", "!192.0.2.5"]
    write_main_cf(tmp_path, "mynetworks = 198.51.100.0/24, [2001:db8:5::]/48\n")
    assert [str(n) for n in postfix_mynetworks(tmp_path)] == ["198.51.100.0/24", "2001:db8:5::/48"]


def test_dedup_window() -> None:
    now = [0.0]
    policy = Policy(dedup=60, clock=lambda: now[0])
    first = policy.decide(login("192.0.2.70"))
    assert first is not None
    assert policy.decide(login("192.0.2.70")) is None
    assert policy.decide(login("::ffff:192.0.2.70")) is None  # the same client
    assert policy.decide(login("192.0.2.71")) is not None
    now[0] = 59.0
    assert policy.decide(login("192.0.2.70")) is None
    now[0] = 61.0
    assert policy.decide(login("192.0.2.70")) is not None
    policy.forget(first)  # a failed ADD: the next login retries
    assert policy.decide(login("192.0.2.70")) is not None
    assert Policy(dedup=0, clock=lambda: 0.0).decide(login("192.0.2.70")) is not None


def test_prefix_becomes_network_entries_the_mtas_match() -> None:
    def entries(text: str, prefix4: int = 32, prefix6: int = 128) -> list[str]:
        return [str(entry) for entry in expand(ipaddress.ip_address(text), prefix4, prefix6)[1]]

    assert entries("192.0.2.77", prefix4=24) == ["192.0.2.0/24"]
    assert entries("192.0.2.77", prefix4=16) == ["192.0.0.0/16"]
    assert entries("192.0.2.77", prefix4=23) == ["192.0.2.0/24", "192.0.3.0/24"]
    assert entries("2001:db8:1:2::77", prefix6=64) == ["2001:db8:1:2::/64"]
    assert entries("2001:db8:1:2::77", prefix6=48) == ["2001:db8:1::/48"]
    assert len(entries("2001:db8:1:2::77", prefix6=56)) == 256  # a /56 is 256 /64 entries
    assert len(entries("192.0.2.77", prefix4=26)) == 62  # below a /24: host addresses
    for prefix, networks, problem in ((64, True, None), (56, True, None), (55, True, "more than 256"),
                                      (120, False, None), (64, False, "target.admin_socket"),
                                      (112, True, None), (116, True, "more than 256")):
        found = prefix_problem(prefix, 6, networks)
        assert (found is None) if problem is None else (problem in (found or "")), (prefix, found)
    assert prefix_problem(24, 4, False) is None and "admin_socket" in (prefix_problem(23, 4, False) or "")


def test_prefix_expansion_to_hosts_for_the_drac_protocol() -> None:
    hosts_of = functools.partial(expand, networks=False)
    network, hosts = hosts_of(ipaddress.ip_address("192.0.2.77"), 24, 128)
    assert str(network) == "192.0.2.0/24" and len(hosts) == 254
    assert str(hosts[0]) == "192.0.2.1" and str(hosts[-1]) == "192.0.2.254"
    network, hosts = hosts_of(ipaddress.ip_address("198.51.100.255"), 24, 128)  # from a wider network
    assert len(hosts) == 255 and ipaddress.ip_address("198.51.100.255") in hosts
    network, hosts = hosts_of(ipaddress.ip_address("2001:db8::1:77"), 32, 120)
    assert str(network) == "2001:db8::1:0/120" and len(hosts) == 255
    assert hosts_of(ipaddress.ip_address("192.0.2.77"), 32, 128) == (None, (ipaddress.ip_address("192.0.2.77"),))
    policy = Policy([ipaddress.ip_network("192.0.2.0/26")], networks=False)
    decided = policy.decide(login("192.0.2.77", prefix4=24, lifetime=600))
    assert decided is not None and decided.lifetime == 600 and len(decided.entries) == 254 - 63
    assert policy.decide(login("192.0.2.78", prefix4=24)) is None  # the same /24, recently sent


# -- config ----------------------------------------------------------------------------------

BASE = "sources: {files: [mail.log]}\npresets: [uw]\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "logwatch.yaml"
    path.write_text(text)
    return path


def test_config_credential_checking_socket(tmp_path: Path) -> None:
    from dracd.config import ConfigError

    path = write(tmp_path, "sources: {syslog_socket: {path: run/log, executables: [/usr/lib/dovecot/log]}}\n"
                           "presets: [dovecot]\n")
    config = validate(load_config(path))
    assert config.sources.syslog_socket == tmp_path / "run/log"
    assert config.sources.syslog_socket_executables == ("/usr/lib/dovecot/log",)
    assert config.sources.syslog_socket_users == ()
    config = load_config(write(tmp_path, "sources:\n"
                                         "  syslog_socket: {path: log, executables: [/x], users: [root, 65534, '7']}\n"
                                         "  journald: {executables: [/x], users: root}\n"))
    assert config.sources.syslog_socket_users == (0, 65534, 7)
    assert config.sources.journald is not None and config.sources.journald.users == (0,)
    for bad, key in (("{path: log, users: [root]}", "sources.syslog_socket.users"),
                     ("{path: log, executables: [/x], users: [no-such-user-here]}", "sources.syslog_socket.users"),
                     ("{executables: [/usr/sbin/ipop3d]}", "sources.syslog_socket.path"),
                     ("{path: log, executables: [ipop3d]}", "sources.syslog_socket.executables"),
                     ("{path: log, mode: 666}", "sources.syslog_socket.mode")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config(write(tmp_path, f"sources: {{syslog_socket: {bad}}}\n"))


def test_config_full_example(tmp_path: Path) -> None:
    path = write(tmp_path, """
sources:
  files:
    - /var/log/mail.log
    - {path: dovecot.log, format: dovecot}
  syslog_socket: run/logwatch.sock
  journald: {executables: [/usr/lib/dovecot/log]}
  from_start: true
  poll_interval: 0.5
presets:
  dovecot:
  uw: {lifetime: 30m, prefix4: 24, prefix6: 120, programs: [ipop3d, imapd, ipop3sd]}
patterns:
  - name: gnu-pop3d
    program: gnu-pop3d
    regex: 'User \\S+ logged in with mailbox \\S+ from (?P<ip>[0-9.]+)$'
    lifetime: 10m
target: {admin_socket: dracd.sock, timeout: 2s}
trusted: [10.0.0.0/8, "2001:db8::/32"]
postfix_mynetworks: postfix
dedup: 2m
log_level: debug
""")
    config = validate(load_config(path))
    assert [(f.path, f.format) for f in config.sources.files] == [
        (Path("/var/log/mail.log"), "syslog"), (tmp_path / "dovecot.log", "dovecot")]
    assert config.sources.syslog_socket == tmp_path / "run/logwatch.sock"
    assert config.sources.journald is not None and config.sources.journald.executables == ("/usr/lib/dovecot/log",)
    assert config.sources.from_start and config.sources.poll_interval == 0.5
    assert [name for name, _ in config.presets] == ["dovecot", "uw"]
    assert dict(config.presets)["uw"] == RuleOptions(1800, 24, 120, None, ("ipop3d", "imapd", "ipop3sd"))
    pattern = config.patterns[0]
    assert (pattern.name, pattern.programs, pattern.options.lifetime) == ("gnu-pop3d", ("gnu-pop3d",), 600)
    assert config.target.admin_socket == tmp_path / "dracd.sock" and config.target.timeout == 2.0
    assert [str(n) for n in config.trusted] == ["10.0.0.0/8", "2001:db8::/32"]
    assert config.postfix_mynetworks and config.postfix_config == tmp_path / "postfix"
    assert (config.dedup, config.log_level) == (120, "debug")
    rules = {rule.name: rule for rule in config.rules()}
    custom = rules["gnu-pop3d"]
    record = LogRecord("gnu-pop3d", 5, "User alice logged in with mailbox alice from 192.0.2.90")
    assert Matcher([custom]).match(record) == Login(custom, "192.0.2.90")
    assert Matcher([custom]).match(LogRecord("gnu-pop3d", None, record.message)) is None  # PID by default
    assert Matcher([custom]).match(LogRecord("other", 5, record.message)) is None
    assert Matcher([custom]).match(LogRecord("gnu-pop3d", 5, "x " + record.message)) is None  # from the start
    assert rules["uw"].programs == {"ipop3d", "imapd", "ipop3sd"}


def test_config_empty_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config == LogwatchConfig(source=str(tmp_path / "logwatch.yaml"))
    assert config.target.admin_socket == Path("/run/dracd/dracd.sock") and config.dedup == 60


CONFIG_ERRORS = [
    ("colour: red\n", "unknown key 'colour'"),
    (BASE + "sources: {files: [a], tail: 1}\n", "unknown key 'sources.tail'"),
    ("sources: {files: [{path: a, format: json}]}\npresets: [uw]\n", "'sources.files[0].format': expected one of"),
    ("sources: {files: 3}\npresets: [uw]\n", "'sources.files': expected a list"),
    ("sources: {files: [a], journald: maybe}\npresets: [uw]\n", "'sources.journald'"),
    ("sources: {files: [a], poll_interval: 0}\npresets: [uw]\n", "'sources.poll_interval'"),
    ("sources: {files: [a]}\npresets: [pop-before-smtp]\n", "unknown preset 'pop-before-smtp'"),
    ("sources: {files: [a]}\npresets: {uw: {lifetme: 5m}}\n", "unknown key 'presets.uw.lifetme'"),
    ("sources: {files: [a]}\npresets: {uw: {lifetime: 300}}\n", "'presets.uw.lifetime': expected a duration"),
    ("sources: {files: [a]}\npresets: {uw: {prefix4: 15}}\n", "'presets.uw.prefix4': /15 is shorter than /16"),
    ("sources: {files: [a]}\npresets: {uw: {prefix6: 32}}\n", "'presets.uw.prefix6': /32 is shorter than /48: "
     "a wider prefix than a /48 (one site's allocation) is a whole provider's customers"),
    ("sources: {files: [a]}\npresets: {uw: {prefix6: 50}}\n", "'presets.uw.prefix6': /50: it would take more "
     "than 256 entries"),
    ("sources: {files: [a]}\npresets: {uw: {prefix6: 64}}\ntarget: {servers: [127.0.0.1]}\n",
     "'presets.uw.prefix6': /64: the DRAC protocol carries host addresses only"),
    ("sources: {files: [a]}\npresets: {uw: {prefix6: 129}}\n", "'presets.uw.prefix6': expected a prefix length"),
    ("sources: {files: [a]}\npresets: {uw: {programs: ['ipop3d[1]']}}\n", "'presets.uw.programs'"),
    ("sources: {files: [a]}\npresets: {uw: {lifetime: 5m}}\ntarget: {servers: [127.0.0.1]}\n",
     "'presets.uw.lifetime': a lifetime per preset needs target.admin_socket"),
    ("sources: {files: [a]}\npresets: [uw]\ntarget: {servers: [127.0.0.1], admin_socket: /x}\n",
     "'target': give admin_socket or servers, not both"),
    ("sources: {files: [a]}\npresets: [uw]\ntarget: {admin_socket: ''}\n", "'target': give admin_socket or servers"),
    ("sources: {files: [a]}\npresets: [uw]\ntarget: {servers: [mail.example.org]}\n", "is not an IP address"),
    ("sources: {files: [a]}\npatterns: [{name: p, program: p, regex: 'from (\\S+)'}]\n",
     "'patterns[0].regex': needs a named group (?P<ip>...)"),
    ("sources: {files: [a]}\npatterns: [{name: p, program: p, regex: '(?P<ip>'}]\n",
     "'patterns[0].regex': not a valid regular expression"),
    ("sources: {files: [a]}\npatterns: [{name: p, regex: '(?P<ip>.*)'}]\n", "'patterns[0].program': give the "
     "program"),
    ("sources: {files: [a]}\npatterns: [{name: uw, program: p, regex: '(?P<ip>.*)'}]\n", "'patterns[0].name'"),
    ("sources: {files: [a]}\npatterns: [{program: p, regex: '(?P<ip>.*)'}]\n", "'patterns[0].name': required"),
    ("sources: {files: [a]}\npresets: [uw]\ndedup: 1 minute\n", "key 'dedup'"),
    ("sources: {files: [a]}\npresets: [uw]\ntrusted: [10.0.0.0/33]\n", "key 'trusted'"),
    ("presets: [uw]\n", "nothing to read"),
    ("sources: {files: [a]}\n", "nothing to match"),
    ("sources: [a\n", "line 2: invalid YAML"),
    ("- a\n", "expected a mapping of keys at the top level"),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_ERRORS)
def test_config_errors_name_file_and_key(tmp_path: Path, text: str, message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, text)
    assert cli.main(["-c", str(path), "--check-config"]) == 78
    err = capsys.readouterr().err
    assert err.startswith(f"dracd-logwatch: {path}"), err
    assert message in err, err


def test_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "sources: {files: [mail.log]}\npresets: [dovecot, uw]\ntrusted: [10.0.0.0/8]\n")
    assert cli.main(["-c", str(path), "--check-config"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert f"{path}: OK" in out and str(tmp_path / "mail.log") in out
    assert "rules dovecot, uw" in out and "1 trusted networks" in out and "/run/dracd/dracd.sock" in out
    # A syslog file is forgeable by any local user: said, without failing the check (issue 16).
    assert captured.err.startswith(f"dracd-logwatch: warning: {tmp_path / 'mail.log'} is a syslog file: any local "
                                   "user can write lines into it"), captured.err
    # The command line adds files and presets and replaces the target.
    assert cli.main(["-c", str(path), "--check-config", "--file", "other.log", "--preset", "courier",
                     "--server", "127.0.0.1", "--port", "1234"]) == 0
    out = capsys.readouterr().out
    assert str(Path("other.log").absolute()) in out and "rules dovecot, uw, courier" in out
    assert "DRAC servers 127.0.0.1 port 1234" in out
    # Postfix's mynetworks is read at check time, and a failure is a config error.
    (tmp_path / "pf").mkdir()
    write_main_cf(tmp_path / "pf", "mynetworks = 127.0.0.0/8 [::1]/128\n")
    path.write_text(path.read_text() + "postfix_mynetworks: pf\n")
    assert cli.main(["-c", str(path), "--check-config"]) == 0
    assert "3 trusted networks" in capsys.readouterr().out
    path.write_text(path.read_text().replace("postfix_mynetworks: pf", "postfix_mynetworks: nowhere"))
    assert cli.main(["-c", str(path), "--check-config"]) == 78
    assert "postconf" in capsys.readouterr().err


def test_command_line_without_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--file", "/var/log/mail.log", "--preset", "uw", "--admin-socket", "/tmp/x.sock",
                     "--check-config"]) == 0
    assert "sending to dracd's admin socket /tmp/x.sock" in capsys.readouterr().out
    assert cli.main(["--preset", "uw", "--check-config"]) == 78
    assert "nothing to read" in capsys.readouterr().err
    assert cli.main(["--file", "x", "--check-config"]) == 78
    assert "nothing to match" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--preset", "nosuch"], ["--admin-socket", "a", "--server", "127.0.0.1"], ["--bogus"],
])
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--file", "x", "--preset", "uw", "--server", "mail.example.org", "--check-config"]) == 78
    assert "command line: --server: server 'mail.example.org' is not an IP address" in capsys.readouterr().err
    assert cli.main(argv) == 64
    assert capsys.readouterr().err


def test_port_on_the_command_line_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--file", "x", "--preset", "uw", "--server", "127.0.0.1", "--port", "0",
                     "--check-config"]) == 78
    assert re.search(r"--port 0: expected 1\.\.65535", capsys.readouterr().err)


def test_config_from_dict_rejects_non_mappings(tmp_path: Path) -> None:
    from dracd.config import ConfigError

    with pytest.raises(ConfigError, match="'presets.uw': expected a mapping"):
        config_from_dict({"presets": {"uw": [1]}}, tmp_path / "c.yaml")
