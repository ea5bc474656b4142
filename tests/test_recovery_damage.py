"""Recovery never trusts a damaged file over an intact one (issue 22, faults 1 and 2).

Each row of the issue's table, on the real dracd process: acknowledged ADDs
(a first run stopped cleanly, a second killed with SIGKILL), then the row's
damage to the real files (a byte flipped in a middle batch, a truncated
journal, a damaged or zeroed header, deleted journals, a deleted state, a
damaged state over an older map or no map), then a restart. Every
acknowledged address must be in the map, read as an MTA reads it, and the
log must name what was skipped or merged; a damaged file is moved aside,
never overwritten. Before the fix, replay stopped at the first bad batch,
skipped a file with a bad header, ignored the journal when the state was
damaged (then overwrote it), and said nothing of any of it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from dracd.keys import entry_code
from dracd.publish import recovery
from dracd.publish.journal import Journal
from tests.fixtures.damage import ROWS, batch_offsets, flip, run_round

#: A small load: seconds per row.
FIRST, SECOND = 200, 400
#: What the log must name for each row (besides every acknowledged address back).
EXPECTED_LOG = {
    "middle batch flipped": ["recovery: .dracd.db.journal.0: bytes", "unreadable before batch",
                             ".dracd.db.journal.0 moved aside to .dracd.db.journal.0.damaged-"],
    "journal.0 truncated to half": ["recovery: .dracd.db.journal.0: truncated",
                                    ".dracd.db.journal.0 moved aside to"],
    "journal.0 header flipped": ["recovery: .dracd.db.journal.0: header damaged", ".dracd.db.journal.0 moved aside"],
    "journal.0 header zeroed": ["recovery: .dracd.db.journal.0: header damaged", ".dracd.db.journal.0 moved aside"],
    "both journals deleted": ["recovery: .dracd.db.journal.0: missing", "recovery: .dracd.db.journal.1: missing"],
    "state deleted": ["recovery: .dracd.db.state: missing"],
    "state damaged + older map": ["recovery: .dracd.db.state:", "damaged (checksum)",
                                  ".dracd.db.state moved aside to .dracd.db.state.damaged-"],
    "state damaged + no map": ["recovery: .dracd.db.state:", "damaged (checksum)", "entries read from it",
                               ".dracd.db.state moved aside", "dracd.db is missing"],
}
#: Rows where the map on disk is read and merged, which the log must say.
MERGED = {name for name, _ in ROWS} - {"state damaged + no map"}


@pytest.mark.parametrize(("name", "damage"), ROWS, ids=[name for name, _ in ROWS])
def test_no_acknowledged_add_is_lost_to_damage(tmp_path: Path, name: str,
                                                damage: Callable[[Path, Path], str]) -> None:
    result = run_round(tmp_path, damage, FIRST, SECOND)
    try:
        assert not result.lost, (f"{name} ({result.damage}): {len(result.lost)} of {len(result.acked)} "
                                 f"acknowledged addresses lost, e.g. {sorted(result.lost)[:3]}\n{result.log}")
        for text in EXPECTED_LOG[name]:
            assert text in result.log, f"{name}: the log does not say {text!r}\n{result.log}"
        if name in MERGED:
            assert "the journal or state was damaged: kept its" in result.log, result.log
        aside = sorted(p.name for p in tmp_path.glob(".dracd.db.*.damaged-*"))
        if "moved aside" in " ".join(EXPECTED_LOG[name]):
            assert aside, f"{name}: no damaged file kept aside"
        assert result.process.stop() == 0
    finally:
        result.process.kill()


def test_a_damaged_state_never_costs_an_intact_journal(tmp_path: Path) -> None:
    """Fault 2 on its own: the state is damaged beyond salvage (truncated), the journal is
    intact and there is no map: every address the journal holds comes back, and the state
    is moved aside, not overwritten."""
    def truncate_state_drop_map(map_path: Path, _older: Path) -> str:
        state = map_path.with_name(".dracd.db.state")
        state.write_bytes(state.read_bytes()[:20])
        map_path.unlink()
        return "state truncated, map gone"

    result = run_round(tmp_path, truncate_state_drop_map, FIRST, SECOND)
    try:
        second_run = {a for a in result.acked if int(ipaddress.IPv4Address(a)) >= 0x0A00_0000 + 1_000_000}
        assert second_run, "no ADD of the second run to check"
        lost = second_run & result.lost
        assert not lost, f"{len(lost)} addresses the intact journal held were lost\n{result.log}"
        assert "recovery: .dracd.db.state:" in result.log and "truncated" in result.log
        kept = list(tmp_path.glob(".dracd.db.state.damaged-*"))
        assert kept and len(kept[0].read_bytes()) == 20, "the damaged state was not kept as it was"
        assert result.process.stop() == 0
    finally:
        result.process.kill()


def test_replay_resynchronises_after_a_bad_batch(tmp_path: Path) -> None:
    """The reader skips a damaged batch and reads every good one after it."""
    map_path = tmp_path / "dracd.db"
    journal = Journal(map_path)
    journal.start({})
    for batch in range(9):
        journal.commit({entry_code(ipaddress.ip_address(f"192.0.2.{batch + 1}")): 5000 + batch})
    journal.close()
    offsets = batch_offsets(journal.paths[0])
    flip(journal.paths[0], offsets[4] + 20)
    scan = recovery.scan_journal(journal.paths[0])
    assert len(scan.current()) == 8
    assert scan.damage and f"bytes {offsets[4]}-{offsets[5]} unreadable before batch 5 of 8" in scan.damage[0]
