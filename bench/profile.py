"""Where dracd's time goes under load: py-spy samples a dracd subprocess while
the load generator runs, and this prints (and saves under bench/results/)
the frames that take the most samples, with and without the idle time that
fsync and epoll spend off the CPU.

    python bench/profile.py [--n 100000] [--window 16] [--proto udp]
    python bench/profile.py --rewrite 1000000    # a full map write, three times
    python bench/profile.py --n 20000 --window 1 --strace   # one login at a time (issue 21)

Each run also splits the server's CPU per ADD between the event-loop thread and
the other threads (the map and journal executors), from /proc; ``--strace``
adds a run under ``strace -f -c``: the system calls per ADD, by count and time
(strace slows the server down many times: the counts are the point).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from _proc import PROG, Server
from loadgen import run_load

RESULTS = Path(__file__).resolve().parent / "results"
#: What --rewrite runs under py-spy: dracd's full write of N IPv4 entries, three times.
REWRITE = """
import sys, tempfile
from pathlib import Path
from dracd.keys import KeyStyle
from dracd.publish.maps.berkeley import BerkeleyMap
n = int(sys.argv[1])
entries = {0x0A000000 + i: 1_800_000_000 + i % 3600 for i in range(n)}
with tempfile.TemporaryDirectory(dir=sys.argv[2]) as work:
    writer = BerkeleyMap(Path(work) / "dracd.db", "btree", KeyStyle())
    for _ in range(3):
        writer.write_codes(entries)
"""


def summarize(raw: Path, top: int) -> list[str]:
    """py-spy's raw (collapsed) stacks -> the frames with the most samples, inclusive and self."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples, frames = int(count), stack.split(";")
        total += samples
        names = [frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].rstrip(")") for frame in frames]
        for name in set(names):
            inclusive[name] += samples
        own[names[-1]] += samples
    lines = [f"{total} samples"]
    lines += ["", "inclusive:"] + [f"{n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "self:"] + [f"{n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--no-spy", action="store_true", help="no py-spy runs: only the plain run (and --strace)")
    parser.add_argument("--strace", action="store_true", help="one more run under strace -f -c: syscalls per ADD")
    parser.add_argument("--rewrite", type=int, metavar="N", help="profile a full write of an N-entry map instead")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None and not args.no_spy:
        print("profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 69
    if args.rewrite:
        return profile_rewrite(spy, args.rewrite, args.workdir, args.top)
    name = f"{args.proto} n={args.n} w={args.window}"
    report = [f"dracd profile: {name}, {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"]
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        for idle in () if args.no_spy else (False, True):
            map_path = Path(work) / f"dracd-{idle}.db"
            raw = Path(work) / f"profile-{idle}.txt"
            server = Server(map_path).start()
            try:
                assert server.proc is not None
                command = [spy, "record", "-p", str(server.proc.pid), "-o", str(raw), "-f", "raw", "-r", "250",
                           "--nonblocking", *(["--idle"] if idle else [])]
                recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                before = thread_cpu(server.proc.pid)
                load = run_load(server.port, PROG, args.proto, args.n, args.window, 1, 60)
                split = cpu_split(before, thread_cpu(server.proc.pid), server.proc.pid, len(load.acked))
                recorder.send_signal(signal.SIGINT)
                recorder.wait(30)
            finally:
                server.stop()
            report += ["", f"--- {'with' if idle else 'without'} idle samples; load: {len(load.acked):,} acked, "
                       f"{load.rate:,.0f} adds/s, p50 {median_ms(load.latencies):.2f} ms; {split} (under py-spy) ---",
                       *summarize(raw, args.top)]
        report += plain_run(args, Path(work))
        if args.strace:
            report += strace_run(args, Path(work))
    if args.no_spy:  # a quick look, not a profile: printed, not saved
        print("\n".join(report))
        return 0
    return save("\n".join(report) + "\n", RESULTS / f"profile_{args.proto}_n{args.n}_w{args.window}.txt")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, from /proc/PID/task."""
    out: dict[int, float] = {}
    for thread in psutil.Process(pid).threads():
        out[thread.id] = thread.user_time + thread.system_time
        out[-thread.id] = thread.system_time
    return out


def cpu_split(before: dict[int, float], after: dict[int, float], pid: int, adds: int) -> str:
    """Server CPU per ADD: the event-loop thread (the process's first) and all the others."""
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    others = sum(cpu - before.get(tid, 0.0) for tid, cpu in after.items() if tid > 0 and tid != pid)
    system = sum(cpu - before.get(tid, 0.0) for tid, cpu in after.items() if tid < 0)
    per = 1e6 / max(adds, 1)
    return (f"server CPU {(main + others) * per:.0f} us/ADD ({system * per:.0f} system): event-loop thread "
            f"{main * per:.0f}, other threads {others * per:.0f}")


def median_ms(latencies: Any) -> float:
    return statistics.median(latencies) * 1000 if len(latencies) else float("nan")


def plain_run(args: argparse.Namespace, work: Path) -> list[str]:
    """The same load without a profiler attached: the figures the profile is to explain."""
    server = Server(work / "dracd-plain.db").start()
    try:
        assert server.proc is not None
        before = thread_cpu(server.proc.pid)
        load = run_load(server.port, PROG, args.proto, args.n, args.window, 1, 60)
        split = cpu_split(before, thread_cpu(server.proc.pid), server.proc.pid, len(load.acked))
    finally:
        server.stop()
    return ["", f"--- no profiler: {len(load.acked):,} acked, {load.rate:,.0f} adds/s, "
            f"p50 {median_ms(load.latencies):.2f} ms; {split} ---"]


def strace_run(args: argparse.Namespace, work: Path) -> list[str]:
    """System calls per ADD (all threads), from strace -f -c on the server under the same load."""
    strace = shutil.which("strace")
    if strace is None:
        return ["", "--- strace: not installed ---"]
    n = min(args.n, 5000)
    server = Server(work / "dracd-strace.db").start()
    out = work / "strace.txt"
    try:
        assert server.proc is not None
        tracer = subprocess.Popen([strace, "-f", "-c", "-o", str(out), "-p", str(server.proc.pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        load = run_load(server.port, PROG, args.proto, n, args.window, 1, 120)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    finally:
        server.stop()
    adds = max(len(load.acked), 1)
    lines = ["", f"--- strace -f -c: {len(load.acked):,} ADDs; system calls per ADD (all threads), "
             "and strace's time per call ---", "  calls/ADD  us/call  syscall"]
    for line in out.read_text().splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls = int(fields[3])
            lines.append(f"  {calls / adds:9.2f}  {int(fields[2]):7d}  {fields[-1]}")
    return lines


def profile_rewrite(spy: str, n: int, workdir: Path, top: int) -> int:
    with tempfile.TemporaryDirectory(dir=workdir) as work:
        raw = Path(work) / "profile.txt"
        started = time.monotonic()
        command = [spy, "record", "-o", str(raw), "-f", "raw", "-r", "250", "--",
                   sys.executable, "-c", REWRITE, str(n), str(workdir)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report = [f"dracd profile: full map write of {n:,} entries, three times (with the set-up), "
                  f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}, {time.monotonic() - started:.1f} s under py-spy",
                  "", *summarize(raw, top)]
    return save("\n".join(report) + "\n", RESULTS / f"profile_rewrite_n{n}.txt")


def save(text: str, out: Path) -> int:
    print(text, end="")
    RESULTS.mkdir(exist_ok=True)
    out.write_text(text)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
