"""The HTTP protocol's corked transport (service/httpserver.py), through a real uvicorn
server: a response leaves in one system call where uvicorn's head and body took two; a
large body still arrives whole; a socket upgraded from the connection keeps the corked
transport, unwrapped twice, and gets its frames in order."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import websockets

from service.httpserver import BoundedHeaders
from service.wsserver import CorkedTransport, CorkedWebSocketProtocol
from tests.test_wsserver import _lifespan, _serving

BIG = 1_000_000  # over FLUSH_BYTES: sent as it goes, whole


class Counted(CorkedTransport):
    """Under the corked transport, passing each write to the socket at once, counted."""

    writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        Counted.writes += 1
        self._inner.write(data)


class CountedHttp(BoundedHeaders):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(Counted(transport, self.loop))


UPGRADED: list[asyncio.BaseTransport] = []


class Upgraded(CorkedWebSocketProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        UPGRADED.append(self.transport)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http":
        body = b"x" * BIG if scope["path"] == "/big" else orjson.dumps({"ok": True})
        head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": body})
    else:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        for i in range(100):
            await send({"type": "websocket.send", "text": orjson.dumps({"i": i}).decode()})
        await send({"type": "websocket.close", "code": 1000})


async def test_a_response_leaves_in_one_write() -> None:
    async with (
        _serving(_app, Upgraded, http=CountedHttp) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        r = await http.get("/")  # the connection is made and kept
        assert r.json() == {"ok": True}
        Counted.writes = 0
        for _ in range(20):
            r = await http.get("/")
            assert r.status_code == 200 and r.json() == {"ok": True}
        assert Counted.writes == 20  # head and body together: uncorked, 40
        r = await http.get("/big")
        assert r.status_code == 200 and r.content == b"x" * BIG


async def test_an_upgraded_socket_keeps_the_corked_transport() -> None:
    UPGRADED.clear()
    async with _serving(_app, Upgraded, http=CountedHttp) as port:
        got = []
        async with asyncio.timeout(10):
            async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
                try:
                    while True:
                        got.append(orjson.loads(await ws.recv()))
                except websockets.ConnectionClosedOK:
                    pass
    assert got == [{"i": i} for i in range(100)]
    [transport] = UPGRADED
    assert isinstance(transport, CorkedTransport)
    assert type(transport._inner) is Counted  # corked once, not twice
