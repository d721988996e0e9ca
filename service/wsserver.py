"""uvicorn's `websockets-sansio` protocol, with the frames written to a socket in one turn of
the event loop sent together, in one system call.

uvicorn writes each WebSocket frame to the transport as it is sent, and the transport sends
each write at once: one `send` system call per frame. A socket often gets many frames in
one turn: the acks of a batch resolve together and its writer (ws.py) drains its whole
queue without yielding, and a batch's notification fans out to the room's sockets in one
callback. The system calls were the largest single cost of an instance under load (about a
quarter of its CPU, README), and under a virtual machine each costs more than the frame.

Here the protocol's transport keeps the writes of the current turn and sends them, joined,
from a callback scheduled with the first of them: the frames leave in the same order, at
the end of the same turn (no timer; a lone frame waits only for the callbacks already
queued). Closing sends what is kept first; aborting drops it, as the transport would.

Flow control is unchanged: once what is kept reaches FLUSH_BYTES (asyncio's default high-
water mark of a transport's buffer), it is written at once, so a client that stops reading
still meets `pause_writing` within that many bytes, and the socket's writer (ws.py) stops
draining its outbox into the transport as it did before: a slow client can make the
server hold no more than before plus FLUSH_BYTES.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

FLUSH_BYTES = 64 * 1024
# The scope extension under which the protocol offers `send_text_now` to the app (ws.py).
SEND_NOW = "chat.send_text_now"


class CorkedTransport(asyncio.Transport):
    """`transport`, with the writes of one turn of `loop` sent as one."""

    __slots__ = ("_inner", "_kept", "_kept_bytes", "_loop")

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._kept: list[bytes] | None = None  # None while nothing waits: no list per socket
        self._kept_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._kept is None:
            self._kept = [bytes(data)]
            self._kept_bytes = len(data)
            self._loop.call_soon(self._send)
        else:
            self._kept.append(bytes(data))
            self._kept_bytes += len(data)
        if self._kept_bytes >= FLUSH_BYTES:
            self._send()  # the scheduled send then finds nothing kept

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _send(self) -> None:
        kept, self._kept = self._kept, None
        self._kept_bytes = 0
        if not kept or self._inner.is_closing():
            return  # the connection is gone or going: the loop closed it, nobody reads
        self._inner.write(kept[0] if len(kept) == 1 else b"".join(kept))

    def close(self) -> None:
        self._send()
        self._inner.close()

    def abort(self) -> None:
        self._kept = None
        self._kept_bytes = 0
        self._inner.abort()

    def write_eof(self) -> None:
        self._send()
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + self._kept_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()


class _Inbox:
    """What uvicorn's protocol asks of its asyncio.Queue of received events (put_nowait,
    get, empty), for its one reader: a list and, while the reader waits, a future. The
    queue holds one or two events (uvicorn stops reading the socket until it is empty), and
    asyncio.Queue's three deques cost 2.2 KiB on every idle socket."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> ASGIReceiveEvent:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class _Writable:
    """What uvicorn's protocol asks of its asyncio.Event `writable` (set, clear, is_set,
    wait), with the waiters' deque made only while someone waits: it is set all the life of
    most sockets, and an Event's deque costs 0.8 KiB on each."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class CorkedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` protocol on a CorkedTransport, offering the app
    `send_text_now` (scope["extensions"][SEND_NOW]), and holding less for each idle socket
    (bench/: idle memory): a lighter queue and flag, and the handshake's request and
    response (their headers, ~2 KiB) dropped once the handshake is done."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Writable()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not isinstance(self.transport, CorkedTransport):  # httpserver's is corked already
            self.transport = CorkedTransport(self.transport, self.loop)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:  # else refused: no scope, no app
            self.scope["extensions"][SEND_NOW] = {"send": self.send_text_now}

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # uvicorn reads them only until the handshake is done (handle_connect, and
            # send() before handshake_complete). websockets' parser keeps the request for
            # the life of the connection (a local of its generator): emptied instead.
            self.request.headers.clear()
            self.request.path = ""
            del self.request, self.response

    def send_text_now(self, text: str) -> bool:
        """Write one text frame now, as uvicorn's `send` does with a `websocket.send`
        message, without the message and the awaits of every layer between (Starlette's
        WebSocket, the app's middleware, uvicorn's dispatch: about a fifth of the CPU of a
        resume of 1,000 frames). False, with nothing written, where `send` would wait or
        fail: writing paused by flow control, the handshake not done, a close sent or
        received, the connection lost. The caller then sends through ASGI, which waits or
        raises as it should."""
        if (
            not self.writable.is_set()
            or self.disconnected
            or not self.handshake_complete
            or self.close_sent
            or self.initial_response is not None
            or self.conn.state is not State.OPEN
            or self.conn.expect_continuation_frame
            or self.conn.extensions  # deflate (never in chat serve): websockets compresses
        ):
            return False
        self.transport.write(text_frame(text))
        return True


# The last frame encoded, by identity: a fan-out hands the same str to every socket of the
# room, which then costs one encoding instead of one per socket.
_encoded: tuple[str, bytes] = ("", b"")


def text_frame(text: str) -> bytes:
    """`text` as one unmasked, unfragmented, uncompressed WebSocket text frame (RFC 6455,
    5.2), which is what websockets' send_text writes for a server without extensions
    (deflate is declined: service/cli.py), without its Frame object and the list around
    it: a resume of 1,000 frames took 15.0 against 16.7 ms of the instance's CPU."""
    global _encoded
    last, data = _encoded
    if text is last:
        return data
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    data = header + payload
    _encoded = (text, data)
    return data
