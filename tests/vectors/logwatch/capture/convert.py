"""Captured datagrams -> the lines a syslog daemon writes to a file (capture helper).

    convert.py HOST < MRA.datagrams > MRA.log

syslog(3) sends ``<PRI>Mmm dd hh:mm:ss TAG: MSG``; rsyslog's traditional
file format writes ``Mmm dd hh:mm:ss HOST TAG: MSG``: the PRI goes, the
host comes in after the timestamp, and every other byte stays as it was.
"""

from __future__ import annotations

import re
import sys

DATAGRAM = re.compile(rb"<\d{1,3}>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (.*)", re.DOTALL)


def main(host: bytes) -> int:
    for number, line in enumerate(sys.stdin.buffer, 1):
        match = DATAGRAM.fullmatch(line.rstrip(b"\n"))
        if match is None:
            print(f"line {number}: not an RFC 3164 datagram from syslog(3): {line!r}", file=sys.stderr)
            return 1
        sys.stdout.buffer.write(match[1] + b" " + host + b" " + match[2] + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1].encode()))
