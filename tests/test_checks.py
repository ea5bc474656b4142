"""dracclient.checks: the typed reading of YAML values that dracd's and dracd-logwatch's
configurations share, with the bounds written out as literals."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from dracclient import checks
from dracclient.checks import ConfigError, SubkeyError

pytestmark = pytest.mark.unit


def test_log_levels() -> None:
    assert checks.LOG_LEVELS == ("debug", "info", "warning", "error")


@pytest.mark.parametrize(("value", "ok"), [(True, True), (False, True), (1, False), (0, False), ("yes", False),
                                           (None, False)])
def test_boolean(value: Any, ok: bool) -> None:
    if ok:
        assert checks.boolean(value) is value
    else:
        with pytest.raises(ValueError, match=r"^expected true or false, got "):
            checks.boolean(value)


def test_int_range_takes_both_ends_and_nothing_past_them() -> None:
    convert = checks.int_range(1, 65535)
    assert convert(1) == 1 and convert(65535) == 65535
    for bad in (0, 65536, -1, True, False, 1.0, "1", None):
        with pytest.raises(ValueError, match=r"^expected an integer 1\.\.65535, got "):
            convert(bad)


def test_choice_and_string() -> None:
    convert = checks.choice(("hash", "btree"))
    assert convert("hash") == "hash" and convert("btree") == "btree"
    with pytest.raises(ValueError, match=r"^expected one of hash, btree, got 'dbm'$"):
        convert("dbm")
    assert checks.string("x") == "x"
    for bad in ("", 1, None, ["x"]):
        with pytest.raises(ValueError, match=r"^expected a string, got "):
            checks.string(bad)


def test_networks() -> None:
    assert checks.networks(["192.0.2.5/24", "2001:db8::/32"]) == (
        ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))
    assert checks.networks([]) == ()
    with pytest.raises(ValueError, match="a list of networks"):
        checks.networks("192.0.2.0/24")
    with pytest.raises(ValueError):
        checks.networks(["not a network"])
    with pytest.raises(ValueError, match="a string"):
        checks.networks([""])


def test_convert_names_the_key_the_subkey_and_the_known_keys() -> None:
    def inner(value: Any) -> Any:
        raise SubkeyError("section.inner", f"bad {value}")

    table = {"port": checks.int_range(1, 65535), "name": checks.string, "section": inner}
    assert checks.convert({"port": 25, "name": "x"}, table, "top.", "f.yaml") == {"port": 25, "name": "x"}
    assert checks.convert({}, table, "", "f.yaml") == {}
    with pytest.raises(ConfigError, match=r"^f\.yaml: unknown key 'top\.other' \(known: top\.port, top\.name, "
                                          r"top\.section\)$"):
        checks.convert({"other": 1}, table, "top.", "f.yaml")
    with pytest.raises(ConfigError, match=r"^f\.yaml: key 'top\.port': expected an integer 1\.\.65535, got 0$"):
        checks.convert({"port": 0}, table, "top.", "f.yaml")
    with pytest.raises(ConfigError, match=r"^f\.yaml: key 'section\.inner': bad 3$"):
        checks.convert({"section": 3}, table, "top.", "f.yaml")
    assert issubclass(ConfigError, ValueError)


def test_resolve(tmp_path: Path) -> None:
    assert checks.resolve(tmp_path, "/etc/x") == Path("/etc/x")
    assert checks.resolve(tmp_path, "a/../b") == (tmp_path / "b").resolve()


def test_read_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\nb: [x]\n")
    assert checks.read_yaml(path) == {"a": 1, "b": ["x"]}
    path.write_text("")
    assert checks.read_yaml(path) == {}
    path.write_text("a: 1\nb: [x\n")
    with pytest.raises(ConfigError, match=r"c\.yaml, line 3: invalid YAML: "):
        checks.read_yaml(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"c\.yaml: cannot read: "):
        checks.read_yaml(path)
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read: "):
        checks.read_yaml(tmp_path / "missing.yaml")
