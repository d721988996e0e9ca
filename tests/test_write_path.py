"""chat_post_messages(), the writer's one statement (service/sql/post_messages.sql), called
directly: numbering, repeats, payload packing under PostgreSQL's NOTIFY limit, concurrent
writers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from service import db
from service.db import OutcomeUnknown
from service.protocol import (
    NOTIFY_INLINE_MAX_BYTES,
    NOTIFY_PAYLOAD_MAX_BYTES,
    SIGNATURE_BYTES,
    FanoutKey,
    MessagesNote,
    NotifiedMessage,
    decode_note,
)
from service.settings import Settings
from service.store import Draft, Posted, PostgresStore
from tests.support import unique

KEY = FanoutKey.from_secret("the write-path tests' own secret")
_POST = (
    "SELECT seqs, created, repeated, stored_bodies, payloads, codes"
    " FROM chat_post_messages($1, $2, $3, $4, $5, '{}', '{}', '{}', '{}', '{}', '{}', '{}',"
    " '{}', 20, '{}', $6, $7, $8, $9, $10, $11)"
)


async def post(
    pg: asyncpg.Connection,
    rooms: list[int],
    authors: list[str],
    bodies: list[str],
    client_ids: list[str | None],
    channel: str | None,
) -> asyncpg.Record:
    """One call with the limits the writer passes, as a batch of its own."""
    return await pg.fetchrow(
        _POST,
        rooms,
        authors,
        bodies,
        client_ids,
        [None] * len(rooms),
        channel,
        NOTIFY_PAYLOAD_MAX_BYTES - SIGNATURE_BYTES,
        NOTIFY_INLINE_MAX_BYTES,
        uuid.uuid4(),
        KEY.inner,
        KEY.outer,
    )


async def make_room(pg: asyncpg.Connection) -> int:
    room_id: int = await pg.fetchval(
        "INSERT INTO rooms (name) VALUES ($1) RETURNING id", unique("wp-")
    )
    return room_id


async def make_user(pg: asyncpg.Connection) -> str:
    name = unique("wp_")
    await pg.execute("INSERT INTO users (username, password_hash) VALUES ($1, 'x')", name)
    return name


class Heard:
    """Notifications on a fresh channel, collected by a LISTEN of its own."""

    def __init__(self) -> None:
        self.channel = unique("wp_chan_")
        self.payloads: list[str] = []
        self.arrived = asyncio.Event()

    def __call__(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.payloads.append(payload)
        self.arrived.set()

    async def until(self, count: int) -> list[str]:
        async with asyncio.timeout(10):
            while len(self.payloads) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.payloads


def unpack(payloads: list[str]) -> tuple[list[NotifiedMessage], list[tuple[int, int]]]:
    """The messages and refs of `messages` notifications, each checked to be one that
    service/protocol.py decodes and PostgreSQL accepts."""
    inline: list[NotifiedMessage] = []
    refs: list[tuple[int, int]] = []
    for signed in payloads:
        assert len(signed.encode()) <= NOTIFY_PAYLOAD_MAX_BYTES < 8000
        payload = KEY.open(signed)
        assert payload is not None, f"not signed with the key passed: {signed[:80]}"
        assert json.loads(payload)["kind"] == "messages"
        note = decode_note(payload)
        assert isinstance(note, MessagesNote), payload
        inline += [m for m in note.messages if isinstance(m, NotifiedMessage)]
        refs += note.refs
    return inline, refs


async def test_a_batch_is_numbered_stored_and_announced_in_one_call(
    pg: asyncpg.Connection, database_url: str
) -> None:
    """400 messages over two rooms, some too big to travel inline: seqs continue each
    room's count in input order, every row is stored with one created_at, the rooms
    advance, and the notifications (each under 8000 bytes) carry each message once, in
    order, inline or as a reference."""
    author = await make_user(pg)
    a, b = await make_room(pg), await make_room(pg)
    await pg.execute("UPDATE rooms SET last_seq = 41 WHERE id = $1", b)
    rooms = [a if i % 3 else b for i in range(400)]
    bodies = ["🙂" * 2000 if i % 50 == 7 else f'message {i} "quoted" \\ é' for i in range(400)]
    heard = Heard()
    listener = await asyncpg.connect(database_url, timeout=10)
    try:
        await listener.add_listener(heard.channel, heard)
        row = await post(pg, rooms, [author] * 400, bodies, [None] * 400, heard.channel)
        assert row["payloads"] == []  # sent, not returned
        expected = {a: iter(range(1, 1000)), b: iter(range(42, 1000))}
        assert row["seqs"] == [next(expected[r]) for r in rooms]
        assert row["repeated"] == [False] * 400
        assert row["stored_bodies"] == [None] * 400
        assert len(set(row["created"])) == 1
        stored = await pg.fetch(
            "SELECT room_id, seq, body, created_at FROM messages"
            " WHERE room_id = ANY($1) ORDER BY created_at, room_id, seq",
            [a, b],
        )
        assert sorted((r["room_id"], r["seq"], r["body"]) for r in stored) == sorted(
            zip(rooms, row["seqs"], bodies, strict=True)
        )
        assert {r["created_at"] for r in stored} == set(row["created"])
        last = dict(await pg.fetch("SELECT id, last_seq FROM rooms WHERE id = ANY($1)", [a, b]))
        assert last == {a: max(row["seqs"][i] for i in range(400) if rooms[i] == a), b: 41 + 134}

        # 400 entries of ~50 bytes and 8 references cannot share one payload.
        payloads = await heard.until(3)
        await asyncio.sleep(0.2)  # nothing more is coming: one statement, one commit
        inline, refs = unpack(payloads)
        assert len(payloads) >= 3
        big = {i for i in range(400) if i % 50 == 7}
        assert refs == [(rooms[i], row["seqs"][i]) for i in sorted(big)]
        assert [(m.room_id, m.seq, m.author, m.body, m.client_id) for m in inline] == [
            (rooms[i], row["seqs"][i], author, bodies[i], None) for i in range(400) if i not in big
        ]
        assert {m.created_at for m in inline} == set(row["created"])
    finally:
        await listener.close(timeout=5)


async def test_repeats_of_committed_client_ids_return_the_stored_message(
    pg: asyncpg.Connection,
) -> None:
    author = await make_user(pg)
    room = await make_room(pg)
    first = await post(pg, [room, room], [author, author], ["one", "two"], ["c1", "c2"], None)
    assert first["seqs"] == [1, 2]
    assert len(first["payloads"]) == 1  # no channel: returned for the caller to publish
    # A retry of c2 with another body, a new c3, and a message without client_id.
    again = await post(
        pg,
        [room, room, room],
        [author] * 3,
        ["two, edited", "three", "four"],
        ["c2", "c3", None],
        None,
    )
    assert again["seqs"] == [2, 3, 4]
    assert again["repeated"] == [True, False, False]
    assert again["stored_bodies"] == ["two", None, None]
    assert again["created"][0] == first["created"][1]
    inline, refs = unpack(again["payloads"])
    assert [(m.seq, m.author, m.body, m.client_id) for m in inline] == [
        (3, author, "three", "c3"),
        (4, author, "four", None),
    ]
    assert refs == []
    # The same client_id from another author is another message.
    other = await make_user(pg)
    third = await post(pg, [room], [other], ["mine"], ["c2"], None)
    assert third["seqs"] == [5] and third["repeated"] == [False]


async def test_a_failing_batch_stores_nothing(pg: asyncpg.Connection) -> None:
    """An author that does not exist fails the statement: none of its batch-mates is stored
    and the room does not advance (the writer then retries them one by one)."""
    author = await make_user(pg)
    room = await make_room(pg)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await post(pg, [room, room], [author, unique("nobody_")], ["ok", "bad"], [None, None], None)
    assert await pg.fetchval("SELECT last_seq FROM rooms WHERE id = $1", room) == 0
    assert await pg.fetchval("SELECT count(*) FROM messages WHERE room_id = $1", room) == 0


async def test_concurrent_writers_on_shared_rooms_neither_deadlock_nor_skip(
    database_url: str, pg: asyncpg.Connection
) -> None:
    """Four connections post 50 batches each over the same three rooms, listed in different
    orders: every call completes, and each room holds exactly 1..n."""
    author = await make_user(pg)
    rooms = [await make_room(pg) for _ in range(3)]
    conns = [await asyncpg.connect(database_url, timeout=10) for _ in range(4)]

    async def writer(k: int, conn: asyncpg.Connection) -> None:
        order = rooms if k % 2 else rooms[::-1]
        for n in range(50):
            batch = [order[(n + j) % 3] for j in range(5)]
            bodies = [f"{k}/{n}/{j}" for j in range(5)]
            await post(conn, batch, [author] * 5, bodies, [None] * 5, None)

    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(writer(k, c) for k, c in enumerate(conns)))
    finally:
        for conn in conns:
            await conn.close(timeout=5)
    for room in rooms:
        seqs = [
            r["seq"]
            for r in await pg.fetch(
                "SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq", room
            )
        ]
        assert seqs == list(range(1, len(seqs) + 1))
        assert await pg.fetchval("SELECT last_seq FROM rooms WHERE id = $1", room) == len(seqs)
    total = await pg.fetchval("SELECT count(*) FROM messages WHERE room_id = ANY($1)", rooms)
    assert total == 4 * 50 * 5


@pytest.fixture
async def pg_store(database_url: str) -> AsyncIterator[PostgresStore]:
    engine = create_async_engine(
        Settings(database_url=database_url).sqlalchemy_url, pool_size=2, max_overflow=0
    )
    try:
        yield PostgresStore(engine, KEY)
    finally:
        await engine.dispose()


async def test_the_writer_stores_on_a_connection_of_its_own(own_database: str) -> None:
    """With `writes`, every batch runs on that engine's one connection (one backend, which
    keeps chat_post_messages() compiled and planned), never on the shared pool, even while
    the pool's connections are busy with reads; reads and recovery stay on the pool. (A
    database of its own: no other test's backends in pg_stat_activity.)"""
    settings = Settings(database_url=own_database)
    engine = db.create_engine(settings)
    writes = db.create_engine(settings, pool_size=1)
    assert writes.pool.size() == 1  # type: ignore[attr-defined]
    store = PostgresStore(engine, KEY, writes=writes)
    pg = await asyncpg.connect(own_database, timeout=10)
    author = await make_user(pg)
    room_id = await make_room(pg)
    try:
        async with engine.connect() as busy:  # a read holding one of the pool's connections
            await busy.exec_driver_sql("SELECT 1")
            batches = []
            for i in range(3):
                batch = uuid.uuid4()
                await store.store([Draft(room_id, "r", author, f"m{i}", None)], None, batch)
                batches.append(batch)
        assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]  # the read's alone
        writers = await pg.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE '%chat_post_messages(%' AND pid <> pg_backend_pid()"
        )
        async with writes.connect() as conn:
            pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
        assert [r["pid"] for r in writers] == [pid]
        assert await store.recover([], batches[0]) is not None  # read back on the pool
        assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        assert writes.pool.checkedin() == 1  # type: ignore[attr-defined]
    finally:
        await pg.close()
        await engine.dispose()
        await writes.dispose()


async def test_a_batch_outcome_is_recorded_and_read_back(
    pg: asyncpg.Connection, pg_store: PostgresStore
) -> None:
    """What a batch stored is what `recover` reads back under its id: fresh and repeated
    messages alike (a repeat as its original); an unknown id reads back as nothing."""
    author = await make_user(pg)
    room_id = await make_room(pg)
    room = "r"
    first = await pg_store.store([Draft(room_id, room, author, "one", "c1")], None, uuid.uuid4())
    drafts = [
        Draft(room_id, room, author, "one again", "c1"),
        Draft(room_id, room, author, "two", None),
        Draft(room_id, room, author, "three", "c3"),
        Draft(room_id, room, author, "three again", "c3"),
    ]
    batch = uuid.uuid4()
    stored = await pg_store.store(drafts, "unused_channel", batch)
    recovered = await pg_store.recover(drafts, batch)
    assert recovered is not None
    assert recovered.posted == stored.posted
    posted = [p for p in recovered.posted if isinstance(p, Posted)]
    assert [(p.message.seq, p.message.body, p.duplicate) for p in posted] == [
        (1, "one", True),
        (2, "two", False),
        (3, "three", False),
        (3, "three", True),
    ]
    assert isinstance(first.posted[0], Posted)
    assert posted[0].message.created_at == first.posted[0].message.created_at
    assert await pg_store.recover(drafts, uuid.uuid4()) is None
    # Old outcomes go; a later cutoff takes this one too.
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert await pg_store.forget_batches(later) >= 2
    assert await pg_store.recover(drafts, batch) is None


async def test_a_call_cut_off_in_flight_is_unknown_and_reads_back_as_not_stored(
    database_url: str, pg: asyncpg.Connection, pg_store: PostgresStore
) -> None:
    """The room is locked by another transaction, so the call waits inside the database;
    its connection is then terminated: the store says the outcome is unknown (not plain
    unavailable), and reading the outcome back says nothing was stored."""
    author = await make_user(pg)
    room_id = await make_room(pg)
    blocker = await asyncpg.connect(database_url, timeout=10)
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT 1 FROM rooms WHERE id = $1 FOR UPDATE", room_id)
        drafts = [Draft(room_id, "r", author, "never", None)]
        batch = uuid.uuid4()
        call = asyncio.create_task(pg_store.store(drafts, None, batch))
        async with asyncio.timeout(10):
            while True:
                pid = await pg.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%chat_post_messages%'"
                )
                if pid is not None:
                    break
                await asyncio.sleep(0.02)
        assert await pg.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(OutcomeUnknown):
            async with asyncio.timeout(10):
                await call
        await lock.rollback()
    finally:
        await blocker.close(timeout=5)
    assert await pg_store.recover(drafts, batch) is None
    assert await pg.fetchval("SELECT count(*) FROM messages WHERE room_id = $1", room_id) == 0
