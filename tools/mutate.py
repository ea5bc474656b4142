"""Mutation testing of dracd's pure core (`make mutate`; not part of `make test`).

Each mutant is one small change to one module's source (the operators below); it is
written into a private copy of the tree (one copy per worker, under a temporary
directory; the working files are never touched) and that module's fast unit tests
(``-m unit``, the files TESTS maps it to) run against it in a forked pytest. A
mutant some test notices (a failure, an error, or the per-mutant timeout) is
*killed*; one none notices *survived*. A survivor is either listed, with a one-line
reason, in tools/equivalent_mutants.txt (it cannot change behaviour: *equivalent*)
or *unexplained*: a gap in the tests. The run fails if a module has more than
``--max-unexplained`` percent unexplained survivors.

Operators (the ``op`` part of a mutant's id):

- ``cmp``: a comparison swapped (< <=, > >=, == !=, in / not in, is / is not)
- ``int``: an integer literal plus or minus one
- ``boolop``: ``and`` / ``or`` swapped
- ``return``: a returned value replaced by None
- ``if``: a branch forced (``if cond`` -> ``if True`` and ``if False``)
- ``raise``: a raise statement deleted
- ``call``: a call statement deleted (except logging calls: ``log.*``)

Annotations, docstrings and ``if TYPE_CHECKING`` blocks are not mutated.

A mutant's id is ``path:line:op:original->replacement`` (``#2``, ``#3``... when one line
has several alike): stable while the line stays where it is.

Writes bench/results/mutate-<UTC date and time>.json and one summary line per module.
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "tools" / "equivalent_mutants.txt"

#: Module -> the unit-test files that exercise it (only their ``-m unit`` tests run).
TESTS: dict[str, list[str]] = {
    "client/dracclient/xdr.py": ["tests/test_xdr.py", "tests/test_rpc_codec.py", "tests/test_record.py"],
    "client/dracclient/record.py": ["tests/test_record.py", "tests/test_rpc_codec.py"],
    "client/dracclient/drac.py": ["tests/test_xdr.py", "tests/test_rpc_codec.py", "tests/test_keys.py"],
    "client/dracclient/rpc.py": ["tests/test_rpc_codec.py"],
    "client/dracclient/adminproto.py": ["tests/test_adminproto.py"],
    "client/dracclient/checks.py": ["tests/test_checks.py", "tests/test_config.py"],
    "dracd/keys.py": ["tests/test_keys.py", "tests/test_table.py", "tests/test_journal_format.py"],
    "dracd/relay/policy.py": ["tests/test_policy.py"],
    "dracd/relay/table.py": ["tests/test_table.py"],
    "dracd/server/netstring.py": ["tests/test_netstring.py"],
    "dracd/publish/journal.py": ["tests/test_journal.py", "tests/test_journal_format.py"],
}


@dataclass(frozen=True)
class Mutant:
    path: str
    id: str
    start: tuple[int, int]  # (line, column) of the replaced source, 1-based line
    end: tuple[int, int]
    text: str  # what replaces it

    def apply(self, source: str) -> str:
        lines = source.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line.encode()))
        data = source.encode()
        begin = offsets[self.start[0] - 1] + self.start[1]
        finish = offsets[self.end[0] - 1] + self.end[1]
        return (data[:begin] + self.text.encode() + data[finish:]).decode()


_CMP_SWAP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
_CMP_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
             ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}


def _skipped(tree: ast.Module) -> set[int]:
    """ids of nodes never mutated: annotations, docstrings, TYPE_CHECKING blocks, f-strings."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(sub) for sub in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign):
            mark(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            mark(node.returns)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            mark(node)
        elif isinstance(node, ast.JoinedStr):
            mark(node)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                mark(body[0])
    return skip


def _is_log_call(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id in ("log", "logger", "logging"))


def mutants(path: str) -> list[Mutant]:
    source = (ROOT / path).read_text()
    tree = ast.parse(source)
    skip = _skipped(tree)
    found: list[tuple[int, int, str, str, ast.AST, str]] = []  # line, col, op, change, node, text

    def at(node: ast.AST, op: str, change: str, text: str) -> None:
        found.append((node.lineno, node.col_offset, op, change, node, text))  # type: ignore[attr-defined]

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare):
            for index, cmp in enumerate(node.ops):
                swapped = _CMP_SWAP[type(cmp)]()
                new = ast.Compare(node.left, [*node.ops[:index], swapped, *node.ops[index + 1:]], node.comparators)
                at(node, "cmp", f"{_CMP_TEXT[type(cmp)]}->{_CMP_TEXT[type(swapped)]}", f"({ast.unparse(new)})")
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            for delta in (1, -1):
                at(node, "int", f"{node.value}->{node.value + delta}", f"({node.value + delta})")
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            names = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            at(node, "boolop", f"{names[0]}->{names[1]}", f"({ast.unparse(ast.BoolOp(other, node.values))})")
        elif isinstance(node, ast.Return) and node.value is not None:
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                at(node.value, "return", "value->None", "None")
        elif isinstance(node, ast.If):
            for forced in ("True", "False"):
                at(node.test, "if", f"cond->{forced}", forced)
        elif isinstance(node, ast.Raise):
            at(node, "raise", "raise->pass", "pass")
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call | ast.Await):
            call = node.value.value if isinstance(node.value, ast.Await) else node.value
            if not _is_log_call(call):
                at(node, "call", "call->pass", "pass")

    found.sort(key=lambda item: (item[0], item[1], item[2], item[3]))
    seen: dict[str, int] = {}
    out: list[Mutant] = []
    for line, _col, op, change, node, text in found:
        base = f"{path}:{line}:{op}:{change}"
        seen[base] = seen.get(base, 0) + 1
        ident = base if seen[base] == 1 else f"{base}#{seen[base]}"
        start = (node.lineno, node.col_offset)  # type: ignore[attr-defined]
        end = (node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        mutant = Mutant(path, ident, start, end, text)
        ast.parse(mutant.apply(source))  # every mutant must still be Python
        out.append(mutant)
    return out


def equivalents() -> dict[str, str]:
    """tools/equivalent_mutants.txt: ``<id>  <reason>`` per line (# starts a comment line)."""
    out: dict[str, str] = {}
    for line in EQUIVALENT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            ident, _, reason = line.partition(" ")
            if not reason.strip():
                raise SystemExit(f"{EQUIVALENT}: {ident} has no reason")
            out[ident] = reason.strip()
    return out


def make_copy(base: Path) -> Path:
    """The tree as the work tree has it (tracked and new files, not ignored ones)."""
    listed = subprocess.run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    base.mkdir(parents=True)
    for name in listed:
        if name and (ROOT / name).is_file() and name.split("/")[0] in ("dracd", "client", "logwatch", "tests", "etc",
                                                                       "docs", "contrib", "pyproject.toml"):
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, base / name)
    return base


def _child(copy: Path, path: str, source: str, tests: list[str], log: Path) -> None:
    """In the forked child: write the mutant, run the tests, exit with pytest's status
    (or 99 if the module under test was not the copy's)."""
    # Dies with the parent (an interrupted `make mutate` leaves no test run behind).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    target = copy / path
    target.write_text(source)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(copy)
    sys.dont_write_bytecode = True
    sys.path[:0] = [str(copy), str(copy / "client"), str(copy / "logwatch")]
    import pytest

    status = pytest.main(["-q", "-x", "-m", "unit", "-p", "no:cacheprovider", "--hypothesis-seed=0",
                          "-o", "addopts=--strict-markers", *tests])
    module = path.removeprefix("client/").removesuffix(".py").replace("/", ".")
    loaded = sys.modules.get(module)
    if loaded is None or not str(getattr(loaded, "__file__", "")).startswith(str(copy)):
        print(f"mutate: {module} came from {getattr(loaded, '__file__', None)}, not {copy}", flush=True)
        os._exit(99)
    os._exit(int(status))


class Slot:
    """One worker: a copy of the tree and at most one child running in it."""

    def __init__(self, copy: Path) -> None:
        self.copy = copy
        self.log = copy / "mutate.log"
        self.pid = 0
        self.mutant: Mutant | None = None
        self.started = 0.0
        self.deadline = 0.0

    def start(self, path: str, source: str, tests: list[str], timeout: float, mutant: Mutant | None) -> None:
        # The pyc of the module is dropped: a mutant of the same size written within the
        # same second would otherwise run the previous one's bytecode.
        for pyc in (self.copy / path).parent.glob(f"__pycache__/{Path(path).stem}.*"):
            pyc.unlink()
        pid = os.fork()
        if pid == 0:
            try:
                _child(self.copy, path, source, tests, self.log)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(98)
        self.pid, self.mutant = pid, mutant
        self.started = time.monotonic()
        self.deadline = self.started + timeout

    def poll(self) -> int | None:
        """The child's exit status (-1: timed out and killed), or None while it runs."""
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            if time.monotonic() < self.deadline:
                return None
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0
            return -1
        self.pid = 0
        return os.waitstatus_to_exitcode(status)


def run_module(path: str, slots: list[Slot], only: set[str] | None, verbose: bool) -> dict[str, object]:
    original = (ROOT / path).read_text()
    tests = [t for t in TESTS[path] if (ROOT / t).exists()]
    if not tests:
        raise SystemExit(f"mutate: no unit tests for {path}")
    # The tests must pass on the unmutated module, in the copy, first; their time sets the timeout.
    slots[0].start(path, original, tests, 600, None)
    while (status := slots[0].poll()) is None:
        time.sleep(0.02)
    baseline = time.monotonic() - slots[0].started
    if status != 0:
        print(f"mutate: {path}: the tests fail on the unmutated tree (status {status}):\n"
              f"{slots[0].log.read_text()[-3000:]}", flush=True)
        return {"tests": tests, "baseline_failed": status, "mutants": {}}
    timeout = max(10.0, 5 * baseline)
    todo = [m for m in mutants(path) if only is None or m.id in only]
    results: dict[str, str] = {}
    queue = list(todo)
    while queue or any(slot.pid for slot in slots):
        for slot in slots:
            if slot.pid:
                status = slot.poll()
                if status is None:
                    continue
                assert slot.mutant is not None
                if status == 99:
                    raise SystemExit(f"mutate: the tests did not import the copy's module: {slot.log.read_text()}")
                if status in (2, 3, 4, 98):
                    # Interrupted / internal error / usage error: the mutant broke collection
                    # (an import-time failure), which is a kill; but say so.
                    outcome = "killed"
                else:
                    outcome = {0: "survived", -1: "timeout"}.get(status, "killed")
                results[slot.mutant.id] = outcome
                if verbose or outcome == "survived":
                    print(f"  {outcome:8} {slot.mutant.id}", flush=True)
            if not slot.pid and queue:
                mutant = queue.pop(0)
                slot.start(path, mutant.apply(original), tests, timeout, mutant)
        select.select([], [], [], 0.02)
    for slot in slots:  # the copies go back to the original module
        (slot.copy / path).write_text(original)
    return {"tests": tests, "baseline_s": round(baseline, 2), "timeout_s": round(timeout, 1),
            "mutants": {m.id: results[m.id] for m in todo}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of TESTS)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", action="append", help="run only this mutant id (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the mutant ids and exit")
    parser.add_argument("--max-unexplained", type=float, default=5.0, help="percent per module (default 5)")
    parser.add_argument("--out", type=Path, help="report path (default bench/results/mutate-<date>.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every mutant's outcome")
    args = parser.parse_args()
    modules = args.modules or list(TESTS)
    for module in modules:
        if module not in TESTS:
            raise SystemExit(f"mutate: {module} is not in TESTS")
    if args.list:
        for module in modules:
            for mutant in mutants(module):
                print(mutant.id)
        return 0
    known = equivalents()
    import pytest  # noqa: F401  (imported once here, not in every forked child)
    only = set(args.only) if args.only else None
    if only:
        modules = [m for m in modules if any(i.startswith(m + ":") for i in only)]
    began = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report: dict[str, object] = {"date": stamp, "python": sys.version.split()[0], "workers": args.workers,
                                 "cpus": os.cpu_count(), "modules": {}}
    lines: list[str] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="dracd-mutate-") as tmp:
        slots = [Slot(make_copy(Path(tmp) / f"w{n}")) for n in range(args.workers)]
        for module in modules:
            t0 = time.monotonic()
            result = run_module(module, slots, only, args.verbose)
            outcomes: dict[str, str] = result["mutants"]  # type: ignore[assignment]
            survived = [i for i, o in outcomes.items() if o == "survived"]
            equivalent = [i for i in survived if i in known]
            unexplained = [i for i in survived if i not in known]
            stale = [i for i in known if i.startswith(module + ":") and outcomes.get(i) not in (None, "survived")]
            total = len(outcomes)
            share = 100.0 * len(unexplained) / total if total else 100.0
            result.update(killed=sum(o == "killed" for o in outcomes.values()),
                          timeout=sum(o == "timeout" for o in outcomes.values()),
                          survived=len(survived), equivalent=equivalent, unexplained=unexplained,
                          equivalent_but_killed=stale, unexplained_percent=round(share, 1),
                          seconds=round(time.monotonic() - t0, 1))
            report["modules"][module] = result  # type: ignore[index]
            bad = share > args.max_unexplained
            failed |= bad
            line = (f"{module}: {total} mutants, {result['killed']} killed, {result['timeout']} timed out, "
                    f"{len(equivalent)} equivalent, {len(unexplained)} unexplained ({share:.1f}%)"
                    f"{'  FAIL' if bad else ''}  [{result['seconds']} s]")
            if stale:
                line += f"  ({len(stale)} listed as equivalent but killed: {', '.join(stale)})"
            lines.append(line)
            print(line, flush=True)
    report["seconds"] = round(time.monotonic() - began, 1)
    out = args.out or ROOT / "bench" / "results" / f"mutate-{stamp}.json"
    if not only:
        out.write_text(json.dumps(report, indent=1) + "\n")
    print("== summary", f"({report['seconds']} s, {args.workers} workers; report {out if not only else 'not written'})")
    for line in lines:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
