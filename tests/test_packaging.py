"""What every install of dracd rests on: one version, locked dependencies, and
an install that is safe on a production mail host (the reproducible set-up issue)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import dracclient

REPO = Path(__file__).resolve().parent.parent
VERSION = dracclient.__version__
#: Debian packages that are, replace or configure a mail server or Redis: only tests want them.
PEERS = ("postfix", "sendmail", "exim", "dovecot", "courier", "cyrus", "redis", "debconf", "policy-rc.d")


def make_dry_run(*targets: str) -> str:
    result = subprocess.run(["make", "-n", *targets], cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def console_scripts(distribution: str) -> list[str]:
    return sorted(ep.name for ep in metadata.distribution(distribution).entry_points
                  if ep.group == "console_scripts")


DISTRIBUTIONS = ("dracd", "dracclient", "dracd-logwatch")


@pytest.mark.parametrize("command", [name for dist in DISTRIBUTIONS for name in console_scripts(dist)])
def test_every_command_answers_version(command: str) -> None:
    result = subprocess.run([str(Path(sys.executable).parent / command), "--version"], capture_output=True,
                            text=True, timeout=30, check=False)
    assert (result.returncode, result.stdout) == (0, f"{command} {VERSION}\n"), result.stderr


def test_dracd_requires_the_dracclient_of_its_own_version() -> None:
    import dracd

    assert dracd.__version__ == VERSION
    assert metadata.version("dracd") == metadata.version("dracclient") == metadata.version("dracd-logwatch") == VERSION
    assert f"dracclient=={VERSION}" in (metadata.requires("dracd") or [])
    assert sorted(metadata.requires("dracd-logwatch") or []) == [f"dracclient=={VERSION}", "pyyaml>=6"]


def test_the_version_is_written_in_one_place() -> None:
    """The lock and the changelog name it too, as they must; addresses such as
    127.0.0.1.0.111 (an rpcbind universal address) are not versions."""
    pattern = r"(?<![\d.])" + re.escape(VERSION) + r"(?![\d.])"
    result = subprocess.run(["git", "grep", "-l", "-P", pattern], cwd=REPO, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    # The Debian changelog and NEWS name versions as CHANGELOG.md does (debian/rules and the test
    # below keep the changelog's top entry equal to the line), and the symbols file the version
    # each libdrac symbol first appeared in.
    history = {"uv.lock", "CHANGELOG.md", "debian/changelog", "debian/NEWS.Debian", "debian/libdrac1.symbols"}
    assert set(result.stdout.split()) - history == {"client/dracclient/__init__.py"}


def test_the_debian_changelog_is_at_this_version() -> None:
    """`make deb` refuses a changelog whose newest entry is not this version (debian/rules)."""
    top = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    match = re.fullmatch(r"dracd \(([^()]+)-(\d+)\) \S+; urgency=\w+", top)
    assert match is not None, top
    assert match.group(1) == VERSION, f"debian/changelog is at {match.group(1)}, the version line says {VERSION}"


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_metadata_license_and_pythons(distribution: str) -> None:
    """The classifiers name exactly the Pythons that `make test-pythons` runs."""
    meta = metadata.metadata(distribution)
    assert meta["License-Expression"] == "MIT" and meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.11"
    pythons = {c.rsplit(" :: ", 1)[1] for c in meta.get_all("Classifier") or []
               if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert pythons == {"3.11", "3.12", "3.13"}
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in pythons


@pytest.mark.parametrize("target", ["install", "run"])
def test_install_and_run_pull_in_no_mail_server_or_redis(target: str) -> None:
    """On an Exim, Sendmail or Courier host, apt installing postfix would remove the running MTA."""
    plan = make_dry_run("-B", target)
    assert "tools/apt-install make gcc" in plan and "libdb5.3-dev" in plan
    found = [peer for peer in PEERS if peer in plan]
    assert not found, f"make {target} would install {found}:\n{plan}"


def test_test_installs_the_peers() -> None:
    """The counterpart: without them the end-to-end tests could not run."""
    plan = make_dry_run("-B", "test")
    assert all(peer in plan for peer in ("postfix", "dovecot-core", "redis-server"))


def test_every_python_install_is_locked() -> None:
    """uv installs only from uv.lock (--locked fails rather than resolve anew); pip
    only bootstraps uv, from tools/uv.txt with its hashes."""
    plan = make_dry_run("-B", "install", "test", "bench", "fuzz")
    installs = [line for line in plan.splitlines() if re.search(r"\b(pip install|uv sync|uv pip)\b", line)]
    assert installs
    for line in installs:
        assert ("uv sync --locked" in line
                or ("pip install" in line and "--require-hashes -r tools/uv.txt" in line)), line
    pins = (REPO / "tools" / "uv.txt").read_text()
    assert re.search(r"^uv==\S+ \\$", pins, re.MULTILINE) and "--hash=sha256:" in pins


def test_the_log_watcher_installs_without_the_server(tmp_path: Path) -> None:
    """An MRA host that only tails its logs gets dracclient and PyYAML, not Berkeley DB,
    psutil or the daemon (uv from the lock's cache; nothing else is installed)."""
    uv = REPO / ".cache" / "uv-tool" / "bin" / "uv"
    venv = tmp_path / "venv"
    env = {**os.environ, "BERKELEYDB_DIR": "/usr"}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=120, env=env)
    pyyaml = metadata.version("pyyaml")
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    str(REPO / "client"), str(REPO / "logwatch"), f"pyyaml=={pyyaml}"],
                   check=True, timeout=300, env=env)
    helped = subprocess.run([str(venv / "bin" / "dracd-logwatch"), "--help"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert helped.returncode == 0 and "usage: dracd-logwatch" in helped.stdout, helped.stderr
    for module in ("berkeleydb", "psutil", "dracd"):
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}"], capture_output=True,
                               timeout=60, check=False, cwd=tmp_path)  # not the checkout: its dracd/ is there
        assert probe.returncode != 0, f"{module} is importable beside dracd-logwatch"
