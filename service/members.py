"""Membership (PROTOCOL.md, Concepts: Room kinds, Member): who is in which room with which
role, the rules for changing it, and the room lists that follow from it.

Every change is one short transaction that first locks the room's row (`FOR UPDATE`), the
lock the message writer takes to number the room's log: checks run against the rows as they
are under it, and a private room's `member` event takes the next seq of the log, so seqs
stay gapless and in commit order across messages and events. Public rooms write no events.

Refusals are `Refused` subclasses (NotFound, Forbidden, Conflict, Invalid); the REST adapter
maps them to 404, 403, 409 and 422.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple, cast

import orjson
from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import reading, writing
from .protocol import MemberEvent
from .ratelimit import KeyedLimiter, RateLimited
from .readstate import COUNTS
from .refusals import Conflict, Forbidden, Invalid, NotFound
from .validation import ROOM_RE, USERNAME_RE

Role = Literal["owner", "moderator", "member"]
ROLES: tuple[Role, ...] = ("owner", "moderator", "member")
StreamEvent = Literal["added", "removed", "updated"]
DM_PREFIX = "dm-"
# `me` in a members path names the caller.
ME = "me"


class Access(NamedTuple):
    room_id: int
    kind: str
    role: str | None  # the caller's role, None when not a member (public rooms only)


def readable(room: str, row: Any) -> Access:
    """The rule of who may read a room, applied to a row of its id, kind and the user's role
    (None: not a member), or to no row (no such room): a public room anyone, a private room
    or dm its members only (an admin too must add themselves first, visibly; and never to a
    dm). NotFound for no row, Forbidden for a room the user may not read."""
    if row is None:
        raise NotFound(f"room {room} does not exist")
    if row.kind != "public" and row.role is None:
        raise Forbidden(f"not a member of {room}")
    return Access(int(row.id), str(row.kind), row.role)


@dataclass(frozen=True, slots=True)
class Change:
    """A committed membership change, for the notifications: the room's log event (private
    rooms only) and the users whose own stream gets a `rooms` frame."""

    room_id: int
    room: str
    kind: str
    event: MemberEvent | None
    streams: list[tuple[str, StreamEvent]] = field(default_factory=list)

    @property
    def seq(self) -> int | None:
        """The seq the change took in the room's log; None when it wrote no event."""
        return self.event.seq if self.event else None


@dataclass(frozen=True, slots=True)
class Membership:
    """The answer to adding a member or setting a role: the role now in force, and what
    changed (None when nothing did)."""

    username: str
    role: str
    change: Change | None


@dataclass(frozen=True, slots=True)
class ListPage:
    items: list[dict[str, Any]]
    next_cursor: str | None


def dm_name(one: str, other: str) -> str:
    """The one name of the dm of two users, whichever opens it: `dm-` and 32 hex digits of
    a hash of the sorted pair (a newline cannot be in a username, so pairs cannot collide
    by concatenation)."""
    a, b = sorted((one, other))
    return DM_PREFIX + hashlib.sha256(f"{a}\n{b}".encode()).hexdigest()[:32]


# -- cursors ---------------------------------------------------------------------------------
# Opaque to clients: urlsafe base64 of JSON naming the list it belongs to. Anything that does
# not decode to that list's shape is Invalid (422), never a 500.


def _encode_cursor(kind: str, values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([kind, *values])).decode().rstrip("=")


def _decode_cursor(cursor: str, kind: str, types: tuple[type, ...]) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise Invalid("cursor is not one this list gave") from None
    if (
        not isinstance(data, list)
        or len(data) != len(types) + 1
        or data[0] != kind
        or not all(type(v) is t for v, t in zip(data[1:], types, strict=True))
    ):
        raise Invalid("cursor is not one this list gave")
    return data[1:]


def _cursor_time(stamp: str) -> datetime:
    """A cursor's timestamp (ISO 8601 with an offset), else Invalid."""
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        raise Invalid("cursor is not one this list gave") from None
    if at.tzinfo is None:
        raise Invalid("cursor is not one this list gave")
    return at


def _as_is(value: datetime) -> datetime:
    return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# -- SQL -------------------------------------------------------------------------------------

_LOCK_ROOM = text("SELECT id, kind, last_seq FROM rooms WHERE name = :name FOR UPDATE")
_USER = text("SELECT admin, banned_at FROM users WHERE username = :username")
_ROLE = text("SELECT role FROM members WHERE room_id = :room_id AND username = :username")
_OWNERS = text("SELECT count(*) FROM members WHERE room_id = :room_id AND role = 'owner'")
_COUNT = text("SELECT count(*) FROM members WHERE room_id = :room_id")
_HEAD = text("SELECT last_seq FROM rooms WHERE id = :room_id")
_INSERT_MEMBER = text(
    "INSERT INTO members (room_id, username, role, last_read_seq, last_read_n) "
    "SELECT :room_id, :username, :role, :last_read_seq, message_count FROM rooms "
    "WHERE id = :room_id"  # at the head, under the room's lock: every message is read
)
_SET_ROLE = text(
    "UPDATE members SET role = :role WHERE room_id = :room_id AND username = :username"
)
_DELETE_MEMBER = text("DELETE FROM members WHERE room_id = :room_id AND username = :username")
# The next seq of the room's log (its row is locked by the caller), in one statement.
_APPEND_EVENT = text(
    "WITH head AS (UPDATE rooms SET last_seq = last_seq + 1 WHERE id = :room_id "
    "RETURNING last_seq) "
    "INSERT INTO events (room_id, seq, kind, actor, subject, op, role, created_at) "
    "SELECT :room_id, head.last_seq, 'member', :actor, :subject, :op, :role, clock_timestamp() "
    "FROM head RETURNING seq, created_at"
)
_CREATE_ROOM = text(
    "INSERT INTO rooms (name, kind) VALUES (:name, :kind) ON CONFLICT (name) DO NOTHING "
    "RETURNING id"
)
_FIND_ROOM = text("SELECT id, kind FROM rooms WHERE name = :name")
_ACCESS = text(
    "SELECT r.id, r.kind, m.role FROM rooms r "
    "LEFT JOIN members m ON m.room_id = r.id AND m.username = :username WHERE r.name = :name"
)

# A room as PROTOCOL.md's room form, seen by :username; the counts are readstate.py's.
_ROOM_FORM = """
    SELECT r.id, r.name, r.kind, m.role, r.last_seq, r.last_message_seq, r.created_at,
           r.last_message_at, m.last_read_seq, rs.unread, rs.mentions,
           CASE WHEN r.kind = 'dm' THEN (
               SELECT p.username FROM members p
               WHERE p.room_id = r.id AND p.username <> :username
               ORDER BY p.username LIMIT 1
           ) END AS peer,
           coalesce(r.last_message_at, r.created_at) AS active
"""
_COUNTED = f"LEFT JOIN LATERAL ({COUNTS}) AS rs ON true "
_ROOM_INFO = text(
    _ROOM_FORM
    + "FROM rooms r LEFT JOIN members m ON m.room_id = r.id AND m.username = :username "
    + _COUNTED
    + "WHERE r.name = :name"
)
# Keyset by (activity, id). Activity moves while a client pages: a room that becomes active
# meanwhile moves to the front and is not repeated or skipped twice over; the client re-reads
# the list on every `rooms` frame and reconnect anyway.
# Each membership's room is read by its primary key: `OFFSET 0` keeps the planner from
# flattening the lateral into a hash join over every room of the server, which it chose for
# a user in a few hundred rooms (a cost that grew with the server, not the user; tested).
# The page's rows carry the room and the membership, so neither is read twice: `r` is the
# page and `m` its membership columns under the names _ROOM_FORM and COUNTS use.
_MY_ROOMS = text(
    _ROOM_FORM + "FROM (SELECT pr.*, pm.role, pm.last_read_seq, pm.last_read_n, "
    "    pm.unread_mentions, pm.username "
    "  FROM members pm CROSS JOIN LATERAL (SELECT id, name, kind, last_seq, last_message_seq, "
    "    created_at, last_message_at, message_count, pruned_n, "
    "    coalesce(last_message_at, created_at) AS active FROM rooms "
    "    WHERE id = pm.room_id OFFSET 0) AS pr "
    "  WHERE pm.username = :username AND (CAST(:active AS timestamptz) IS NULL "
    "    OR pr.active < :active OR (pr.active = :active AND pr.id > :after_id)) "
    "  ORDER BY pr.active DESC, pr.id LIMIT :limit"
    ") AS r "  # the page first: the counts only for the rooms it holds
    "CROSS JOIN LATERAL (SELECT r.role, r.last_read_seq, r.last_read_n, r.unread_mentions, "
    "  r.username) AS m " + _COUNTED + "ORDER BY active DESC, r.id"
)
_PUBLIC_ROOMS = text(
    "SELECT r.name, r.created_at, r.last_message_at, "
    "(SELECT count(*) FROM members m WHERE m.room_id = r.id) AS members "
    "FROM rooms r WHERE r.kind = 'public' AND starts_with(r.name, :q) AND r.name > :after "
    "ORDER BY r.name LIMIT :limit"
)
_MEMBERS = text(
    "SELECT username, role FROM members WHERE room_id = :room_id AND username > :after "
    "ORDER BY username LIMIT :limit"
)


def _room_form(
    row: Row[Any], stamp: Callable[[datetime], Any] = datetime.isoformat
) -> dict[str, Any]:
    """A room as the REST answers give it (_ROOM_FORM's columns, unpacked by position: a
    200-room list took 1.2 ms by attribute). `stamp` writes the times: as ISO 8601 strings,
    or left as datetimes for orjson, which writes the same text six times faster."""
    fields = cast("tuple[Any, ...]", row)
    (_, name, kind, role, last_seq, last_message_seq, created_at, last_message_at) = fields[:8]
    (last_read_seq, unread, mentions, peer) = fields[8:12]
    member = role is not None
    return {
        "name": name,
        "kind": kind,
        "role": role,
        "last_seq": last_seq,
        "last_message_seq": last_message_seq,
        "created_at": stamp(created_at),
        "last_message_at": None if last_message_at is None else stamp(last_message_at),
        "last_read_seq": last_read_seq if member else None,
        "unread": unread if member else None,
        "mentions": mentions if member else None,
        "peer": peer,
    }


async def _append_event(
    conn: AsyncConnection,
    room_id: int,
    room: str,
    *,
    actor: str,
    subject: str,
    op: Literal["added", "left", "removed", "role"],
    role: str,
) -> MemberEvent:
    row = (
        await conn.execute(
            _APPEND_EVENT,
            {"room_id": room_id, "actor": actor, "subject": subject, "op": op, "role": role},
        )
    ).one()
    return MemberEvent(room, row.seq, subject, op, role, actor, row.created_at)


class Members:
    """Membership of one database: changes under the room's lock, and the lists."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_members_per_room: int = 10_000,
        dms_per_hour: int = 60,
        creations: KeyedLimiter | None = None,
    ) -> None:
        """`creations`: the per-user budget of new rooms, shared with the room directory
        (rooms created by a first join or post) when given."""
        self._engine = engine
        self._max_members = max_members_per_room
        self._dms = KeyedLimiter.per(dms_per_hour, 3600)
        # Not `creations or ...`: an empty KeyedLimiter is falsy (it has a length).
        self._creations = creations if creations is not None else KeyedLimiter(0, 1)

    # -- creating rooms ---------------------------------------------------------------------

    async def create_room(self, name: str, kind: str, creator: str) -> Change:
        """A new public or private room with `creator` as its owner, and no event. Forbidden
        for a `dm-` name, Conflict when the name exists, RateLimited past the creator's
        budget of new rooms."""
        if not ROOM_RE.fullmatch(name):
            raise Invalid("invalid room name")
        if name.startswith(DM_PREFIX):
            raise Forbidden("names beginning dm- are reserved for direct messages")
        if kind not in ("public", "private"):
            raise Invalid("kind must be public or private")
        wait_ms = self._creations.take(creator)
        if wait_ms:
            raise RateLimited(wait_ms, "too many rooms created; try again later")
        try:
            async with writing(self._engine) as conn:
                room_id = (
                    await conn.execute(_CREATE_ROOM, {"name": name, "kind": kind})
                ).scalar_one_or_none()
                if room_id is None:
                    raise Conflict(f"room {name} exists")
                await conn.execute(
                    _INSERT_MEMBER,
                    {"room_id": room_id, "username": creator, "role": "owner", "last_read_seq": 0},
                )
        except BaseException:
            self._creations.give_back(creator)
            raise
        return Change(room_id, name, kind, None, [(creator, "added")])

    async def open_dm(self, user: str, peer: str) -> tuple[Change, bool]:
        """The dm of `user` and `peer`, created on first use with both as members (and no
        event); True when this call created it. NotFound for an unknown peer, Forbidden for a
        banned one, Invalid for yourself, RateLimited past CHAT_MAX_DMS_PER_HOUR new dms."""
        peer = peer.lower()
        if peer == user:
            raise Invalid("a direct message needs another user")
        name = dm_name(user, peer)
        async with reading(self._engine) as conn:
            found = (await conn.execute(_USER, {"username": peer})).one_or_none()
            if found is None:
                raise NotFound(f"no user {peer}")
            if found.banned_at is not None:
                raise Forbidden(f"{peer} is banned")
            existing = (await conn.execute(_FIND_ROOM, {"name": name})).one_or_none()
        if existing is not None:
            return self._existing_dm(existing, name), False
        wait_ms = self._dms.take(user)
        if wait_ms:
            raise RateLimited(wait_ms, "too many direct messages opened; try again later")
        raced: Change | None = None
        try:
            async with writing(self._engine) as conn:
                room_id = (
                    await conn.execute(_CREATE_ROOM, {"name": name, "kind": "dm"})
                ).scalar_one_or_none()
                if room_id is None:  # opened concurrently, by either of the two
                    found = (await conn.execute(_FIND_ROOM, {"name": name})).one()
                    raced = self._existing_dm(found, name)
                else:
                    for username in (user, peer):
                        await conn.execute(
                            _INSERT_MEMBER,
                            {
                                "room_id": room_id,
                                "username": username,
                                "role": "member",
                                "last_read_seq": 0,
                            },
                        )
        except BaseException:
            self._dms.give_back(user)
            raise
        if raced is not None:
            self._dms.give_back(user)
            return raced, False
        assert room_id is not None
        return Change(int(room_id), name, "dm", None, [(user, "added"), (peer, "added")]), True

    @staticmethod
    def _existing_dm(row: Row[Any], name: str) -> Change:
        if row.kind != "dm":  # a v1 public room that took the name before dms existed
            raise Conflict(f"room {name} exists and is not a direct message")
        return Change(row.id, name, "dm", None, [])

    # -- changing membership ----------------------------------------------------------------

    async def set_member(
        self, room: str, by: str, username: str, role: str | None = None
    ) -> Membership:
        """Add `username` to `room` (or, for `me` in a public room, join it), or set their
        role, as the roles allow (PROTOCOL.md, Member). `role` None adds as `member`, or
        keeps the role of a member. Asking for what is already so changes nothing."""
        if role is not None and role not in ROLES:
            raise Invalid(f"role must be one of {', '.join(ROLES)}")
        target = by if username == ME else username.lower()
        async with writing(self._engine) as conn:
            room_id, kind, head = await self._lock(conn, room)
            if kind == "dm":
                raise Forbidden("a direct message's membership never changes")
            actor = await self._caller(conn, by)
            actor_role = await self._role(conn, room_id, by)
            if kind == "private" and actor_role is None and not (actor.admin and target == by):
                raise Forbidden(f"not a member of {room}")
            user = actor if target == by else await self._user(conn, target)
            rights = "owner" if actor.admin and actor_role is not None else actor_role
            current = actor_role if target == by else await self._role(conn, room_id, target)
            if current is None:
                return await self._add(
                    conn, room, room_id, kind, head, by, target, role, rights, actor.admin, user
                )
            if role is None or role == current:
                return Membership(target, current, None)
            return await self._set_role(
                conn, room, room_id, kind, by, target, current, role, rights
            )

    async def _add(
        self,
        conn: AsyncConnection,
        room: str,
        room_id: int,
        kind: str,
        head: int,
        by: str,
        target: str,
        role: str | None,
        rights: str | None,
        admin: bool,
        user: Row[Any],
    ) -> Membership:
        if user.banned_at is not None:
            raise Forbidden(f"{target} is banned")
        if kind == "public":
            if target != by:
                raise Forbidden("people join public rooms themselves")
            # The first member of a room nobody owns becomes its owner (PROTOCOL.md, Member).
            owners = (await conn.execute(_OWNERS, {"room_id": room_id})).scalar_one()
            granted = "owner" if owners == 0 else "member"
            if role not in (None, "member", granted):
                raise Forbidden("joining a public room makes you a member")
        elif target == by:  # only an admin who is not a member yet gets here
            assert admin
            granted = role or "member"
        else:
            granted = role or "member"
            if rights not in ("owner", "moderator") or (
                rights == "moderator" and granted == "owner"
            ):
                raise Forbidden("not allowed to add members with that role")
        count = (await conn.execute(_COUNT, {"room_id": room_id})).scalar_one()
        if count >= self._max_members:
            raise Conflict(f"{room} has reached its limit of {self._max_members} members")
        event = None
        if kind == "private":
            event = await _append_event(
                conn, room_id, room, actor=by, subject=target, op="added", role=granted
            )
            head = event.seq
        # The read cursor starts at the log's head (PROTOCOL.md, Read cursor).
        await conn.execute(
            _INSERT_MEMBER,
            {"room_id": room_id, "username": target, "role": granted, "last_read_seq": head},
        )
        return Membership(target, granted, Change(room_id, room, kind, event, [(target, "added")]))

    async def _set_role(
        self,
        conn: AsyncConnection,
        room: str,
        room_id: int,
        kind: str,
        by: str,
        target: str,
        current: str,
        role: str,
        rights: str | None,
    ) -> Membership:
        if rights == "moderator":
            if not (current == "member" and role == "moderator"):
                raise Forbidden("moderators may only promote members to moderator")
        elif rights != "owner":
            raise Forbidden("not allowed to change roles")
        if current == "owner" and await self._last_owner(conn, room_id):
            raise Conflict("the last owner cannot be demoted")
        await conn.execute(_SET_ROLE, {"room_id": room_id, "username": target, "role": role})
        event = None
        if kind == "private":
            event = await _append_event(
                conn, room_id, room, actor=by, subject=target, op="role", role=role
            )
        return Membership(target, role, Change(room_id, room, kind, event, [(target, "updated")]))

    async def remove(self, room: str, by: str, username: str) -> Change | None:
        """Leave `room` (`me`, or one's own name) or remove a member of a private room, as
        the roles allow; None when the caller leaves a public room they were not in."""
        target = by if username == ME else username.lower()
        async with writing(self._engine) as conn:
            room_id, kind, _ = await self._lock(conn, room)
            if kind == "dm":
                raise Forbidden("a direct message's membership never changes")
            actor = await self._caller(conn, by)
            actor_role = await self._role(conn, room_id, by)
            if kind == "private" and actor_role is None:
                raise Forbidden(f"not a member of {room}")
            if target == by:
                if actor_role is None:
                    return None
                current = actor_role
                op: Literal["left", "removed"] = "left"
            else:
                if kind == "public":
                    raise Forbidden("members of a public room cannot be removed")
                await self._user(conn, target)
                found = await self._role(conn, room_id, target)
                if found is None:
                    raise NotFound(f"{target} is not a member of {room}")
                current = found
                rights = "owner" if actor.admin else actor_role
                if rights == "member" or (rights == "moderator" and current != "member"):
                    raise Forbidden("not allowed to remove this member")
                op = "removed"
            if current == "owner" and await self._last_owner(conn, room_id):
                raise Conflict("the last owner cannot leave or be removed")
            await conn.execute(_DELETE_MEMBER, {"room_id": room_id, "username": target})
            event = None
            if kind == "private":
                event = await _append_event(
                    conn, room_id, room, actor=by, subject=target, op=op, role=current
                )
        return Change(room_id, room, kind, event, [(target, "removed")])

    @staticmethod
    async def _lock(conn: AsyncConnection, room: str) -> tuple[int, str, int]:
        row = (await conn.execute(_LOCK_ROOM, {"name": room})).one_or_none()
        if row is None:
            raise NotFound(f"room {room} does not exist")
        return int(row.id), str(row.kind), int(row.last_seq)

    @staticmethod
    async def _user(conn: AsyncConnection, username: str) -> Row[Any]:
        user = (await conn.execute(_USER, {"username": username})).one_or_none()
        if user is None:
            raise NotFound(f"no user {username}")
        return user

    @staticmethod
    async def _caller(conn: AsyncConnection, by: str) -> Row[Any]:
        actor = (await conn.execute(_USER, {"username": by})).one_or_none()
        if actor is None:  # a token that outlived its user
            raise NotFound(f"no user {by}")
        return actor

    @staticmethod
    async def _role(conn: AsyncConnection, room_id: int, username: str) -> str | None:
        params = {"room_id": room_id, "username": username}
        role: str | None = (await conn.execute(_ROLE, params)).scalar_one_or_none()
        return role

    @staticmethod
    async def _last_owner(conn: AsyncConnection, room_id: int) -> bool:
        return int((await conn.execute(_OWNERS, {"room_id": room_id})).scalar_one()) <= 1

    # -- reading ----------------------------------------------------------------------------

    async def access(self, room: str, user: str) -> Access:
        """Whether `user` may read `room`: a public room anyone, a private room or dm its
        members only (an admin too must add themselves first, visibly; and never to a dm).
        NotFound for an unknown room, Forbidden otherwise."""
        async with reading(self._engine) as conn:
            row = (await conn.execute(_ACCESS, {"name": room, "username": user})).one_or_none()
        return readable(room, row)

    async def room_info(self, room: str, user: str) -> dict[str, Any]:
        """`room` in PROTOCOL.md's room form as `user` sees it; NotFound, Forbidden as
        `access`. For a public room the user is not in, their fields are null."""
        async with reading(self._engine) as conn:
            row = (await conn.execute(_ROOM_INFO, {"name": room, "username": user})).one_or_none()
        readable(room, row)
        assert row is not None  # readable raised otherwise
        return _room_form(row)

    async def my_rooms(self, user: str, limit: int, cursor: str | None = None) -> ListPage:
        """The rooms `user` is a member of, most recently active first, `limit` at a time;
        their times are datetimes (for orjson)."""
        active: datetime | None = None
        after_id = 0
        if cursor is not None:
            stamp, after_id = _decode_cursor(cursor, "mine", (str, int))
            active = _cursor_time(stamp)
        params = {"username": user, "active": active, "after_id": after_id, "limit": limit + 1}
        async with reading(self._engine) as conn:
            rows = (await conn.execute(_MY_ROOMS, params)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more:
            last = rows[-1]
            next_cursor = _encode_cursor("mine", [last.active.isoformat(), int(last.id)])
        return ListPage([_room_form(r, _as_is) for r in rows], next_cursor)

    async def public_rooms(self, q: str, limit: int, cursor: str | None = None) -> ListPage:
        """The public rooms whose name starts with `q`, by name, `limit` at a time."""
        after = ""
        if cursor is not None:
            (after,) = _decode_cursor(cursor, "public", (str,))
            if not ROOM_RE.fullmatch(after):
                raise Invalid("cursor is not one this list gave")
        params = {"q": q, "after": after, "limit": limit + 1}
        async with reading(self._engine) as conn:
            rows = (await conn.execute(_PUBLIC_ROOMS, params)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        items = [
            {
                "name": r.name,
                "created_at": _iso(r.created_at),
                "last_message_at": _iso(r.last_message_at),
                "members": r.members,
            }
            for r in rows
        ]
        return ListPage(items, _encode_cursor("public", [rows[-1].name]) if more else None)

    async def members(
        self, room: str, user: str, limit: int, cursor: str | None = None
    ) -> ListPage:
        """The members of `room` by name, `limit` at a time; NotFound, Forbidden as `access`."""
        after = ""
        if cursor is not None:
            (after,) = _decode_cursor(cursor, "members", (str,))
            if not USERNAME_RE.fullmatch(after):
                raise Invalid("cursor is not one this list gave")
        room_id = (await self.access(room, user)).room_id
        params = {"room_id": room_id, "after": after, "limit": limit + 1}
        async with reading(self._engine) as conn:
            rows = (await conn.execute(_MEMBERS, params)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        items = [{"username": r.username, "role": r.role} for r in rows]
        return ListPage(items, _encode_cursor("members", [rows[-1].username]) if more else None)
