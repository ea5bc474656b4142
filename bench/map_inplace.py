"""CPU per lone map update (issue 21): BerkeleyMap.update_in_place, one ADD per call, as the
committer runs it on the event-loop thread; and, for comparison, the copy it falls back to
when an MTA still has the spare open. Best of --reps rounds of --n calls (process CPU time
from getrusage, user and system), on a map of --entries records in --dir.

    .venv/bin/python bench/map_inplace.py [--entries 1000] [--n 2000] [--reps 7]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from berkeleydb import db  # noqa: E402

from dracd.keys import KeyStyle  # noqa: E402
from dracd.publish.maps.berkeley import BerkeleyMap  # noqa: E402


def cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def best(n: int, reps: int, call: Callable[[int], object]) -> tuple[float, float]:
    """The lowest (user, system) microseconds per call over ``reps`` rounds of ``n`` calls."""
    result = (float("inf"), float("inf"))
    count = 0
    for _ in range(reps):
        user0, sys0 = cpu()
        for _ in range(n):
            count += 1
            call(count)
        user1, sys1 = cpu()
        round_ = ((user1 - user0) / n * 1e6, (sys1 - sys0) / n * 1e6)
        result = min(result, round_, key=sum)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where the map goes (default: a temporary directory)")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="dracd-inplace-", dir=args.dir))
    try:
        writer = BerkeleyMap(directory / "dracd.db", "btree", KeyStyle())
        writer.write_codes({0x0A000000 + i: 2_000_000_000 for i in range(args.entries)})
        writer.update_codes({0x0D000000: 2_000_000_000}, durable=False)  # a copy: now there is a spare

        def lone(i: int) -> None:
            if not writer.update_in_place({0x0B000000 + i: 2_000_000_000 + i}):
                raise SystemExit("update_in_place did not update the spare in place")

        user, system = best(args.n, args.reps, lone)
        print(f"update_in_place  {user + system:6.1f} us CPU per call (user {user:5.1f}, sys {system:5.1f})")

        def copy(i: int) -> None:
            reader = db.DB()  # an MTA session still reads the spare: the update copies the map
            reader.open(str(directory / ".dracd.db.spare"), dbtype=db.DB_BTREE, flags=db.DB_RDONLY)
            try:
                writer.update_codes({0x0C000000 + i: 2_000_000_000 + i}, durable=False)
            finally:
                reader.close()

        user, system = best(max(1, args.n // 10), args.reps, copy)
        print(f"copy (spare busy) {user + system:5.1f} us CPU per call (user {user:5.1f}, sys {system:5.1f}),"
              f" {args.entries} entries, a reader's open and close included")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
