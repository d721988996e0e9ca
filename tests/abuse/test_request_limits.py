"""REST bodies and request headers, pushed past their bounds on a real instance: oversize and
endlessly streamed bodies are 413, slow ones 408; idle connections, headers that trickle in
a byte at a time and headers of any size are cut off, while other clients are served as
usual."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import orjson

from tests.abuse.wire import Answer, Raw, handshake, request
from tests.support import Instance, new_user, unique

LIMIT = 65536  # CHAT_MAX_REQUEST_BYTES's default
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
SLOW = {
    "CHAT_HEADER_TIMEOUT_SECONDS": HEADER_TIMEOUT,
    "CHAT_BODY_TIMEOUT_SECONDS": BODY_TIMEOUT,
    "CHAT_RATE_LIMIT_PER_SECOND": 0,
}


def _post(path: str, token: str, extra: list[tuple[str, bytes]], body: bytes = b"") -> bytes:
    headers = [
        ("Host", b"127.0.0.1"),
        ("Authorization", f"Bearer {token}".encode()),
        ("Content-Type", b"application/json"),
        *extra,
    ]
    return request("POST", path, headers, body)


async def _stream(port: int, head: bytes, chunks: list[bytes]) -> tuple[Answer, int]:
    """Send `head`, then `chunks` in chunked encoding and the final empty chunk, stopping
    when the server answers or closes; its answer and the body bytes sent."""
    raw = await Raw.open(port)
    try:
        answering = asyncio.create_task(raw.answer(timeout=30))
        await raw.write(head)
        sent = 0
        for chunk in chunks:
            if answering.done() or not await raw.write(b"%x\r\n%s\r\n" % (len(chunk), chunk)):
                break
            sent += len(chunk)
        else:
            await raw.write(b"0\r\n\r\n")
        return await answering, sent
    finally:
        await raw.close()


async def test_oversize_and_streamed_bodies_are_413(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
) -> None:
    (instance,) = await hostile_instances(1, **SLOW)
    room = unique("body-")
    path = f"/api/rooms/{room}/messages"
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        user = await new_user(http)
        # The largest legal message, each character escaped as a surrogate pair: 48 kB.
        largest = '{"body": "' + "\\ud83d\\ude00" * 4000 + '"}'
        json = {**user.headers, "Content-Type": "application/json"}
        r = await http.post(path, content=largest, headers=json)
        assert r.status_code == 201, r.text[:300]

    # Declared too large by a client that waits for 100 Continue: refused before a byte of
    # the body is sent.
    raw = await Raw.open(instance.port)
    try:
        declared = [("Content-Length", b"10000000"), ("Expect", b"100-continue")]
        assert await raw.write(_post(path, user.token, declared))
        waited = await raw.answer(timeout=5)
    finally:
        await raw.close()
    assert (waited.status, waited.json(), waited.closed) == (
        413,
        {"detail": f"request body too large: at most {LIMIT} bytes"},
        True,
    )
    assert waited.seconds < 1, waited
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        # Declared too large by a client that sends it at once (100 kB): it gets the 413.
        r = await http.post(path, content=b"x" * 100_000, headers=json)
        assert (r.status_code, r.headers["connection"]) == (413, "close"), r.text[:300]
        assert r.json() == {"detail": f"request body too large: at most {LIMIT} bytes"}

    # Chunked, 100 kB: refused once past the limit, and the client reads its 413.
    chunked = [("Transfer-Encoding", b"chunked")]
    over = [b" " * 4096] * 25
    streamed, _ = await _stream(instance.port, _post(path, user.token, chunked), over)
    assert (streamed.status, streamed.closed) == (413, True), streamed
    # Chunked, 10 MiB offered: cut off (a 413, or a reset since the client is still sending)
    # before the client could send it all, though socket buffers on both sides take a few
    # MB of it meanwhile.
    endless = [b" " * 4096] * 2560
    cut, sent = await _stream(instance.port, _post(path, user.token, chunked), endless)
    assert cut.status in (0, 413) and cut.closed, cut
    assert sent < len(endless) * 4096 and cut.seconds < 5, (sent, cut)
    # Chunked and within the limit: stored like any other post.
    body = orjson.dumps({"body": "y" * 4000})
    pieces = [body[i : i + 500] for i in range(0, len(body), 500)]
    small, _ = await _stream(instance.port, _post(path, user.token, chunked), pieces)
    assert small.status == 201, small

    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        r = await http.get(path, headers=user.headers)
    stored = r.json()["messages"]
    assert [m["body"][:1] for m in stored] == ["\U0001f600", "y"], "nothing refused is stored"
    print(
        f"\n413 to a declared 10 MB in {waited.seconds * 1000:.0f} ms, to 100 kB sent at once "
        f"and to 100 kB chunked; chunked 10 MiB cut ({cut.status or 'reset'}) after {sent} B"
    )


async def test_slow_and_idle_clients_are_cut_off(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
) -> None:
    (instance,) = await hostile_instances(1, **SLOW)
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        user = await new_user(http)
    port = instance.port

    async def idle() -> Answer:
        raw = await Raw.open(port)
        try:
            return await raw.answer(timeout=10)
        finally:
            await raw.close()

    async def trickle(data: bytes, prefix: int) -> Answer:
        """Send `prefix` bytes, then the rest a byte every 0.2 s (never finishing in time)."""
        raw = await Raw.open(port)
        try:
            answering = asyncio.create_task(raw.answer(timeout=10))
            await raw.write(data[:prefix])
            for byte in data[prefix:]:
                if answering.done() or not await raw.write(bytes([byte])):
                    break
                await asyncio.sleep(0.2)
            return await answering
        finally:
            await raw.close()

    slow_headers = request("GET", "/api/config", [("Host", b"127.0.0.1"), ("X-Pad", b"p" * 60)])
    slow_socket = handshake(b"127.0.0.1", extra=[("X-Pad", b"p" * 60)])
    slow_body = _post(
        f"/api/rooms/{unique('slow-')}/messages",
        user.token,
        [("Content-Length", b"200")],
        b'{"body": "' + b"x" * 188 + b'"}',
    )
    body_start = len(slow_body) - 200
    clients = (
        [idle() for _ in range(40)]
        + [trickle(slow_headers, 20) for _ in range(40)]
        + [trickle(slow_socket, 20) for _ in range(10)]
        + [trickle(slow_body, body_start + 5) for _ in range(20)]
    )

    latencies: list[float] = []
    stop = asyncio.Event()

    async def bystander() -> None:
        """A normal client meanwhile: its requests are answered at once."""
        async with httpx.AsyncClient(base_url=instance.url, timeout=5) as http:
            while not stop.is_set():
                started = time.monotonic()
                assert (await http.get("/healthz")).status_code == 200
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.1)

    watching = asyncio.create_task(bystander())
    async with asyncio.timeout(30):
        answers = await asyncio.gather(*clients)
    stop.set()
    await watching

    headers_cut, body_cut = answers[:90], answers[90:]
    for answer in headers_cut:
        assert (answer.status, answer.closed) == (408, True), answer
        assert answer.json() == {"detail": "request headers not received in time"}
        assert HEADER_TIMEOUT - 0.1 <= answer.seconds <= HEADER_TIMEOUT + 1.5, answer
    for answer in body_cut:
        assert (answer.status, answer.closed) == (408, True), answer
        assert answer.json() == {"detail": f"request body not received within {BODY_TIMEOUT:g} s"}
        assert BODY_TIMEOUT <= answer.seconds <= BODY_TIMEOUT + 1.5 + 0.2 * 5, answer
    assert latencies and max(latencies) < 0.5, max(latencies)

    # Headers past CHAT_MAX_HEADER_BYTES are cut off at once, not at the timeout; headers
    # just under it (a 60 kB cookie) are served.
    big = await Raw.open(port)
    try:
        await big.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: ")
        while big.sent < 1024 * 1024 and await big.write(b"c" * 4096):
            await asyncio.sleep(0)
        cut = await big.answer(timeout=5)
    finally:
        await big.close()
    assert cut.closed and cut.status in (0, 431), cut
    assert cut.seconds < HEADER_TIMEOUT - 0.5, cut
    under = await Raw.open(port)
    try:
        cookie = [("Host", b"127.0.0.1"), ("Cookie", b"c" * 60000), ("Connection", b"close")]
        await under.write(request("GET", "/healthz", cookie))
        served = await under.answer(timeout=5)
    finally:
        await under.close()
    assert served.status == 200, served
    print(
        f"\n90 slow/idle header clients: 408 after {min(a.seconds for a in headers_cut):.2f}–"
        f"{max(a.seconds for a in headers_cut):.2f} s; 20 slow bodies: 408 after "
        f"{min(a.seconds for a in body_cut):.2f}–{max(a.seconds for a in body_cut):.2f} s; "
        f"bystander max {max(latencies) * 1000:.0f} ms over {len(latencies)} requests; "
        f"oversized headers cut after {cut.seconds * 1000:.0f} ms "
        f"({big.sent} B written, status {cut.status or 'reset'})"
    )
