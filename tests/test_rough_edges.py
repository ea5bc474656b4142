"""Rough edges a newcomer met on the way (issue 17, item 6): each test pins one down."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dracclient.admin import AdminClient
from dracclient.cli import EX_OK, EX_UNAVAILABLE, EX_USAGE, build_parser, main
from dracclient.errors import InvalidRequest
from tests.fixtures.mounts import set_readonly, tmpfs
from tests.fixtures.process import DRACD, DracdProcess, registrations, run_command
from tests.fixtures.server import ServerThread, map_keys, private_prog

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
EX_CONFIG = 78
Capsys = pytest.CaptureFixture[str]


def sock(server: ServerThread, *args: str) -> int:
    return main(["--program", str(server.config.program), "-S", str(server.config.admin_socket), *args])


def one_line(err: str, *fragments: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)
    return lines[0]


# a. every argument is checked before anything is sent


@pytest.mark.parametrize("command", [["add"], ["add", "--lifetime", "45m"], ["del"]])
def test_a_bad_address_anywhere_sends_nothing(server: ServerThread, command: list[str], capsys: Capsys) -> None:
    assert sock(server, "add", "192.0.2.9") == EX_OK
    capsys.readouterr()
    before = map_keys(server.config.map.path)
    args = [*command, "192.0.2.8", "192.0.2.9", "not-an-ip"]
    code = main(["--program", str(server.config.program), "-p", str(server.port), *args]) if command == ["add"] \
        else sock(server, *args)
    assert code == EX_USAGE
    captured = capsys.readouterr()
    one_line(captured.err, "not-an-ip")
    assert captured.out == ""
    assert map_keys(server.config.map.path) == before, "nothing may change before every argument is checked"


# h. ADMIN_INVAL says which of address and lifetime was wrong


def test_a_refused_address_is_named_as_the_reason(server: ServerThread, capsys: Capsys) -> None:
    assert sock(server, "add", "--lifetime", "45m", "224.0.0.1") == EX_USAGE
    line = one_line(capsys.readouterr().err, "224.0.0.1")
    assert line.endswith("rejected 224.0.0.1: not a unicast host address")
    assert sock(server, "add", "--lifetime", "1h", "192.0.2.0/23") == EX_USAGE
    line = one_line(capsys.readouterr().err, "192.0.2.0/23")
    assert line.split("rejected 192.0.2.0/23: ")[1].startswith("not a network the MTAs' lookups can match")


def test_a_lifetime_over_the_limit_is_named_as_the_reason(server: ServerThread, capsys: Capsys) -> None:
    assert sock(server, "add", "--lifetime", "4000d", "192.0.2.1") == EX_USAGE
    line = one_line(capsys.readouterr().err, "lifetime 4000d", "ten years")
    assert "unicast" not in line and "rejected" not in line
    admin = AdminClient(socket_path=str(server.config.admin_socket), prog=server.config.program)
    with pytest.raises(ValueError, match="ten years"):
        admin.add("192.0.2.1", 4000 * 86400)
    with pytest.raises(InvalidRequest) as info:
        admin.add("0.0.0.0", 3600)
    assert str(info.value).endswith("rejected 0.0.0.0: not a unicast host address")
    assert map_keys(server.config.map.path) == {}


# c. --check-config checks the map's directory


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return run_command([DRACD, "--check-config", "-c", config])


def test_check_config_rejects_a_map_directory_that_does_not_exist(tmp_path: Path) -> None:
    config = tmp_path / "dracd.yaml"
    config.write_text("map:\n  path: nowhere/dracd.db\n")
    result = check(config)
    assert result.returncode == EX_CONFIG, result
    one_line(result.stderr, str(tmp_path / "nowhere"), "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_check_config_rejects_a_map_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    config = tmp_path / "dracd.yaml"
    config.write_text("map:\n  path: plain/dracd.db\n")
    result = check(config)
    assert result.returncode == EX_CONFIG, result
    one_line(result.stderr, str(tmp_path / "plain"), "not a directory")


def test_check_config_rejects_a_map_directory_others_may_write_to(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    config = tmp_path / "dracd.yaml"
    config.write_text("map:\n  path: shared/dracd.db\n")
    result = check(config)
    assert result.returncode == EX_CONFIG, result
    one_line(result.stderr, str(shared), "sticky bit", "map.allow_unsafe_directory")
    config.write_text("map:\n  path: shared/dracd.db\n  allow_unsafe_directory: true\n")
    assert check(config).returncode == EX_OK


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "mount") as mount:
        (mount / "maps").mkdir()
        set_readonly(mount, True)
        try:
            yield mount / "maps"
        finally:
            set_readonly(mount, False)


def test_check_config_rejects_a_map_directory_that_is_not_writable(readonly_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "dracd.yaml"
    config.write_text(f"map:\n  path: {readonly_dir / 'dracd.db'}\n")
    result = check(config)
    assert result.returncode == EX_CONFIG, result
    one_line(result.stderr, str(readonly_dir), "not writable")


# d. a usage error is one line


def test_dracd_usage_error_is_one_line() -> None:
    result = run_command([DRACD, "-e", "abc"])
    assert result.returncode == EX_USAGE
    assert result.stdout == ""
    one_line(result.stderr, "dracd: ", "'abc'", "see dracd --help")
    unknown = run_command([DRACD, "--frobnicate"])
    assert unknown.returncode == EX_USAGE
    one_line(unknown.stderr, "--frobnicate", "see dracd --help")


# e. no config file is not "built-in defaults"


def test_without_a_config_file_check_config_says_so(tmp_path: Path) -> None:
    result = run_command([DRACD, "--check-config", "--lifetime", "45m", tmp_path / "dracd.db"])
    assert result.returncode == EX_OK, result.stderr
    assert "built-in defaults" not in result.stdout
    assert result.stdout.splitlines()[-1].startswith("no config file (-c): defaults and the command line: OK"), \
        result.stdout
    assert "2700 s" in result.stdout


# f. a clean stop leaves only the map


def test_a_clean_stop_leaves_only_the_map(rpcbind: None, tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    prog = private_prog()
    args = ["--program", str(prog), "--listen", "127.0.0.1", "--no-rpcbind", maps / "dracd.db"]
    server = DracdProcess([str(a) for a in args], log_path=tmp_path / "dracd.log")
    try:
        server.start_ready()
        assert (maps / "dracd.db.lock").exists()
        assert server.stop() == 0
    finally:
        server.kill()
    assert sorted(p.name for p in maps.iterdir()) == ["dracd.db"]


def test_a_lock_won_on_a_removed_lock_file_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dracd starting while another stops may open ``<map>.lock`` just before the stopping
    one removes it, and win its lock just after: that lock keeps nobody out, so it takes
    the file that is there now."""
    from dracd.publish import lock as daemon

    path = tmp_path / "dracd.db"
    lock = tmp_path / "dracd.db.lock"
    opened: list[int] = []
    real = daemon._open_private

    def racing(where: Path) -> int:
        fd = real(where)
        if not opened:
            os.unlink(where)  # the stopping dracd removes the file after our open
        opened.append(fd)
        return fd

    monkeypatch.setattr(daemon, "_open_private", racing)
    fd = daemon.lock_map(path)
    monkeypatch.undo()
    try:
        assert len(opened) == 2
        assert (os.fstat(fd).st_dev, os.fstat(fd).st_ino) == (lock.stat().st_dev, lock.stat().st_ino)
        with pytest.raises(daemon.MapInUse):  # the file at the path is the one held
            daemon.lock_map(path)
    finally:
        daemon.unlock_map(path, fd)
    assert not lock.exists()
    daemon.unlock_map(path, daemon.lock_map(path))  # and free again


# b. the README's commands work as printed against a server started like `make run`


def readme_blocks() -> tuple[list[str], list[str]]:
    """The quick start's commands and the Administration section's, as printed."""
    text = (REPO / "README.md").read_text()

    def block(after: str) -> list[str]:
        rest = text[text.index(after):]
        match = re.search(r"\n\n((?:    \S.*\n)+)", rest)
        assert match, after
        return [line[4:].split("  #")[0].strip() for line in match.group(1).splitlines()]

    return block("`make run` prints how to try it"), block("## Administration: dracctl")


def make_run_hints(checkout: Path) -> list[str]:
    """The commands `make run` prints, for a checkout at ``checkout``."""
    recipe = (REPO / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    lines = re.findall(r'^\t@echo "    (.*)"$', recipe, re.MULTILINE)
    return [line.replace("$(CURDIR)", str(checkout)).replace("$(BIN)", ".venv/bin").replace("\\$$", "$")
            for line in lines]


@pytest.fixture
def make_run(rpcbind: None, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A checkout's layout (the shipped config in etc/, var/, the venv in .venv) and a dracd
    started in it as `make run` starts it, on a private program number."""
    checkout = tmp_path / "checkout"
    (checkout / "etc").mkdir(parents=True)
    (checkout / "var").mkdir()
    shutil.copy(REPO / "etc" / "dracd.yaml", checkout / "etc" / "dracd.yaml")
    (checkout / ".venv").symlink_to(REPO / ".venv")
    prog = private_prog()
    # The config's own admin socket (the fixture would otherwise give it another).
    server = DracdProcess(["-c", "etc/dracd.yaml", "--program", str(prog), "--admin-socket", "var/dracd.sock"],
                          log_path=tmp_path / "dracd.log", cwd=checkout)
    try:
        server.start_ready()
        assert (checkout / "var" / "dracd.sock").exists()
        yield checkout, prog
        assert server.stop() == 0
    finally:
        server.kill()
        from dracclient import rpcbind as rpcb

        for vers in {m.vers for m in registrations(prog)}:
            rpcb.unregister(prog, vers, "")


def run_as_printed(checkout: Path, prog: int, setup: str, commands: list[str]) -> None:
    """Each command in a fresh shell after ``setup``; the only change is the private program number."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRACD_")}
    for line in commands:
        command = re.sub(r"\bdracctl ", f"dracctl --program {prog} ", line)
        result = subprocess.run(["bash", "-c", f"{setup}\n{command}"], cwd=checkout, env=env,
                                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, (line, result.stdout, result.stderr)


def test_readme_commands_work_as_printed_after_make_run(make_run: tuple[Path, int]) -> None:
    checkout, prog = make_run
    quick, admin = readme_blocks()
    assert quick[0].startswith("export "), "the quick start first says how to reach the `make run` server"
    assert {"dracctl del 192.0.2.7", "dracctl list", "dracctl flush"} <= set(admin)
    run_as_printed(checkout, prog, quick[0], [*quick[1:], *admin])


def test_what_make_run_prints_works(make_run: tuple[Path, int]) -> None:
    checkout, prog = make_run
    hints = make_run_hints(checkout)
    assert hints[0].startswith("export ") and "dracctl list" in hints
    run_as_printed(checkout, prog, hints[0], hints[1:])


# g. the numbers in the README's dracctl section are dracctl's


def test_readme_timeout_example_is_the_default(capsys: Capsys) -> None:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Administration: dracctl"):text.index("## The client library")]
    example = re.search(r"`(dracctl: cannot reach dracd on 127\.0\.0\.1: timed out\s+after ([\d.]+) s)`", section)
    assert example, "the README shows a timeout error"
    default = build_parser().parse_args(["ping"]).timeout
    assert float(example.group(2)) == default
    assert f"(default {default:g} s" in section
    # and that is what dracctl prints (here after 0.2 s, to a port that never answers)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        assert main(["-s", "127.0.0.1", "-p", str(silent.getsockname()[1]), "-t", "0.2", "ping"]) == EX_UNAVAILABLE
    printed = capsys.readouterr().err.strip()
    assert printed == re.sub(r"\s+", " ", example.group(1)).replace(f"after {example.group(2)} s", "after 0.2 s")
