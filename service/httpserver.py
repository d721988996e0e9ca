"""uvicorn's httptools protocol, with the two bounds it lacks on reading request headers.

uvicorn times out only a kept-alive connection idle *after* a response
(`timeout_keep_alive`); nothing bounds a connection that never finishes its first request's
headers (`h11_max_incomplete_event_size` exists for h11 only, and the httptools parser
buffers a header value of any length). So one client could hold connections open forever
with a byte every few seconds (slowloris), or send one header of gigabytes. Here:

- the headers of each request must be complete within `header_timeout` of the
  connection's opening, or of the request's first byte on a kept-alive connection; past it
  the client gets 408 (when no response of an earlier request is under way) and the
  connection is closed;
- once the headers of one request have taken more than `max_header_bytes`, the client gets
  431 and the connection is closed.

A body is bounded by guards.py (its size and its time); a socket, after its handshake, by
its pings.

And its transport is corked as a socket's is (wsserver.CorkedTransport): uvicorn writes a
response's head and its body separately, and the transport sends each write at once, so
every response took two system calls and left as two segments. Corked, what a turn of the
event loop writes leaves together, in one; a socket upgraded from the connection keeps the
same corked transport.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .wsserver import CorkedTransport

log = logging.getLogger(__name__)


def _response(status: bytes, detail: str) -> bytes:
    body = orjson.dumps({"detail": detail})
    return b"".join(
        [
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            body,
        ]
    )


class BoundedHeaders(HttpToolsProtocol):
    """Set `header_timeout` and `max_header_bytes` on a subclass (see `bounded`)."""

    header_timeout: float = 10.0
    max_header_bytes: int = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    def _reading_headers(self) -> bool:
        return self._header_timer is not None

    def _start_headers(self) -> None:
        if self._header_timer is None:
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _end_headers(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, self.loop))
        self._start_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_headers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Bytes count toward the headers when the request's headers were incomplete both
        # before and after them: then they are all header bytes (a chunk that begins a new
        # request may end an earlier body, so it is not counted; it is at most one read).
        before = self._reading_headers()
        super().data_received(data)
        if before and self._reading_headers() and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                log.info(
                    "request headers over %d bytes: 431, connection closed", self.max_header_bytes
                )
                self._refuse(b"431 Request Header Fields Too Large", "request headers too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_headers()

    def on_headers_complete(self) -> None:
        self._end_headers()
        super().on_headers_complete()

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        log.info("request headers incomplete after %g s: connection closed", self.header_timeout)
        self._refuse(b"408 Request Timeout", "request headers not received in time")

    def _refuse(self, status: bytes, detail: str) -> None:
        self._end_headers()
        # Not in the middle of an earlier request's response (pipelining): it would be cut.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_response(status, detail))
        self.transport.close()


def bounded(header_timeout: float, max_header_bytes: int) -> type[BoundedHeaders]:
    """The protocol class for uvicorn's `http=` with these bounds."""

    class Bounded(BoundedHeaders):
        pass

    Bounded.header_timeout, Bounded.max_header_bytes = header_timeout, max_header_bytes
    return Bounded
