"""1,000 sockets on one instance with steady traffic for a minute (CHAT_SOAK_SECONDS), then
all disconnect: every socket got its room's messages once, in order; the instance's memory is
back near where a short warm-up round left it, and no task or connection is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.faults.conftest import MakeUsers
from tests.faults.harness import (
    Sender,
    Urls,
    check_log,
    check_stored,
    connect,
    join,
    loads,
    metric,
    rss_kib,
)
from tests.support import Instance, User, assert_exactly_once_in_order, unique

SOAK_SECONDS = float(os.environ.get("CHAT_SOAK_SECONDS", "60"))
WARMUP_SECONDS = 5.0
USERS, SOCKETS_PER_USER, ROOMS = 50, 20, 20  # 1,000 sockets, 50 in each room
MESSAGES_PER_SECOND = 50.0  # in all, spread evenly over the rooms
CONNECT_CONCURRENCY = 50
# How far above the warm-up round the long round may leave the heap (fragmentation, caches).
RSS_MARGIN_KIB = 24 * 1024
TASK_SLACK = 3  # the scrape's own request, timers that come and go

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300 + 2 * SOAK_SECONDS)]


@dataclass
class Listener:
    """One of the 1,000 sockets: records the seqs of its room."""

    ws: ClientConnection
    room: str
    seqs: list[int] = field(default_factory=list)

    async def read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = loads(await self.ws.recv())
                if frame["type"] == "message" and frame["room"] == self.room:
                    self.seqs.append(frame["seq"])


async def _open(url: str, user: User, room: str, gate: asyncio.Semaphore) -> Listener:
    async with gate:
        ws = await connect(url, user.token)
        joined, _ = await join(ws, room, None)
        assert joined["last_seq"] == 0
        return Listener(ws, room)


async def _settled(url: str, timeout: float = 30) -> float:
    """Wait until no socket is open and the task count stops falling; returns that count."""
    async with asyncio.timeout(timeout):
        while await metric(url, "chat_connections") > 0:
            await asyncio.sleep(0.2)
        tasks = await metric(url, "chat_asyncio_tasks")
        while True:
            await asyncio.sleep(1.0)
            now = await metric(url, "chat_asyncio_tasks")
            if now >= tasks:
                return now
            tasks = now


@dataclass
class Round:
    seconds: float
    messages: int = 0
    connect_seconds: float = 0.0
    peak_connections: float = 0.0
    peak_rss_kib: int = 0
    rss_kib: int = 0  # after every socket closed
    tasks: float = 0.0  # likewise


async def _round(
    server: Instance,
    database_url: str,
    listening: list[User],
    sending: list[User],
    seconds: float,
) -> Round:
    """Open every socket, send for `seconds`, check what every socket got, close them all."""
    assert server.proc is not None
    result = Round(seconds)
    rooms = [unique(f"soak{i}-") for i in range(ROOMS)]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    started = time.monotonic()
    listeners = await asyncio.gather(
        *(
            _open(server.url, user, rooms[u % ROOMS], gate)
            for u, user in enumerate(listening)
            for _ in range(SOCKETS_PER_USER)
        )
    )
    result.connect_seconds = time.monotonic() - started
    reading = [asyncio.create_task(listener.read()) for listener in listeners]
    per_room = MESSAGES_PER_SECOND / ROOMS
    senders = [
        Sender(user, room, Urls([server.url]), count=int(per_room * seconds), tag=f"t{i}")
        for i, (user, room) in enumerate(zip(sending, rooms, strict=True))
    ]
    for sender in senders:
        sender.rate = per_room
    try:
        result.peak_connections = await metric(server.url, "chat_connections")
        async with asyncio.timeout(seconds + 60):
            await asyncio.gather(*(s.run() for s in senders))
        last = await check_stored(database_url, senders)
        result.messages = sum(last.values())
        async with asyncio.timeout(30):
            while any(len(lst.seqs) < last[lst.room] for lst in listeners):
                await asyncio.sleep(0.1)
        result.peak_rss_kib = rss_kib(server.proc.pid)
        for listener in listeners:
            assert_exactly_once_in_order(listener.seqs, 1, last[listener.room])
    finally:
        await asyncio.gather(*(lst.ws.close() for lst in listeners), return_exceptions=True)
        for task in reading:
            task.cancel()
        await asyncio.gather(*reading, return_exceptions=True)
    result.tasks = await _settled(server.url)
    result.rss_kib = rss_kib(server.proc.pid)
    return result


async def test_a_thousand_sockets_for_a_minute(
    start_instances: Callable[..., Awaitable[list[Instance]]],
    users: MakeUsers,
    database_url: str,
) -> None:
    (server,) = await start_instances(1)
    assert server.proc is not None
    listening = await users(USERS)
    sending = await users(ROOMS)
    idle_tasks = await _settled(server.url)
    idle_rss = rss_kib(server.proc.pid)
    warm = await _round(server, database_url, listening, sending, WARMUP_SECONDS)
    soak = await _round(server, database_url, listening, sending, SOAK_SECONDS)
    print(
        f"\nsoak: idle {idle_rss // 1024} MiB, {idle_tasks:.0f} tasks; "
        + "; ".join(
            f"{r.seconds:.0f}s round: {r.peak_connections:.0f} sockets opened in "
            f"{r.connect_seconds:.1f}s, {r.messages} messages, peak {r.peak_rss_kib // 1024} "
            f"MiB, after {r.rss_kib // 1024} MiB and {r.tasks:.0f} tasks"
            for r in (warm, soak)
        )
    )
    assert warm.peak_connections >= USERS * SOCKETS_PER_USER
    assert soak.messages >= int(MESSAGES_PER_SECOND * SOAK_SECONDS) - ROOMS
    assert await metric(server.url, "chat_connections") == 0
    assert soak.tasks <= warm.tasks + TASK_SLACK, (warm.tasks, soak.tasks)
    assert soak.tasks <= idle_tasks + TASK_SLACK, (idle_tasks, soak.tasks)
    assert soak.rss_kib - warm.rss_kib < RSS_MARGIN_KIB, (warm.rss_kib, soak.rss_kib)
    check_log(server.log_path)
