"""Search over the whole history (PROTOCOL.md, `GET /api/search`), served by PostgreSQL alone:
the messages matching a query (service/search_text.py makes its `tsquery`) in the rooms a
user may read, newest first, a page at a time.

One GIN index over `messages.search` finds the matches; the caller's rooms (read again on
every page, so a removed member stops finding a room at once) are a condition of the same
statement, which the planner serves from the primary key; the page is the newest `limit` by
(created_at, room_id, seq), a keyset that the opaque cursor carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import writing
from .members import _cursor_time, _decode_cursor, _encode_cursor
from .protocol import StoredMessage
from .search_text import parse_query
from .store import _message, _with_mine

MAX_LIMIT = 100

_COLUMNS = (
    "m.seq, m.author, m.body, m.client_id, m.created_at, m.reply_to, m.edited_at, m.deleted,"
    " m.version, m.reactions"
)
# Custom plans: the best plan depends on how common the words are, which a generic plan of
# a prepared statement cannot know. The timeout bounds what one request can cost.
_SETTINGS = text(
    "SELECT set_config('plan_cache_mode', 'force_custom_plan', true),"
    " set_config('statement_timeout', :timeout, true)"
)
# Checked on every page: the rooms the caller is a member of now.
_MY_ROOMS = text("SELECT room_id FROM members WHERE username = :user")
_FIND = text(
    f"SELECT m.room_id, r.name, {_COLUMNS} FROM messages m JOIN rooms r ON r.id = m.room_id"
    " WHERE m.room_id = ANY(CAST(:rooms AS bigint[])) AND m.search @@ CAST(:q AS tsquery)"
    " AND (m.created_at, m.room_id, m.seq) < (:at, :room_id, :seq)"
    " ORDER BY m.created_at DESC, m.room_id DESC, m.seq DESC LIMIT :limit"
)
_FIRST = (datetime.max.replace(tzinfo=UTC), 0, 0)


@dataclass(frozen=True, slots=True)
class Results:
    messages: list[StoredMessage]
    next_cursor: str | None


def _position(cursor: str | None) -> tuple[datetime, int, int]:
    if cursor is None:
        return _FIRST
    stamp, room_id, seq = _decode_cursor(cursor, "search", (str, int, int))
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
                rooms = list((await conn.execute(_MY_ROOMS, {"user": user})).scalars())
            else:
                rooms = [room_id]
            params = {
                "rooms": rooms, "q": query, "at": at, "room_id": after_room, "seq": after_seq,
                "limit": limit + 1,
            }  # fmt: skip
            rows = (await conn.execute(_FIND, params)).all() if rooms else []
            messages = await _addressed(conn, user, rows[:limit])
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _encode_cursor(
                "search", [last.created_at.isoformat(), int(last.room_id), int(last.seq)]
            )
        return Results(messages, next_cursor)


async def _addressed(conn: AsyncConnection, user: str, rows: Sequence[Any]) -> list[StoredMessage]:
    """The rows as messages addressed to `user` (with `me`), in their order."""
    by_room: dict[int, list[StoredMessage]] = {}
    for row in rows:
        by_room.setdefault(row.room_id, []).append(_message(row.name, row[2:]))
    mine = {}
    for room_id, messages in by_room.items():
        for m in await _with_mine(conn, room_id, user, messages):
            mine[(room_id, m.seq)] = m
    return [mine[(row.room_id, row.seq)] for row in rows]
