"""Where dracd's time goes under load: py-spy samples a dracd subprocess while
the load generator runs, and this prints (and saves under bench/results/)
the frames that take the most samples, with and without the idle time that
fsync and epoll spend off the CPU.

    python bench/profile.py [--n 100000] [--window 16] [--proto udp]
    python bench/profile.py --rewrite 1000000    # a full map write, three times
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    parser.add_argument("--rewrite", type=int, metavar="N", help="profile a full write of an N-entry map instead")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 69
    if args.rewrite:
        return profile_rewrite(spy, args.rewrite, args.workdir, args.top)
    name = f"{args.proto} n={args.n} w={args.window}"
    report = [f"dracd profile: {name}, {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"]
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        for idle in (False, True):
            map_path = Path(work) / f"dracd-{idle}.db"
            raw = Path(work) / f"profile-{idle}.txt"
            server = Server(map_path).start()
            try:
                assert server.proc is not None
                command = [spy, "record", "-p", str(server.proc.pid), "-o", str(raw), "-f", "raw", "-r", "250",
                           "--nonblocking", *(["--idle"] if idle else [])]
                recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                load = run_load(server.port, PROG, args.proto, args.n, args.window, 1, 60)
                recorder.send_signal(signal.SIGINT)
                recorder.wait(30)
            finally:
                server.stop()
            report += ["", f"--- {'with' if idle else 'without'} idle samples; load: {len(load.acked):,} acked, "
                       f"{load.rate:,.0f} adds/s ---", *summarize(raw, args.top)]
    return save("\n".join(report) + "\n", RESULTS / f"profile_{args.proto}_n{args.n}_w{args.window}.txt")


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
