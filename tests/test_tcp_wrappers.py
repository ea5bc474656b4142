"""tcp_wrappers as Debian's rpc.dracd had them (issue 17 item 3).

Debian's drac 1.12-8 built rpc.dracd against libwrap: a caller had to pass
hosts_access(5) for daemon ``dracd`` too (rpc.dracd(8), "TCP_WRAPPERS
SUPPORT"). dracd asks the same library (dracd/server/wrappers.py). The in-process
tests point libwrap at files under tmp_path; the end-to-end tests start the
real ``rpc.dracd`` in namespaces of its own (as tests/test_legacy_layouts.py
does), with its own /etc/hosts.allow and /etc/hosts.deny, so that
``tcp_wrappers: auto`` decides from the layout it finds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dracd.app.cli import main
from dracd.config import ConfigError, config_from_dict
from dracd.server import wrappers as wrappers_module
from dracd.server.wrappers import HostsAccess
from tests.fixtures.namespace import drive, run_driver
from tests.fixtures.server import ServerThread, add_status, test_config
from tests.test_legacy_layouts import ALLOWED, DRACPROG, REFUSED, RELAYED

pytestmark = pytest.mark.timeout(60)

HOSTS_ALLOW = f"# MRAs\ndracd: {ALLOWED}\n"
HOSTS_DENY = "dracd: ALL\n"
#: The allow file lets both callers in: only hosts.deny refuses 127.0.0.3.
DRACD_ALLOW = "255.255.255.255 127.0.0.1\n255.255.255.255 127.0.0.2\n255.255.255.255 127.0.0.3\n"


def wrappers(tmp_path: Path, allow: str = HOSTS_ALLOW, deny: str = HOSTS_DENY) -> HostsAccess:
    (tmp_path / "hosts.allow").write_text(allow)
    (tmp_path / "hosts.deny").write_text(deny)
    return HostsAccess(tmp_path / "hosts.allow", tmp_path / "hosts.deny")


# --- libwrap's answers ---------------------------------------------------------------------------


def test_hosts_access_answers_for_daemon_dracd(tmp_path: Path) -> None:
    check = wrappers(tmp_path, allow="sshd: ALL\ndracd: 127.0.0.2 192.0.2.0/255.255.255.0 [::1]\n")
    assert check.permits("127.0.0.2") and check.permits("192.0.2.77") and check.permits("::1")
    assert not check.permits("127.0.0.3") and not check.permits("198.51.100.1")


def test_host_name_patterns_never_match_no_dns_is_made(tmp_path: Path) -> None:
    # localhost resolves to 127.0.0.1 everywhere: it would match if a lookup were made.
    check = wrappers(tmp_path, allow="dracd: localhost .example.org LOCAL KNOWN\n")
    assert not check.permits("127.0.0.1")
    assert wrappers(tmp_path, allow="dracd: UNKNOWN\n").permits("127.0.0.1")
    # Nor is the server's address known to hosts_ctl: daemon@host patterns never match.
    assert not wrappers(tmp_path, allow="dracd@127.0.0.1: ALL\n").permits("127.0.0.1")


def test_no_files_means_everyone_as_hosts_access_5(tmp_path: Path) -> None:
    assert HostsAccess(tmp_path / "absent.allow", tmp_path / "absent.deny").permits("198.51.100.1")


def test_each_check_reads_its_own_files_and_rereads_them(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = wrappers(tmp_path / "a")
    second = wrappers(tmp_path / "b", allow="dracd: 127.0.0.3\n")
    assert first.permits("127.0.0.2") and not first.permits("127.0.0.3")
    assert second.permits("127.0.0.3") and not second.permits("127.0.0.2")
    (tmp_path / "a" / "hosts.allow").write_text("dracd: 127.0.0.3\n")  # applies at once, as legacy
    assert first.permits("127.0.0.3")


def test_a_missing_libwrap_is_a_config_error_naming_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(wrappers_module.ctypes.util, "find_library", lambda name: "libwrap-absent.so.0")
    with pytest.raises(ConfigError, match="install libwrap0.*tcp_wrappers: false"):
        HostsAccess()
    (tmp_path / "dracd.yaml").write_text("tcp_wrappers: true\n")
    assert main(["-c", str(tmp_path / "dracd.yaml"), "--check-config", str(tmp_path / "dracd.db")]) == 78
    assert "libwrap.so.0 cannot be loaded" in capsys.readouterr().err
    assert wrappers_module.from_setting(False) == (None, "tcp_wrappers off, as configured")


@pytest.mark.parametrize(("text", "named"), [
    ("dracd: 127.0.0.2\n", True),
    ("sshd, DRACD : ALL\n", True),
    ("dracd@192.0.2.1: ALL\n", True),
    ("ALL EXCEPT dracd: ALL\n", True),
    ("# dracd: 127.0.0.2\nALL: ALL\n", False),
    ("rpc.dracd: ALL\n", False),  # libwrap would never match it for daemon dracd
    ("sshd: dracd.example.org\n", False),
    ("dracd\n", False),
])
def test_what_counts_as_a_rule_for_dracd(text: str, named: bool, tmp_path: Path) -> None:
    (tmp_path / "hosts.allow").write_text(text)
    assert wrappers_module.mentions_dracd(tmp_path / "hosts.allow") is named
    assert not wrappers_module.mentions_dracd(tmp_path / "absent")


def test_host_name_patterns_for_dracd_are_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Debian's rpc.dracd(8) suggested `dracd: .bar.com`: such a rule silently stops
    matching with dracd (no lookups), so the log and --check-config name it."""
    allow, deny = tmp_path / "hosts.allow", tmp_path / "hosts.deny"
    allow.write_text("# MRAs\ndracd: .bar.com 192.0.2.10 [2001:db8::]/32, mail.example.org\n"
                     "sshd: .bar.com\nALL: LOCAL : spawn /bin/true\n")
    deny.write_text("dracd: ALL EXCEPT KNOWN\n")
    monkeypatch.setattr(wrappers_module, "HOSTS_ALLOW", allow)
    monkeypatch.setattr(wrappers_module, "HOSTS_DENY", deny)
    problems = wrappers_module.name_patterns()
    assert [p.split(":", 1)[0] for p in problems] == [f"{allow}, line 2", f"{allow}, line 2", f"{allow}, line 4",
                                                       f"{deny}, line 1"]
    assert "'.bar.com'" in problems[0] and "'mail.example.org'" in problems[1] and "'LOCAL'" in problems[2]
    assert "'KNOWN'" in problems[3] and all("never matches" in p for p in problems)
    # --check-config names them (warnings: exit 0), as the start log does.
    from dracd.app.cli import main as dracd_main

    config = tmp_path / "dracd.yaml"
    config.write_text(f"map: {{path: {tmp_path / 'dracd.db'}}}\ntcp_wrappers: true\nadmin_socket: ''\n")
    assert dracd_main(["--check-config", "-c", str(config)]) == 0
    out = capsys.readouterr()
    assert out.err.count("never matches") == 4 and "4 warning(s)" in out.out


# --- the key -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "parsed"), [(True, True), (False, False), ("auto", None)])
def test_tcp_wrappers_key(value: object, parsed: bool | None, tmp_path: Path) -> None:
    assert config_from_dict({"tcp_wrappers": value}, tmp_path / "dracd.yaml").tcp_wrappers is parsed
    assert config_from_dict({}, tmp_path / "dracd.yaml").tcp_wrappers is None


def test_tcp_wrappers_key_rejects_other_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tcp_wrappers.*true, false or auto"):
        config_from_dict({"tcp_wrappers": "yes"}, tmp_path / "dracd.yaml")


# --- the running service -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_refused_by_hosts_deny_gets_add_perm_and_is_counted(transport: str, tmp_path: Path) -> None:
    (tmp_path / "dracd.allow").write_text(DRACD_ALLOW)
    config = test_config(tmp_path, allow_file=tmp_path / "dracd.allow", tcp_wrappers=False)
    with ServerThread(config) as server:
        assert add_status(server, "192.0.2.7", source=REFUSED, transport=transport).name == "ADD_SUCCESS"
        check = wrappers(tmp_path)
        server.call(lambda: setattr(server.daemon.settings, "wrappers", check))  # type: ignore[union-attr]
        assert add_status(server, "192.0.2.7", source=ALLOWED, transport=transport).name == "ADD_SUCCESS"
        assert add_status(server, "192.0.2.8", source=REFUSED, transport=transport).name == "ADD_PERM"
        metrics = server.call(lambda: server.daemon.metrics.refusals.values)  # type: ignore[union-attr]
    assert metrics == {("tcp_wrappers",): 1}


def test_sighup_turns_tcp_wrappers_on_and_off(tmp_path: Path) -> None:
    from dataclasses import replace

    config = test_config(tmp_path, tcp_wrappers=False)
    with ServerThread(config) as server:
        assert server.daemon is not None
        server.call(lambda: server.daemon.reload(replace(config, tcp_wrappers=True)))  # type: ignore[union-attr]
        assert isinstance(server.daemon.settings.wrappers, HostsAccess)
        server.call(lambda: server.daemon.reload(config))  # type: ignore[union-attr]
        assert server.daemon.settings.wrappers is None


# --- the real rpc.dracd, in a layout of its own ----------------------------------------------------

#: name: (directories under /etc, hosts.allow, hosts.deny, config text or None)
SCENARIOS: dict[str, tuple[tuple[str, ...], str, str, str | None]] = {
    "debian": (("/etc/drac",), HOSTS_ALLOW, HOSTS_DENY, None),
    "debian-off": (("/etc/drac",), HOSTS_ALLOW, HOSTS_DENY, "tcp_wrappers: false\n"),
    "debian-no-rule": (("/etc/drac",), "sshd: 127.0.0.1\n", "ALL EXCEPT sshd: ALL\n", None),
    "upstream": (("/etc/mail",), HOSTS_ALLOW, HOSTS_DENY, None),
    "upstream-on": (("/etc/mail",), HOSTS_ALLOW, HOSTS_DENY, "tcp_wrappers: true\n"),
}


def run_scenario(name: str, tmp_path: Path) -> dict[str, Any]:
    return run_driver(__file__, [name], tmp_path)


@pytest.mark.parametrize(("name", "on"), [("debian", True), ("debian-off", False), ("debian-no-rule", False),
                                          ("upstream", False), ("upstream-on", True)])
def test_rpc_dracd_asks_hosts_access_as_the_layout_says(name: str, on: bool, tmp_path: Path) -> None:
    data = run_scenario(name, tmp_path)
    log, check = data["log"], data["check"]
    assert data["start_status"] == 0, log
    refused = "ADD_PERM" if on else "ADD_SUCCESS"
    assert data["adds"] == {ALLOWED: "ADD_SUCCESS", REFUSED: refused}, log
    state = "tcp_wrappers on" if on else "tcp_wrappers off"
    assert check["status"] == 0 and state in check["stdout"], check
    assert state in log, log
    if on:
        assert "hosts.allow/hosts.deny refuse it" in log, log
    why = {"debian": "auto, as /etc/drac exists and /etc/hosts.allow and /etc/hosts.deny have a rule for dracd",
           "debian-off": "as configured", "upstream-on": "as configured",
           "debian-no-rule": "neither /etc/hosts.allow nor /etc/hosts.deny has a rule for dracd; but "
                             "/etc/hosts.deny has an ALL rule, which Debian's rpc.dracd obeyed: set tcp_wrappers: true",
           "upstream": "/etc/drac does not exist"}[name]
    assert why in check["stdout"], check


# --- the driver, run inside the namespaces -------------------------------------------------------


def scenario(name: str, out: Path, result: dict[str, Any]) -> None:
    import shutil

    from tests.fixtures.namespace import Rpcbind
    from tests.fixtures.process import RPC_DRACD, add_status, registered_port
    from tests.test_legacy_layouts import _daemon_pid, _isolate, _reap

    dirs, allow, deny, config = SCENARIOS[name]
    _isolate(out)
    for directory in ("/etc/drac", "/etc/mail"):
        shutil.rmtree(directory, ignore_errors=True)  # in the overlay: the host keeps its own
    for directory in dirs:
        Path(directory).mkdir(mode=0o755)
        (Path(directory) / "dracd.allow").write_text(DRACD_ALLOW)
    Path("/etc/hosts.allow").write_text(allow)
    Path("/etc/hosts.deny").write_text(deny)
    args = [str(RPC_DRACD)]
    if config is not None:
        Path("/etc/dracd.yaml").write_text(config)
        args += ["-c", "/etc/dracd.yaml"]
    check = subprocess.run([*args, "--check-config"], capture_output=True, text=True, timeout=20)
    result["check"] = {"status": check.returncode, "stdout": check.stdout + check.stderr}
    result["_rpcbind"] = Rpcbind()
    log = out / "rpc.dracd.log"
    result["_log"] = log
    with open(log, "ab") as handle:
        result["start_status"] = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle,
                                                cwd="/", timeout=20).returncode
    if result["start_status"] != 0:
        return
    pid = _daemon_pid()
    port = registered_port(DRACPROG)
    result["adds"] = {source: add_status(port, DRACPROG, relayed, source=source, transport="tcp").name
                      for source, relayed in RELAYED.items()}
    os.kill(pid, signal.SIGTERM)
    result["stop_status"] = _reap(pid, 10)


def driver(name: str, out: Path) -> int:
    return drive(lambda result: scenario(name, out, result))


if __name__ == "__main__":
    sys.exit(driver(sys.argv[1], Path(sys.argv[2])))
