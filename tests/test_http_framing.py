"""The HTTP/1.1 framing of the stream server (dracd/server/http.py), sans-IO: a
pipelined stream cut anywhere gives the same requests, one at a time and only
once the previous one is answered; any bytes at all give requests or an
HttpError carrying a whole response, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dracd.server.http import HttpError, HttpFramer, HttpReply, HttpRequest
from dracd.server.stream import StreamLimits

pytestmark = pytest.mark.unit

LIMITS = StreamLimits(max_record=4096)


def post(body: bytes, target: bytes = b"/?command=report", extra: bytes = b"") -> bytes:
    return (b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s\r\n" + extra
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def drain(framer: HttpFramer, chunks: list[bytes]) -> list[HttpRequest]:
    """Feed the chunks, answering each request as it comes (as the stream server does)."""
    got: list[HttpRequest] = []
    for chunk in chunks:
        messages = framer.feed(chunk)
        while messages:
            assert len(messages) == 1  # one at a time
            request = messages[0]
            assert isinstance(request, HttpRequest)
            assert framer.feed(b"") == [] and framer.next() == []  # nothing more while one is owed
            got.append(request)
            framer.answer(HttpReply.make(200, b"{}"))
            messages = framer.next()
    return got


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.data())
def test_a_pipelined_stream_cut_anywhere_gives_the_same_requests(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(post(body) for body in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    got = drain(HttpFramer(LIMITS), chunks)
    assert [bytes(r) for r in got] == bodies
    assert all(r.method == b"POST" and r.headers[b"authorization"] == b"Bearer s" for r in got)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 64))
def test_any_bytes_give_requests_or_an_answered_error(noise: bytes, step: int) -> None:
    framer = HttpFramer(LIMITS)
    try:
        drain(framer, [noise[i:i + step] for i in range(0, len(noise), step)])
    except HttpError as exc:
        assert exc.wire.startswith(f"HTTP/1.1 {exc.status} ".encode())
        assert b"\r\nconnection: close\r\n" in exc.wire
        with pytest.raises(HttpError):  # stays broken
            framer.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_keep_alive_and_close() -> None:
    framer = HttpFramer(LIMITS)
    [request] = framer.feed(post(b"{}"))
    wire = framer.answer(HttpReply.make(404, b"{}", headers=((b"allow", b"POST"),)))
    assert wire.startswith(b"HTTP/1.1 404 Not Found\r\n") and b"allow: POST" in wire
    assert not framer.closing  # the request was whole: keep-alive
    [request] = framer.feed(post(b"{}", extra=b"Connection: close\r\n"))
    framer.answer(b"{}")
    assert framer.closing
    old = HttpFramer(LIMITS)
    [request] = old.feed(post(b"{}").replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    assert request.http_version == b"1.0"
    old.answer(b"{}")
    assert old.closing


def test_limits() -> None:
    for data, status in ((post(b"x" * 4097), 413), (post(b"{}", extra=b"X-Big: " + b"a" * 5000 + b"\r\n"), 431),
                         (b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000, 431),
                         (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + b"800\r\n" + b"x" * 0x800 + b"\r\n" + b"800\r\n" + b"x" * 0x800 + b"\r\n"
                          + b"1\r\nx\r\n", 413)):
        with pytest.raises(HttpError) as caught:
            HttpFramer(LIMITS).feed(data)
        assert caught.value.status == status, data[:50]
    # Within the limits, a chunked body is one request.
    framer = HttpFramer(LIMITS)
    [request] = framer.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"2\r\n{}\r\n0\r\n\r\n")
    assert bytes(request) == b"{}"


def test_pending_is_a_request_begun_and_not_owed() -> None:
    framer = HttpFramer(LIMITS)
    assert not framer.pending
    data = post(b"{}")
    assert framer.feed(data[:9]) == [] and framer.pending  # the client's clock runs
    [request] = framer.feed(data[9:] + b"POST")
    assert not framer.pending  # we owe the answer: our clock, not the client's
    framer.answer(b"{}")
    assert framer.next() == [] and framer.pending  # the next one has begun
