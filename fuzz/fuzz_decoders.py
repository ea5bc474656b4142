"""Coverage-guided fuzzing (atheris) of everything that reads untrusted bytes.

Run with `make fuzz` (FUZZ_SECONDS, default 60). Any exception other than
the codecs' own typed errors is a bug and stops the fuzzer with the input.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys

import atheris

with atheris.instrument_imports():
    from dracclient import adminproto, drac, rpc, rpcbind
    from dracclient.errors import BadReply
    from dracclient.record import RecordReader
    from dracclient.xdr import XdrError
    from dracd.server.dispatch import Dispatcher

DECODERS = [
    rpc.decode_call,
    rpc.decode_reply,
    drac.decode_add_v1,
    drac.decode_add_v2,
    drac.decode_addstat,
    adminproto.decode_add3,
    adminproto.decode_target,
    adminproto.decode_list3_args,
    adminproto.decode_list3_res,
    adminproto.decode_status3_res,
    adminproto.decode_get3_res,
    adminproto.decode_flush3_res,
    rpcbind.parse_getaddr,
]


async def _echo(args: bytes, ctx: object) -> bytes:
    return args


DISPATCHER = Dispatcher()
DISPATCHER.register(900101, 1, 1, _echo)  # type: ignore[arg-type]
LOOP = asyncio.new_event_loop()
CALLER = ipaddress.ip_address("127.0.0.1")


def test_one_input(data: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(data)  # type: ignore[operator]
        except (XdrError, BadReply):  # BadReply: the rpcbind client's own typed error
            pass
    reader = RecordReader(4096)
    try:
        for cut in range(0, len(data), 7):
            reader.feed(data[cut : cut + 7])
    except XdrError:
        pass
    # The dispatcher must turn any message into a reply or None, never raise.
    LOOP.run_until_complete(DISPATCHER.handle(data, CALLER, 1, "udp"))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
