"""Who is online in which room, counted per user across tabs and instances.

The database holds the truth: a row per (room, user, instance) while that instance has at
least one connection of the user joined to the room, and a heartbeat row per instance. A
user is online in a room while a live instance (heartbeat within the TTL) has such a row.
Each row change is written under an advisory lock on (room, user), and the event (`join`,
`leave`) is decided in the same transaction: only when the row really changed and no other
live instance has one. So two instances never announce the same change, and a write run
again after an outcome we could not see (the connection died at COMMIT) announces nothing
twice. Events ride that transaction (Postgres fan-out) or are published right after it.

Writes are coalesced per (room, user): its row changes at most once per `debounce` seconds,
a leave waits `debounce` before it is written (a join meanwhile cancels it: a reload, or a
flapping client, makes no event), and the final state is always written. A write that fails
is retried in the background, with capped backoff, until the row says what the local
connections say: no leave is ever forgotten, so nobody stays online for ever.

The reaper removes the rows of instances whose heartbeat stopped, with leave events, under
a lock on those instances' rows (a row of theirs cannot be added meanwhile). An instance
that finds itself reaped (its heartbeat touches no row, or a join meets the foreign key of
its instance row) registers again and writes its rows back, with join events.

Each instance also keeps, per room it has connections in, the online set its members were
told (`heard` applies the events, and drops those that change nothing). A `joined` frame
takes its `online` list from it in the same event-loop step as the member starts receiving
presence frames, so no change can fall between the two; and `repair`, run when the fan-out
recovers, compares every view with the database and tells members what lost events missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import Unavailable, reading, retrying, sqlstate, writing
from .fanout import Fanout
from .protocol import PresenceNote, encode_note

log = logging.getLogger(__name__)

_REAPER_LOCK = 7_356_228_002
_FOREIGN_KEY_VIOLATION = "23503"
# Backoff of a write that failed: doubling from the first delay, never above the last.
_RETRY_FIRST = 0.2
_RETRY_MAX = 5.0
# A repair that raced an event in a room looks at that room again, at most this many times.
_REPAIR_ROUNDS = 3
_EARLY_MAX = 10_000  # events held for a view being loaded; past it the load starts over
_LOAD_ATTEMPTS = 3
# An event whose transaction committed but whose publish (another fan-out backend) hangs.
_PUBLISH_TIMEOUT = 5.0

_KEY_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_REGISTER = text(
    "INSERT INTO instances (id) VALUES (:me) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()"
)
_HEARTBEAT = text("UPDATE instances SET heartbeat_at = now() WHERE id = :me")
# service/sql/presence_set.sql: the key's lock, the row, the check and the notification.
_SET = text(
    "SELECT changed, announce FROM chat_presence_set(:room_id, :user, :me,"
    " CAST(:ttl AS double precision), :online, CAST(:channel AS text), CAST(:payload AS text))"
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
_ONLINE_IN = text(
    "SELECT DISTINCT p.room_id, p.username FROM presence p JOIN instances i "
    "ON i.id = p.instance_id WHERE p.room_id = ANY(CAST(:ids AS bigint[])) "
    "AND i.heartbeat_at > now() - make_interval(secs => :ttl)"
)
_TRY_REAP = text("SELECT pg_try_advisory_xact_lock(:k)")
# Locked: a heartbeat under way makes its instance fresh again (the row is re-checked once
# its lock is released), and no presence row can be added for a locked instance.
_STALE = text(
    "SELECT id FROM instances WHERE heartbeat_at < now() - make_interval(secs => :ttl) FOR UPDATE"
)
_REAP_ROWS = text(
    "DELETE FROM presence WHERE instance_id = ANY(CAST(:ids AS text[])) RETURNING room_id, username"
)
_REAP_INSTANCES = text("DELETE FROM instances WHERE id = ANY(CAST(:ids AS text[]))")
_ROOM_NAMES = text("SELECT id, name FROM rooms WHERE id = ANY(CAST(:ids AS bigint[]))")
_UNREGISTER = text("DELETE FROM instances WHERE id = :me")

Event = Literal["join", "leave"]
# Told when what this instance's members were told changes: (room_id, user, event).
OnChange = Callable[[int, str, Event], None]


def _ignore(room_id: int, user: str, event: Event) -> None:
    pass


@dataclass(slots=True, eq=False)
class _Key:
    """One user in one room on this instance: what the local connections want, and what
    this instance's row is known to say."""

    room_id: int
    room: str
    user: str
    count: int = 0  # local connections joined
    written: bool | None = False  # our row: present, absent, or None (a write failed midway)
    changed_at: float = -math.inf  # when the row last changed (monotonic)
    left_at: float = -math.inf  # when the last local connection left
    retry_at: float = 0.0
    failures: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None  # the background writer, while one is due

    @property
    def wanted(self) -> bool:
        return self.count > 0

    @property
    def settled(self) -> bool:
        return self.written is not None and self.written == self.wanted


@dataclass(slots=True, eq=False)
class _Room:
    """A room with local keys, and the online set its local members were told."""

    keys: set[str] = field(default_factory=set)
    online: set[str] = field(default_factory=set)
    loaded: bool = False
    loading: asyncio.Task[None] | None = None
    early: dict[str, bool] = field(default_factory=dict)  # heard while loading
    heard: int = 0  # events heard and changes told; a repair that raced one looks again


class Presence:
    def __init__(
        self,
        engine: AsyncEngine,
        instance_id: str,
        *,
        fanout: Fanout,
        heartbeat_seconds: float,
        ttl_seconds: float,
        debounce_seconds: float = 1.0,
    ) -> None:
        self._engine = engine
        self._me = instance_id
        self._fanout = fanout
        self._heartbeat = heartbeat_seconds
        self._ttl = ttl_seconds
        self._debounce = debounce_seconds
        self._keys: dict[tuple[int, str], _Key] = {}
        self._rooms: dict[int, _Room] = {}
        self._on_change: OnChange = _ignore
        self._task: asyncio.Task[None] | None = None
        self._repair: asyncio.Task[None] | None = None
        self._repair_again = False
        # Set to wake every background writer now (a repair), then replaced.
        self._kick = asyncio.Event()
        # Bumped each time we register again after being reaped: a write that began before
        # cannot tell whether the reaper removed its row after it.
        self._epoch = 0
        # Since when heartbeats have been succeeding: right after an outage of our own,
        # others' heartbeats are probably late for the same reason, and reaping them would
        # only make every user leave and come back.
        self._beating_since = -math.inf
        self._beating = True

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, on_change: OnChange = _ignore) -> None:
        """Register this instance and start its heartbeat; `on_change` is told every change
        of what this instance's members were told."""
        self._on_change = on_change
        async with writing(self._engine) as conn:
            await conn.execute(_REGISTER, {"me": self._me})
        self._task = _spawn(self._beat(), "presence-heartbeat")

    async def stop(self) -> None:
        """Say goodbye: leave events for everyone only here, then drop this instance."""
        tasks = [self._task, self._repair, *(k.task for k in self._keys.values())]
        tasks += [r.loading for r in self._rooms.values()]
        running = [t for t in tasks if t is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for key in list(self._keys.values()):
            if key.written is not False:
                with contextlib.suppress(Exception):
                    await self._write(key, False)
        self._keys.clear()
        self._rooms.clear()
        with contextlib.suppress(Exception):
            async with writing(self._engine) as conn:
                await conn.execute(_UNREGISTER, {"me": self._me})

    # -- local connections -------------------------------------------------------------------

    async def join(self, room_id: int, room: str, user: str) -> None:
        """One more local connection of `user` in the room. The first one writes the row
        now, unless the key's row changed less than `debounce` ago (then it is written in
        the background when it may); raises Unavailable when that write fails."""
        key = self._key(room_id, room, user)
        key.count += 1
        if key.count > 1 or key.settled:
            return  # already online from here, or a pending leave is cancelled
        if key.task is not None or self._due(key) > time.monotonic():
            self._schedule(key)
            return
        wrote = False
        try:
            async with key.lock:
                if not key.settled:
                    wrote = True
                    await self._write(key, True)
        except BaseException:
            # This connection did not join (a failure, or it went away meanwhile).
            key.count -= 1
            if wrote:
                self._failed(key)
            elif not key.settled:
                self._schedule(key)
            else:
                self._forget_if_idle(key)
            raise

    async def leave(self, room_id: int, room: str, user: str) -> None:
        """One local connection of `user` fewer. The last one's leave is written in the
        background after `debounce` (a join meanwhile cancels it); never raises."""
        key = self._keys.get((room_id, user))
        if key is None or key.count == 0:
            return
        key.count -= 1
        if key.count == 0:
            key.left_at = time.monotonic()
            if key.settled:
                self._forget_if_idle(key)
            else:
                self._schedule(key)

    # -- what members are told -------------------------------------------------------------

    async def watch(self, room_id: int) -> None:
        """Make sure this instance knows who is online in the room (read once from the
        database, then kept up to date by `heard`); call after `join`. Raises Unavailable
        when it cannot be read."""
        for _ in range(_LOAD_ATTEMPTS):
            room = self._rooms.get(room_id)
            if room is None or room.loaded:
                return
            if room.loading is None:
                room.loading = _spawn(self._load(room_id, room), f"presence-load-{room_id}")
            loading = room.loading
            try:
                await asyncio.shield(loading)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if (current is not None and current.cancelling()) or not loading.cancelled():
                    raise
                # The load was started over (too many events meanwhile) or stopped.
        raise Unavailable("who is online could not be read")

    def online_now(self, room_id: int, including: str) -> list[str]:
        """Who is online in the room as this instance's members were told, plus `including`
        (the user joining: they are, even while their own row waits for the debounce)."""
        room = self._rooms.get(room_id)
        online = set() if room is None else room.online
        return sorted(online | {including})

    def heard(self, note: PresenceNote) -> None:
        """An event from any instance (this one included): members are told of it only if
        it changes what they were told."""
        room = self._rooms.get(note.room_id)
        if room is None:
            return  # nobody here is in that room
        online = note.event == "join"
        room.heard += 1  # even when it changes nothing: a repair reading meanwhile is stale
        if not room.loaded:
            room.early[note.user] = online
            if len(room.early) > _EARLY_MAX:
                room.early.clear()
                if room.loading is not None:
                    room.loading.cancel()  # the watcher starts it over
            return
        if (note.user in room.online) != online:
            self._tell(note.room_id, room, note.user, online)

    async def online(self, room_id: int) -> list[str]:
        """Who is online in the room, as the database says now."""
        async with reading(self._engine) as conn:
            rows = await conn.execute(_ONLINE, {"room_id": room_id, "ttl": self._ttl})
            return [r.username for r in rows]

    def repair_soon(self) -> None:
        """After the fan-out was deaf (it calls this on recovery): in the background, beat
        now (registering again if we were reaped meanwhile), run every pending write now,
        and compare every room's view with the database, telling members the difference."""
        if self._repair is not None and not self._repair.done():
            self._repair_again = True
            return
        self._repair = _spawn(self._repair_loop(), "presence-repair")

    async def repair(self) -> None:
        """What `repair_soon` runs, once; never raises."""
        try:
            await self._heartbeat_once()
        except Exception as error:
            log.warning("presence repair: heartbeat failed: %s", error)
            return
        self._kick.set()
        self._kick = asyncio.Event()
        for key in self._keys.values():
            if not key.settled:
                key.retry_at = 0.0
                self._schedule(key)
        try:
            await self._refresh_views()
        except Exception as error:
            log.warning("presence repair: online lists not read: %s", error)

    # -- keys and their writes -------------------------------------------------------------

    def _key(self, room_id: int, room: str, user: str) -> _Key:
        key = self._keys.get((room_id, user))
        if key is None:
            key = self._keys[(room_id, user)] = _Key(room_id, room, user)
            self._rooms.setdefault(room_id, _Room()).keys.add(user)
        return key

    def _due(self, key: _Key) -> float:
        """The earliest time (monotonic) the key's row may be written next."""
        due = max(key.changed_at + self._debounce, key.retry_at)
        if not key.wanted:
            due = max(due, key.left_at + self._debounce)
        return due

    def _schedule(self, key: _Key) -> None:
        if key.task is None:
            key.task = _spawn(self._settle(key), "presence-writer")

    def _failed(self, key: _Key) -> None:
        """A write of the key failed: its row may say either; try again later."""
        key.written = None
        key.failures += 1
        key.retry_at = time.monotonic() + min(_RETRY_FIRST * 2 ** (key.failures - 1), _RETRY_MAX)
        self._schedule(key)

    async def _settle(self, key: _Key) -> None:
        """Write the key's row until it says what the local connections want."""
        try:
            while not key.settled:
                wait = self._due(key) - time.monotonic()
                if wait > 0:
                    await self._sleep(wait)
                    continue
                async with key.lock:
                    if key.settled or self._due(key) > time.monotonic():
                        continue
                    try:
                        await self._write(key, key.wanted)
                    except Exception as error:
                        self._failed(key)
                        log.warning(
                            "presence in room %s not written (%s); trying again in %.1fs",
                            key.room,
                            error or type(error).__name__,
                            key.retry_at - time.monotonic(),
                        )
        finally:
            key.task = None
            self._forget_if_idle(key)

    async def _sleep(self, seconds: float) -> None:
        kick = self._kick
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await kick.wait()

    def _forget_if_idle(self, key: _Key) -> None:
        if key.count or key.written is not False or key.task is not None or key.lock.locked():
            return
        if self._keys.get((key.room_id, key.user)) is key:
            del self._keys[(key.room_id, key.user)]
            room = self._rooms.get(key.room_id)
            if room is not None:
                room.keys.discard(key.user)
                if not room.keys:
                    del self._rooms[key.room_id]
                    if room.loading is not None:
                        room.loading.cancel()

    async def _write(self, key: _Key, online: bool) -> None:
        """Make our row say `online`, with the room's event when it is a change for the
        room; deadlocks and serialization failures are run again at once."""
        epoch = self._epoch
        try:
            await retrying(lambda: self._write_once(key, online))
        except Exception as error:
            if not online or sqlstate(error) != _FOREIGN_KEY_VIOLATION:
                raise
            # Our instance row is gone: we were taken for dead during an outage and reaped.
            await self._registered_again("a join found its instance row gone")
            epoch = self._epoch
            await retrying(lambda: self._write_once(key, online))
        # Registered again meanwhile: the reaper may have removed the row after we wrote it.
        key.written = online if epoch == self._epoch else None
        key.changed_at = time.monotonic()
        key.failures, key.retry_at = 0, 0.0
        if key.written is None:
            self._schedule(key)

    async def _write_once(self, key: _Key, online: bool) -> None:
        note = PresenceNote(key.room_id, key.room, key.user, "join" if online else "leave")
        signed = self._fanout.signed(encode_note(note))
        channel = self._fanout.notify_channel
        params = {
            "room_id": key.room_id, "user": key.user, "me": self._me, "ttl": self._ttl,
            "online": online, "channel": channel, "payload": None if channel is None else signed,
        }  # fmt: skip
        async with reading(self._engine) as conn:  # autocommit: the call is the transaction
            announce = (await conn.execute(_SET, params)).one().announce
        if announce and channel is None:
            # Committed: the row is right whatever happens to the event, which a repair after
            # the fan-out's recovery makes up for. So this never fails the write.
            try:
                async with asyncio.timeout(_PUBLISH_TIMEOUT):
                    await self._fanout.publish([signed])
            except Exception as error:
                log.warning("presence event not published: %s", error)

    async def _registered_again(self, why: str) -> None:
        async with writing(self._engine) as conn:
            await conn.execute(_REGISTER, {"me": self._me})
        self._epoch += 1
        log.warning("presence: this instance had been reaped (%s); registered again", why)
        # The reaper removed every row of ours (and announced the leaves): write them back.
        for key in self._keys.values():
            if key.written:
                key.written = None
                key.changed_at, key.retry_at = -math.inf, 0.0
            if not key.settled:
                self._schedule(key)

    # -- views -----------------------------------------------------------------------------

    async def _load(self, room_id: int, room: _Room) -> None:
        # What was heard before the read began, the read sees (or something newer).
        room.early = {}
        try:
            async with reading(self._engine) as conn:
                rows = await conn.execute(_ONLINE, {"room_id": room_id, "ttl": self._ttl})
                online = {r.username for r in rows}
        finally:
            room.loading = None
        # Events heard while reading come after it or are no older than what it saw.
        for user, present in room.early.items():
            (online.add if present else online.discard)(user)
        room.online, room.early, room.loaded = online, {}, True

    def _tell(self, room_id: int, room: _Room, user: str, online: bool) -> None:
        (room.online.add if online else room.online.discard)(user)
        room.heard += 1
        self._on_change(room_id, user, "join" if online else "leave")

    async def _refresh_views(self) -> None:
        todo = [room_id for room_id, room in self._rooms.items() if room.loaded]
        for round_ in range(_REPAIR_ROUNDS):
            if not todo:
                return
            if round_:
                await asyncio.sleep(0.2)
            marks = {
                room_id: (room, room.heard)
                for room_id in todo
                if (room := self._rooms.get(room_id)) is not None
            }
            async with reading(self._engine) as conn:
                rows = await conn.execute(_ONLINE_IN, {"ids": todo, "ttl": self._ttl})
                truth: dict[int, set[str]] = {room_id: set() for room_id in todo}
                for r in rows:
                    truth[r.room_id].add(r.username)
            todo = []
            for room_id, (room, heard) in marks.items():
                if self._rooms.get(room_id) is not room:
                    continue  # nobody here is in it any more
                if room.heard != heard:
                    todo.append(room_id)  # an event came in meanwhile: look again
                    continue
                for user in sorted(room.online - truth[room_id]):
                    self._tell(room_id, room, user, False)
                for user in sorted(truth[room_id] - room.online):
                    self._tell(room_id, room, user, True)

    async def _repair_loop(self) -> None:
        while True:
            self._repair_again = False
            await self.repair()
            if not self._repair_again:
                return

    # -- heartbeat and reaper --------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                await self._heartbeat_once()
                if not self._beating:
                    self._beating, self._beating_since = True, time.monotonic()
                if time.monotonic() - self._beating_since >= self._ttl:
                    await self.reap()
            except Exception as error:
                self._beating = False
                log.warning("presence heartbeat failed: %s", error)

    async def _heartbeat_once(self) -> None:
        async with writing(self._engine) as conn:
            alive = (await conn.execute(_HEARTBEAT, {"me": self._me})).rowcount
        if not alive:
            await self._registered_again("its heartbeat found no row")

    async def reap(self) -> None:
        """Remove the rows of instances whose heartbeat stopped, with their leave events."""
        later: list[str] = []
        async with writing(self._engine) as conn:
            if not (await conn.execute(_TRY_REAP, {"k": _REAPER_LOCK})).scalar_one():
                return  # another instance is reaping
            stale = [r.id for r in await conn.execute(_STALE, {"ttl": self._ttl})]
            if not stale:
                return
            gone = (await conn.execute(_REAP_ROWS, {"ids": stale})).all()
            await conn.execute(_REAP_INSTANCES, {"ids": stale})
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


def _spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    # A fresh context: this work serves the whole instance, not the connection (whose
    # conn_id is in the current context) that happened to start it.
    return asyncio.create_task(coro, name=name, context=contextvars.Context())
