"""Benchmark of the shared table (issue 9): file-only dracd beside dracd on Redis.

    .venv/bin/python bench/shared.py [--n 20000] [--lookups 100000]

For each backend it starts its own dracd subprocess(es) on fresh maps (for
Redis: a private redis-server on a loopback port, no persistence, and two
dracd instances A and B on it), then measures:

- ADDs/s: N UDP ADDs to A (W in flight, K clients; bench/loadgen.py), every
  reply checked, every acknowledged address checked in A's map (and, for
  Redis, in B's map: what the issue promises);
- socketmap lookups/s on A: K connections, each keeping W requests in flight,
  over addresses that are all in the table;
- for Redis: ADD on A -> OK from B's socketmap (median of 9, ms).

With ``--instances 1`` A runs alone on Redis: on a small machine A, B, Redis
and the load generator share the cores, and B's work (a GET per event) slows A.

Prints one table and saves JSON under bench/results/ (name ..._shared_...).
Asserts nothing about speed; exits 1 if a reply failed or an entry is missing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _proc import PROG, Server, free_port  # noqa: E402
from loadgen import add_call, address, missing_from_map, run_load  # noqa: E402
from run import RESULTS, machine  # noqa: E402

from dracd.server.netstring import NetstringReader, encode  # noqa: E402


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                             "--save", "", "--appendonly", "no", "--logfile", str(directory / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server on port {port} did not start")


def _lookup_worker(port: int, keys: list[bytes], window: int, queue: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    reader = NetstringReader()
    sent = answered = bad = 0
    started = time.monotonic()
    while answered < len(keys):
        while sent < len(keys) and sent - answered < window:
            sock.sendall(encode(b"drac " + keys[sent]))
            sent += 1
        for reply in reader.feed(sock.recv(65536)):
            answered += 1
            bad += not reply.startswith(b"OK ")
    queue.put((answered, bad, time.monotonic() - started))
    sock.close()


def lookup_rate(port: int, keys: list[bytes], clients: int, window: int) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    share = len(keys) // clients
    procs = [ctx.Process(target=_lookup_worker, args=(port, keys[i * share:(i + 1) * share], window, queue))
             for i in range(clients)]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=300) for _ in procs]
    elapsed = time.monotonic() - started
    for proc in procs:
        proc.join(10)
    answered = sum(r[0] for r in results)
    return {"lookups": answered, "bad": sum(r[1] for r in results), "seconds": round(elapsed, 3),
            "lookups_per_s": round(answered / elapsed)}


def socketmap_ok(port: int, key: bytes, timeout: float) -> float | None:
    """Seconds until ``key`` answers OK on the socketmap at ``port``."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        reader = NetstringReader()
        while time.monotonic() - started < timeout:
            sock.sendall(encode(b"drac " + key))
            while not (replies := reader.feed(sock.recv(4096))):
                pass
            if replies[0].startswith(b"OK "):
                return time.monotonic() - started
    return None


def propagation(a: Server, b_socketmap: int, first: int, count: int = 9) -> float | None:
    """Median ms from sending an ADD to A to OK from B's socketmap."""
    times = []
    for index in range(first, first + count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(add_call(PROG, index, xid=0x6000_0000 + index), ("127.0.0.1", a.port))
            seen = socketmap_ok(b_socketmap, str(address(index)).encode(), 5.0)
        if seen is not None:
            times.append(seen * 1e3)
    return round(statistics.median(times), 2) if len(times) == count else None


def run_backend(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    work.mkdir()
    redis: subprocess.Popen[bytes] | None = None
    servers: list[Server] = []
    try:
        extra: tuple[str, ...] = ()
        if name == "redis":
            redis, redis_port = start_redis(work)
            extra = ("--redis", f"redis://127.0.0.1:{redis_port}/0")
        ports = [free_port(), free_port()]
        for i in range(args.instances if name == "redis" else 1):
            (work / f"d{i}").mkdir()
            server = Server(work / f"d{i}" / "dracd.db",
                            extra=(*extra, "--socketmap", f"inet:127.0.0.1:{ports[i]}"))
            servers.append(server.start())
        a = servers[0]
        cpu = a.cpu()
        load = run_load(a.port, PROG, "udp", args.n, args.window, args.clients, args.time_limit)
        result: dict[str, Any] = {
            "backend": name, "n": args.n, "window": args.window, "clients": args.clients,
            "adds_acked": len(load.acked), "adds_per_s": round(load.rate), "add_failures": load.failures,
            "server_cpu_s": round(a.cpu() - cpu, 2),
            "p50_ms": round(statistics.median(load.latencies) * 1e3, 2) if load.latencies else None,
        }
        time.sleep(1.0)  # the bound for the other instance's map
        result["missing_a"] = missing_from_map(a.map_path, load.acked)
        if len(servers) > 1:
            result["missing_b"] = missing_from_map(servers[1].map_path, load.acked)
            result["add_a_to_b_socketmap_ms"] = propagation(a, ports[1], args.n + 10)
        keys = [str(address(i)).encode() for i in load.acked[: args.n]]
        keys = (keys * (args.lookups // max(len(keys), 1) + 1))[: args.lookups]
        result["socketmap"] = lookup_rate(ports[0], keys, args.clients, args.window)
        return result
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.kill()
            redis.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="ADDs per backend")
    parser.add_argument("--lookups", type=int, default=100000, help="socketmap lookups per backend")
    parser.add_argument("--window", type=int, default=16, help="requests in flight per client")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--instances", type=int, choices=(1, 2), default=2,
                        help="dracd instances on Redis (2: B follows A's ADDs, as deployed; 1: A alone)")
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    assert shutil.which("redis-server"), "redis-server is not installed (make install)"
    work = Path(tempfile.mkdtemp(prefix="dracd-bench-shared-", dir=args.workdir))
    try:
        rows = [run_backend(name, work / name, args) for name in ("file", "redis")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'backend':8} {'adds/s':>8} {'p50 ms':>7} {'cpu s':>6} {'lookups/s':>10} {'A->B ms':>8} missing")
    for row in rows:
        missing = row["missing_a"] + row.get("missing_b", 0)
        print(f"{row['backend']:8} {row['adds_per_s']:8} {row['p50_ms']!s:>7} {row['server_cpu_s']:6} "
              f"{row['socketmap']['lookups_per_s']:10} {row.get('add_a_to_b_socketmap_ms', '-')!s:>8} {missing}")
    if not args.no_save:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS / f"{stamp}_shared.json"
        path.write_text(json.dumps({"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                    "results": rows}, indent=2) + "\n")
        print(f"saved {path.relative_to(RESULTS.parent.parent)}")
    failed = any(r["add_failures"] or r["missing_a"] or r.get("missing_b") or r["socketmap"]["bad"]
                 or r["adds_acked"] != args.n for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
