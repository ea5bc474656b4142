"""End to end with a real Postfix on loopback: relay refused, allowed after a
DRAC ADD, refused again once the entry's lifetime has passed."""

from __future__ import annotations

import time
from collections.abc import Callable

from dracclient import add
from tests.fixtures.postfix import PostfixInstance
from tests.fixtures.server import ServerThread, map_keys, wait_for

LIFETIME = 3


def test_relay_follows_the_drac_table(
    make_server: Callable[..., ServerThread], postfix_factory: Callable[..., PostfixInstance]
) -> None:
    server = make_server(lifetime=LIFETIME)
    postfix = postfix_factory(server.config.map.path)

    code, text = postfix.probe_relay("127.0.0.5")
    assert code == 554 and "Relay access denied" in text

    add("127.0.0.5", servers="127.0.0.1", port=server.port, prog=server.config.program)
    added = time.time()
    code, text = postfix.probe_relay("127.0.0.5")
    assert code == 250, text
    assert postfix.postmap_query("127.0.0.5") is not None
    assert postfix.probe_relay("127.0.0.6")[0] == 554

    add("::1", servers="::1", port=server.port, prog=server.config.program, transport="tcp")
    assert postfix.probe_relay("::1")[0] == 250

    assert wait_for(lambda: b"127.0.0.5" not in map_keys(server.config.map.path), timeout=LIFETIME + 3)
    assert time.time() - added < LIFETIME + 2
    code, text = postfix.probe_relay("127.0.0.5")
    assert code == 554 and "Relay access denied" in text
