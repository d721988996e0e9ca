"""Where messages are kept: the seam between the domain and PostgreSQL.

`Store` is what the writer and the hubs need (a batch stored in one call, replays, ranges
that fill delivery gaps, the rooms' last seqs); `PostgresStore` is the real one, and the
fast tests of the core run the same code against an in-memory store (tests/memory_store.py).
Every read is a range scan of the (room_id, seq) primary key, so its cost does not grow
with the size of the table. Outages surface as `db.Unavailable`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import OutcomeUnknown, is_outage, reading, writing
from .protocol import (
    MAX_SEQ,
    NOTIFY_INLINE_MAX_BYTES,
    NOTIFY_PAYLOAD_MAX_BYTES,
    SIGNATURE_BYTES,
    FanoutKey,
    LogEntry,
    MemberEvent,
    StoredMessage,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Draft:
    """A validated message waiting for its seq."""

    room_id: int
    room: str
    author: str
    body: str
    client_id: str | None


@dataclass(frozen=True, slots=True)
class Posted:
    """The outcome of a send: the stored message, and whether it was stored before; or
    `refused`: its author may not post in the room (not a member of a private room or dm,
    or banned), and nothing was stored (the message's seq is 0). `joined`: the send made its
    author a member of the (public) room."""

    room_id: int
    message: StoredMessage
    duplicate: bool
    refused: bool = False
    joined: bool = False


@dataclass(frozen=True, slots=True)
class Stored:
    """What one batch stored: an outcome per draft, in order, and the notifications still
    to publish (none when they rode the transaction)."""

    posted: list[Posted]
    payloads: list[str]


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[StoredMessage]
    has_more: bool


@dataclass(frozen=True, slots=True)
class Replay:
    messages: list[StoredMessage]
    truncated: bool
    last_seq: int  # the room's last seq as read, before or at the newest message replayed


class Store(Protocol):
    async def store(self, drafts: Sequence[Draft], channel: str | None, batch: uuid.UUID) -> Stored:
        """Store the drafts in one transaction, numbering each after its room's last seq.

        A draft whose (room, author, client_id) was stored before stores nothing and comes
        back as that message with `duplicate`; so does a repeat within the batch. With
        `channel`, the notifications are sent in the transaction; else they are returned.
        The outcome is recorded under `batch` in the same transaction. Raises OutcomeUnknown
        when the database went away after the call was sent."""
        ...

    async def recover(self, drafts: Sequence[Draft], batch: uuid.UUID) -> Stored | None:
        """The outcome of `store(drafts, _, batch)` if it committed, else None (nothing of
        it was stored). Its notifications are not returned: other instances catch up by
        their resync."""
        ...

    async def forget_batches(self, before: datetime) -> int:
        """Drop the outcomes recorded before `before`; how many were dropped."""
        ...

    async def replay(
        self, room_id: int, room: str, since: int | None, replay_limit: int, resume_limit: int
    ) -> Replay:
        """What a joining connection is sent: everything after `since` (at most
        `resume_limit`, the newest), or without a usable `since` the newest `replay_limit`."""
        ...

    async def fetch_range(
        self, room_id: int, room: str, after: int, upto: int, limit: int
    ) -> list[LogEntry]:
        """The log's entries (messages and other events) with after < seq <= upto,
        ascending, at most `limit`."""
        ...

    async def last_seqs(self, room_ids: list[int]) -> dict[int, int]:
        """Each room's last seq."""
        ...


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
# The log is messages and events by (room_id, seq): two range scans of their primary keys,
# merged. A message row comes as (seq, NULL kind, author, body, client_id, created_at, ...).
_RANGE = text(
    "(SELECT seq, NULL::text AS kind, author, body, client_id, created_at,"
    " NULL::text AS subject, NULL::text AS op, NULL::text AS role FROM messages"
    " WHERE room_id = :room_id AND seq > :after AND seq <= :upto ORDER BY seq LIMIT :limit)"
    " UNION ALL"
    " (SELECT seq, kind, actor, body, NULL, created_at, subject, op, role FROM events"
    " WHERE room_id = :room_id AND seq > :after AND seq <= :upto ORDER BY seq LIMIT :limit)"
    " ORDER BY seq LIMIT :limit"
)
_LAST_SEQ = text("SELECT last_seq FROM rooms WHERE id = :room_id")
_LAST_SEQS = text("SELECT id, last_seq FROM rooms WHERE id = ANY(CAST(:ids AS bigint[]))")
# service/sql/post_messages.sql
_POST = text(
    "SELECT seqs, created, repeated, stored_bodies, payloads, joined FROM chat_post_messages("
    "CAST(:rooms AS bigint[]), CAST(:authors AS text[]), CAST(:bodies AS text[]),"
    " CAST(:cids AS text[]), CAST(:channel AS text), :payload_max, :inline_max,"
    " CAST(:batch AS uuid), :key_inner, :key_outer)"
)
_OUTCOME = text("SELECT seqs, repeated, created_at FROM write_batches WHERE id = :batch")
_REPEATED = text(
    "SELECT m.room_id, m.seq, m.body, m.created_at FROM messages m JOIN unnest("
    "CAST(:rooms AS bigint[]), CAST(:seqs AS bigint[])) AS t (r, s)"
    " ON m.room_id = t.r AND m.seq = t.s"
)
_FORGET = text("DELETE FROM write_batches WHERE created_at < :before")


def _rows(room: str, rows: Any) -> list[StoredMessage]:
    # Unpacked by position (the order of _COLUMNS): a Row's attribute lookups cost more.
    return [StoredMessage(room, *r) for r in rows]


def _entries(room: str, rows: Any) -> list[LogEntry]:
    """_RANGE's rows as log entries."""
    entries: list[LogEntry] = []
    for seq, kind, actor, body, client_id, at, subject, op, role in rows:
        if kind is None:
            entries.append(StoredMessage(room, seq, actor, body, client_id, at))
        elif kind == "member":
            entries.append(MemberEvent(room, seq, subject, op, role, actor, at))
        else:  # the room log's later kinds, unknown to this release: passed over
            log.warning("room %s: seq %d is a %s event, which this release skips", room, seq, kind)
    return entries


def unique_drafts(drafts: Sequence[Draft]) -> tuple[list[Draft], list[int]]:
    """The drafts that store something, and for each draft the index among them of the one
    that stores it: a client_id sent twice in one batch is stored once."""
    unique: list[Draft] = []
    owner: list[int] = []
    first: dict[tuple[int, str, str], int] = {}
    for draft in drafts:
        if draft.client_id is None:
            owner.append(len(unique))
            unique.append(draft)
            continue
        index = first.setdefault((draft.room_id, draft.author, draft.client_id), len(unique))
        if index == len(unique):
            unique.append(draft)
        owner.append(index)
    return unique, owner


def _outcome(
    drafts: Sequence[Draft],
    unique: list[Draft],
    owner: list[int],
    seqs: Sequence[int],
    created: Sequence[datetime],
    repeated: Sequence[bool],
    stored_bodies: Sequence[str | None],
    payloads: list[str],
    joined: Sequence[bool] | None = None,
) -> Stored:
    """Each draft's outcome from the unique drafts' (stored_bodies: a repeat's original;
    seq 0: refused)."""
    stored = [
        StoredMessage(d.room, seq, d.author, body if again and body is not None else d.body,
                      d.client_id, at)
        for d, seq, at, again, body in zip(unique, seqs, created, repeated, stored_bodies,
                                           strict=True)
    ]  # fmt: skip
    joins = joined if joined is not None else [False] * len(unique)
    posted = [
        Posted(
            draft.room_id,
            stored[i],
            repeated[i] or unique[i] is not draft,
            refused=seqs[i] == 0,
            joined=joins[i] and unique[i] is draft,
        )
        for draft, i in zip(drafts, owner, strict=True)
    ]
    return Stored(posted, payloads)


class PostgresStore:
    """`key` signs the notifications `store` builds; a store that only reads needs none."""

    def __init__(self, engine: AsyncEngine, key: FanoutKey | None = None) -> None:
        self._engine = engine
        self._key = key

    async def store(self, drafts: Sequence[Draft], channel: str | None, batch: uuid.UUID) -> Stored:
        if self._key is None:
            raise RuntimeError("a store without a fan-out key cannot store")
        unique, owner = unique_drafts(drafts)
        params = {
            "rooms": [d.room_id for d in unique],
            "authors": [d.author for d in unique],
            "bodies": [d.body for d in unique],
            "cids": [d.client_id for d in unique],
            "channel": channel,
            "payload_max": NOTIFY_PAYLOAD_MAX_BYTES - SIGNATURE_BYTES,
            "inline_max": NOTIFY_INLINE_MAX_BYTES,
            "batch": batch,
            "key_inner": self._key.inner,
            "key_outer": self._key.outer,
        }
        # A failure to get a connection is certain (nothing was sent); once the call is on
        # its way, an outage leaves the outcome unknown.
        async with reading(self._engine) as conn:  # autocommit: the call is the transaction
            try:
                row = (await conn.execute(_POST, params)).one()
            except Exception as error:
                if is_outage(error):
                    raise OutcomeUnknown(str(error) or type(error).__name__) from error
                raise
        return _outcome(drafts, unique, owner, row.seqs, row.created, row.repeated,
                        row.stored_bodies, list(row.payloads), row.joined)  # fmt: skip

    async def recover(self, drafts: Sequence[Draft], batch: uuid.UUID) -> Stored | None:
        unique, owner = unique_drafts(drafts)
        async with reading(self._engine) as conn:
            row = (await conn.execute(_OUTCOME, {"batch": batch})).one_or_none()
            if row is None:
                return None
            again = [(d.room_id, s) for d, s, r in zip(unique, row.seqs, row.repeated, strict=True)
                     if r]  # fmt: skip
            earlier = {}
            if again:
                params = {"rooms": [r for r, _ in again], "seqs": [s for _, s in again]}
                earlier = {
                    (m.room_id, m.seq): m for m in (await conn.execute(_REPEATED, params)).all()
                }
        created = [
            earlier[(d.room_id, s)].created_at if r else row.created_at
            for d, s, r in zip(unique, row.seqs, row.repeated, strict=True)
        ]
        bodies = [
            earlier[(d.room_id, s)].body if r else None
            for d, s, r in zip(unique, row.seqs, row.repeated, strict=True)
        ]
        return _outcome(drafts, unique, owner, row.seqs, created, row.repeated, bodies, [])

    async def forget_batches(self, before: datetime) -> int:
        async with writing(self._engine) as conn:
            return (await conn.execute(_FORGET, {"before": before})).rowcount

    async def replay(
        self, room_id: int, room: str, since: int | None, replay_limit: int, resume_limit: int
    ) -> Replay:
        async with reading(self._engine) as conn:
            last_seq = (await conn.execute(_LAST_SEQ, {"room_id": room_id})).scalar_one()
            if since is not None and since <= last_seq:
                params = {"room_id": room_id, "since": since, "limit": resume_limit + 1}
                rows = (await conn.execute(_NEWEST_AFTER, params)).all()
                truncated = len(rows) > resume_limit
                return Replay(_rows(room, reversed(rows[:resume_limit])), truncated, last_seq)
            newest = await _newest(conn, room_id, room, MAX_SEQ, replay_limit)
            return Replay(newest.messages, newest.has_more, last_seq)

    async def fetch_range(
        self, room_id: int, room: str, after: int, upto: int, limit: int
    ) -> list[LogEntry]:
        params = {"room_id": room_id, "after": after, "upto": upto, "limit": limit}
        async with reading(self._engine) as conn:
            return _entries(room, (await conn.execute(_RANGE, params)).all())

    async def last_seqs(self, room_ids: list[int]) -> dict[int, int]:
        async with reading(self._engine) as conn:
            rows = (await conn.execute(_LAST_SEQS, {"ids": room_ids})).all()
        return {r.id: r.last_seq for r in rows}

    async def page(
        self, room_id: int, room: str, *, before: int | None, after: int | None, limit: int
    ) -> Page:
        """A history page in ascending seq; `has_more` says whether the scan could go
        further."""
        async with reading(self._engine) as conn:
            if after is not None:
                params = {"room_id": room_id, "after": after, "limit": limit + 1}
                rows = (await conn.execute(_OLDEST_AFTER, params)).all()
                return Page(_rows(room, rows[:limit]), len(rows) > limit)
            return await _newest(conn, room_id, room, MAX_SEQ if before is None else before, limit)


async def _newest(conn: AsyncConnection, room_id: int, room: str, before: int, limit: int) -> Page:
    params = {"room_id": room_id, "before": before, "limit": limit + 1}
    rows = (await conn.execute(_NEWEST_BEFORE, params)).all()
    return Page(_rows(room, reversed(rows[:limit])), len(rows) > limit)
