"""Search at scale (issue #16): `rows` messages over thousands of rooms (2,000 a room), a user
in 50 of them, and GET /api/search through the instances: one word drawn from the vocabulary
(most are rare), one word drawn by how often it is written (common words), and a
two-character Chinese substring. Plus ingest with the search index dropped, to put beside
ingest with it.

Bodies are drawn from a pool made once in Python (words of a 20,000-word vocabulary at Zipf
frequencies; one body in ten with a run of Han characters), so the stored lexemes are the
service's own (service/search_text.py); messages are inserted in SQL, the index built after.
Message g of the load is room g mod rooms, with the body a multiplicative hash of g picks:
every room gets 2,000 different bodies, so a word is spread over the rooms as in real
traffic (a linear pick gave each room 10 bodies repeated 200 times, which made a common word
absent from most rooms and walking those rooms read their whole history).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import string
import time
from collections.abc import Awaitable, Callable

import asyncpg
import orjson

from service.db import create_engine
from service.search import Search
from service.search_text import search_vector
from service.settings import Settings

from .cluster import create_rooms, username
from .figures import Percentiles, SearchFigures, Throughput, size_label
from .scenarios import Bench, http_sessions

VOCABULARY = 20_000
POOL = 50_000
PER_ROOM = 2_000
MEMBER_ROOMS = 50
REQUESTS = 300  # per kind of query
_SLOWEST = 5  # the queries reported with how they were found
# Common Han characters, the runs of the bodies that have some.
HAN = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家"
    "学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见"
    "经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话"
)
_INDEX = "CREATE INDEX IF NOT EXISTS ix_messages_search ON messages USING gin (search)"
_LOAD = """
INSERT INTO messages (room_id, seq, author, body, created_at, search)
SELECT r.ids[g % $3 + 1], g / $3 + 1, 'bench_' || lpad((g % 50)::text, 5, '0'), p.body,
       $4::timestamptz + g * interval '1 millisecond', CAST(p.search AS tsvector)
FROM generate_series($1::bigint, $2::bigint) AS g
CROSS JOIN (SELECT $5::bigint[] AS ids) AS r
JOIN bench_search_pool p ON p.i = ((g * 2654435761) % 4294967296) % $6
"""


def _pool(
    rng: random.Random, size: int
) -> tuple[list[str], list[float], list[tuple[int, str, str]]]:
    """The vocabulary, its cumulative Zipf weights, and `size` bodies (i, body, lexemes)."""
    words = sorted(
        {"".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(30_000)}
    )
    rng.shuffle(words)
    vocabulary = words[:VOCABULARY]
    weights = [1 / (rank + 1) for rank in range(VOCABULARY)]
    cumulative = list(itertools.accumulate(weights))
    pool = []
    for i in range(size):
        body = " ".join(rng.choices(vocabulary, cum_weights=cumulative, k=rng.randint(6, 14)))
        if i % 10 == 0:
            body += " " + "".join(rng.choices(HAN, k=rng.randint(4, 12)))
        pool.append((i, body, search_vector(body)))
    return vocabulary, cumulative, pool


async def _load(
    conn: asyncpg.Connection,
    rows: int,
    pool: list[tuple[int, str, str]],
    advance: Callable[[int], None],
) -> tuple[list[int], float, float, float]:
    """The rooms and messages; the ids of the rooms, and the seconds the load and the index
    took, and the index's size in MB."""
    rooms = max(rows // PER_ROOM, MEMBER_ROOMS)
    label = size_label(rows).lower()
    names = [f"bench-search-{label}-{i}" for i in range(rooms)]
    by_name = await create_rooms(conn, names)
    ids = [by_name[n] for n in names]
    await conn.execute("DROP TABLE IF EXISTS bench_search_pool")
    await conn.execute("CREATE TABLE bench_search_pool (i int PRIMARY KEY, body text, search text)")
    await conn.copy_records_to_table("bench_search_pool", records=pool)
    began = time.perf_counter()
    base = await conn.fetchval("SELECT now() - interval '400 days'")
    # Built after the load (as an upgrade builds it): one build is faster than rows inserts.
    await conn.execute("DROP INDEX IF EXISTS ix_messages_search")
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("SET session_replication_role = replica")
    chunk = 250_000
    for first in range(0, rows, chunk):
        upto = min(first + chunk, rows) - 1
        await conn.execute(_LOAD, first, upto, rooms, base, ids, len(pool))
        advance(upto - first + 1)
    await conn.execute(
        "UPDATE rooms SET last_seq = (SELECT max(seq) FROM messages WHERE room_id = rooms.id)"
        " WHERE id = ANY($1::bigint[])",
        ids,
    )
    with contextlib.suppress(asyncpg.PostgresError):
        await conn.execute("RESET session_replication_role")
    load_seconds = time.perf_counter() - began
    began = time.perf_counter()
    await conn.execute("SET maintenance_work_mem = '256MB'")
    await conn.execute(_INDEX)
    index_seconds = time.perf_counter() - began
    await conn.execute("VACUUM (ANALYZE) messages")
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")
    size = await conn.fetchval("SELECT pg_relation_size('ix_messages_search')")
    await conn.execute("DROP TABLE bench_search_pool")
    return ids, load_seconds, index_seconds, round(size / 2**20, 1)


def _queries(
    rng: random.Random,
    vocabulary: list[str],
    cumulative: list[float],
    pool: list[tuple[int, str, str]],
    count: int,
) -> dict[str, list[str]]:
    cjk = [body.rsplit(" ", 1)[1] for i, body, _ in pool if i % 10 == 0]
    pairs = []
    for _ in range(count):
        run = rng.choice(cjk)
        at = rng.randrange(len(run) - 1)
        pairs.append(run[at : at + 2])
    return {
        "rare": [rng.choice(vocabulary) for _ in range(count)],
        "common": rng.choices(vocabulary, cum_weights=cumulative, k=count),
        "cjk2": pairs,
    }


async def search(bench: Bench, rows: int) -> SearchFigures:
    """Load, then time the three kinds of query through the REST API, then again in this
    process through the service's Search, to see how each was found."""
    label = size_label(rows)
    rng = random.Random(rows)
    vocabulary, cumulative, pool = _pool(rng, min(POOL, max(rows, 1000)))
    step = bench.ui.step(f"search {label}: loading {rows:,} messages", rows)
    conn = await asyncpg.connect(bench.db.url, command_timeout=3600)
    try:
        ids, load_seconds, index_seconds, index_mb = await _load(conn, rows, pool, step.advance)
        mine = ids[:: len(ids) // MEMBER_ROOMS][:MEMBER_ROOMS]
        # A user of the spare ones at the end that no other scenario uses: a member of these
        # 50 rooms only (bench_00000 is in the ingest, fan-out and history rooms too, whose
        # messages are newer than every match here and match nothing: README, Search's
        # figures, measures that case on its own).
        searcher = bench.profile.users_needed - 4  # read_state and resync take the last 3
        # In these 50 rooms alone: a run with --full searches 1M, then 10M, as the same user,
        # who would otherwise be in the 1M rooms too (twice the messages, none newer nor
        # matching: every 10M figure before session 13 was taken so).
        await conn.execute("DELETE FROM members WHERE username = $1", username(searcher))
        await conn.execute(
            "INSERT INTO members (room_id, username, role) SELECT unnest($1::bigint[]),"
            " $2, 'member' ON CONFLICT DO NOTHING",
            mine,
            username(searcher),
        )
        # What the user reads, from the members table: the figures say what was searched.
        member_rooms, member_messages = await conn.fetchrow(
            "SELECT count(DISTINCT x.room_id), count(m.seq) FROM members x"
            " LEFT JOIN messages m ON m.room_id = x.room_id WHERE x.username = $1",
            username(searcher),
        )
        queries = _queries(rng, vocabulary, cumulative, pool, 20 + REQUESTS)
        step.update(description=f"search {label}: {3 * REQUESTS} queries", completed=0)
        step.update(total=3 * REQUESTS)
        latencies: dict[str, Percentiles] = {}
        headers = {"Authorization": f"Bearer {bench.tokens[searcher]}"}
        async with contextlib.AsyncExitStack() as stack:
            http = await http_sessions(stack, bench, headers)
            for kind, words in queries.items():
                times = []
                for i, q in enumerate(words):
                    began = time.perf_counter()
                    async with http[i % 2].get("/api/search", params={"q": q}) as response:
                        body = await response.read()
                    elapsed = (time.perf_counter() - began) * 1000
                    response.raise_for_status()
                    orjson.loads(body)["results"]
                    if i >= 20:  # the first 20 warm the connections up
                        times.append(elapsed)
                        step.advance()
                latencies[kind] = Percentiles.of(times)
        step.update(description=f"search {label}: each query again, in process", completed=0)
        plans, sql_ms = await _ways(
            bench.db.url, username(searcher), queries, member_messages, step.advance
        )
    finally:
        await conn.close()
        step.done()
    return SearchFigures(
        rows=rows,
        rooms=len(ids),
        member_rooms=member_rooms,
        member_messages=member_messages,
        load_seconds=round(load_seconds, 1),
        index_seconds=round(index_seconds, 1),
        index_mb=index_mb,
        latency_ms=latencies,
        plans=plans,
        sql_ms=sql_ms,
    )


async def _ways(
    url: str,
    user: str,
    queries: dict[str, list[str]],
    member_messages: int,
    advance: Callable[[], None],
) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Each timed query again through service/search.py's Search in this process (no HTTP):
    by kind, how many the walk found and how many the index, the rows walked and the
    rounds, and the p99 time; and the slowest queries, each with how it was found."""
    engine = create_engine(Settings(database_url=url))
    plans, p99 = {}, {}
    try:
        search = Search(engine)
        for kind, words in queries.items():
            for q in words[:20]:  # as through REST, the first 20 warm the connections up
                await search.find(user, q)
            times, walked, rounds, by_index = [], [], [], 0
            each = []  # (ms, query, how it was found) of every query, for the slowest
            for q in words[20:]:
                began = time.perf_counter()
                found = await search.find(user, q)
                times.append((time.perf_counter() - began) * 1000)
                walked.append(found.walked)
                rounds.append(found.rounds)
                by_index += found.by_index
                way = "index" if found.by_index else "walk"
                how = f"{way}, {found.walked:,} rows in {found.rounds} rounds"
                each.append((times[-1], q, how))
                advance()
            ms = Percentiles.of(times)
            slowest = sorted(each, reverse=True)[:_SLOWEST]
            rows = Percentiles.of([float(n) for n in walked])
            p99[kind] = ms.p99
            plans[kind] = [
                f"q=... {len(words) - 20} queries: walk {len(words) - 20 - by_index}, index "
                f"{by_index}; rows walked p50 {rows.p50:,.0f} p99 {rows.p99:,.0f} of the rooms' "
                f"{member_messages:,}; rounds up to {max(rounds)}; in process p50 {ms.p50} ms, "
                f"p99 {ms.p99} ms",
                "q=... slowest: " + "; ".join(f"{q!r} {how}, {t:.1f} ms" for t, q, how in slowest),
            ]
    finally:
        await engine.dispose()
    return plans, p99


async def ingest_without_index(
    bench: Bench, ingest: Callable[[Bench], Awaitable[Throughput]]
) -> Throughput:
    """`ingest` with the search index dropped (the lexemes are still computed and stored),
    then the index built again."""
    conn = await asyncpg.connect(bench.db.url, command_timeout=3600)
    try:
        await conn.execute("DROP INDEX IF EXISTS ix_messages_search")
        try:
            result: Throughput = await ingest(bench)
        finally:
            await conn.execute(_INDEX)
    finally:
        await conn.close()
    return result
