"""The corked WebSocket transport (service/wsserver.py): the writes of one turn of the event
loop leave as one, in order; closing sends them first, aborting drops them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
import websockets
from websockets.frames import Frame, Opcode

from service.wsserver import (
    FLUSH_BYTES,
    SEND_NOW,
    CorkedTransport,
    CorkedWebSocketProtocol,
    _Inbox,
    _Writable,
    text_frame,
)


class Recording(asyncio.Transport):
    """A transport that records what it is asked to do."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0


async def _turn() -> None:
    """Let the callbacks already scheduled run (the corked send among them)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_the_writes_of_a_turn_leave_as_one_in_order() -> None:
    inner = Recording()
    corked = CorkedTransport(inner, asyncio.get_running_loop())
    corked.write(b"a")
    corked.write(b"")
    corked.writelines([b"b", b"c"])
    assert inner.writes == [] and corked.get_write_buffer_size() == 3
    await _turn()
    assert inner.writes == [b"abc"] and corked.get_write_buffer_size() == 0
    corked.write(b"d")
    await _turn()
    assert inner.writes == [b"abc", b"d"]
    await _turn()
    assert inner.writes == [b"abc", b"d"]  # nothing kept: nothing more sent


async def test_a_turn_that_writes_a_lot_sends_as_it_goes() -> None:
    """Past FLUSH_BYTES kept, a write goes out at once, so the transport's flow control
    (pause_writing at its high-water mark) still stops a writer within that many bytes."""
    inner = Recording()
    corked = CorkedTransport(inner, asyncio.get_running_loop())
    frame = b"x" * 1000
    frames = -(-FLUSH_BYTES // len(frame))  # the write that reaches FLUSH_BYTES
    for _ in range(frames - 1):
        corked.write(frame)
    assert inner.writes == [] and corked.get_write_buffer_size() == (frames - 1) * 1000
    corked.write(frame)
    assert [len(w) for w in inner.writes] == [frames * 1000]
    corked.write(frame)
    assert corked.get_write_buffer_size() == 1000
    await _turn()
    assert [len(w) for w in inner.writes] == [frames * 1000, 1000]


async def test_close_sends_what_is_kept_first_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    inner = Recording()
    corked = CorkedTransport(inner, loop)
    corked.write(b"last words")
    corked.close()
    assert inner.writes == [b"last words"] and inner.closed
    await _turn()
    assert inner.writes == [b"last words"]  # the scheduled send found nothing left

    inner = Recording()
    corked = CorkedTransport(inner, loop)
    corked.write(b"never")
    corked.abort()
    await _turn()
    assert inner.writes == [] and inner.aborted


async def test_writes_to_a_connection_the_loop_closed_are_dropped() -> None:
    inner = Recording()
    corked = CorkedTransport(inner, asyncio.get_running_loop())
    corked.write(b"too late")
    inner.closed = True  # the connection was lost before the turn ended
    await _turn()
    assert inner.writes == []
    assert corked.is_closing()


class Counting(CorkedTransport):
    sends = 0

    def _send(self) -> None:
        if self._kept:
            Counting.sends += 1
        super()._send()


class CountingProtocol(CorkedWebSocketProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(self.transport, CorkedTransport)
        self.transport = Counting(self.transport._inner, self.loop)


FRAMES = 500


async def _lifespan(receive: Any, send: Any) -> None:
    """An ASGI app's lifespan: started, then stopped when asked."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def _burst(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app: a socket is accepted and sent FRAMES frames at once, then closed."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    for i in range(FRAMES):
        await send({"type": "websocket.send", "text": orjson.dumps({"i": i}).decode()})
    await send({"type": "websocket.close", "code": 1000})


@contextlib.asynccontextmanager
async def _serving(app: Any, ws: type, **options: Any) -> AsyncIterator[int]:
    """A real uvicorn server of `app` on a free port, with `ws` as its WebSocket protocol;
    yields the port."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, ws=ws, log_config=None, lifespan="on", **options
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


async def test_a_burst_of_frames_through_uvicorn_leaves_in_a_few_writes() -> None:
    """Through a real uvicorn server: 500 frames sent in one go arrive whole and in order,
    with the handshake, in a handful of system calls instead of 501."""
    Counting.sends = 0
    async with _serving(_burst, CountingProtocol) as port:
        got = []
        async with asyncio.timeout(10):
            async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
                with contextlib.suppress(websockets.ConnectionClosedOK):
                    while True:
                        got.append(orjson.loads(await ws.recv()))
    assert got == [{"i": i} for i in range(FRAMES)]
    assert 1 <= Counting.sends <= 3, Counting.sends


# -- send_text_now -----------------------------------------------------------------------

SENT_NOW: dict[str, Any] = {}


async def _sends_now(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app writing through the protocol's send_text_now: refused before the
    accept; taken after it, in order with frames sent through ASGI; taken until flow
    control pauses writing to a client that does not read; refused once a close is sent."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    send_now = scope["extensions"][SEND_NOW]["send"]
    assert (await receive())["type"] == "websocket.connect"
    SENT_NOW["before accept"] = send_now("too early")
    protocol = send_now.__self__
    await send({"type": "websocket.accept"})
    # The handshake's request and response are let go once it is done.
    SENT_NOW["request kept"] = hasattr(protocol, "request") or hasattr(protocol, "response")
    for i in range(10):
        if i % 2:
            await send({"type": "websocket.send", "text": f"asgi {i}"})
        else:
            SENT_NOW.setdefault("taken", []).append(send_now(f"now {i}"))
    # The client reads nothing until told: write until the transport pauses us.
    big = "x" * 10_000
    written = 0
    while send_now(big):
        written += 1
        if written > 10_000:  # 100 MB: flow control never came
            break
    SENT_NOW["until paused"] = written
    await send({"type": "websocket.send", "text": "after the pause"})  # waits for the drain
    await send({"type": "websocket.close", "code": 1000})
    SENT_NOW["after close"] = send_now("too late")


async def test_send_text_now_writes_in_order_and_refuses_where_send_would_wait() -> None:
    SENT_NOW.clear()
    # Without deflate, as the service runs (service/cli.py): compressed, the frames of x
    # would be a few bytes each.
    serving = _serving(_sends_now, CorkedWebSocketProtocol, ws_per_message_deflate=False)
    async with serving as port, asyncio.timeout(20):
        async with websockets.connect(f"ws://127.0.0.1:{port}/", max_queue=1) as ws:
            got = [await ws.recv() for _ in range(10)]
            while "until paused" not in SENT_NOW:
                await asyncio.sleep(0.01)
            rest = []
            with contextlib.suppress(websockets.ConnectionClosedOK):
                while True:
                    rest.append(await ws.recv())
        while "after close" not in SENT_NOW:
            await asyncio.sleep(0.01)
    assert got == [f"now {i}" if i % 2 == 0 else f"asgi {i}" for i in range(10)]
    assert SENT_NOW["taken"] == [True] * 5
    assert SENT_NOW["before accept"] is False and SENT_NOW["after close"] is False
    assert SENT_NOW["request kept"] is False
    # Paused within a few transport buffers and kernel socket buffers, not 100 MB.
    assert 0 < SENT_NOW["until paused"] < 2_000, SENT_NOW["until paused"]
    assert rest == ["x" * 10_000] * SENT_NOW["until paused"] + ["after the pause"]


# -- the lighter queue and flag ------------------------------------------------------------


async def test_the_inbox_hands_events_over_in_order_and_survives_a_cancelled_get() -> None:
    inbox = _Inbox()
    assert inbox.empty() and inbox.qsize() == 0
    inbox.put_nowait({"type": "websocket.connect"})
    inbox.put_nowait({"type": "websocket.receive", "text": "a"})
    assert inbox.qsize() == 2
    assert (await inbox.get())["type"] == "websocket.connect"
    assert await inbox.get() == {"type": "websocket.receive", "text": "a"}
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    inbox.put_nowait({"type": "websocket.receive", "text": "b"})  # nothing waits: kept
    waiting = asyncio.create_task(inbox.get())
    async with asyncio.timeout(5):
        assert await waiting == {"type": "websocket.receive", "text": "b"}
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    async with asyncio.timeout(5):
        assert (await waiting)["type"] == "websocket.disconnect"
    assert inbox.empty()


async def test_writable_wakes_every_waiter_when_set_and_lets_a_cancelled_one_go() -> None:
    flag = _Writable()
    assert flag.is_set()
    async with asyncio.timeout(5):
        await flag.wait()  # set: returns at once
    flag.clear()
    first = asyncio.create_task(flag.wait())
    second = asyncio.create_task(flag.wait())
    gone = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not (first.done() or second.done() or gone.done())
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    flag.set()
    async with asyncio.timeout(5):
        await asyncio.gather(first, second)
    assert flag.is_set()


def test_a_text_frame_is_what_websockets_would_write() -> None:
    """text_frame's header at each length boundary (7-bit, 16-bit and 64-bit lengths) and
    with characters of several bytes, byte for byte as websockets serializes the frame; the
    same str twice is encoded once."""
    for text in ["", "a" * 125, "a" * 126, "é" * 63, "é" * 64, "a" * 65535, "a" * 65536, "文字"]:
        expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
        assert text_frame(text) == expected, len(text)
    shared = "x" * 300
    assert text_frame(shared) is text_frame(shared)
