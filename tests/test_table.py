"""The relay table, with an injected clock: expiry is tested by moving time."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracd.keys import Entry, code_entry, entry_code
from dracd.relay.table import RelayTable


def entries(by_code: dict[int, Any]) -> dict[Entry, Any]:
    """The table speaks entry codes; these tests speak addresses."""
    return {code_entry(code): value for code, value in by_code.items()}


def codes(by_entry: dict[Entry, int]) -> dict[int, int]:
    return {entry_code(entry): value for entry, value in by_entry.items()}

# In-process only: `make test-pythons` runs these on every Python here.
pytestmark = pytest.mark.unit

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("2001:db8::1")
C = ipaddress.ip_address("192.0.2.3")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_add_sets_expiry_from_clock() -> None:
    clock = Clock(1000.7)
    table = RelayTable(clock)
    assert table.add(A, 60) == 1060
    assert table.get(A) == 1060 and A in table and len(table) == 1


def test_expire_removes_exactly_the_due_entries() -> None:
    clock = Clock(1000)
    table = RelayTable(clock)
    table.add(A, 10)
    table.add(B, 20)
    assert table.expire(1009) == []
    assert table.expire(1010) == [A]
    assert A not in table and B in table
    assert table.next_expiry() == 1020
    assert table.expire(5000) == [B]
    assert table.next_expiry() is None and len(table) == 0


def test_refresh_moves_expiry_and_old_heap_entry_is_ignored() -> None:
    clock = Clock(1000)
    table = RelayTable(clock)
    table.add(A, 10)
    clock.now = 1005
    table.add(A, 10)
    assert table.expire(1010) == []
    assert table.get(A) == 1015
    assert table.expire(1015) == [A]


def test_version_changes_only_on_real_changes() -> None:
    table = RelayTable(Clock(1000))
    start = table.version
    table.set(A, 2000)
    after_add = table.version
    table.set(A, 2000)
    assert after_add > start and table.version == after_add
    assert not table.remove(C) and table.version == after_add
    assert table.remove(A) and table.version > after_add
    table.set(B, 1)
    before = table.version
    table.expire(0)
    assert table.version == before
    table.expire(10)
    assert table.version > before


def test_expiry_cost_follows_what_expires_not_table_size() -> None:
    table = RelayTable(Clock(0))
    for n in range(50_000):
        table.set(ipaddress.IPv4Address(0x0A000000 + n), 100 + n)
    assert table.expire(102) == [ipaddress.IPv4Address(0x0A000000 + n) for n in range(3)]
    assert len(table) == 50_000 - 3


def test_wheel_stays_bounded_under_refreshes() -> None:
    clock = Clock(0)
    table = RelayTable(clock)
    for step in range(20_000):
        clock.now = step
        table.add(A, 60)
    assert table._slots <= 2 * len(table) + 1024 and len(table._wheel) <= 1024 + 1
    assert table.next_expiry() == 19_999 + 60


def test_snapshot_is_a_copy() -> None:
    table = RelayTable(Clock(0))
    table.set(A, 5)
    snap = entries(table.snapshot())
    table.set(C, 6)
    assert snap == {A: 5}


def test_change_log_records_adds_refreshes_removals_and_expiry() -> None:
    clock = Clock(1000)
    table = RelayTable(clock)
    table.add(A, 10)
    table.add(B, 10)
    assert entries(table.take_changes()) == {A: 1010, B: 1010}
    assert entries(table.take_changes()) == {}
    table.add(A, 20)
    table.remove(B)
    table.set(C, 1005)
    table.expire(1005)
    assert entries(table.take_changes()) == {A: 1020, B: None, C: None}
    table.add(B, 1)
    entries(table.snapshot())
    assert entries(table.take_changes()) == {}


def test_expire_with_a_limit_spreads_the_work() -> None:
    table = RelayTable(Clock(0))
    for n in range(10):
        table.set(ipaddress.IPv4Address(0x0A000000 + n), 5)
    first = table.expire(10, limit=4)
    assert len(first) == 4 and len(table) == 6
    assert len(table.expire(10, limit=4)) == 4 and len(table.expire(10, limit=4)) == 2
    assert table.expire(10, limit=4) == [] and len(table) == 0


def test_load_starts_from_the_map_without_a_change_log() -> None:
    now = [100.0]
    table = RelayTable(clock=lambda: now[0])
    net = ipaddress.ip_network("192.0.2.0/24")
    version = table.version
    table.load(codes({ipaddress.ip_address("198.51.100.1"): 150, ipaddress.ip_address("198.51.100.2"): 90, net: 120}))
    assert table.version > version  # a new state, though nothing is to be written
    assert entries(table.take_changes()) == {}
    assert table.lookup(ipaddress.ip_address("192.0.2.9")) == 120
    assert table.expire() == [ipaddress.ip_address("198.51.100.2")]
    now[0] = 130.0
    assert table.expire() == [net] and table.lookup(ipaddress.ip_address("192.0.2.9")) is None
    table.add(ipaddress.ip_address("198.51.100.3"), 10)
    assert table.next_expiry() == 140
    with pytest.raises(ValueError):
        table.load({})


_entries = [ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("2001:db8::1"),
            ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/64")]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "expire", "tick", "clear", "limited", "take", "merge",
                                           "step back"]),
                          st.integers(0, len(_entries) - 1), st.integers(0, 5)), max_size=60))
def test_the_table_behaves_like_a_dict_with_a_clock(ops: list[tuple[str, int, int]]) -> None:
    """The compact table (codes, timer wheel, lazy leftovers) against the obvious model,
    change log and version included: the version moves on every change and only then."""
    clock = Clock(100)
    table, model = RelayTable(clock), {}
    changes: dict[Entry, int | None] = {}
    for op, index, amount in ops:
        entry = _entries[index]
        before, version = dict(model), table.version
        if op == "add":
            assert table.add(entry, amount) == clock.now + amount
            model[entry] = clock.now + amount
        elif op == "remove":
            assert table.remove(entry) == (model.pop(entry, None) is not None)
        elif op == "tick":
            clock.now += amount
        elif op == "clear":
            assert table.clear() == len(model)
            model.clear()
        elif op == "take":
            assert entries(table.take_changes()) == changes and table.pending_changes() == 0
            changes.clear()
        elif op == "merge":  # a map someone else wrote: set these two entries' expiries
            merged = {_entries[index]: int(clock.now) + amount, _entries[(index + 1) % len(_entries)]: 150}
            table.set_codes(codes(merged))
            model.update(merged)
        elif op == "step back":  # the clock went back 1..6 s: nothing may be due after now + 3
            latest = int(clock.now) + 3
            moved = {e: max(t - amount - 1, latest) for e, t in model.items() if t > latest}
            assert table.pull_in(latest, amount + 1) == len(moved)
            model.update(moved)
        else:
            due = {e for e, t in model.items() if t <= clock.now}
            gone = table.expire(limit=1 if op == "limited" else None)
            assert set(gone) <= due and (op == "limited" or set(gone) == due)
            assert op != "limited" or len(gone) == min(1, len(due))
            for e in gone:
                del model[e]
        for e in before.keys() | model.keys():
            if before.get(e) != model.get(e):
                changes[e] = model.get(e)
        assert (table.version > version) == (model != before) and table.version >= version
        assert table.pending_changes() == len(changes)
        assert len(table) == len(model) and all(table.get(e) == t for e, t in model.items())
        assert set(table) == set(model) and all(e in table for e in model)
        assert table.next_expiry() == (min(model.values()) if model else None)
        host = ipaddress.ip_address("192.0.2.1")
        covering = [t for e, t in model.items() if e == host or (isinstance(e, ipaddress.IPv4Network) and host in e)]
        assert table.lookup(host) == (max(covering) if covering else None)
    assert entries(table.take_changes()) == changes


def test_pull_in_after_a_step_back_keeps_each_entry_within_now_plus_lifetime() -> None:
    """Issue 22, fault 5: after the clock stepped back 4 h, entries due after now + lifetime
    move in by the step, never before now + lifetime; the others stay; the map is told."""
    clock = Clock(1_000_000.0)
    table = RelayTable(clock)
    table.add(A, 600)            # due at +600
    table.add(B, 30)             # due at +30
    table.set(C, 1_000_000 + 9 * 3600)  # an admin's 9 h entry
    table.take_changes()
    clock.now -= 4 * 3600
    now = int(clock.now)
    assert table.pull_in(now + 600, 4 * 3600) == 3
    assert table.get(A) == now + 600            # had 600 s left: keeps them
    assert table.get(B) == now + 600            # had 30 s left: never less than now + lifetime
    assert table.get(C) == now + 9 * 3600       # its 9 h, not 13 h
    assert set(entries(table.take_changes())) == {A, B, C}
    clock.now = now + 9 * 3600
    assert set(table.expire()) == {A, B, C}


def test_clear_logs_every_removal_and_moves_the_version() -> None:
    table = RelayTable(Clock(1000))
    table.set(A, 2000)
    table.set(ipaddress.ip_network("192.0.2.0/24"), 2001)
    table.take_changes()
    version = table.version
    assert table.clear() == 2
    assert table.version > version and len(table) == 0 and table.next_expiry() is None
    assert entries(table.take_changes()) == {A: None, ipaddress.ip_network("192.0.2.0/24"): None}
    assert table.lookup(ipaddress.ip_address("192.0.2.9")) is None
    version = table.version
    assert table.clear() == 0 and table.version == version and table.take_changes() == {}


def test_leftovers_of_refreshed_entries_never_count_as_due() -> None:
    """The wheel keeps a refreshed entry's old second as a leftover: next_expiry() and
    expire() must skip it, however the expiry is cut in pieces."""
    table = RelayTable(Clock(0))
    table.set(A, 10)
    table.set(C, 10)
    table.set(B, 10)
    table.set(A, 20)  # leftover at 10
    assert table.next_expiry() == 10
    assert table.expire(10, limit=1) != [] and table.next_expiry() == 10  # one of B, C left at 10
    assert len(table.expire(10, limit=1)) == 1
    assert table.next_expiry() == 20 and table.expire(15) == []
    table.set_codes(codes({A: 30, C: 30}))
    assert table.next_expiry() == 30 and table.expire(20) == [] and len(table) == 2
    assert table.pull_in(25, 100) == 2 and table.next_expiry() == 25
    assert set(table.expire(25)) == {A, C} and table.next_expiry() is None and len(table) == 0


def test_set_codes_changes_only_what_differs() -> None:
    table = RelayTable(Clock(0))
    net = ipaddress.ip_network("192.0.2.0/24")
    table.set(A, 10)
    table.take_changes()
    version = table.version
    table.set_codes(codes({A: 10}))
    assert table.version == version and table.take_changes() == {}
    table.set_codes(codes({A: 11, net: 12}))
    assert table.version > version and entries(table.take_changes()) == {A: 11, net: 12}
    assert table.lookup(ipaddress.ip_address("192.0.2.200")) == 12
    version = table.version
    assert table.pull_in(100, 5) == 0 and table.version == version


def test_many_refreshes_through_every_path_keep_the_table_exact() -> None:
    """Past the compaction threshold (leftovers > 2 x entries + 1024) via set, set_codes and
    pull_in: the table still holds exactly what it was told."""
    clock = Clock(0)
    table = RelayTable(clock)
    hosts = [ipaddress.IPv4Address(0x0A000000 + n) for n in range(50)]
    net = ipaddress.ip_network("192.0.2.0/24")
    bystanders = {A: 900, B: 901, net: 902}  # set once, before every compaction; never pulled in
    for entry, expiry in bystanders.items():
        table.set(entry, expiry)
    for step in range(1, 60):
        for host in hosts:
            table.set(host, 1000 + step)
        table.set_codes(codes({host: 2000 + step for host in hosts}))
        table.pull_in(1500 + step, 10)
    # Each round: 1000 + step, then 2000 + step, then pulled in by 10 (not below 1500 + step).
    assert all(table.get(host) == 2049 for host in hosts)
    assert all(table.get(entry) == expiry for entry, expiry in bystanders.items())
    assert table.lookup(ipaddress.ip_address("192.0.2.77")) == 902 and table.next_expiry() == 900
    assert table._slots <= 2 * len(table) + 1024 + 2 * len(hosts)
    assert set(table.expire(2048)) == set(bystanders) and table.next_expiry() == 2049
    assert set(table.expire(2049)) == set(hosts) and len(table) == 0


def test_pull_in_moves_an_entry_once_though_the_wheel_holds_it_twice() -> None:
    """Set to 150, refreshed to 100, set to 150 again (a merged map): 150's list holds the
    code twice. A step back moved it twice and said 2 (found by the model test above)."""
    table = RelayTable(Clock(100))
    table.set_codes(codes({A: 150}))
    table.add(A, 0)
    table.set_codes(codes({A: 150}))
    assert table.pull_in(103, 1) == 1 and table.get(A) == 149
    assert table.expire(148) == [] and table.expire(149) == [A] and table.next_expiry() is None


def test_pull_in_moves_each_entry_by_one_step_only() -> None:
    """Moved from 150 to 149, where it had been before (so 149 is in the wheel and due after
    ``latest`` too): it was moved again, to 148 (found by the model test above)."""
    table = RelayTable(Clock(100))
    table.set_codes(codes({A: 150}))
    assert table.pull_in(103, 1) == 1 and table.get(A) == 149
    table.set_codes(codes({A: 150}))
    assert table.pull_in(103, 1) == 1 and table.get(A) == 149


def test_codes_is_the_table_itself_and_copy_codes_a_copy() -> None:
    table = RelayTable(Clock(0))
    table.set(A, 5)
    held, copied = table.codes(), table.copy_codes()
    assert entries(dict(held)) == {A: 5} == entries(copied)
    table.set(C, 6)
    assert entries(dict(held)) == {A: 5, C: 6} and entries(copied) == {A: 5}


def test_a_network_s_prefix_is_tried_while_any_network_of_that_length_remains() -> None:
    table = RelayTable(Clock(0))
    one, two = ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.0/24")
    table.set(one, 10)
    table.set(two, 20)
    assert table.remove(one)
    assert table.lookup(ipaddress.ip_address("198.51.100.7")) == 20
    table.set(one, 30)
    assert table.expire(25) == [two] and table.lookup(ipaddress.ip_address("192.0.2.7")) == 30
