"""Operator tasks behind `chat user create|admin|ban|unban`, `chat rooms`, `chat export` and
`chat prune`.

They run against the live database while instances serve, so each keeps its transactions
short: an export reads keyset pages of the primary key, a prune deletes in batches of their
own. None of them touches `rooms.last_seq`: a room's seq never goes backwards, and after a
prune new messages keep counting up from where they were.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import accounts
from .db import connect_args, reading, writing
from .security import Passwords
from .settings import Settings
from .store import PostgresStore


class OpsError(Exception):
    """The operation cannot be done as asked; the message says why."""


@asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """A small engine for one command. No statement timeout: counting a large room may
    legitimately take a while."""
    engine = create_async_engine(
        settings.sqlalchemy_url,
        pool_size=2,
        max_overflow=0,
        connect_args=connect_args(timeout=10),  # in UTC, as every session of ours
    )
    try:
        yield engine
    finally:
        await engine.dispose()


# -- users ----------------------------------------------------------------------------------


async def create_user(
    engine: AsyncEngine, username: str, password: str, *, admin: bool = False
) -> None:
    """Create an account (validated name and password); OpsError if the name is taken."""
    passwords = Passwords(threads=1, queue_limit=0)
    try:
        await accounts.register(engine, passwords, username, password, admin=admin)
    except accounts.UsernameTaken:
        raise OpsError(f"user {username} already exists") from None
    finally:
        passwords.close()


async def make_admin(engine: AsyncEngine, username: str) -> None:
    if not await accounts.set_admin(engine, username):
        raise OpsError(f"user {username} does not exist")


async def ban(engine: AsyncEngine, username: str) -> int:
    """Ban the user and end their sessions; how many ended. The instances close the
    sessions' sockets at their next poll of ended sessions (service/sessions.py)."""
    ended = await accounts.ban(engine, username)
    if ended is None:
        raise OpsError(f"user {username} does not exist")
    return len(ended)


async def unban(engine: AsyncEngine, username: str) -> None:
    if not await accounts.unban(engine, username):
        raise OpsError(f"user {username} does not exist")


# -- rooms ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoomStats:
    name: str
    messages: int
    first_seq: int | None  # the oldest message kept (after a prune, above 1)
    last_seq: int
    created_at: datetime
    last_message_at: datetime | None


# Counted per room through the primary key, for the listed rooms only.
_ROOM_STATS = text(
    "SELECT r.name, r.last_seq, r.created_at, r.last_message_at, c.messages, c.first_seq "
    "FROM (SELECT * FROM rooms ORDER BY last_message_at DESC NULLS LAST, created_at DESC, name "
    "      LIMIT :limit) AS r "
    "CROSS JOIN LATERAL (SELECT count(*) AS messages, min(seq) AS first_seq "
    "                    FROM messages m WHERE m.room_id = r.id) AS c "
    "ORDER BY r.last_message_at DESC NULLS LAST, r.created_at DESC, r.name"
)


async def room_stats(engine: AsyncEngine, limit: int) -> tuple[list[RoomStats], int]:
    """The `limit` most recently active rooms with their message counts, and how many rooms
    there are in all."""
    async with reading(engine) as conn:
        total = (await conn.execute(text("SELECT count(*) FROM rooms"))).scalar_one()
        rows = (await conn.execute(_ROOM_STATS, {"limit": limit})).all()
    stats = [
        RoomStats(r.name, r.messages, r.first_seq, r.last_seq, r.created_at, r.last_message_at)
        for r in rows
    ]
    return stats, int(total)


# -- export ---------------------------------------------------------------------------------

_FIND_ROOM = text("SELECT id, last_seq FROM rooms WHERE name = :name")
EXPORT_PAGE = 1000


@dataclass(frozen=True, slots=True)
class ExportRange:
    room_id: int
    since: int
    upto: int  # the room's last seq when the export started: the export stops there


async def export_range(engine: AsyncEngine, room: str, since: int) -> ExportRange:
    async with reading(engine) as conn:
        row = (await conn.execute(_FIND_ROOM, {"name": room})).one_or_none()
    if row is None:
        raise OpsError(f"no room named {room}")
    return ExportRange(row.id, since, row.last_seq)


async def export(
    engine: AsyncEngine,
    room: str,
    span: ExportRange,
    out: BinaryIO,
    on_progress: Callable[[int], None] = lambda advanced: None,
) -> int:
    """Write the room's log with since < seq <= upto to `out` as JSON Lines, in seq order,
    each event as the socket carries it in a resume (its `type` included; messages in their
    current state), one keyset page at a time (memory stays flat, no long transaction);
    returns how many were written. `on_progress` gets how far each page moved through the
    seq range."""
    written = 0
    after = span.since
    while after < span.upto:
        page = await PostgresStore(engine).fetch_range(
            span.room_id, room, after, span.upto, EXPORT_PAGE
        )
        if not page:
            break
        out.write(b"".join(m.frame().encode() + b"\n" for m in page))
        written += len(page)
        on_progress(page[-1].seq - after)
        after = page[-1].seq
    on_progress(max(span.upto - after, 0))
    out.flush()
    return written


# -- prune ----------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str) -> timedelta:
    """`30d`, `12h`, `1w2d`, `90m`, `45s` as a timedelta; ValueError otherwise."""
    value = value.strip().lower()
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"{value!r} is not a duration like 30d, 12h, 1w2d")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError("the duration must be longer than zero")
    return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class PruneTarget:
    """In room `room`, the log's events with first_seq <= seq <= last_seq are older than the
    cutoff; `count` of them exist (messages and other events)."""

    room_id: int
    room: str
    first_seq: int
    last_seq: int
    count: int


@dataclass(frozen=True, slots=True)
class PrunePlan:
    cutoff: datetime
    targets: list[PruneTarget]

    @property
    def total(self) -> int:
        return sum(t.count for t in self.targets)


_ROOMS_PAGE = text(
    "SELECT id, name FROM rooms WHERE id > :after AND last_seq > 0 "
    "AND (CAST(:name AS text) IS NULL OR name = :name) ORDER BY id LIMIT 1000"
)
# The log is two tables by (room_id, seq); each is probed alike. {table} is one of them.
_FIRST = "SELECT seq, created_at FROM {table} WHERE room_id = :room_id ORDER BY seq LIMIT 1"
_LAST = "SELECT seq, created_at FROM {table} WHERE room_id = :room_id ORDER BY seq DESC LIMIT 1"
_AT_OR_AFTER = (
    "SELECT seq, created_at FROM {table} WHERE room_id = :room_id AND seq >= :seq "
    "ORDER BY seq LIMIT 1"
)
_COUNT = text(
    "SELECT (SELECT count(*) FROM messages WHERE room_id = :room_id"
    " AND seq BETWEEN :first AND :last)"
    " + (SELECT count(*) FROM events WHERE room_id = :room_id AND seq BETWEEN :first AND :last)"
)
# The room's row first, as the writer locks it (then an edit of a message being pruned
# waits for the prune instead of deadlocking with it).
_LOCK_ROOM = text("SELECT 1 FROM rooms WHERE id = :room_id FOR UPDATE")
# The unread counts leave out what a prune removed (readstate.py): the room keeps the
# highest ordinal removed.
_DELETE_MESSAGES = text(
    "WITH gone AS (DELETE FROM messages WHERE room_id = :room_id AND seq >= :lo AND seq < :hi "
    "AND created_at < :cutoff RETURNING n), "
    "counted AS (UPDATE rooms SET pruned_n = (SELECT max(n) FROM gone) "
    "WHERE id = :room_id AND pruned_n < (SELECT max(n) FROM gone)) "
    "SELECT count(*) FROM gone"
)
# The mentions of the removed messages, and the unread mention counts that held them
# (readstate.py): those above the member's cursor.
_DELETE_MENTIONS = text(
    "WITH gone AS (DELETE FROM mentions mt WHERE mt.room_id = :room_id AND mt.seq >= :lo "
    "AND mt.seq < :hi AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.room_id = mt.room_id "
    "AND m.seq = mt.seq) RETURNING mt.username, mt.seq) "
    "UPDATE members SET unread_mentions = members.unread_mentions - ("
    "SELECT count(*) FROM gone g WHERE g.username = members.username "
    "AND g.seq > members.last_read_seq) "
    "WHERE members.room_id = :room_id AND members.username IN (SELECT username FROM gone)"
)
_DELETE_EVENTS = text(
    "DELETE FROM events WHERE room_id = :room_id AND seq >= :lo AND seq < :hi "
    "AND created_at < :cutoff"
)
_DELETE_REACTIONS = text(
    "DELETE FROM reactions WHERE room_id = :room_id AND seq >= :lo AND seq < :hi"
)
# Later edits, deletes and reactions of messages the prune removed would point at nothing:
# they go too (a resume across them answers what is left, as across any pruned range).
_DELETE_DANGLING = text(
    "DELETE FROM events WHERE room_id = :room_id AND seq > :last AND target <= :last "
    "AND kind IN ('edit', 'delete', 'reaction')"
)


async def _old_end(
    conn: AsyncConnection, table: str, room_id: int, cutoff: datetime
) -> tuple[int, int] | None:
    """The seqs (first, last) of the rows of `table` (messages or events) of the room older
    than `cutoff`, or None.

    A room's created_at follows its seq order across both tables (each event is stamped
    under the room's lock), so the old events are a prefix of the log, and its end is found
    by bisecting the primary key: a few index probes instead of a scan of the room."""
    first = (await conn.execute(text(_FIRST.format(table=table)), {"room_id": room_id})).first()
    if first is None or first.created_at >= cutoff:
        return None
    last = (await conn.execute(text(_LAST.format(table=table)), {"room_id": room_id})).one()
    if last.created_at < cutoff:
        return first.seq, last.seq
    # `lo` is an old row; every row with seq >= `hi` is new.
    lo, hi = first.seq, last.seq
    probe_sql = text(_AT_OR_AFTER.format(table=table))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        probe = (await conn.execute(probe_sql, {"room_id": room_id, "seq": mid})).one()
        if probe.created_at < cutoff:
            lo = probe.seq
        else:
            hi = mid
    return first.seq, lo


async def _old_prefix(
    conn: AsyncConnection, room_id: int, cutoff: datetime
) -> tuple[int, int] | None:
    """The seqs (first, last) of the room's log older than `cutoff`, or None."""
    ends = [await _old_end(conn, table, room_id, cutoff) for table in ("messages", "events")]
    found = [e for e in ends if e is not None]
    if not found:
        return None
    return min(f for f, _ in found), max(last for _, last in found)


async def plan_prune(engine: AsyncEngine, older_than: timedelta, room: str | None) -> PrunePlan:
    """What a prune of the log's events older than `older_than` (by the database's clock)
    would delete, in every room or in `room` only."""
    async with reading(engine) as conn:
        cutoff = (
            await conn.execute(
                text("SELECT now() - make_interval(secs => :seconds)"),
                {"seconds": older_than.total_seconds()},
            )
        ).scalar_one()
        if room is not None and (await conn.execute(_FIND_ROOM, {"name": room})).first() is None:
            raise OpsError(f"no room named {room}")
        targets: list[PruneTarget] = []
        after = 0
        while True:
            rooms = (await conn.execute(_ROOMS_PAGE, {"after": after, "name": room})).all()
            if not rooms:
                break
            after = rooms[-1].id
            for r in rooms:
                prefix = await _old_prefix(conn, r.id, cutoff)
                if prefix is None:
                    continue
                first, last = prefix
                count = (
                    await conn.execute(_COUNT, {"room_id": r.id, "first": first, "last": last})
                ).scalar_one()
                targets.append(PruneTarget(r.id, r.name, first, last, int(count)))
            # Each page is its own short read, not one transaction spanning every room.
            await conn.rollback()
    return PrunePlan(cutoff, targets)


async def prune(
    engine: AsyncEngine,
    plan: PrunePlan,
    batch: int,
    on_progress: Callable[[int], None] = lambda deleted: None,
) -> dict[str, int]:
    """Delete what `plan` found, `batch` seqs per transaction, with the reactions of the
    messages removed and the later events that changed them; returns the count of events
    deleted per room (the dependants not counted). Every delete also checks the event is
    older than the cutoff, so nothing newer is ever removed; rooms keep their counters."""
    deleted: dict[str, int] = {}
    for target in plan.targets:
        done = 0
        for lo in range(target.first_seq, target.last_seq + 1, batch):
            hi = min(lo + batch, target.last_seq + 1)
            params = {"room_id": target.room_id, "lo": lo, "hi": hi, "cutoff": plan.cutoff}
            async with writing(engine) as conn:
                await conn.execute(_LOCK_ROOM, params)
                count = int((await conn.execute(_DELETE_MESSAGES, params)).scalar_one())
                count += (await conn.execute(_DELETE_EVENTS, params)).rowcount
                await conn.execute(_DELETE_REACTIONS, params)
                await conn.execute(_DELETE_MENTIONS, params)
            done += count
            on_progress(count)
        async with writing(engine) as conn:
            await conn.execute(
                _DELETE_DANGLING, {"room_id": target.room_id, "last": target.last_seq}
            )
        deleted[target.room] = done
    return deleted
