"""Bind a syslog datagram socket and write each datagram, untouched, as one line (capture helper).

    receiver.py SOCKET OUTFILE

Runs until SIGTERM. A datagram holding a newline would not fit the
one-per-line file, so it is reported and written hex-escaped instead.
"""

from __future__ import annotations

import os
import signal
import socket
import sys


def main(path: str, out: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o666)  # servers log after dropping root
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(out, "ab", buffering=0) as f:
        while True:
            data = sock.recv(65536)
            if b"\n" in data:
                print(f"receiver: a datagram holds a newline: {data!r}", file=sys.stderr)
                data = data.hex().encode()
            f.write(data + b"\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
