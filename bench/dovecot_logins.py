"""`make bench-dovecot`: what authorizing a POP3/IMAP login costs, through the real Dovecot.

N IMAP logins (LOGIN, SELECT INBOX, LOGOUT; C clients at once, each from its
own 127/8 address) through a private Dovecot 2.3 (tests/fixtures/dovecot.py:
its own mount and PID namespaces, loopback) against a real dracd process, in
four modes:

- ``no-hook``: Dovecot alone, nothing tells dracd (the baseline);
- ``postlogin-dracctl``: contrib/dovecot/drac-postlogin running Python's dracctl;
- ``postlogin-dracauth``: the same script running libdrac's C dracauth
  (built from contrib/libdrac; finds dracd through rpcbind);
- ``auth-policy``: no script; Dovecot's auth policy client reports each login
  to dracd's dovecot_policy endpoint (the settings of docs/mra.md).

For each: logins per second sustained (N over the wall time), the login's own
latency (credentials sent to "OK Logged in", median and p95), and CPU per
login: user + system seconds of every process of Dovecot's PID namespace (a
process that exited is in its parent's children times: the namespace's PID 1,
Dovecot's master, reaps every one) plus dracd's, over the run, divided by N.
Every mode must end with each client address in dracd's map (except no-hook).
Then dracd alone (``--direct``, default 2000 ADDs of distinct addresses, one
at a time): its CPU per ADD through the policy endpoint (one keep-alive HTTP
connection, the report Dovecot sends) and through an RPC ADD over UDP (what
the post-login programs send), to separate the endpoint's own cost from the
map and journal write that every ADD pays. The figures are printed and saved
in bench/results/dovecot_<UTC>.json. Not a test: nothing here asserts a speed.

Bounded: N logins per mode (``--logins``, default 300), each with a 15 s
timeout; loopback only; the clients' addresses are 127.0.2.1 and up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _proc import PROG, Server, free_port  # noqa: E402

from tests.fixtures.dovecot import DovecotInstance, policy_conf  # noqa: E402
from tests.fixtures.libdrac import build_libdrac  # noqa: E402
from tests.fixtures.server import map_keys  # noqa: E402

SECRET = "bench-" + os.urandom(16).hex()
MODES = ("no-hook", "postlogin-dracctl", "postlogin-dracauth", "auth-policy")


def tree_cpu(pids: list[int]) -> float:
    """User + system seconds of these processes and of their reaped children."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class Dracd(Server):
    """_proc.Server, registered with rpcbind when asked (libdrac's dracauth needs it)."""

    def __init__(self, workdir: Path, *, rpcbind: bool = False, extra: tuple[str, ...] = ()) -> None:
        super().__init__(workdir / "dracd.db", extra=extra)
        if rpcbind:
            self.args.remove("--no-rpcbind")


def clients(n: int) -> list[str]:
    return [f"127.0.{2 + i // 250}.{1 + i % 250}" for i in range(n)]


def run_logins(dovecot: DovecotInstance, addresses: list[str], concurrency: int) -> tuple[float, list[float]]:
    """Every address logs in once, ``concurrency`` at a time: wall seconds, login latencies."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = list(addresses)

    def worker() -> None:
        while True:
            with lock:
                if not todo or errors:
                    return
                address = todo.pop()
            try:
                result = dovecot.imap_login(address)
            except Exception as exc:  # noqa: BLE001 - reported below
                result = None
                error = repr(exc)
            with lock:
                if result is None or not result.ok:
                    errors.append(f"{address}: {result or error}")
                else:
                    latencies.append(result.seconds)

    threads = [threading.Thread(target=worker, name=f"bench-login-{i}") for i in range(concurrency)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    wall = time.monotonic() - start
    if errors:
        raise RuntimeError(f"{len(errors)} logins failed, e.g. {errors[0]}")
    return wall, latencies


def measure(mode: str, dovecot: DovecotInstance, dracd: Dracd, logins: int, concurrency: int) -> dict[str, Any]:
    run_logins(dovecot, clients(8), concurrency)  # warm up: processes, caches, connections
    time.sleep(0.5)
    addresses = clients(logins)
    before = tree_cpu(dovecot.namespace_pids()), dracd.cpu()
    wall, latencies = run_logins(dovecot, addresses, concurrency)
    time.sleep(1.0)  # the last reports and processes finish
    after = tree_cpu(dovecot.namespace_pids()), dracd.cpu()
    missing = 0
    if mode != "no-hook":
        keys = map_keys(dracd.map_path)
        missing = sum(1 for address in addresses if address.encode() not in keys)
    latencies.sort()
    dovecot_cpu, dracd_cpu = after[0] - before[0], after[1] - before[1]
    return {
        "mode": mode, "logins": logins, "concurrency": concurrency,
        "logins_per_s": logins / wall, "wall_s": wall,
        "login_ms_p50": 1000 * statistics.median(latencies),
        "login_ms_p95": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "cpu_ms_per_login": 1000 * (dovecot_cpu + dracd_cpu) / logins,
        "dovecot_cpu_ms_per_login": 1000 * dovecot_cpu / logins,
        "dracd_cpu_ms_per_login": 1000 * dracd_cpu / logins,
        "missing_from_map": missing,
    }


def run_mode(mode: str, workdir: Path, dracauth: Path | None, logins: int, concurrency: int) -> dict[str, Any]:
    mode_dir = workdir / mode
    mode_dir.mkdir(mode=0o755)
    extra: tuple[str, ...] = ()
    dovecot_kwargs: dict[str, Any] = {"postlogin": None}
    if mode == "auth-policy":
        port = free_port()
        secret = mode_dir / "dovecot.secret"
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
        config = mode_dir / "dracd.yaml"
        config.write_text(json.dumps({"dovecot_policy": {"listen": f"inet:127.0.0.1:{port}",
                                                         "secret_file": str(secret)}}))
        extra = ("-c", str(config))
        dovecot_kwargs["extra_conf"] = policy_conf(f"http://127.0.0.1:{port}/",
                                                   header=f"Authorization: Bearer {SECRET}")
    elif mode.startswith("postlogin"):
        dovecot_kwargs = {}
    dracd = Dracd(mode_dir, rpcbind=mode == "postlogin-dracauth", extra=extra)
    dracd.start()
    try:
        with DovecotInstance(**dovecot_kwargs) as dovecot:
            if mode == "postlogin-dracctl":
                dovecot.configure_drac(server="127.0.0.1", program=PROG, port=dracd.port)
            elif mode == "postlogin-dracauth":
                assert dracauth is not None
                dovecot.configure_drac(server="127.0.0.1", program=PROG, dracauth=dracauth,
                                       dracctl="/nonexistent/dracctl")
            return measure(mode, dovecot, dracd, logins, concurrency)
    finally:
        dracd.stop()


def direct(workdir: Path, count: int) -> dict[str, Any]:
    """dracd's CPU per ADD: HTTP reports on one connection, then RPC ADDs over UDP."""
    import ipaddress
    import socket

    from dracclient.drac import DRACPROC_ADD, DRACVERS, decode_addstat, encode_add_args
    from dracclient.rpccall import call

    work = workdir / "direct"
    work.mkdir(mode=0o755)
    port = free_port()
    secret = work / "dovecot.secret"
    secret.write_text(SECRET + "\n")
    config = work / "dracd.yaml"
    config.write_text(json.dumps({"dovecot_policy": {"listen": f"inet:127.0.0.1:{port}",
                                                     "secret_file": str(secret)}}))
    dracd = Dracd(work, extra=("-c", str(config))).start()
    out: dict[str, Any] = {"adds": count}
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            before = dracd.cpu()
            for i in range(count):
                body = json.dumps({"login": "alice", "pwhash": "8b1", "remote": str(ipaddress.ip_address(
                    0x0A000000 + i)), "protocol": "imap", "session_id": "x", "success": True,
                    "policy_reject": False, "tls": False}).encode()
                sock.sendall(b"POST /?command=report HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: application/json\r\n"
                             + f"Authorization: Bearer {SECRET}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                             + body)
                reply = b""
                while not reply.endswith(b"}"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise RuntimeError("dracd closed the policy connection")
                    reply += chunk
                if b" 200 " not in reply.split(b"\r\n", 1)[0] or b'"msg":""' not in reply:
                    raise RuntimeError(f"report {i}: {reply[:200]!r}")
            out["http_report_cpu_ms_per_add"] = 1000 * (dracd.cpu() - before) / count
        before = dracd.cpu()
        for i in range(count):
            address = ipaddress.IPv4Address(0x0B000000 + i)
            stat = decode_addstat(call(("127.0.0.1", dracd.port), PROG, DRACVERS, DRACPROC_ADD,
                                       encode_add_args(address), timeout=5))
            if stat != 0:
                raise RuntimeError(f"RPC ADD {address}: {stat}")
        out["rpc_udp_cpu_ms_per_add"] = 1000 * (dracd.cpu() - before) / count
    finally:
        dracd.stop()
    return out


def machine() -> dict[str, Any]:
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip()
    dovecot = subprocess.run(["dovecot", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "kernel": platform.release(), "dovecot": dovecot,
            "load_average_start": os.getloadavg()[0], "dracd_revision": rev}


def table(results: list[dict[str, Any]]) -> str:
    base = next((r for r in results if r["mode"] == "no-hook"), None)
    lines = [f"{'mode':<20} {'logins/s':>9} {'login p50 ms':>13} {'p95 ms':>8} {'CPU ms/login':>13} "
             f"{'(dovecot':>9} {'dracd)':>7} {'vs no-hook':>16} {'missing':>8}"]
    for r in results:
        delta = "" if base is None or r is base else (
            f"{r['cpu_ms_per_login'] - base['cpu_ms_per_login']:+.2f} ms "
            f"{100 * (r['cpu_ms_per_login'] / base['cpu_ms_per_login'] - 1):+.0f}%")
        lines.append(f"{r['mode']:<20} {r['logins_per_s']:>9.1f} {r['login_ms_p50']:>13.2f} "
                     f"{r['login_ms_p95']:>8.2f} {r['cpu_ms_per_login']:>13.2f} "
                     f"{r['dovecot_cpu_ms_per_login']:>9.2f} {r['dracd_cpu_ms_per_login']:>7.2f} "
                     f"{delta:>16} {r['missing_from_map']:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=300, help="logins per mode (default 300)")
    parser.add_argument("--concurrency", type=int, default=4, help="clients at once (default 4)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--direct", type=int, default=2000,
                        help="ADDs for the dracd-alone comparison, HTTP report vs RPC (default 2000; 0: none)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/dovecot_*.json)")
    args = parser.parse_args(argv)
    if not 1 <= args.logins <= 20_000 or not 1 <= args.concurrency <= 64:
        parser.error("--logins 1..20000, --concurrency 1..64")
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(set(modes) - set(MODES))}")
    workdir = Path(tempfile.mkdtemp(prefix="dracd-bench-dovecot-", dir="/var/tmp"))
    workdir.chmod(0o755)  # the hook runs as the dovecot user
    results: list[dict[str, Any]] = []
    info = machine()
    try:
        dracauth = build_libdrac(workdir / "libdrac") / "dracauth" if "postlogin-dracauth" in modes else None
        for mode in modes:
            print(f"{mode}: {args.logins} IMAP logins, {args.concurrency} at once ...", flush=True)
            results.append(run_mode(mode, workdir, dracauth, args.logins, args.concurrency))
        alone = direct(workdir, min(args.direct, 50_000)) if args.direct > 0 else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    info["load_average_end"] = os.getloadavg()[0]
    print(table(results))
    if alone is not None:
        print(f"dracd alone, CPU per ADD ({alone['adds']} one at a time): HTTP report "
              f"{alone['http_report_cpu_ms_per_add']:.3f} ms, RPC over UDP {alone['rpc_udp_cpu_ms_per_add']:.3f} ms")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or REPO / "bench" / "results" / f"dovecot_{stamp}.json"
    out.write_text(json.dumps({"machine": info, "settings": vars(args) | {"out": str(out)},
                               "results": results, "dracd_alone": alone}, indent=2, default=str) + "\n")
    print(f"saved {out}")
    return 1 if any(r["missing_from_map"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
