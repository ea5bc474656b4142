"""kill -9 at random moments during a stream of ADDs: the map is always a
complete, valid Berkeley DB file that db5.3_verify and postmap accept, and
every address acknowledged before the kill is in it after a restart.

`make soak` runs many more rounds (DRACD_CRASH_ROUNDS)."""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

from tests.fixtures.addload import AddWindow
from tests.fixtures.process import DracdProcess, read_map
from tests.fixtures.server import private_prog
from tests.fixtures.tools import free_port

ROUNDS = int(os.environ.get("DRACD_CRASH_ROUNDS", "8"))




def stream_until_killed(process: DracdProcess, port: int, prog: int, first: int, kill_after: float) -> set[str]:
    """Send ADDs with IN_FLIGHT outstanding until ``kill_after`` s, then SIGKILL; the acknowledged addresses."""
    window = AddWindow(port, prog, first)
    started = time.monotonic()
    with window.sock:
        while time.monotonic() - started < kill_after:
            window.step(0.2)
        process.send(9)
        process.wait(10)
    return window.acked


def verify(map_path: Path, confdir: Path) -> None:
    result = subprocess.run(["db5.3_verify", str(map_path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"db5.3_verify: {result.stderr}"
    result = subprocess.run(["postmap", "-c", str(confdir), "-q", "127.0.0.1", f"btree:{map_path.with_suffix('')}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode in (0, 1) and not result.stderr, f"postmap: {result.stderr}"


def test_kill_9_never_loses_an_acknowledged_add(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("DRACD_CRASH_SEED", "9")))
    prog, port = private_prog(), free_port()
    map_path = tmp_path / "dracd.db"
    confdir = tmp_path / "postfix"
    confdir.mkdir()
    (confdir / "main.cf").write_text("myhostname = dracd.test.invalid\nmydomain = test.invalid\n")
    os.utime(confdir / "main.cf", (time.time() - 60, time.time() - 60))
    args = ["--no-rpcbind", "--listen", "127.0.0.1", "--port", str(port), "--program", str(prog),
            "--log-level", "warning", "--lifetime", "1h", str(map_path)]
    acked_total: set[str] = set()
    first = 0
    for round_ in range(ROUNDS):
        process = DracdProcess(args, log_path=tmp_path / f"dracd-{round_}.log").start_ready(15)
        try:
            acked = stream_until_killed(process, port, prog, first, kill_after=rng.uniform(0.05, 0.6))
        finally:
            process.kill()
        first += 100_000
        acked_total |= acked
        verify(map_path, confdir)
        missing = acked_total - set(read_map(map_path))
        assert not missing, f"round {round_}: {len(missing)} acknowledged addresses lost, e.g. {sorted(missing)[:3]}"
    restarted = DracdProcess(args, log_path=tmp_path / "dracd-final.log").start_ready(15)
    try:
        assert acked_total <= set(read_map(map_path)), "a restart lost acknowledged addresses"
        assert restarted.stop() == 0
    finally:
        restarted.kill()
    assert len(acked_total) > ROUNDS * 10, "too few ADDs acknowledged for the test to mean anything"
    print(f"{ROUNDS} kill -9 rounds, {len(acked_total)} acknowledged ADDs, all in the map")
