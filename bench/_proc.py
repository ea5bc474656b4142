"""A dracd subprocess for the benchmark: started, awaited on READY=1, measured, stopped.

The notify-socket logic is a copy of tests/fixtures/process.py's, so bench/
does not import the test suite. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

DRACD = Path(sys.executable).parent / "dracd"
#: A private program number: the benchmark never meets a real dracd or MRA.
PROG = 0x3FFF_0001


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (a small race, as in the tests)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on 127.0.0.1")


class NotifySocket:
    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="dracd-bench-notify-")
        self.path = os.path.join(self.directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait_for(self, state: str, timeout: float, proc: subprocess.Popen[bytes]) -> float:
        """Wait for the line ``state``; the monotonic time it arrived."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no {state} from dracd within {timeout:g} s")
            self.sock.settimeout(min(left, 0.05))
            try:
                message = self.sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                if proc.poll() is not None:
                    raise RuntimeError(f"dracd exited with {proc.returncode} before {state}") from None
                continue
            if state in message.splitlines():
                return time.monotonic()

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class _Measured:
    """A server process under load: its CPU and peak RSS from /proc, stopped with SIGTERM
    (SIGKILL after ``timeout``)."""

    proc: subprocess.Popen[bytes] | None = None
    ps: psutil.Process | None = None
    #: Seconds a stop waits after SIGTERM before SIGKILL.
    stop_timeout = 60.0

    def cpu(self) -> float:
        """User + system CPU seconds of the server so far (all its threads)."""
        assert self.ps is not None
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def peak_rss(self) -> int:
        """VmHWM: the peak resident set size, in bytes."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Server(_Measured):
    """One dracd on 127.0.0.1 (UDP and TCP), no rpcbind, no admin socket."""

    def __init__(self, map_path: Path, *, lifetime: str = "1h", log_path: Path | None = None,
                 extra: tuple[str, ...] = (), loop: str | None = None) -> None:
        self.map_path = map_path
        self.port = free_port()
        self.log_path = log_path or map_path.with_name("dracd.log")
        self.args = [str(DRACD), "--no-rpcbind", "--listen", "127.0.0.1", "--port", str(self.port),
                     "--program", str(PROG), "--log-level", "warning", "--lifetime", lifetime,
                     "--admin-socket", "", *(("--event-loop", loop) if loop else ()), *extra, str(map_path)]
        self.notify = NotifySocket()
        self.started = 0.0
        #: Seconds from the process start to READY=1.
        self.startup = 0.0

    def start(self, timeout: float = 120.0) -> Server:
        env = {**os.environ, "NOTIFY_SOCKET": self.notify.path}
        with open(self.log_path, "ab") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        self.ps = psutil.Process(self.proc.pid)
        try:
            ready = self.notify.wait_for("READY=1", timeout, self.proc)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"{exc}\n--- {self.log_path} ---\n{self.log()[-2000:]}") from None
        self.startup = ready - self.started
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float | None = None) -> int | None:
        code = super().stop(timeout)
        self.notify.close()
        return code

    def kill(self) -> None:
        super().kill()
        self.notify.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


#: The program number of a legacy rpc.dracd: rpcgen compiles 900101 in.
LEGACY_PROG = 900101


class LegacyServer(_Measured):
    """Any rpc.dracd-compatible binary, started as inetd would start it: fd 0 is a UDP socket
    already bound to 127.0.0.1:port. rpcgen's main() then serves that socket and registers
    nothing with rpcbind, so the benchmark needs no rpcbind and never clashes with a dracd
    registered on 900101. The binary gets the map path as its one argument (DRAC's
    ``rpc.dracd [-i] [-e minutes] [dbfile]``) and, with no allow file, trusts loopback.
    Ready when it answers a NULL call; stopped with SIGTERM (DRAC closes the database)."""

    prog = LEGACY_PROG
    stop_timeout = 30.0

    def __init__(self, binary: Path, map_path: Path, log_path: Path | None = None) -> None:
        self.binary = binary
        self.map_path = map_path
        self.log_path = log_path or map_path.with_name("legacy.log")
        self.port = 0
        self.startup = 0.0

    def start(self, timeout: float = 30.0) -> LegacyServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
            started = time.monotonic()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([str(self.binary), str(self.map_path)], stdin=sock.fileno(),
                                             stdout=log, stderr=log, cwd=self.map_path.parent)
        finally:
            sock.close()
        self.ps = psutil.Process(self.proc.pid)
        null = struct.pack(">IIIIIIIIII", 0x5000_0001, 0, 2, self.prog, 1, 0, 0, 0, 0, 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("127.0.0.1", self.port))
            probe.settimeout(0.05)
            deadline = started + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.binary} exited with {self.proc.returncode} before answering")
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"{self.binary} did not answer a NULL call within {timeout:g} s")
                probe.send(null)
                try:
                    if probe.recv(512)[:4] == null[:4]:
                        break
                except (TimeoutError, ConnectionRefusedError):
                    continue
        self.startup = time.monotonic() - started
        return self
