"""Which log messages are successful logins, per MRA, and the client address in each.

A preset names the programs (syslog tags) whose messages it reads, whether a
line must carry a PID, and patterns that must match the *whole* message
(``re.fullmatch``) with the address in a group named ``ip``. Because the
syslog header was split off first (:mod:`.record`), text another program
logs can never reach these patterns.

Where each format comes from (tests/test_logwatch.py has a sample of each;
tests/test_logwatch_captured.py runs the lines the real daemons wrote,
tests/vectors/logwatch/):

* ``dovecot``: Dovecot 2.3's login processes, ``pop3-login: Login: user=<U>,
  method=M, rip=IP, lip=IP, ...`` (captured from Debian 12's Dovecot
  2.3.19.1). Dovecot's log process (/usr/lib/dovecot/log) calls openlog()
  without LOG_PID, so its datagrams read ``dovecot: ...``, and journald
  (systemd 252) relays them to the syslog daemon unchanged: syslog files
  hold ``dovecot: ...`` with no PID, exactly what ``logger -t dovecot``
  writes (tests/test_logwatch_forgery.py shows both). Requiring a PID would
  refuse every real line and stop no forger (``logger --id``), so the
  preset does not; a syslog file is simply forgeable (see the daemon's
  start-up warning). In journald the PID is ``_PID``.
* ``uw``: UW ipop3d/imapd (alpine-2.26's imap tree): ``Login``, ``Auth``,
  ``APOP`` with ``nmsgs=`` (ipop3d, mailbox opened), ``Login``/
  ``Authenticated ... mech=`` (imapd); host is ``NAME [IP]`` or ``[IP]``,
  NAME validated by c-client (letters, digits, dot, hyphen). openlog(LOG_PID).
* ``courier``: ``LOGIN, user=U, ip=[IP], port=[P]`` (POP3, USER/PASS and
  AUTH alike) and ``..., protocol=IMAP`` (LOGIN and AUTHENTICATE), captured
  from Debian 12's courier-pop/courier-imap 1.0.16; couriertcpd listens on
  ``::``, so IPv4 clients read ``::ffff:a.b.c.d``. courierlogger sends them
  to syslog without LOG_PID, tagged by ``-name=`` (pop3d, imapd, pop3d-ssl,
  imapd-ssl). Failures read ``LOGIN FAILED, ...``.
* ``qpopper``: ``(vX) POP login by user "U" at (HOST) IP`` and the end-of-
  session ``Stats: U n n n n HOST IP``, optionally followed by
  `` [file.c:line]``; tag is argv[0] (popper, qpopper, in.qpopper), LOG_PID.
  From qpopper's sources and users' logs only: it is not packaged in Debian
  and was not run. It logs IPv4 only (``struct sockaddr_in``).
* ``cyrus``: ``login: [HOST ][IP] USER MECH User logged in SESSIONID=<...>``,
  captured from Debian 12's Cyrus 3.6.1 (MECH plaintext for IMAP LOGIN and
  POP3 USER/PASS, PLAIN for AUTHENTICATE/AUTH, APOP), tag ``cyrus/<service>``
  (Debian's ``syslog_prefix: cyrus``) with LOG_PID. Failures read
  ``badlogin: ...``. pop3d logs the login before its ``popminpoll`` check,
  which may still refuse the session: the password was right all the same.
* ``popa3d``: captured from Debian 12's popa3d 1.0.3: standalone (``-D``),
  the forked child logs ``Session from IP`` and, with the same PID,
  ``Authentication passed for USER`` (or ``failed``); the two are joined by
  PID, and a failure ends the session. Standalone popa3d is IPv4 only; run
  from inetd it logs no address at all (so nothing to authorize). The
  pop-before-smtp patch's ``Authentication passed for USER -- [IP]`` is
  read directly.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .record import LogRecord

log = logging.getLogger(__name__)

#: IPv4, IPv6 and IPv4-mapped literals; :mod:`.policy` validates the text.
IP = r"[0-9A-Fa-f:.]{2,45}"
#: How long popa3d's ``Session from`` waits for its ``Authentication passed``.
SESSION_TTL = 600.0
MAX_SESSIONS = 4096


@dataclass(frozen=True)
class Preset:
    """A built-in preset's facts (its options come from the config)."""

    name: str
    programs: tuple[str, ...]
    require_pid: bool
    logins: tuple[re.Pattern[str], ...]
    #: Two-line logins (popa3d): remembers the address per (program, pid)...
    session_start: re.Pattern[str] | None = None
    #: ...until this line, from the same process, says the login succeeded.
    session_login: re.Pattern[str] | None = None
    #: A line of the same process that ends its session unsuccessfully.
    session_end: re.Pattern[str] | None = None


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


_UW_HOST = rf"host=(?:[A-Za-z0-9.-]+ )?\[(?P<ip>{IP})\]"
_QPOPPER_WHERE = r"(?: \[[\w.-]+:\d+\])?"

PRESETS: dict[str, Preset] = {
    preset.name: preset for preset in (
        Preset("dovecot", ("dovecot",), False, (
            _re(rf"(?:pop3|imap)-login: Login: user=<[^<>]*>, method=[^,\s]+, rip=(?P<ip>{IP}), lip={IP}(?:, .*)?"),
        )),
        Preset("uw", ("ipop3d", "imapd"), True, (
            _re(rf"(?:Admin )?(?:Login|Auth|APOP) user=\S+ {_UW_HOST}(?: nmsgs=\d+/\d+)?"),
            _re(rf"Authenticated user=\S+ {_UW_HOST} mech=\S+"),
        )),
        Preset("courier", ("pop3d", "pop3d-ssl", "imapd", "imapd-ssl", "pop3login", "imaplogin"), False, (
            _re(rf"LOGIN, user=[^,\s]+, ip=\[(?P<ip>{IP})\](?:, port=\[\d+\])?(?:, protocol=[A-Z0-9]+)?"
                r"(?:, stls=1)?"),
        )),
        Preset("qpopper", ("popper", "qpopper", "in.qpopper"), True, (
            _re(rf"\(v[\w.]+\) POP login by user \"[^\"]*\" at \([^()\s]*\) (?P<ip>{IP}){_QPOPPER_WHERE}"),
            _re(rf"Stats: \S+ \d+ \d+ \d+ \d+ (?:[^\s\[\]]+ )?(?P<ip>{IP}){_QPOPPER_WHERE}"),
        )),
        Preset("cyrus", ("cyrus/imap", "cyrus/imaps", "cyrus/pop3", "cyrus/pop3s"), True, (
            _re(rf"login: (?:[^\s\[\]]+ )?\[(?P<ip>{IP})\] (?!anonymous )\S+ \S+ User logged in"
                r"(?: SESSIONID=<[^<>\s]*>)?"),
        )),
        Preset("popa3d", ("popa3d",), True, (
            _re(rf"Authentication passed for \S+ -- \[(?P<ip>{IP})\]"),
        ), session_start=_re(rf"Session from (?P<ip>{IP})"),
            session_login=_re(r"Authentication passed for \S+"),
            # Once popa3d said the login failed, a later "passed" with that PID is not this session's.
            session_end=_re(r"Authentication failed for .*|Didn't attempt authentication")),
    )
}


@dataclass(frozen=True)
class RuleOptions:
    """Per-preset (or per-pattern) options from the config."""

    #: Seconds; 0 means dracd's own lifetime. Needs the admin socket.
    lifetime: int = 0
    #: Authorize the client's whole IPv4 /prefix4 (24..32) or IPv6 /prefix6 (120..128).
    prefix4: int = 32
    prefix6: int = 128
    #: None: the preset's default.
    require_pid: bool | None = None
    #: None: the preset's default programs.
    programs: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Rule:
    """A preset or custom pattern, ready to match: facts plus options."""

    name: str
    programs: frozenset[str]
    require_pid: bool
    logins: tuple[re.Pattern[str], ...]
    options: RuleOptions = field(default_factory=RuleOptions)
    #: Built-in patterns match the whole message; custom ones from its start.
    whole: bool = True
    session_start: re.Pattern[str] | None = None
    session_login: re.Pattern[str] | None = None
    session_end: re.Pattern[str] | None = None


def preset_rule(name: str, options: RuleOptions) -> Rule:
    preset = PRESETS[name]
    return Rule(
        name=name,
        programs=frozenset(options.programs if options.programs is not None else preset.programs),
        require_pid=preset.require_pid if options.require_pid is None else options.require_pid,
        logins=preset.logins,
        options=options,
        session_start=preset.session_start,
        session_login=preset.session_login,
        session_end=preset.session_end,
    )


def custom_rule(name: str, programs: Iterable[str], regex: re.Pattern[str], options: RuleOptions) -> Rule:
    require_pid = True if options.require_pid is None else options.require_pid
    return Rule(name, frozenset(programs), require_pid, (regex,), options, whole=False)


@dataclass(frozen=True)
class Login:
    """A successful login: which rule saw it, and the address text it names."""

    rule: Rule
    ip: str


class Matcher:
    """Record -> Login, for a set of rules; keeps popa3d's per-process sessions."""

    def __init__(self, rules: Iterable[Rule], clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = tuple(rules)
        self.clock = clock
        self._by_program: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for program in rule.programs:
                self._by_program.setdefault(program, []).append(rule)
        #: (rule name, program, pid) -> (address text, when seen)
        self._sessions: OrderedDict[tuple[str, str, int], tuple[str, float]] = OrderedDict()
        #: Rules whose refusal of a PID-less login line was already logged as a warning.
        self._warned_pid: set[str] = set()

    def match(self, record: LogRecord) -> Login | None:
        for rule in self._by_program.get(record.program, ()):
            if rule.require_pid and record.pid is None and not record.sole_writer:
                if any(self._login(rule, record.message)):
                    self._refused_without_pid(rule, record)
                continue
            for ip in self._login(rule, record.message):
                return Login(rule, ip)
            if (remembered := self._session(rule, record)) is not None:
                return Login(rule, remembered)
        return None

    def _refused_without_pid(self, rule: Rule, record: LogRecord) -> None:
        """Once per rule a warning (a site whose MRA logs without a PID must hear of it), then debug."""
        if rule.name in self._warned_pid:
            log.debug("refused a %s login line without a PID: %s: %s", rule.name, record.program, record.message)
            return
        self._warned_pid.add(rule.name)
        log.warning("refused a %s login line without a PID (%s: %s); said once. `logger -t %s` writes "
                    "such lines; if %s's own lines have no PID here (no journald in front of the syslog "
                    "daemon), set require_pid: false for %s, and any local user can then forge its logins",
                    rule.name, record.program, record.message, record.program, record.program, rule.name)

    @staticmethod
    def _login(rule: Rule, message: str) -> Iterable[str]:
        for pattern in rule.logins:
            match = pattern.fullmatch(message) if rule.whole else pattern.match(message)
            if match is not None:
                yield match["ip"]

    def _session(self, rule: Rule, record: LogRecord) -> str | None:
        """popa3d: remember ``Session from`` per process; answer it at ``Authentication passed``."""
        if rule.session_start is None or rule.session_login is None or record.pid is None:
            return None
        key = (rule.name, record.program, record.pid)
        now = self.clock()
        self._expire(now)
        if (start := rule.session_start.fullmatch(record.message)) is not None:
            self._sessions.pop(key, None)
            self._sessions[key] = (start["ip"], now)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
            return None
        if rule.session_login.fullmatch(record.message) is not None:
            seen = self._sessions.pop(key, None)
            return seen[0] if seen is not None else None
        if rule.session_end is not None and rule.session_end.fullmatch(record.message) is not None:
            self._sessions.pop(key, None)
        return None

    def _expire(self, now: float) -> None:
        while self._sessions:
            key, (_, seen) = next(iter(self._sessions.items()))
            if now - seen < SESSION_TTL:
                return
            del self._sessions[key]
