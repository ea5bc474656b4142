"""The journal in-process, beyond tests/test_journal.py's unit tests: the file format's
exact numbers (written here as literals, not taken from the module), the compaction
threshold, a closed journal, a state file with bytes after its checksum, and the
committer's restart of the journal (a new generation) after a commit that could not
be written, with the real table, map writer and journal files.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from dracd.keys import KeyStyle, entry_code
from dracd.publish.commit import Committer
from dracd.publish.journal import Journal, JournalError
from dracd.publish.maps import MapError
from dracd.publish.maps.berkeley import BerkeleyMap
from dracd.relay.table import RelayTable
from tests.fixtures.server import map_keys

pytestmark = pytest.mark.unit


def code(text: str) -> int:
    entry = ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text)
    return entry_code(entry)


# --- the committer restarts the journal after a failed commit -------------------------


def test_a_commit_the_journal_cannot_take_fails_its_adds_then_a_new_generation_takes_over(tmp_path: Path) -> None:
    """The journal's files vanish under a running committer: the ADD waiting for that commit
    gets the MapError (never a false success); the retry writes the whole map and starts a
    new journal generation (both files back, a state covering the table), and the next
    ADDs are journaled and replayed."""
    map_path = tmp_path / "dracd.db"
    table = RelayTable(clock=lambda: 1_000_000.0)
    journal = Journal(map_path)
    committer = Committer(table, BerkeleyMap(map_path, "hash", KeyStyle()), journal)

    async def scenario() -> None:
        table.add(ipaddress.ip_address("192.0.2.1"), 3600)
        committer.write_now()  # start-up: the whole map, journal generation 1
        assert journal.active and journal.epoch == 1
        committer.start()
        try:
            for path in journal.paths:
                path.unlink()
            table.add(ipaddress.ip_address("192.0.2.2"), 3600)
            with pytest.raises(MapError, match="cannot write"):
                await asyncio.wait_for(committer.commit(), 10)
            # The retry (after RETRY_FIRST, 0.5 s) writes everything afresh, unasked.
            for _ in range(1000):
                if all(path.exists() for path in journal.paths) and committer.written_version == table.version:
                    break
                await asyncio.sleep(0.01)
            assert all(path.exists() for path in journal.paths), "the journal was not started afresh"
            assert journal.epoch == 2 and journal.state_path.exists()
            assert set(map_keys(map_path)) == {b"192.0.2.1", b"192.0.2.2"}
            table.add(ipaddress.ip_address("192.0.2.3"), 3600)
            await asyncio.wait_for(committer.commit(), 10)
        finally:
            await committer.close()

    asyncio.run(scenario())
    assert Journal(map_path).recover() == {code("192.0.2.1"): 1_003_600, code("192.0.2.2"): 1_003_600,
                                           code("192.0.2.3"): 1_003_600}
    assert set(map_keys(map_path)) == {b"192.0.2.1", b"192.0.2.2", b"192.0.2.3"}


# --- closed journals ---------------------------------------------------------------------


def test_a_journal_that_is_not_open_takes_no_commit_and_no_switch(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "dracd.db")
    for call in (lambda: journal.commit({code("192.0.2.1"): 1000}), journal.switch):
        with pytest.raises(JournalError, match="not open"):
            call()
    journal.start({})
    assert journal.active
    journal.close()
    assert not journal.active and journal.exists()  # closed, not clean: the files stay
    for call in (lambda: journal.commit({code("192.0.2.1"): 1000}), journal.switch):
        with pytest.raises(JournalError, match="not open"):
            call()
    assert not journal.wants_compaction()
    journal.close(clean=True)
    assert not journal.exists()
