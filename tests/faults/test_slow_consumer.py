"""A client that stops reading, next to fast ones, under a storm of large messages: the fast
ones get everything promptly, the slow one is closed with 1013 once CHAT_SEND_QUEUE_LIMIT
frames wait for it, gets everything on resume, and the server's memory stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.faults.conftest import MakeUsers
from tests.faults.harness import (
    Receiver,
    Sender,
    Storm,
    Urls,
    check_log,
    check_received,
    close_code,
    connect,
    delivery_lag,
    join,
    loads,
    metric,
    rss_kib,
)
from tests.support import Instance, unique

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

QUEUE_LIMIT = 50
BODY_CHARS = 3000  # of a 3-byte character: 9 kB frames
MESSAGES = 2000  # 18 MB to every receiver, far past the 4 MB a kernel socket may buffer
RSS_GROWTH_LIMIT_KIB = 64 * 1024


def _tiny_socket(port: int) -> socket.socket:
    """A connected TCP socket with a receive buffer as small as Linux allows."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def _body(tag: str, i: int) -> str:
    """BODY_CHARS of random CJK text (3 bytes each in UTF-8): compression cannot shrink it."""
    rng = random.Random(f"{tag}-{i}")
    return f"{tag} {i} " + "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(BODY_CHARS))


async def _read_until_closed(ws: ClientConnection) -> list[int]:
    """The seqs of every message frame up to the close."""
    got: list[int] = []
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(30):
            while True:
                frame = loads(await ws.recv())
                if frame["type"] == "message":
                    got.append(frame["seq"])
    return got


async def test_slow_consumer_is_cut_off_and_resumes(
    start_instances: Callable[..., Awaitable[list[Instance]]],
    users: MakeUsers,
    database_url: str,
) -> None:
    (server,) = await start_instances(1, CHAT_SEND_QUEUE_LIMIT=QUEUE_LIMIT)
    assert server.proc is not None
    people = await users(6)
    room = unique("slow-")
    urls = [server.url]
    senders = [
        Sender(people[i], room, Urls(urls), count=MESSAGES // 2, tag=f"s{i}", body=_body)
        for i in range(2)
    ]
    fast = [Receiver(people[2 + i], room, Urls(urls)) for i in range(3)]
    storm = Storm(database_url, senders, fast)
    closed_1013 = 'chat_closes_total{code="1013"}'
    closes_before = await metric(server.url, closed_1013, 0)
    # The slow client joins, then stops reading: websockets stops reading from the socket
    # once one frame waits, and the kernel buffer behind it is tiny. No compression, so
    # what the server writes is what fills the buffers.
    slow = await connect(
        server.url,
        people[5].token,
        sock=_tiny_socket(server.port),
        max_queue=1,
        compression=None,
    )
    resumed = Receiver(people[5], room, Urls(urls))
    resuming: asyncio.Task[None] | None = None
    try:
        await join(slow, room, None)
        rss_before = rss_kib(server.proc.pid)
        started = time.monotonic()
        storm.start()
        await storm.joined()
        async with asyncio.timeout(60):
            while await metric(server.url, closed_1013, 0) == closes_before:
                await asyncio.sleep(0.1)
        cut_at = storm.acked
        # Reading again, it gets what was buffered for it, then the close frame.
        got = await _read_until_closed(slow)
        slow_close = close_code(slow)
        # It resumes with since, while the storm goes on.
        resumed.seqs = list(got)
        resuming = asyncio.create_task(resumed.run())
        last = await storm.finish(timeout=60)
        elapsed = time.monotonic() - started
        resumed.finish(last[room])
        async with asyncio.timeout(30):
            await resumed.reached.wait()
        rss_after = rss_kib(server.proc.pid)
    finally:
        await slow.close()
        await storm.cancel()
        if resuming is not None:
            resuming.cancel()
            await asyncio.gather(resuming, return_exceptions=True)
    check_received(resumed, last[room])
    lags = [delivery_lag(r, senders) for r in fast]
    closes = await metric(server.url, closed_1013, 0) - closes_before
    print(
        f"\nslow consumer: {last[room]} messages of {BODY_CHARS} 3-byte chars in {elapsed:.1f}s; "
        f"fast receivers' worst lag after ack {max(lags) * 1000:.0f} ms; slow client cut off "
        f"after {cut_at} acks, got {len(got)} before its close ({slow_close}) and "
        f"{len(resumed.seqs) - len(got)} on resume; server RSS {rss_before // 1024} -> "
        f"{rss_after // 1024} MiB"
    )
    assert slow_close == 1013
    assert closes == 1
    assert len(got) < last[room] // 2, "the slow client was not cut off early"
    assert max(lags) < 3.0, lags  # nobody waits for the slow one
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB
    for instance in (server,):
        check_log(instance.log_path, senders)
