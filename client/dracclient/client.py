"""The client API that MRA hooks call after a successful login: :func:`add`
and :func:`ping` (blocking; :mod:`dracclient.aio` has the asyncio twins).

This module also holds what both versions share: argument checking, the
addstat check, and how per-server outcomes become a result list or an
exception. Only the I/O differs between the two.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from . import rpcbind
from .drac import (
    DRACPROC_ADD,
    DRACPROC_NULL,
    DRACPROG,
    AddStat,
    IPAddress,
    canonical,
    decode_addstat,
    encode_add_args,
    version_for,
)
from .errors import (
    BadReply,
    DracError,
    InvalidRequest,
    PermissionRefused,
    RpcTimeout,
    ServerError,
    ServerResult,
    Unavailable,
)
from .rpccall import Deadline, call, seconds
from .xdr import XdrError

StreamOrDatagram = Literal["udp", "tcp"]
#: How long past the deadline ``add()`` waits for a server's thread before giving up on it.
_JOIN_GRACE = 1.0


@dataclass(frozen=True)
class AddRequest:
    """Validated arguments of ``add()``: what to send, and to whom."""

    address: IPAddress
    vers: int
    args: bytes
    targets: tuple[tuple[str, str], ...]  # (server as given, IP literal to contact), in the order given


def server_host(server: str) -> str:
    """The IP address to contact for ``server``.

    ``server`` is an IPv4 or IPv6 literal, or ``localhost``, which means
    127.0.0.1 without asking the resolver. Host names are refused: resolving
    one could stall a login beyond any timeout, and send DNS queries.
    """
    if server.lower() == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(server))
    except ValueError:
        raise ValueError(f"server {server!r} is not an IP address (or 'localhost'); host names are not resolved") \
            from None


def add_address(address: str | IPAddress) -> IPAddress:
    """The address to authorize; IPv4-mapped IPv6 becomes IPv4. Raises ValueError."""
    return canonical(ipaddress.ip_address(address))


def check_options(
    *, timeout: float, retries: int | None, transport: str, port: int | None, prog: int, vers: int = 1
) -> None:
    """Raise ValueError for options no call could use (before any traffic)."""
    Deadline(timeout)  # validates the timeout
    if retries is not None and (not isinstance(retries, int) or retries < 0):
        raise ValueError(f"retries must be None or a non-negative integer, not {retries!r}")
    if transport not in ("udp", "tcp"):
        raise ValueError(f"transport must be 'udp' or 'tcp', not {transport!r}")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    if not (0 <= prog < 1 << 32 and 0 <= vers < 1 << 32):
        raise ValueError(f"program {prog} version {vers} out of range")


def prepare_add(
    address: str | IPAddress, servers: str | Sequence[str], *, timeout: float, retries: int | None,
    transport: str, port: int | None, prog: int,
) -> AddRequest:
    """Check every argument of ``add()``; raises ValueError before any traffic."""
    addr = add_address(address)
    names = (servers,) if isinstance(servers, str) else tuple(servers)
    if not names:
        raise ValueError("no server given")
    targets = tuple((name, server_host(name)) for name in names)
    check_options(timeout=timeout, retries=retries, transport=transport, port=port, prog=prog)
    return AddRequest(addr, version_for(addr), encode_add_args(addr), targets)


def dracd_peer(server: str) -> str:
    return f"dracd on {server}"


def rpcbind_peer(server: str) -> str:
    return f"rpcbind on {server}"


def not_registered(server: str, prog: int, vers: int, transport: str) -> Unavailable:
    return Unavailable(f"cannot reach {dracd_peer(server)}: program {prog} version {vers} ({transport}) "
                       "is not registered with rpcbind")


def addstat_error(results: bytes, server: str, address: IPAddress) -> DracError | None:
    """None if the ADD results say ADD_SUCCESS, else the error to report."""
    try:
        stat = decode_addstat(results)
    except XdrError as exc:
        return BadReply(f"bad ADD result from {dracd_peer(server)}: {exc}")
    if stat == AddStat.ADD_SUCCESS:
        return None
    if stat == AddStat.ADD_PERM:
        return PermissionRefused(f"{server} refused this host (ADD_PERM): check dracd.allow")
    if stat == AddStat.ADD_UNKOWN:
        return InvalidRequest(f"{server} rejected {address} (ADD_UNKOWN): not a unicast host address")
    return ServerError(f"{server} could not record {address} ({stat.name}): see dracd's log")


def finish(results: list[ServerResult]) -> list[ServerResult]:
    """``results`` if any server succeeded; otherwise raise the first server's
    error with ``results`` attached as its ``.results``."""
    if any(result.ok for result in results):
        return results
    error = results[0].error
    assert error is not None
    error.results = results
    raise error


def _endpoint(
    server: str, host: str, vers: int, transport: StreamOrDatagram, port: int | None, prog: int, deadline: Deadline
) -> tuple[str, int]:
    if port is not None:
        return host, port
    found = rpcbind.lookup(prog, vers, host, transport, deadline=deadline, peer=rpcbind_peer(server))
    if found is None:
        raise not_registered(server, prog, vers, transport)
    return found


def add(
    address: str | IPAddress,
    *,
    servers: str | Sequence[str] = "localhost",
    timeout: float = 5.0,
    retries: int | None = None,
    transport: StreamOrDatagram = "udp",
    port: int | None = None,
    prog: int = DRACPROG,
    source: tuple[str, int] | None = None,
) -> list[ServerResult]:
    """Authorize ``address`` for relaying on one or more DRAC servers.

    The protocol version follows the address family (1 for IPv4, 2 for
    IPv6; an IPv4-mapped IPv6 address goes as IPv4). ``servers`` are IP
    literals or ``localhost``. Without ``port`` each server's rpcbind is
    asked (GETADDR, then portmap GETPORT). ``timeout`` is one deadline for
    the whole call, lookup included; over UDP the call is retransmitted with
    a doubling interval, at most ``retries`` times (None: until the
    deadline). ``source`` binds the local end of the DRAC call.

    Several servers are called concurrently, each within the same deadline,
    so a dead one delays nobody. Returns one :class:`ServerResult` per
    server, in the order given, **if at least one server took the address**;
    if none did, raises the first server's :class:`DracError` with the full
    list as its ``results`` attribute. With a single server this means:
    returns on success, raises on failure. Raises ValueError for a bad
    address, server or option, before any traffic.
    """
    request = prepare_add(address, servers, timeout=timeout, retries=retries, transport=transport, port=port,
                          prog=prog)
    deadline = Deadline(timeout)

    def one(server: str, host: str) -> None:
        endpoint = _endpoint(server, host, request.vers, transport, port, prog, deadline)
        results = call(endpoint, prog, request.vers, DRACPROC_ADD, request.args, transport=transport,
                       deadline=deadline, retries=retries, source=source, peer=dracd_peer(server))
        if (error := addstat_error(results, server, request.address)) is not None:
            raise error

    jobs = [(server, functools.partial(one, server, host)) for server, host in request.targets]
    return finish(_run_all(jobs, deadline))


def _outcome(server: str, job: Callable[[], None]) -> ServerResult:
    try:
        job()
    except DracError as exc:
        return ServerResult(server, exc)
    return ServerResult(server)


def _run_all(jobs: Sequence[tuple[str, Callable[[], None]]], deadline: Deadline) -> list[ServerResult]:
    """Run one job per server, concurrently (in threads) if there are several."""
    if len(jobs) == 1:
        return [_outcome(*jobs[0])]
    outcomes: list[ServerResult | BaseException | None] = [None] * len(jobs)

    def run(index: int) -> None:
        try:
            outcomes[index] = _outcome(*jobs[index])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"dracclient-{jobs[i][0]}", daemon=True)
               for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline.remaining() + _JOIN_GRACE)
    results = []
    for (server, _), outcome in zip(jobs, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            raise outcome
        timed_out = RpcTimeout(f"cannot reach {dracd_peer(server)}: timed out after {seconds(deadline.timeout)} s")
        results.append(outcome if outcome is not None else ServerResult(server, timed_out))
    return results


def ping(
    server: str = "localhost",
    *,
    vers: int = 1,
    timeout: float = 5.0,
    transport: StreamOrDatagram = "udp",
    port: int | None = None,
    prog: int = DRACPROG,
) -> float:
    """Call the NULL procedure of ``server`` and return its round trip in seconds
    (the rpcbind lookup, if any, is not counted in it but shares the deadline).
    Raises like a single-server :func:`add` if the server does not answer."""
    host = server_host(server)
    check_options(timeout=timeout, retries=None, transport=transport, port=port, prog=prog, vers=vers)
    deadline = Deadline(timeout)
    endpoint = _endpoint(server, host, vers, transport, port, prog, deadline)
    started = time.monotonic()
    call(endpoint, prog, vers, DRACPROC_NULL, transport=transport, deadline=deadline, peer=dracd_peer(server))
    return time.monotonic() - started
