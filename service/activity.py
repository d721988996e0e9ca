"""The `activity` frames of the users' own streams (PROTOCOL.md): a room of the user's has
new messages, told at most once a second per room and user, to every connection of the user
whether or not it joined the room, so a client can update the badges of rooms it does not
have open.

Each instance watches the rooms of the users connected to it: their rooms are read when a
user's first connection here arrives, and again when a `rooms` frame says their set changed.
Every instance hears every room's new events (fanout.py), so it marks the watched rooms that
had any; once a second it reads the marked rooms' heads, with the watchers that are members
at that moment (a user removed meanwhile hears nothing more), in one query, and tells each
of them about every room whose last message moved. The cost: a set lookup per event heard,
at most one query a second, and no row per member anywhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import reading
from .protocol import activity as activity_frame

log = logging.getLogger(__name__)

_ROOMS_OF = text(
    "SELECT r.id, r.last_message_seq FROM members m JOIN rooms r ON r.id = m.room_id "
    "WHERE m.username = :username"
)
_HEADS = text(
    "SELECT r.id, r.name, r.last_seq, r.last_message_seq, r.last_message_at, m.username "
    "FROM rooms r JOIN members m ON m.room_id = r.id "
    "WHERE r.id = ANY(:ids) AND m.username = ANY(:users)"
)


class Activity:
    """One instance's watch over its users' rooms. `deliver(user, frame)` hands a frame to
    every local connection of `user`."""

    def __init__(
        self, engine: AsyncEngine, deliver: Callable[[str, str], None], interval: float = 1.0
    ) -> None:
        self._engine = engine
        self._deliver = deliver
        self._interval = interval
        self._rooms_of: dict[str, set[int]] = {}  # watched users' rooms
        self._watchers: dict[int, set[str]] = {}  # the same, by room
        self._told: dict[int, int] = {}  # a watched room's last message seq, as told
        self._marked: set[int] = set()  # watched rooms with events since the last flush
        self._tasks: set[asyncio.Task[None]] = set()

    def watch_soon(self, user: str) -> None:
        """(Re)read `user`'s rooms in the background: their first connection here arrived,
        or their set of rooms changed."""
        task = asyncio.create_task(self._watch(user), name="activity-watch")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, user: str) -> None:
        try:
            async with reading(self._engine) as conn:
                rows = (await conn.execute(_ROOMS_OF, {"username": user})).all()
        except Exception as error:  # the next rooms frame or reconnect reads them again
            log.warning("the rooms of %s could not be read: %s", user, error)
            return
        if user not in self._rooms_of:  # disconnected meanwhile
            return
        self._drop(user)
        rooms = {int(r.id) for r in rows}
        self._rooms_of[user] = rooms
        for r in rows:
            self._watchers.setdefault(int(r.id), set()).add(user)
            self._told[int(r.id)] = max(self._told.get(int(r.id), 0), int(r.last_message_seq))

    def connected(self, user: str) -> None:
        """The user's first connection on this instance."""
        self._rooms_of.setdefault(user, set())
        self.watch_soon(user)

    def disconnected(self, user: str) -> None:
        """The user's last connection on this instance closed."""
        self._drop(user)
        self._rooms_of.pop(user, None)

    def _drop(self, user: str) -> None:
        for room_id in self._rooms_of.get(user, ()):
            watchers = self._watchers.get(room_id)
            if watchers is not None:
                watchers.discard(user)
                if not watchers:
                    del self._watchers[room_id]
                    self._told.pop(room_id, None)
        self._rooms_of[user] = set()

    def heard(self, room_id: int) -> None:
        """An event of the room was committed (heard from any instance)."""
        if room_id in self._watchers:
            self._marked.add(room_id)

    async def flush(self) -> None:
        """Tell the watchers of the marked rooms whose last message moved."""
        marked, self._marked = self._marked, set()
        users = {u for room_id in marked for u in self._watchers.get(room_id, ())}
        if not users:
            return
        async with reading(self._engine) as conn:
            rows = (await conn.execute(_HEADS, {"ids": list(marked), "users": sorted(users)})).all()
        moved: dict[int, str] = {}
        for r in rows:
            room_id = int(r.id)
            if room_id not in moved:
                if r.last_message_seq <= self._told.get(room_id, 0):
                    continue
                moved[room_id] = activity_frame(
                    r.name, r.last_seq, r.last_message_seq, r.last_message_at
                )
            if r.username in self._watchers.get(room_id, ()):
                self._deliver(r.username, moved[room_id])
        for r in rows:
            if int(r.id) in moved and int(r.id) in self._watchers:
                self._told[int(r.id)] = max(self._told.get(int(r.id), 0), r.last_message_seq)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as error:  # activity is a hint: the next second tries again
                log.warning("activity could not be read: %s", error)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
