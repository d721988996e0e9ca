"""Search over the whole history (PROTOCOL.md, `GET /api/search`), served by PostgreSQL alone:
the messages matching a query (service/search_text.py makes its `tsquery`) in the rooms a
user may read, newest first, a page at a time.

The caller's rooms are read again on every page, so a removed member stops finding a room
at once. A page is the newest `limit` by (created_at, room_id, seq), a keyset the opaque
cursor carries, found one of two ways, chosen by the planner's estimate of the matches:

- words of few messages: every match in the rooms, through the GIN index of the lexemes
  (ANDed with the primary key's ranges of the rooms), then the newest;
- words of many messages (more than one in twenty of the rooms' messages): each room's
  primary key walked back from its newest message, stopping at `limit` matches, then the
  newest of those; fetching and sorting every match would cost more.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import writing
from .members import _cursor_time, _decode_cursor, _encode_cursor
from .protocol import MAX_SEQ, StoredMessage
from .ratelimit import KeyedLimiter, RateLimited
from .refusals import Invalid
from .search_text import parse_query
from .store import _message, _with_mine

MAX_LIMIT = 100

_COLUMNS = (
    "m.seq, m.author, m.body, m.client_id, m.created_at, m.reply_to, m.edited_at, m.deleted,"
    " m.version, m.reactions"
)
# Custom plans: the best plan depends on how common the words are, which a generic plan of
# a prepared statement cannot know. The timeout bounds what one request can cost. Memory for
# the bitmaps of the GIN path: at the default 4 MB, the bitmap of a word in a few percent of
# 10M messages turns lossy and the heap scan rechecks every row of a million pages (0.62 s
# against 0.33 s exact, bench/search.py's words at 10M); a search holds one of at most
# `max_concurrent_searches` connections (SearchGate), so this is bounded per instance. JIT
# compilation costs more than the walk it would speed up (17 ms of a 360 ms walk).
_SETTINGS = text(
    "SELECT set_config('plan_cache_mode', 'force_custom_plan', true),"
    " set_config('statement_timeout', :timeout, true),"
    " set_config('work_mem', '64MB', true), set_config('jit', 'off', true)"
)
# Checked on every page: the rooms the caller is a member of now, and how long their logs
# are (an upper bound of their messages).
_MY_ROOMS = text(
    "SELECT r.id, r.name, r.last_seq FROM members m JOIN rooms r ON r.id = m.room_id"
    " WHERE m.username = :user"
)
_ONE_ROOM = text("SELECT id, name, last_seq FROM rooms WHERE id = :room_id")
_MATCHES = "m.room_id = ANY(CAST(:rooms AS bigint[])) AND m.search @@ CAST(:q AS tsquery)"
_AFTER = "(m.created_at, m.room_id, m.seq) < (:at, :room_id, :seq)"
_ORDER = "ORDER BY m.created_at DESC, m.room_id DESC, m.seq DESC LIMIT :limit"
# How many of the rooms' messages the planner expects to match.
_ESTIMATE = text(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM messages m WHERE {_MATCHES}")
# Every match, then the newest: for words of few messages, found through the GIN index.
_FIND = text(f"SELECT m.room_id, {_COLUMNS} FROM messages m WHERE {_MATCHES} AND {_AFTER} {_ORDER}")
# Each room's newest matches (walking its primary key back from the newest message, so it
# stops after `limit`), then the newest of them: for words of many messages, which would
# cost fetching and sorting every match. Within a room, created_at follows seq.
_FIND_EACH = text(
    f"SELECT m.room_id, {_COLUMNS} FROM unnest(CAST(:rooms AS bigint[])) AS r (id)"
    f" CROSS JOIN LATERAL (SELECT m.room_id, {_COLUMNS} FROM messages m WHERE m.room_id = r.id"
    f" AND m.search @@ CAST(:q AS tsquery) AND {_AFTER} ORDER BY m.seq DESC LIMIT :limit) AS m"
    f" {_ORDER}"
)
_WALK = text("SELECT set_config('enable_bitmapscan', 'off', true)")
# Past this share of the rooms' messages matching, walking each room back is cheaper than
# fetching every match (bench/search.py measures both kinds of word).
_COMMON = 0.05
_FIRST = (datetime.max.replace(tzinfo=UTC), 0, 0)


class SearchesBusy(Exception):
    """As many searches run on this instance as may, and none finished in time: nothing was
    done; try again shortly (503)."""


class SearchGate:
    """What searching may cost: each user's bucket (past it, RateLimited: 429), and at most
    `concurrent` searches at once on this instance (each holds a pooled connection for up to
    the statement timeout); the others wait up to `wait_seconds`, then SearchesBusy."""

    def __init__(self, rate: float, burst: int, concurrent: int, wait_seconds: float) -> None:
        self._limiter = KeyedLimiter(rate, burst)
        self._slots = asyncio.Semaphore(concurrent)
        self._wait = wait_seconds

    @asynccontextmanager
    async def admit(self, user: str) -> AsyncIterator[None]:
        wait_ms = self._limiter.take(user)
        if wait_ms:
            raise RateLimited(wait_ms, "searching too fast; try again later")
        try:
            async with asyncio.timeout(self._wait):
                await self._slots.acquire()
        except TimeoutError:
            raise SearchesBusy from None
        try:
            yield
        finally:
            self._slots.release()


@dataclass(frozen=True, slots=True)
class Results:
    messages: list[StoredMessage]
    next_cursor: str | None


def _position(cursor: str | None) -> tuple[datetime, int, int]:
    if cursor is None:
        return _FIRST
    stamp, room_id, seq = _decode_cursor(cursor, "search", (str, int, int))
    if not (0 <= room_id <= MAX_SEQ and 0 <= seq <= MAX_SEQ):  # bigints, both
        raise Invalid("cursor is not one this list gave")
    return _cursor_time(stamp), room_id, seq


class Search:
    """Messages matching a query in the rooms a user may read, newest first."""

    def __init__(self, engine: AsyncEngine, timeout_ms: int = 5000) -> None:
        self._engine = engine
        self._timeout = str(timeout_ms)

    async def find(
        self,
        user: str,
        q: str,
        *,
        room_id: int | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> Results:
        """The page after `cursor` of the messages matching `q` (parse_query) in the rooms
        `user` is a member of, or in `room_id` alone (the caller checked that `user` may read
        it). Invalid for a query without words or a cursor this did not give."""
        query = parse_query(q)
        at, after_room, after_seq = _position(cursor)
        async with writing(self._engine) as conn:
            await conn.execute(_SETTINGS, {"timeout": self._timeout})
            if room_id is None:
                heads = (await conn.execute(_MY_ROOMS, {"user": user})).all()
            else:
                heads = (await conn.execute(_ONE_ROOM, {"room_id": room_id})).all()
            rooms = [r.id for r in heads]
            params = {
                "rooms": rooms, "q": query, "at": at, "room_id": after_room, "seq": after_seq,
                "limit": limit + 1,
            }  # fmt: skip
            rows: Sequence[Any] = []
            if rooms:
                estimate = await _estimate(conn, params)
                statement = chosen(estimate, sum(r.last_seq for r in heads))
                if statement is _FIND_EACH:
                    # Per room, the planner would switch to the GIN index for words of a few
                    # percent of the messages, reading their postings once per room.
                    await conn.execute(_WALK)
                rows = (await conn.execute(statement, params)).all()
            names = {r.id: r.name for r in heads}
            messages = await _addressed(conn, user, names, rows[:limit])
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _encode_cursor(
                "search", [last.created_at.isoformat(), int(last.room_id), int(last.seq)]
            )
        return Results(messages, next_cursor)


def chosen(estimate: float, messages: int) -> TextClause:
    """The statement for a query the planner expects `estimate` matches of, in rooms whose
    logs hold `messages` events."""
    return _FIND_EACH if estimate > _COMMON * messages else _FIND


async def _estimate(conn: AsyncConnection, params: dict[str, Any]) -> float:
    """The planner's estimate of the messages that match in the rooms."""
    raw = (await conn.execute(_ESTIMATE, params)).scalar_one()
    plan = json.loads(raw) if isinstance(raw, str) else raw
    return float(plan[0]["Plan"]["Plan Rows"])


async def _addressed(
    conn: AsyncConnection, user: str, names: dict[int, str], rows: Sequence[Any]
) -> list[StoredMessage]:
    """The rows as messages addressed to `user` (with `me`), in their order."""
    by_room: dict[int, list[StoredMessage]] = {}
    for row in rows:
        by_room.setdefault(row.room_id, []).append(_message(names[row.room_id], row[1:]))
    mine = {}
    for room_id, messages in by_room.items():
        for m in await _with_mine(conn, room_id, user, messages):
            mine[(room_id, m.seq)] = m
    return [mine[(row.room_id, row.seq)] for row in rows]
