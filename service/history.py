"""Reading messages back: history pages, join replays, and ranges that fill delivery gaps.

Every query is a range scan of the (room_id, seq) primary key, so its cost does not grow
with the size of the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import reading

_COLUMNS = "seq, author, body, client_id, created_at"
_NEWEST_BEFORE = text(
    f"SELECT {_COLUMNS} FROM messages WHERE room_id = :room_id AND seq < :before "
    "ORDER BY seq DESC LIMIT :limit"
)
_OLDEST_AFTER = text(
    f"SELECT {_COLUMNS} FROM messages WHERE room_id = :room_id AND seq > :after "
    "ORDER BY seq LIMIT :limit"
)
_NEWEST_AFTER = text(
    f"SELECT {_COLUMNS} FROM messages WHERE room_id = :room_id AND seq > :since "
    "ORDER BY seq DESC LIMIT :limit"
)
_RANGE = text(
    f"SELECT {_COLUMNS} FROM messages WHERE room_id = :room_id AND seq > :after "
    "AND seq <= :upto ORDER BY seq LIMIT :limit"
)
_LAST_SEQ = text("SELECT last_seq FROM rooms WHERE id = :room_id")
_LAST_SEQS = text("SELECT id, last_seq FROM rooms WHERE id = ANY(CAST(:ids AS bigint[]))")
# Beyond any seq a room can reach; "before the end" means "the newest".
_END = 2**62


@dataclass(frozen=True, slots=True)
class StoredMessage:
    room: str
    seq: int
    author: str
    body: str
    client_id: str | None
    created_at: datetime

    def to_wire(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "seq": self.seq,
            "author": self.author,
            "body": self.body,
            "created_at": self.created_at.isoformat(timespec="microseconds"),
            "client_id": self.client_id,
        }

    def frame(self) -> str:
        """The `message` frame, encoded once and shared by every receiving socket."""
        return orjson.dumps({"type": "message", **self.to_wire()}).decode()


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[StoredMessage]
    has_more: bool


def _rows(room: str, rows: Any) -> list[StoredMessage]:
    # Unpacked by position (the order of _COLUMNS): a Row's attribute lookups cost ~3x more.
    return [StoredMessage(room, *r) for r in rows]


async def _newest(conn: AsyncConnection, room_id: int, room: str, before: int, limit: int) -> Page:
    rows = (
        await conn.execute(
            _NEWEST_BEFORE, {"room_id": room_id, "before": before, "limit": limit + 1}
        )
    ).all()
    has_more = len(rows) > limit
    return Page(_rows(room, reversed(rows[:limit])), has_more)


async def _oldest(conn: AsyncConnection, room_id: int, room: str, after: int, limit: int) -> Page:
    rows = (
        await conn.execute(_OLDEST_AFTER, {"room_id": room_id, "after": after, "limit": limit + 1})
    ).all()
    return Page(_rows(room, rows[:limit]), len(rows) > limit)


async def page(
    engine: AsyncEngine,
    room_id: int,
    room: str,
    *,
    before: int | None,
    after: int | None,
    limit: int,
) -> Page:
    """A history page in ascending seq; `has_more` says whether the scan could go further."""
    async with reading(engine) as conn:
        if after is not None:
            return await _oldest(conn, room_id, room, after, limit)
        return await _newest(conn, room_id, room, _END if before is None else before, limit)


@dataclass(frozen=True, slots=True)
class Replay:
    messages: list[StoredMessage]
    truncated: bool
    last_seq: int  # the room's last seq as read, before or at the newest message replayed


async def replay(
    engine: AsyncEngine,
    room_id: int,
    room: str,
    since: int | None,
    replay_limit: int,
    resume_limit: int,
) -> Replay:
    """What a joining connection is sent: everything after `since` (at most `resume_limit`,
    the newest), or without a usable `since` the newest `replay_limit`."""
    async with reading(engine) as conn:
        last_seq = (await conn.execute(_LAST_SEQ, {"room_id": room_id})).scalar_one()
        if since is not None and since <= last_seq:
            rows = (
                await conn.execute(
                    _NEWEST_AFTER, {"room_id": room_id, "since": since, "limit": resume_limit + 1}
                )
            ).all()
            truncated = len(rows) > resume_limit
            return Replay(_rows(room, reversed(rows[:resume_limit])), truncated, last_seq)
        result = await _newest(conn, room_id, room, _END, replay_limit)
        return Replay(result.messages, result.has_more, last_seq)


async def fetch_range(
    engine: AsyncEngine, room_id: int, room: str, after: int, upto: int, limit: int = 500
) -> list[StoredMessage]:
    """Messages with after < seq <= upto, ascending, at most `limit`."""
    async with reading(engine) as conn:
        rows = (
            await conn.execute(
                _RANGE, {"room_id": room_id, "after": after, "upto": upto, "limit": limit}
            )
        ).all()
    return _rows(room, rows)


async def last_seqs(engine: AsyncEngine, room_ids: list[int]) -> dict[int, int]:
    async with reading(engine) as conn:
        rows = (await conn.execute(_LAST_SEQS, {"ids": room_ids})).all()
    return {r.id: r.last_seq for r in rows}
