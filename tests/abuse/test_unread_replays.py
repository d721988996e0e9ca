"""Clients that ask for replays and pongs and never read them: the instance holds a bounded
amount for each (about a page of a resume, whose socket then waits for it to drain; at most
CHAT_SEND_QUEUE_MAX_BYTES of answers, then 1013), and keeps serving everyone else."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import orjson
import websockets

from service.protocol import (
    NOTIFY_INLINE_MAX_BYTES,
    NOTIFY_PAYLOAD_MAX_BYTES,
    SIGNATURE_BYTES,
    FanoutKey,
)
from tests.faults.harness import make_users, rss_kib
from tests.support import Instance, metric, unique, ws_connect

# Seeded without a channel: nobody hears these notifications, so any key will do.
KEY = FanoutKey.from_secret("seeding")
ROOMS = 20
CLOSES_1013 = 'chat_closes_total{code="1013"}'
MESSAGES = 600
BODY_CHARS = 4000
MAX_BYTES = 4 * 1024 * 1024
PINGS = 100_000
# A ref is echoed in its pong: long ones fill the socket's kernel buffers sooner.
PING = orjson.dumps({"type": "ping", "ref": "r" * 120}).decode()


async def _seed(database_url: str, author: str) -> list[str]:
    """ROOMS rooms of MESSAGES messages of BODY_CHARS each, stored as the writer does."""
    names = [unique("flood-") for _ in range(ROOMS)]
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        for name in names:
            room_id = await conn.fetchval("INSERT INTO rooms (name) VALUES ($1) RETURNING id", name)
            await conn.execute(
                "SELECT seqs FROM chat_post_messages($1, $2, $3, $4, $5, '{}', '{}', '{}', '{}',"
                " '{}', '{}', '{}', '{}', 20, '{}', NULL, $6, $7, $8, $9, $10)",
                [room_id] * MESSAGES,
                [author] * MESSAGES,
                [f"{i:05d}" + "x" * (BODY_CHARS - 5) for i in range(MESSAGES)],
                [None] * MESSAGES,
                [None] * MESSAGES,
                NOTIFY_PAYLOAD_MAX_BYTES - SIGNATURE_BYTES,
                NOTIFY_INLINE_MAX_BYTES,
                uuid.uuid4(),
                KEY.inner,
                KEY.outer,
            )
    finally:
        await conn.close(timeout=5)
    return names


async def test_unread_resumes_and_pongs_are_bounded(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
    database_url: str,
    secret_key: str,
) -> None:
    (instance,) = await hostile_instances(
        1, CHAT_SEND_QUEUE_MAX_BYTES=MAX_BYTES, CHAT_RATE_LIMIT_PER_SECOND=0
    )
    hostile, bystander = await make_users(database_url, secret_key, 2, prefix="abuse")
    rooms = await _seed(database_url, hostile.name)
    assert instance.proc is not None
    pid = instance.proc.pid
    before = rss_kib(pid)
    peak = before
    closes_before = await metric(instance, CLOSES_1013, default=0.0)

    # Hostile clients queue at most one frame and never read: once their TCP window is
    # full, everything the server sends them waits in the server.
    base = instance.url.replace("http", "ws", 1) + f"/ws?token={hostile.token}"

    async def never_reading() -> websockets.ClientConnection:
        async with asyncio.timeout(10):
            return await websockets.connect(base, max_queue=1, ping_interval=None, close_timeout=1)

    resumer, pinger = await never_reading(), await never_reading()
    sent = 0
    async with ws_connect(instance.url, bystander.token) as watcher:

        async def watch() -> None:
            nonlocal peak
            peak = max(peak, rss_kib(pid))
            # Everyone else is still served meanwhile.
            await watcher.send(type="ping", ref=sent)
            assert await watcher.recv(timeout=10) == {"type": "pong", "ref": sent}

        try:
            # 48 MB of history asked for: the first resume is fed a page at a time as the
            # socket drains, and its socket's next frames wait for its `joined`; so the
            # server stops reading from this client, and its sends stall.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    for room in rooms:
                        frame = {"type": "join", "room": room, "since": 0}
                        await resumer.send(orjson.dumps(frame).decode())
                    while True:
                        await resumer.send('{"type":"ping"}')
            await watch()
            # Pongs it never reads: answers, bounded by size, then 1013 (after which the
            # server reads nothing more from it, and its sends stall).
            with contextlib.suppress(TimeoutError, websockets.ConnectionClosed):
                async with asyncio.timeout(10):
                    while sent < PINGS:
                        await pinger.send(PING)
                        sent += 1
                        if sent % 5000 == 0:
                            await watch()
            async with asyncio.timeout(30):
                while await metric(instance, CLOSES_1013, default=0.0) <= closes_before:
                    peak = max(peak, rss_kib(pid))
                    await asyncio.sleep(0.2)
            await watch()
        finally:
            for ws in (resumer, pinger):
                ws.transport.abort()  # it never reads, so it would never finish a close
        growth_mib = (peak - before) / 1024
        print(f"RSS {before / 1024:.0f} MiB before, peak +{growth_mib:.1f} MiB; {sent} pings")
        # Queued whole, the replays alone would be ~48 MB, and the pongs ~7 MB more.
        assert growth_mib < 3 * MAX_BYTES / 2**20 + 12, f"RSS grew by {growth_mib:.1f} MiB"

        # The instance still serves a resume in full to a client that reads.
        await watcher.send(type="join", room=rooms[0], since=0)
        joined, replay = await watcher.expect("joined", timeout=30)
        assert joined["last_seq"] == MESSAGES and not joined["truncated"]
        assert [m["seq"] for m in replay if m["type"] == "message"] == list(range(1, MESSAGES + 1))
