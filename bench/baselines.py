"""The two baselines the service is compared with.

A, the raw ceiling: what one-transaction-per-message costs with nothing in the way. Each
message is one statement from raw asyncpg (its own implicit transaction: take the room's next
seq with `UPDATE rooms ... RETURNING`, insert the row, `pg_notify` it), on 16 connections,
each writing its own room, so no two connections wait on the same row lock: the only
contention left is PostgreSQL's commit-time NOTIFY lock, and the WAL flush.

B, the naive app (naive_app.py): the same chat written as the documentation examples write
it, served by uvicorn, driven by the same senders as the ingest measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import asyncpg

from . import clients, naive_app
from .cluster import create_rooms, naive_instance, username
from .config import BODY_TEXT
from .figures import Percentiles, Throughput
from .scenarios import Bench, measured, pipelined_run

_RAW_CHANNEL = "bench_raw"
_RAW = """
WITH s AS (
    UPDATE rooms SET last_seq = last_seq + 1, last_message_at = now() WHERE id = $1
    RETURNING id, last_seq
), m AS (
    INSERT INTO messages (room_id, seq, author, body, client_id)
    SELECT id, last_seq, $2, $3, $4 FROM s
    RETURNING room_id, seq, author, body, client_id, created_at
)
SELECT pg_notify($5, json_build_array(room_id, seq, author, body, client_id, created_at)::text)
FROM m
"""


async def raw_asyncpg(bench: Bench) -> Throughput:
    """Baseline A: per-message INSERT + pg_notify transactions from raw asyncpg."""
    p = bench.profile
    n = p.baseline_connections
    step = bench.ui.step(f"baseline A: {n} raw asyncpg connections", None)
    connections: list[asyncpg.Connection] = []
    try:
        connections = [await asyncpg.connect(bench.db.url) for _ in range(n)]
        names = [f"bench-raw-{i}" for i in range(n)]
        rooms = await create_rooms(connections[0], names)
        # Someone listens, as the instances would: NOTIFY then has a reader to keep up.
        listener = await asyncpg.connect(bench.db.url)
        heard = 0

        def hear(*_: object) -> None:
            nonlocal heard
            heard += 1

        await listener.add_listener(_RAW_CHANNEL, hear)
        count = 0
        run = uuid.uuid4().hex[:8]
        latencies: list[float] = []
        cpu: dict[str, float] = {}
        start = time.perf_counter() + 0.2
        measure_from = start + p.warmup_seconds
        stop_at = measure_from + p.ingest_seconds

        async def worker(i: int) -> None:
            nonlocal count
            conn = connections[i]
            statement = await conn.prepare(_RAW)
            author = username(i)
            room_id = rooms[names[i]]
            tag = f"raw{run}-{i}"  # client_ids must not repeat an earlier run's
            await asyncio.sleep(max(start - time.perf_counter(), 0))
            k = 0
            while (began := time.perf_counter()) < stop_at:
                k += 1
                body = f"{tag}-{k} {BODY_TEXT}"
                await statement.fetchval(room_id, author, body, f"{tag}-{k}", _RAW_CHANNEL)
                done = time.perf_counter()
                if measure_from <= done <= stop_at:
                    count += 1
                    latencies.append((done - began) * 1000)

        await asyncio.gather(
            *(worker(i) for i in range(n)),
            step.tick(stop_at - time.perf_counter()),
            measured(bench.cpu_meter, measure_from, stop_at, cpu),
        )
        await asyncio.sleep(0.2)
        await listener.close()
    finally:
        for conn in connections:
            with contextlib.suppress(Exception):
                await conn.close()
        step.done()
    return Throughput(
        label="baseline A (raw asyncpg)",
        per_second=round(count / p.ingest_seconds, 1),
        count=count,
        seconds=p.ingest_seconds,
        setup=(
            f"{n} asyncpg connections, one room each; per message one statement (UPDATE "
            "rooms RETURNING seq, INSERT, pg_notify) = one transaction, prepared, "
            f"{p.ingest_seconds:g} s"
        ),
        latency_ms=Percentiles.of(latencies),
        cpu=cpu,
        notes=[f"{heard} notifications heard by a listener"],
    )


async def naive(bench: Bench) -> Throughput:
    """Baseline B: the naive app, two uvicorn processes, driven like the ingest run."""
    p = bench.profile
    await naive_app.create_schema(bench.db.url)
    logs = bench.workdir / "logs"
    servers = [naive_instance(f"naive-{i + 1}", bench.db, logs) for i in range(2)]
    rooms = [f"naive-{i}" for i in range(p.ingest_rooms)]
    try:
        for server in servers:
            server.start()
        await asyncio.gather(*(s.wait_ready() for s in servers))

        async def open_sender(
            i: int, tag: str, tally: clients.SendTally
        ) -> clients.PipelinedSender:
            room = rooms[(i // 2) % len(rooms)]
            url = clients.naive_url(servers[i % 2].url, room, username(i))
            sender = await clients.open_pipelined(
                url, room, tag, p.ingest_window, tally, join_room=False
            )
            # Its subscription starts after the handshake; two first subscriptions to one
            # channel at once are what broadcaster gets wrong (FACTS.md): give it a moment.
            await asyncio.sleep(0.02)
            return sender

        result = await pipelined_run(
            bench,
            "baseline B",
            open_sender,
            setup=(
                "the FastAPI-docs chat: per message ORM session.add + commit, then "
                "broadcast.publish (broadcaster, Postgres backend); uvicorn defaults; two "
                "processes; driven exactly like ingest"
            ),
            extra_pids={s.name: s.pid for s in servers},
        )
        conn = await asyncpg.connect(bench.db.url)
        try:
            stored = int(await conn.fetchval("SELECT count(*) FROM naive_messages"))
        finally:
            await conn.close()
    finally:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in servers))
    failed = result.errors.get("publish", 0)
    acked = result.count
    # Stored and answered (ack or failed publish) inside the window: what it committed.
    committed = acked + result.errors_in_window.get("publish", 0)
    result.label = "baseline B (naive app)"
    result.count = committed
    result.per_second = round(committed / p.ingest_seconds, 1)
    result.notes.append(
        f"{acked / p.ingest_seconds:.0f} msg/s stored and published; {failed} publishes failed "
        f"({failed / max(failed + acked, 1):.0%} of answers): stored but never delivered live; "
        f"{stored} rows stored in all"
    )
    return result
