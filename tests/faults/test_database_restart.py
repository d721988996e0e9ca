"""PostgreSQL goes away during a send storm, twice: a fast restart, then a crash (immediate
stop) and 3 s of outage. Meanwhile sends are refused with `unavailable`, /readyz says 503 and
sockets stay open; afterwards the instances recover by themselves (pool, listener, catch-up)
and every acked message is there, once, and reached every receiver in order.

The cluster is this module's own, with fsync and synchronous_commit on: an ack given before
the crash must survive it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.client import ClientConnection

from service import pgcluster
from tests.faults.conftest import MakeUsers
from tests.faults.harness import (
    Receiver,
    Sender,
    Storm,
    Urls,
    check_log,
    connect,
    dumps,
    join,
    loads,
    ready,
)
from tests.support import Instance, unique

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

OUTAGE_SECONDS = 3.0


async def _probe_refused(ws: ClientConnection, room: str) -> dict[str, object]:
    """During the outage a send gets `unavailable`, and the socket still answers ping."""
    await ws.send(dumps({"type": "send", "room": room, "body": "probe", "client_id": "probe"}))
    while True:
        frame = loads(await ws.recv())
        if frame["type"] in ("ack", "error") and frame.get("client_id") == "probe":
            break
    await ws.send(dumps({"type": "ping", "ref": "outage"}))
    while (pong := loads(await ws.recv()))["type"] != "pong":
        pass
    assert pong == {"type": "pong", "ref": "outage"}
    return frame


async def _until_not_ready(instances: list[Instance], timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        for instance in instances:
            while await ready(instance.url) != 503:
                await asyncio.sleep(0.1)


async def test_database_restarts_during_a_send_storm(
    cluster: pgcluster.Cluster,
    cluster_database: str,
    start_instances: Callable[..., Awaitable[list[Instance]]],
    users: MakeUsers,
) -> None:
    instances = await start_instances(2, cluster_database)
    a, b = instances
    pids = [i.proc.pid for i in instances if i.proc is not None]
    people = await users(9, database=cluster_database)
    room, probe_room = unique("pg-"), unique("probe-")
    routes = [[a.url, b.url], [b.url, a.url]]
    senders = [
        Sender(people[i], room, Urls(routes[i % 2]), count=500, tag=f"s{i}", rate=40)
        for i in range(4)
    ]
    receivers = [Receiver(people[4 + i], room, Urls(routes[i % 2])) for i in range(4)]
    storm = Storm(cluster_database, senders, receivers)
    probe = await connect(a.url, people[8].token)
    try:
        await join(probe, probe_room, None)
        storm.start()
        await storm.joined()

        await storm.wait_acked(storm.total // 5)
        started = time.monotonic()
        cluster.restart()  # fast: PostgreSQL closes every session
        restarted_in = time.monotonic() - started
        for instance in instances:
            await instance.wait_ready(60)
        recovered_in = time.monotonic() - started

        await storm.wait_acked(storm.total * 3 // 5)
        cluster.stop("immediate")  # a crash: no checkpoint, recovery from WAL at start
        down_at = time.monotonic()
        await _until_not_ready(instances)
        refused = await _probe_refused(probe, probe_room)
        acked_during = storm.acked
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        acked_during = storm.acked - acked_during
        cluster.restart()  # starts it again, same port and settings
        back_at = time.monotonic()
        for instance in instances:
            await instance.wait_ready(60)
        ready_in = time.monotonic() - back_at

        last = await storm.finish(timeout=90)
        # The probe's socket lived through both outages and works again.
        retried = await _probe_refused(probe, probe_room)
    finally:
        await storm.cancel()
        await probe.close()
    unavailable = sum(s.errors["unavailable"] for s in senders)
    print(
        f"\ndatabase restart: {last[room]} messages; fast restart took {restarted_in:.1f}s, "
        f"instances ready {recovered_in:.1f}s after it began; crash outage "
        f"{back_at - down_at:.1f}s, ready {ready_in:.1f}s after the database was back; "
        f"{unavailable} sends refused as unavailable and retried"
    )
    print(storm.summary())
    assert refused["type"] == "error" and refused["code"] == "unavailable", refused
    assert retried["type"] == "ack", retried
    assert acked_during == 0, "nothing can be acked while the database is down"
    assert unavailable > 0
    assert last[room] == storm.total
    # Same processes throughout: they recovered by themselves.
    assert [i.proc.pid for i in instances if i.proc is not None and i.proc.poll() is None] == pids
    # Sockets stayed open through the outage.
    assert all(not c.close_codes for c in storm.clients), storm.summary()
    for instance in instances:
        check_log(instance.log_path, senders)
