"""Coverage-guided fuzzing (atheris) of the socketmap request parser.

Run with `make fuzz`. Each input is one request payload (``NAME KEY``) given
to the unguarded handler, so that any exception is a finding (the server's
answer() would turn it into a TEMP reply), and the same bytes fed to the
netstring framer in pieces. The key parsers must agree with each other: the
fast IPv4 path (parse_key_code) with the general one (parse_key).
"""

from __future__ import annotations

import ipaddress
import sys

import atheris

with atheris.instrument_imports():
    from dracd.keys import entry_code, parse_key, parse_key_code, valid_code
    from dracd.programs import socketmap
    from dracd.relay.table import RelayTable
    from dracd.server.netstring import NetstringError, NetstringReader

NOW = 1_800_000_000.0
TABLE = RelayTable(clock=lambda: NOW)
for _text in ("192.0.2.5", "2001:db8::5", "198.51.100.0/24", "2001:db8:1::/48"):
    TABLE.set(ipaddress.ip_network(_text) if "/" in _text else ipaddress.ip_address(_text), int(NOW) + 600)


def test_one_input(data: bytes) -> None:
    reply = socketmap._answer(TABLE, data)
    if not (reply in (socketmap.BAD_REQUEST, socketmap.NOTFOUND) or reply == b"OK %d" % (int(NOW) + 600)):
        raise AssertionError(f"unexpected reply {reply!r}")
    _, _, key = data.partition(b" ")
    entry, code = parse_key(key), parse_key_code(key)
    if code != (None if entry is None else entry_code(entry)):
        raise AssertionError(f"parse_key_code {code!r} disagrees with parse_key {entry!r}")
    if code is not None and not valid_code(code):
        raise AssertionError(f"{key!r} parsed to code {code:#x}, which valid_code() refuses")
    reader = NetstringReader(4096)
    try:
        for cut in range(0, len(data), 5):
            for payload in reader.feed(data[cut : cut + 5]):
                socketmap._answer(TABLE, payload)
    except NetstringError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
