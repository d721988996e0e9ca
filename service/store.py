"""Where the room log is kept: the seam between the domain and PostgreSQL.

`Store` is what the writer and the hubs need (a batch of events stored in one call,
replays, ranges of the log that fill delivery gaps, the rooms' last seqs); `PostgresStore`
is the real one, and the fast tests of the core run the same code against an in-memory
store (tests/memory_store.py). A room's log is two tables by (room_id, seq): `messages`
(each message's event is its row, which holds the message's current state) and `events`
(edits, deletes, reactions, membership changes). Every read is a range scan of their
primary keys, so its cost does not grow with the size of the tables. Outages surface as
`db.Unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import OutcomeUnknown, driver_reading, is_outage, numbered, reading, writing
from .protocol import (
    MAX_SEQ,
    NOTIFY_INLINE_MAX_BYTES,
    NOTIFY_PAYLOAD_MAX_BYTES,
    SIGNATURE_BYTES,
    DeleteEvent,
    EditEvent,
    FanoutKey,
    LogEntry,
    MemberEvent,
    ReactionEvent,
    ReactionOp,
    Reactions,
    StoredMessage,
    message_frame,
    message_wire,
)
from .search_text import search_vector

log = logging.getLogger(__name__)

# The emoji of a message with a count above 0 (PROTOCOL.md, CHAT_MAX_EMOJI_PER_MESSAGE).
DEFAULT_MAX_EMOJI = 20


@dataclass(frozen=True, slots=True)
class Draft:
    """A validated message waiting for its seq."""

    room_id: int
    room: str
    author: str
    body: str
    client_id: str | None
    reply_to: int | None = None


ChangeKind = Literal["edit", "delete", "reaction"]


@dataclass(frozen=True, slots=True)
class ChangeDraft:
    """A validated edit, delete or reaction of message `target`, waiting for its seq. The
    rules (who may, whether it changes anything) are checked when it is stored."""

    room_id: int
    room: str
    actor: str
    kind: ChangeKind
    target: int
    body: str | None = None  # an edit's new body
    emoji: str | None = None  # a reaction's
    op: ReactionOp | None = None


# Why a draft stored nothing (PROTOCOL.md, Errors).
Refusal = Literal["forbidden", "not_found", "limit_reached"]


@dataclass(frozen=True, slots=True)
class Posted:
    """The outcome of a send: the stored message, and whether it was stored before; or
    `refusal`: nothing was stored (the message's seq is 0) because its author may not post
    in the room (`forbidden`: not a member of a private room or dm, or banned) or its
    reply_to names no message of the room (`not_found`). `joined`: the send made its author
    a member of the (public) room."""

    room_id: int
    message: StoredMessage
    duplicate: bool
    refusal: Refusal | None = None
    joined: bool = False

    @property
    def refused(self) -> bool:
        return self.refusal is not None


@dataclass(frozen=True, slots=True)
class Changed:
    """The outcome of an edit, delete or reaction: the new event (with its seq), or
    `duplicate` (it would have changed nothing; `seq` is the target's current version), or
    `refusal` (nothing was stored; `seq` is 0). `event` is None for an outcome read back
    after a lost reply."""

    room_id: int
    room: str
    seq: int
    created_at: datetime | None
    duplicate: bool
    refusal: Refusal | None = None
    event: EditEvent | DeleteEvent | ReactionEvent | None = None

    @property
    def refused(self) -> bool:
        return self.refusal is not None


Item = Draft | ChangeDraft
Outcome = Posted | Changed


@dataclass(frozen=True, slots=True)
class Stored:
    """What one batch stored: an outcome per draft, in order, and the notifications still
    to publish (none when they rode the transaction)."""

    posted: list[Outcome]
    payloads: list[str]


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[StoredMessage]
    has_more: bool


@dataclass(frozen=True, slots=True)
class WirePage:
    """A page as REST answers it: each message as StoredMessage.to_wire writes it."""

    messages: list[dict[str, Any]]
    has_more: bool


@dataclass(frozen=True, slots=True)
class Around:
    messages: list[StoredMessage]
    has_more_before: bool
    has_more_after: bool


@dataclass(frozen=True, slots=True)
class Replay:
    messages: list[StoredMessage]
    truncated: bool
    last_seq: int  # the room's last seq, read in the same snapshot as the messages


class FeedItem(NamedTuple):
    """An entry of a room's log as one member's frame. `event` is the entry itself when it
    is not a message (the hub looks at membership changes), else None."""

    seq: int
    frame: str
    event: LogEntry | None


class Store(Protocol):
    async def store(self, drafts: Sequence[Item], channel: str | None, batch: uuid.UUID) -> Stored:
        """Store the drafts in one transaction, numbering each new event after its room's
        last seq.

        A message whose (room, author, client_id) was stored before stores nothing and comes
        back as that message with `duplicate`; so does a repeat within the batch. A change
        that would change nothing is `duplicate`; one the rules refuse is `refused`. With
        `channel`, the notifications are sent in the transaction; else they are returned.
        The outcome is recorded under `batch` in the same transaction. Raises OutcomeUnknown
        when the database went away after the call was sent."""
        ...

    async def recover(self, drafts: Sequence[Item], batch: uuid.UUID) -> Stored | None:
        """The outcome of `store(drafts, _, batch)` if it committed, else None (nothing of
        it was stored). Its notifications are not returned: other instances catch up by
        their resync."""
        ...

    async def forget_batches(self, before: datetime) -> int:
        """Drop the outcomes recorded before `before`; how many were dropped."""
        ...

    async def replay(
        self, room_id: int, room: str, replay_limit: int, user: str | None = None
    ) -> Replay:
        """What a connection joining without `since` is sent: the newest `replay_limit`
        messages in their current state (with `me` for `user`), and the room's head."""
        ...

    async def fetch_range(
        self, room_id: int, room: str, after: int, upto: int, limit: int, user: str | None = None
    ) -> list[LogEntry]:
        """The log's entries (messages in their current state, and the other events) with
        after < seq <= upto, ascending, at most `limit`; with `user`, messages carry `me`."""
        ...

    async def fetch_frames(
        self, room_id: int, room: str, after: int, upto: int, limit: int, user: str
    ) -> list[FeedItem]:
        """fetch_range's entries addressed to `user`, as the frames they are sent as (a
        resume's pages: the messages' frames are written from the rows)."""
        ...

    async def last_seqs(self, room_ids: list[int]) -> dict[int, int]:
        """Each room's last seq."""
        ...


_COLUMNS = (
    "seq, author, body, client_id, created_at, reply_to, edited_at, deleted, version, reactions"
)
# The emoji :user reacted with, read in the same statement for the rows that have reactions
# at all (NULL for the others, and for every row when :user is NULL): a second round trip
# and a second pass over the page cost more (a history page's CPU in the instance).
_MINE_COLUMN = (
    "CASE WHEN reactions IS NOT NULL AND CAST(:user AS text) IS NOT NULL THEN ARRAY("
    "SELECT x.emoji FROM reactions x WHERE x.room_id = messages.room_id"
    " AND x.seq = messages.seq AND x.username = CAST(:user AS text)) END AS mine"
)
_ADDRESSED = f"{_COLUMNS}, {_MINE_COLUMN}"
# A page's statements, on the room `{room}` names (a parameter, or the room a statement's
# outer query found).
_NEWEST = (
    f"SELECT {_ADDRESSED} FROM messages WHERE room_id = {{room}} AND seq < :before"
    " ORDER BY seq DESC LIMIT :limit"
)
_OLDEST = (
    f"SELECT {_ADDRESSED} FROM messages WHERE room_id = {{room}} AND seq > :after"
    " ORDER BY seq LIMIT :limit"
)
_NEWEST_BEFORE = text(_NEWEST.format(room=":room_id"))
_OLDEST_AFTER = text(_OLDEST.format(room=":room_id"))
_OLDEST_FROM = text(
    f"SELECT {_ADDRESSED} FROM messages WHERE room_id = :room_id AND seq >= :start "
    "ORDER BY seq LIMIT :limit"
)
# A history page together with the caller's right to read it, in one statement: the room by
# name with the caller's role in it, then, only when they may read it (a public room, or
# one they are a member of: members.readable, which the caller applies again), its page. No
# row: no such room. One round trip and one connection where the check and the page took
# two of each (bench/, a page at 1M rows: p50/p99 1.91/2.55 against 2.19-2.40/2.86-3.22 ms).
_READABLE = (
    "SELECT a.id, a.kind, a.role, p.* FROM (SELECT r.id, r.kind, m.role FROM rooms r"
    " LEFT JOIN members m ON m.room_id = r.id AND m.username = CAST(:user AS text)"
    " WHERE r.name = :room) AS a LEFT JOIN LATERAL ({page}) AS p"
    " ON a.kind = 'public' OR a.role IS NOT NULL ORDER BY p.seq {order}"
)


# Run by asyncpg itself (PostgresStore.readable_page): parameters room, user, bound, limit.
_READABLE_NEWEST = numbered(
    _READABLE.format(page=_NEWEST.format(room="a.id"), order="DESC"),
    ("room", "user", "before", "limit"),
)
_READABLE_OLDEST = numbered(
    _READABLE.format(page=_OLDEST.format(room="a.id"), order="ASC"),
    ("room", "user", "after", "limit"),
)


class RoomAccess(NamedTuple):
    """What decides whether a user may read a room (members.readable)."""

    id: int
    kind: str
    role: str | None


# The log is messages and events by (room_id, seq): two range scans of their primary keys,
# merged. A message row has a NULL kind.
_RANGE = numbered(
    f"(SELECT NULL::text AS kind, {_ADDRESSED}, NULL::text AS subject, NULL::text AS op,"
    " NULL::text AS role, NULL::bigint AS target, NULL::text AS emoji, NULL::int AS count"
    " FROM messages"
    " WHERE room_id = :room_id AND seq > :after AND seq <= :upto ORDER BY seq LIMIT :limit)"
    " UNION ALL"
    " (SELECT kind, seq, actor, body, NULL, created_at, NULL, NULL, NULL, NULL, NULL, NULL,"
    " subject, op, role, target, emoji, count FROM events"
    " WHERE room_id = :room_id AND seq > :after AND seq <= :upto ORDER BY seq LIMIT :limit)"
    " ORDER BY seq LIMIT :limit",
    ("room_id", "after", "upto", "limit", "user"),
)
_WHO_REACTED = text(
    "SELECT emoji, username FROM (SELECT emoji, username, row_number() OVER"
    " (PARTITION BY emoji ORDER BY created_at, username) AS n FROM reactions"
    " WHERE room_id = :room_id AND seq = :seq) AS r WHERE n <= :per_emoji"
)
_MESSAGE = text(f"SELECT {_ADDRESSED} FROM messages WHERE room_id = :room_id AND seq = :seq")
# A join's replay: the room's last seq and its newest messages, in one snapshot (one row
# with NULL message columns when the room has none).
_REPLAY = numbered(
    "SELECT rooms.last_seq, m.* FROM rooms LEFT JOIN LATERAL ("
    f"SELECT {_ADDRESSED} FROM messages WHERE room_id = rooms.id"
    " ORDER BY seq DESC LIMIT :limit) AS m ON true WHERE rooms.id = :room_id ORDER BY m.seq DESC",
    ("room_id", "limit", "user"),
)
_LAST_SEQS = "SELECT id, last_seq FROM rooms WHERE id = ANY($1::bigint[])"
# service/sql/post_messages.sql
_POST = text(
    "SELECT seqs, created, repeated, stored_bodies, payloads, joined, codes, c_seqs, c_codes,"
    " c_counts, stamp FROM chat_post_messages("
    "CAST(:rooms AS bigint[]), CAST(:authors AS text[]), CAST(:bodies AS text[]),"
    " CAST(:cids AS text[]), CAST(:replies AS bigint[]), CAST(:searches AS text[]),"
    " CAST(:c_rooms AS bigint[]), CAST(:c_actors AS text[]), CAST(:c_kinds AS text[]),"
    " CAST(:c_targets AS bigint[]), CAST(:c_bodies AS text[]), CAST(:c_emojis AS text[]),"
    " CAST(:c_ops AS text[]), :max_emoji, CAST(:c_searches AS text[]),"
    " CAST(:channel AS text), :payload_max, :inline_max,"
    " CAST(:batch AS uuid), :key_inner, :key_outer)"
)
_OUTCOME = text("SELECT seqs, repeated, codes, created_at FROM write_batches WHERE id = :batch")
_REPEATED = text(
    "SELECT m.room_id, m.seq, m.body, m.created_at FROM messages m JOIN unnest("
    "CAST(:rooms AS bigint[]), CAST(:seqs AS bigint[])) AS t (r, s)"
    " ON m.room_id = t.r AND m.seq = t.s"
)
_FORGET = text("DELETE FROM write_batches WHERE created_at < :before")


def _reactions(value: Any) -> Reactions:
    """The messages.reactions column (JSON, or NULL) as (emoji, count) pairs."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        value = orjson.loads(value)
    return tuple((r["emoji"], int(r["count"])) for r in value)


def _message(room: str, r: Any, mine: frozenset[str] | None = None) -> StoredMessage:
    # Unpacked by position (the order of _COLUMNS): a Row's attribute lookups cost more.
    seq, author, body, client_id, at, reply_to, edited_at, deleted, version, reactions = r[:10]
    return StoredMessage(
        room, seq, author, body, client_id, at, reply_to, edited_at, deleted, version,
        _reactions(reactions), mine,
    )  # fmt: skip


_NOTHING_MINE: frozenset[str] = frozenset()


def _addressed(room: str, r: Any, user: str | None) -> StoredMessage:
    """A row of _ADDRESSED's columns as a message addressed to `user` (`mine` from the
    row's last column), or to nobody in particular when `user` is None."""
    if user is None:
        return _message(room, r)
    mine = r[10]
    return _message(room, r, frozenset(mine) if mine else _NOTHING_MINE)


def _wired(room: str, r: Any) -> dict[str, Any]:
    """A row of _ADDRESSED's columns as its user's wire message (_addressed(...).to_wire())."""
    seq, author, body, client_id, at, reply_to, edited_at, deleted, version, reactions, mine = r
    return message_wire(
        room, seq, author, body, client_id, at, reply_to, edited_at, deleted, version,
        _reactions(reactions), frozenset(mine) if mine else _NOTHING_MINE,
    )  # fmt: skip


def _rows(room: str, rows: Any, user: str | None) -> list[StoredMessage]:
    return [_addressed(room, r, user) for r in rows]


def _entries(room: str, rows: Any, user: str | None) -> list[LogEntry]:
    """_RANGE's rows as log entries, the messages addressed to `user`."""
    entries: list[LogEntry] = []
    for row in rows:
        entry = _addressed(room, row[1:12], user) if row[0] is None else _event(room, row)
        if entry is not None:
            entries.append(entry)
    return entries


def _feed_items(room: str, rows: Any) -> list[FeedItem]:
    """_RANGE's rows (addressed to a user) as FeedItems."""
    items: list[FeedItem] = []
    for row in rows:
        if row[0] is None:
            items.append(FeedItem(row[1], message_frame(_wired(room, row[1:12])), None))
        elif (event := _event(room, row)) is not None:
            items.append(FeedItem(event.seq, event.frame(), event))
    return items


def _event(room: str, row: Any) -> LogEntry | None:
    """A row of _RANGE that is an event, as its entry; None for a kind unknown to this
    release (passed over)."""
    kind, seq, actor, body = row[0], row[1], row[2], row[3]
    subject, op, role, target, emoji, count = row[12:]
    if kind == "edit":
        return EditEvent(room, seq, target, actor, body or "", row[5])
    if kind == "delete":
        return DeleteEvent(room, seq, target, actor)
    if kind == "reaction":
        return ReactionEvent(room, seq, target, actor, emoji, op, count)
    if kind == "member":
        return MemberEvent(room, seq, subject, op, role, actor, row[5])
    log.warning("room %s: seq %d is a %s event, which this release skips", room, seq, kind)
    return None


def unique_drafts(drafts: Sequence[Item]) -> tuple[list[Item], list[int]]:
    """The drafts that store something, and for each draft the index among them of the one
    that stores it: a client_id sent twice in one batch is stored once."""
    unique: list[Item] = []
    owner: list[int] = []
    first: dict[tuple[int, str, str], int] = {}
    for draft in drafts:
        if not isinstance(draft, Draft) or draft.client_id is None:
            owner.append(len(unique))
            unique.append(draft)
            continue
        index = first.setdefault((draft.room_id, draft.author, draft.client_id), len(unique))
        if index == len(unique):
            unique.append(draft)
        owner.append(index)
    return unique, owner


def _change_event(
    d: ChangeDraft, seq: int, count: int | None, at: datetime
) -> EditEvent | DeleteEvent | ReactionEvent:
    if d.kind == "edit":
        assert d.body is not None
        return EditEvent(d.room, seq, d.target, d.actor, d.body, at)
    if d.kind == "delete":
        return DeleteEvent(d.room, seq, d.target, d.actor)
    assert d.emoji is not None and d.op is not None and count is not None
    return ReactionEvent(d.room, seq, d.target, d.actor, d.emoji, d.op, count)


@dataclass(frozen=True, slots=True)
class _Result:
    """What the function answered for the unique drafts, messages first, then changes."""

    seqs: Sequence[int]
    created: Sequence[datetime]
    repeated: Sequence[bool]
    stored_bodies: Sequence[str | None]
    joined: Sequence[bool]
    codes: Sequence[str | None]
    c_seqs: Sequence[int]
    c_codes: Sequence[str | None]
    c_counts: Sequence[int | None]
    c_created: datetime | None
    recovered: bool = False


def _outcome(
    drafts: Sequence[Item], unique: list[Item], owner: list[int], res: _Result, payloads: list[str]
) -> Stored:
    """Each draft's outcome from the unique drafts'."""
    messages = [d for d in unique if isinstance(d, Draft)]
    changes = [d for d in unique if isinstance(d, ChangeDraft)]
    by_unique: dict[int, Outcome] = {}
    m_index = iter(range(len(messages)))
    c_index = iter(range(len(changes)))
    for u, d in enumerate(unique):
        if isinstance(d, Draft):
            i = next(m_index)
            seq, at, again, body = (
                res.seqs[i],
                res.created[i],
                res.repeated[i],
                res.stored_bodies[i],
            )
            message = StoredMessage(
                d.room, seq, d.author, body if again and body is not None else d.body,
                d.client_id, at, d.reply_to,
            )  # fmt: skip
            code = res.codes[i]
            by_unique[u] = Posted(
                d.room_id, message, again, refusal=_refusal(code), joined=res.joined[i]
            )
        else:
            i = next(c_index)
            seq, code = res.c_seqs[i], res.c_codes[i]
            fresh = code is None
            event = None
            if fresh and not res.recovered and res.c_created is not None:
                event = _change_event(d, seq, res.c_counts[i], res.c_created)
            by_unique[u] = Changed(
                d.room_id, d.room, seq, res.c_created if fresh else None, code == "duplicate",
                _refusal(code), event,
            )  # fmt: skip
    posted: list[Outcome] = []
    for draft, i in zip(drafts, owner, strict=True):
        outcome = by_unique[i]
        if isinstance(outcome, Posted) and unique[i] is not draft:  # a repeat in the batch
            outcome = replace(outcome, duplicate=True, joined=False)
        posted.append(outcome)
    return Stored(posted, payloads)


def _refusal(code: str | None) -> Refusal | None:
    if code in ("forbidden", "not_found", "limit_reached"):
        return code  # type: ignore[return-value]
    return None


# Folding text for search is pure Python: a batch of long non-ASCII bodies (CJK text is a
# pair lexeme per character) is folded in a thread, so the event loop keeps serving sockets
# meanwhile (the GIL is handed back every few milliseconds) instead of stalling for the
# whole batch.
_FOLD_IN_THREAD_CHARS = 20_000


async def _search_vectors(
    messages: list[Draft], changes: list[ChangeDraft]
) -> tuple[list[str], list[str | None]]:
    """The search lexemes of the new messages' and the edits' bodies."""
    bodies = [d.body for d in messages]
    c_bodies = [d.body for d in changes]

    def fold() -> tuple[list[str], list[str | None]]:
        return (
            [search_vector(b) for b in bodies],
            [search_vector(b) if b is not None else None for b in c_bodies],
        )

    heavy = sum(len(b) for b in bodies if not b.isascii())
    heavy += sum(len(b) for b in c_bodies if b is not None and not b.isascii())
    if heavy > _FOLD_IN_THREAD_CHARS:
        return await asyncio.to_thread(fold)
    return fold()


class PostgresStore:
    """`key` signs the notifications `store` builds; a store that only reads needs none.

    `writes`, when given, is the engine `store` alone uses: the instance gives its writer a
    connection of its own (service/app.py), so that every batch runs on a backend that has
    already compiled chat_post_messages() and cached its plans. On a connection of the shared
    pool, a batch that follows a read or a presence write there can be the first call on its
    backend: ~10 ms of the server's time more (PostgreSQL's log, bench at 10 msg/s), one
    message in a hundred at that load, so the p99 of send to receipt."""

    def __init__(
        self,
        engine: AsyncEngine,
        key: FanoutKey | None = None,
        max_emoji: int = DEFAULT_MAX_EMOJI,
        *,
        writes: AsyncEngine | None = None,
    ) -> None:
        self._engine = engine
        self._writes = writes if writes is not None else engine
        self._key = key
        self._max_emoji = max_emoji

    async def store(self, drafts: Sequence[Item], channel: str | None, batch: uuid.UUID) -> Stored:
        if self._key is None:
            raise RuntimeError("a store without a fan-out key cannot store")
        unique, owner = unique_drafts(drafts)
        messages = [d for d in unique if isinstance(d, Draft)]
        changes = [d for d in unique if isinstance(d, ChangeDraft)]
        searches, c_searches = await _search_vectors(messages, changes)
        params = {
            "rooms": [d.room_id for d in messages],
            "authors": [d.author for d in messages],
            "bodies": [d.body for d in messages],
            "cids": [d.client_id for d in messages],
            "replies": [d.reply_to for d in messages],
            "searches": searches,
            "c_rooms": [d.room_id for d in changes],
            "c_actors": [d.actor for d in changes],
            "c_kinds": [d.kind for d in changes],
            "c_targets": [d.target for d in changes],
            "c_bodies": [d.body for d in changes],
            "c_emojis": [d.emoji for d in changes],
            "c_ops": [d.op for d in changes],
            "c_searches": c_searches,
            "max_emoji": self._max_emoji,
            "channel": channel,
            "payload_max": NOTIFY_PAYLOAD_MAX_BYTES - SIGNATURE_BYTES,
            "inline_max": NOTIFY_INLINE_MAX_BYTES,
            "batch": batch,
            "key_inner": self._key.inner,
            "key_outer": self._key.outer,
        }
        # A failure to get a connection is certain (nothing was sent); once the call is on
        # its way, an outage leaves the outcome unknown.
        async with reading(self._writes) as conn:  # autocommit: the call is the transaction
            try:
                row = (await conn.execute(_POST, params)).one()
            except Exception as error:
                if is_outage(error):
                    raise OutcomeUnknown(str(error) or type(error).__name__) from error
                raise
        result = _Result(
            row.seqs, row.created, row.repeated, row.stored_bodies, row.joined, row.codes,
            row.c_seqs, row.c_codes, row.c_counts, row.stamp,
        )  # fmt: skip
        return _outcome(drafts, unique, owner, result, list(row.payloads))

    async def recover(self, drafts: Sequence[Item], batch: uuid.UUID) -> Stored | None:
        unique, owner = unique_drafts(drafts)
        messages = [d for d in unique if isinstance(d, Draft)]
        n = len(messages)
        async with reading(self._engine) as conn:
            row = (await conn.execute(_OUTCOME, {"batch": batch})).one_or_none()
            if row is None:
                return None
            seqs, repeated = row.seqs[:n], row.repeated[:n]
            codes = row.codes if len(row.codes) == len(row.seqs) else [None] * len(row.seqs)
            again = [(d.room_id, s) for d, s, r in zip(messages, seqs, repeated, strict=True)
                     if r]  # fmt: skip
            earlier = {}
            if again:
                params = {"rooms": [r for r, _ in again], "seqs": [s for _, s in again]}
                earlier = {
                    (m.room_id, m.seq): m for m in (await conn.execute(_REPEATED, params)).all()
                }
        created = [
            earlier[(d.room_id, s)].created_at if r else row.created_at
            for d, s, r in zip(messages, seqs, repeated, strict=True)
        ]
        bodies = [
            earlier[(d.room_id, s)].body if r else None
            for d, s, r in zip(messages, seqs, repeated, strict=True)
        ]
        result = _Result(
            seqs, created, repeated, bodies, [False] * n, codes[:n],
            row.seqs[n:], codes[n:], [None] * (len(row.seqs) - n), row.created_at,
            recovered=True,
        )  # fmt: skip
        return _outcome(drafts, unique, owner, result, [])

    async def forget_batches(self, before: datetime) -> int:
        async with writing(self._engine) as conn:
            return (await conn.execute(_FORGET, {"before": before})).rowcount

    async def replay(
        self, room_id: int, room: str, replay_limit: int, user: str | None = None
    ) -> Replay:
        async with driver_reading(self._engine) as driver:
            rows = await driver.fetch(_REPLAY, room_id, replay_limit + 1, user)
        last_seq = int(rows[0][0])
        found = [r[1:] for r in rows if r[1] is not None]
        messages = _rows(room, reversed(found[:replay_limit]), user)
        return Replay(messages, len(found) > replay_limit, last_seq)

    async def fetch_range(
        self, room_id: int, room: str, after: int, upto: int, limit: int, user: str | None = None
    ) -> list[LogEntry]:
        async with driver_reading(self._engine) as driver:
            rows = await driver.fetch(_RANGE, room_id, after, upto, limit, user)
        return _entries(room, rows, user)

    async def fetch_frames(
        self, room_id: int, room: str, after: int, upto: int, limit: int, user: str
    ) -> list[FeedItem]:
        async with driver_reading(self._engine) as driver:
            rows = await driver.fetch(_RANGE, room_id, after, upto, limit, user)
        return _feed_items(room, rows)

    async def last_seqs(self, room_ids: list[int]) -> dict[int, int]:
        async with driver_reading(self._engine) as driver:
            rows = await driver.fetch(_LAST_SEQS, room_ids)
        return {r[0]: r[1] for r in rows}

    async def page(
        self,
        room_id: int,
        room: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        user: str | None = None,
    ) -> Page:
        """A history page in ascending seq, messages in their current state; `has_more`
        says whether the scan could go further."""
        async with reading(self._engine) as conn:
            if after is not None:
                params = {"room_id": room_id, "after": after, "limit": limit + 1, "user": user}
                rows = (await conn.execute(_OLDEST_AFTER, params)).all()
                return Page(_rows(room, rows[:limit], user), len(rows) > limit)
            start = MAX_SEQ if before is None else before
            return await _newest(conn, room_id, room, start, limit, user)

    async def readable_page(
        self, room: str, user: str, *, before: int | None, after: int | None, limit: int
    ) -> tuple[RoomAccess | None, WirePage]:
        """`page` for `user` by the room's name, with what decides whether they may read it:
        a row of the room's id, kind and their role (None when there is no such room), and
        the page, empty unless the room is public or they are a member. The caller applies
        members.readable to the row before it answers anything."""
        if after is not None:
            statement, bound = _READABLE_OLDEST, after
        else:
            statement, bound = _READABLE_NEWEST, MAX_SEQ if before is None else before
        async with driver_reading(self._engine) as driver:
            rows = await driver.fetch(statement, room, user, bound, limit + 1)
        if not rows:
            return None, WirePage([], False)
        found = [r for r in rows if r[3] is not None]
        messages = found[:limit]
        if after is None:
            messages.reverse()
        first = rows[0]
        access = RoomAccess(first[0], first[1], first[2])
        # Written from the rows (StoredMessage.to_wire's text, by message_wire): building
        # the messages first cost about a tenth of a page's time in the instance.
        wired = [_wired(room, r[3:]) for r in messages]
        return access, WirePage(wired, len(found) > limit)

    async def around(
        self, room_id: int, room: str, seq: int, limit: int, user: str | None = None
    ) -> Around:
        """Up to `limit` messages centred on `seq` (itself included when it is a message):
        about half before it, the rest from it on."""
        older = limit // 2
        async with reading(self._engine) as conn:
            before = await _newest(conn, room_id, room, seq, older, user)
            params = {"room_id": room_id, "start": seq, "limit": limit - older + 1, "user": user}
            rows = (await conn.execute(_OLDEST_FROM, params)).all()
        later = _rows(room, rows[: limit - older], user)
        return Around(before.messages + later, before.has_more, len(rows) > limit - older)

    async def message(
        self, room_id: int, room: str, seq: int, user: str | None = None
    ) -> StoredMessage | None:
        """One message in its current state, or None."""
        async with reading(self._engine) as conn:
            params = {"room_id": room_id, "seq": seq, "user": user}
            row = (await conn.execute(_MESSAGE, params)).one_or_none()
        return None if row is None else _addressed(room, row, user)

    async def who_reacted(self, room_id: int, seq: int, per_emoji: int) -> dict[str, list[str]]:
        """For each emoji on the message, at most `per_emoji` users, the earliest first."""
        params = {"room_id": room_id, "seq": seq, "per_emoji": per_emoji}
        async with reading(self._engine) as conn:
            rows = (await conn.execute(_WHO_REACTED, params)).all()
        users: dict[str, list[str]] = {}
        for emoji, username in rows:
            users.setdefault(emoji, []).append(username)
        return users


async def _newest(
    conn: AsyncConnection, room_id: int, room: str, before: int, limit: int, user: str | None
) -> Page:
    params = {"room_id": room_id, "before": before, "limit": limit + 1, "user": user}
    rows = (await conn.execute(_NEWEST_BEFORE, params)).all()
    return Page(_rows(room, reversed(rows[:limit]), user), len(rows) > limit)
