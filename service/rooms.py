"""Rooms: created on first use, listed by activity, their ids and kinds cached per instance;
who may read them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import driver_reading, numbered, reading, writing
from .ratelimit import KeyedLimiter, RateLimited

_FIND = text("SELECT id FROM rooms WHERE name = :name")
_CREATE = text("INSERT INTO rooms (name) VALUES (:name) ON CONFLICT (name) DO NOTHING RETURNING id")
_KIND = text("SELECT kind FROM rooms WHERE id = :room_id")
# The caller's place in a room, as `joined` reports it. With :enrol, a user who is not a
# member of a public room becomes one (PROTOCOL.md, Member: joining makes you a member), the
# read cursor at the log's head; `added` says so. A public room without an owner (new, made
# by this first join or a first post, or carried over from v1 without posters) gets its
# first member as owner. The statement sees the members table as it was before its own
# insert, hence the coalesce with what the insert returned.
_STANDING = numbered(
    "WITH enrol AS ("
    " INSERT INTO members (room_id, username, role, last_read_seq, last_read_n)"
    " SELECT r.id, :user, CASE WHEN EXISTS (SELECT 1 FROM members o"
    " WHERE o.room_id = r.id AND o.role = 'owner') THEN 'member' ELSE 'owner' END,"
    " r.last_seq, r.message_count FROM rooms r"
    " WHERE r.id = :room_id AND r.kind = 'public' AND :enrol"
    " ON CONFLICT DO NOTHING RETURNING role, last_read_seq)"
    " SELECT r.kind, r.last_message_seq, coalesce(m.role, e.role) AS role, r.last_seq,"
    " coalesce(m.last_read_seq, e.last_read_seq) AS last_read_seq, e.role IS NOT NULL AS added"
    " FROM rooms r LEFT JOIN members m ON m.room_id = r.id AND m.username = :user"
    " LEFT JOIN enrol e ON true WHERE r.id = :room_id",
    ("room_id", "user", "enrol"),
)


# Anyone may create rooms, so the cache of their ids is bounded (the oldest entry goes).
_CACHE_MAX = 50_000
DM_PREFIX = "dm-"


@dataclass(frozen=True, slots=True)
class Standing:
    """A user's place in a room: its kind, their role (None: not a member), their read
    cursor, and the room's newest message."""

    kind: str
    role: str | None
    last_read_seq: int
    last_message_seq: int
    added: bool = False  # this very read made the user a member of the (public) room
    # The room's log as this read saw it: every membership change up to this seq is in it.
    seen_seq: int = 0

    @property
    def readable(self) -> bool:
        return self.kind == "public" or self.role is not None


class RoomDirectory:
    """Maps room names to ids, creating rooms on first use, at most `created_per_hour` per
    user. Rooms are never renamed, so an id once known stays right."""

    def __init__(
        self, engine: AsyncEngine, cache_max: int = _CACHE_MAX, created_per_hour: int = 100
    ) -> None:
        self._engine = engine
        self._ids: dict[str, int] = {}
        self._kinds: dict[int, str] = {}  # a room's kind never changes
        self._cache_max = cache_max
        self._created = KeyedLimiter.per(created_per_hour, 3600)
        # One creation at a time per name on this instance: the sends that race to a new
        # room wait for the first one instead of each spending a creation.
        self._creating: dict[str, asyncio.Lock] = {}

    @property
    def creations(self) -> KeyedLimiter:
        """The per-user budget of new rooms, shared with POST /api/rooms (members.py)."""
        return self._created

    def _remember(self, name: str, room_id: int) -> None:
        if len(self._ids) >= self._cache_max:
            del self._ids[next(iter(self._ids))]
        self._ids[name] = room_id

    async def kind(self, room_id: int) -> str:
        """The room's kind: public, private or dm."""
        known = self._kinds.get(room_id)
        if known is not None:
            return known
        async with reading(self._engine) as conn:
            kind = str((await conn.execute(_KIND, {"room_id": room_id})).scalar_one())
        if len(self._kinds) >= self._cache_max:
            del self._kinds[next(iter(self._kinds))]
        self._kinds[room_id] = kind
        return kind

    async def standing(self, room_id: int, user: str, *, enrol: bool = False) -> Standing:
        """`user`'s place in the room, read now; with `enrol`, a public room makes them a
        member if they were not one."""
        async with driver_reading(self._engine) as driver:  # one statement, one transaction
            kind, last_message_seq, role, seen_seq, last_read_seq, added = await driver.fetchrow(
                _STANDING, room_id, user, enrol
            )
        return Standing(kind, role, last_read_seq or 0, last_message_seq, bool(added), seen_seq)

    async def find(self, name: str) -> int | None:
        """The room's id, or None when nobody has used that room yet."""
        if name in self._ids:
            return self._ids[name]
        async with reading(self._engine) as conn:
            room_id = (await conn.execute(_FIND, {"name": name})).scalar_one_or_none()
        if room_id is not None:
            self._remember(name, room_id)
        return room_id

    async def ensure(self, name: str, creator: str) -> int:
        """The room's id, creating the room if this is its first use; raises RateLimited
        (nothing created) when `creator` has created too many rooms lately."""
        room_id = await self.find(name)
        if room_id is not None:
            return room_id
        lock = self._creating.setdefault(name, asyncio.Lock())
        try:
            async with lock:
                return await self._create(name, creator)
        finally:
            if not lock.locked() and self._creating.get(name) is lock:
                del self._creating[name]

    async def _create(self, name: str, creator: str) -> int:
        room_id = self._ids.get(name)
        if room_id is not None:  # created by the one we waited for
            return room_id
        # Taken before the insert, so concurrent creations cannot all pass a check; given
        # back when nothing was created.
        wait_ms = self._created.take(creator)
        if wait_ms:
            raise RateLimited(wait_ms, "too many rooms created; try again later")
        try:
            async with writing(self._engine) as conn:
                room_id = (await conn.execute(_CREATE, {"name": name})).scalar_one_or_none()
                created = room_id is not None
                if room_id is None:  # created concurrently by someone else
                    room_id = (await conn.execute(_FIND, {"name": name})).scalar_one()
        except BaseException:
            self._created.give_back(creator)
            raise
        if not created:
            self._created.give_back(creator)
        self._remember(name, int(room_id))
        return int(room_id)
