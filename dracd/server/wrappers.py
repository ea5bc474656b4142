"""tcp_wrappers (hosts_access(5)) for network callers, as Debian's rpc.dracd had them.

Debian and Ubuntu built rpc.dracd against libwrap: every caller also had to
pass /etc/hosts.allow and /etc/hosts.deny for the daemon name ``dracd``
(rpc.dracd(8), "TCP_WRAPPERS SUPPORT"), else ADD_PERM. We call the same
library, libwrap.so.0 (Debian's libwrap0), through ctypes rather than imitate
its matching rules: ``hosts_ctl("dracd", "unknown", ADDR, "unknown")``.
The client name is libwrap's STRING_UNKNOWN, so no DNS lookup is ever made:
host-name patterns (``.example.com``, ``LOCAL``, ``KNOWN``) never match, and
``UNKNOWN`` always does; write addresses, ``192.0.2.`` prefixes, net/mask
and ``[2001:db8::]/32`` patterns. Like legacy, libwrap reads both files on
every call (about 10 µs for short files), so an edit applies at once,
without SIGHUP. When tcp_wrappers is on by layout (``auto``) is decided in
:func:`decide`, looking at the file system when called.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from pathlib import Path

from dracclient.checks import ConfigError

from ..config.hostpaths import DRAC_DIR

DAEMON = b"dracd"
#: libwrap's STRING_UNKNOWN: a client name and user it will not look up.
UNKNOWN = b"unknown"
HOSTS_ALLOW = Path("/etc/hosts.allow")
HOSTS_DENY = Path("/etc/hosts.deny")
LIBRARY = "libwrap.so.0"
#: Between the names of a daemon list: blanks and commas (hosts_access(5)).
_DAEMON_SEPARATORS = re.compile(r"[\s,]+")
#: The colon before a rule's options: not one inside an [IPv6] pattern.
_OPTIONS = re.compile(r":(?![^\[]*\])")


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("wrap") or LIBRARY
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise ConfigError(f"tcp_wrappers is on but {LIBRARY} cannot be loaded ({exc}): install libwrap0 "
                          "(apt-get install libwrap0), or set tcp_wrappers: false") from None
    lib.hosts_ctl.argtypes = [ctypes.c_char_p] * 4
    lib.hosts_ctl.restype = ctypes.c_int
    return lib


class HostsAccess:
    """hosts_access(5) for daemon ``dracd``, through libwrap. ``allow``/``deny``
    replace /etc/hosts.allow and /etc/hosts.deny (for tests)."""

    def __init__(self, allow: Path | None = None, deny: Path | None = None) -> None:
        lib = _load()
        self._hosts_ctl = lib.hosts_ctl
        # libwrap's globals point into these buffers while a call runs: each call points them
        # at this object's own, so no two HostsAccess (tests) ever read each other's files.
        self._tables = [ctypes.create_string_buffer(bytes(path or default))
                        for path, default in ((allow, HOSTS_ALLOW), (deny, HOSTS_DENY))]
        self._globals = [ctypes.c_void_p.in_dll(lib, name) for name in ("hosts_allow_table", "hosts_deny_table")]

    def permits(self, address: str) -> bool:
        """Whether hosts.allow/hosts.deny let ``address`` (an IP address, never a name) use dracd."""
        for pointer, table in zip(self._globals, self._tables, strict=True):
            pointer.value = ctypes.addressof(table)
        return bool(self._hosts_ctl(DAEMON, UNKNOWN, address.encode(), UNKNOWN))


def _daemon_names(path: Path) -> set[str]:
    """The daemon names a hosts_access file's rules name (lower case, ``@host`` cut):
    each line's daemon list is the part before its first colon. Unreadable: none."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return set()
    names: set[str] = set()
    for line in lines:
        if line.lstrip().startswith("#") or ":" not in line:
            continue
        names.update(name.split("@", 1)[0] for name in _DAEMON_SEPARATORS.split(line.split(":", 1)[0].lower()))
    return names


def mentions_dracd(path: Path) -> bool:
    """Whether a hosts_access file has a rule for daemon ``dracd`` (or ``dracd@host``);
    daemon names match case-blind, as libwrap's. An unreadable file has none."""
    return "dracd" in _daemon_names(path)


#: Client patterns that need a name (or an ident lookup) to match: with no lookup, never.
_NAME_KEYWORDS = frozenset({"LOCAL", "KNOWN", "PARANOID"})
_ADDRESS_KEYWORDS = frozenset({"ALL", "EXCEPT", "UNKNOWN"})


def _needs_a_name(pattern: str) -> bool:
    upper = pattern.upper()
    if upper in _NAME_KEYWORDS or "@" in pattern:
        return True
    if not pattern or upper in _ADDRESS_KEYWORDS or pattern[0] in "[/":  # [IPv6], a file of patterns
        return False
    return any(char.isalpha() for char in pattern.split("/", 1)[0])  # .example.org, mail.example.org


def name_patterns() -> list[str]:
    """Client patterns of the rules for dracd (or ALL) that only a host name could match
    (``.example.org``, ``mail.example.org``, LOCAL, KNOWN, PARANOID, ``user@host``): dracd
    never looks a name up, so they never match. One line each, naming file and line, for
    the log and --check-config: Debian's rpc.dracd(8) suggested ``dracd: .bar.com``."""
    found = []
    for path in (HOSTS_ALLOW, HOSTS_DENY):
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, 1):
            if line.lstrip().startswith("#") or ":" not in line:
                continue
            daemons, _, rest = line.partition(":")
            names = {name.split("@", 1)[0] for name in _DAEMON_SEPARATORS.split(daemons.lower()) if name}
            if not names & {"dracd", "all"}:
                continue
            clients = _OPTIONS.split(rest, maxsplit=1)[0]  # options follow a colon outside [IPv6]
            found += [f"{path}, line {number}: {pattern!r} needs a host name, which dracd never looks up, "
                      "so it never matches: write the MRAs' addresses"
                      for pattern in _DAEMON_SEPARATORS.split(clients.strip()) if _needs_a_name(pattern)]
    return found


def decide(setting: bool | None) -> tuple[bool, str]:
    """Whether tcp_wrappers is on for ``setting`` (None: auto) and why, for the log and --check-config."""
    if setting is not None:
        return setting, f"tcp_wrappers {'on' if setting else 'off'}, as configured"
    files = " nor ".join(map(str, (HOSTS_ALLOW, HOSTS_DENY)))
    if not DRAC_DIR.is_dir():
        return False, f"tcp_wrappers off: auto, and {DRAC_DIR} does not exist (not the Debian layout)"
    named = [str(path) for path in (HOSTS_ALLOW, HOSTS_DENY) if mentions_dracd(path)]
    if not named:
        hint = "".join(f"; but {path} has an ALL rule, which Debian's rpc.dracd obeyed: set tcp_wrappers: true "
                       "to keep obeying it" for path in (HOSTS_DENY,) if "all" in _daemon_names(path))
        return False, f"tcp_wrappers off: auto, and neither {files} has a rule for dracd{hint}"
    return True, (f"tcp_wrappers on (hosts_access for daemon dracd): auto, as {DRAC_DIR} exists and "
                  f"{' and '.join(named)} {'has' if len(named) == 1 else 'have'} a rule for dracd (the Debian layout)")


def from_setting(setting: bool | None) -> tuple[HostsAccess | None, str]:
    """The check to make (None: off) and why; ConfigError if on and libwrap is missing."""
    on, reason = decide(setting)
    return (HostsAccess() if on else None), reason
