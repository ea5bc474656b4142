"""dracd binds, registers and opens its map as root, then runs as an
unprivileged user; a root helper unregisters from rpcbind after it exits."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dracclient import rpcbind as rpcb
from tests.fixtures.process import DRACD, DracdProcess, add_status, read_map, wait_until
from tests.fixtures.server import private_prog

NOBODY = 65534
# This machine's Python lives under /root (mode 0700), which nobody could read
# after the switch: a private mount namespace makes just the interpreter's tree
# reachable, as a system Python under /usr would be.
NAMESPACE = [
    "unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
    'set -e; d=$(mktemp -d); mount --bind /root/.pyenv "$d"; '
    'mount -t tmpfs -o mode=755 tmpfs /root; mkdir /root/.pyenv; mount --bind "$d" /root/.pyenv; exec "$@"',
    "sh", str(DRACD),
]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dracd-priv-"))
    path.chmod(0o755)
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def start(open_dir: Path, map_dir: Path, prog: int, *extra: str) -> DracdProcess:
    process = DracdProcess(
        ["--listen", "127.0.0.1", "--program", str(prog), "--admin-socket", str(open_dir / "admin.sock"),
         "--user", "nobody", *extra, str(map_dir / "dracd.db")],
        log_path=open_dir / "dracd.log", exe=Path(NAMESPACE[0]),
    )
    process.args = [*NAMESPACE, *process.args[1:]]
    # READY=1 is sent after the switch: the notify socket must be reachable by nobody.
    Path(process.notify.directory).chmod(0o755)
    Path(process.notify.path).chmod(0o777)
    return process.start()


def ids(pid: int) -> dict[str, list[int]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


def leftover(prog: int) -> list[int]:
    """Processes still running with our program number on their command line."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(prog) in (proc.info["cmdline"] or []):
            mine.append(proc.pid)
    return mine


def dracd_pid(process: DracdProcess) -> int:
    """The dracd process itself (unshare and sh exec into it)."""
    return process.pid


def test_runs_as_nobody_and_cleans_up_as_root(rpcbind: None, open_dir: Path) -> None:
    map_dir = open_dir / "map"
    map_dir.mkdir()
    os.chown(map_dir, NOBODY, NOBODY)
    prog = private_prog()
    process = start(open_dir, map_dir, prog, "--log-level", "info")
    try:
        process.wait_ready(20)
        assert ids(dracd_pid(process)) == {"Uid": [NOBODY] * 4, "Gid": [NOBODY] * 4, "Groups": []}
        found = [m for m in rpcb.dump() if m.prog == prog]
        assert found and {m.owner for m in found} == {"superuser"}, found
        assert add_status(found[0].port, prog, "192.0.2.9") == 0
        assert "192.0.2.9" in read_map(map_dir / "dracd.db")
        assert (map_dir / "dracd.db").stat().st_uid == NOBODY
        assert "running as user nobody" in process.log()
        assert process.stop(15) == 0
        # The root helper removed what nobody could not.
        wait_until(lambda: not [m for m in rpcb.dump() if m.prog == prog], 5, "the registration to go")
        wait_until(lambda: not (open_dir / "admin.sock").exists(), 5, "the admin socket to go")
        wait_until(lambda: not leftover(prog), 5, "the root helper to exit")
    finally:
        process.kill()
        for vers in (1, 2, 3):
            rpcb.unregister(prog, vers)


def test_unwritable_map_directory_for_the_user_fails_clearly(rpcbind: None, open_dir: Path) -> None:
    map_dir = open_dir / "map"
    map_dir.mkdir(mode=0o755)  # root's: nobody cannot write here
    prog = private_prog()
    process = start(open_dir, map_dir, prog)
    try:
        assert process.wait(20) == 73
        assert "as user nobody" in process.log() and "writable" in process.log()
        wait_until(lambda: not [m for m in rpcb.dump() if m.prog == prog], 5, "the registration to go")
    finally:
        process.kill()
        for vers in (1, 2, 3):
            rpcb.unregister(prog, vers)


def test_unknown_user_is_a_start_error(open_dir: Path) -> None:
    from dracd.app.cli import main

    assert main(["--no-rpcbind", "--listen", "127.0.0.1", "--user", "no-such-user-here",
                 "--admin-socket", str(open_dir / "a.sock"), str(open_dir / "dracd.db")]) == 69
    assert not (open_dir / "dracd.db").exists()
