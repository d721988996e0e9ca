"""Raw HTTP/1.1 over loopback, for requests no well-behaved client library would send:
arbitrary header bytes, bodies that never end, headers that trickle in. Every read has a
timeout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass

import orjson

WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@dataclass
class Answer:
    """What came back: the status (0 when the connection closed with no response), the
    headers (lower-case names), the body as far as it was read, when it ended."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float = 0.0
    closed: bool = False

    def json(self) -> object:
        return orjson.loads(self.body)


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        return Answer(0, {}, raw)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        body = body[: int(length)]
    return Answer(status, headers, body)


def request(method: str, path: str, headers: list[tuple[str, bytes]], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode()]
    lines += [name.encode() + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def handshake(
    host: bytes, origin: bytes | None = None, extra: list[tuple[str, bytes]] | None = None
) -> bytes:
    """A WebSocket opening handshake for /ws with these Host and Origin values."""
    headers = [
        ("Host", host),
        ("Upgrade", b"websocket"),
        ("Connection", b"Upgrade"),
        ("Sec-WebSocket-Key", WS_KEY.encode()),
        ("Sec-WebSocket-Version", b"13"),
    ]
    if origin is not None:
        headers.append(("Origin", origin))
    return request("GET", "/ws", headers + (extra or []))


def exchange(port: int, data: bytes, timeout: float = 5.0) -> Answer:
    """Blocking (for hypothesis, which drives sync functions): send `data`, read until the
    headers of the answer (and its Content-Length of body) are in, or the server closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        raw = b""
        closed = False
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            raw += chunk
            answer = parse(raw)
            if answer.status and b"\r\n\r\n" in raw:
                length = answer.headers.get("content-length")
                if answer.status == 101 or length is None or len(answer.body) >= int(length):
                    break
    answer = parse(raw)
    answer.seconds, answer.closed = time.monotonic() - started, closed
    return answer


class Raw:
    """An asyncio connection for scenarios that write and read at their own pace."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.started = time.monotonic()
        self.sent = 0

    @classmethod
    async def open(cls, port: int) -> Raw:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def write(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        try:
            self.writer.write(data)
            async with asyncio.timeout(5):
                await self.writer.drain()
        except (ConnectionError, TimeoutError):
            return False
        self.sent += len(data)
        return True

    async def answer(self, timeout: float) -> Answer:
        """Everything the server sends until it closes (or `timeout`), parsed; `seconds`
        counts from the connection's opening."""
        raw = b""
        closed = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        chunk = await self.reader.read(65536)
                    except ConnectionError:
                        closed = True
                        break
                    if not chunk:
                        closed = True
                        break
                    raw += chunk
        answer = parse(raw)
        answer.seconds, answer.closed = time.monotonic() - self.started, closed
        return answer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.writer.wait_closed()
