"""The allow file follows legacy rpc.dracd exactly (issue 16, fault 6; issue 17, item 2).

DRAC read ``MASK ADDR`` lines and allowed a caller if ``(caller & mask) ==
addr``: the address is not masked, so a line whose address has bits outside
its mask (fields swapped, a host address with a net mask) matches nobody.
dracd masked the address too and so let such lines admit whole networks.
Such a line still matches nobody; ``--check-config`` and the start say so.
CIDR lines are dracd's own extension; one with host bits set (192.0.2.5/24)
is treated the same way: it matches nobody and is reported.

Each line is read as DRAC read it, with sscanf("%[0-9.] %[0-9.]") and
inet_addr(): tests/c/allowread.c runs the C library's own functions on the
same lines, and dracd must make the same rule of each, or skip it. A line
DRAC skipped is skipped with a warning naming file and line, never fatal.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dracclient.drac import AddStat
from dracd.relay.policy import MaskRule, NetRule, load_allow_file, parse_allow_line
from tests.fixtures.process import DRACD, DracdProcess, run_command
from tests.fixtures.server import ServerThread, add_status, private_prog

pytestmark = pytest.mark.timeout(40)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def legacy_permits(mask: str, addr: str, caller: str) -> bool:
    """DRAC 1.12's test, in so many words."""
    return int(ip(caller)) & int(ip(mask)) == int(ip(addr))


LINES = [
    ("255.255.255.0", "192.0.2.0"),     # the usual line
    ("192.0.2.0", "255.255.255.0"),     # fields swapped: nobody
    ("255.255.255.0", "192.0.2.77"),    # host bits outside the mask: nobody
    ("255.0.0.255", "10.0.0.7"),        # a non-contiguous mask: any 10.x.y.7
    ("0.0.0.0", "0.0.0.0"),             # everyone
    ("0.0.0.0", "192.0.2.1"),           # nobody
    ("255.255.255.255", "192.0.2.1"),   # one host
]
CALLERS = ["192.0.2.1", "192.0.2.77", "192.0.3.1", "255.255.255.1", "10.1.2.7", "10.1.2.8", "198.51.100.7",
           "0.0.0.0", "127.0.0.1"]


@pytest.mark.parametrize(("mask", "addr"), LINES)
def test_mask_lines_match_exactly_as_legacy(mask: str, addr: str) -> None:
    rule = parse_allow_line(f"{mask} {addr}")
    assert rule is not None
    for caller in CALLERS:
        assert rule.matches(ip(caller)) == legacy_permits(mask, addr, caller), (mask, addr, caller)


def test_lines_that_match_nobody_are_reported_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "dracd.allow"
    path.write_text("# ok\n255.255.255.0 192.0.2.0\n192.0.2.0 255.255.255.0\n255.255.255.0 192.0.2.77\n"
                    "198.51.100.5/24\n2001:db8::1/64\n203.0.113.0/24\n")
    allow = load_allow_file(path)
    assert len(allow.problems) == 4
    for number, problem in zip((3, 4, 5, 6), allow.problems, strict=True):
        assert f"{path}, line {number}" in problem and "matches no caller" in problem
    assert not allow.permits(ip("198.51.100.5")) and not allow.permits(ip("2001:db8::1"))
    assert allow.permits(ip("203.0.113.6")) and allow.permits(ip("192.0.2.1"))
    assert not allow.permits(ip("255.255.255.1"))


def test_legacy_ignores_text_after_the_address(tmp_path: Path) -> None:
    """sscanf("%[0-9.] %[0-9.]") stops after the address: the rest of the line is ignored."""
    rule = parse_allow_line("255.255.255.255 127.0.0.1 mail-relay 1")
    assert rule is not None and rule.matches(ip("127.0.0.1")) and not rule.matches(ip("127.0.0.2"))


@pytest.mark.parametrize("line", ["127.0.0.0 255.0.0.0", "255.255.255.0 127.0.0.5", "127.0.0.5/8"])
def test_real_server_refuses_what_legacy_refused(make_server: Callable[..., ServerThread], tmp_path: Path,
                                                 line: str) -> None:
    """Each line admitted all of 127/8 under the masked rule; legacy admitted nobody.
    The second line of the file admits 127.0.0.3 only, to show the file is in force."""
    allow = tmp_path / "mras.allow"
    allow.write_text(f"{line}\n255.255.255.255 127.0.0.3\n")
    server = make_server(allow_file=allow)
    for source in ("127.0.0.1", "127.0.0.2", "127.0.0.5"):
        assert add_status(server, "192.0.2.7", source=source) == AddStat.ADD_PERM, source
    assert add_status(server, "192.0.2.7", source="127.0.0.3") == AddStat.ADD_SUCCESS


def check_and_start(tmp_path: Path, allow_text: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """``dracd --check-config`` on an allow file holding ``allow_text``, then the real dracd
    started (and stopped cleanly) on it: the check's result and the start's log."""
    allow = tmp_path / "dracd.allow"
    allow.write_text(allow_text)
    db = tmp_path / "dracd.db"
    result = run_command([DRACD, "--check-config", "--allow", allow, db])
    process = DracdProcess(["--no-rpcbind", "--port", "0", "--listen", "127.0.0.1", "--program",
                            str(private_prog()), "--allow", str(allow), str(db)],
                           log_path=tmp_path / "dracd.log", cwd=tmp_path, exe=DRACD)
    try:
        process.start().wait_ready(10)
        log = process.log()
        assert process.stop() == 0
    finally:
        process.kill()
    return result, log


def test_check_config_and_start_report_such_lines(tmp_path: Path) -> None:
    result, log = check_and_start(tmp_path, "255.255.255.255 127.0.0.1\n192.0.2.0 255.255.255.0\n")
    allow = tmp_path / "dracd.allow"
    assert result.returncode == 0, result.stderr
    assert f"{allow}, line 2" in result.stderr and "matches no caller" in result.stderr
    assert "OK" in result.stdout and "1 warning" in result.stdout
    assert f"{allow}, line 2" in log and "matches no caller" in log, log


C_READER = Path(__file__).resolve().parent / "c" / "allowread.c"

#: Lines DRAC read (or skipped) in ways easy to get wrong.
LEGACY_LINES = [
    "255.255.255.0 192.0.2.0", "255.255.255.255 127.0.0.1 localhost", "255.255.255.0\t192.0.2.0\r",
    "255.255.255.0 192.0.2.0;x", "255.255.255.0 192.0.2.0/24", "255.255.255.255 127.0.0.1# this host",
    "255.255.255.0 127.0.0.x", "255.255.255.0 127.0.0.", "255.255.255.0 ..", "255.255.255.0 2001:db8::",
    "255.255.255.0.0 192.0.2.7", "1.2.3.4.5 127.0.0.1", "255.255.255.256 127.0.0.1", "..1 1",
    "255.255.255.0 192.168.010.0", "255.255.255.0 192.168.08.0", "255.255.255.255 0177.0.0.1",
    "255.0 10.1", "0 0", "4294967295 127.0.0.1", "4294967296 127.0.0.1", "255.255.65535 10.0.1",
    "  255.255.255.0 192.0.2.0", "255.255.255.0", "255.255.255.0192.0.2.0", "255.255.255.0#x 192.0.2.0",
    "#255.255.255.255 127.0.0.1", " # a comment", "", "192.0.2.1", "mail.example.org",
    "255.255.255.255 mail.example.org", "x 255.255.255.255 127.0.0.1",
]
#: dracd's own lines: DRAC skipped each of them.
EXTENSION_LINES = ["192.0.2.0/24", "2001:db8::/32", "  10.0.0.0/8   # MRAs", "::1/128", "192.0.2.5/24"]


def dracd_reads(line: str) -> str:
    """What dracd makes of ``line``, in allowread's terms (a CIDR rule is "net")."""
    try:
        rule = parse_allow_line(line + "\n")
    except ValueError:
        return "skip"
    if rule is None:
        return "skip"
    return "net" if isinstance(rule, NetRule) else f"{rule.mask:08x} {rule.addr:08x}"


@pytest.fixture(scope="module")
def allowread(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("allowread") / "allowread"
    built = subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(C_READER)],
                           capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    return binary


def legacy_reads(allowread: Path, lines: list[str]) -> list[str]:
    out = subprocess.run([str(allowread)], input="".join(line + "\n" for line in lines), capture_output=True,
                         text=True, timeout=10, check=True).stdout.splitlines()
    assert len(out) == len(lines)
    return out


def test_each_line_makes_the_rule_drac_made_or_is_skipped_as_drac_skipped_it(allowread: Path) -> None:
    expected = legacy_reads(allowread, LEGACY_LINES)
    assert [dracd_reads(line) for line in LEGACY_LINES] == expected
    # The C library and dracd agree on what needs showing: these lines made rules.
    assert dict(zip(LEGACY_LINES, expected, strict=True))["255.255.255.0 192.0.2.0;x"] == "ffffff00 c0000200"
    assert dict(zip(LEGACY_LINES, expected, strict=True))["255.255.255.0 192.168.010.0"] == "ffffff00 c0a80800"


def test_dracd_extensions_are_lines_drac_skipped(allowread: Path) -> None:
    assert legacy_reads(allowread, EXTENSION_LINES) == ["skip"] * len(EXTENSION_LINES)
    assert [dracd_reads(line) for line in EXTENSION_LINES] == ["net"] * len(EXTENSION_LINES)


def test_a_mask_inet_addr_rejects_allows_the_address_alone_as_in_drac() -> None:
    rule = parse_allow_line("255.255.255.0.0 192.0.2.7\n")
    assert isinstance(rule, MaskRule) and rule.matches(ip("192.0.2.7")) and not rule.matches(ip("192.0.2.8"))
    assert rule.problem() is not None and "192.0.2.7 alone" in rule.problem()


def test_skipped_lines_are_warnings_naming_file_and_line_never_fatal(tmp_path: Path) -> None:
    path = tmp_path / "dracd.allow"
    path.write_text("# MRAs\n255.255.255.255 127.0.0.2\nmail.example.org\n  255.255.255.255 127.0.0.3\n"
                    "192.0.2.1\n192.0.2.0/33\n2001:db8::1\n255.255.255.0 198.51.100.0;x\n"
                    "203.0.113.0/24 198.51.100.0/24\n")
    allow = load_allow_file(path)
    skipped = [problem for problem in allow.problems if ": skipped: " in problem]
    assert [problem.split(":", 1)[0] for problem in skipped] == [f"{path}, line {n}" for n in (3, 4, 5, 6, 7)]
    assert "starts with a blank" in skipped[1]
    assert "not a network" in skipped[3]
    assert f"{path}, line 9: " in allow.problems[-1] and "'198.51.100.0/24' after the network is ignored" \
        in allow.problems[-1]
    assert allow.permits(ip("127.0.0.2")) and allow.permits(ip("198.51.100.9")) and allow.permits(ip("203.0.113.1"))
    for caller in ("127.0.0.3", "192.0.2.1", "2001:db8::1", "198.51.101.1"):
        assert not allow.permits(ip(caller)), caller


def test_check_config_and_start_skip_lines_drac_skipped(tmp_path: Path) -> None:
    result, log = check_and_start(
        tmp_path, "255.255.255.255 127.0.0.1 localhost\nmra.example.org\n255.255.255.255 127.0.0.2;x\n")
    allow = tmp_path / "dracd.allow"
    assert result.returncode == 0, result.stderr
    assert f"{allow}, line 2: 'mra.example.org': skipped" in result.stderr
    assert "OK" in result.stdout and "1 warning" in result.stdout
    assert f"{allow}, line 2: 'mra.example.org': skipped" in log
