"""libdrac (contrib/libdrac): legacy libdrac's C API, built with rpcgen and
libtirpc, against the real dracd found through the system rpcbind.

The library is built once per module into a temporary directory. Servers
register a private program number, passed to the library in DRAC_PROGRAM.
The time-budget tests point the library at a program registered for a UDP
socket that never answers, and (in a network namespace) at an rpcbind that
never answers: each call must give up within its budget, never libtirpc's
25 s.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dracclient import rpcbind as rpcb
from tests.fixtures.libdrac import (
    API,
    LIBDRAC_SRC,
    BuildError,
    Call,
    Run,
    build_libdrac,
    parse_lines,
    run_dracauth,
    run_dractest,
)
from tests.fixtures.server import ServerThread, map_keys, private_prog

Make = Callable[..., ServerThread]

pytestmark = pytest.mark.timeout(120)

ADDED = "Server reports add succeeded"
PERM = "Server reports permission denied"


@pytest.fixture(scope="module")
def libdrac(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build directory (make -C contrib/libdrac OUT=...)."""
    try:
        return build_libdrac(tmp_path_factory.mktemp("libdrac"))
    except BuildError as exc:
        pytest.fail(f"cannot build contrib/libdrac (needs make, gcc, rpcgen, libtirpc-dev):\n{exc}")


def unregistered_prog() -> int:
    prog = private_prog()
    assert not [m for m in rpcb.dump() if m.prog == prog], f"private program {prog:#x} is registered"
    return prog


def keys(server: ServerThread) -> set[str]:
    return {k.decode() for k in map_keys(server.config.map.path)}


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed")
    return path


# ---- the build ----


def test_shared_library_soname_symlink_and_exports(libdrac: Path) -> None:
    dynamic = subprocess.run(["readelf", "-d", str(libdrac / "libdrac.so.1")], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    assert "Library soname: [libdrac.so.1]" in dynamic
    assert "Shared library: [libtirpc.so.3]" in dynamic, "the .so must pull in libtirpc itself"
    assert os.readlink(libdrac / "libdrac.so") == "libdrac.so.1"
    exported = subprocess.run(["nm", "-D", "--defined-only", str(libdrac / "libdrac.so.1")],
                              capture_output=True, text=True, timeout=30, check=True).stdout
    names = {line.split()[-1] for line in exported.splitlines() if line.strip()}
    assert names == API, f"exports differ from the API: extra {names - API}, missing {API - names}"


def test_static_archive_defines_only_the_api(libdrac: Path) -> None:
    listing = subprocess.run(["nm", "-g", "--defined-only", str(libdrac / "libdrac.a")],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    names = {line.split()[-1] for line in listing.splitlines() if line.strip() and not line.endswith(":")}
    assert names == API, f"libdrac.a: extra {names - API}, missing {API - names}"


def test_build_leaves_the_source_tree_clean_and_warning_free(tmp_path: Path) -> None:
    before = sorted(p.name for p in LIBDRAC_SRC.iterdir())
    out = tmp_path / "again"
    proc = subprocess.run(["make", "-C", str(LIBDRAC_SRC), f"OUT={out}"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stderr
    assert sorted(p.name for p in LIBDRAC_SRC.iterdir()) == before
    pc = (out / "libdrac.pc").read_text()
    assert "Libs: -L${libdir} -ldrac" in pc and "Libs.private: -ltirpc" in pc
    dest = tmp_path / "dest"
    build_libdrac(out, "install", extra=[f"DESTDIR={dest}", "PREFIX=/usr/local"])
    installed = {str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir()}
    assert {"usr/local/lib/libdrac.a", "usr/local/lib/libdrac.so.1", "usr/local/lib/libdrac.so",
            "usr/local/include/drac.h", "usr/local/bin/dracauth", "usr/local/share/man/man3/dracauth.3",
            "usr/local/share/man/man3/dracsend6.3", "usr/local/lib/pkgconfig/libdrac.pc"} <= installed
    build_libdrac(out, "clean")
    assert not out.exists()


def test_man_page_renders(libdrac: Path) -> None:
    proc = subprocess.run(["man", "--warnings", "-l", str(LIBDRAC_SRC / "dracauth.3")], capture_output=True,
                          text=True, timeout=30, check=False,
                          env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"})
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    text = proc.stdout
    for heading in ("SYNOPSIS", "RETURN VALUE", "ERROR MESSAGES", "TIMEOUTS", "ENVIRONMENT"):
        assert heading in text
    for word in ("dracauth6", "dracdisc6", "dractimeout", "DRAC_TIMEOUT", "DRAC_PROGRAM", "-ldrac"):
        assert word in text


# Programs as the MRAs write them: with the header, and (like the legacy
# UW/Dovecot patches) with their own declarations and no header at all.
WITH_HEADER = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <drac.h>

int main(int argc, char **argv)
{
    struct in6_addr a6;
    char *msg = NULL;
    int rc4, rc6;

    (void)argc;
    dractimeout(1000);
    rc4 = dracauth(argv[1], inet_addr(argv[2]), &msg);
    printf("%d %s\n", rc4, msg);
    inet_pton(AF_INET6, argv[3], &a6);
    rc6 = dracauth6(argv[1], a6.s6_addr, &msg);
    printf("%d %s\n", rc6, msg);
    return rc4 == DRAC_SUCCESS && rc6 == DRAC_SUCCESS ? 0 : 1;
}
"""

LEGACY_STYLE = r"""
#include <arpa/inet.h>
#include <stdio.h>

/* as the Dovecot drac plugin declares them */
int dracauth(const char *, unsigned long, char **);
int dracauth6(const char *host, const unsigned char *userip6, char **errmsg);
/* a program with its own rpcgen code for DRAC must not clash with libdrac */
int xdr_addstat(void) { return 42; }

int main(int argc, char **argv)
{
    struct in6_addr a6;
    char *err = NULL;

    (void)argc;
    if (dracauth(argv[1], inet_addr(argv[2]), &err) != 0) { printf("%s\n", err); return 1; }
    inet_pton(AF_INET6, argv[3], &a6);
    if (dracauth6(argv[1], a6.s6_addr, &err) != 0) { printf("%s\n", err); return 1; }
    printf("%d\n", xdr_addstat());
    return 0;
}
"""


def compile_program(tmp_path: Path, libdrac: Path, name: str, source: str, static: bool) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    binary = tmp_path / name
    link = ([str(libdrac / "libdrac.a"), "-ltirpc"] if static
            else [f"-L{libdrac}", "-ldrac", f"-Wl,-rpath,{libdrac}"])
    proc = subprocess.run(["cc", "-Wall", "-Wextra", "-Werror", f"-I{LIBDRAC_SRC}", "-o", str(binary), str(src),
                           *link], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"cc {name}: {proc.stderr}"
    return binary


@pytest.mark.parametrize("static", [True, False], ids=["static", "shared"])
def test_programs_link_and_add(
    rpcbind: None, make_server: Make, libdrac: Path, tmp_path: Path, static: bool
) -> None:
    server = make_server(rpcbind=True)
    env = {**os.environ, "DRAC_PROGRAM": str(server.config.program)}
    kind = "static" if static else "shared"
    for name, source, v4, v6 in (("with_header", WITH_HEADER, "192.0.2.31", "2001:db8::31"),
                                 ("legacy_style", LEGACY_STYLE, "192.0.2.32", "2001:db8::32")):
        binary = compile_program(tmp_path, libdrac, f"{name}_{kind}", source, static)
        needed = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True,
                                timeout=30, check=True).stdout
        assert ("libdrac.so.1" in needed) != static, needed
        proc = subprocess.run([str(binary), "127.0.0.1", v4, v6], capture_output=True, text=True,
                              timeout=20, env=env, check=False)
        assert proc.returncode == 0, f"{name} ({kind}): {proc.stdout}{proc.stderr}"
        assert {v4, v6} <= keys(server)
    assert "42" in proc.stdout  # the program's own xdr_addstat, not libdrac's


# ---- adding addresses ----


@pytest.mark.parametrize("server_host", ["127.0.0.1", "::1"])
def test_dracauth_and_dracauth6_add(rpcbind: None, make_server: Make, libdrac: Path, server_host: str) -> None:
    server = make_server(rpcbind=True)
    prog = server.config.program
    tag = 1 if server_host == "127.0.0.1" else 2
    v4, v6 = f"192.0.2.{40 + tag}", f"2001:db8::4{tag}"
    run = run_dracauth(libdrac, server_host, v4, prog=prog)
    assert (run.returncode, parse_lines(run.stdout)) == (0, [Call("dracauth", v4, 0, ADDED)]), run
    run = run_dracauth(libdrac, server_host, v6, prog=prog)
    assert (run.returncode, parse_lines(run.stdout)) == (0, [Call("dracauth6", v6, 0, ADDED)]), run
    # an IPv4-mapped address goes as the IPv4 address the MTA sees
    run = run_dracauth(libdrac, server_host, f"::ffff:192.0.2.{50 + tag}", prog=prog)
    assert run.returncode == 0, run
    assert {v4, v6, f"192.0.2.{50 + tag}"} <= keys(server)


@pytest.mark.parametrize("server_host", ["127.0.0.1", "::1"])
def test_dracconn_dracsend_dracdisc_add_several(
    rpcbind: None, make_server: Make, libdrac: Path, server_host: str
) -> None:
    server = make_server(rpcbind=True)
    v4s = [f"198.51.100.{i}" for i in range(1, 6)]
    v6s = [f"2001:db8:1::{i}" for i in range(1, 5)] + ["2001:db8:ffee::b8:ff"]  # bytes > 0x7f too
    run = run_dracauth(libdrac, server_host, *v4s, *v6s, "::ffff:198.51.100.77", prog=server.config.program)
    assert run.returncode == 0, run
    expected = (
        [Call("dracconn", server_host, 0, "Connect succeeded"), Call("dracconn6", server_host, 0, "Connect succeeded")]
        + [Call("dracsend", a, 0, ADDED) for a in v4s]
        + [Call("dracsend6", a, 0, ADDED) for a in [*v6s, "::ffff:198.51.100.77"]]
        + [Call("dracdisc", server_host, 0, "Disconnect succeeded"),
           Call("dracdisc6", server_host, 0, "Disconnect succeeded")]
    )
    assert parse_lines(run.stdout) == expected
    assert {*v4s, *v6s, "198.51.100.77"} <= keys(server)


def test_legacy_misuse_answers_not_connected(libdrac: Path) -> None:
    run = run_dractest(libdrac, "unconnected")
    assert (run.returncode, run.stdout) == (0, "OK unconnected\n"), run


def test_conn_disc_cycles_and_threads_leak_nothing(rpcbind: None, make_server: Make, libdrac: Path) -> None:
    server = make_server(rpcbind=True)
    prog = server.config.program
    run = run_dractest(libdrac, "cycles", "127.0.0.1", "100", "203.0.113.1", "2001:db8:2::1", prog=prog)
    assert run.returncode == 0 and run.stdout.startswith("OK cycles 100"), run
    run = run_dractest(libdrac, "threads", "::1", "40", prog=prog)
    assert (run.returncode, run.stdout) == (0, "OK threads 40\n"), run
    assert {"192.0.2.40", "2001:db8::28"} <= keys(server)


# libtirpc 1.3 itself loses a few bytes in each rpcbind lookup (16 for the
# address, 1 for an empty answer); the patterns are narrow on purpose, so a
# leaked client handle (also allocated under clnt_tp_create_timed) still counts.
VALGRIND_SUPPRESSIONS = """
{
   libtirpc-rpcbind-lookup-netbuf
   Memcheck:Leak
   match-leak-kinds: definite
   fun:calloc
   obj:*libtirpc.so*
   obj:*libtirpc.so*
   fun:clnt_tp_create_timed
}
{
   libtirpc-rpcbind-lookup-empty-uaddr
   Memcheck:Leak
   match-leak-kinds: definite
   fun:calloc
   fun:xdr_string
   ...
   fun:clnt_tp_create_timed
}
"""


def test_valgrind_finds_no_leak_or_error_of_ours(
    rpcbind: None, make_server: Make, libdrac: Path, tmp_path: Path
) -> None:
    server = make_server(rpcbind=True)
    supp = tmp_path / "libtirpc.supp"
    supp.write_text(VALGRIND_SUPPRESSIONS)
    wrapper = [tool("valgrind"), "-q", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
               f"--suppressions={supp}", "--error-exitcode=99"]
    for args in (("cycles", "127.0.0.1", "10", "203.0.113.2", "2001:db8:2::2"), ("threads", "::1", "8"),
                 ("unconnected",)):
        run = run_dractest(libdrac, *args, prog=server.config.program, wrapper=wrapper, timeout=90)
        assert run.returncode == 0 and run.stdout.startswith("OK"), f"{args[0]}: {run.stdout}{run.stderr}"
    # the failure paths: program not registered (-1, exit 2), refused address (3, exit 1)
    for prog, expected in ((unregistered_prog(), 2), (server.config.program, 1)):
        run = run_dracauth(libdrac, "127.0.0.1", "192.0.2.99", "2001:db8::99", "0.0.0.0", prog=prog,
                           wrapper=wrapper, timeout=90)
        assert run.returncode == expected and not run.stderr, f"{prog:#x}: {run.stdout}{run.stderr}"


def test_refused_caller_gets_add_perm(rpcbind: None, make_server: Make, libdrac: Path, tmp_path: Path) -> None:
    (tmp_path / "dracd.allow").write_text("255.255.255.255 127.0.0.9\n")
    server = make_server(rpcbind=True)
    prog = server.config.program
    run = run_dracauth(libdrac, "127.0.0.1", "192.0.2.60", prog=prog)
    assert (run.returncode, parse_lines(run.stdout)) == (1, [Call("dracauth", "192.0.2.60", 1, PERM)]), run
    run = run_dracauth(libdrac, "::1", "2001:db8::60", prog=prog)
    assert (run.returncode, parse_lines(run.stdout)) == (1, [Call("dracauth6", "2001:db8::60", 1, PERM)]), run
    run = run_dracauth(libdrac, "127.0.0.1", "192.0.2.61", "2001:db8::61", prog=prog)
    sends = [c for c in parse_lines(run.stdout) if c.function.startswith("dracsend")]
    assert run.returncode == 1 and [(c.result, c.message) for c in sends] == [(1, PERM)] * 2, run
    assert not keys(server) & {"192.0.2.60", "2001:db8::60", "192.0.2.61", "2001:db8::61"}


# ---- time budgets ----


def test_unregistered_program_fails_within_the_budget(rpcbind: None, libdrac: Path) -> None:
    prog = unregistered_prog()
    for drac_timeout, limit in ((None, 2.5), ("0.5", 0.8)):
        for server_host, address in (("127.0.0.1", "192.0.2.70"), ("::1", "2001:db8::70")):
            run = run_dracauth(libdrac, server_host, address, prog=prog, drac_timeout=drac_timeout)
            (call,) = parse_lines(run.stdout)
            assert run.returncode == 2 and call.result == -1, run
            assert call.message == f"{server_host}: RPC: Program not registered", run
            assert run.elapsed < limit, f"{run.elapsed:.2f} s with DRAC_TIMEOUT={drac_timeout}"
        run = run_dracauth(libdrac, "127.0.0.1", "192.0.2.71", "2001:db8::71", prog=prog, drac_timeout=drac_timeout)
        assert [c.result for c in parse_lines(run.stdout)] == [-1, -1], run
        assert run.elapsed < limit


@pytest.fixture
def silent_program(rpcbind: None) -> Iterator[tuple[int, socket.socket]]:
    """A private program registered (versions 1 and 2, udp and udp6) for UDP
    sockets that receive and never answer; yields (prog, the IPv4 socket)."""
    prog = unregistered_prog()
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    done: list[tuple[int, str]] = []
    try:
        s4.bind(("127.0.0.1", 0))
        s6.bind(("::1", 0))
        for vers in (1, 2):
            for netid, sock, host in (("udp", s4, "127.0.0.1"), ("udp6", s6, "::1")):
                uaddr = rpcb.format_uaddr(host, sock.getsockname()[1])
                assert rpcb.register(prog, vers, netid, uaddr), f"rpcbind refused {prog:#x} {vers} {netid}"
                done.append((vers, netid))
        yield prog, s4
    finally:
        for vers, netid in done:
            rpcb.unregister(prog, vers, netid)
        s4.close()
        s6.close()


def test_silent_server_costs_at_most_the_budget(silent_program: tuple[int, socket.socket], libdrac: Path) -> None:
    prog, s4 = silent_program
    cases: dict[str, tuple[Callable[[], Run], float, float]] = {
        # name: (run, at least, at most) seconds
        "default v4": (lambda: run_dracauth(libdrac, "127.0.0.1", "192.0.2.80", prog=prog), 1.9, 2.5),
        "default v6": (lambda: run_dracauth(libdrac, "::1", "2001:db8::80", prog=prog), 1.9, 2.5),
        "DRAC_TIMEOUT=0.5": (lambda: run_dracauth(libdrac, "127.0.0.1", "192.0.2.81", prog=prog,
                                                  drac_timeout="0.5"), 0.45, 0.8),
        "DRAC_TIMEOUT=0.5 v6": (lambda: run_dracauth(libdrac, "::1", "2001:db8::81", prog=prog,
                                                     drac_timeout="0.5"), 0.45, 0.8),
        "dractimeout wins": (lambda: run_dracauth(libdrac, "127.0.0.1", "192.0.2.82", prog=prog,
                                                  set_timeout=0.3, drac_timeout="5"), 0.25, 0.6),
        "bad DRAC_TIMEOUT": (lambda: run_dracauth(libdrac, "127.0.0.1", "192.0.2.83", prog=prog,
                                                  drac_timeout="0,5"), 1.9, 2.5),
        "conn v4+v6": (lambda: run_dracauth(libdrac, "::1", "192.0.2.84", "2001:db8::84", prog=prog,
                                            drac_timeout="0.5"), 0.9, 1.6),
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(fn) for name, (fn, _, _) in cases.items()}
        runs = {name: future.result() for name, future in futures.items()}
    for name, run in runs.items():
        _, low, high = cases[name]
        assert low <= run.elapsed < high, f"{name}: {run.elapsed:.2f} s, want {low}..{high}: {run}"
        calls = parse_lines(run.stdout)
        assert run.returncode == 2, f"{name}: {run}"
        if name.startswith("conn"):
            assert [(c.function, c.result) for c in calls] == [
                ("dracconn", 0), ("dracconn6", 0), ("dracsend", -2), ("dracsend6", -2),
                ("dracdisc", 0), ("dracdisc6", 0)], run
        else:
            (call,) = calls
            assert call.result == -2 and call.message.startswith("call failed: RPC: Timed out ("), run
    # UDP requests are retransmitted within the budget (every quarter of it)
    s4.settimeout(0.2)
    received = 0
    try:
        while True:
            s4.recv(2048)
            received += 1
    except TimeoutError:
        pass
    assert received >= 2 * 5, f"only {received} datagrams reached the silent server"


NAMESPACE_DRIVER = textwrap.dedent("""
    import json, os, socket, subprocess, sys, time
    dracauth = sys.argv[1]
    # a private /run hides the system rpcbind's unix socket; only lo exists
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    silent = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((host, 111))
        silent.append(s)
    results = []
    for timeout, server, address in ((None, "127.0.0.1", "192.0.2.90"), ("0.5", "127.0.0.1", "192.0.2.91"),
                                     ("0.5", "::1", "2001:db8::91")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRAC_")}
        if timeout:
            env["DRAC_TIMEOUT"] = timeout
        start = time.monotonic()
        proc = subprocess.run([dracauth, server, address], capture_output=True, text=True, env=env, timeout=60)
        results.append([timeout, server, time.monotonic() - start, proc.returncode, proc.stdout])
    print(json.dumps(results))
""")


def test_silent_rpcbind_costs_at_most_the_budget(libdrac: Path) -> None:
    """In a network namespace whose rpcbind port receives and never answers,
    the lookup (clnt_create's part) is bounded too; program 900101 itself."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (unshare --net --mount)")
    proc = subprocess.run([tool("unshare"), "--net", "--mount", "--", sys.executable, "-c", NAMESPACE_DRIVER,
                           str(libdrac / "dracauth")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"})
    assert proc.returncode == 0, proc.stderr
    for timeout, server, elapsed, returncode, stdout in json.loads(proc.stdout):
        low, high = (1.9, 2.5) if timeout is None else (0.45, 0.8)
        assert low <= elapsed < high, f"DRAC_TIMEOUT={timeout} {server}: {elapsed:.2f} s"
        (call,) = parse_lines(stdout)
        assert returncode == 2 and call.result == -1, stdout
        assert call.message.startswith(f"{server}: RPC: Timed out ("), stdout
