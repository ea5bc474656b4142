"""The Debian packages (issue 18), installed the way an admin installs them, in clean Debian 12 roots.

tests/fixtures/debroot.py builds the packages from the working tree (tools/build-deb,
as `make deb`) and a cached ``debootstrap --variant=minbase bookworm`` root from this
host's configured mirror. Each scenario runs in fresh network, mount and PID namespaces
(loopback only: apt installs from the root's cache, nothing leaves the machine), on
overlays of that root, driven by this file run as a script:

* lifecycle, on root "server" (and root "client"):
  1. ``apt-get install ./dist/deb/*.deb`` (dependencies from Debian, nothing from PyPI),
     rpcbind and dracd started as dracd.service starts it, ``dracctl add``, ``postmap -q``;
  5. python3-dracclient and dracd-logwatch alone in root "client": ``dracctl -s`` adds to
     the server's dracd; neither bsddb3 nor dracd is importable there;
  3. an upgrade to the same packages with a newer Debian revision, dracd running: no
     conffile prompt (apt-get without --force-conf*, stdin /dev/null) and no .dpkg-*
     file; the table and the map survive the restart that follows;
  4. ``apt-get remove dracd``: the daemon is stopped, the map kept; ``apt-get purge``:
     /etc/dracd and the user dracd removed, /etc/drac/dracd.db kept (README.Debian).
* drac, on root "drac": 2. a stand-in for Debian's drac 1.12-8 installed, its allow file
  edited by the admin, a map and hosts.allow/hosts.deny rules for dracd written; then
  dracd installed over it: drac removed (its conffile kept), the allow file unchanged
  and used, the map reloaded, hosts.deny honoured.
* bsddb3, on root "bsddb3": tests/test_maps.py on the installed dracd with Debian's
  python3-bsddb3 and pytest (the venv runs it on PyPI's berkeleydb), and dracd serving
  on bookworm's python3-uvloop.

The packages are built before the first scenario (~10 s each, two of them) and the base
root made when missing (debootstrap and downloads, the one step that uses the network).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.debroot import REPO, DebRootError, Root, base_root, build_debs, stub_drac, wait_gone
from tests.fixtures.namespace import drive, run_driver

pytestmark = pytest.mark.timeout(1800)

#: The allow file drac shipped, and the admin's edit of it (127.0.0.4: allowed here, denied by hosts.deny).
DRAC_ALLOW = "# /etc/drac/dracd.allow: who may add (NETMASK NETADDR)\n255.255.255.255 127.0.0.1\n"
ADMIN_ALLOW = DRAC_ALLOW + "255.255.255.255 127.0.0.2 pop.example.org\n255.255.255.255 127.0.0.4\n"
HOSTS_ALLOW = "dracd: 127.0.0.1 127.0.0.2\n"
HOSTS_DENY = "dracd: ALL\n"
#: What each caller asks to add, and what it must get.
CALLERS = {"127.0.0.2": ("192.0.2.62", "ok"), "127.0.0.3": ("192.0.2.63", "PermissionRefused"),
           "127.0.0.4": ("192.0.2.64", "PermissionRefused")}
#: An entry drac's rpc.dracd left in its map.
DRAC_ENTRY = "192.0.2.50"
MAP = "/etc/drac/dracd.db"


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The packages (this tree's, and a rebuild with Debian revision 99), the drac stand-in and the base root."""
    try:
        current = build_debs()
        newer = build_debs(99)
        stub = stub_drac(tmp_path_factory.mktemp("drac"), DRAC_ALLOW)
        base = base_root(current)
    except DebRootError as exc:
        pytest.fail(str(exc))
    return {"current": [str(p) for p in current], "newer": [str(p) for p in newer], "stub": str(stub),
            "base": str(base)}


def run_scenario(name: str, packages: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """One scenario in fresh namespaces; its result. Its roots' changes (a few hundred MB
    each) are deleted once it succeeded, and kept under ``tmp_path`` to look at when not."""
    data = run_driver(__file__, [name, json.dumps(packages)], tmp_path, timeout=900)
    for layers in tmp_path.iterdir():
        if (layers / "upper").is_dir():
            shutil.rmtree(layers, ignore_errors=True)
    return data


def test_install_client_upgrade_remove_purge(packages: dict[str, Any], tmp_path: Path) -> None:
    data = run_scenario("lifecycle", packages, tmp_path)
    log = data["log"]
    # 1. install
    assert data["installed"] == ["dracd", "dracd-logwatch", "libdrac-dev", "libdrac1", "python3-dracclient"], data
    assert "python3-bsddb3" in data["pulled_in"] and "rpcbind" in data["pulled_in"], data["pulled_in"]
    assert data["conffiles"] == ["/etc/dracd/dracd.yaml"], data["conffiles"]
    assert data["user"].startswith("dracd:"), "postinst made no user dracd"
    assert data["drac_dir_owner"] == "dracd:dracd", data["drac_dir_owner"]
    assert data["daemon_uid"] == data["user"].split(":")[2], f"dracd does not run as dracd\n{log}"
    assert data["add"].endswith(": added"), f"dracctl add: {data['add']}\n{log}"
    assert data["postmap_1"].isdigit(), f"postmap -q 192.0.2.7: {data['postmap_1']!r}\n{log}"
    # 5. the client root
    assert data["client_installed"] == ["dracd-logwatch", "python3-dracclient"], data["client_installed"]
    assert data["client_add"].endswith(": added"), data["client_add"]
    assert data["client_postmap"].isdigit(), f"the client's add is not in the map\n{log}"
    assert "No module named 'bsddb3'" in data["client_bsddb3"], data["client_bsddb3"]
    assert "No module named 'dracd'" in data["client_dracd"], data["client_dracd"]
    assert data["client_logwatch"].startswith("dracd-logwatch"), data["client_logwatch"]
    # 3. the upgrade
    assert data["upgraded_version"].endswith("-99"), data["upgraded_version"]
    assert data["dpkg_leftovers"] == [], f"conffile handling left {data['dpkg_leftovers']}"
    assert data["add_during_upgrade"].endswith(": added"), data["add_during_upgrade"]
    assert {"192.0.2.7", "192.0.2.9", "192.0.2.10"} <= set(data["listed_after_upgrade"]), \
        f"the table lost entries in the upgrade: {data['listed_after_upgrade']}\n{log}"
    assert data["postmap_after_upgrade"].isdigit(), log
    # 4. remove, purge
    assert data["stopped_by_remove"], "apt-get remove dracd left the daemon running"
    assert data["after_remove"] == {"map": True, "config": True, "user": True}, data["after_remove"]
    assert data["postmap_after_remove"].isdigit(), "the map lost its entries on remove"
    assert data["after_purge"] == {"map": True, "config": False, "user": False, "drac_dir_owner": "root:root",
                                   "statoverride": "", "drac_dir": ["dracd.db root:root"]}, data["after_purge"]


def test_dracd_replaces_debian_drac(packages: dict[str, Any], tmp_path: Path) -> None:
    data = run_scenario("drac", packages, tmp_path)
    log = data["log"]
    assert data["drac_state"] == "rc", f"drac must be removed with its conffiles kept: {data['drac_state']}"
    assert data["rpc_dracd_owner"] == "dracd: /usr/sbin/rpc.dracd", data["rpc_dracd_owner"]
    assert data["allow_text"] == ADMIN_ALLOW, "the admin's /etc/drac/dracd.allow changed"
    assert data["dpkg_leftovers"] == [], data["dpkg_leftovers"]
    assert f"map {MAP}" in log and "allow file /etc/drac/dracd.allow" in log, log
    assert "tcp_wrappers" in log, log
    assert DRAC_ENTRY in data["listed"], f"drac's map entry was not reloaded: {data['listed']}\n{log}"
    assert data["adds"] == {caller: want for caller, (_, want) in CALLERS.items()}, f"{data['adds']}\n{log}"
    assert sorted(data["map_keys"]) == sorted([DRAC_ENTRY, CALLERS["127.0.0.2"][0]]), data["map_keys"]


def test_map_tests_on_debian_bsddb3_and_dracd_on_debian_uvloop(packages: dict[str, Any], tmp_path: Path) -> None:
    """dracd.publish.maps.berkeley falls back to Debian's bsddb3 (no berkeleydb in Debian); the map tests
    pass on it as on berkeleydb in the venv. And bookworm's uvloop serves (event_loop: uvloop)."""
    data = run_scenario("bsddb3", packages, tmp_path)
    assert "No module named 'berkeleydb'" in data["berkeleydb"], data["berkeleydb"]
    assert data["pytest"]["status"] == 0, data["pytest"]["output"]
    assert " passed" in data["pytest"]["output"], data["pytest"]["output"]
    assert "event loop: uvloop" in data["log"], data["log"]
    assert data["uvloop_add"].endswith(": added"), f"{data['uvloop_add']} (uvloop {data['uvloop_version']})"


# --- the driver, run inside the namespaces -------------------------------------------------------

ADD_FROM = """
import sys
from dracclient.client import add
try:
    add(sys.argv[1], servers="127.0.0.1", source=(sys.argv[2], 0))
    print("ok")
except Exception as exc:
    print(type(exc).__name__)
"""


def _lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line)


def _installed(root: Root, names: list[str]) -> list[str]:
    out = root.out("dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\\n")
    return sorted(line.split()[0] for line in out.splitlines() if line.split()[0] in names and "ii" in line)


def _leftovers(root: Root) -> list[str]:
    return _lines(root.out("find", "/etc", "-name", "*.dpkg-*", "-o", "-name", "*.ucf-*"))


def _postmap(root: Root, address: str) -> str:
    """What Postfix finds for ``address`` in the map (its value), else why not."""
    found = root.run("postmap", "-q", address, "btree:/etc/drac/dracd", check=False)
    return found.stdout.strip() or f"(postmap exited {found.returncode}) {found.stderr.strip()}"


def _install_postfix(root: Root) -> None:
    root.run("sh", "-c", "echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections")
    root.out("apt-get", "install", "-y", "-q", "postfix")
    # "No configuration" leaves no main.cf, without which postmap refuses to run.
    root.file("/etc/postfix/main.cf").write_text("compatibility_level = 3.6\n")


def lifecycle(packages: dict[str, Any], scratch: Path, result: dict[str, Any]) -> None:
    base = Path(packages["base"])
    current = [Path(p) for p in packages["current"]]
    ours = sorted(p.name.split("_")[0] for p in current)
    server = Root(base, scratch, "server")
    result["_root"] = server
    _install_postfix(server)
    before = set(_lines(server.out("dpkg-query", "-W", "-f", "${Package}\\n")))
    server.copy_in(current, "/tmp/dist/deb")
    server.out("sh", "-c", "cd /tmp && apt-get install -y -q ./dist/deb/*.deb")
    result["installed"] = _installed(server, ours)
    result["pulled_in"] = sorted(set(_lines(server.out("dpkg-query", "-W", "-f", "${Package}\\n"))) - before)
    conffiles = server.out("dpkg-query", "-W", "-f", "${Conffiles}\\n", "dracd")
    result["conffiles"] = [line.split()[0] for line in conffiles.splitlines() if line.strip()]
    result["user"] = server.run("getent", "passwd", "dracd", check=False).stdout.strip()
    result["drac_dir_owner"] = server.out("stat", "-c", "%U:%G", "/etc/drac").strip()
    server.start_rpcbind()
    daemon = server.start_dracd()
    result["daemon_uid"] = next(line.split()[1] for line in
                                Path(f"/proc/{daemon.pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    result["add"] = server.out("dracctl", "add", "192.0.2.7").strip()
    result["postmap_1"] = _postmap(server, "192.0.2.7")

    # 5. a second clean root with the client packages only, talking to the first over loopback.
    client = Root(base, scratch, "client")
    client_debs = [p for p in current if p.name.split("_")[0] in ("python3-dracclient", "dracd-logwatch")]
    client.copy_in(client_debs, "/tmp/dist/deb")
    client.out("sh", "-c", "cd /tmp && apt-get install -y -q ./dist/deb/*.deb")
    result["client_installed"] = _installed(client, ours + ["python3-bsddb3"])
    result["client_add"] = client.out("dracctl", "-s", "127.0.0.1", "add", "192.0.2.9").strip()
    result["client_postmap"] = _postmap(server, "192.0.2.9")
    result["client_bsddb3"] = client.run("python3", "-c", "import bsddb3", check=False).stderr
    result["client_dracd"] = client.run("python3", "-c", "import dracd", check=False).stderr
    result["client_logwatch"] = client.out("dracd-logwatch", "--version").strip()

    # 3. the same packages, newer Debian revision, over the running dracd.
    server.copy_in([Path(p) for p in packages["newer"]], "/tmp/newer/deb")
    server.out("sh", "-c", "cd /tmp && apt-get install -y -q ./newer/deb/*.deb")
    result["upgraded_version"] = server.out("dpkg-query", "-W", "-f", "${Version}", "dracd")
    result["dpkg_leftovers"] = _leftovers(server)
    result["add_during_upgrade"] = server.out("dracctl", "add", "192.0.2.10").strip()
    server.stop_dracd()  # what systemd's restart after the upgrade does
    server.start_dracd()
    result["listed_after_upgrade"] = server.out("dracctl", "list").split()
    result["postmap_after_upgrade"] = _postmap(server, "192.0.2.9")

    # 4. remove, then purge.
    daemon = server.daemon
    assert daemon is not None
    server.out("apt-get", "remove", "-y", "-q", "dracd")
    result["stopped_by_remove"] = wait_gone(daemon, 5)
    result["after_remove"] = {"map": server.file(MAP).exists(), "config": server.file("/etc/dracd/dracd.yaml").exists(),
                              "user": server.run("getent", "passwd", "dracd", check=False).returncode == 0}
    result["postmap_after_remove"] = _postmap(server, "192.0.2.7")
    server.out("apt-get", "purge", "-y", "-q", "dracd")
    result["after_purge"] = {"map": server.file(MAP).exists(), "config": server.file("/etc/dracd").exists(),
                             "user": server.run("getent", "passwd", "dracd", check=False).returncode == 0,
                             "drac_dir_owner": server.out("stat", "-c", "%U:%G", "/etc/drac").strip(),
                             "statoverride": server.run("dpkg-statoverride", "--list", "/etc/drac",
                                                        check=False).stdout.strip(),
                             "drac_dir": server.out("find", "/etc/drac", "-mindepth", "1", "-printf",
                                                    "%f %u:%g\\n").splitlines()}


def _write_drac_map(path: Path) -> None:
    """drac's map as its rpc.dracd left it: a btree, key the address, value the expiry."""
    from berkeleydb import db

    table = db.DB()
    table.open(str(path), dbtype=db.DB_BTREE, flags=db.DB_CREATE)
    table.put(DRAC_ENTRY.encode(), str(int(time.time()) + 1800).encode())
    table.close()
    path.chmod(0o644)  # as DRAC created it: the MTA's lookups need to read it


def drac(packages: dict[str, Any], scratch: Path, result: dict[str, Any]) -> None:
    root = Root(Path(packages["base"]), scratch, "drac")
    result["_root"] = root
    root.copy_in([Path(packages["stub"])], "/tmp")
    root.out("apt-get", "install", "-y", "-q", "/tmp/drac_1.12-8_all.deb")
    root.file("/etc/drac/dracd.allow").write_text(ADMIN_ALLOW)
    root.file("/etc/hosts.allow").write_text(HOSTS_ALLOW)
    root.file("/etc/hosts.deny").write_text(HOSTS_DENY)
    _write_drac_map(root.file(MAP))
    root.copy_in([Path(p) for p in packages["current"]], "/tmp/dist/deb")
    root.out("sh", "-c", "cd /tmp && apt-get install -y -q ./dist/deb/*.deb")
    result["drac_state"] = root.out("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "drac").strip()
    result["rpc_dracd_owner"] = root.out("dpkg", "-S", "/usr/sbin/rpc.dracd").strip()
    result["allow_text"] = root.file("/etc/drac/dracd.allow").read_text()
    result["dpkg_leftovers"] = _leftovers(root)
    root.start_rpcbind()
    root.start_dracd()
    result["listed"] = root.out("dracctl", "list").split()
    script = root.file("/tmp/add_from.py")
    script.write_text(ADD_FROM)
    result["adds"] = {caller: root.out("python3", "/tmp/add_from.py", address, caller).strip()
                      for caller, (address, _) in CALLERS.items()}
    root.stop_dracd()
    result["map_keys"] = root.out("python3", "-c", "import bsddb3\nfor k in bsddb3.btopen('/etc/drac/dracd.db'): "
                                  "print(k.decode())").split()


def bsddb3(packages: dict[str, Any], scratch: Path, result: dict[str, Any]) -> None:
    """tests/test_maps.py on the installed dracd, with Debian's python3-bsddb3 and pytest."""
    root = Root(Path(packages["base"]), scratch, "bsddb3")
    server = [Path(p) for p in packages["current"] if Path(p).name.split("_")[0] in ("dracd", "python3-dracclient")]
    root.copy_in(server, "/tmp/dist/deb")
    root.out("sh", "-c", "cd /tmp && apt-get install -y -q ./dist/deb/*.deb python3-pytest "
             "python3-pytest-timeout db5.3-util python3-uvloop")
    src = root.file("/tmp/src")
    shutil.copytree(REPO / "tests", src / "tests", ignore=shutil.ignore_patterns("__pycache__", "build"))
    shutil.copy2(REPO / "pyproject.toml", src)
    result["berkeleydb"] = root.run("python3", "-c", "import berkeleydb", check=False).stderr
    run = root.run("sh", "-c", "cd /tmp/src && PYTHONPATH=/tmp/src python3 -m pytest -q -p no:cacheprovider "
                   "-p tests.fixtures.bsddb3_alias tests/test_maps.py", check=False)
    result["pytest"] = {"status": run.returncode, "output": run.stdout[-6000:] + run.stderr[-3000:]}
    # bookworm's python3-uvloop (0.17; pip's floor is 0.19): dracd serves on it.
    result["_root"] = root
    root.file("/tmp/uvloop.yaml").write_text("event_loop: uvloop\nrpcbind: false\nlisten: [127.0.0.1]\n"
                                              "admin_socket: /run/dracd/dracd.sock\n")
    root.start_dracd(["/usr/sbin/dracd", "-c", "/tmp/uvloop.yaml"])
    result["uvloop_add"] = root.out("dracctl", "-S", "/run/dracd/dracd.sock", "add", "192.0.2.7").strip()
    result["uvloop_version"] = root.out("dpkg-query", "-W", "-f", "${Version}", "python3-uvloop")


SCENARIOS = {"lifecycle": lifecycle, "drac": drac, "bsddb3": bsddb3}


def driver(name: str, packages: str, out: Path) -> int:
    def run(result: dict[str, Any]) -> None:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
        try:
            SCENARIOS[name](json.loads(packages), out, result)
        finally:
            root = result.pop("_root", None)
            if root is not None:
                result["log"] = root.dracd_log()
                root.stop_dracd()

    return drive(run)


if __name__ == "__main__":
    sys.exit(driver(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
