"""Issue 22's table: acknowledged ADDs under load, kill -9, one kind of damage, restart,
and how many acknowledged addresses the restarted dracd's map lacks.

    .venv/bin/python bench/recovery_damage.py [--first 1000] [--second 2415] [--rows N,...]

Not part of `make test` (tests/test_recovery_damage.py runs the same rows with a
small load). It runs the scenarios of tests/fixtures/damage.py, at the issue's size
by default (1,000 ADDs in a first run that stops cleanly, then 2,415 acknowledged
under load before kill -9: 3,415 in all), and prints one line per row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.damage import ROWS, run_round  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=1000)
    parser.add_argument("--second", type=int, default=2415)
    parser.add_argument("--rows", help="comma-separated row numbers (from 1); default all")
    parser.add_argument("--in-flight", action="store_true",
                        help="kill -9 with ADDs still unanswered (default: right after the last answer)")
    options = parser.parse_args()
    chosen = [int(n) - 1 for n in options.rows.split(",")] if options.rows else range(len(ROWS))
    print("| damage before restart | acknowledged | lost | log |\n|---|---|---|---|")
    for index in chosen:
        name, damage = ROWS[index]
        with tempfile.TemporaryDirectory(prefix="dracd-damage-") as directory:
            result = run_round(Path(directory), damage, options.first, options.second, in_flight=options.in_flight)
            try:
                result.process.stop()
            finally:
                result.process.kill()
            lines = [line.split("] ", 1)[-1][:160] for line in result.log.splitlines()
                     if "recovery:" in line or "merged" in line or "moved aside" in line]
            print(f"| {name} ({result.damage}) | {len(result.acked)} | {len(result.lost)} | "
                  f"{' / '.join(lines) or '-'} |", flush=True)


if __name__ == "__main__":
    main()
