"""Dovecot's post-login hook (contrib/dovecot/drac-postlogin) with a real
Dovecot 2.3 on loopback (tests/fixtures/dovecot.py): POP3 and IMAP logins
over IPv4 and IPv6 put the client in dracd's map before the client sees its
"logged in" reply, and Postfix then relays for it; a dracd that is down, mute
or hung, or a missing dracctl, neither denies nor stalls a login and is
logged to syslog; failed logins add nothing; no DNS. Then the script by
hand, as Dovecot runs it (empty environment, the ``dovecot`` user): it
always continues with ``exec "$@"`` and its status, never writes to the
client, sends IPv4-mapped addresses as IPv4 and logs without format or line
injection, to stderr when there is no syslog."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.dovecot import POSTLOGIN, DovecotInstance, Login, run_in_namespace, write_dracctl_launcher
from tests.fixtures.libdrac import build_libdrac
from tests.fixtures.postfix import PostfixInstance
from tests.fixtures.server import ServerThread, map_keys, private_prog
from tests.fixtures.tools import free_port

LIFETIME = 1800
REPLIES = {"pop3": "+OK Logged in.", "imap": "OK Logged in"}
#: The hook's syslog lines: priority mail.warning (2 * 8 + 4), tag drac-postlogin.
SYSLOG_PREFIX = "<20>"
SYSLOG_TAG = " drac-postlogin: "


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotInstance]:
    """One Dovecot for the module; each test points the hook at its own dracd."""
    with DovecotInstance() as instance:
        yield instance
        assert instance.dns_queries() == [], "Dovecot or the hook sent DNS queries"


def login(dovecot: DovecotInstance, protocol: str, client: str) -> Login:
    return dovecot.pop3_login(client) if protocol == "pop3" else dovecot.imap_login(client)


def relay_code(postfix: PostfixInstance, client: str) -> int:
    code, text = postfix.probe_relay(client)
    assert code in (250, 554), f"{client}: unexpected {code} {text}"
    return code


class Marks:
    """What Dovecot logged (its log file, and the hook's syslog lines) since creation."""

    def __init__(self, dovecot: DovecotInstance) -> None:
        self.dovecot = dovecot
        self.log = len(dovecot.log_text())
        self.syslog = len(dovecot.syslog_lines())

    def log_text(self) -> str:
        return self.dovecot.log_text()[self.log:]

    def syslog_lines(self) -> list[str]:
        return self.dovecot.syslog_lines()[self.syslog:]


# --------------------------------------------------------------- with Dovecot


@pytest.mark.parametrize("client", ["127.0.0.5", "::1"])
@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_login_authorizes_the_client_and_postfix_relays(
    rpcbind: None,
    dovecot: DovecotInstance,
    make_server: Callable[..., ServerThread],
    postfix_factory: Callable[..., PostfixInstance],
    protocol: str,
    client: str,
) -> None:
    server = make_server(rpcbind=True, lifetime=LIFETIME)  # the hook finds it through rpcbind
    postfix = postfix_factory(server.config.map.path)
    dovecot.configure_drac(program=server.config.program)
    marks = Marks(dovecot)
    assert relay_code(postfix, client) == 554

    result = login(dovecot, protocol, client)
    now = time.time()

    # Dovecot's own reply, nothing from the hook in front of it, and a working session.
    assert result.ok and result.reply == REPLIES[protocol], result
    assert result.after.startswith(("+OK", "OK")), result
    # In the map already when the client is told it is logged in: no polling.
    keys = map_keys(server.config.map.path)
    assert list(keys) == [client.encode()]
    assert now + LIFETIME - 5 <= int(keys[client.encode()]) <= now + LIFETIME + 5
    assert relay_code(postfix, client) == 250
    assert relay_code(postfix, "127.0.0.6") == 554
    assert marks.syslog_lines() == []
    assert "Error" not in marks.log_text() and "Fatal" not in marks.log_text()
    assert dovecot.dns_queries() == []


def mute_udp() -> socket.socket:
    """A UDP socket on 127.0.0.1 that never answers: a dracd host that is up but silent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A 0755 directory the ``dovecot`` user can reach (pytest's tmp_path is below a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="dracd-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def closed_port() -> int:
    """A port nobody listens on (tests/fixtures/tools.py: not one another test may pick)."""
    return free_port()


@pytest.mark.parametrize("outage", ["not registered", "port closed", "mute", "dracctl hangs", "no dracctl"])
def test_logins_go_on_promptly_when_dracd_is_down(
    rpcbind: None, dovecot: DovecotInstance, public_dir: Path, outage: str
) -> None:
    mute = mute_udp()
    bounds: tuple[float, float]
    try:
        if outage == "not registered":  # rpcbind knows no such program: fails at once
            dovecot.configure_drac(program=private_prog(), timeout=2)
            reason, bounds = "is not registered with rpcbind (exit 69)", (0, 1.5)
        elif outage == "port closed":  # nothing listening: ICMP port unreachable, refused at once
            dovecot.configure_drac(program=private_prog(), port=closed_port(), timeout=2)
            reason, bounds = "cannot reach dracd on 127.0.0.1: connection refused (exit 69)", (0, 1.5)
        elif outage == "mute":  # nothing answers: dracctl's own 2 s deadline
            dovecot.configure_drac(program=private_prog(), port=mute.getsockname()[1], timeout=2)
            reason, bounds = "timed out after 2.0 s (exit 69)", (1.8, 3)
        elif outage == "dracctl hangs":  # the hard cap: timeout(1) kills it after 1 + 1 s
            hang = public_dir / "dracctl"
            hang.write_text("#!/bin/sh\nexec sleep 30\n")
            hang.chmod(0o755)
            dovecot.configure_drac(program=private_prog(), timeout=1, dracctl=hang)
            reason, bounds = "no answer within 2 s (killed) (exit 124)", (1.8, 3)
        else:
            dovecot.configure_drac(program=private_prog(), dracctl="/nonexistent/dracctl")
            reason, bounds = "dracctl not found or not executable: /nonexistent/dracctl", (0, 1.5)
        marks = Marks(dovecot)
        for protocol, client in (("pop3", "127.0.0.21"), ("imap", "127.0.0.22")):
            result = login(dovecot, protocol, client)
            assert result.ok and result.reply == REPLIES[protocol], result
            assert result.after, result
            assert bounds[0] <= result.seconds < bounds[1], f"{protocol} login took {result.seconds:.2f} s"
            line = dovecot.wait_for_syslog(f"DRAC add {client} failed: ", since=marks.syslog)
            assert line.startswith(SYSLOG_PREFIX) and SYSLOG_TAG in line, line
            assert line.endswith(reason), line
        assert len(marks.syslog_lines()) == 2
        # Logged to syslog, not as errors in Dovecot's log.
        assert "Error" not in marks.log_text() and "Fatal" not in marks.log_text()
    finally:
        mute.close()


def test_without_syslog_the_warning_goes_to_dovecots_log(rpcbind: None) -> None:
    with DovecotInstance(syslog=False) as dovecot:  # no /dev/log at all
        dovecot.configure_drac(program=private_prog())
        result = dovecot.imap_login("127.0.0.23")
        assert result.ok and result.reply == REPLIES["imap"], result
        assert result.seconds < 3
        lines = [line for line in dovecot.log_text().splitlines() if "drac-postlogin" in line]
        assert len(lines) == 1, lines
        assert " imap-postlogin: Error: drac-postlogin: DRAC add 127.0.0.23 failed: " in lines[0], lines
        assert lines[0].endswith("is not registered with rpcbind (exit 69)"), lines
        assert dovecot.dns_queries() == []


def test_failed_logins_add_nothing(
    rpcbind: None, dovecot: DovecotInstance, make_server: Callable[..., ServerThread]
) -> None:
    server = make_server(rpcbind=True)
    dovecot.configure_drac(program=server.config.program)
    marks = Marks(dovecot)

    wrong = dovecot.pop3_login("127.0.0.31", password="wrong")
    assert not wrong.ok and wrong.reply == "-ERR [AUTH] Authentication failed.", wrong
    wrong = dovecot.imap_login("127.0.0.32", password="wrong")
    assert not wrong.ok and "AUTHENTICATIONFAILED" in wrong.reply, wrong
    unknown = dovecot.imap_login("127.0.0.34", user="mallory")
    assert not unknown.ok, unknown
    # A good login afterwards: the hook works, and only its address is in the map.
    assert dovecot.pop3_login("127.0.0.33").ok
    assert list(map_keys(server.config.map.path)) == [b"127.0.0.33"]
    assert marks.syslog_lines() == []
    assert marks.log_text().count("Password mismatch") == 2


# --------------------------------------------------------------- the script by hand

CONTINUE = ["/bin/sh", "-c", 'echo "continued: $0, $# args: $*"; exit 7', "next-script", "a b", "c"]
CONTINUED = "continued: next-script, 2 args: a b c\n"


def hook(env: dict[str, str], conf: str | None, *, syslog: bool = True) -> tuple[subprocess.CompletedProcess[str],
                                                                                 list[str], float]:
    """The hook as script-login runs it: the ``dovecot`` user, only Dovecot's
    variables, ``/etc/default/drac-postlogin`` = ``conf``; ``"$@"`` a stand-in
    for the rest of the chain that exits 7."""
    start = time.monotonic()
    result, lines = run_in_namespace([str(POSTLOGIN), *CONTINUE], env=env, hook_conf=conf, syslog=syslog)
    return result, lines, time.monotonic() - start


@pytest.fixture
def dracctl(public_dir: Path) -> Path:
    """A dracctl the ``dovecot`` user can run."""
    return write_dracctl_launcher(public_dir / "dracctl")


def test_script_is_posix_sh() -> None:
    text = POSTLOGIN.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert "set -e" not in text
    assert text.rstrip().endswith('exec "$@"')
    for shell in (["dash", "-n"], ["bash", "--posix", "-n"]):
        result = subprocess.run([*shell, str(POSTLOGIN)], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, result.stderr


def test_ipv4_mapped_address_is_sent_as_ipv4(
    rpcbind: None, make_server: Callable[..., ServerThread], dracctl: Path
) -> None:
    server = make_server(rpcbind=True)
    conf = f"DRACD_SERVER=127.0.0.1\nDRAC_DRACCTL={dracctl}\nDRAC_DRACCTL_ARGS='--program {server.config.program}'\n"
    result, lines, _ = hook({"IP": "::ffff:127.0.0.41", "LOCAL_IP": "::ffff:127.0.0.1", "USER": "alice"}, conf)
    assert (result.returncode, result.stdout) == (7, CONTINUED), result
    assert lines == [] and result.stderr == ""
    assert list(map_keys(server.config.map.path)) == [b"127.0.0.41"]


SYNTAX_ERROR = "DRAC_TIMEOUT=(\n"


@pytest.mark.parametrize(
    ("ip", "conf", "logged"),
    [
        pytest.param("", "", None, id="no IP"),
        pytest.param("--help", "", "DRAC add --help failed: ", id="option as IP"),
        pytest.param("not-an-address", "", "DRAC add not-an-address failed: ", id="bad IP"),
        pytest.param("%s%n%x", "", "DRAC add %s%n%x failed: ", id="format in IP"),
        pytest.param("127.0.0.1\n<13>Jan  1 00:00:00 pop3-login: Login: rip=192.0.2.66", "",
                     "DRAC add 127.0.0.1 <13>Jan  1 00:00:00 pop3-login: Login: rip=192.0.2.66 failed: ",
                     id="newline in IP"),
        pytest.param("127.0.0.42", "DRACD_SERVER=mx.example.org\n", "DRAC add 127.0.0.42 failed: ",
                     id="host name as server"),
        pytest.param("127.0.0.43", "DRAC_TIMEOUT=abc\nDRACD_SERVER=127.0.0.1\nDRAC_DRACCTL_ARGS='-p 9'\n",
                     "DRAC add 127.0.0.43 failed: ", id="bad timeout"),
        pytest.param("127.0.0.44", SYNTAX_ERROR, None, id="config syntax error"),
        pytest.param("127.0.0.45", "exit 3\n", None, id="config exits"),
    ],
)
def test_script_always_continues(ip: str, conf: str, logged: str | None, dracctl: Path) -> None:
    conf = f"DRAC_DRACCTL={dracctl}\n" + conf
    result, lines, seconds = hook({"IP": ip, "USER": "alice"}, conf)
    # exec "$@" with its arguments and exit status; the hook wrote nothing to stdout (the client).
    assert (result.returncode, result.stdout) == (7, CONTINUED), result
    assert seconds < 3
    if logged is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(SYSLOG_PREFIX) and SYSLOG_TAG in lines[0], lines
        assert logged in lines[0] and "\n" not in lines[0], lines
        assert result.stderr == ""
    if conf.endswith(SYNTAX_ERROR):
        assert "Syntax error" in result.stderr  # dash's message, which Dovecot logs


def test_without_syslog_the_warning_goes_to_stderr(rpcbind: None, dracctl: Path) -> None:
    conf = f"DRAC_DRACCTL={dracctl}\nDRAC_DRACCTL_ARGS='--program {private_prog()}'\n"
    result, lines, _ = hook({"IP": "127.0.0.46"}, conf, syslog=False)
    assert (result.returncode, result.stdout) == (7, CONTINUED), result
    assert lines == []
    assert result.stderr.startswith("drac-postlogin: DRAC add 127.0.0.46 failed: cannot reach dracd on localhost")
    assert result.stderr.count("\n") == 1


# --------------------------------------------------------------- with libdrac's dracauth


@pytest.fixture(scope="module")
def dracauth() -> Iterator[Path]:
    """libdrac's dracauth, built from contrib/libdrac where the ``dovecot`` user can run it."""
    out = Path(tempfile.mkdtemp(prefix="dracd-libdrac-"))
    out.chmod(0o755)
    try:
        yield build_libdrac(out) / "dracauth"
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize(("protocol", "client"), [("imap", "127.0.0.61"), ("pop3", "::1")])
def test_with_dracauth_a_login_authorizes_the_client_and_postfix_relays(
    rpcbind: None, dovecot: DovecotInstance, dracauth: Path, make_server: Callable[..., ServerThread],
    postfix_factory: Callable[..., PostfixInstance], protocol: str, client: str
) -> None:
    server = make_server(rpcbind=True, lifetime=LIFETIME)
    postfix = postfix_factory(server.config.map.path)
    # No dracctl at all: only dracauth can have added the address.
    dovecot.configure_drac(program=server.config.program, dracauth=dracauth, dracctl="/nonexistent/dracctl")
    marks = Marks(dovecot)
    result = login(dovecot, protocol, client)
    assert result.ok and result.reply == REPLIES[protocol], result
    assert result.after.startswith(("+OK", "OK")), result
    assert list(map_keys(server.config.map.path)) == [client.encode()]  # before the reply
    assert relay_code(postfix, client) == 250
    assert marks.syslog_lines() == []


def test_with_dracauth_logins_go_on_promptly_when_dracd_is_down(
    rpcbind: None, dovecot: DovecotInstance, dracauth: Path
) -> None:
    dovecot.configure_drac(program=private_prog(), dracauth=dracauth, timeout=2)  # not registered
    marks = Marks(dovecot)
    result = dovecot.imap_login("127.0.0.62")
    assert result.ok and result.reply == REPLIES["imap"], result
    assert result.seconds < 1.5, result
    line = dovecot.wait_for_syslog("DRAC add 127.0.0.62 failed: dracauth: ", since=marks.syslog)
    assert line.startswith(SYSLOG_PREFIX) and SYSLOG_TAG in line, line
    assert line.endswith("(exit 2)"), line


def test_with_dracauth_an_ipv4_mapped_address_is_sent_as_ipv4(
    rpcbind: None, make_server: Callable[..., ServerThread], dracauth: Path
) -> None:
    server = make_server(rpcbind=True)
    conf = (f"DRACD_SERVER=127.0.0.1\nDRAC_DRACAUTH={dracauth}\nDRAC_PROGRAM={server.config.program}\n"
            "DRAC_DRACCTL=/nonexistent/dracctl\n")
    result, lines, _ = hook({"IP": "::ffff:127.0.0.63", "LOCAL_IP": "::ffff:127.0.0.1", "USER": "alice"}, conf)
    assert (result.returncode, result.stdout) == (7, CONTINUED), result
    assert lines == [] and result.stderr == ""
    assert list(map_keys(server.config.map.path)) == [b"127.0.0.63"]


def test_dracctl_options_or_several_servers_mean_dracctl(
    rpcbind: None, make_server: Callable[..., ServerThread], dracauth: Path, dracctl: Path
) -> None:
    server = make_server(rpcbind=True)
    for setting, address in ((f"DRAC_DRACCTL_ARGS='--program {server.config.program}'\nDRACD_SERVER=127.0.0.1\n",
                              "127.0.0.64"),
                             (f"DRAC_DRACCTL_ARGS='--program {server.config.program}'\n"
                              "DRACD_SERVER=127.0.0.1,::1\n", "127.0.0.65")):
        # A dracauth that would fail (another program number): dracctl must be the one used.
        conf = f"DRAC_DRACAUTH={dracauth}\nDRAC_PROGRAM={private_prog()}\nDRAC_DRACCTL={dracctl}\n" + setting
        result, lines, _ = hook({"IP": address, "USER": "alice"}, conf)
        assert (result.returncode, result.stdout, lines) == (7, CONTINUED, []), result
    assert sorted(map_keys(server.config.map.path)) == [b"127.0.0.64", b"127.0.0.65"]
