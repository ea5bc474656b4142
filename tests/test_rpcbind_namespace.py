"""dracd against rpcbind's absence and restarts, in namespaces the test creates.

The system rpcbind must not be disturbed, so each scenario runs in its own
network, mount and PID namespaces (``unshare``): only ``lo`` exists, a
private tmpfs on /run hides the system rpcbind's unix socket, and when the
driver (PID 1 there) ends for any reason the kernel kills everything else
in the namespace. The driver is this very file run as a script; it prints
one JSON object which the test asserts on.

Inside the namespace the real program number 900101 is used (nobody else
can hold it there), so these tests also prove the default program number.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.namespace import Rpcbind, drive, rpcbind_dump, run_driver

DRACPROG = 900101
CHECK_INTERVAL = 5.0  # dracd.server.registration.CHECK_INTERVAL
NS_PORT = 7777  # a fresh network namespace has every port free

pytestmark = pytest.mark.timeout(60)


def run_scenario(name: str, tmp_path: Path, timeout: float = 40.0) -> dict[str, Any]:
    """Run ``name`` in fresh namespaces; its JSON result (the test fails on any driver error)."""
    return run_driver(__file__, [name], tmp_path, timeout)


def test_without_rpcbind_dracd_serves_and_says_so_once(tmp_path: Path) -> None:
    data = run_scenario("no-rpcbind", tmp_path)
    assert data["isolated"], "the system rpcbind is reachable from inside the namespace"
    assert data["ready_after"] < 5, "a missing rpcbind must not delay readiness"
    assert data["adds"] == ["ok"] * 4, data["adds"]
    assert data["lookup_error"] == "Unavailable", "without rpcbind a lookup cannot succeed"
    assert data["watched_for"] > 2 * CHECK_INTERVAL, "the log must be checked after at least two re-checks"
    lines = data["unreachable_lines"]
    assert len(lines) == 1, f"expected one 'rpcbind is not reachable' line, got {lines}"
    assert "WARNING" in lines[0] and f"{NS_PORT}" in lines[0] and "clients must be given the port" in lines[0]
    assert data["alive_after_watch"]
    assert data["exit_code"] == 0
    assert data["map"] == ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"]


def test_reregisters_after_rpcbind_restart_without_warm_start(tmp_path: Path) -> None:
    data = run_scenario("rpcbind-restart", tmp_path)
    expected = sorted([[vers, netid, uaddr] for vers in (1, 2) for netid, uaddr in (
        ("udp", "127.0.0.1.*"), ("tcp", "127.0.0.1.*"), ("udp6", "::1.*"), ("tcp6", "::1.*"))]
        + [[3, "tcp", "127.0.0.1.*"], [3, "tcp6", "::1.*"]])  # admin: TCP only
    assert data["isolated"], "the system rpcbind is reachable from inside the namespace"
    assert data["registered_at_ready"] == expected, "READY=1 must come after the registration"
    assert data["lookup_add_before"] == "ok"
    assert data["registered_after_restart"] == [], "a cold rpcbind must have lost the registration"
    assert data["reregistered_after"] is not None, "dracd did not register again after rpcbind restarted"
    assert data["reregistered_after"] <= CHECK_INTERVAL + 1.5, data["reregistered_after"]
    assert data["registered_again"] == expected
    assert data["same_port"], "re-registration must announce the same port"
    assert data["lookup_add_after"] == "ok"
    assert data["registration_log_lines"] == 2, "one registration at start, one after the restart"
    assert data["exit_code"] == 0
    assert data["registered_after_stop"] == [], "SIGTERM must unregister from the new rpcbind"
    assert data["map"] == ["192.0.2.1", "192.0.2.2"]


# --- the driver, run inside the namespaces -------------------------------------------------------


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, timeout=10, capture_output=True)


def _isolate() -> None:
    """lo up, and a private /run so the system rpcbind's unix socket is out of sight."""
    _sh("ip", "link", "set", "lo", "up")
    _sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run")
    if Path("/run/rpcbind.sock").exists():
        raise RuntimeError("/run/rpcbind.sock is still visible: /run is not private")


def _rpcbind_reachable() -> bool:
    return rpcbind_dump() is not None


def _registered(prog: int) -> list[list[Any]]:
    """Registrations of ``prog`` with the port masked as ``*`` (sorted, JSON-friendly)."""
    from tests.fixtures.process import registrations

    return sorted([m.vers, m.netid, m.uaddr.rsplit(".", 2)[0] + ".*"] for m in registrations(prog))


def _add(server: str, address: str, **kwargs: Any) -> str:
    from dracclient import add
    from dracclient.errors import DracError

    try:
        add(address, servers=server, timeout=3.0, **kwargs)
    except DracError as exc:
        return type(exc).__name__
    return "ok"


def _dracd(out: Path, *args: str) -> Any:
    from tests.fixtures.process import DracdProcess

    return DracdProcess(["--listen", "127.0.0.1", "--listen", "::1", *args, str(out / "dracd.db")],
                        log_path=out / "dracd.log", cwd=out)


def _map(out: Path) -> list[str]:
    from tests.fixtures.process import read_map

    return sorted(read_map(out / "dracd.db"))


def scenario_no_rpcbind(out: Path, result: dict[str, Any]) -> None:
    result["isolated"] = not _rpcbind_reachable()
    server = _dracd(out, "--port", str(NS_PORT))
    result["_server"] = server
    started = time.monotonic()
    server.start_ready(10)
    ready = time.monotonic()
    result["ready_after"] = ready - started
    result["adds"] = [
        _add("127.0.0.1", "192.0.2.1", port=NS_PORT),
        _add("127.0.0.1", "192.0.2.2", port=NS_PORT, transport="tcp"),
        _add("::1", "2001:db8::1", port=NS_PORT),
        _add("::1", "2001:db8::2", port=NS_PORT, transport="tcp"),
    ]
    result["lookup_error"] = _add("127.0.0.1", "192.0.2.3")
    # Two re-checks (every CHECK_INTERVAL) must not repeat the warning.
    time.sleep(max(0.0, ready + 2 * CHECK_INTERVAL + 1.0 - time.monotonic()))
    result["watched_for"] = time.monotonic() - ready
    result["alive_after_watch"] = server.alive()
    result["unreachable_lines"] = [line for line in server.log().splitlines() if "rpcbind is not reachable" in line]
    result["exit_code"] = server.stop(10)
    result["map"] = _map(out)


def scenario_rpcbind_restart(out: Path, result: dict[str, Any]) -> None:
    from tests.fixtures.process import registrations

    result["isolated"] = not _rpcbind_reachable()
    portmapper = Rpcbind()
    result["_rpcbind"] = portmapper
    server = _dracd(out)  # no --program: the real 900101
    result["_server"] = server
    server.start_ready(10)
    result["registered_at_ready"] = _registered(DRACPROG)
    ports = {m.port for m in registrations(DRACPROG)}
    result["lookup_add_before"] = _add("127.0.0.1", "192.0.2.1")

    portmapper.stop()
    portmapper = Rpcbind()  # cold start: it knows nothing of dracd
    result["_rpcbind"] = portmapper
    restarted = time.monotonic()
    result["registered_after_restart"] = portmapper.initial
    result["reregistered_after"] = None
    while time.monotonic() - restarted < CHECK_INTERVAL + 3:
        if len(_registered(DRACPROG)) == 10:  # v1, v2 on four netids; admin v3 on tcp, tcp6
            result["reregistered_after"] = time.monotonic() - restarted
            break
        time.sleep(0.05)
    result["registered_again"] = _registered(DRACPROG)
    result["same_port"] = {m.port for m in registrations(DRACPROG)} == ports
    result["lookup_add_after"] = _add("::1", "192.0.2.2", transport="tcp")
    result["registration_log_lines"] = sum(
        f"registered program {DRACPROG} with rpcbind" in line for line in server.log().splitlines())
    result["exit_code"] = server.stop(10)
    result["registered_after_stop"] = _registered(DRACPROG)
    result["map"] = _map(out)


SCENARIOS = {"no-rpcbind": scenario_no_rpcbind, "rpcbind-restart": scenario_rpcbind_restart}


def driver(name: str, out: Path) -> int:
    def run(result: dict[str, Any]) -> None:
        _isolate()
        SCENARIOS[name](out, result)

    return drive(run)


if __name__ == "__main__":
    sys.exit(driver(sys.argv[1], Path(sys.argv[2])))
