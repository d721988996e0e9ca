"""pg_terminate_backend on every LISTEN connection, again and again, during a send storm:
the listeners are rebuilt, /readyz says 503 meanwhile, and every receiver still gets every
message once, in order (what the lost notifications carried is read back from the database)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from tests.faults.conftest import MakeUsers
from tests.faults.harness import Receiver, Sender, Storm, Urls, check_log, metric, ready
from tests.support import Instance, unique

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KILLS = 3
_LISTENERS = (
    "FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%' "
    "AND pid <> pg_backend_pid()"
)


async def _terminate_listeners(database_url: str, expected: int) -> int:
    """Once `expected` LISTEN connections exist (the rebuilt ones, right after they LISTEN),
    terminate them all; returns how many."""
    conn = await asyncpg.connect(database_url)
    try:
        async with asyncio.timeout(20):
            while await conn.fetchval(f"SELECT count(*) {_LISTENERS}") < expected:
                await asyncio.sleep(0.05)
        await asyncio.sleep(random.uniform(0.2, 1.0))
        killed = await conn.fetchval(f"SELECT count(pg_terminate_backend(pid)) {_LISTENERS}")
    finally:
        await conn.close()
    return int(killed)


async def test_listener_terminated_repeatedly_during_a_send_storm(
    start_instances: Callable[..., Awaitable[list[Instance]]],
    users: MakeUsers,
    own_database: str,
) -> None:
    instances = await start_instances(2, own_database)
    a, b = instances
    people = await users(8, database=own_database)
    room = unique("listen-")
    routes = [[a.url, b.url], [b.url, a.url]]
    # Paced so that the storm outlasts every kill: 4 x 50 msg/s for ~12 s.
    senders = [
        Sender(people[i], room, Urls(routes[i % 2]), count=600, tag=f"s{i}", rate=50)
        for i in range(4)
    ]
    receivers = [Receiver(people[4 + i], room, Urls(routes[i % 2])) for i in range(4)]
    reconnects_before = [await metric(i.url, "chat_listener_reconnects_total") for i in instances]
    storm = Storm(own_database, senders, receivers)
    storm.start()
    await storm.joined()

    not_ready: set[str] = set()

    async def watch() -> None:
        while True:
            for instance in instances:
                if await ready(instance.url) == 503:
                    not_ready.add(instance.url)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    killed = []
    started = time.monotonic()
    try:
        for _ in range(KILLS):
            killed.append(await _terminate_listeners(own_database, len(instances)))
        acked_at_last_kill = storm.acked
        last = await storm.finish(timeout=60)
        for instance in instances:
            await instance.wait_ready(30)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    reconnects = [
        await metric(i.url, "chat_listener_reconnects_total") - before
        for i, before in zip(instances, reconnects_before, strict=True)
    ]
    print(
        f"\nlistener kills: terminated {killed} LISTEN backends, {last[room]} messages, "
        f"listener rebuilds per instance {reconnects}, {time.monotonic() - started:.1f}s"
    )
    print(storm.summary())
    assert killed == [2] * KILLS, "each instance should hold one LISTEN connection"
    assert acked_at_last_kill < storm.total, "the kills should fall inside the storm"
    assert last[room] == storm.total
    assert all(r >= KILLS for r in reconnects), reconnects
    assert not_ready == {a.url, b.url}, "/readyz never reported the dead listener"
    # Nobody's socket was closed: the fan-out recovered underneath them.
    assert all(not c.close_codes for c in storm.clients), storm.summary()
    for instance in instances:
        check_log(instance.log_path, senders)
