"""ONC RPC load for dracd over loopback: ADDs over UDP or TCP, NULL and visibility probes.

K client processes (multiprocessing) each own a contiguous slice of N
distinct IPv4 addresses (10.0.0.0 + i) and keep W calls in flight. Over
UDP a call unanswered for ``rto`` seconds is sent again with the same xid
(so the server's answer to either copy counts). Every reply must be
ADD_SUCCESS; latency runs from the first transmission to the reply. Every
loop is bounded: no new call after ``time_limit``, and at most ``grace``
seconds more for the calls in flight.
"""

from __future__ import annotations

import ipaddress
import multiprocessing as mp
import select
import socket
import struct
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berkeleydb import db

from dracclient.drac import DRACPROC_ADD, DRACPROC_NULL, DRACVERS, AddStat, decode_addstat, encode_add_args
from dracclient.record import RecordReader
from dracclient.rpc import decode_reply, encode_call

BASE = int(ipaddress.IPv4Address("10.0.0.0"))
XID_BASE = 0x1000_0000
_CALL = struct.Struct(">IIIIIIIIIII")  # xid CALL rpcvers prog vers proc cred(2) verf(2) address
_NULL = struct.Struct(">IIIIIIIIII")
_MARK = struct.Struct(">I")
#: Everything after the xid in an accepted reply with ADD_SUCCESS (verifier AUTH_NONE).
SUCCESS_TAIL = struct.pack(">IIIIII", 1, 0, 0, 0, 0, AddStat.ADD_SUCCESS)


def address(index: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(BASE + index)


def key(index: int) -> bytes:
    return socket.inet_ntoa(struct.pack(">I", BASE + index)).encode()


def add_call(prog: int, index: int, xid: int | None = None) -> bytes:
    xid = XID_BASE + index if xid is None else xid
    return _CALL.pack(xid, 0, 2, prog, DRACVERS, DRACPROC_ADD, 0, 0, 0, 0, BASE + index)


def null_call(prog: int, xid: int) -> bytes:
    return _NULL.pack(xid, 0, 2, prog, DRACVERS, DRACPROC_NULL, 0, 0, 0, 0)


def _self_check(prog: int) -> None:
    """The hand-packed call is the one dracclient encodes."""
    assert add_call(prog, 7) == encode_call(XID_BASE + 7, prog, DRACVERS, DRACPROC_ADD, encode_add_args(address(7)))


@dataclass
class WorkerResult:
    worker: int
    sent: int = 0
    retransmits: int = 0
    acked: bytes = b""  # array('I') of address indices
    latencies: bytes = b""  # array('d') of seconds
    failures: int = 0
    failure_sample: list[str] = field(default_factory=list)
    unanswered: int = 0
    first_send: float = 0.0
    last_reply: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class LoadSpec:
    port: int
    prog: int
    proto: str  # "udp" or "tcp"
    start: int
    stop: int
    window: int
    start_at: float  # time.monotonic() (system-wide on Linux) at which to begin
    deadline: float  # no new calls after this
    grace: float = 3.0
    rto: float = 1.0
    rate: float = 0.0  # calls/s from this worker (0: as fast as the window allows)


def _check(reply: bytes, result: WorkerResult) -> int | None:
    """The xid of a reply, if it is ADD_SUCCESS; failures are counted and sampled."""
    if len(reply) < 4:
        return None
    if reply[4:] == SUCCESS_TAIL:
        return int.from_bytes(reply[:4], "big")
    try:
        decoded = decode_reply(reply)
        what = f"xid {decoded.xid}: {decoded.reply_stat.name} {decoded.accept_stat}"
        if decoded.results is not None:
            what += f" {decode_addstat(decoded.results).name}"
    except Exception as exc:  # noqa: BLE001 - anything malformed is a failure to report
        what = f"undecodable reply {reply[:32].hex()}: {exc}"
    result.failures += 1
    if len(result.failure_sample) < 5:
        result.failure_sample.append(what)
    return -1


def _worker(spec: LoadSpec, worker: int, queue: Any) -> None:
    result = WorkerResult(worker)
    try:
        if spec.proto == "udp":
            _udp_load(spec, result)
        else:
            _tcp_load(spec, result)
    except Exception as exc:  # noqa: BLE001 - reported to the runner, never lost
        result.error = f"{type(exc).__name__}: {exc}"
    queue.put(result)


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _udp_load(spec: LoadSpec, result: WorkerResult) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect(("127.0.0.1", spec.port))
    sock.setblocking(False)
    acked, latencies = array("I"), array("d")
    pending: dict[int, list[float]] = {}  # xid -> [first sent, last sent]
    nxt, stop, window = spec.start, spec.stop, spec.window
    mono = time.monotonic
    _sleep_until(spec.start_at)
    result.first_send = mono()
    last_scan = result.first_send
    hard_stop = spec.deadline + spec.grace
    while True:
        now = mono()
        allowed = stop if not spec.rate else min(stop, spec.start + 1 + int((now - result.first_send) * spec.rate))
        while len(pending) < window and nxt < allowed and now < spec.deadline:
            sock.send(add_call(spec.prog, nxt))
            pending[XID_BASE + nxt] = [now, now]
            nxt += 1
            result.sent += 1
        if nxt >= stop or now >= spec.deadline:
            if not pending or now >= hard_stop:
                break
        wait = 0.05
        if spec.rate and nxt < stop:
            wait = max(0.0, min(wait, result.first_send + (nxt - spec.start) / spec.rate - now))
        ready, _, _ = select.select([sock], [], [], wait)
        if ready:
            while True:
                try:
                    reply = sock.recv(512)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    result.error = "connection refused (server gone?)"
                    break
                xid = _check(reply, result)
                if xid is None or xid == -1:
                    if xid == -1:
                        pending.pop(int.from_bytes(reply[:4], "big"), None)
                    continue
                times = pending.pop(xid, None)
                if times is None:
                    continue  # the answer to a retransmitted copy we already had
                when = mono()
                acked.append(xid - XID_BASE)
                latencies.append(when - times[0])
                result.last_reply = when
            if result.error:
                break
        now = mono()
        if now - last_scan >= 0.05:
            last_scan = now
            for xid, times in pending.items():
                if now - times[1] >= spec.rto:
                    sock.send(add_call(spec.prog, xid - XID_BASE))
                    times[1] = now
                    result.retransmits += 1
    result.unanswered = len(pending)
    result.acked, result.latencies = acked.tobytes(), latencies.tobytes()
    sock.close()


def _tcp_load(spec: LoadSpec, result: WorkerResult) -> None:
    sock = socket.create_connection(("127.0.0.1", spec.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(10)
    reader = RecordReader(1 << 16)
    acked, latencies = array("I"), array("d")
    pending: dict[int, float] = {}
    nxt, stop, window = spec.start, spec.stop, spec.window
    mono = time.monotonic
    _sleep_until(spec.start_at)
    result.first_send = mono()
    hard_stop = spec.deadline + spec.grace
    while True:
        now = mono()
        batch = []
        while len(pending) < window and nxt < stop and now < spec.deadline:
            call = add_call(spec.prog, nxt)
            batch.append(_MARK.pack(0x8000_0000 | len(call)) + call)
            pending[XID_BASE + nxt] = now
            nxt += 1
            result.sent += 1
        if batch:
            sock.sendall(b"".join(batch))
        if not pending or now >= hard_stop:
            break
        ready, _, _ = select.select([sock], [], [], 0.05)
        if not ready:
            continue
        data = sock.recv(65536)
        if not data:
            result.error = "server closed the connection"
            break
        when = mono()
        for reply in reader.feed(data):
            xid = _check(reply, result)
            if xid is None or xid == -1:
                if xid == -1:
                    pending.pop(int.from_bytes(reply[:4], "big"), None)
                continue
            sent = pending.pop(xid, None)
            if sent is None:
                continue
            acked.append(xid - XID_BASE)
            latencies.append(when - sent)
            result.last_reply = when
    result.unanswered = len(pending)
    result.acked, result.latencies = acked.tobytes(), latencies.tobytes()
    sock.close()


@dataclass
class LoadResult:
    proto: str
    n: int
    window: int
    clients: int
    time_limit: float
    sent: int
    acked: array[int]
    latencies: array[float]
    elapsed: float
    retransmits: int
    failures: int
    failure_sample: list[str]
    unanswered: int
    errors: list[str]

    @property
    def complete(self) -> bool:
        return len(self.acked) == self.n

    @property
    def rate(self) -> float:
        return len(self.acked) / self.elapsed if self.elapsed > 0 else 0.0


def run_load(port: int, prog: int, proto: str, n: int, window: int, clients: int,
             time_limit: float, rto: float = 1.0, offset: int = 0, rate: float = 0.0) -> LoadResult:
    """N ADDs (addresses ``offset`` .. ``offset + n - 1``) from ``clients`` processes, each with
    ``window`` in flight, at most ``rate`` per second in all (UDP; 0: no pacing); bounded by ``time_limit``."""
    _self_check(prog)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    start_at = time.monotonic() + 0.2
    if rate and proto != "udp":
        raise ValueError("pacing (rate) is implemented for UDP only")
    bounds = [offset + n * i // clients for i in range(clients + 1)]
    procs = []
    for worker in range(clients):
        spec = LoadSpec(port, prog, proto, bounds[worker], bounds[worker + 1], window, start_at,
                        start_at + time_limit, rto=rto, rate=rate / clients)
        proc = ctx.Process(target=_worker, args=(spec, worker, queue), daemon=True)
        proc.start()
        procs.append(proc)
    results: list[WorkerResult] = []
    collect_by = start_at + time_limit + 30
    while len(results) < clients and time.monotonic() < collect_by:
        try:
            results.append(queue.get(timeout=1.0))
        except Exception:  # noqa: BLE001 - queue.Empty: check the deadline again
            if not any(p.is_alive() for p in procs) and queue.empty():
                break
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    acked, latencies = array("I"), array("d")
    errors = [f"worker {r.worker}: {r.error}" for r in results if r.error]
    if len(results) < clients:
        errors.append(f"{clients - len(results)} client processes returned nothing")
    for r in results:
        acked.frombytes(r.acked)
        latencies.frombytes(r.latencies)
    last = max((r.last_reply for r in results if r.last_reply), default=start_at)
    return LoadResult(
        proto=proto, n=n, window=window, clients=clients, time_limit=time_limit,
        sent=sum(r.sent for r in results), acked=acked, latencies=latencies, elapsed=max(last - start_at, 1e-9),
        retransmits=sum(r.retransmits for r in results), failures=sum(r.failures for r in results),
        failure_sample=[s for r in results for s in r.failure_sample][:5],
        unanswered=sum(r.unanswered for r in results), errors=errors,
    )


def map_keys(path: Path) -> set[bytes]:
    """Every key of the map, as an MTA opening it now would see them."""
    table = db.DB()
    table.open(str(path), dbtype=db.DB_UNKNOWN, flags=db.DB_RDONLY)
    try:
        return {k.rstrip(b"\0") for k in table.keys()}
    finally:
        table.close()


def map_count(path: Path) -> int:
    table = db.DB()
    table.open(str(path), dbtype=db.DB_UNKNOWN, flags=db.DB_RDONLY)
    try:
        return len(table.keys())
    finally:
        table.close()


def missing_from_map(path: Path, acked: array[int]) -> int:
    keys = map_keys(path)
    return sum(1 for index in acked if key(index) not in keys)


def _in_map(path: Path, wanted: bytes) -> bool:
    table = db.DB()
    try:
        table.open(str(path), dbtype=db.DB_UNKNOWN, flags=db.DB_RDONLY)
    except db.DBError:
        return False
    try:
        return bool(table.exists(wanted))
    finally:
        table.close()


def probe_visibility(port: int, prog: int, map_path: Path, index: int, timeout: float = 5.0) -> dict[str, Any]:
    """One ADD; seconds from sending it to the ACK and to the key appearing in the map file."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    wanted = key(index)
    call = add_call(prog, index, xid=0x7000_0000 + index)
    polls = 0
    ack = visible = None
    status = None
    start = last_send = time.monotonic()
    sock.send(call)
    try:
        while (ack is None or visible is None) and time.monotonic() - start < timeout:
            if ack is None:
                try:
                    reply = sock.recv(512)
                    ack = time.monotonic() - start
                    decoded = decode_reply(reply)
                    status = decode_addstat(decoded.results).name if decoded.results is not None else "error"
                except BlockingIOError:
                    if time.monotonic() - last_send > 1.0:
                        sock.send(call)
                        last_send = time.monotonic()
            if visible is None:
                polls += 1
                if _in_map(map_path, wanted):
                    visible = time.monotonic() - start
    finally:
        sock.close()
    return {"ack_s": ack, "visible_s": visible, "status": status, "polls": polls}


def _null_prober(port: int, prog: int, interval: float, duration: float, stop: Any, queue: Any) -> None:
    """A NULL call every ``interval`` s; the monotonic times of the replies."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    replies = array("d")
    sent = 0
    begin = time.monotonic()
    next_send = begin
    end = begin + duration
    while time.monotonic() < end and not stop.is_set():
        now = time.monotonic()
        if now >= next_send:
            try:
                sock.send(null_call(prog, 0x6000_0000 + sent))
            except OSError:
                pass
            sent += 1
            next_send += interval
            if next_send < now:
                next_send = now + interval
        ready, _, _ = select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
        if ready:
            while True:
                try:
                    sock.recv(512)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                replies.append(time.monotonic())
    sock.close()
    queue.put((begin, sent, replies.tobytes()))


class NullProber:
    """A background process sending NULL calls every ``interval`` s (at most ``duration`` s)."""

    def __init__(self, port: int, prog: int, interval: float = 0.001, duration: float = 120.0) -> None:
        ctx = mp.get_context("fork")
        self._stop = ctx.Event()
        self._queue = ctx.Queue()
        self._proc = ctx.Process(target=_null_prober, args=(port, prog, interval, duration, self._stop, self._queue),
                                 daemon=True)
        self.duration = duration

    def start(self) -> NullProber:
        self._proc.start()
        return self

    def finish(self) -> tuple[float, int, array[float]]:
        """(start, calls sent, reply times)."""
        self._stop.set()
        begin, sent, raw = self._queue.get(timeout=self.duration + 30)
        self._proc.join(10)
        replies = array("d")
        replies.frombytes(raw)
        return begin, sent, replies


def max_gap(times: array[float], start: float, end: float) -> float:
    """The longest interval without a reply inside [start, end]."""
    inside = [start, *(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in zip(inside, inside[1:], strict=False))
