"""Log in to a POP3/IMAP server from a chosen source address (capture helper, not a test).

    client.py KIND HOST PORT SOURCE USER PASSWORD

KIND: pop-user (USER/PASS), pop-apop, pop-auth-plain, imap-login,
imap-auth-plain. Exit status 0 if the server accepted the login, 1 if it
refused it (a refused login is wanted too: the failure line).
"""

from __future__ import annotations

import base64
import imaplib
import poplib
import socket
import sys
from typing import Any

TIMEOUT = 10.0


class SourcePOP3(poplib.POP3):
    def __init__(self, host: str, port: int, source: str) -> None:
        self.source = source
        super().__init__(host, port, timeout=TIMEOUT)

    def _create_socket(self, timeout: Any) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


class SourceIMAP4(imaplib.IMAP4):
    def __init__(self, host: str, port: int, source: str) -> None:
        self.source = source
        super().__init__(host, port, timeout=TIMEOUT)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


def plain(user: str, password: str) -> bytes:
    return f"\0{user}\0{password}".encode()


def close(goodbye: Any) -> None:
    """Say goodbye; a server that already hung up (after a refused login) is fine."""
    try:
        goodbye()
    except (OSError, poplib.error_proto, imaplib.IMAP4.error):
        pass


def pop(kind: str, host: str, port: int, source: str, user: str, password: str) -> None:
    client = SourcePOP3(host, port, source)
    try:
        if kind == "pop-user":
            client.user(user)
            client.pass_(password)
        elif kind == "pop-apop":
            client.apop(user, password)
        else:
            client._shortcmd("AUTH PLAIN")
            client._shortcmd(base64.b64encode(plain(user, password)).decode())
        client.stat()
    finally:
        close(client.quit)


def imap(kind: str, host: str, port: int, source: str, user: str, password: str) -> None:
    client = SourceIMAP4(host, port, source)
    try:
        if kind == "imap-login":
            client.login(user, password)
        else:
            client.authenticate("PLAIN", lambda _: plain(user, password))
        client.select("INBOX")
    finally:
        close(client.logout)


def main(argv: list[str]) -> int:
    kind, host, port, source, user, password = argv
    try:
        (pop if kind.startswith("pop") else imap)(kind, host, int(port), source, user, password)
    except (poplib.error_proto, imaplib.IMAP4.error) as e:
        print(f"{kind} {source}: refused: {e}", file=sys.stderr)
        return 1
    print(f"{kind} {source}: logged in", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
