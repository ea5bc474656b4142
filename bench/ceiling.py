"""What any Python server could reach here: the ceilings dracd is measured against.

Three minimal UDP servers, driven by the same load generator as dracd
(bench/loadgen.py, N=100k, W=16, K=1 unless told otherwise):

- ``reply``: decode the call's xid, answer ADD_SUCCESS; no table, no disk
  (what the issue quotes as ~105k/s on asyncio);
- ``flush``: the same, but every burst of calls read at once is first
  appended to a preallocated file and fdatasync'ed: the least a server that
  acknowledges only durable ADDs must do (one flush per group commit);
- ``flush+map``: also puts the burst's keys into a Berkeley DB file through
  a private cache and renames it in, as dracd's unflushed map commit does.

Each reads the socket in bursts with ``add_reader``, like dracd. The gap
between ``flush`` and dracd is what dracd's own Python costs; the gap
between ``reply`` and ``flush`` is the disk's.

    .venv/bin/python bench/ceiling.py [--n 100000] [--window 16] [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402
from _proc import PROG, free_port  # noqa: E402

SUCCESS_TAIL = loadgen.SUCCESS_TAIL
KINDS = ("reply", "flush", "flush+map")


def _serve(kind: str, port: int, directory: str, loop_name: str, ready: Any) -> None:
    if loop_name == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(_server(kind, port, Path(directory), ready))


async def _server(kind: str, port: int, directory: Path, ready: Any) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    journal = os.open(directory / "journal", os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(journal, bytes(64 << 20), 0)
    os.fsync(journal)
    offset = 0
    env = table = None
    if kind == "flush+map":
        from berkeleydb import db

        env = db.DBEnv()
        env.set_cachesize(0, 4 << 20)
        env.open(str(directory), db.DB_PRIVATE | db.DB_INIT_MPOOL | db.DB_CREATE)
        table = db.DB(env)
        table.open(str(directory / "map.db"), dbtype=db.DB_BTREE, flags=db.DB_CREATE)

    def readable() -> None:
        nonlocal offset
        replies = []
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(512)
            except BlockingIOError:
                break
            replies.append((data[:4] + SUCCESS_TAIL, addr, data[40:44]))
        if not replies:
            return
        if kind != "reply":
            record = b"".join(address for _, _, address in replies)
            os.pwrite(journal, record, offset % (64 << 20))
            offset += len(record)
            if table is not None and env is not None:
                for _, _, address in replies:
                    table.put(socket.inet_ntoa(address).encode(), b"1800000000")
                env.memp_trickle(100)
                os.rename(directory / "map.db", directory / "map2.db")
                os.rename(directory / "map2.db", directory / "map.db")
            os.fdatasync(journal)
        for reply, addr, _ in replies:
            sock.sendto(reply, addr)

    loop.add_reader(sock.fileno(), readable)
    ready.set()
    await asyncio.Event().wait()


def measure(kind: str, n: int, window: int, loop_name: str, time_limit: float) -> dict[str, Any]:
    ctx = get_context("fork")
    ready = ctx.Event()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dracd-ceiling-", dir="/var/tmp") as directory:
        server = ctx.Process(target=_serve, args=(kind, port, directory, loop_name, ready), daemon=True)
        server.start()
        try:
            if not ready.wait(10):
                raise RuntimeError(f"{kind} server did not start")
            ps = psutil.Process(server.pid)
            before = ps.cpu_times()
            result = loadgen.run_load(port, PROG, "udp", n, window, 1, time_limit)
            after = ps.cpu_times()
        finally:
            server.kill()
            server.join(5)
    latencies = sorted(result.latencies)
    return {"kind": kind, "loop": loop_name, "n": n, "window": window, "acked": len(result.acked),
            "adds_per_s": round(result.rate), "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2)
            if latencies else None, "failures": result.failures,
            "cpu_us_per_add": round((after.user + after.system - before.user - before.system)
                                    / max(len(result.acked), 1) * 1e6)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--time-limit", type=float, default=20.0)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    rows = []
    for kind in KINDS:
        row = measure(kind, args.n, args.window, args.loop, args.time_limit)
        rows.append(row)
        print(f"{kind:10s} {args.loop:7s} n={args.n} w={args.window}: {row['acked']:,} acked, "
              f"{row['adds_per_s']:,}/s, p50 {row['p50_ms']} ms, CPU {row['cpu_us_per_add']} us/ADD, "
              f"failures {row['failures']}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "rows": rows}, indent=1) + "\n")
    return 1 if any(row["failures"] or row["acked"] < args.n for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
