"""What happens to a message, a join and a leave on one instance: the domain core.

The socket handler (ws.py) and the REST routes (api.py) are thin adapters over `Chat`; it
knows nothing of FastAPI or Starlette. A message's way, in four files:

1. an adapter validates it and calls `Chat.send` (or `Chat.post` for REST), which hands it
   to the instance's batch writer (writer.py);
2. the writer commits everything waiting with one call to the store (store.py, and the
   SQL in sql/post_messages.sql): seqs assigned, rows inserted, notifications sent in the
   same transaction, so a notification exists if and only if its messages do;
3. `Chat._committed` gives the new messages to this instance's room hubs at once; every
   other instance hears the notification (fanout.py) and `Chat._on_note` does the same;
4. each room's hub (hubs.py) delivers seq `head + 1` to its local members, reading back
   from the database any seq that no notification brought, so every member gets every
   message once, in order.

A join runs under the room hub's lock (replay read, `joined` queued, then live delivery), so
nothing committed meanwhile is lost or doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Literal, Protocol

import orjson

from . import metrics
from .activity import Activity
from .db import Unavailable
from .fanout import Fanout
from .hubs import Hubs, Joined, Removed
from .hubs import Member as HubMember
from .members import Change, StreamEvent, readable
from .presence import Presence
from .protocol import (
    CLOSE_RESTART,
    MAX_SEQ,
    LogEntry,
    MessagesNote,
    Note,
    PresenceNote,
    Ref,
    RoomState,
    StoredMessage,
    TypingNote,
    UserNote,
    read_moved,
    rooms_changed,
)
from .protocol import joined as joined_frame
from .protocol import presence as presence_frame
from .protocol import typing as typing_frame
from .readstate import Marked, ReadState
from .refusals import Forbidden, LimitReached, NotFound, Refused
from .rooms import DM_PREFIX, RoomDirectory, Standing
from .settings import Settings
from .store import (
    Around,
    Changed,
    ChangeDraft,
    Draft,
    Outcome,
    Posted,
    PostgresStore,
    Refusal,
    WirePage,
)
from .writer import MessageWriter

log = logging.getLogger(__name__)


class Member(HubMember, Protocol):
    """A local connection as the core sees it."""

    @property
    def closing(self) -> bool:
        """Closed or closing: it no longer counts against its user."""

    @property
    def queued(self) -> int:
        """Frames waiting to be written."""

    def close(self, code: int, reason: str) -> None:
        """Ask for the connection to be closed."""

    async def flush(self, timeout: float) -> None:
        """Wait, at most `timeout`, until what is queued has been written."""

    def joined_kind(self, room: str) -> str | None:
        """The kind of `room` if this connection has joined it, else None."""


def refusal(code: Refusal, room: str) -> Refused:
    """The exception an adapter answers for a draft the store refused."""
    if code == "forbidden":
        return Forbidden(f"not allowed in {room}")
    if code == "not_found":
        return NotFound(f"no such message in {room}")
    return LimitReached("too many different emoji on that message")


class Chat:
    """One instance's domain. Build it with its collaborators; `start()` and `stop()` run
    its background work."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: PostgresStore,
        rooms: RoomDirectory,
        fanout: Fanout,
        presence: Presence,
        reads: ReadState,
    ) -> None:
        self.settings = settings
        self._store = store
        self.reads = reads
        self._rooms = rooms
        self._fanout = fanout
        self._presence = presence
        self._hubs = Hubs(store)
        self._writer = MessageWriter(
            store,
            channel=fanout.notify_channel,
            on_commit=self._committed,
            batch_max=settings.write_batch_max,
        )
        self.connections: set[Member] = set()
        self._by_user: dict[str, set[Member]] = {}  # the same connections, by user
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        # User-stream frames being published (tell_soon): not waited for by whoever caused them.
        self._telling: set[asyncio.Task[None]] = set()
        self._activity = Activity(reads.engine, self._tell_here)

    # -- connections ---------------------------------------------------------------------

    def admit(self, username: str) -> str | None:
        """None to accept a new socket for `username`, else why it is refused."""
        if self.draining:
            return "the instance is shutting down; reconnect"
        if len(self.connections) >= self.settings.max_connections:
            return "too many connections on this instance; try another or later"
        # A socket being closed (its close handshake may wait for a slow client) no longer
        # counts against its user, who may well be reconnecting.
        mine = sum(1 for c in self.connections if c.username == username and not c.closing)
        if mine >= self.settings.max_connections_per_user:
            return "too many connections for this user"
        return None

    def attach(self, member: Member) -> None:
        """A new connection: it hears its user's own stream from now on."""
        self.connections.add(member)
        mine = self._by_user.setdefault(member.username, set())
        if not mine:
            self._activity.connected(member.username)
        mine.add(member)

    def detach(self, member: Member) -> None:
        self.connections.discard(member)
        mine = self._by_user.get(member.username)
        if mine is not None:
            mine.discard(member)
            if not mine:
                del self._by_user[member.username]
                self._activity.disconnected(member.username)

    @property
    def writer_depth(self) -> int:
        return self._writer.depth

    # -- posting -------------------------------------------------------------------------

    async def send(
        self,
        room_id: int,
        room: str,
        author: str,
        body: str,
        client_id: str | None,
        reply_to: int | None = None,
    ) -> asyncio.Future[Outcome]:
        """Queue a validated message of a known room; the future resolves after commit to
        its Posted (or fails with Unavailable: nothing was stored). Waits only while the
        writer is full."""
        if self.draining:
            raise Unavailable("the instance is shutting down")
        return await self._writer.submit(Draft(room_id, room, author, body, client_id, reply_to))

    async def change(self, draft: ChangeDraft) -> asyncio.Future[Outcome]:
        """Queue a validated edit, delete or reaction; the future resolves after commit to
        its Changed (the rules are checked in the transaction that would number it)."""
        if self.draining:
            raise Unavailable("the instance is shutting down")
        return await self._writer.submit(draft)

    async def post(
        self, room: str, author: str, body: str, client_id: str | None, reply_to: int | None = None
    ) -> Posted:
        """Store a validated message, creating a public room on first use (REST);
        RateLimited when that would be one room too many for `author`; Forbidden when the
        author may not post there, NotFound when reply_to names no message of the room
        (both checked in the transaction that stores it)."""
        if self.draining:
            raise Unavailable("the instance is shutting down")
        room_id = await self._find_or_create(room, author)
        posted = await (await self.send(room_id, room, author, body, client_id, reply_to))
        assert isinstance(posted, Posted)
        if posted.refusal is not None:
            raise refusal(posted.refusal, room)
        if posted.duplicate:  # the original, as it is now (edited, reacted to, deleted)
            now = await self._store.message(room_id, room, posted.message.seq, author)
            if now is not None:
                return replace(posted, message=now)
        return posted

    async def apply(self, draft: ChangeDraft) -> StoredMessage:
        """Store a validated change (REST) and return its target in the state it is in now,
        addressed to the actor; raises the refusal (Forbidden, NotFound, LimitReached). A
        change that changes nothing answers the same."""
        outcome = await (await self.change(draft))
        assert isinstance(outcome, Changed)
        if outcome.refusal is not None:
            raise refusal(outcome.refusal, draft.room)
        message = await self._store.message(draft.room_id, draft.room, draft.target, draft.actor)
        if message is None:  # pruned meanwhile
            raise NotFound(f"message {draft.target} of {draft.room} does not exist")
        return message

    async def _find_or_create(self, room: str, user: str) -> int:
        """The room's id, creating a public room of that name on first use; a `dm-` name is
        never created that way (Forbidden)."""
        if room.startswith(DM_PREFIX):
            room_id = await self._rooms.find(room)
            if room_id is None:
                raise Forbidden(f"{room} is not a dm of yours")
            return room_id
        return await self._rooms.ensure(room, user)

    async def _committed(self, posted: list[Outcome], later: list[str]) -> None:
        """Local members get new events straight from the writer, without the round trip;
        other instances from the notifications (published now if they could not ride the
        transaction)."""
        joined: list[tuple[str, str]] = []
        for p in posted:
            if p.refused:
                continue
            entry: LogEntry | None
            if isinstance(p, Posted):
                entry = p.message
                if p.joined:
                    joined.append((p.message.author, p.message.room))
            else:
                entry = p.event
            hub = self._hubs.get(p.room_id)
            if hub is not None and entry is not None:
                hub.offer(entry)
        for user, room in joined:  # a post made them a member of a public room
            self.tell_soon((user,), rooms_changed(room, "added"))
        if later:
            try:
                # Bounded: a Redis that stops answering must not stall the writer.
                async with asyncio.timeout(self.settings.listener_timeout_seconds):
                    await self._fanout.publish(later)
            except Exception as error:  # other instances catch up at their next resync
                log.warning("publish after commit failed: %s", error)

    async def membership_changed(self, change: Change) -> None:
        """Publish a committed membership change: the log's new seq to the room's hubs on
        every instance, and `rooms` frames to the users' own streams."""
        if change.event is not None:
            hub = self._hubs.get(change.room_id)
            if hub is not None:  # here at once; elsewhere from the notification
                hub.offer(change.event)
            await self.log_appended(change.room_id, change.event.seq)
        by_event: dict[StreamEvent, list[str]] = {}
        for user, event in change.streams:
            by_event.setdefault(event, []).append(user)
        for event, users in by_event.items():
            await self.tell(tuple(users), rooms_changed(change.room, event))

    # -- joining and leaving -------------------------------------------------------------

    async def join(self, member: Member, room: str, since: int | None, ref: Ref) -> tuple[int, str]:
        """Subscribe `member` to `room` (a public room is created on first use, and joining
        it makes the user a member): the replay and `joined` are queued for it, then live
        events follow. Returns the room's id and kind; RateLimited when creating the room
        would be one too many for the user; Forbidden for a private room or dm the user is
        not a member of (checked again, under the hub's lock, once the head is read)."""
        user = member.username
        room_id = await self._find_or_create(room, user)
        kind = await self._rooms.kind(room_id)
        public = kind == "public"
        checked: Standing | None = None
        if not public:
            checked = await self._rooms.standing(room_id, user)
            if not checked.readable:
                # Before presence: a non-member must not appear online, even for a moment.
                raise Forbidden(f"you are not a member of {room}")
        # The user's presence (a commit) is written while the hub reads the replay: `admit`
        # waits for it, so nothing is sent to the member before the user is online.
        arrival = asyncio.create_task(self._arrive(room_id, room, user), name="presence-join")
        try:
            standing: Standing | None = None

            async def admit(head: int) -> None:
                nonlocal standing
                if checked is not None and checked.seen_seq >= head:
                    standing = checked  # what was checked already covers the head
                else:
                    # Read after the head: a membership that ended at or below it is seen.
                    # (Read alongside the head instead, a public join was slower: bench/.)
                    standing = await self._rooms.standing(room_id, user, enrol=public)
                if not standing.readable:
                    raise Forbidden(f"you are not a member of {room}")
                await arrival

            def announce(joined: Joined) -> None:
                assert standing is not None
                # Read in the same step as the member starts getting presence frames: no
                # change falls between the list and the events that follow it.
                online = self._presence.online_now(room_id, including=user)
                state = RoomState(
                    standing.kind,
                    standing.role,
                    standing.last_read_seq,
                    standing.last_message_seq,
                )
                member.push_answer(
                    joined_frame(room, joined.last_seq, joined.truncated, online, state, ref)
                )

            settings = self.settings
            ready = await self._hubs.join(
                room_id,
                room,
                member,
                since,
                settings.replay_limit,
                settings.resume_limit,
                on_joined=announce,
                admit=admit,
            )
            try:
                # A resume is fed as the socket drains; the connection's next frame waits
                # for its `joined`, so answers keep the order of the commands.
                await ready
            except Removed:
                await self._hubs.leave(room_id, member)
                raise Forbidden(f"you are not a member of {room}") from None
            except BaseException:
                await self._hubs.leave(room_id, member)
                raise
        except BaseException:
            # The join did not happen: neither does its presence. Bounded and best effort:
            # the reaper removes what an outage leaves behind.
            arrival.cancel()
            with contextlib.suppress(BaseException):  # the join's own error is raised below
                await arrival
                await self._presence.leave(room_id, room, user)  # it had arrived
            raise
        metrics.JOINED_ROOMS.inc()
        if standing is not None and standing.added:
            self.tell_soon((user,), rooms_changed(room, "added"))
        return room_id, kind

    async def _arrive(self, room_id: int, room: str, user: str) -> None:
        """The presence half of a join: the user is online in the room (written, unless
        another of their connections here has it so) and this instance knows who else is.
        Raises Unavailable, having undone its part."""
        await self._presence.join(room_id, room, user)
        try:
            await self._presence.watch(room_id)
        except BaseException:
            await self._presence.leave(room_id, room, user)
            raise

    async def leave(self, member: Member, room_id: int, room: str) -> None:
        """Unsubscribe `member`; its presence ends when it was the user's last connection
        in the room on any instance."""
        metrics.JOINED_ROOMS.dec()
        await self._hubs.leave(room_id, member)
        with contextlib.suppress(Exception):
            await self._presence.leave(room_id, room, member.username)

    # -- the users' own streams ----------------------------------------------------------

    async def tell(self, users: tuple[str, ...], frame: str) -> None:
        """`frame` to every connection of each of `users`, on every instance. Live only and
        best effort (a client re-reads GET /api/rooms after reconnecting). This instance
        hears it through the fan-out like every other."""
        try:
            async with asyncio.timeout(self.settings.listener_timeout_seconds):
                await self._fanout.publish_note(UserNote(users, frame))
        except Exception as error:
            log.warning("a user-stream frame was not published: %s", error)

    def tell_soon(self, users: tuple[str, ...], frame: str) -> None:
        """`tell`, in the background: a join or a commit that causes a `rooms` frame does not
        wait for it to be published, and a socket closed meanwhile cannot cancel it halfway
        (a join cancelled after it succeeded would be a join its connection never heard
        of)."""
        task = asyncio.create_task(self.tell(users, frame), name="tell")
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    async def mark_read(self, room: str, user: str, seq: int) -> Marked:
        """Move `user`'s read cursor in `room` towards `seq` (PROTOCOL.md, `read`); when it
        moved, every connection of theirs hears a `read` frame. NotFound, Forbidden."""
        marked = await self.reads.mark(room, user, seq)
        if marked.moved:
            self.tell_soon((user,), read_moved(room, marked.last_read_seq))
        return marked

    async def log_appended(self, room_id: int, seq: int) -> None:
        """An event other than a message was committed at `seq` of the room's log (a
        membership change): every instance's hub of the room reads it back and delivers it
        in seq order. A lost notification is made good by the periodic resync."""
        self._hubs.committed(room_id, seq)
        try:
            async with asyncio.timeout(self.settings.listener_timeout_seconds):
                await self._fanout.publish_note(MessagesNote((), ((room_id, seq),)))
        except Exception as error:
            log.warning("a log notification was not published: %s", error)

    def _tell_here(self, user: str, frame: str) -> None:
        """`frame` to this instance's connections of `user`."""
        for member in list(self._by_user.get(user, ())):
            member.push_live(frame)

    def _heard_user_note(self, note: UserNote) -> None:
        local = [user for user in note.users if user in self._by_user]
        if not local:  # every instance hears every note: most address nobody here
            return
        data = orjson.loads(note.frame)  # once, for every connection it goes to
        rooms_frame = data.get("type") == "rooms"
        # Leaving a public room writes no event to cut at: the stream does it.
        ended = str(data.get("room", "")) if rooms_frame and data.get("event") == "removed" else ""
        for user in local:
            if rooms_frame:
                self._activity.watch_soon(user)  # the rooms watched for activity
            for member in list(self._by_user[user]):
                if ended and member.joined_kind(ended) == "public":
                    member.removed(ended)
                member.push_live(note.frame)

    async def typing(self, room_id: int, room: str, user: str) -> None:
        """A hint to the room's other members; lost when the fan-out is."""
        with contextlib.suppress(Exception):
            await self._fanout.publish_note(TypingNote(room_id, room, user))

    # -- reading -------------------------------------------------------------------------

    async def room_id(self, room: str) -> int | None:
        """The room's id, or None when nobody has used it yet."""
        return await self._rooms.find(room)

    async def readable_history(
        self, room: str, user: str, *, before: int | None, after: int | None, limit: int
    ) -> WirePage:
        """A page of `room`'s messages in their current state, addressed to `user`, when they
        may read it (members.readable: NotFound, Forbidden): the check and the page are read
        together."""
        access, page = await self._store.readable_page(
            room, user, before=before, after=after, limit=limit
        )
        readable(room, access)
        return page

    async def around(self, room_id: int, room: str, seq: int, limit: int, user: str) -> Around:
        return await self._store.around(room_id, room, seq, limit, user)

    async def events(
        self, room_id: int, room: str, after: int, limit: int, user: str
    ) -> tuple[list[LogEntry], bool]:
        """The room's log after `after`, at most `limit` entries, addressed to `user`, and
        whether more follow."""
        entries = await self._store.fetch_range(room_id, room, after, MAX_SEQ, limit + 1, user)
        return entries[:limit], len(entries) > limit

    async def message(self, room_id: int, room: str, seq: int, user: str) -> StoredMessage | None:
        return await self._store.message(room_id, room, seq, user)

    async def who_reacted(self, room_id: int, seq: int, per_emoji: int) -> dict[str, list[str]]:
        return await self._store.who_reacted(room_id, seq, per_emoji)

    async def online(self, room_id: int) -> list[str]:
        return await self._presence.online(room_id)

    # -- fan-out in ----------------------------------------------------------------------

    def _on_note(self, note: Note) -> None:
        """A notification from any instance (this one included)."""
        if isinstance(note, MessagesNote):
            for m in note.messages:
                self._activity.heard(m.room_id)
                hub = self._hubs.get(m.room_id)
                if hub is not None:  # else nobody here is in that room
                    hub.offer(m.stored(hub.room))
            for room_id, seq in note.refs:
                self._activity.heard(room_id)
                self._hubs.committed(room_id, seq)
        elif isinstance(note, PresenceNote):
            self._presence.heard(note)  # _presence_changed, if it changes what members know
        elif isinstance(note, TypingNote):
            hub = self._hubs.get(note.room_id)
            if hub is not None:
                hub.send_all(typing_frame(hub.room, note.user), skip_user=note.user)
        elif isinstance(note, UserNote):
            self._heard_user_note(note)

    def _presence_changed(self, room_id: int, user: str, event: Literal["join", "leave"]) -> None:
        """What this instance's members of the room were told of `user` changed."""
        hub = self._hubs.get(room_id)
        if hub is not None:
            hub.send_all(presence_frame(hub.room, user, event), skip_user=user)

    async def _recovered(self) -> None:
        """The fan-out hears again: read back what lost notifications carried."""
        await self.resync()
        self._presence.repair_soon()

    async def resync(self) -> None:
        """Compare every local room with the database; hubs read back what they missed."""
        room_ids = self._hubs.room_ids()
        if not room_ids:
            return
        try:
            self._hubs.resync(await self._store.last_seqs(room_ids))
        except Exception as error:
            log.warning("resync failed: %s", error)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval_seconds)
            await self.resync()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self._presence.start(on_change=self._presence_changed)
        self._writer.start()
        self._fanout.start(on_note=self._on_note, on_recovered=self._recovered)
        self._tasks.append(asyncio.create_task(self._resync_loop(), name="resync"))
        self._tasks.append(asyncio.create_task(self._activity.run(), name="activity"))
        if not await self._fanout.wait_healthy(10):
            log.warning("fan-out listener not healthy yet; /readyz says 503 until it is")

    @property
    def listener_healthy(self) -> bool:
        return self._fanout.healthy

    async def drain(self) -> None:
        """Graceful shutdown: refuse new work, finish in-flight sends (each acked or failed),
        flush acks, then close every socket with 1012."""
        if self.draining:
            return
        self.draining = True
        grace = self.settings.shutdown_grace_seconds
        await self._writer.stop(grace)
        await asyncio.gather(*(c.flush(grace / 2) for c in list(self.connections)))
        for conn in list(self.connections):
            conn.close(CLOSE_RESTART, "instance shutting down: reconnect with since")
        # Each socket writes what it still holds, closes and hears the client's reply;
        # uvicorn's own shutdown would cut the ones still open.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace / 2):
                while self.connections:
                    await asyncio.sleep(0.02)

    async def stop(self) -> None:
        await self.drain()
        for task in [*self._tasks, *self._telling]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._telling, return_exceptions=True)
        await self._activity.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while self.connections:
                    await asyncio.sleep(0.05)
        await self._presence.stop()
        await self._fanout.stop()
        await self._hubs.close()
