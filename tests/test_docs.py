"""Documentation that cannot drift: the man pages render without warnings,
dracd.yaml(5) and etc/dracd.example.yaml name exactly the keys the validator
knows, the example config passes --check-config, every command-line option is
in its page, and `make install` puts the pages where `man` finds them."""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dracclient import cli as dracctl_cli
from dracd import config as dracd_config
from dracd.app import cli as dracd_cli
from dracd_logwatch import cli as logwatch_cli
from dracd_logwatch import config as logwatch_config
from dracd_logwatch.presets import PRESETS

REPO = Path(__file__).resolve().parent.parent
MAN = REPO / "docs" / "man"
PAGES = ["dracd.8", "dracd.yaml.5", "dracd.allow.5", "dracctl.1", "dracd-logwatch.8"]
EXAMPLE = REPO / "etc" / "dracd.example.yaml"
BIN = Path(sys.executable).parent

def needs_man(test: Callable[..., None]) -> Callable[..., None]:
    """Fail (never skip) with the reason when man is missing."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        assert shutil.which("man"), "man is not installed: `make install` installs man-db"
        test(*args, **kwargs)

    return run


def render(page: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    return subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def flat(text: str) -> str:
    """Whitespace collapsed, typographic hyphens and minus signs as '-'."""
    return " ".join(text.replace("\u2010", "-").replace("\u2212", "-").split())


def name_line(page: Path) -> str:
    """The NAME section's text as written in the roff source."""
    source = page.read_text(encoding="utf-8")
    section = re.search(r"^\.SH NAME\n(.*?)^\.SH", source, re.MULTILINE | re.DOTALL)
    assert section, f"{page.name}: no NAME section"
    return flat(section.group(1).replace("\\-", "-"))


@needs_man
@pytest.mark.parametrize("name", PAGES)
def test_man_page_renders_without_warnings(name: str) -> None:
    page = MAN / name
    result = render(page)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"{name}: groff warnings:\n{result.stderr}"
    out = flat(result.stdout)
    assert "NAME" in out and name_line(page) in out
    title, section = name.rsplit(".", 1)
    assert out.startswith(f"{title.upper()}({section})")


def test_every_page_is_in_the_list() -> None:
    assert sorted(p.name for p in MAN.iterdir()) == sorted(PAGES)


# dracd.yaml(5) and the example config against the validator tables.

def validator_keys() -> set[str]:
    return {key.name for key in dracd_config.KEYS} | {f"redis.{key}" for key in dracd_config.REDIS_KEYS}


def documented_keys() -> set[str]:
    """Keys with an entry of their own: a .TP whose next line is .BR/.B KEY."""
    source = (MAN / "dracd.yaml.5").read_text(encoding="utf-8")
    return set(re.findall(r"^\.TP\n\.BR? ([a-z0-9_.]+)", source, re.MULTILINE)) - {"/etc/dracd.yaml"}


def test_dracd_yaml_5_documents_exactly_the_validated_keys() -> None:
    documented, known = documented_keys(), validator_keys()
    assert not known - documented, f"keys missing from dracd.yaml(5): {sorted(known - documented)}"
    assert not documented - known, f"dracd.yaml(5) documents unknown keys: {sorted(documented - known)}"


@needs_man
def test_dracd_yaml_5_gives_type_default_and_example_for_every_key() -> None:
    out = flat(render(MAN / "dracd.yaml.5").stdout)
    keys = validator_keys()
    for key in keys:
        entry = re.search(rf"(?<= ){re.escape(key)} \(([^)]*default[^)]*)\)(.*?)Example:", out)
        assert entry is not None, f"{key}: no entry with a heading (type; default) and an example"
        assert not any(f" {other} (" in entry.group(2) for other in keys - {key}), f"{key}: no example"


def test_example_config_sets_exactly_the_validated_keys() -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    map_keys = set(data.pop("map"))
    sections = dracd_config.SECTIONS
    assert map_keys == set(sections["map"]), f"map: {map_keys ^ set(sections['map'])}"
    assert set(data) == set(sections[""]), f"top level: {set(data) ^ set(sections[''])}"


def test_example_config_loads_with_the_documented_defaults_where_it_keeps_them() -> None:
    config = dracd_config.load_config(EXAMPLE)
    default = dracd_config.Config()
    assert config.lifetime == default.lifetime and config.program == default.program
    assert config.max_entries == default.max_entries and config.max_record == default.max_record
    assert config.idle_timeout == default.idle_timeout and config.record_timeout == default.record_timeout
    assert config.allow_file is not None and config.allow_file.exists()


def test_example_config_passes_check_config(tmp_path: Path) -> None:
    # In a checkout's layout where `make run` made var/ (the map's directory must exist).
    (tmp_path / "etc").mkdir()
    (tmp_path / "var").mkdir()
    for name in (EXAMPLE.name, "dracd.example.allow"):
        shutil.copy(REPO / "etc" / name, tmp_path / "etc" / name)
    result = subprocess.run([str(BIN / "dracd"), "--check-config", "-c", str(EXAMPLE.relative_to(REPO))],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_logwatch_example_config_passes_check_config_and_shows_every_key() -> None:
    example = REPO / "etc" / "dracd-logwatch.example.yaml"
    result = subprocess.run([str(BIN / "dracd-logwatch"), "--check-config", "-c", str(example)],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    text = example.read_text()
    keys = set(logwatch_config._TOP_KEYS) | set(logwatch_config._RULE_KEYS) | set(logwatch_config._PATTERN_KEYS)
    keys |= set(logwatch_config._SOURCE_KEYS) | set(logwatch_config._TARGET_KEYS) | set(logwatch_config._FILE_KEYS)
    keys |= set(logwatch_config._JOURNAL_KEYS) | set(PRESETS)
    missing = sorted(key for key in keys if not re.search(rf"\b{key}\b", text))
    assert not missing, f"etc/dracd-logwatch.example.yaml does not show {missing}"


# Command-line options against their pages.

def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    found = set()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            found |= set(action.choices)
            for sub in action.choices.values():
                found |= option_strings(sub)
            continue
        found |= set(action.option_strings)
    return found


@needs_man
@pytest.mark.parametrize(("name", "parser"), [
    ("dracd.8", dracd_cli.build_parser),
    ("dracctl.1", dracctl_cli.build_parser),
    ("dracd-logwatch.8", logwatch_cli.build_parser),
])
def test_every_option_is_documented(name: str, parser: Callable[[], argparse.ArgumentParser]) -> None:
    out = flat(render(MAN / name).stdout)
    missing = sorted(opt for opt in option_strings(parser()) if not re.search(rf"(?<![\w-]){re.escape(opt)}\b", out))
    assert not missing, f"{name} does not mention {missing}"


@needs_man
def test_dracd_8_lists_signals_and_exit_codes() -> None:
    out = flat(render(MAN / "dracd.8").stdout)
    for word in ("SIGTERM", "SIGHUP", "rpc.dracd", "EXIT STATUS", "FILES", "EXAMPLES"):
        assert word in out
    for code in (dracd_cli.EX_OK, dracd_cli.EX_USAGE, dracd_cli.EX_UNAVAILABLE, dracd_cli.EX_OSERR,
                 dracd_cli.EX_CANTCREAT, dracd_cli.EX_CONFIG):
        assert re.search(rf"EXIT STATUS.* {code} ", out), code


@needs_man
def test_dracctl_1_lists_environment_and_exit_codes() -> None:
    out = flat(render(MAN / "dracctl.1").stdout)
    for word in ("DRACD_SERVER", "DRACD_SOCKET", "DRACD_CONFIG"):
        assert re.search(rf"ENVIRONMENT.*{word}", out), word
    for code in (0, 1, 64, 69, 70, 75):
        assert re.search(rf"EXIT STATUS.* {code} ", out), code


@needs_man
def test_dracd_logwatch_8_lists_presets_and_config_keys() -> None:
    out = flat(render(MAN / "dracd-logwatch.8").stdout)
    for preset in PRESETS:
        assert re.search(rf"PRESETS.* {preset} ", out), preset
    keys = set(logwatch_config._TOP_KEYS) | set(logwatch_config._RULE_KEYS) | set(logwatch_config._PATTERN_KEYS)
    keys |= {f"sources.{k}" for k in logwatch_config._SOURCE_KEYS}
    keys |= {f"target.{k}" for k in logwatch_config._TARGET_KEYS}
    keys |= set(logwatch_config._FILE_KEYS) | set(logwatch_config._JOURNAL_KEYS)
    missing = sorted(key for key in keys if key not in out)
    assert not missing, f"dracd-logwatch(8) does not mention {missing}"


@needs_man
def test_dracd_8_defaults_are_what_hostpaths_computes() -> None:
    """The map's two defaults, and the allow file's places in the order they are tried."""
    from dracd.config import hostpaths

    out = flat(render(MAN / "dracd.8").stdout)
    section = out[out.index("DEFAULTS Legacy DRAC"):out.index("SIGNALS SIGTERM")]
    drac_map, mail_map = (directory / hostpaths.MAP_NAME for directory in (hostpaths.DRAC_DIR, hostpaths.MAIL_DIR))
    assert section.index(str(drac_map)) < section.index(str(mail_map))
    candidates = [str(path) for path in hostpaths.allow_candidates(Path("/var/lib/drac/dracd.db"))[1:]]
    places = [section.index(place) for place in [f"{hostpaths.ALLOW_NAME} in the map's", *candidates]]
    assert places == sorted(places), section


@needs_man
def test_dracd_allow_5_covers_both_line_forms_and_the_default() -> None:
    out = flat(render(MAN / "dracd.allow.5").stdout)
    assert "netmask netaddr" in out and "network/prefix" in out
    assert "DEFAULT WHEN ABSENT" in out and "127.0.0.1" in out


def test_allow_examples_in_the_page_and_etc_parse(tmp_path: Path) -> None:
    from dracd.relay.policy import load_allow_file

    source = (MAN / "dracd.allow.5").read_text(encoding="utf-8")
    example = re.search(r"^\.EX\n(.*?)^\.EE", source, re.MULTILINE | re.DOTALL)
    assert example
    allow = tmp_path / "dracd.allow"
    allow.write_text(example.group(1))
    assert len(load_allow_file(allow).rules) == 6 and not load_allow_file(allow).problems
    shipped = load_allow_file(REPO / "etc" / "dracd.example.allow")
    assert shipped.rules and not shipped.problems


# make install

def test_make_install_puts_the_pages_under_mandir(tmp_path: Path) -> None:
    """The man-page half of ``make install`` (the other half syncs the venv)."""
    mandir = tmp_path / "share" / "man"
    result = subprocess.run(["make", "-s", "install-man", f"MANDIR={mandir}"],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for name in PAGES:
        installed = mandir / f"man{name.rsplit('.', 1)[1]}" / name
        assert installed.read_bytes() == (MAN / name).read_bytes()
    assert (mandir / "man8" / "rpc.dracd.8").resolve() == (mandir / "man8" / "dracd.8").resolve()
    if shutil.which("man"):
        found = subprocess.run(["man", "-M", str(mandir), "-w", "dracd.yaml"], capture_output=True, text=True,
                               timeout=60, check=False)
        assert found.stdout.strip() == str(mandir / "man5" / "dracd.yaml.5")
