"""Per-room delivery on one instance: every local member gets each message once, in seq order.

A room's hub holds `head`, the highest seq it has delivered, and `target`, the highest seq
it knows to be committed. Messages arrive out of band (the local writer, notifications from
any instance, the periodic resync); the hub delivers `head + 1` whenever it has it, and reads
any missing range back from the database. Because seqs are gapless and follow commit order,
a committed seq N means every seq below N is committed and readable.

A join runs under the hub's lock: it reads the replay from the database and records the
member's cursor (the highest seq it was sent), so the hub skips what the replay already
covered and nothing between replay and live delivery is lost or doubled.

A resume (a join with `since`) may be long, so it is fed from the database a page at a time
as the member's socket drains, never queued whole: until the feed has caught up with the
hub's head, the member is not among those live delivery reaches; the last step, under the
hub's lock, hands it over.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from . import metrics
from .protocol import LogEntry, MemberEvent, StoredMessage
from .store import Store

log = logging.getLogger(__name__)

# Messages held for a hub beyond its head; past this they are re-read from the database.
_PENDING_MAX = 5000
_FETCH_BATCH = 500
# Messages a resume feeds per step: the most it adds to a member's queue at once. bench/,
# a resume of 1,000 on one socket: 250 took 10.5 ms of the instance's CPU and 10.6 ms to
# `joined`, against 15.0 and 16.5 ms in pages of 100 (and 500 no better than 250).
FEED_PAGE = 250


class Member(Protocol):
    """A local connection as the hub sees it. Neither method blocks; a push that passes the
    connection's bounds closes it (service/outbox.py)."""

    username: str

    def push_live(self, frame: str) -> None:
        """Queue live traffic."""

    def push_answer(self, frame: str) -> None:
        """Queue an answer to the member's own request (a join's replay)."""

    def room_for(self, frames: int) -> AbstractAsyncContextManager[bool]:
        """Wait until `frames` more frames may be queued (one feed step at a time per
        member); the value is False when the member is closing and nothing should be."""

    def removed(self, room: str) -> None:
        """The member's user stopped being a member of `room` (a `member` event: left or
        removed). The hub has dropped it already and delivers nothing more of the room; the
        connection says `left` with reason `removed` and forgets the room."""


class Removed(Exception):
    """A resume met the end of its user's membership before `joined`: the join fails."""


@dataclass(frozen=True, slots=True)
class Joined:
    last_seq: int
    truncated: bool


class RoomHub:
    """Create with `start()` called once the hub is registered; `close()` ends it."""

    def __init__(self, store: Store, room_id: int, room: str) -> None:
        self.store = store
        self.room_id = room_id
        self.room = room
        self.head = -1  # unknown until the first join reads it
        self.target = 0
        self.members: dict[Member, int] = {}
        self.feeding: dict[Member, asyncio.Task[None]] = {}  # resumes not caught up yet
        self._announced: set[Member] = set()  # of those, the ones that have had `joined`
        self.joining = 0  # joins under way: the hub must outlive them
        self._pending: dict[int, LogEntry] = {}  # offered beyond the head
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # A fresh context: the hub serves every socket of the room, not the one (whose
        # conn_id is in the current context) that happened to create it.
        self._task = asyncio.create_task(
            self._run(), name=f"hub-{self.room}", context=contextvars.Context()
        )

    def offer(self, message: LogEntry) -> None:
        """A committed entry of the log (from the local writer or a notification)."""
        if message.seq <= self.head:
            return
        if len(self._pending) < _PENDING_MAX:
            self._pending[message.seq] = message
        self.committed(message.seq)

    def committed(self, seq: int) -> None:
        """Seq `seq` is committed: it, and every seq below it, will be delivered."""
        if seq > self.target:
            self.target = seq
        if seq > self.head:
            self._wake.set()

    def send_all(self, frame: str, *, skip_user: str | None = None) -> None:
        """An ephemeral frame (presence, typing) to every member, unordered with messages;
        a member still catching up gets it once it has had `joined`."""
        for member in (*self.members, *self._announced):
            if member.username != skip_user:
                member.push_live(frame)

    async def join(
        self,
        member: Member,
        since: int | None,
        replay_limit: int,
        resume_limit: int,
        on_joined: Callable[[Joined], None],
        admit: Callable[[int], Awaitable[None]],
    ) -> asyncio.Future[None]:
        """Replay to `member`, call `on_joined` (still before any live message can reach the
        member), then make it a member. A resume is fed in the background: the future
        returned is done once `on_joined` has been called (cancelled if the feed ends
        first).

        `admit` checks that the member's user may read the room, and raises if not. It is
        given the room's head once that is read, and runs before anything is sent: a
        membership that ends after the head ends with a `member` event above it, which live
        delivery carries (the member is cut off there); one that ended at or below it,
        `admit` must see (chat.py reads the membership again when what it read is older)."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with self._lock:
            if since is not None:
                last_seq = (await self.store.last_seqs([self.room_id])).get(self.room_id, 0)
                if since <= last_seq:
                    await admit(last_seq)
                    self._resume(member, since, last_seq, resume_limit, on_joined, ready)
                    return ready
            replay = await self.store.replay(self.room_id, self.room, replay_limit, member.username)
            await admit(replay.last_seq)
            if since is not None and since <= replay.last_seq:
                # The head passed `since` between the two reads: a resume after all.
                self._resume(member, since, replay.last_seq, resume_limit, on_joined, ready)
                return ready
            self._start(replay.last_seq)
            newest_sent = replay.messages[-1].seq if replay.messages else 0
            cursor = max(replay.last_seq, newest_sent)
            for message in replay.messages:
                member.push_answer(message.frame())
            on_joined(Joined(cursor, replay.truncated))
            ready.set_result(None)
            self.members[member] = cursor
            if self.target > self.head:
                self._wake.set()
            return ready

    def _resume(
        self,
        member: Member,
        since: int,
        last_seq: int,
        resume_limit: int,
        on_joined: Callable[[Joined], None],
        ready: asyncio.Future[None],
    ) -> None:
        self._start(last_seq)
        start = max(since, last_seq - resume_limit)
        feed = self._feed(member, start, last_seq, start > since, on_joined, ready)
        task = asyncio.create_task(feed, name=f"feed-{self.room}", context=contextvars.Context())
        # A feed that ends before `joined` (left, closed) leaves nobody waiting for it.
        task.add_done_callback(lambda _: ready.cancel())
        self.feeding[member] = task

    def _start(self, last_seq: int) -> None:
        if self.head < 0:
            # The first member: live delivery starts after what the database holds now.
            self.head = last_seq
            self.target = max(self.target, self.head)
            self._drop_delivered()

    async def _feed(
        self,
        member: Member,
        cursor: int,
        end: int,
        truncated: bool,
        on_joined: Callable[[Joined], None],
        ready: asyncio.Future[None],
    ) -> None:
        """Everything after `cursor` up to `end` (the replay, then `joined`, and `ready`
        done), then what was committed since, a page at a time as the member drains, until
        it is level with the head; then it joins live delivery. Outages are waited out."""
        announced = False
        delay = 0.1
        while True:
            try:
                async with member.room_for(FEED_PAGE) as has_room:
                    if not has_room:
                        return
                    if announced and cursor >= self.head - FEED_PAGE:
                        async with self._lock:  # the hand-over: nothing is delivered meanwhile
                            cursor, _ = await self._feed_page(member, cursor, self.head, True)
                            if cursor < 0:  # its membership ended in what it was fed
                                self._stop_feeding(member)
                                return
                            if cursor >= self.head:
                                del self.feeding[member]
                                self._announced.discard(member)
                                self.members[member] = cursor
                                return
                        continue
                    upto = end if not announced else self.head
                    cursor, gap = await self._feed_page(member, cursor, upto, announced)
                    if cursor < 0:  # its membership ended in what it was fed
                        if not announced:
                            # Ended, and begun again (`admit` passed), within the replay.
                            ready.set_exception(Removed(self.room))
                        self._stop_feeding(member)
                        return
                    # Seqs missing from the start of the replay were pruned: the client
                    # must reload over REST.
                    truncated = truncated or (not announced and gap)
                if not announced and cursor >= end:
                    on_joined(Joined(end, truncated))
                    ready.set_result(None)
                    self._announced.add(member)
                    announced = True
                delay = 0.1
            except Exception as error:
                log.warning("room %s: resume failed (%s), retrying", self.room, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _feed_page(
        self, member: Member, cursor: int, upto: int, tell: bool
    ) -> tuple[int, bool]:
        """Push the entries after `cursor` up to `upto` (one page at most) to `member`;
        returns the new cursor and whether seqs right after `cursor` were missing (pruned:
        they are passed over). A cursor of -1: the member's user stopped being a member at
        an event of the page (told so, with `tell`); nothing after it was pushed."""
        if cursor >= upto:
            return cursor, False
        rows = await self.store.fetch_frames(
            self.room_id, self.room, cursor, upto, FEED_PAGE, member.username
        )
        for item in rows:
            if item.event is not None and _ends(item.event, member.username):
                if tell:
                    member.removed(self.room)
                return -1, False
            member.push_answer(item.frame)
        gap = not rows or rows[0].seq != cursor + 1
        return (upto if len(rows) < FEED_PAGE else rows[-1].seq), gap

    def _stop_feeding(self, member: Member) -> None:
        self.feeding.pop(member, None)
        self._announced.discard(member)

    def leave(self, member: Member) -> None:
        self.members.pop(member, None)
        self._announced.discard(member)
        feed = self.feeding.pop(member, None)
        if feed is not None:
            feed.cancel()

    async def close(self) -> None:
        tasks = [*self.feeding.values(), *([self._task] if self._task is not None else [])]
        self.feeding.clear()
        self._announced.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                async with self._lock:
                    await self._catch_up()
                delay = 0.1
            except Exception as error:
                # Usually the database is away; try again, backing off, and never give up.
                log.warning("room %s: catch-up failed (%s), retrying", self.room, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._wake.set()

    async def _catch_up(self) -> None:
        if self.head < 0:
            return
        while self.head < self.target:
            next_seq = self.head + 1
            pending = self._pending.pop(next_seq, None)
            if pending is not None:
                self._deliver(pending, live=True)
                continue
            rows = await self.store.fetch_range(
                self.room_id, self.room, self.head, self.target, _FETCH_BATCH
            )
            if not rows or rows[0].seq != next_seq:
                last = (await self.store.last_seqs([self.room_id])).get(self.room_id, 0)
                if self.target > last:
                    # A claim the database does not back (a notification can make one):
                    # never skip real seqs for it.
                    log.warning(
                        "room %s: seq %d was announced, but the room ends at %d",
                        self.room, self.target, last,
                    )  # fmt: skip
                    self.target = last
                    for seq in [s for s in self._pending if s > last]:
                        del self._pending[seq]
                    continue
                # Only a pruned room lacks a committed seq; skip what no longer exists.
                log.warning("room %s: seq %d not found, skipping", self.room, next_seq)
                self.head = rows[0].seq - 1 if rows else self.target
                continue
            metrics.GAP_FILLS.inc(len(rows))
            for message in rows:
                self._pending.pop(message.seq, None)
                self._deliver(message, live=False)
        self._drop_delivered()

    def _deliver(self, message: LogEntry, *, live: bool) -> None:
        """To every member whose cursor is below it; `live` when it was offered, not read
        back (only then does its lag say how fast fan-out is). An event that ends a user's
        membership reaches that user's members as `removed` instead, and is their last."""
        frame = message.frame()  # encoded once, shared by every member
        seq = message.seq
        ending = (
            message.user if isinstance(message, MemberEvent) and message.ends_membership else None
        )
        for member, cursor in list(self.members.items()):
            if member.username == ending:
                del self.members[member]
                member.removed(self.room)
            elif seq > cursor:
                member.push_live(frame)
        if ending is not None:
            # Resumes still being fed meet the event in what they read, and stop there.
            for member in [m for m in self._announced if m.username == ending]:
                self._announced.discard(member)
        self.head = seq
        metrics.MESSAGES_OUT.inc(len(self.members))
        if live and isinstance(message, StoredMessage):
            lag = datetime.now(message.created_at.tzinfo) - message.created_at
            metrics.FANOUT_LAG_SECONDS.observe(max(lag.total_seconds(), 0.0))

    def _drop_delivered(self) -> None:
        for seq in [s for s in self._pending if s <= self.head]:
            del self._pending[seq]


def _ends(entry: LogEntry, user: str) -> bool:
    """Whether `entry` ends `user`'s membership of its room."""
    return isinstance(entry, MemberEvent) and entry.ends_membership and entry.user == user


class Hubs:
    """The hubs of every room that has local members."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._hubs: dict[int, RoomHub] = {}

    def get(self, room_id: int) -> RoomHub | None:
        return self._hubs.get(room_id)

    def room_ids(self) -> list[int]:
        return list(self._hubs)

    async def join(
        self,
        room_id: int,
        room: str,
        member: Member,
        since: int | None,
        replay_limit: int,
        resume_limit: int,
        on_joined: Callable[[Joined], None],
        admit: Callable[[int], Awaitable[None]],
    ) -> asyncio.Future[None]:
        """Add `member` to the room's hub (created, and registered before any read, if the
        room has no local members yet); the future is RoomHub.join's."""
        hub = self._hubs.get(room_id)
        if hub is None:
            hub = self._hubs[room_id] = RoomHub(self._store, room_id, room)
            hub.start()
            metrics.LOCAL_ROOMS.set(len(self._hubs))
        hub.joining += 1
        try:
            return await hub.join(member, since, replay_limit, resume_limit, on_joined, admit)
        finally:
            hub.joining -= 1
            await self._drop_if_empty(hub)

    async def leave(self, room_id: int, member: Member) -> None:
        hub = self._hubs.get(room_id)
        if hub is not None:
            hub.leave(member)
            await self._drop_if_empty(hub)

    async def _drop_if_empty(self, hub: RoomHub) -> None:
        empty = not hub.members and not hub.feeding and not hub.joining
        if empty and self._hubs.get(hub.room_id) is hub:
            del self._hubs[hub.room_id]
            metrics.LOCAL_ROOMS.set(len(self._hubs))
            await hub.close()

    def committed(self, room_id: int, seq: int) -> None:
        """Seq `seq` of room `room_id` is committed; a local hub behind it reads it back."""
        hub = self._hubs.get(room_id)
        if hub is not None:
            hub.committed(seq)

    def resync(self, last_seqs: dict[int, int]) -> None:
        """The database's last seqs: any hub behind them reads back what it missed."""
        for room_id, last_seq in last_seqs.items():
            self.committed(room_id, last_seq)

    async def close(self) -> None:
        hubs, self._hubs = list(self._hubs.values()), {}
        await asyncio.gather(*(hub.close() for hub in hubs), return_exceptions=True)
