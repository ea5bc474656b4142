from dracclient import add
from dracclient.errors import PermissionRefused
import ipaddress
import pytest

def test_smoke(server):
    add("127.0.0.1", "192.0.2.7", port=server.port, prog=server.config.program)
    add("::1", "2001:db8::7", port=server.port, prog=server.config.program, transport="tcp")
    assert server.daemon.writer.read().keys() == {ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::7")}
