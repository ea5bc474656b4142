"""End to end with the real Sendmail 8.17 over socketmap: live lookups, no map file.

The private Sendmail of tests/fixtures/sendmail.py (own network, mount, UTS and
PID namespaces; only ``lo``) is built with ``Kdrac socket -T<TMPF>
local:SOCK`` instead of the btree map. It cannot reach dracd's TCP ports on
the machine's loopback (its network namespace holds only its own ``lo``), but
a UNIX socket crosses namespaces through the filesystem: each test's dracd
serves ``socketmap: unix:SOCK`` in a short, world-searchable directory shared
by the module (below /run, like a real ``/run/dracd/socketmap.sock``: Sendmail
refuses a socket below a world-writable directory such as /tmp).

DESIGN.md section 4: with ``-T<TMPF>`` a failed lookup (dracd down) returns the
key with `` <TMPF>`` appended, which the DRAC ruleset's ``R$+ $@ $#OK``
matches: it **fails open** (relays). The fail-closed rule
``R$* <TMPF>  $#error $@ 4.3.0 $: "451 ..."`` right after the lookup line turns
that into a temporary failure. The module's main instance has the rule;
``test_without_the_rule_it_fails_open`` starts a second one without it.

Clients: 127.0.0.5 and 2001:db8::5 (Sendmail's own Relay_ok always relays for
127.0.0.1 and ::1).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dracclient import add
from dracclient.cli import main as dracctl
from tests.fixtures.sendmail import SendmailError, SendmailInstance, ensure_sendmail
from tests.fixtures.server import ServerThread

pytestmark = pytest.mark.timeout(60)

CLIENT = "127.0.0.5"
CLIENT6 = "2001:db8::5"
CLIENT6_KEY = "IPv6:2001:db8:0:0:0:0:0:5"  # ${client_addr} of CLIENT6: what Sendmail looks up
DENIED = "Relaying denied"
FAIL_CLOSED = 'R$* <TMPF>\t$#error $@ 4.3.0 $: "451 Temporary DRAC lookup failure"'


@pytest.fixture(scope="module")
def sock_path() -> Iterator[Path]:
    # Short (sun_path is 108 bytes) and world-searchable: Sendmail reaches it from its namespaces.
    # Not below /tmp: Sendmail refuses a local: socket under a world-writable directory ("SYSERR:
    # socket map "drac": local socket name ... unsafe: World writable directory"), even with
    # DontBlameSendmail=MapInUnsafeDirPath; the lookup then fails like a dead dracd (TMPF).
    directory = Path(tempfile.mkdtemp(prefix="dracd-smsock-", dir="/run"))
    directory.chmod(0o755)
    yield directory / "socketmap.sock"
    shutil.rmtree(directory, ignore_errors=True)


def start_sendmail(base_dir: Path, sock: Path, tmpf_rule: str | None) -> SendmailInstance:
    try:
        # map_path is required by the fixture but unused: the K line names the socket instead.
        instance = SendmailInstance(base_dir, base_dir / "unused.db", dist=ensure_sendmail(),
                                    client_addresses=(CLIENT6,),
                                    drac_map=f"socket -T<TMPF> local:{sock}", tmpf_rule=tmpf_rule)
        instance.start()
    except SendmailError as e:
        pytest.fail(f"cannot run the private Sendmail: {e}", pytrace=False)
    return instance


@pytest.fixture(scope="module")
def sendmail(tmp_path_factory: pytest.TempPathFactory, sock_path: Path) -> Iterator[SendmailInstance]:
    instance = start_sendmail(tmp_path_factory.mktemp("sendmail-sm"), sock_path, FAIL_CLOSED)
    yield instance
    instance.stop()  # raises if anything of the namespace is left


@pytest.fixture
def drac(make_server: Callable[..., ServerThread], sock_path: Path) -> Callable[..., ServerThread]:
    """``drac(**config)``: a dracd serving socketmap on the module's UNIX socket."""
    def make(**changes: object) -> ServerThread:
        return make_server(socketmap=(f"unix:{sock_path}",), **changes)
    return make


def add_ip(server: ServerThread, address: str) -> None:
    add(address, servers="127.0.0.1", port=server.port, prog=server.config.program)


def delete_ip(server: ServerThread, address: str) -> None:
    assert dracctl(["-S", str(server.config.admin_socket), "--program", str(server.config.program),
                    "del", address]) == 0


def assert_denied(reply: tuple[int, str], sendmail: SendmailInstance) -> None:
    code, text = reply
    assert code == 550 and text.startswith("5.7.1") and DENIED in text, \
        f"expected 550 5.7.1 ... {DENIED}, got {reply}\n{sendmail.diagnostics()}"


def assert_relays(reply: tuple[int, str], sendmail: SendmailInstance) -> None:
    assert reply[0] == 250, f"expected 250, got {reply}\n{sendmail.diagnostics()}"


def test_the_cf_uses_the_socket_map(sendmail: SendmailInstance, sock_path: Path) -> None:
    cf = sendmail.cf_path.read_text()
    assert f"Kdrac socket -T<TMPF> local:{sock_path}\n" in cf
    assert FAIL_CLOSED + "\n" in cf
    assert "btree" not in cf.split("Kdrac", 1)[1].split("\n", 1)[0]


def test_relay_follows_add_and_delete(sendmail: SendmailInstance, drac: Callable[..., ServerThread]) -> None:
    server = drac()
    assert_denied(sendmail.probe_relay(CLIENT), sendmail)

    add_ip(server, CLIENT)
    assert_relays(sendmail.probe_relay(CLIENT), sendmail)
    value = sendmail.map_lookup(CLIENT)  # `sendmail -bt` /map drac: the expiry, live from dracd
    assert value is not None and int(value) > time.time(), value
    assert_denied(sendmail.probe_relay("127.0.0.6"), sendmail)

    delete_ip(server, CLIENT)
    assert_denied(sendmail.probe_relay(CLIENT), sendmail)  # at once: no file, no new session needed
    assert sendmail.map_lookup(CLIENT) is None


def test_ipv6_client(sendmail: SendmailInstance, drac: Callable[..., ServerThread]) -> None:
    assert sendmail.client_addr(CLIENT6) == CLIENT6_KEY
    server = drac()  # default map ipv6_keys (postfix): the socketmap answers both forms anyway
    assert_denied(sendmail.probe_relay(CLIENT6), sendmail)

    add_ip(server, CLIENT6)
    assert_relays(sendmail.probe_relay(CLIENT6), sendmail)
    assert sendmail.map_lookup(CLIENT6_KEY) is not None
    assert sendmail.map_lookup(CLIENT6_KEY.lower()) is not None
    assert_denied(sendmail.probe_relay(CLIENT), sendmail)

    delete_ip(server, CLIENT6)
    assert_denied(sendmail.probe_relay(CLIENT6), sendmail)


def test_dracd_down_fails_closed(sendmail: SendmailInstance, drac: Callable[..., ServerThread]) -> None:
    server = drac()
    add_ip(server, CLIENT)
    assert_relays(sendmail.probe_relay(CLIENT), sendmail)
    server.stop()
    # The lookup fails (TMPF); the fail-closed rule answers 451: retry later, nothing relayed.
    code, text = sendmail.probe_relay(CLIENT)
    assert code == 451 and "4.3.0" in text and "Temporary DRAC lookup failure" in text, \
        f"expected 451 4.3.0, got {(code, text)}\n{sendmail.diagnostics()}"
    code, text = sendmail.probe_relay("127.0.0.6")
    assert code == 451, (code, text)


def test_without_the_rule_it_fails_open(
    sendmail: SendmailInstance, tmp_path: Path, sock_path: Path, drac: Callable[..., ServerThread]
) -> None:
    # The module's instance holds port 2526 in its own namespace; this one has a namespace of its own.
    open_sm = start_sendmail(tmp_path / "sm-open", sock_path, None)
    try:
        assert "<TMPF>\t$#error" not in open_sm.cf_path.read_text()
        server = drac()
        assert_denied(open_sm.probe_relay(CLIENT), open_sm)  # NOTFOUND: denied, as with the rule
        server.stop()
        # dracd down: "127.0.0.5 <TMPF>" matches R$+ -> $#OK: the ruleset relays anyone.
        assert_relays(open_sm.probe_relay(CLIENT), open_sm)
        assert_relays(open_sm.probe_relay("127.0.0.6"), open_sm)
    finally:
        open_sm.stop()
