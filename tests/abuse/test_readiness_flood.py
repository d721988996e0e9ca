"""A flood of /readyz probes costs the database at most about one ping per second, counted by
PostgreSQL itself (pg_stat_statements: the ping is the service's only `SELECT 1`); and the
answer stays honest: 503 soon after the database goes, 200 again once it is back.

The cluster is this module's own, with pg_stat_statements loaded."""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import httpx
import pytest

from service import migrate, pgcluster
from service.settings import Settings
from tests.support import Instance

PROBES = 2000  # at least, and for at least FLOOD_SECONDS
FLOOD_SECONDS = 3.0
CONCURRENCY = 50
# The ping's statement, as pg_stat_statements shows it (with its constant, or normalised).
PINGS = ["SELECT 1", "SELECT $1"]


@pytest.fixture(scope="module")
def stats_database() -> Iterator[tuple[pgcluster.Cluster, str]]:
    root = Path(tempfile.mkdtemp(prefix="chat-abuse-pg-"))
    root.chmod(0o755)  # the server runs as another user and must reach its data dir
    cluster = pgcluster.start_cluster(
        root / "data", settings={"shared_preload_libraries": "pg_stat_statements"}
    )
    try:
        pgcluster.ensure_database(cluster.admin_url, "chat")
        url = cluster.url("chat")
        migrate.upgrade(Settings(database_url=url))
        asyncio.run(_execute(url, "CREATE EXTENSION pg_stat_statements"))
        yield cluster, url
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


async def _pings(url: str) -> int:
    """How many times the chat database has run the ping since the last reset."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        calls = await conn.fetchval(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = 'chat' AND s.query = ANY($1::text[])",
            PINGS,
        )
    finally:
        await conn.close(timeout=5)
    return int(calls)


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close(timeout=5)


async def test_a_probe_flood_costs_one_ping_a_second(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
    stats_database: tuple[pgcluster.Cluster, str],
) -> None:
    cluster, url = stats_database
    (instance,) = await hostile_instances(1, database=url)
    await _execute(url, "SELECT pg_stat_statements_reset()")
    await asyncio.sleep(1.1)  # the readiness probes of the start are older than the interval
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    # aiohttp: the load generator should cost less CPU than the server it loads.
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(instance.url, connector=connector, timeout=timeout) as http:

        async def prober() -> None:
            while statuses.total() < PROBES or time.monotonic() - started < FLOOD_SECONDS:
                async with http.get("/readyz") as r:
                    await r.read()
                    statuses[r.status] += 1

        async with asyncio.timeout(60):
            await asyncio.gather(*(prober() for _ in range(CONCURRENCY)))
    elapsed = time.monotonic() - started
    pings = await _pings(url)
    probes = statuses[200]
    assert statuses == {200: probes} and probes >= PROBES, statuses
    # One ping per started second of the flood, at most (the first at its start); and one
    # each second indeed: the answer is refreshed, not frozen.
    assert max(1, math.floor(elapsed) - 1) <= pings <= math.ceil(elapsed) + 1, (pings, elapsed)
    print(f"\n{probes} probes in {elapsed:.2f} s: {pings} database pings")

    # Honest: the database goes, and within the interval plus a ping's timeout (2 s) the
    # instance says 503 (here the listener's connection goes with it, which says so at
    # once); it comes back, and so does 200.
    await asyncio.to_thread(cluster.stop, "fast")
    gone = time.monotonic()
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as client:
        async with asyncio.timeout(15):
            while (await client.get("/readyz")).status_code != 503:
                await asyncio.sleep(0.05)
        noticed = time.monotonic() - gone
        await asyncio.to_thread(cluster.restart)
        back = time.monotonic()
        async with asyncio.timeout(30):
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.05)
        recovered = time.monotonic() - back
    assert noticed < 1 + 2 + 1, noticed
    print(
        f"503 {noticed:.2f} s after the database stopped; 200 {recovered:.2f} s after it came back"
    )
