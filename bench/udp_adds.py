"""ADD throughput over UDP from one client process, against a dracd subprocess.

Usage: python bench/udp_adds.py [-n ADDRESSES] [-w IN_FLIGHT]

Sends N distinct IPv4 ADDs with W requests in flight, retransmitting any
that get no answer within 1 s, checks every reply is ADD_SUCCESS and that
every acknowledged address is in the map at the end. Also times a full
rewrite of a 100k-entry map. Prints the figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dracclient.drac import DRACPROC_ADD, AddStat, decode_addstat, encode_add_args
from dracclient.rpc import decode_reply, encode_call
from dracd.keys import KeyStyle
from dracd.maps import open_writer

PROG = 0x3FFF_0001
BASE = int(ipaddress.IPv4Address("10.0.0.0"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_load(port: int, count: int, window: int) -> tuple[float, list[float]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect(("127.0.0.1", port))
    sent: dict[int, float] = {}
    latencies: list[float] = []
    next_xid = 0
    started = time.monotonic()
    deadline = started + 600

    def send(xid: int) -> None:
        args = encode_add_args(ipaddress.IPv4Address(BASE + xid))
        sock.send(encode_call(xid, PROG, 1, DRACPROC_ADD, args))
        sent[xid] = time.monotonic()

    while next_xid < min(window, count):
        send(next_xid)
        next_xid += 1
    while sent and time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 1.0)
        if not ready:
            for xid, when in list(sent.items()):
                if time.monotonic() - when > 1.0:
                    send(xid)
            continue
        reply = decode_reply(sock.recv(100))
        if reply.xid not in sent:
            continue
        assert decode_addstat(reply.results) == AddStat.ADD_SUCCESS, reply
        latencies.append(time.monotonic() - sent.pop(reply.xid))
        if next_xid < count:
            send(next_xid)
            next_xid += 1
    elapsed = time.monotonic() - started
    assert not sent, f"{len(sent)} ADDs unanswered"
    return elapsed, latencies


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("-w", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        map_path = Path(tmp) / "dracd.db"
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "dracd", "--no-rpcbind", "--listen", "127.0.0.1", "--port", str(port),
             "--log-level", "warning", "--program", str(PROG), "--lifetime", "1h", str(map_path)],
        )
        try:
            time.sleep(1.0)
            elapsed, latencies = run_load(port, args.n, args.w)
        finally:
            server.terminate()
            server.wait(30)
        entries = open_writer("btree", map_path, KeyStyle()).read()
        missing = sum(1 for n in range(args.n) if ipaddress.IPv4Address(BASE + n) not in entries)
        latencies.sort()
        print(f"UDP ADDs: {args.n} addresses, {args.w} in flight, 1 client process")
        print(f"  {args.n / elapsed:,.0f} adds/s over {elapsed:.2f} s")
        print(f"  latency p50 {statistics.median(latencies) * 1000:.2f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms, max {latencies[-1] * 1000:.2f} ms")
        print(f"  acknowledged but missing from the map: {missing}")
        writer = open_writer("btree", Path(tmp) / "rewrite.db", KeyStyle())
        table = {ipaddress.IPv4Address(BASE + n): 1795892048 for n in range(100_000)}
        times = []
        for _ in range(3):
            started = time.monotonic()
            writer.write(table)
            times.append(time.monotonic() - started)
        print(f"full rewrite of a 100k-entry map: median {statistics.median(times):.3f} s "
              f"(runs: {', '.join(f'{t:.3f}' for t in times)})")
        return 1 if missing else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
