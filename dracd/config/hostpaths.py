"""Where dracd's files are when nobody said: the host's own legacy layout.

DRAC was installed three ways (DESIGN.md section 2). Upstream 1.12 keeps
its map and allow file in /etc/mail; the Debian/Ubuntu package and the
RPM-style builds keep both in /etc/drac, and each compiled its allow file's
place in, whatever map the command line named. So with no map configured,
the map goes to /etc/drac when that directory exists (the MTA there reads
/etc/drac/dracd.db), else to /etc/mail; and with no allow file configured,
the first that exists of ``dracd.allow`` next to the map, in /etc/drac and
in /etc/mail is read, so ``rpc.dracd -e 30 /var/lib/x/dracd.db`` still
finds the file its admin wrote. None: loopback and the host's own
addresses, as legacy. Everything here looks at the file system when
called, never at import, so a test can run it in a namespace of its own.
"""

from __future__ import annotations

from pathlib import Path

DRAC_DIR = Path("/etc/drac")
MAIL_DIR = Path("/etc/mail")
MAP_NAME = "dracd.db"
ALLOW_NAME = "dracd.allow"


def default_map() -> Path:
    """/etc/drac/dracd.db where /etc/drac exists (Debian, Ubuntu, RPM builds), else /etc/mail/dracd.db."""
    return (DRAC_DIR if DRAC_DIR.is_dir() else MAIL_DIR) / MAP_NAME


def map_reason(path: Path) -> str:
    """Why the map is ``path``, for the log and --check-config."""
    if path != default_map():
        return "as configured"
    if path.parent == DRAC_DIR:
        return f"the default, as {DRAC_DIR} exists (the Debian, Ubuntu and RPM layout)"
    return f"the default, as {DRAC_DIR} does not exist (the upstream DRAC layout)"


def allow_candidates(map_path: Path) -> tuple[Path, ...]:
    """Where an allow file is looked for when none is configured, in order."""
    return tuple(dict.fromkeys((map_path.parent / ALLOW_NAME, DRAC_DIR / ALLOW_NAME, MAIL_DIR / ALLOW_NAME)))


def find_allow(allow_file: Path | None, map_path: Path) -> Path | None:
    """The allow file to read: the configured one (which must then exist), else the
    first candidate that exists; None: the built-in default."""
    if allow_file is not None:
        return allow_file
    return next((path for path in allow_candidates(map_path) if path.exists()), None)


def allow_reason(allow_file: Path | None, map_path: Path) -> str:
    """Which allow file is read and why, for the log and --check-config."""
    if allow_file is not None:
        return f"allow file {allow_file}, as configured"
    candidates = allow_candidates(map_path)
    found = find_allow(None, map_path)
    if found is None:
        return (f"no allow file (none of {', '.join(map(str, candidates))} exists): allowing loopback "
                "and this host's own addresses, as legacy rpc.dracd did")
    where = "next to the map" if found == candidates[0] else f"found in {found.parent}"
    return f"allow file {found}, {where} (looked for {', '.join(map(str, candidates))})"
