"""Hostile stream clients against the real dracd process (the hardening issue,
faults 2-4), on every stream endpoint: the RPC TCP port, the admin socket and
the socketmap. Bursts of connects never take the open connections past
max_connections (nor the descriptors past the process's limit), a client that
never reads its replies costs a bounded amount of memory, and a record that
trickles in must still complete within record_timeout of its first byte.
Meanwhile the server keeps answering everybody else."""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from dracclient.drac import AddStat
from tests.fixtures.cclient import private_prog
from tests.fixtures.process import DracdProcess, add_status
from tests.fixtures.tools import accept_queue, free_port, unix_accept_queue

MAX_CONNECTIONS = 20
RECORD_TIMEOUT = 2.0
IDLE_TIMEOUT = 8.0




@dataclass
class Server:
    process: DracdProcess
    port: int
    prog: int
    socketmap_port: int
    admin_socket: Path

    def endpoints(self) -> dict[str, tuple[int, tuple[str, int] | str]]:
        return {"rpc": (socket.AF_INET, ("127.0.0.1", self.port)),
                "socketmap": (socket.AF_INET, ("127.0.0.1", self.socketmap_port)),
                "admin": (socket.AF_UNIX, str(self.admin_socket))}

    def connect(self, endpoint: str, timeout: float = 5.0) -> socket.socket:
        family, address = self.endpoints()[endpoint]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        return sock

    def took_the_burst(self, endpoint: str, timeout: float = 10.0) -> bool:
        """Wait until the listener of ``endpoint`` has no connection left to accept."""
        family, address = self.endpoints()[endpoint]
        deadline = time.monotonic() + timeout
        while True:
            left = unix_accept_queue(address) if isinstance(address, str) else accept_queue(address[1])
            if not left:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def answers(self) -> bool:
        """Everybody else is still served: an ADD over UDP and over TCP."""
        return (add_status(self.port, self.prog, "192.0.2.9") == AddStat.ADD_SUCCESS
                and add_status(self.port, self.prog, "192.0.2.10", transport="tcp") == AddStat.ADD_SUCCESS)

    def stream_connections(self) -> int:
        """Connected stream sockets the server holds (the listening ones not counted)."""
        proc = psutil.Process(self.process.pid)
        tcp = [c for c in proc.net_connections(kind="inet") if c.type == socket.SOCK_STREAM and c.raddr]
        # Accepted UNIX connections carry the listener's path too: all but the listener.
        unix = [c for c in proc.net_connections(kind="unix") if c.type == socket.SOCK_STREAM
                and c.laddr == str(self.admin_socket)]
        return len(tcp) + len(unix) - 1

    def descriptors(self) -> int:
        return psutil.Process(self.process.pid).num_fds()

    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)


def start(tmp_path: Path, nofile: int | None = None, max_connections: int = MAX_CONNECTIONS,
          loop: str = "auto") -> Iterator[Server]:
    prog, port, socketmap_port = private_prog(), free_port(), free_port()
    config = tmp_path / "dracd.yaml"
    config.write_text(
        f"map: {{path: {tmp_path / 'dracd.db'}}}\nlisten: [127.0.0.1]\nport: {port}\nprogram: {prog}\n"
        f"rpcbind: false\nadmin_socket: {tmp_path / 'dracd.sock'}\nsocketmap: ['inet:127.0.0.1:{socketmap_port}']\n"
        f"event_loop: {loop}\nmax_connections: {max_connections}\n"
        f"record_timeout: {RECORD_TIMEOUT:g}s\nidle_timeout: {IDLE_TIMEOUT:g}s\n")
    process = DracdProcess(["-c", config, "--admin-socket", tmp_path / "dracd.sock"],
                           log_path=tmp_path / "dracd.log")
    if nofile is not None:
        limited = ["prlimit", f"--nofile={nofile}:{nofile}", "--"]
        process.args = limited + process.args
    try:
        process.start_ready(15)
        yield Server(process, port, prog, socketmap_port, tmp_path / "dracd.sock")
    finally:
        process.kill()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    yield from start(tmp_path)


@pytest.fixture(autouse=True)
def enough_descriptors_here() -> None:
    """The attacking side (this process) needs more sockets than the default 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))


def burst(server: Server, endpoint: str, count: int) -> list[socket.socket]:
    """``count`` connects as fast as they go, nothing sent; those the server refused are dropped."""
    family, address = server.endpoints()[endpoint]
    opened = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(address)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # a full UNIX backlog: EAGAIN
            sock.close()
            continue
        opened.append(sock)
    return opened


@pytest.mark.parametrize("endpoint", ["rpc", "socketmap", "admin"])
def test_bursts_of_connects_never_pass_max_connections(server: Server, endpoint: str) -> None:
    """Fault 2: every accept of one burst evicted the same quiet connection, so the
    count grew past the limit until the descriptors ran out."""
    held: list[socket.socket] = []
    peak = 0
    try:
        for _ in range(6):
            held += burst(server, endpoint, 150)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                peak = max(peak, server.stream_connections())
                time.sleep(0.05)
            assert server.answers()
        # The TCP ADD of answers() may hold one more, briefly.
        assert peak <= MAX_CONNECTIONS + 1, f"{peak} stream connections open (limit {MAX_CONNECTIONS})"
        assert server.descriptors() < MAX_CONNECTIONS * 3 + 40
    finally:
        for sock in held:
            sock.close()


def test_the_descriptor_limit_leaves_a_reserve_for_the_map_and_journal(tmp_path: Path) -> None:
    """Fault 2, second half: with max_connections far above what RLIMIT_NOFILE allows, a
    flood must not take the descriptors the journal and map need (ADD_SYSERR "Too many
    open files", then no answer at all)."""
    held: list[socket.socket] = []
    for server in start(tmp_path, nofile=128, max_connections=256):
        try:
            for endpoint in ("rpc", "socketmap", "rpc", "admin", "rpc"):
                held += burst(server, endpoint, 150)
                assert server.took_the_burst(endpoint), f"{endpoint}: the burst is not accepted within 10 s"
                assert server.answers(), server.process.log()[-2000:]
            assert server.descriptors() <= 128
            assert "open-files limit" in server.process.log()
        finally:
            for sock in held:
                sock.close()


def mismatch_call(xid: int) -> bytes:
    """The smallest call that earns a reply: RPC version 3, answered RPC_MISMATCH (no allow entry needed)."""
    body = xid.to_bytes(4, "big") + (0).to_bytes(4, "big") + (3).to_bytes(4, "big") + (900101).to_bytes(4, "big")
    return (0x80000000 | len(body)).to_bytes(4, "big") + body


def test_a_client_that_never_reads_its_replies_costs_bounded_memory(server: Server) -> None:
    """Fault 3: replies were written without waiting for the transport to drain, so
    reading never paused (33 MB -> 332 MB in 60 s). Now the server stops reading this
    client once its unsent replies pass a small bound: the attacker's sends block (the
    kernel buffers between us fill, a few MB) and the server's memory stays flat."""
    before = server.rss()
    chunk = b"".join(mismatch_call(xid) for xid in range(4096))  # 80 KiB: 4096 calls
    sent = 0
    blocked_since = None
    with socket.socket() as attacker:
        # A small receive buffer: the replies pile up in the server, not in this kernel.
        attacker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        attacker.connect(("127.0.0.1", server.port))
        attacker.setblocking(False)
        deadline = time.monotonic() + 30.0
        # Until the server has refused our bytes for 2 s straight, or 60 MB went in.
        pending = memoryview(chunk)
        while time.monotonic() < deadline and sent < 60 * 1024 * 1024:
            try:
                # A partial send continues where it stopped: the stream stays well framed.
                n = attacker.send(pending)
                sent += n
                pending = pending[n:] if n < len(pending) else memoryview(chunk)
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 2.0:
                    break
                time.sleep(0.01)
            except (ConnectionResetError, BrokenPipeError):  # closed for taking no reply: fine too
                blocked_since = blocked_since or time.monotonic()
                break
        grown = server.rss() - before
        assert server.answers()
    print(f"RSS grew {grown / 1e6:.1f} MB; {sent / 1e6:.1f} MB of calls went in")
    assert blocked_since is not None, f"the server read all {sent / 1e6:.0f} MB sent by a client that reads nothing"
    # What stays is the kernel's socket buffers and the heap of one read's worth of calls
    # (before: +78 MB with 63 MB of calls read, and growing for as long as they came).
    assert grown < 25 * 1024 * 1024, f"RSS grew {grown / 1e6:.0f} MB"


@pytest.mark.parametrize(("endpoint", "first"), [
    ("rpc", (0x80000000 | 40).to_bytes(4, "big")),  # a record header, then its body a byte at a time
    ("admin", (0x80000000 | 40).to_bytes(4, "big")),
    ("socketmap", b"40:"),  # a netstring's length, then its body a byte at a time
])
def test_a_trickled_record_must_complete_within_record_timeout_of_its_first_byte(
        server: Server, endpoint: str, first: bytes) -> None:
    """Fault 4: every read reset the record timer, so one byte every few seconds kept a
    partial record open forever."""
    with server.connect(endpoint) as slow:
        slow.sendall(first)
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < IDLE_TIMEOUT - 1:
            try:
                slow.sendall(b"x")
                slow.settimeout(0.5)
                if slow.recv(4096) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None, f"a record trickling in for {IDLE_TIMEOUT - 1:g} s was still open"
        assert closed_after < RECORD_TIMEOUT + 1.5
    assert server.answers()


def test_unix_socket_limit_counts(server: Server) -> None:
    """The helper above sees admin-socket connections (else the admin case proves nothing)."""
    with server.connect("admin"):
        deadline = time.monotonic() + 2
        while server.stream_connections() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.stream_connections() == 1
    assert os.path.exists(server.admin_socket)
