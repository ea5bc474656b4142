"""The dracd benchmark suite (issue 7): `make bench` (full matrix) or `make bench-quick`.

Each load scenario starts its own dracd subprocess on a fresh map in a
fresh directory, drives it with bench/loadgen.py and measures adds/s,
p50/p99/max ACK latency, server CPU seconds and peak RSS, checks every
reply and that every acknowledged address is in the map, and probes the
time from ADD to ACK and to visible-in-map. Then: full map rewrite time
with dracd.publish.maps.open_writer, the cost of expiring a table loaded from a
map whose entries all expire in the same second (and the longest gap in
NULL replies meanwhile), and the time to READY=1 on a big map.

Every scenario is bounded in time (--time-limit per load run, --budget for
the whole suite): a scenario too slow to finish reports its partial rate.
Prints one table and saves JSON under bench/results/. Asserts nothing
about speed; exits 1 if a reply failed or an acknowledged address is
missing from the map.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _proc import PROG, LegacyServer, Server  # noqa: E402
from loadgen import (  # noqa: E402
    BASE,
    NullProber,
    map_count,
    max_gap,
    missing_from_map,
    probe_visibility,
    run_load,
)

from dracd.app.assemble import event_loop  # noqa: E402
from dracd.config import Config  # noqa: E402
from dracd.keys import KeyStyle  # noqa: E402
from dracd.publish.maps import open_writer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HOUR = 3600


# ---------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    rev = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "dracd", "client"))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mb": mem_kb // 1024,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "os": _os_release(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "dracd_revision": rev,
        "dracd_tree_dirty": dirty,
        "hostname": platform.node(),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def filesystem(path: Path) -> str:
    """The type and device of the mount holding ``path``, from /proc/mounts."""
    best = ("", "?", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind = line.split()[:3]
            if str(path).startswith(mount) and len(mount) >= len(best[0]):
                best = (mount, kind, device)
    except OSError:
        pass
    return f"{best[1]} on {best[2]} ({best[0]})"


def result_name(info: dict[str, Any], mode: str, when: dt.datetime) -> str:
    cpu = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", info["cpu"])
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", cpu).strip("-")[:40]
    load = f"{info['load_average_start'][0]:.2f}"
    return (f"{when:%Y%m%dT%H%M%SZ}_{mode}_{cpu}_{info['cores']}c_py{info['python']}_"
            f"linux{info['kernel'].split('-')[0]}_load{load}_{info['dracd_revision'][:8] or 'norev'}.json")


# ---------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def spread(values: Sequence[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(present), "min": min(present), "max": max(present)}


class Workdir:
    """A fresh directory for one run, under --workdir, removed afterwards."""

    def __init__(self, parent: Path, name: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"dracd-bench-{name}-", dir=parent))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def prewrite(path: Path, count: int, expiry: int) -> float:
    """A map of ``count`` addresses (10.0.0.0 + i) all expiring at ``expiry``; seconds taken."""
    table = {BASE + i: expiry for i in range(count)}  # IPv4 hosts' entry codes are their values
    started = time.monotonic()
    open_writer("btree", path, KeyStyle()).write_codes(table)
    return time.monotonic() - started


# ---------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class LoadCase:
    """N ADDs of addresses ``offset`` + i, W in flight per client, K clients, optionally paced,
    against a server that reloaded a map of ``prefill`` entries (0 .. prefill-1, due in 30 min)."""

    proto: str
    n: int
    window: int
    clients: int
    prefill: int = 0
    offset: int = 0
    rate: float = 0.0
    label: str = ""

    @property
    def name(self) -> str:
        extra = f" {self.label}" if self.label else ""
        return f"load {self.proto}{extra} n={self.n} w={self.window} k={self.clients}"


def load_once(workroot: Path, case: LoadCase, time_limit: float, probes: int, loop: str,
              legacy: Path | None = None) -> dict[str, Any]:
    """One load run against dracd, or against the rpc.dracd-compatible binary ``legacy``."""
    proto, n = case.proto, case.n
    with Workdir(workroot, f"{'legacy' if legacy else 'dracd'}-{proto}-{n}") as work:
        map_path = work / "dracd.db"
        if case.prefill:
            prewrite(map_path, case.prefill, int(time.time()) + HOUR // 2)
        server: Server | LegacyServer
        if legacy is not None:
            server = LegacyServer(legacy, map_path).start()
            prog = server.prog
        else:
            server = Server(map_path, loop=loop).start()
            prog = PROG
        try:
            cpu0 = server.cpu()
            load = run_load(server.port, prog, proto, n, case.window, case.clients, time_limit,
                            offset=case.offset, rate=case.rate)
            cpu_load = server.cpu() - cpu0
            checked = time.monotonic()
            missing = missing_from_map(map_path, load.acked)
            check_s = time.monotonic() - checked
            fresh = max(case.offset + n, case.prefill) + 1000
            visibility = [probe_visibility(server.port, prog, map_path, fresh + i) for i in range(probes)]
            rss = server.peak_rss()
            cpu_total = server.cpu()
        finally:
            status = server.stop()
        lat = sorted(load.latencies)
        return {
            "sent": load.sent,
            "acked": len(load.acked),
            "complete": load.complete,
            "elapsed_s": load.elapsed,
            "adds_per_s": load.rate,
            "p50_ms": percentile(lat, 0.50) * 1000,
            "p99_ms": percentile(lat, 0.99) * 1000,
            "max_ms": (lat[-1] * 1000) if lat else float("nan"),
            "retransmits": load.retransmits,
            "failures": load.failures,
            "failure_sample": load.failure_sample,
            "unanswered_at_deadline": load.unanswered,
            "client_errors": load.errors,
            "missing_from_map": missing,
            "map_check_s": check_s,
            "server_cpu_s_during_load": cpu_load,
            "server_cpu_s_total": cpu_total,
            "server_cpu_us_per_add": cpu_load / len(load.acked) * 1e6 if load.acked else None,
            "server_peak_rss_mb": rss / 2**20,
            "server_startup_s": server.startup,
            "server_exit_status": status,
            "visibility_probes": visibility,
            "probe_ack_ms": _median_ms([p["ack_s"] for p in visibility]),
            "probe_visible_ms": _median_ms([p["visible_s"] for p in visibility]),
        }


def _median_ms(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) * 1000 if present else None


def rewrite_once(workroot: Path, n: int) -> dict[str, Any]:
    """What dracd's writer does with an N-entry table (entry codes, as the table holds them):
    a full rewrite, then one-entry updates: the first copies the map (there is no spare
    inode yet), the next ones update the spare in place."""
    with Workdir(workroot, f"rewrite-{n}") as work:
        path = work / "dracd.db"
        writer = open_writer("btree", path, KeyStyle())
        expiry = int(time.time()) + HOUR
        table = {BASE + i: expiry for i in range(n)}
        started = time.monotonic()
        writer.write_codes(table)
        first = time.monotonic() - started
        started = time.monotonic()
        writer.write_codes(table)
        full = time.monotonic() - started
        started = time.monotonic()
        writer.update_codes({BASE + n: expiry})
        copy = time.monotonic() - started
        in_place = []
        for i in range(1, 6):
            started = time.monotonic()
            writer.update_codes({BASE + n + i: expiry})
            in_place.append(time.monotonic() - started)
        return {"first_write_s": first, "rewrite_s": full, "update_copy_s": copy,
                "update_one_s": statistics.median(in_place), "map_bytes": path.stat().st_size}


def expiry_once(workroot: Path, n: int, lead: float, limit: float, loop: str) -> dict[str, Any]:
    """dracd reloads N entries all expiring ``lead`` s ahead; until they leave the map, NULL every 1 ms."""
    with Workdir(workroot, f"expiry-{n}") as work:
        path = work / "dracd.db"
        expire_at = int(time.time() + lead) + 1
        prewrite(path, n, expire_at)
        server = Server(path, loop=loop).start()
        prober = None
        try:
            if time.time() >= expire_at - 0.5:
                raise RuntimeError(f"dracd took {server.startup:.1f} s to start: lead {lead} s too short")
            ready_mono = time.monotonic()
            prober = NullProber(server.port, PROG, 0.001, duration=expire_at - time.time() + limit + 5).start()
            cpu0 = server.cpu()
            offset = time.monotonic() - time.time()
            expire_mono = expire_at + offset
            identity = None
            count = n
            first_change = empty = None
            deadline = expire_mono + limit
            while time.monotonic() < deadline:
                try:
                    st = path.stat()
                    now_identity = (st.st_ino, st.st_mtime_ns, st.st_size)
                except FileNotFoundError:
                    now_identity = None
                if now_identity != identity and time.monotonic() >= expire_mono - 0.5:
                    identity = now_identity
                    seen = time.monotonic()
                    try:
                        count = map_count(path)
                    except Exception:  # noqa: BLE001 - a map mid-replace: look again
                        identity = None
                        continue
                    if count < n and first_change is None:
                        first_change = seen
                    if count == 0:
                        empty = seen
                        break
                time.sleep(0.005)
            settle_end = time.monotonic() + 0.5
            while time.monotonic() < settle_end:
                time.sleep(0.05)
            cpu = server.cpu() - cpu0
            begin, sent, replies = prober.finish()
            prober = None
            rss = server.peak_rss()
        finally:
            if prober is not None:
                prober.finish()
            server.stop()
        window_end = (empty if empty is not None else time.monotonic()) + 0.2
        baseline_start = max(ready_mono + 0.3, begin + 0.3)
        baseline_end = expire_mono - 0.2
        return {
            "entries": n,
            "lead_s": expire_at - (ready_mono - offset),
            "server_startup_s": server.startup,
            "first_removal_after_expiry_s": None if first_change is None else first_change - expire_mono,
            "all_gone_after_expiry_s": None if empty is None else empty - expire_mono,
            "left_in_map": count,
            "max_null_gap_ms_during_expiry": max_gap(replies, expire_mono - 0.2, window_end) * 1000,
            "max_null_gap_ms_baseline": (max_gap(replies, baseline_start, baseline_end) * 1000
                                         if baseline_end > baseline_start else None),
            "null_calls_sent": sent,
            "null_replies": len(replies),
            "server_cpu_s": cpu,
            "server_peak_rss_mb": rss / 2**20,
        }


def startup_once(map_path: Path, n: int, loop: str) -> dict[str, Any]:
    """Process start to READY=1 on a map of N entries (dracd reloads it and rewrites it)."""
    server = Server(map_path, log_path=map_path.with_name("startup.log"), loop=loop).start(timeout=300)
    try:
        rss = server.peak_rss()
        cpu = server.cpu()
    finally:
        server.stop()
    return {"entries": n, "startup_s": server.startup, "peak_rss_mb_at_ready": rss / 2**20, "server_cpu_s": cpu}


# ---------------------------------------------------------------- plans


def load_matrix(quick: bool) -> list[LoadCase]:
    # Refresh: re-ADD every address of a reloaded N-entry table (issue 7: at least as fast as new ones);
    # "new onto": as many new addresses onto the same reloaded table, the fair comparison.
    # Steady: 1,000 ADDs/s of new addresses against a 10k-entry table (issue 7: p99 <= 10 ms).
    if quick:
        return [LoadCase("udp", 10_000, 16, 1), LoadCase("tcp", 10_000, 16, 1),
                LoadCase("udp", 10_000, 16, 1, prefill=10_000, label="refresh"),
                LoadCase("udp", 10_000, 16, 1, prefill=10_000, offset=10_000, label="new onto 10k"),
                LoadCase("udp", 5_000, 64, 1, prefill=10_000, offset=10_000, rate=1000, label="steady 1000/s")]
    out = [LoadCase("udp", n, w, k) for n in (10_000, 100_000, 1_000_000) for w in (1, 16, 64) for k in (1, 2)]
    out += [LoadCase("tcp", n, w, 1) for n in (10_000, 100_000) for w in (1, 16, 64)]
    for n in (10_000, 100_000):
        out += [LoadCase("udp", n, 16, 1, prefill=n, label="refresh"),
                LoadCase("udp", n, 16, 1, prefill=n, offset=n, label=f"new onto {n // 1000}k")]
    out += [LoadCase("udp", 15_000, 64, 1, prefill=10_000, offset=10_000, rate=1000, label="steady 1000/s")]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N=10k, W=16, K=1, one repetition (< 1 min)")
    parser.add_argument("--reps", type=int, help="repetitions per scenario (default 3, quick 1)")
    parser.add_argument("--time-limit", type=float, help="seconds of load per run before stopping (default 20, "
                        "quick 15): a run that cannot finish reports its partial rate")
    parser.add_argument("--budget", type=float, help="seconds for the whole suite; later scenarios are skipped "
                        "(default 3000, quick 55)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only scenarios whose name contains TEXT (repeatable), e.g. 'udp n=100000'")
    parser.add_argument("--probes", type=int, default=3, help="ADD-to-visible probes per load run")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"), help="where the maps are written")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON results")
    parser.add_argument("--legacy", type=Path, metavar="BINARY",
                        help="side-by-side mode: the issue 21 scenarios against this rpc.dracd-compatible binary "
                        "and against dracd, interleaved, in one invocation; prints the ratio table")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"),
                        help="dracd's event loop (--event-loop; default: uvloop if installed, as dracd's auto)")
    args = parser.parse_args(argv)
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    time_limit = args.time_limit or (15.0 if quick else 20.0)
    budget = args.budget or (55.0 if quick else 3000.0)
    suite_start = time.monotonic()
    when = dt.datetime.now(dt.UTC)
    info = machine()
    info["workdir_filesystem"] = filesystem(args.workdir.resolve())
    # Resolved here, as dracd resolves auto, and passed on: the record says which loop ran.
    loop = info["event_loop"] = event_loop(replace(Config(), event_loop=args.loop or "auto"))[0]
    mode = "quick" if quick else "full"
    if args.legacy is not None:
        return side_by_side(args, info, when, reps, time_limit, loop)
    log(f"dracd bench ({mode}): {info['cpu']}, {info['cores']} cores, load average {info['load_average_start']}, "
        f"reps {reps}, time limit {time_limit:g} s per run, budget {budget:g} s, event loop {loop}")

    def wanted(name: str) -> bool:
        return not args.only or any(text in name for text in args.only)

    skipped: list[str] = []

    def within_budget(name: str, reserve: float) -> bool:
        if time.monotonic() - suite_start + reserve > budget:
            skipped.append(name)
            log(f"skip {name}: over the --budget")
            return False
        return True

    def repeat(name: str, reserve: float, once: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        for rep in range(reps):
            if not within_budget(f"{name} rep {rep + 1}", reserve):
                break
            try:
                runs.append(once())
            except Exception as exc:  # noqa: BLE001 - a broken run is reported, the suite goes on
                log(f"{name} rep {rep + 1}: FAILED {type(exc).__name__}: {exc}")
                runs.append({"error": f"{type(exc).__name__}: {exc}"})
        return runs

    results: dict[str, Any] = {"load": [], "rewrite": [], "expiry": [], "startup": []}
    load_reserve = time_limit + 15

    for case in load_matrix(quick):
        name = case.name
        if not wanted(name):
            continue
        n = case.n
        log(f"{name} ...")
        runs = repeat(name, load_reserve,
                      lambda case=case: load_once(args.workdir, case, time_limit, args.probes, loop))  # type: ignore[misc]
        for r in runs:
            if "error" not in r:
                log(f"  {r['acked']}/{n} acked, {r['adds_per_s']:,.0f} adds/s, p50 {r['p50_ms']:.2f} ms, "
                    f"p99 {r['p99_ms']:.2f} ms, missing {r['missing_from_map']}, failures {r['failures']}")
        results["load"].append({"name": name, **asdict(case), "time_limit_s": time_limit, "runs": runs})

    for n in (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000):
        name = f"rewrite n={n}"
        if wanted(name):
            log(f"{name} ...")
            results["rewrite"].append({"name": name, "n": n,
                                       "runs": repeat(name, 10, lambda n=n: rewrite_once(  # type: ignore[misc]
                                           args.workdir, n))})

    exp_n, lead = (100_000, 5.0) if quick else (100_000, 6.0)
    name = f"expiry n={exp_n}"
    if wanted(name):
        log(f"{name} ...")
        results["expiry"].append({"name": name, "n": exp_n, "runs": repeat(
            name, lead + 15, lambda: expiry_once(args.workdir, exp_n, lead, limit=60.0, loop=loop))})

    start_n = 100_000 if quick else 1_000_000
    name = f"startup n={start_n}"
    if wanted(name) and within_budget(name, 20):
        log(f"{name} ...")
        with Workdir(args.workdir, "startup") as work:
            path = work / "dracd.db"
            written = prewrite(path, start_n, int(time.time()) + HOUR)
            log(f"  pre-wrote {start_n} entries in {written:.2f} s")
            results["startup"].append({"name": name, "n": start_n, "prewrite_s": written,
                                       "runs": repeat(name, 20, lambda: startup_once(path, start_n, loop))})

    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    duration = time.monotonic() - suite_start
    document: dict[str, Any] = {
        "suite": "dracd bench (issue 7)",
        "mode": mode,
        "started_utc": when.isoformat(timespec="seconds"),
        "duration_s": duration,
        "machine": info,
        "settings": {"reps": reps, "time_limit_s": time_limit, "budget_s": budget, "only": args.only,
                     "program": PROG, "map_type": "btree", "lifetime": "1h"},
        "skipped": skipped,
        "results": results,
    }
    return publish(document, args.out, result_name(info, mode, when), render)


# ---------------------------------------------------------------- side by side (issue 21)


#: The loads of issue 21's table: one login at a time; 16 in flight from one client; 64 over two.
SIDE_CASES = (LoadCase("udp", 20_000, 1, 1), LoadCase("udp", 100_000, 16, 1), LoadCase("udp", 100_000, 64, 2))


def side_by_side(args: argparse.Namespace, info: dict[str, Any], when: dt.datetime, reps: int,
                 time_limit: float, loop: str) -> int:
    """Each repetition runs every case against the legacy binary and then dracd, so load from
    other work on the machine falls on both alike; the same load generator, the same checks."""
    legacy = args.legacy.resolve()
    if not (legacy.is_file() and os.access(legacy, os.X_OK)):
        print(f"--legacy {legacy}: not an executable file", file=sys.stderr)
        return 2
    info["legacy_binary"] = str(legacy)
    info["legacy_sha256"] = hashlib.sha256(legacy.read_bytes()).hexdigest()
    cases = [c for c in SIDE_CASES if not args.only or any(text in c.name for text in args.only)]
    log(f"side by side: {legacy} vs dracd ({loop}), {reps} rep(s), time limit {time_limit:g} s per run, "
        f"load average {info['load_average_start']}")
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(c.name, who): [] for c in cases
                                                          for who in ("legacy", "dracd")}
    for rep in range(reps):
        for case in cases:
            for who in ("legacy", "dracd"):
                log(f"rep {rep + 1} {who}: {case.name} ...")
                try:
                    r = load_once(args.workdir, case, time_limit, args.probes, loop,
                                  legacy=legacy if who == "legacy" else None)
                except Exception as exc:  # noqa: BLE001 - a broken run is reported, the rest goes on
                    log(f"  FAILED {type(exc).__name__}: {exc}")
                    r = {"error": f"{type(exc).__name__}: {exc}"}
                else:
                    log(f"  {r['acked']}/{case.n} acked, {r['adds_per_s']:,.0f} adds/s, p50 {r['p50_ms']:.2f} ms, "
                        f"CPU {r['server_cpu_us_per_add'] or 0:.0f} us/ADD, missing {r['missing_from_map']}, "
                        f"failures {r['failures']}")
                runs[(case.name, who)].append(r)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results: dict[str, Any] = {"load": []}
    for case in cases:
        for who in ("legacy", "dracd"):
            results["load"].append({"name": f"{who} {case.name}", "server": who, **asdict(case),
                                    "time_limit_s": time_limit, "runs": runs[(case.name, who)]})
    document: dict[str, Any] = {
        "suite": "dracd bench side by side (issue 21)",
        "mode": "sidebyside",
        "started_utc": when.isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"reps": reps, "time_limit_s": time_limit, "program": PROG, "map_type": "btree",
                     "lifetime": "1h", "legacy": str(legacy)},
        "skipped": [],
        "results": results,
    }
    return publish(document, args.out, result_name(info, "sidebyside", when),
                   lambda summarized: render_side(summarized, cases))


def publish(document: dict[str, Any], directory: Path, name: str,
            render_table: Callable[[dict[str, Any]], str]) -> int:
    """Summarize ``document``, save it as ``directory/name`` and print its table: exit status 1
    if its verdict names problems."""
    summarize(document)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / name
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1, default=str) + "\n")
    tmp.rename(out)
    print(render_table(document))
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    bad: list[str] = document["verdict"]
    if bad:
        print("PROBLEMS:\n  " + "\n  ".join(bad))
        return 1
    return 0


def render_side(document: dict[str, Any], cases: Sequence[LoadCase]) -> str:
    m = document["machine"]
    by_name = {s["name"]: s for s in document["results"]["load"]}
    lines = [
        f"side by side, {document['started_utc']}: {m['legacy_binary']} vs dracd {m['dracd_revision'][:12]}"
        f"{' (dirty)' if m['dracd_tree_dirty'] else ''} on {m['event_loop']}",
        f"machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_start']} at start, "
        f"{m['load_average_end']} at end; maps on {m['workdir_filesystem']}; "
        f"{document['settings']['reps']} rep(s), median [min-max]; runs stop after "
        f"{document['settings']['time_limit_s']:g} s",
        "",
    ]
    head = ("load", "legacy adds/s", "p50 ms", "CPU us/ADD", "dracd adds/s", "p50 ms", "CPU us/ADD",
            "ratio adds/s", "bad")
    rows = []
    for case in cases:
        cells: list[str] = [case.name.removeprefix("load ")]
        medians = []
        bad = 0
        for who in ("legacy", "dracd"):
            s = by_name[f"{who} {case.name}"]
            st = s["summary"]
            good = [r for r in s["runs"] if "error" not in r]
            bad += sum(r["failures"] + r["missing_from_map"] for r in good) + (len(s["runs"]) - len(good))
            rate = _cell(st.get("adds_per_s"), thousands=True, ranged=True)
            timed_out = sum(1 for r in good if not r["complete"])
            if timed_out:
                rate += f" ({timed_out}/{len(good)} time)"
            cells += [rate, _cell(st.get("p50_ms"), 2, ranged=True), _cell(st.get("server_cpu_us_per_add"), 0,
                                                                           ranged=True)]
            medians.append((st.get("adds_per_s") or {}).get("median"))
        ratio = f"{medians[1] / medians[0]:.2f}x" if medians[0] and medians[1] else "-"
        rows.append((*cells, ratio, str(bad)))
    lines += _table(head, rows)
    lines.append("verdict: " + ("every reply ADD_SUCCESS and every acknowledged address in the map, both servers"
                                if not document["verdict"] else f"{len(document['verdict'])} PROBLEMS"))
    return "\n".join(lines)


# ---------------------------------------------------------------- summary


def summarize(document: dict[str, Any]) -> None:
    """Add median/min/max per scenario, and the list of correctness problems."""
    bad: list[str] = []
    for group in document["results"].values():
        for scenario in group:
            good = [r for r in scenario["runs"] if "error" not in r]
            for r in scenario["runs"]:
                if "error" in r:
                    bad.append(f"{scenario['name']}: {r['error']}")
            keys = sorted({k for r in good for k, v in r.items() if isinstance(v, int | float)
                           and not isinstance(v, bool)})
            scenario["summary"] = {k: spread([r.get(k) for r in good]) for k in keys}
            if scenario in document["results"]["load"]:
                for r in good:
                    if r["failures"]:
                        bad.append(f"{scenario['name']}: {r['failures']} replies not ADD_SUCCESS "
                                   f"({r['failure_sample']})")
                    if r["missing_from_map"]:
                        bad.append(f"{scenario['name']}: {r['missing_from_map']} acknowledged addresses "
                                   "missing from the map")
                    for err in r["client_errors"]:
                        bad.append(f"{scenario['name']}: {err}")
    document["verdict"] = bad


def _fmt(value: float | None, digits: int = 1, thousands: bool = False) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.0f}" if thousands else f"{value:.{digits}f}"


def _cell(stat: dict[str, float | None] | None, digits: int = 1, thousands: bool = False, ranged: bool = False) -> str:
    if not stat or stat["median"] is None:
        return "-"
    text = _fmt(stat["median"], digits, thousands)
    if ranged and stat["min"] != stat["max"]:
        text += f" [{_fmt(stat['min'], digits, thousands)}-{_fmt(stat['max'], digits, thousands)}]"
    return text


def render(document: dict[str, Any]) -> str:
    m = document["machine"]
    lines = [
        f"dracd bench, {document['mode']} mode, {document['started_utc']}, {document['duration_s']:.0f} s",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_mb']} MB, Python {m['python']}, Linux {m['kernel']}, "
        f"load average {m['load_average_start']} at start, {m['load_average_end']} at end",
        f"dracd {m['dracd_revision'][:12]}{' (dirty)' if m['dracd_tree_dirty'] else ''} on "
        f"{m.get('event_loop', 'asyncio')}; maps on "
        f"{m['workdir_filesystem']}; {document['settings']['reps']} rep(s), median [min-max]; "
        f"load runs stop after {document['settings']['time_limit_s']:g} s",
        "",
    ]
    head = ("scenario", "acked/N", "adds/s", "p50 ms", "p99 ms", "max ms", "srv CPU s", "RSS MB",
            "ADD->ack ms", "ADD->map ms", "rexmit", "bad")
    rows: list[tuple[str, ...]] = []
    for s in document["results"]["load"]:
        st = s["summary"]
        good = [r for r in s["runs"] if "error" not in r]
        acked = (f"{int(st['acked']['median']):,}/{s['n']:,}" if st.get("acked", {}).get("median") is not None
                 else "-")
        timed_out = sum(1 for r in good if not r["complete"])
        if timed_out:
            acked += " (time)" if timed_out == len(good) else f" ({timed_out}/{len(good)} time)"
        bad = sum(r["failures"] + r["missing_from_map"] for r in good) + (len(s["runs"]) - len(good))
        rows.append((s["name"].removeprefix("load "), acked, _cell(st.get("adds_per_s"), thousands=True, ranged=True),
                     _cell(st.get("p50_ms"), 2), _cell(st.get("p99_ms"), 2), _cell(st.get("max_ms"), 1),
                     _cell(st.get("server_cpu_s_during_load"), 1), _cell(st.get("server_peak_rss_mb"), 0),
                     _cell(st.get("probe_ack_ms"), 1), _cell(st.get("probe_visible_ms"), 1),
                     _cell(st.get("retransmits"), 0), str(bad)))
    lines += _table(head, rows)
    lines.append("")
    if document["results"]["rewrite"]:
        rows = []
        for s in document["results"]["rewrite"]:
            st = s["summary"]
            rows.append((s["name"], _cell(st.get("rewrite_s"), 3, ranged=True),
                         _cell(st.get("update_copy_s"), 3, ranged=True),
                         _cell(st.get("update_one_s"), 4, ranged=True),
                         _cell({k: (v / 2**20 if v is not None else None)
                                for k, v in st.get("map_bytes", {}).items()}, 1)))
        lines += _table(("map (btree)", "full rewrite s", "1-entry update, copy s", "in place s", "size MB"), rows)
        lines.append("")
    for s in document["results"]["expiry"]:
        st = s["summary"]
        lines.append(
            f"expiry of {s['n']:,} entries due in the same second: all gone from the map "
            f"{_cell(st.get('all_gone_after_expiry_s'), 2, ranged=True)} s after it (first removal "
            f"{_cell(st.get('first_removal_after_expiry_s'), 2)} s); longest gap in NULL replies (1 ms probe) "
            f"{_cell(st.get('max_null_gap_ms_during_expiry'), 1, ranged=True)} ms, "
            f"vs {_cell(st.get('max_null_gap_ms_baseline'), 1)} ms before expiry; "
            f"server CPU {_cell(st.get('server_cpu_s'), 2)} s")
    for s in document["results"]["startup"]:
        st = s["summary"]
        lines.append(
            f"startup on a {s['n']:,}-entry map: READY=1 after {_cell(st.get('startup_s'), 2, ranged=True)} s, "
            f"peak RSS {_cell(st.get('peak_rss_mb_at_ready'), 0)} MB (map pre-written in {s['prewrite_s']:.2f} s)")
    if document["skipped"]:
        lines.append(f"skipped (over budget): {', '.join(document['skipped'])}")
    lines.append("verdict: " + ("every reply ADD_SUCCESS and every acknowledged address in the map"
                                if not document["verdict"] else f"{len(document['verdict'])} PROBLEMS"))
    return "\n".join(lines)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) if rows else len(head[i]) for i in range(len(head))]
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True)))]
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                 strict=True))))
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
