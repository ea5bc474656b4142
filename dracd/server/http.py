"""HTTP/1.1 as a framing of the stream server (stream.StreamServer), sans-IO, with h11.

A request is one message: its body, as an ``HttpRequest`` (bytes) that also
carries the method, the target and the headers. The handler's reply is the
response body; an ``HttpReply`` also says its status and extra headers, plain
bytes are ``200 application/json``. HTTP answers in request order, so this is
a *conversation* framing (stream.Conversation): the next request of a
connection is parsed only once the previous one is answered (pipelined
requests wait in h11's buffer, and the connection is not read meanwhile),
and keep-alive or ``Connection: close`` is h11's decision.

What cannot be a request is answered here, with ``Connection: close``: 400
for bytes h11 refuses, 431 for a head over the size limit, 413 for a body
over it (by its Content-Length, before it arrives, or as it arrives), 501 for
a transfer coding h11 does not know. The stream server's limits apply as to
every framing: a request must be whole within ``record_timeout`` of its first
byte, connections are counted, a client that does not read is not read.
"""

from __future__ import annotations

import json
from http import HTTPStatus

import h11

from .stream import Framing, StreamLimits

#: Headers every response carries.
_SERVER = (b"server", b"dracd")


class HttpRequest(bytes):
    """A whole request: the bytes are its body."""

    method: bytes
    target: bytes
    #: Header names lower-cased; a repeated header keeps its last value.
    headers: dict[bytes, bytes]
    http_version: bytes

    @classmethod
    def make(cls, body: bytes, method: bytes, target: bytes, headers: dict[bytes, bytes],
             http_version: bytes = b"1.1") -> HttpRequest:
        request = cls(body)
        request.method, request.target, request.headers, request.http_version = method, target, headers, http_version
        return request


class HttpReply(bytes):
    """A response: the bytes are its body."""

    status: int
    content_type: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def make(cls, status: int, body: bytes, content_type: bytes = b"application/json",
             headers: tuple[tuple[bytes, bytes], ...] = ()) -> HttpReply:
        reply = cls(body)
        reply.status, reply.content_type, reply.headers = status, content_type, headers
        return reply


def json_reply(status: int, document: object, headers: tuple[tuple[bytes, bytes], ...] = ()) -> HttpReply:
    return HttpReply.make(status, json.dumps(document, separators=(",", ":")).encode(), headers=headers)


def error_body(status: int, why: str) -> bytes:
    return json.dumps({"error": HTTPStatus(status).phrase, "detail": why}, separators=(",", ":")).encode()


class HttpError(ValueError):
    """The bytes are not an acceptable request; ``wire`` is the whole response to send
    before closing."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(f"HTTP {status}: {why}")
        self.status = status
        body = error_body(status, why)
        self.wire = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
                     + b"server: dracd\r\ncontent-type: application/json\r\n"
                     + f"content-length: {len(body)}\r\n".encode()
                     + b"connection: close\r\n\r\n" + body)


class HttpFramer:
    """One connection's HTTP/1.1 server side: requests in, responses out, in order."""

    def __init__(self, limits: StreamLimits) -> None:
        self.max_body = limits.max_record
        # The limit on a request head (request line and headers) is h11's own buffer limit.
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_record)
        self._request: h11.Request | None = None
        self._body = bytearray()
        #: A request was handed out and its response is not framed yet.
        self.owed = False
        #: After the last response the connection must close (HTTP/1.0, Connection: close).
        self.closing = False
        self._broken: HttpError | None = None

    @property
    def pending(self) -> bool:
        """Part of a request has arrived and we owe nothing: the client's clock runs."""
        if self.owed or self._broken is not None:
            return False
        if self._request is not None:
            return True
        # h11's buffer, without the copy trailing_data makes (called per read and per answer).
        buffer = getattr(self.conn, "_receive_buffer", None)
        return len(buffer) > 0 if buffer is not None else bool(self.conn.trailing_data[0])

    def feed(self, data: bytes) -> list[bytes]:
        if self._broken is not None:
            raise self._broken
        if data:
            try:
                self.conn.receive_data(data)
            except RuntimeError:  # data after the client closed: h11 refuses it
                return []
        return self.next()

    def next(self) -> list[bytes]:
        """The next whole request, if one is buffered and nothing is owed."""
        if self.owed or self.closing:
            return []
        try:
            return self._next()
        except HttpError as exc:
            self._broken = exc
            raise

    def _next(self) -> list[bytes]:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 431 or "exceeds" in str(exc):
                    raise HttpError(431, "request head too large") from None
                raise HttpError(status if status in (400, 501, 505) else 400, str(exc)) from None
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return []
            if isinstance(event, h11.Request):
                if event.http_version not in (b"1.0", b"1.1"):
                    raise HttpError(505, f"HTTP/{event.http_version.decode(errors='replace')} is not served")
                head = len(event.method) + len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if head > self.max_body:  # h11 limits only a head that arrives in pieces
                    raise HttpError(431, "request head too large")
                self._request = event
                self._body.clear()
                length = _content_length(event)
                if length is not None and length > self.max_body:
                    raise HttpError(413, f"a body of {length} bytes exceeds {self.max_body}")
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self.max_body:
                    raise HttpError(413, f"a body over {self.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                request = self._request
                assert request is not None
                self._request = None
                self.owed = True
                headers: dict[bytes, bytes] = {}
                for name, value in request.headers:
                    headers[bytes(name)] = bytes(value)
                body = bytes(self._body)
                self._body.clear()
                return [HttpRequest.make(body, bytes(request.method), bytes(request.target), headers,
                                         bytes(request.http_version))]

    def answer(self, reply: bytes) -> bytes:
        """The wire bytes of the response to the request last handed out."""
        if isinstance(reply, HttpReply):
            status, content_type, extra = reply.status, reply.content_type, reply.headers
        else:
            status, content_type, extra = 200, b"application/json", ()
        self.owed = False
        body = bytes(reply)
        headers = [_SERVER, (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                   *extra]
        if self.conn.our_state is not h11.SEND_RESPONSE:  # cannot happen: nothing owed
            self.closing = True
            return HttpError(500, "no request to answer").wire
        if status >= 400 and self.conn.their_state is not h11.DONE:
            headers.append((b"connection", b"close"))
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
        wire = self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
        wire += self.conn.send(h11.Data(data=body)) or b""
        wire += self.conn.send(h11.EndOfMessage()) or b""
        if self.conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}:
            self.conn.start_next_cycle()
        else:
            self.closing = True
        return wire


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is digits
    return None


def frame_unused(reply: bytes) -> bytes:
    """Framing.frame of a conversation framing: never called (the framer answers)."""
    raise AssertionError("HTTP replies are framed by their connection's HttpFramer")


#: HTTP/1.1 requests and responses (a conversation: in order, keep-alive).
HTTP = Framing("http", HttpFramer, frame_unused, (HttpError,), conversation=True)
