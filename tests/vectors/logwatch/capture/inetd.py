"""A one-service inetd (capture helper): accept on ADDRESS PORT, run PROGRAM with the connection as stdin/stdout.

    inetd.py ADDRESS PORT PROGRAM [ARG...]
"""

from __future__ import annotations

import socket
import subprocess
import sys


def main(address: str, port: str, command: list[str]) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address, int(port)))
        server.listen()
        while True:
            conn, _ = server.accept()
            with conn:
                subprocess.Popen(command, stdin=conn, stdout=conn, close_fds=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
