"""Rough edges a newcomer met on the way (issue 17, item 6): each test pins one down."""

from __future__ import annotations

import pytest

from dracclient.admin import AdminClient
from dracclient.cli import EX_OK, EX_USAGE, main
from dracclient.errors import InvalidRequest
from tests.fixtures.server import ServerThread, map_keys

pytestmark = pytest.mark.timeout(60)

Capsys = pytest.CaptureFixture[str]


def sock(server: ServerThread, *args: str) -> int:
    return main(["--program", str(server.config.program), "-S", str(server.config.admin_socket), *args])


def one_line(err: str, *fragments: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)
    return lines[0]


# a. every argument is checked before anything is sent


@pytest.mark.parametrize("command", [["add"], ["add", "--lifetime", "45m"], ["del"]])
def test_a_bad_address_anywhere_sends_nothing(server: ServerThread, command: list[str], capsys: Capsys) -> None:
    assert sock(server, "add", "192.0.2.9") == EX_OK
    capsys.readouterr()
    before = map_keys(server.config.map.path)
    args = [*command, "192.0.2.8", "192.0.2.9", "not-an-ip"]
    code = main(["--program", str(server.config.program), "-p", str(server.port), *args]) if command == ["add"] \
        else sock(server, *args)
    assert code == EX_USAGE
    captured = capsys.readouterr()
    one_line(captured.err, "not-an-ip")
    assert captured.out == ""
    assert map_keys(server.config.map.path) == before, "nothing may change before every argument is checked"


# h. ADMIN_INVAL says which of address and lifetime was wrong


def test_a_refused_address_is_named_as_the_reason(server: ServerThread, capsys: Capsys) -> None:
    assert sock(server, "add", "--lifetime", "45m", "224.0.0.1") == EX_USAGE
    line = one_line(capsys.readouterr().err, "224.0.0.1")
    assert line.endswith("rejected 224.0.0.1: not a unicast host address")
    assert sock(server, "add", "--lifetime", "1h", "192.0.2.0/23") == EX_USAGE
    line = one_line(capsys.readouterr().err, "192.0.2.0/23")
    assert line.split("rejected 192.0.2.0/23: ")[1].startswith("not a network the MTAs' lookups can match")


def test_a_lifetime_over_the_limit_is_named_as_the_reason(server: ServerThread, capsys: Capsys) -> None:
    assert sock(server, "add", "--lifetime", "4000d", "192.0.2.1") == EX_USAGE
    line = one_line(capsys.readouterr().err, "lifetime 4000d", "ten years")
    assert "unicast" not in line and "rejected" not in line
    admin = AdminClient(socket_path=str(server.config.admin_socket), prog=server.config.program)
    with pytest.raises(ValueError, match="ten years"):
        admin.add("192.0.2.1", 4000 * 86400)
    with pytest.raises(InvalidRequest) as info:
        admin.add("0.0.0.0", 3600)
    assert str(info.value).endswith("rejected 0.0.0.0: not a unicast host address")
    assert map_keys(server.config.map.path) == {}
