"""One dracd per map, even after ``rm dracd.db.lock`` (issue 22, fault 4).

The issue's sequence with the real processes: a dracd acknowledges ADDs,
the admin deletes ``dracd.db.lock`` (it looks like a stale pidfile), a
second dracd is started on the same map on another port while ADDs go on.
The second must refuse to start, naming the running one's journal, and
leave nothing behind; the first goes on, and every address it acknowledged
is in the map after it is killed with SIGKILL and restarted. Before the fix
the second took the live journal for a crash's, and the two overwrote each
other's map.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tests.fixtures.damage import settle, stream
from tests.fixtures.process import DracdProcess, read_map, wait_until
from tests.fixtures.server import private_prog
from tests.fixtures.tools import free_port


def args(map_path: Path, port: int, prog: int) -> list[str]:
    return ["--no-rpcbind", "--listen", "127.0.0.1", "--port", str(port), "--program", str(prog),
            "--log-level", "info", "--lifetime", "1h", str(map_path)]


def test_a_deleted_lock_file_does_not_let_a_second_dracd_in(tmp_path: Path) -> None:
    map_path = tmp_path / "dracd.db"
    port, prog = free_port(), private_prog()
    first = DracdProcess(args(map_path, port, prog), log_path=tmp_path / "first.log").start_ready(15)
    second: DracdProcess | None = None
    acked: set[str] = set()
    try:
        before, sent, sock = stream(port, prog, 0, 300)
        acked |= before | settle(sock, sent)
        sock.close()
        (tmp_path / "dracd.db.lock").unlink()  # "a stale pidfile"
        # ADDs go on while the second one starts.
        during: dict[str, set[str]] = {}

        def load() -> None:
            more, sent, sock = stream(port, prog, 1_000_000, 300)
            during["acked"] = more | settle(sock, sent)
            sock.close()

        loader = threading.Thread(target=load)
        loader.start()
        second = DracdProcess(args(map_path, free_port(), private_prog()), log_path=tmp_path / "second.log").start()
        proc = second.proc
        assert proc is not None
        outcome = wait_until(lambda: "exited" if proc.poll() is not None else
                             "serving" if any("READY=1" in m.splitlines() for m in second.notify.drain()) else None,
                             15, "the second dracd to give up or serve")
        loader.join(60)
        log = second.log()
        assert outcome == "exited", f"a second dracd serves the map beside the first:\n{log}"
        assert proc.returncode != 0, log
        assert "is in use by another dracd" in log and ".dracd.db.journal." in log, log
        assert not (tmp_path / "dracd.db.lock").exists(), "the refused dracd left its lock file"
        acked |= during["acked"]
        assert first.alive(), first.log()
        first.send(9)
        first.wait(10)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    restarted = DracdProcess(args(map_path, port, prog), log_path=tmp_path / "restarted.log").start_ready(15)
    try:
        lost = acked - set(read_map(map_path))
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged addresses lost, e.g. {sorted(lost)[:3]}"
        assert restarted.stop() == 0
    finally:
        restarted.kill()
