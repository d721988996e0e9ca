"""What every request passes before the app sees it (pure ASGI: BaseHTTPMiddleware costs far
more per request): well-formed `Host` and `Origin` headers, and a REST body of bounded size
that arrives in bounded time.

- A `Host` or `Origin` that is repeated, or present and malformed (origins.py), is refused:
  HTTP 400, or HTTP 403 for a WebSocket handshake (PROTOCOL.md: refused like a foreign
  origin, never a 5xx). `Origin: null` (an opaque origin) is no malformation; it only never
  matches an allowed origin.
- A body whose Content-Length exceeds CHAT_MAX_REQUEST_BYTES is refused with 413 before it
  is read; a chunked one is read up to that many bytes and refused with 413 as soon as it
  passes them. A body that has not fully arrived CHAT_BODY_TIMEOUT_SECONDS after the headers
  is refused with 408. Each refusal closes the connection, since the rest of the body is
  never read (only a bounded part of it dropped, so that the client gets the answer).
  What passes reaches the app whole, at once (it reads bodies whole anyway: JSON, forms).
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .origins import header_value, parse_host, parse_origin

# Before a 413, up to this much more of the body is read and dropped (as Go's net/http does):
# closing a connection with unread input resets it, and a client that gets a reset may lose
# the answer it was sent. A client that sends more, or slower, gets the reset.
_DRAIN_BYTES = 256 * 1024
_DRAIN_SECONDS = 1.0


class Refusal(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def check_headers(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool, bool]:
    """The request's Content-Length (None when absent), whether its body is chunked, and
    whether the client waits for `100 Continue` before sending it; raises Refusal(400) for
    a repeated or malformed Host or Origin."""
    host = origin = length = None
    chunked = expects_continue = False
    for name, value in headers:
        if name == b"host":
            if host is not None:
                raise Refusal(400, "more than one Host header")
            host = value
        elif name == b"origin":
            if origin is not None:
                raise Refusal(400, "more than one Origin header")
            origin = value
        elif name == b"content-length":
            # The HTTP parser has refused a malformed or contradictory one already.
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect":
            expects_continue = value.lower() == b"100-continue"
    if host is not None and parse_host(header_value(host.decode("latin-1"))) is None:
        raise Refusal(400, "malformed Host header")
    if (
        origin is not None
        and origin.strip(b" \t") != b"null"
        and (parse_origin(header_value(origin.decode("latin-1"))) is None)
    ):
        raise Refusal(400, "malformed Origin header")
    return length, chunked, expects_continue


async def _refuse(send: Send, refusal: Refusal) -> None:
    body = orjson.dumps({"detail": refusal.detail})
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """The checks above, in front of the app (and of the /ws endpoint)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout_seconds: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            try:
                check_headers(scope["headers"])
            except Refusal:
                # Before accept: uvicorn answers the handshake with HTTP 403.
                await send({"type": "websocket.close", "code": 1008})
                return
        elif kind == "http":
            try:
                length, chunked, expects_continue = check_headers(scope["headers"])
                if length is not None and length > self.max_body_bytes:
                    if not expects_continue:  # else it has sent nothing, and never will
                        await _drain(receive)
                    raise Refusal(413, self._too_large)
                if chunked or length:
                    body = await self._read_body(receive)
                    if body is None:
                        return  # the client went away: nobody to answer
                    receive = _replay(body, receive)
            except Refusal as refusal:
                await _refuse(send, refusal)
                return
        await self.app(scope, receive, send)

    @property
    def _too_large(self) -> str:
        return f"request body too large: at most {self.max_body_bytes} bytes"

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_seconds):
                while size <= self.max_body_bytes:
                    message = await receive()
                    if message["type"] != "http.request":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise Refusal(
                408, f"request body not received within {self.body_timeout_seconds:g} s"
            ) from None
        if size > self.max_body_bytes:
            if message.get("more_body", False):
                await _drain(receive)
            raise Refusal(413, self._too_large)
        return b"".join(chunks)


async def _drain(receive: Receive) -> None:
    """Read and drop what follows of a refused body, within _DRAIN_BYTES and _DRAIN_SECONDS."""
    dropped = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            while dropped < _DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                dropped += len(message.get("body", b""))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body read ahead, then what the client sends next (its
    disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
