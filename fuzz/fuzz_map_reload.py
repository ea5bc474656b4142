"""Coverage-guided fuzzing (atheris) of the map reload: what dracd reads at start.

Run with `make fuzz`. Each input becomes the records of a Berkeley DB map
(keys and values of any bytes, in any of the key styles), written with the
berkeleydb binding and read back by BerkeleyMap.read_codes(), as dracd does
at start. Any exception other than MapError is a finding, and so is an
entry that no ADD could have made (valid_code).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from berkeleydb import db

    from dracd.keys import Ipv6Keys, KeyStyle, parse_value, valid_code
    from dracd.publish.maps import MapError
    from dracd.publish.maps.berkeley import BerkeleyMap

# One map file, rewritten per input, at a fixed place (libFuzzer ends the process with
# exit(), so nothing would remove a temporary directory): in memory if there is /dev/shm
# (five times the inputs per second), else in the repository's .cache.
_SHM = Path("/dev/shm")
DIRECTORY = (_SHM / f"dracd-fuzz-map-reload-{os.getuid()}" if _SHM.is_dir()
             else Path(__file__).resolve().parent.parent / ".cache" / "fuzz-map-reload")
PATH = DIRECTORY / "dracd.db"
STYLES = [KeyStyle(nul=nul, cidr=cidr, ipv6=ipv6) for nul in (False, True) for cidr in (False, True)
          for ipv6 in Ipv6Keys]


def _records(fdp: atheris.FuzzedDataProvider) -> dict[bytes, bytes]:
    records = {}
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        key = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 48))
        value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
        if key:
            records[key] = value
    return records


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    style = STYLES[fdp.ConsumeIntInRange(0, len(STYLES) - 1)]
    kind = "hash" if fdp.ConsumeBool() else "btree"
    records = _records(fdp)
    PATH.unlink(missing_ok=True)
    table = db.DB()
    table.open(str(PATH), dbtype=db.DB_HASH if kind == "hash" else db.DB_BTREE, flags=db.DB_CREATE)
    try:
        for key, value in records.items():
            table.put(key, value)
    finally:
        table.close()
    try:
        entries = BerkeleyMap(PATH, kind, style).read_codes()
    except MapError:
        return
    for code, expiry in entries.items():
        if not valid_code(code) or expiry < 0:
            raise AssertionError(f"read {code:#x} -> {expiry} from {records!r}")
    for value in records.values():
        parse_value(value)


def main() -> None:
    logging.disable(logging.CRITICAL)  # "ignored N records" on nearly every input
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
