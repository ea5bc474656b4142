"""Dovecot's authentication policy server: logins reported over HTTP authorize their client.

Dovecot's auth process (2.2.27 and later, 2.3, 2.4) POSTs a JSON object to
``auth_policy_server_url`` with ``?command=allow`` (before or after checking a
password: may this login go on?) and ``?command=report`` (after it: how it
went). The object holds what ``auth_policy_request_attributes`` names; the
default has ``remote`` (the client's address, ``%{rip}``), ``protocol``,
``login``, ``pwhash``, ``session_id``, and Dovecot adds ``tls`` and, to a report,
``success`` and ``policy_reject``. The answer is ``{"status":0,"msg":""}``:
status 0 is "carry on" to ``allow``; Dovecot ignores the answer to a report.

Here:

- ``report`` with ``"success": true`` and a ``remote`` address is an ADD of that
  address by the HTTP client, through ``DracService.add``: the allow list (or, on
  a UNIX socket, the admin policy), tcp_wrappers, the rate limit, the address
  checks, the lifetime, the log line and the metrics of any ADD (transport
  ``dovecot``); the answer waits for the map to hold it. An IPv4-mapped remote
  is added as IPv4.
- ``allow``, and a report of a failed login, change nothing and are answered
  ``{"status":0,"msg":""}`` at once: dracd never refuses or slows a login.
- Every request must carry ``Authorization: Bearer SECRET`` (Dovecot:
  ``auth_policy_server_api_header``), SECRET being the first line of
  ``dovecot_policy.secret_file`` (re-read on SIGHUP); otherwise 401 and nothing
  changes, so a local user who can reach the port cannot authorize an address.
- Anything else is answered, never crashes: 405 for a method but POST, 404 for a
  command but allow and report, 400 for a body that is not a JSON object or a
  remote that is not an address, 413/431 for oversized requests (http.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from dracclient.drac import DRACPROC_ADD, AddStat, version_for
from dracclient.rpc import AUTH_NONE, Call

from ..config import ConfigError, DovecotPolicyConfig
from ..config.values import SocketmapSpec, parse_spec
from ..keys import IPAddress, canonical
from ..ratelog import RateLimitedLog
from ..server.dispatch import PENDING, CallContext, PeerCred, Pending, Respond
from ..server.http import HTTP, HttpReply, HttpRequest, json_reply
from ..server.stream import StreamLimits, StreamServer
from ..server.transport import bind_endpoint
from .drac import DracService

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

TRANSPORT = "dovecot"
#: The answer that lets every login go on (to allow; a report's answer is ignored).
CARRY_ON = json_reply(200, {"status": 0, "msg": ""})
#: Secrets shorter than this are refused: the port may be reachable by every local user.
MIN_SECRET = 16
MAX_SECRET = 4096


def read_secret(path: Path) -> bytes:
    """The first line of ``path``, stripped; ConfigError if unusable."""
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            text = file.read(MAX_SECRET + 1)
    except OSError as exc:
        raise ConfigError(f"dovecot_policy.secret_file {path}: {exc.strerror}") from None
    secret = text.split(b"\n", 1)[0].strip()
    if len(secret) < MIN_SECRET or len(secret) > MAX_SECRET or not secret.isascii() or b" " in secret:
        raise ConfigError(f"dovecot_policy.secret_file {path}: expected one line of {MIN_SECRET} to "
                          f"{MAX_SECRET} printable ASCII characters without blanks (e.g. openssl rand -hex 32)")
    if info.st_mode & stat.S_IROTH:
        log.warning("dovecot_policy.secret_file %s is readable by every user: chmod o-r it", path)
    return secret


def check_config(config: DovecotPolicyConfig) -> str:
    """What --check-config says of dovecot_policy; ConfigError if it cannot start."""
    if config.secret_file is None:
        raise ConfigError("dovecot_policy needs secret_file: (the Bearer secret Dovecot sends, "
                          "auth_policy_server_api_header)")
    read_secret(config.secret_file)
    return f"Dovecot auth policy server on {config.listen}, secret from {config.secret_file}"


def _unauthorized(why: str) -> HttpReply:
    return json_reply(401, {"error": "Unauthorized", "detail": why},
                      headers=((b"www-authenticate", b'Bearer realm="dracd"'),))


def _bad(status: int, why: str, *headers: tuple[bytes, bytes]) -> HttpReply:
    return json_reply(status, {"error": status, "detail": why}, headers=headers)


class DovecotPolicy:
    """The auth policy endpoint of one daemon: ADDs through ``service``."""

    def __init__(self, service: DracService, config: DovecotPolicyConfig, limits: StreamLimits,
                 program: int) -> None:
        check_config(config)
        assert config.secret_file is not None
        self.service = service
        self.config = config
        self.limits = limits
        self.program = program
        self.secret = read_secret(config.secret_file)
        self.spec = parse_spec(config.listen)
        self.bound: SocketmapSpec | None = None
        self.server: StreamServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def reload(self, config: DovecotPolicyConfig | None) -> None:
        """SIGHUP: the secret file is read again (a bad one keeps the old secret, logged).
        A new listen: or secret_file: path needs a restart."""
        if config is None or config.secret_file is None:
            return
        try:
            secret = read_secret(config.secret_file)
        except ConfigError as exc:
            log.error("reload: %s; keeping the previous secret", exc)
            return
        if secret != self.secret:
            log.info("reload: new dovecot_policy secret from %s", config.secret_file)
        self.secret = secret

    # Serving

    async def start(self) -> None:
        sock, self.bound = bind_endpoint(self.spec)
        self.server = await StreamServer(sock, self.handle, HTTP, self.limits).start()
        log.info("Dovecot auth policy server on %s", self.bound)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening; reports being added finish (bounded), then every connection closes."""
        server, self.server = self.server, None
        if server is None:
            return
        server.close()
        await server.drain(timeout)
        server.sock.close()
        for task in list(self._tasks):
            task.cancel()
        if self.spec.kind == "unix" and self.spec.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.spec.path)

    @property
    def url(self) -> str:
        """auth_policy_server_url for Dovecot (inet endpoints)."""
        assert self.bound is not None and self.bound.kind == "inet"
        host = f"[{self.bound.host}]" if ":" in self.bound.host else self.bound.host
        return f"http://{host}:{self.bound.port}/"

    # Requests

    def handle(self, message: bytes, caller: IPAddress | None, port: int, transport: str,
               cred: PeerCred | None, respond: Respond) -> bytes | Pending | None:
        try:
            return self._handle(message, caller, port, cred, respond)
        except Exception as exc:  # noqa: BLE001 - one bad request must not cost the connection
            limited.error("dovecot-error", "Dovecot policy request from %s failed", caller or cred, exc_info=exc)
            return _bad(500, "internal error")

    def _handle(self, request: bytes, caller: IPAddress | None, port: int, cred: PeerCred | None,
                respond: Respond) -> bytes | Pending:
        assert isinstance(request, HttpRequest)
        who = caller if caller is not None else cred
        refused = self._unauthorized(request)
        if refused is not None:
            limited.warning(f"dovecot-401-{who}", "Dovecot policy request from %s refused: %s", who, refused)
            return _unauthorized(refused)
        if request.method != b"POST":
            return _bad(405, "only POST", (b"allow", b"POST"))
        try:
            target = request.target.decode("ascii")
            commands = parse_qs(urlsplit(target).query).get("command", [])
        except (UnicodeDecodeError, ValueError):
            return _bad(400, "bad request target")
        if len(commands) != 1 or commands[0] not in ("allow", "report"):
            return _bad(404, "expected ?command=allow or ?command=report")
        try:
            document = json.loads(request)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return _bad(400, f"body is not JSON: {exc}"[:200])
        if not isinstance(document, dict):
            return _bad(400, "body is not a JSON object")
        if commands[0] == "allow" or document.get("success") is not True:
            return CARRY_ON
        remote = document.get("remote")
        if not isinstance(remote, str) or not remote:
            limited.warning("dovecot-no-remote", "Dovecot reported a login without remote (add remote=%%{rip} "
                            "to auth_policy_request_attributes): nothing to authorize")
            return CARRY_ON
        try:
            address = canonical(ipaddress.ip_address(remote.split("%", 1)[0]))
        except ValueError:
            return _bad(400, "remote is not an IP address")
        ctx = CallContext(caller, port, TRANSPORT, self._call(address), cred, respond)
        task = asyncio.get_running_loop().create_task(self._add(address, ctx))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return PENDING

    def _unauthorized(self, request: HttpRequest) -> str | None:
        header = request.headers.get(b"authorization")
        if header is None:
            return "no Authorization header"
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return "Authorization is not Bearer"
        if not hmac.compare_digest(token.strip(), self.secret):
            return "wrong Bearer secret"
        return None

    def _call(self, address: IPAddress) -> Call:
        """What the ADD's log line and metrics need to know of a call."""
        return Call(0, self.program, version_for(address), DRACPROC_ADD, AUTH_NONE, AUTH_NONE, b"")

    async def _add(self, address: IPAddress, ctx: CallContext) -> None:
        try:
            stat = await self.service.add(address, ctx)
        except Exception as exc:  # noqa: BLE001 - answered, logged once a minute
            limited.error("dovecot-add", "ADD %s from %s failed", address, ctx, exc_info=exc)
            stat = AddStat.ADD_SYSERR
        ctx.respond(CARRY_ON if stat is AddStat.ADD_SUCCESS else json_reply(200, {"status": 0, "msg": stat.name}))
