"""A client that stops reading, next to fast ones, under a storm of large messages: the fast
ones get everything promptly, the slow one is closed with 1013 once more than
CHAT_SEND_QUEUE_LIMIT live frames wait for it, gets everything on resume, and the server's
memory stays bounded. A resume longer than that limit is not itself cut off."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

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
    dumps,
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
# Per sender: 500 messages (4.5 MB) a second to each receiver. Unpaced, the senders outran
# this test's own process on a loaded machine, and the fast receivers were cut off too.
RATE = 250
RESUMED = 800  # a replay of 7 MB: most of it still queued when live messages come behind it
LIVE = 20  # fewer than QUEUE_LIMIT
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
        Sender(people[i], room, Urls(urls), count=MESSAGES // 2, tag=f"s{i}", rate=RATE, body=_body)
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
    # Only the slow one was cut off: the fast receivers, the senders and the resumed client
    # (whose resume is longer than the limit) never were.
    assert [s.close_codes for s in senders] == [[], []]
    assert [r.close_codes for r in (*fast, resumed)] == [[], [], [], []]
    assert closes == 1
    assert len(got) < last[room] // 2, "the slow client was not cut off early"
    assert max(lags) < 3.0, lags  # nobody waits for the slow one
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB
    for instance in (server,):
        check_log(instance.log_path, senders)


async def _send_and_see(ws: ClientConnection, room: str, tag: str, count: int) -> None:
    """Send `count` messages on `ws` (a member of `room`), a window at a time, each window
    waited for until its messages come back as `message` frames: then they have been queued
    to every local member of the room."""
    window = QUEUE_LIMIT // 2
    async with asyncio.timeout(60):
        for start in range(0, count, window):
            ids: set[str] = set()
            for i in range(start, min(start + window, count)):
                ids.add(client_id := f"{tag}-{i}")
                frame = {
                    "type": "send",
                    "room": room,
                    "body": _body(tag, i),
                    "client_id": client_id,
                }
                await ws.send(dumps(frame))
            while ids:
                frame = loads(await ws.recv())
                assert frame["type"] != "error", frame
                if frame["type"] == "message":
                    ids.discard(frame["client_id"])


async def _drain(ws: ClientConnection, quiet: float) -> list[dict[str, Any]]:
    """The frames that arrive until none has for `quiet` seconds."""
    frames = []
    with contextlib.suppress(TimeoutError):
        while True:
            async with asyncio.timeout(quiet):
                frames.append(loads(await ws.recv()))
    return frames


async def test_resume_longer_than_the_queue_limit_is_not_cut_off(
    start_instances: Callable[..., Awaitable[list[Instance]]],
    users: MakeUsers,
) -> None:
    """A join's replay answers the client's own request: hundreds of replayed frames still
    waiting for a client do not count toward CHAT_SEND_QUEUE_LIMIT, so live messages arriving
    behind them do not close it with 1013, and it gets the replay and the live messages once
    each, in order."""
    (server,) = await start_instances(1, CHAT_SEND_QUEUE_LIMIT=QUEUE_LIMIT)
    author, reader = await users(2)
    room = unique("resume-")
    closed_1013 = 'chat_closes_total{code="1013"}'
    writer = await connect(server.url, author.token)
    resumer = await connect(
        server.url, reader.token, sock=_tiny_socket(server.port), max_queue=1, compression=None
    )
    try:
        await join(writer, room, None)
        await _send_and_see(writer, room, "old", RESUMED)
        closes_before = await metric(server.url, closed_1013, 0)
        await resumer.send(dumps({"type": "join", "room": room, "since": 0}))
        # Its first replayed frame: the whole replay is queued and the client is a member.
        async with asyncio.timeout(30):
            first = loads(await resumer.recv())
        assert (first["type"], first["seq"]) == ("message", 1), first
        # Not reading on: the live messages are queued behind most of the replay.
        await _send_and_see(writer, room, "live", LIVE)
        seqs = [first["seq"]]
        joined: dict[str, object] = {}
        async with asyncio.timeout(30):
            while len(seqs) < RESUMED + LIVE:
                frame = loads(await resumer.recv())
                if frame["type"] == "rooms":  # the user's own stream: joining made a member
                    continue
                assert frame["type"] in ("message", "joined"), frame
                if frame["type"] == "joined":
                    joined = frame
                else:
                    seqs.append(frame["seq"])
        closes = await metric(server.url, closed_1013, 0) - closes_before
        # Nothing but the user's own stream may follow (its `rooms` frame comes whenever the
        # enrolment does): no message twice. Read it all, so that the client (max_queue=1)
        # reads the server's close frame when it closes.
        after = await _drain(resumer, 1.0)
        assert all(f["type"] == "rooms" for f in after), after
    finally:
        await writer.close()
        await resumer.close()
    print(f"\nresume of {RESUMED} with {LIVE} live behind it: {closes:.0f} closed with 1013")
    assert seqs == list(range(1, RESUMED + LIVE + 1))
    assert joined.get("last_seq") == RESUMED, joined
    assert close_code(resumer) == 1000
    assert closes == 0
