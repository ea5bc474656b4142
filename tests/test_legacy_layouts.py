"""rpc.dracd started the way each legacy installation's admin started it (issue 17).

DRAC was installed three ways (DESIGN.md section 2): upstream 1.12 keeps its
map and allow file in /etc/mail, the Debian/Ubuntu package and the RPM-style
builds in /etc/drac. Each test builds one layout and starts the real
``rpc.dracd`` bare, as ``rpc.dracd -e 30 DBFILE``, or as that variant's
init script did (Debian: start-stop-daemon by name; RPM-style and upstream
rc scripts: the program, found later with pidof), then shows the map
written where the MTA reads it, the allow file honoured (127.0.0.2 is
allowed by it alone, 127.0.0.3 is refused), the daemon found by pidof,
pgrep -x and start-stop-daemon --name, and a clean stop (by the init
script's own way for that invocation).

The host's /etc is never touched: each scenario runs in its own mount,
network and PID namespaces (``unshare``), where /etc and /var/lib are
overlays whose writable layer is a private tmpfs, /run is a private tmpfs
(so the system rpcbind is out of sight) and a private rpcbind serves on
``lo``, the only interface there. So dracd needs no test options at all: it
registers the real program number 900101 as the admin's would. When the
driver (PID 1 there) ends, the kernel kills whatever is left. The driver is
this file run as a script; it prints one JSON object the test asserts on.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.namespace import drive, run_driver

DRACPROG = 900101
ALLOWED, REFUSED = "127.0.0.2", "127.0.0.3"
#: What each caller asks to add: only the allowed caller's address may reach the map.
RELAYED = {ALLOWED: "192.0.2.7", REFUSED: "192.0.2.8"}
#: Where the admin who gave a DBFILE kept the map (the MTA was pointed there too).
DBFILE = "/var/lib/drac/dracd.db"

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Layout:
    """One installation's /etc: the directories it has, and where its map and allow file are."""

    dirs: tuple[str, ...]
    map: str
    allow: str


LAYOUTS = {
    "upstream-1.12": Layout(("/etc/mail",), "/etc/mail/dracd.db", "/etc/mail/dracd.allow"),
    # A Debian or Ubuntu host running Sendmail: /etc/mail exists too, and the map must not go there.
    "debian-1.12-8": Layout(("/etc/drac", "/etc/mail"), "/etc/drac/dracd.db", "/etc/drac/dracd.allow"),
    # An RPM-style build on a Postfix host: no /etc/mail at all.
    "rpm": Layout(("/etc/drac",), "/etc/drac/dracd.db", "/etc/drac/dracd.allow"),
}
INVOCATIONS = {"bare": (), "dbfile": ("-e", "30", DBFILE), "initscript": ()}
#: How each variant's init script started and stopped rpc.dracd (written from start-stop-daemon(8),
#: pidof(8) and the RHEL functions' documented behaviour; no legacy script is copied).
INIT_START = {"debian-1.12-8": ["start-stop-daemon", "--start", "--quiet", "--oknodo", "--name", "rpc.dracd",
                                "--startas"]}
INIT_STOP = {"debian-1.12-8": ["start-stop-daemon", "--stop", "--quiet", "--oknodo", "--name", "rpc.dracd"]}
#: The others (daemon/killproc, a plain rc script): run it; stop what pidof finds.
PIDOF_STOP = ["sh", "-c", "kill -TERM $(pidof rpc.dracd)"]
#: The allow file as a package's admin wrote it: words after the address are legacy comments.
ALLOW_TEXT = "# MRAs allowed to use dracd\n255.255.255.255 127.0.0.1\n255.255.255.255 127.0.0.2 pop.example.org\n"


def run_scenario(variant: str, invocation: str, tmp_path: Path, timeout: float = 40.0) -> dict[str, Any]:
    """Run one scenario in fresh namespaces; its JSON result (the test fails on any driver error)."""
    return run_driver(__file__, [variant, invocation], tmp_path, timeout)


@pytest.mark.parametrize("invocation", INVOCATIONS)
@pytest.mark.parametrize("variant", LAYOUTS)
def test_rpc_dracd_started_as_the_variant_admin_did(variant: str, invocation: str, tmp_path: Path) -> None:
    layout = LAYOUTS[variant]
    data = run_scenario(variant, invocation, tmp_path)
    log = data["log"]
    expected_map = DBFILE if invocation == "dbfile" else layout.map
    assert data["isolated"], "the system rpcbind is reachable from inside the namespace"
    assert data["start_status"] == 0, f"rpc.dracd {' '.join(INVOCATIONS[invocation])} exited " \
                                      f"{data['start_status']}:\n{log}"
    assert data["maps"] == {expected_map: [RELAYED[ALLOWED]]}, f"the map must be {expected_map} alone\n{log}"
    assert data["adds"] == {ALLOWED: "ADD_SUCCESS", REFUSED: "ADD_PERM"}, f"allow file {layout.allow}\n{log}"
    assert data["stop_status"] == 0, log
    assert f"map {expected_map}" in log and f"allow file {layout.allow}" in log, \
        f"the log must say which files were chosen:\n{log}"
    if invocation == "initscript":
        pid = str(data["pid"])
        assert data["found"] == {"pidof": pid, "pgrep -x": pid, "start-stop-daemon --status --name": "0"}, data
        assert data["init_stop"] == 0, data


# --- the driver, run inside the namespaces -------------------------------------------------------


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, timeout=10, capture_output=True)


def _overlay(directory: str, scratch: Path) -> None:
    """Make ``directory`` writable here only: an overlay whose upper layer lives on ``scratch`` (a tmpfs)."""
    name = directory.strip("/").replace("/", "-")
    upper, work = scratch / name / "upper", scratch / name / "work"
    upper.mkdir(parents=True)
    work.mkdir()
    _sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={directory},upperdir={upper},workdir={work}",
        directory)


def _isolate(out: Path) -> None:
    """lo up; a private /run (no system rpcbind socket); /etc and /var/lib as private overlays."""
    _sh("ip", "link", "set", "lo", "up")
    _sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run")
    if Path("/run/rpcbind.sock").exists():
        raise RuntimeError("/run/rpcbind.sock is still visible: /run is not private")
    scratch = out / "overlays"
    scratch.mkdir()
    _sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(scratch))
    for directory in ("/etc", "/var/lib"):
        _overlay(directory, scratch)
    if Path("/dev/log").exists():
        raise RuntimeError("/dev/log exists here: rpc.dracd would log to syslog, out of the test's sight")


def _build(layout: Layout) -> None:
    for directory in ("/etc/drac", "/etc/mail", str(Path(DBFILE).parent)):
        shutil.rmtree(directory, ignore_errors=True)  # in the overlay: the host keeps its own
    for directory in layout.dirs:
        Path(directory).mkdir(mode=0o755)
    Path(DBFILE).parent.mkdir(mode=0o755)
    Path(layout.allow).write_text(ALLOW_TEXT)


def _maps() -> dict[str, list[str]]:
    """Every dracd.db in the places a map could have gone, with its keys."""
    from tests.fixtures.process import read_map

    found = {}
    for path in ("/etc/drac/dracd.db", "/etc/mail/dracd.db", DBFILE):
        if Path(path).exists():
            found[path] = sorted(read_map(Path(path)))
    return found


def _daemon_pid() -> int:
    import psutil

    pids = [p.pid for p in psutil.process_iter(["cmdline"])
            if any(part.endswith("rpc.dracd") for part in p.info["cmdline"] or [])]
    if len(pids) != 1:
        raise RuntimeError(f"expected one background rpc.dracd, found {pids}")
    return pids[0]


def _reap(pid: int, timeout: float) -> int:
    """The exit status of ``pid``, reparented to us (PID 1 here) when its parent exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    raise RuntimeError(f"rpc.dracd {pid} still running {timeout:g} s after SIGTERM")


def scenario(variant: str, invocation: str, out: Path, result: dict[str, Any]) -> None:
    from tests.fixtures.namespace import Rpcbind, rpcbind_dump
    from tests.fixtures.process import RPC_DRACD, add_status, registered_port

    layout, args, init = LAYOUTS[variant], INVOCATIONS[invocation], invocation == "initscript"
    _isolate(out)
    _build(layout)
    result["isolated"] = rpcbind_dump() is None
    result["_rpcbind"] = Rpcbind()
    log = out / "rpc.dracd.log"
    result["_log"] = log
    start = [*INIT_START.get(variant, []), str(RPC_DRACD), *args] if init else [str(RPC_DRACD), *args]
    with open(log, "ab") as handle:
        # As the admin (or the init script) typed it; it returns once the background daemon serves (or failed).
        result["start_status"] = subprocess.run(start, stdin=subprocess.DEVNULL, stdout=handle,
                                                stderr=handle, cwd="/", timeout=20).returncode
    if result["start_status"] != 0:
        return
    pid = _daemon_pid()
    port = registered_port(DRACPROG)
    result["adds"] = {source: add_status(port, DRACPROG, relayed, source=source).name
                      for source, relayed in RELAYED.items()}
    if init:
        result["pid"] = pid
        result["found"] = {name: subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
                           or str(subprocess.run(command, capture_output=True, timeout=10).returncode)
                           for name, command in (("pidof", ["pidof", "rpc.dracd"]),
                                                 ("pgrep -x", ["pgrep", "-x", "rpc.dracd"]),
                                                 ("start-stop-daemon --status --name",
                                                  ["start-stop-daemon", "--status", "--name", "rpc.dracd"]))}
        result["init_stop"] = subprocess.run(INIT_STOP.get(variant, PIDOF_STOP), timeout=10).returncode
    else:
        os.kill(pid, signal.SIGTERM)
    result["stop_status"] = _reap(pid, 10)
    result["maps"] = _maps()


def driver(variant: str, invocation: str, out: Path) -> int:
    def run(result: dict[str, Any]) -> None:
        scenario(variant, invocation, out, result)
        result.setdefault("maps", _maps())

    return drive(run)


if __name__ == "__main__":
    sys.exit(driver(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
