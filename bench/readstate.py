"""Read state at scale (issue #15): the room list of a user in many rooms, each with
thousands of unread messages, next to the same-run database round trip and the same counts
taken by COUNT(*); the cost of a send to a crowded room next to a send to a room of two; the
read cursor's write next to a ping on the same socket."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from typing import Any

import asyncpg
import orjson
from websockets.asyncio.client import ClientConnection

from . import clients
from .cluster import bulk_load, create_rooms, username
from .figures import Percentiles, ReadStateResults
from .scenarios import Bench, http_sessions

# Every MENTION_EVERY-th message mentions the reader, every DELETE_EVERY-th is deleted (a
# multiple of MENTION_EVERY: a deleted mention leaves both counts).
MENTION_EVERY = 100
DELETE_EVERY = 500

_NAIVE = """
SELECT r.id, (SELECT count(*) FROM messages x
              WHERE x.room_id = r.id AND x.seq > m.last_read_seq AND NOT x.deleted
                    AND x.author <> m.username) AS unread
FROM members m JOIN rooms r ON r.id = m.room_id WHERE m.username = $1
"""


async def read_state(bench: Bench) -> ReadStateResults:
    p = bench.profile
    users = p.users_needed
    reader, sender = users - 1, users - 2  # beyond the loaded messages' authors (0..49)
    rooms = [f"bench-unread-{i:03d}" for i in range(p.unread_rooms)]
    total = p.unread_rooms * p.unread_messages
    step = bench.ui.step(
        f"read state: loading {p.unread_rooms} rooms x {p.unread_messages:,}", total
    )
    conn = await asyncpg.connect(bench.db.url, command_timeout=1800)
    try:
        ids = await create_rooms(conn, rooms)
        for room in rooms:
            await bulk_load(conn, ids[room], p.unread_messages, authors=50, on_chunk=step.advance)
        await _prepare(conn, list(ids.values()), username(reader))
        crowd, pair = await _crowd_and_pair(conn, p.crowd_members, username(sender))
        await conn.execute("VACUUM (ANALYZE) messages")
        await conn.execute("VACUUM (ANALYZE) mentions")
        await conn.execute("ANALYZE members")
        round_trip = await _round_trips(conn, p.read_state_samples)
        naive = []
        for _ in range(3):
            began = time.perf_counter()
            await conn.fetch(_NAIVE, username(reader))
            naive.append((time.perf_counter() - began) * 1000)
    finally:
        await conn.close()

    expected_unread = p.unread_messages - p.unread_messages // DELETE_EVERY
    expected_mentions = p.unread_messages // MENTION_EVERY - p.unread_messages // DELETE_EVERY
    step.update(description="read state: the room list", completed=0, total=p.unread_requests)
    listing, list_times = await _room_lists(bench, reader, p.unread_requests, step.advance)
    for entry in listing:
        if entry["name"] in ids and (entry["unread"], entry["mentions"]) != (
            expected_unread,
            expected_mentions,
        ):
            raise RuntimeError(f"wrong counts for {entry['name']}: {entry}")
    if sum(1 for entry in listing if entry["name"] in ids) != len(ids):
        raise RuntimeError("the room list misses rooms")

    step.update(description="read state: sends, crowded room and room of two", completed=0)
    step.update(total=2 * p.read_state_samples)
    large, small = await _sends(bench, sender, crowd, pair, p.read_state_samples, step.advance)
    step.update(description="read state: cursor writes", completed=0)
    step.update(total=p.read_state_samples)
    reads, pings = await _reads(bench, reader, rooms[0], p.read_state_samples, step.advance)
    return ReadStateResults(
        rooms=p.unread_rooms,
        unread_per_room=expected_unread,
        mentions_per_room=expected_mentions,
        room_list_ms=Percentiles.of(list_times),
        naive_count_ms=round(statistics.median(naive), 3),
        round_trip_ms=round_trip,
        crowd_members=p.crowd_members,
        send_crowd_ms=large,
        send_pair_ms=small,
        read_ms=reads,
        ping_ms=pings,
    )


async def _prepare(conn: asyncpg.Connection, room_ids: list[int], reader: str) -> None:
    """The reader a member of every room with the cursor at 0; every MENTION_EVERY-th
    message names them (body and mentions row), every DELETE_EVERY-th is deleted."""
    await conn.execute(
        "INSERT INTO members (room_id, username, last_read_seq) SELECT unnest($1::bigint[]), $2, 0 "
        "ON CONFLICT (room_id, username) DO UPDATE SET last_read_seq = 0",
        room_ids,
        reader,
    )
    await conn.execute(
        f"UPDATE messages SET body = body || ' @' || $2 WHERE room_id = ANY($1::bigint[]) "
        f"AND seq % {MENTION_EVERY} = 0",
        room_ids,
        reader,
    )
    await conn.execute(
        f"INSERT INTO mentions (room_id, seq, username) SELECT room_id, seq, $2 FROM messages "
        f"WHERE room_id = ANY($1::bigint[]) AND seq % {MENTION_EVERY} = 0 "
        f"AND seq % {DELETE_EVERY} <> 0 ON CONFLICT DO NOTHING",
        room_ids,
        reader,
    )
    # The membership's count of them, as the writer would have kept it (readstate.py).
    await conn.execute(
        "UPDATE members m SET unread_mentions = (SELECT count(*) FROM mentions mt "
        "WHERE mt.room_id = m.room_id AND mt.username = m.username "
        "AND mt.seq > m.last_read_seq) WHERE m.room_id = ANY($1::bigint[]) AND m.username = $2",
        room_ids,
        reader,
    )
    await conn.execute(
        f"UPDATE messages SET deleted = true, body = '', reactions = NULL "
        f"WHERE room_id = ANY($1::bigint[]) AND seq % {DELETE_EVERY} = 0",
        room_ids,
    )


async def _crowd_and_pair(conn: asyncpg.Connection, members: int, sender: str) -> tuple[str, str]:
    """A room of `members` members and a room of two, both with `sender` in them."""
    crowd, pair = "bench-crowd", "bench-pair"
    ids = await create_rooms(conn, [crowd, pair])
    await conn.execute(
        "INSERT INTO users (username, password_hash) "
        "SELECT 'crowd_' || g, '!' FROM generate_series(1, $1) g ON CONFLICT DO NOTHING",
        members,
    )
    await conn.execute(
        "INSERT INTO members (room_id, username, last_read_seq) "
        "SELECT $1::bigint, 'crowd_' || g, 0 FROM generate_series(1, $2::int - 1) g "
        "UNION ALL SELECT $1::bigint, $3::text, 0 UNION ALL SELECT $4::bigint, 'crowd_1', 0 "
        "UNION ALL SELECT $4::bigint, $3::text, 0 ON CONFLICT DO NOTHING",
        ids[crowd],
        members,
        sender,
        ids[pair],
    )
    return crowd, pair


async def _round_trips(conn: asyncpg.Connection, n: int) -> Percentiles:
    times = []
    for _ in range(n):
        began = time.perf_counter()
        await conn.fetchval("SELECT 1")
        times.append((time.perf_counter() - began) * 1000)
    return Percentiles.of(times)


async def _room_lists(
    bench: Bench, user: int, n: int, advance: Any
) -> tuple[list[dict[str, Any]], list[float]]:
    """GET /api/rooms (one page of up to 1000) `n` times, alternating instances: the last
    listing, and the times."""
    headers = {"Authorization": f"Bearer {bench.tokens[user]}"}
    times: list[float] = []
    listing: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        http = await http_sessions(stack, bench, headers)
        for i in range(20 + n):
            began = time.perf_counter()
            async with http[i % 2].get("/api/rooms?limit=1000") as response:
                body = await response.read()
            elapsed = (time.perf_counter() - began) * 1000
            response.raise_for_status()
            if i >= 20:  # after a warm-up
                times.append(elapsed)
                advance(1)
            listing = orjson.loads(body)["rooms"]
    return listing, times


async def _answer(ws: ClientConnection, kind: str, timeout: float = 30.0) -> dict[str, Any]:
    """The next frame of type `kind` (an error is a failure of the run)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = orjson.loads(await ws.recv())
            if frame["type"] == kind:
                return dict(frame)
            if frame["type"] == "error":
                raise RuntimeError(f"refused: {frame}")


async def _sends(
    bench: Bench, user: int, crowd: str, pair: str, n: int, advance: Any
) -> tuple[Percentiles, Percentiles]:
    """Send, wait for the ack, alternately to each room, on one socket joined to neither (a
    send needs the room joined: it joins both, on an instance of its own each time)."""
    a = bench.instances[0]
    ws = await clients.open_socket(clients.chat_url(a.url, bench.tokens[user]))
    times: dict[str, list[float]] = {crowd: [], pair: []}
    try:
        for room in (crowd, pair):
            await clients.join(ws, room)
        for i in range(n + 10):
            for room in (crowd, pair):
                began = time.perf_counter()
                await clients.send_json(ws, type="send", room=room, body=f"hello {i}")
                await _answer(ws, "ack")
                if i >= 10:
                    times[room].append((time.perf_counter() - began) * 1000)
                    advance(1)
    finally:
        await ws.close()
    return Percentiles.of(times[crowd]), Percentiles.of(times[pair])


async def _reads(
    bench: Bench, user: int, room: str, n: int, advance: Any
) -> tuple[Percentiles, Percentiles]:
    """`read` moving the cursor one seq at a time (each a real write, and a `read` frame on
    the user's stream), then `ping`s on the same socket for the reference."""
    b = bench.instances[1]
    ws = await clients.open_socket(clients.chat_url(b.url, bench.tokens[user]))
    reads: list[float] = []
    pings: list[float] = []
    try:
        for seq in range(1, n + 11):
            began = time.perf_counter()
            await clients.send_json(ws, type="read", room=room, seq=seq)
            ack = await _answer(ws, "ack")
            if ack["duplicate"]:
                raise RuntimeError(f"read {seq} did not move the cursor: {ack}")
            if seq > 10:
                reads.append((time.perf_counter() - began) * 1000)
                advance(1)
        for _ in range(n):
            began = time.perf_counter()
            await clients.send_json(ws, type="ping")
            await _answer(ws, "pong")
            pings.append((time.perf_counter() - began) * 1000)
    finally:
        await ws.close()
    return Percentiles.of(reads), Percentiles.of(pings)
