"""Who is online in which room, counted per user across tabs and instances.

Each instance keeps a row per (room, user) it has at least one connection for, and a
heartbeat row of its own. A user is online in a room while some live instance has such a
row. Join and leave events are decided in the same transaction as the row change, under an
advisory lock on (room, user), so two instances cannot both announce the same join, and are
sent with that transaction (Postgres fan-out) or right after it (other backends). Rows of
an instance whose heartbeat stops are reaped, with leave events, by whichever instance
gets there first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import reading, writing
from .fanout import Fanout
from .protocol import PresenceNote, encode_note

log = logging.getLogger(__name__)

_REAPER_LOCK = 7_356_228_002
_KEY_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_REGISTER = text(
    "INSERT INTO instances (id) VALUES (:me) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()"
)
_HEARTBEAT = text("UPDATE instances SET heartbeat_at = now() WHERE id = :me")
_ADD = text(
    "INSERT INTO presence (room_id, username, instance_id) VALUES (:room_id, :user, :me) "
    "ON CONFLICT DO NOTHING"
)
_REMOVE = text(
    "DELETE FROM presence WHERE room_id = :room_id AND username = :user AND instance_id = :me"
)
_ONLINE_ELSEWHERE = text(
    "SELECT EXISTS (SELECT 1 FROM presence p JOIN instances i ON i.id = p.instance_id "
    "WHERE p.room_id = :room_id AND p.username = :user AND p.instance_id <> :me "
    "AND i.heartbeat_at > now() - make_interval(secs => :ttl))"
)
_ONLINE = text(
    "SELECT DISTINCT p.username FROM presence p JOIN instances i ON i.id = p.instance_id "
    "WHERE p.room_id = :room_id AND i.heartbeat_at > now() - make_interval(secs => :ttl) "
    "ORDER BY p.username"
)
_TRY_REAP = text("SELECT pg_try_advisory_xact_lock(:k)")
_REAP_ROWS = text(
    "DELETE FROM presence p USING instances i WHERE p.instance_id = i.id "
    "AND i.heartbeat_at < now() - make_interval(secs => :ttl) "
    "RETURNING p.room_id, p.username, p.instance_id"
)
_REAP_INSTANCES = text(
    "DELETE FROM instances WHERE heartbeat_at < now() - make_interval(secs => :ttl)"
)
_ROOM_NAMES = text("SELECT id, name FROM rooms WHERE id = ANY(CAST(:ids AS bigint[]))")
_UNREGISTER = text("DELETE FROM instances WHERE id = :me")


class Presence:
    def __init__(
        self,
        engine: AsyncEngine,
        instance_id: str,
        *,
        fanout: Fanout,
        heartbeat_seconds: float,
        ttl_seconds: float,
    ) -> None:
        self._engine = engine
        self._me = instance_id
        self._fanout = fanout
        self._heartbeat = heartbeat_seconds
        self._ttl = ttl_seconds
        # Local connections per (room_id, room, user); the database row exists while > 0.
        self._counts: dict[tuple[int, str, str], int] = defaultdict(int)
        self._locks: dict[tuple[int, str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async with writing(self._engine) as conn:
            await conn.execute(_REGISTER, {"me": self._me})
        self._task = asyncio.create_task(self._beat(), name="presence-heartbeat")

    async def stop(self) -> None:
        """Say goodbye: leave events for everyone only here, then drop this instance."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for key in [k for k, n in self._counts.items() if n > 0]:
            with contextlib.suppress(Exception):
                await self._announce(key, joined=False)
        self._counts.clear()
        with contextlib.suppress(Exception):
            async with writing(self._engine) as conn:
                await conn.execute(_UNREGISTER, {"me": self._me})

    async def join(self, room_id: int, room: str, user: str) -> None:
        key = (room_id, room, user)
        async with self._locks[key]:
            self._counts[key] += 1
            if self._counts[key] == 1:
                try:
                    await self._announce(key, joined=True)
                except BaseException:
                    self._counts[key] -= 1
                    raise

    async def leave(self, room_id: int, room: str, user: str) -> None:
        key = (room_id, room, user)
        async with self._locks[key]:
            self._counts[key] -= 1
            if self._counts[key] <= 0:
                del self._counts[key]
                self._locks.pop(key, None)
                await self._announce(key, joined=False)

    async def online(self, room_id: int) -> list[str]:
        async with reading(self._engine) as conn:
            rows = await conn.execute(_ONLINE, {"room_id": room_id, "ttl": self._ttl})
            return [r.username for r in rows]

    async def _announce(self, key: tuple[int, str, str], *, joined: bool) -> None:
        room_id, room, user = key
        params = {"room_id": room_id, "user": user, "me": self._me, "ttl": self._ttl}
        later: list[str] = []
        async with writing(self._engine) as conn:
            await conn.execute(_KEY_LOCK, {"key": f"{room_id}/{user}"})
            await conn.execute(_ADD if joined else _REMOVE, params)
            elsewhere = (await conn.execute(_ONLINE_ELSEWHERE, params)).scalar_one()
            if not elsewhere:
                note = PresenceNote(room_id, room, user, "join" if joined else "leave")
                later = await self._fanout.notify_in(conn, [encode_note(note)])
        if later:
            await self._fanout.publish(later)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                await self._heartbeat_once()
                await self.reap()
            except Exception as error:
                log.warning("presence heartbeat failed: %s", error)

    async def _heartbeat_once(self) -> None:
        async with writing(self._engine) as conn:
            alive = (await conn.execute(_HEARTBEAT, {"me": self._me})).rowcount
            if not alive:
                await conn.execute(_REGISTER, {"me": self._me})
        if not alive:
            # We were taken for dead (a long outage) and reaped: announce ourselves again.
            log.warning("presence: instance was reaped; re-announcing")
            for key in [k for k, n in self._counts.items() if n > 0]:
                await self._announce(key, joined=True)

    async def reap(self) -> None:
        """Remove the rows of instances whose heartbeat stopped, with their leave events."""
        later: list[str] = []
        async with writing(self._engine) as conn:
            if not (await conn.execute(_TRY_REAP, {"k": _REAPER_LOCK})).scalar_one():
                return  # another instance is reaping
            gone = (await conn.execute(_REAP_ROWS, {"ttl": self._ttl})).all()
            await conn.execute(_REAP_INSTANCES, {"ttl": self._ttl})
            if not gone:
                return
            rows = await conn.execute(_ROOM_NAMES, {"ids": list({r.room_id for r in gone})})
            names = {r.id: r.name for r in rows}
            payloads = []
            for room_id, user in sorted({(r.room_id, r.username) for r in gone}):
                await conn.execute(_KEY_LOCK, {"key": f"{room_id}/{user}"})
                params = {"room_id": room_id, "user": user, "me": "", "ttl": self._ttl}
                if not (await conn.execute(_ONLINE_ELSEWHERE, params)).scalar_one():
                    note = PresenceNote(room_id, names.get(room_id, ""), user, "leave")
                    payloads.append(encode_note(note))
            later = await self._fanout.notify_in(conn, payloads)
        if later:
            await self._fanout.publish(later)
