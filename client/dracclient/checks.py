"""Checks for configuration values read from YAML, shared by dracd and dracd-logwatch.

Each check takes a value as YAML gave it and returns it typed, or raises
ValueError saying what was expected; ``convert`` and ``read_yaml`` turn that
into a ConfigError naming the file and the (dotted) key. No dependencies:
PyYAML is imported only by ``read_yaml``, which only the daemons call.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and key or line."""


def expect(kind: str, check: bool, value: Any) -> None:
    if not check:
        raise ValueError(f"expected {kind}, got {value!r}")


def boolean(value: Any) -> bool:
    expect("true or false", isinstance(value, bool), value)
    return bool(value)


def int_range(low: int, high: int) -> Any:
    def convert(value: Any) -> int:
        expect(f"an integer {low}..{high}", isinstance(value, int) and not isinstance(value, bool)
                and low <= value <= high, value)
        return int(value)
    return convert


def choice(choices: tuple[str, ...]) -> Any:
    def convert(value: Any) -> str:
        expect("one of " + ", ".join(choices), value in choices, value)
        return str(value)
    return convert


def string(value: Any) -> str:
    expect("a string", isinstance(value, str) and value != "", value)
    return str(value)


def networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    expect("a list of networks like 192.0.2.0/24", isinstance(value, list), value)
    return tuple(ipaddress.ip_network(string(item), strict=False) for item in value)


class SubkeyError(ValueError):
    """A bad key inside a section that is itself a top-level key: names the inner key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def convert(section: dict[str, Any], table: dict[str, Any], prefix: str, source: str) -> dict[str, Any]:
    """A section by a table of converters (dracd-logwatch's config); ConfigError names the key."""
    out = {}
    for key, value in section.items():
        name = f"{prefix}{key}"
        if key not in table:
            raise ConfigError(f"{source}: unknown key {name!r} (known: {', '.join(prefix + k for k in table)})")
        try:
            out[key] = table[key](value)
        except SubkeyError as exc:
            raise ConfigError(f"{source}: key {exc.key!r}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{source}: key {name!r}: {exc}") from None
    return out


def resolve(base: Path, text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else (base / path).resolve()


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path`` ({} if empty); ConfigError names the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return data or {}
