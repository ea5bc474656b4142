"""The presets against lines the real MRAs wrote (tests/vectors/logwatch/, see its README.md).

Courier (courier-pop/courier-imap 1.0.16), Cyrus (3.6.1) and popa3d (1.0.3),
Debian 12's packages, ran in private namespaces and were logged in to over
IPv4 and IPv6 with every kind of login each logs; their syslog datagrams
were captured byte for byte (``*.datagrams``) and turned into the lines a
syslog daemon writes (``*.log``). Every line of every file goes through the
real parsing and matching code, in order (popa3d's two-line logins depend on
it), and exactly the successful logins come out, with their addresses.

qpopper is not packaged in Debian and could not be run: its preset is still
tested on lines from its sources only (tests/test_logwatch.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dracd_logwatch.policy import parse_address
from dracd_logwatch.presets import PRESETS, Matcher, RuleOptions, preset_rule
from dracd_logwatch.record import LogRecord, parse_syslog_datagram, parse_syslog_line

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

VECTORS = Path(__file__).parent / "vectors" / "logwatch"
ALL = [preset_rule(name, RuleOptions()) for name in PRESETS]
MRAS = ("courier", "cyrus", "popa3d")

#: Per MRA, the logins in the order they were made: (what the client did, the address logged).
#: capture.sh logs in from 127.0.0.x, ::1, and the documentation addresses 192.0.2.1 and
#: 2001:db8::1 it puts on the namespace's lo.
LOGINS: dict[str, list[tuple[str, str]]] = {
    # couriertcpd listens on :: (dual stack): IPv4 clients appear IPv4-mapped.
    "courier": [
        ("POP3 USER/PASS", "::ffff:127.0.0.5"),
        ("POP3 USER/PASS", "::1"),
        ("POP3 USER/PASS", "2001:db8::1"),
        ("POP3 USER/PASS", "::ffff:192.0.2.1"),
        ("POP3 AUTH PLAIN", "::ffff:127.0.0.6"),
        ("POP3 AUTH PLAIN", "::1"),
        ("IMAP LOGIN", "::ffff:127.0.0.7"),
        ("IMAP LOGIN", "2001:db8::1"),
        ("IMAP AUTHENTICATE PLAIN", "::ffff:127.0.0.8"),
        ("IMAP AUTHENTICATE PLAIN", "::1"),
    ],
    # Cyrus's master binds IPv4 and IPv6 sockets apart; ::1 is logged with its name (localhost).
    "cyrus": [
        ("IMAP LOGIN", "127.0.0.7"),
        ("IMAP LOGIN", "2001:db8::1"),
        ("IMAP AUTHENTICATE PLAIN", "127.0.0.8"),
        ("IMAP AUTHENTICATE PLAIN", "::1"),
        ("POP3 USER/PASS", "127.0.0.5"),
        ("POP3 USER/PASS", "::1"),
        ("POP3 USER/PASS", "192.0.2.1"),
        ("POP3 APOP", "127.0.0.10"),
        ("POP3 APOP", "2001:db8::1"),
        ("POP3 AUTH PLAIN", "127.0.0.6"),
        ("POP3 AUTH PLAIN", "::1"),
    ],
    # popa3d logs the client only in standalone mode, which is IPv4 only; its IPv6 login
    # (through inetd, no "Session from") names no address and so authorizes nothing.
    "popa3d": [
        ("POP3 USER/PASS", "127.0.0.5"),
        ("POP3 USER/PASS", "192.0.2.1"),
    ],
}

#: Messages of failed logins, as each MRA wrote them (with the wrong password).
FAILED = {
    "courier": re.compile(r"LOGIN FAILED, .*"),
    "cyrus": re.compile(r"badlogin: .*"),
    "popa3d": re.compile(r"Authentication failed for .*"),
}


def lines(mra: str, suffix: str) -> list[bytes]:
    return (VECTORS / f"{mra}.{suffix}").read_bytes().splitlines()


def records(mra: str) -> list[LogRecord]:
    """Every line of the captured file, parsed as a syslog file line (each must parse)."""
    parsed = []
    for line in lines(mra, "log"):
        record = parse_syslog_line(line.decode())
        assert record is not None, line
        parsed.append(record)
    return parsed


def logged_in(records: list[LogRecord]) -> list[str]:
    """The address of every login the presets find, feeding records in order to one matcher."""
    matcher = Matcher(ALL)
    return [login.ip for record in records if (login := matcher.match(record)) is not None]


@pytest.mark.parametrize("mra", MRAS)
def test_captured_logins_give_exactly_their_addresses(mra: str) -> None:
    assert logged_in(records(mra)) == [address for _, address in LOGINS[mra]]


@pytest.mark.parametrize("mra", MRAS)
def test_captured_datagrams_give_the_same_logins(mra: str) -> None:
    # What dracd-logwatch's own syslog socket would have received.
    parsed = [parse_syslog_datagram(datagram) for datagram in lines(mra, "datagrams")]
    assert None not in parsed
    assert parsed == records(mra)
    assert logged_in([record for record in parsed if record is not None]) == [a for _, a in LOGINS[mra]]


@pytest.mark.parametrize("mra", MRAS)
def test_log_files_are_the_datagrams_with_a_host(mra: str) -> None:
    """Each .log line is its datagram with the PRI dropped and the host put after the timestamp."""
    logs, datagrams = lines(mra, "log"), lines(mra, "datagrams")
    assert len(logs) == len(datagrams) > 0
    for log, datagram in zip(logs, datagrams, strict=True):
        pri_end = datagram.index(b">") + 1
        assert log == datagram[pri_end:pri_end + 15] + b" mail" + datagram[pri_end + 15:]


@pytest.mark.parametrize("mra", MRAS)
def test_captured_failed_logins_authorize_nothing(mra: str) -> None:
    failed = [record for record in records(mra) if FAILED[mra].fullmatch(record.message)]
    assert len(failed) >= 2  # an IPv4 and an IPv6 client (popa3d: IPv4 and inetd)
    for record in failed:
        assert Matcher(ALL).match(record) is None, record


def test_popa3d_failure_after_session_start_authorizes_nothing() -> None:
    """A session whose login fails leaves nothing behind for a later line of that PID."""
    matcher = Matcher(ALL)
    captured = records("popa3d")
    assert [matcher.match(r) for r in captured if r.message.startswith("Session from 127.0.0.9")] == [None]
    failed = next(r for r in captured if FAILED["popa3d"].fullmatch(r.message))
    assert matcher.match(failed) is None
    # A forged success for that PID, after the failure, finds no session to complete.
    assert matcher.match(LogRecord("popa3d", failed.pid, "Authentication passed for alice")) is None


@pytest.mark.parametrize("mra", MRAS)
def test_captured_addresses_through_the_policy(mra: str) -> None:
    """Every logged address is a valid host address; IPv4-mapped ones become IPv4, as the MTAs see them."""
    addresses = [parse_address(address) for _, address in LOGINS[mra]]
    assert [str(a) for a in addresses] == [address.removeprefix("::ffff:") for _, address in LOGINS[mra]]


@pytest.mark.parametrize("mra", MRAS)
def test_each_captured_login_is_read_by_its_own_preset_only(mra: str) -> None:
    for record in records(mra):
        matching = {rule.name for rule in ALL if Matcher([rule]).match(record) is not None}
        assert matching <= {mra}, (record, matching)


def _login_records(mra: str) -> list[LogRecord]:
    """The captured records that carry a login by themselves (popa3d's need their session)."""
    matcher = Matcher(ALL)
    return [record for record in records(mra) if matcher.match(record) is not None]


@pytest.mark.parametrize("mra", MRAS)
def test_captured_login_messages_under_another_tag_authorize_nothing(mra: str) -> None:
    """``logger -t x`` with a real login message, and the real tag without its PID where one is required."""
    for record in _login_records(mra):
        forged = [LogRecord("x", record.pid, record.message), LogRecord("x", None, record.message)]
        if PRESETS[mra].require_pid:
            forged.append(LogRecord(record.program, None, record.message))
        for line in forged:
            assert Matcher(ALL).match(line) is None, line


def test_popa3d_session_lines_are_joined_only_within_one_pid() -> None:
    """Replaying the captured popa3d lines with each "Authentication passed" under another PID."""
    matcher = Matcher(ALL)
    found = []
    for record in records("popa3d"):
        if record.message.startswith("Authentication passed") and record.pid is not None:
            record = LogRecord(record.program, record.pid + 100000, record.message)
        if (login := matcher.match(record)) is not None:
            found.append(login.ip)
    assert found == []
