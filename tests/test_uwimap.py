"""UW IMAP's ipop3d and imapd with contrib/uw-imap-patch, against the real dracd.

The servers are Debian's UW tree (from the ``alpine`` source package),
patched and built with ``-DDRAC_AUTH`` against contrib/libdrac, run by a
private inetd in their own namespaces (tests/fixtures/uwimap.py).  Logins
go through PAM as the local test user ``dractest``, which the suite creates
if it is missing.  dracd registers a private program number with the
system rpcbind; the servers get it as ``DRAC_PROGRAM`` and their config
file names ``server 127.0.0.1``.

Covered: the patch's shape and clean application; the hook without
``-DDRAC_AUTH`` and with build-time overrides; POP3 USER/PASS, AUTH PLAIN
and APOP and IMAP LOGIN and AUTHENTICATE PLAIN over IPv4 and IPv6 put the
client in dracd's map before the client sees the OK, and Postfix relays for
it; v4-mapped clients are sent as IPv4; failed logins add nothing; imapd
refreshes an active session at most once per interval; a stopped or hung
dracd costs a login at most libdrac's timeout and is only logged; missing,
unreadable or bad config files mean the defaults, logged once.

The first run fetches and builds UW IMAP (about 20 s on two cores, cached
in .cache/uw-imap); after that the module takes about 15 s.
"""

from __future__ import annotations

import base64
import concurrent.futures
import imaplib
import logging
import poplib
import re
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dracclient import rpcbind as rpcb
from tests.fixtures.postfix import PostfixInstance
from tests.fixtures.server import ServerThread, map_keys, private_prog, wait_for
from tests.fixtures.tools import free_port
from tests.fixtures.uwimap import (
    PATCH,
    UWBuild,
    UWImapServers,
    config_text,
    ensure_test_user,
    ensure_uwimap,
    fetch_source,
)

#: The login, DRAC call included, must answer within this (libdrac's default timeout is 2 s).
LOGIN_BUDGET = 3.0


@pytest.fixture(scope="module")
def uw_build() -> UWBuild:
    return ensure_uwimap()


@pytest.fixture(scope="module")
def account() -> tuple[str, str]:
    return ensure_test_user()


@pytest.fixture
def uwimap_factory(tmp_path: Path) -> Iterator[Callable[..., UWImapServers]]:
    """``uwimap_factory(drac_program=..., config=..., build=..., env=...)``: started
    servers; all are stopped at teardown (a failing stop fails the test)."""
    made: list[UWImapServers] = []

    def make(**kwargs: Any) -> UWImapServers:
        servers = UWImapServers(tmp_path / f"uwimap{len(made)}", **kwargs)
        made.append(servers)
        return servers.start()

    yield make
    errors = []
    for servers in reversed(made):
        try:
            servers.stop()
        except Exception as e:  # stop them all, report afterwards
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def dracd(make_server: Callable[..., ServerThread], rpcbind: None) -> ServerThread:
    return make_server(rpcbind=True)


@pytest.fixture
def uw(uwimap_factory: Callable[..., UWImapServers], uw_build: UWBuild, account: tuple[str, str],
       dracd: ServerThread) -> UWImapServers:
    """ipop3d/imapd pointed at ``dracd`` (config: server 127.0.0.1, interval 300)."""
    return uwimap_factory(drac_program=dracd.config.program, config=config_text(), build=uw_build)


def relay_map(server: ServerThread) -> dict[str, int]:
    """dracd's map as an MTA reads it: address -> expiry."""
    return {k.rstrip(b"\0").decode(): int(v.rstrip(b"\0")) for k, v in map_keys(server.config.map.path).items()}


def wait_in_map(server: ServerThread, address: str, timeout: float = 5.0) -> int:
    assert wait_for(lambda: address in relay_map(server), timeout), \
        f"{address} not in dracd's map: {relay_map(server)}"
    return relay_map(server)[address]


def pop3_login(uw: UWImapServers, source: str, account: tuple[str, str], method: str = "user",
               mapped: bool = False) -> tuple[list[bytes], float]:
    """One POP3 login from ``source`` by ``method``; (every server reply, seconds to log in)."""
    user, password = account
    started = time.monotonic()
    pop = uw.pop3(source, mapped=mapped)
    try:
        replies = [pop.getwelcome()]
        if method == "user":
            replies += [pop.user(user), pop.pass_(password)]
        elif method == "auth-plain":
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            replies.append(pop.command(f"AUTH PLAIN {token}"))
        elif method == "apop":
            replies.append(pop.apop(user, password))
        else:
            raise ValueError(method)
        elapsed = time.monotonic() - started
        assert pop.stat() == (0, 0)  # the session is usable (an empty INBOX)
        pop.quit()
    finally:
        pop.close()
    return replies, elapsed


# ----------------------------------------------------------------- the patch itself


def test_patch_applies_to_the_alpine_tree_without_fuzz_or_offset(uw_build: UWBuild, tmp_path: Path) -> None:
    """One new file, one added line per call site, and hunks that land exactly."""
    tarball = fetch_source()
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers()
                   if re.search(r"/imap/src/(ipopd/ipop3d|imapd/imapd)\.c$", m.name)]
        assert len(members) == 2
        tar.extractall(tmp_path, members=members, filter="data")
    tree = next(tmp_path.glob("*/imap"))
    result = subprocess.run(["patch", "-p1", "--fuzz=0", "--dry-run", "--batch", "-i", str(PATCH)],
                            cwd=tree, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"fuzz|offset|reject", result.stdout, re.I), result.stdout

    hunks = patch_hunks(PATCH.read_text())
    assert [name for name, _ in hunks][:1] == ["src/osdep/unix/drac_hook.c"]
    calls = [(name, lines) for name, lines in hunks if name != "src/osdep/unix/drac_hook.c"]
    # ipop3d: include, mbxopen; imapd: include, AUTHENTICATE, LOGIN, ping_mailbox
    assert [name for name, _ in calls] == ["src/ipopd/ipop3d.c"] * 2 + ["src/imapd/imapd.c"] * 4
    for name, lines in calls:
        assert [line for line in lines if line[0] in "+-"] == [next(x for x in lines if x[0] == "+")], name
        assert "\f" not in "".join(lines)  # no page breaks in the context: they differ between UW copies


def patch_hunks(text: str) -> list[tuple[str, list[str]]]:
    """(file, hunk lines) for every hunk of a unified diff, by the line counts in the @@ headers."""
    out: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    name, i = "", 0
    while i < len(lines):
        if lines[i].startswith("+++ "):
            name = lines[i][4:].split()[0].removeprefix("b/")
        match = re.match(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@", lines[i])
        if match:
            old, new = (int(n) if n is not None else 1 for n in match.groups())
            body: list[str] = []
            while old > 0 or new > 0:
                i += 1
                line = lines[i] or " "
                body.append(line)
                old -= line[0] in " -"
                new -= line[0] in " +"
            out.append((name, body))
        i += 1
    return out


def test_hook_compiles_without_drac_auth_and_takes_build_time_overrides(uw_build: UWBuild, tmp_path: Path) -> None:
    """Without -DDRAC_AUTH the hooks are empty (no libdrac needed); string overrides survive
    unquoted (UW's build strips quotes), even with the compiler's "linux"/"unix" macros."""
    unit = tmp_path / "unit.c"
    unit.write_text('#include "c-client.h"\n#include "drac_hook.c"\n')

    def compile_unit(*flags: str) -> tuple[str, str]:
        obj = tmp_path / "unit.o"
        r = subprocess.run(["gcc", "-std=gnu17", "-O2", "-Wall", "-Wextra", f"-I{uw_build.c_client}", *flags,
                            "-c", "-o", str(obj), str(unit)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "drac_hook.c" not in r.stderr, r.stderr  # warnings from the hook itself
        symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, timeout=30).stdout
        strings = subprocess.run(["strings", str(obj)], capture_output=True, text=True, timeout=30).stdout
        return symbols, strings

    symbols, _ = compile_unit()
    assert re.search(r"T drachook_login$", symbols, re.M) and "dracauth" not in symbols
    symbols, strings = compile_unit("-DDRAC_AUTH")
    assert re.search(r"U dracauth6?$", symbols, re.M)
    assert "/etc/drac/uw-imap.conf" in strings and "127.0.0.1" in strings.splitlines()
    _, strings = compile_unit("-DDRAC_AUTH", "-DDRAC_CONFIG=/usr/local/unix/linux/drac-uw.conf",
                              "-DDRAC_SERVER=192.0.2.25", "-DDRAC_INTERVAL=60")
    assert "/usr/local/unix/linux/drac-uw.conf" in strings and "192.0.2.25" in strings.splitlines()


# ----------------------------------------------------------------- logins authorize the client


@pytest.mark.parametrize(("method", "source"), [
    ("user", "127.0.0.5"),
    ("user", "::1"),
    ("auth-plain", "127.0.0.6"),
    ("apop", "::1"),
])
def test_pop3_login_authorizes_the_client(uw: UWImapServers, dracd: ServerThread, account: tuple[str, str],
                                          method: str, source: str) -> None:
    if method == "apop":  # APOP needs UW's CRAM-MD5 database (then used for every password check)
        uw.put_etc_file("cram-md5.pwd", f"{account[0]}\t{account[1]}\n", mode=0o400)
    before = time.time()
    replies, elapsed = pop3_login(uw, source, account, method)
    assert replies[-1].startswith(b"+OK Mailbox open"), replies
    assert not any(b"DRAC" in r for r in replies)
    # In the map once the client has +OK: the ADD happens before the reply.
    expiry = relay_map(dracd).get(source)
    assert expiry is not None, relay_map(dracd)
    assert before + dracd.config.lifetime - 2 <= expiry <= time.time() + dracd.config.lifetime + 2
    assert elapsed < LOGIN_BUDGET
    login = {"user": "Login", "auth-plain": "Auth", "apop": "APOP"}[method]
    uw.wait_for_log(rf"^ipop3d\[\d+\]: {login} user={account[0]} host=(?:\S+ )?\[{re.escape(source)}\]")
    assert not [line for line in uw.log_lines() if "DRAC" in line]  # success is silent


def test_imap_login_and_authenticate_authorize_the_client(uw: UWImapServers, dracd: ServerThread,
                                                          account: tuple[str, str]) -> None:
    user, password = account
    with uw.imap("127.0.0.7") as imap:
        typ, data = imap.login(user, password)
        assert typ == "OK", data
        assert "127.0.0.7" in relay_map(dracd)
    with uw.imap("::1") as imap:
        status, reply = imap.authenticate("PLAIN", lambda _: f"\0{user}\0{password}".encode())
        assert status == "OK", reply
        assert "::1" in relay_map(dracd)
    uw.wait_for_log(rf"^imapd\[\d+\]: Login user={user} host=(?:\S+ )?\[127\.0\.0\.7\]")
    uw.wait_for_log(rf"^imapd\[\d+\]: Authenticated user={user} host=(?:\S+ )?\[::1\] mech=PLAIN")
    assert not [line for line in uw.log_lines() if "DRAC" in line]


def test_failed_logins_authorize_nothing(uw: UWImapServers, dracd: ServerThread, account: tuple[str, str]) -> None:
    def pop3_fails() -> None:
        pop = uw.pop3("127.0.0.8")
        try:
            pop.user(account[0])
            with pytest.raises(poplib.error_proto, match="Bad login"):
                pop.pass_("wrong password")
            pop.quit()
        finally:
            pop.close()

    def imap_fails() -> None:
        with uw.imap("127.0.0.8") as imap, pytest.raises(imaplib.IMAP4.error):
            imap.login(account[0], "wrong password")

    # UW sleeps 3 s after a failed login: both at once.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(pop3_fails), pool.submit(imap_fails)]:
            future.result(timeout=15)
    uw.wait_for_log(r"^ipop3d\[\d+\]: Logout user=dractest host=")
    uw.wait_for_log(r"^imapd\[\d+\]: Logout user=dractest host=")
    assert "127.0.0.8" not in relay_map(dracd)
    assert not [line for line in uw.log_lines() if "DRAC" in line]


def test_v4_mapped_client_is_sent_as_ipv4(uw: UWImapServers, dracd: ServerThread, account: tuple[str, str]) -> None:
    """An IPv4 client reaching an IPv6 socket is ::ffff:a.b.c.d to UW; the map needs a.b.c.d."""
    replies, _ = pop3_login(uw, "127.0.0.9", account, mapped=True)
    assert replies[-1].startswith(b"+OK Mailbox open"), replies
    uw.wait_for_log(r"^ipop3d\[\d+\]: Login user=\S+ host=(?:\S+ )?\[::ffff:127\.0\.0\.9\]")
    keys = relay_map(dracd)
    assert "127.0.0.9" in keys and not [k for k in keys if k.startswith("::ffff:")], keys


def test_postfix_relays_after_pop3_and_imap_logins(
    uw: UWImapServers, dracd: ServerThread, account: tuple[str, str],
    postfix_factory: Callable[..., PostfixInstance],
) -> None:
    postfix = postfix_factory(dracd.config.map.path)
    for client in ("127.0.0.5", "::1"):
        assert postfix.probe_relay(client)[0] == 554
    pop3_login(uw, "127.0.0.5", account)
    with uw.imap("::1") as imap:
        assert imap.login(*account)[0] == "OK"
    for client in ("127.0.0.5", "::1"):
        code, text = postfix.probe_relay(client)
        assert code == 250, f"{client}: {code} {text}"
    assert postfix.probe_relay("127.0.0.6")[0] == 554


# ----------------------------------------------------------------- imapd refresh


def imap_adds(caplog: pytest.LogCaptureFixture, address: str) -> int:
    return sum(1 for r in caplog.records if r.name == "dracd.programs.drac"
               and re.match(rf"ADD {re.escape(address)} from .* ok, expires", r.getMessage()))


def test_imapd_refreshes_while_the_session_stays_active(
    uw: UWImapServers, dracd: ServerThread, account: tuple[str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dracd.programs.drac")
    uw.set_config(config_text(interval=1))
    with uw.imap("127.0.0.10") as imap:
        assert imap.login(*account)[0] == "OK"
        first = wait_in_map(dracd, "127.0.0.10")
        started = time.monotonic()
        while relay_map(dracd)["127.0.0.10"] <= first:  # NOOPs keep the session active
            assert time.monotonic() - started < 6, "the entry was never refreshed"
            assert imap.noop()[0] == "OK"
            time.sleep(0.1)
        for _ in range(10):  # 1 s more of commands, ten of them: about one refresh, not ten
            assert imap.noop()[0] == "OK"
            time.sleep(0.1)
        active = time.monotonic() - started
    adds = imap_adds(caplog, "127.0.0.10")
    assert 2 <= adds <= 3 + int(active), f"{adds} ADDs in {active:.1f} s with interval 1"

    # With the default interval (300 s) commands do not call dracd again.
    uw.set_config(config_text(interval=300))
    with uw.imap("127.0.0.11") as imap:
        assert imap.login(*account)[0] == "OK"
        first = wait_in_map(dracd, "127.0.0.11")
        for _ in range(15):
            assert imap.noop()[0] == "OK"
            time.sleep(0.1)
    assert imap_adds(caplog, "127.0.0.11") == 1
    assert relay_map(dracd)["127.0.0.11"] == first


# ----------------------------------------------------------------- dracd down


def test_pop3_login_with_dracd_stopped_is_quick_and_only_logged(
    make_server: Callable[..., ServerThread], rpcbind: None, uwimap_factory: Callable[..., UWImapServers],
    uw_build: UWBuild, account: tuple[str, str],
) -> None:
    server = make_server(rpcbind=True)
    server.stop()  # unregistered: rpcbind answers "program not registered"
    uw = uwimap_factory(drac_program=server.config.program, config=config_text(), build=uw_build)
    replies, elapsed = pop3_login(uw, "127.0.0.5", account)
    assert replies[-1].startswith(b"+OK Mailbox open"), replies
    assert not any(b"DRAC" in r or b"RPC" in r for r in replies)
    assert elapsed < LOGIN_BUDGET
    uw.wait_for_log(r"^ipop3d\[\d+\]: DRAC: cannot authorize 127\.0\.0\.5 at server 127\.0\.0\.1: .*not registered")
    # LOG_MAIL|LOG_WARNING, and the login itself still logged as usual
    assert re.search(r"^<20>.*DRAC: cannot authorize", uw.log_text(), re.M)
    uw.wait_for_log(r"^ipop3d\[\d+\]: Login user=dractest host=(?:\S+ )?\[127\.0\.0\.5\]")


@pytest.fixture
def black_hole(rpcbind: None) -> Iterator[int]:
    """A private program registered with rpcbind at UDP and TCP sockets that never answer."""
    prog = private_prog()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Not port 0 for both: an ephemeral UDP port may be some TCP connection's local port.
        port = free_port()
        udp.bind(("127.0.0.1", port))
        tcp.bind(("127.0.0.1", port))
        tcp.listen(1)  # connections complete in the backlog, nobody reads
        for vers in (1, 2):
            for netid in ("udp", "tcp"):
                assert rpcb.register(prog, vers, netid, rpcb.format_uaddr("127.0.0.1", port))
        yield prog
    finally:
        for vers in (1, 2):
            rpcb.unregister(prog, vers, "")
        udp.close()
        tcp.close()


@pytest.mark.parametrize(("timeout", "low", "high"), [(None, 1.0, LOGIN_BUDGET), ("0.5", 0.3, 1.5)])
def test_pop3_login_with_a_hung_dracd_waits_only_libdracs_timeout(
    uwimap_factory: Callable[..., UWImapServers], uw_build: UWBuild, account: tuple[str, str], black_hole: int,
    timeout: str | None, low: float, high: float,
) -> None:
    """Default: libdrac's 2 s; DRAC_TIMEOUT in the servers' environment shortens it."""
    env = {"DRAC_TIMEOUT": timeout} if timeout else {}
    uw = uwimap_factory(drac_program=black_hole, config=config_text(), build=uw_build, env=env)
    replies, elapsed = pop3_login(uw, "127.0.0.5", account)
    assert replies[-1].startswith(b"+OK Mailbox open"), replies
    assert low <= elapsed < high, f"login took {elapsed:.2f} s"
    uw.wait_for_log(r"^ipop3d\[\d+\]: DRAC: cannot authorize 127\.0\.0\.5 at server 127\.0\.0\.1: .*[Tt]imed out")


# ----------------------------------------------------------------- configuration


def test_missing_config_file_means_the_defaults(
    uwimap_factory: Callable[..., UWImapServers], uw_build: UWBuild, account: tuple[str, str], dracd: ServerThread,
) -> None:
    uw = uwimap_factory(drac_program=dracd.config.program, config=None, build=uw_build)
    replies, _ = pop3_login(uw, "127.0.0.12", account)
    assert replies[-1].startswith(b"+OK Mailbox open"), replies
    assert "127.0.0.12" in relay_map(dracd)  # the built-in server: 127.0.0.1
    line = uw.wait_for_log(r"DRAC: cannot read /etc/drac/uw-imap\.conf \(No such file or directory\), "
                           r"using built-in defaults: server 127\.0\.0\.1, interval 300 s")
    assert line is not None and len([x for x in uw.log_lines() if "DRAC" in x]) == 1  # logged once
    assert re.search(r"^<22>.*DRAC: cannot read", uw.log_text(), re.M)  # LOG_MAIL|LOG_INFO


def test_config_is_read_as_the_logged_in_user(uw: UWImapServers, dracd: ServerThread,
                                              account: tuple[str, str]) -> None:
    """The hook runs after UW dropped root: a config file only root can read means the defaults."""
    uw.put_etc_file("drac/uw-imap.conf", config_text(), mode=0o600)
    replies, _ = pop3_login(uw, "127.0.0.16", account)
    assert replies[-1].startswith(b"+OK Mailbox open"), replies
    assert "127.0.0.16" in relay_map(dracd)
    uw.wait_for_log(r"^ipop3d\[\d+\]: DRAC: cannot read /etc/drac/uw-imap\.conf \(Permission denied\), using "
                    r"built-in defaults")


@pytest.mark.parametrize(("config", "complaint"), [
    ("server 127.0.0.1\nfrobnicate 3\n", r"line 2: unknown keyword"),
    ("# drac\ninterval soon\n", r"line 2: bad interval"),
    ("interval 99999999\n", r"line 1: bad interval"),
    ("server 127.0.0.1 127.0.0.2\n", r"line 1: expected a keyword and one value"),
    ("server /etc/passwd\n", r"line 1: bad server"),
    ("server\n", r"line 1: expected a keyword and one value"),
])
def test_bad_config_file_means_the_defaults(uw: UWImapServers, dracd: ServerThread, account: tuple[str, str],
                                            config: str, complaint: str) -> None:
    uw.set_config(config)
    replies, _ = pop3_login(uw, "127.0.0.13", account)
    assert replies[-1].startswith(b"+OK Mailbox open"), replies
    assert "127.0.0.13" in relay_map(dracd)
    uw.wait_for_log(rf"^ipop3d\[\d+\]: DRAC: /etc/drac/uw-imap\.conf {complaint}.*; using built-in defaults: "
                    r"server 127\.0\.0\.1, interval 300 s$")


def test_config_server_is_used_and_never_resolved_through_dns(
    uw: UWImapServers, dracd: ServerThread, account: tuple[str, str],
) -> None:
    """A name is looked up through the namespace's /etc/hosts only: an unknown one fails at once."""
    uw.set_config(config_text(server="drac.test.invalid"))
    replies, elapsed = pop3_login(uw, "127.0.0.14", account)
    assert replies[-1].startswith(b"+OK Mailbox open"), replies
    assert elapsed < 1.0
    uw.wait_for_log(r"DRAC: cannot authorize 127\.0\.0\.14 at server drac\.test\.invalid: ")
    assert "127.0.0.14" not in relay_map(dracd)
    uw.set_config(config_text(server="::1"))  # an IPv6 literal reaches dracd too
    pop3_login(uw, "127.0.0.15", account)
    assert "127.0.0.15" in relay_map(dracd)


def test_logwatch_uw_preset_reads_the_real_servers_lines(uw: UWImapServers, dracd: ServerThread,
                                                         account: tuple[str, str]) -> None:
    """The lines ipop3d and imapd really write are what dracd-logwatch's uw preset
    recognizes (for MRAs that are not patched): a login yields its client, a
    failed login and everything else nothing."""
    from dracd_logwatch.presets import Matcher, RuleOptions, preset_rule
    from dracd_logwatch.record import parse_syslog_datagram

    pop3_login(uw, "127.0.0.21", account)
    with uw.imap("::1") as imap:
        assert imap.login(*account)[0] == "OK"
    with uw.imap("127.0.0.22") as imap, pytest.raises(imaplib.IMAP4.error):
        imap.login(account[0], "wrong password")
    uw.wait_for_log(r"^imapd\[\d+\]: Login user=\S+ host=(?:\S+ )?\[::1\]")
    matcher = Matcher([preset_rule("uw", RuleOptions())])
    found = []
    for line in uw.log_text().splitlines():
        record = parse_syslog_datagram(line.encode())
        if record is not None and (login := matcher.match(record)) is not None:
            found.append(login.ip)
    assert "127.0.0.21" in found and "::1" in found
    assert "127.0.0.22" not in found
