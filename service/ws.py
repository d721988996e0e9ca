"""The WebSocket endpoint: a thin adapter from frames to the domain core (chat.py).

Each connection has one bounded outbox (outbox.py), drained by a writer task that exists
only while frames are queued, so a slow reader delays nobody else. The endpoint's own task
reads: inbound frames are parsed (protocol.py) and handled in order; a `send` is queued to
the batch writer and its `ack` is pushed when the commit resolves, so a client may pipeline
sends without waiting for each commit.

A connection's life: open (close_code None) until close() is asked for, by the client going
away, the server (1012 drain, 1013 overflow, 1008 expiry or its session ended) or a failure;
then the endpoint stops reading, writes what may still go out (only on 1012: acks before the
close frame), leaves its rooms and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from . import metrics, protocol
from .auth import websocket_claims
from .db import OutcomeUnknown, Unavailable
from .hubs import FEED_PAGE
from .outbox import Outbox
from .protocol import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_RESTART,
    CLOSE_TRY_AGAIN,
    Delete,
    Edit,
    Join,
    Leave,
    Ping,
    ProtocolError,
    React,
    Read,
    Ref,
    Typing,
)
from .protocol import (
    Send as SendCommand,
)
from .ratelimit import RateLimited, TokenBucket
from .refusals import Forbidden, NotFound
from .store import Changed, ChangeDraft, Outcome, Posted
from .wsserver import SEND_NOW

if TYPE_CHECKING:
    from .chat import Chat
    from .sessions import Sessions

log = logging.getLogger(__name__)

# Not a code we send: the client went away (its TCP connection ended) while we wrote.
CLOSE_GONE = 1006
_TYPING_INTERVAL = 1.0
_RESTART_FLUSH_SECONDS = 2.0
_CLOSE_HANDSHAKE_SECONDS = 2.0
_SLOW_CLOSE_SECONDS = 10.0
_ids = itertools.count(1)
_REFUSALS = {
    "forbidden": "not allowed",
    "not_found": "no such message in this room",
    "limit_reached": "too many different emoji on that message",
}


class _QuietClientErrors(logging.Filter):
    """uvicorn logs a client's text frame that is not UTF-8 as an error with a traceback,
    though the fault is the client's and the socket is closed with 1007: one warning line is
    enough, and a hostile client cannot fill the log with tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Invalid UTF-8 sequence"):
            record.msg = "invalid UTF-8 in a text frame from a client; closed with 1007"
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_client_errors() -> None:
    """Install the filter above on uvicorn's logger (once)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietClientErrors) for f in logger.filters):
        logger.addFilter(_QuietClientErrors())


class Connection:
    """One socket: its user, its rooms, its outbox, its reader and writer."""

    def __init__(
        self, websocket: WebSocket, username: str, chat: Chat, session_id: uuid.UUID | None = None
    ) -> None:
        settings = chat.settings
        self.id = next(_ids)
        self.websocket = websocket
        self.username = username
        # The session its token named: when it ends, sessions.py closes this socket (1008).
        self.session_id = session_id
        self.chat = chat
        self.rooms: dict[str, int] = {}
        self._kinds: dict[str, str] = {}  # the kind of each joined room
        self._leaving: set[asyncio.Task[None]] = set()  # rooms ended by a membership change
        self.outbox = Outbox(settings.send_queue_limit, settings.send_queue_max_bytes)
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader: asyncio.Task[Any] | None = None  # the endpoint's task, while it reads
        self._interrupted = False  # close() cancelled the reader
        self._writer: asyncio.Task[None] | None = None  # exists only while frames are queued
        # The server's synchronous write, when it offers one (service/wsserver.py).
        offered = websocket.scope.get("extensions", {}).get(SEND_NOW)
        self._send_now: Callable[[str], bool] | None = offered["send"] if offered else None
        # A resume's feed waiting for room in the outbox (hubs.py), made when first needed.
        self._room: asyncio.Event | None = None
        self._feeding = False
        # Two buckets of the same rate (PROTOCOL.md, rate_limited): one for commands that
        # write, one for those that (un)subscribe, whose burst lets a reconnecting client
        # rejoin every room it may hold at once.
        rate = settings.rate_limit_per_second
        self._bucket = TokenBucket(rate, settings.rate_limit_burst)
        self._rooms_bucket = TokenBucket(
            rate, max(settings.rate_limit_burst, settings.max_rooms_per_connection)
        )
        self._typing_at: dict[str, float] = {}

    # -- outgoing ---------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    @property
    def queued(self) -> int:
        """Frames waiting to be written to this socket."""
        return len(self.outbox)

    def push_live(self, frame: str) -> None:
        if self.close_code is None and not self._sent_now(frame):
            self._queued(self.outbox.push_live(frame))

    def push_answer(self, frame: str) -> None:
        if self.close_code is None and not self._sent_now(frame):
            self._queued(self.outbox.push_answer(frame))

    def _sent_now(self, frame: str) -> bool:
        """Whether `frame` was written at once: when nothing waits before it and the server
        can write it without waiting (wsserver.SEND_NOW; a fan-out then costs no task per
        socket). Otherwise it is queued and the writer task sends it through ASGI."""
        send_now = self._send_now
        return send_now is not None and self._writer is None and not self.outbox and send_now(frame)

    def _queued(self, accepted: bool) -> None:
        if not accepted:
            self.close(CLOSE_TRY_AGAIN, "send queue overflow: reconnect with since")
        elif self._writer is None and self.outbox:
            # An idle socket holds no task: one is started when there is something to write
            # and ends when its outbox is empty.
            self._writer = asyncio.create_task(self._write())

    def close(self, code: int, reason: str = "") -> None:
        """Ask for the socket to be closed. The endpoint does it, even while the writer is
        blocked on a client that stopped reading."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            if code != CLOSE_RESTART:  # a restart still writes the acks already queued
                self.outbox.close()
            if self._room is not None:
                self._room.set()
            self._stop_reading()

    def joined_kind(self, room: str) -> str | None:
        return self._kinds.get(room) if room in self.rooms else None

    def removed(self, room: str) -> None:
        """The user is no longer a member of `room` (hubs.Member): `left` with reason
        `removed`, and the room is forgotten; nothing more of it is delivered."""
        room_id = self.rooms.pop(room, None)
        self._kinds.pop(room, None)
        if room_id is None:
            return
        self.push_live(protocol.left(room, None, removed=True))
        task = asyncio.create_task(self.chat.leave(self, room_id, room))
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    @contextlib.asynccontextmanager
    async def room_for(self, frames: int) -> AsyncIterator[bool]:
        """One feed step at a time, once fewer than `frames` frames wait (hubs.Member)."""
        if self._room is None:
            self._room = asyncio.Event()
        while self.close_code is None and (self._feeding or len(self.outbox) >= frames):
            self._room.clear()
            await self._room.wait()
        if self.close_code is not None:
            yield False
            return
        self._feeding = True
        try:
            yield True
        finally:
            self._feeding = False
            self._room.set()

    def _stop_reading(self) -> None:
        """Wake the endpoint from its read (or from handling a frame) by cancelling its task.
        Never from inside that task: there, the read loop sees close_code before it reads
        again."""
        task = self._reader
        if task is not None and task is not asyncio.current_task() and not self._interrupted:
            self._interrupted = True
            task.cancel()

    async def _write(self) -> None:
        try:
            send_now = self._send_now
            while self.outbox:
                frame = self.outbox.pop()
                if send_now is None or not send_now(frame):
                    await self.websocket.send_text(frame)
                if self._room is not None and len(self.outbox) < FEED_PAGE:
                    self._room.set()
        except WebSocketDisconnect:
            # The client closed, or vanished, while we wrote: the end of this socket, not
            # a failure.
            self.close(CLOSE_GONE)
        except Exception:
            log.exception("socket %d: writing failed", self.id)
            self.close(CLOSE_INTERNAL, "internal error: reconnect with since")
        finally:
            self._writer = None

    async def stop_writing(self) -> None:
        self.outbox.close()
        writer = self._writer
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def flush(self, timeout: float) -> None:
        """Wait (bounded) until everything queued so far has been written."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.outbox and self._writer is not None:
                    await asyncio.sleep(0.01)

    def _error(self, error: ProtocolError) -> None:
        metrics.ERRORS.labels(error.code).inc()
        self.push_answer(error.frame())

    # -- incoming ---------------------------------------------------------------------------

    async def read_until_closed(self) -> None:
        """The endpoint's own task reads and handles frames until the client leaves or
        close() is called (one task per socket instead of a reader and a watcher)."""
        task = asyncio.current_task()
        assert task is not None
        self._reader = task
        try:
            while self.close_code is None:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    detail = "binary frames are not accepted; send JSON text"
                    self._error(ProtocolError("bad_request", detail))
                    continue
                await self.handle(text)
        except asyncio.CancelledError:
            # Ours (close()): the end of reading. Any other cancellation, uvicorn's, goes on.
            if not self._interrupted or task.uncancel() > 0:
                raise
        finally:
            self._reader = None

    async def handle(self, text: str) -> None:
        ref: Ref = None
        try:
            command = protocol.parse(text, self.chat.settings.max_message_chars)
            ref = command.ref
            if isinstance(command, SendCommand):
                await self._send(command)
            elif isinstance(command, (Edit, Delete, React)):
                await self._change(command)
            elif isinstance(command, Join):
                await self._join(command)
            elif isinstance(command, Leave):
                await self._leave(command)
            elif isinstance(command, Read):
                await self._read(command)
            elif isinstance(command, Typing):
                await self._typing(command)
            elif isinstance(command, Ping):
                self.push_answer(protocol.pong(ref))
        except ProtocolError as error:
            self._error(error)
        except Unavailable:
            self._error(
                ProtocolError("unavailable", "the database cannot be reached; try again", ref)
            )

    def _joined_room(self, room: str, ref: Ref, **extra: Any) -> int:
        room_id = self.rooms.get(room)
        if room_id is None:
            raise ProtocolError("not_joined", f"room {room} is not joined", ref, room=room, **extra)
        return room_id

    def _throttle_rooms(self, room: str, ref: Ref) -> None:
        wait_ms = self._rooms_bucket.take()
        if wait_ms:
            raise ProtocolError(
                "rate_limited", "joining, leaving and reading too fast", ref, room=room,
                retry_after_ms=wait_ms,
            )  # fmt: skip

    async def _join(self, command: Join) -> None:
        room, ref = command.room, command.ref
        if room in self.rooms:
            raise ProtocolError("conflict", f"room {room} is already joined", ref, room=room)
        limit = self.chat.settings.max_rooms_per_connection
        if len(self.rooms) >= limit:
            raise ProtocolError(
                "too_many_rooms", f"at most {limit} rooms per connection", ref, room=room
            )
        self._throttle_rooms(room, ref)
        try:
            self.rooms[room], self._kinds[room] = await self.chat.join(
                self, room, command.since, ref
            )
        except Forbidden as refused:
            raise ProtocolError("forbidden", str(refused), ref, room=room) from None
        except RateLimited as limited:  # a new room, one too many for this user
            raise ProtocolError(
                "rate_limited",
                limited.detail,
                ref,
                room=room,
                retry_after_ms=limited.retry_after_ms,
            ) from None

    async def _leave(self, command: Leave) -> None:
        room_id = self._joined_room(command.room, command.ref)
        self._throttle_rooms(command.room, command.ref)
        del self.rooms[command.room]
        self._kinds.pop(command.room, None)
        await self.chat.leave(self, room_id, command.room)
        self.push_answer(protocol.left(command.room, command.ref))

    async def _read(self, command: Read) -> None:
        """Membership is enough (the room need not be joined here); the ack names the cursor
        now in force, and `duplicate` when it did not move."""
        room, ref = command.room, command.ref
        self._throttle_rooms(room, ref)
        try:
            marked = await self.chat.mark_read(room, self.username, command.seq)
        except (Forbidden, NotFound):
            raise ProtocolError("forbidden", f"not a member of {room}", ref, room=room) from None
        cursor = marked.last_read_seq
        self.push_answer(protocol.change_ack(room, cursor, None, not marked.moved, ref))

    async def _send(self, command: SendCommand) -> None:
        room, ref, client_id = command.room, command.ref, command.client_id
        extra = {"client_id": client_id} if client_id is not None else {}
        room_id = self._joined_room(room, ref, **extra)
        wait_ms = self._bucket.take()
        if wait_ms:
            raise ProtocolError(
                "rate_limited", "sending too fast", ref, room=room, retry_after_ms=wait_ms, **extra
            )
        metrics.MESSAGES_IN_WS.inc()
        try:
            future = await self.chat.send(
                room_id, room, self.username, command.body, client_id, command.reply_to
            )
        except Unavailable as error:
            raise ProtocolError("unavailable", str(error), ref, room=room, **extra) from None
        future.add_done_callback(lambda f: self._acked(f, room, client_id, ref))

    async def _change(self, command: Edit | Delete | React) -> None:
        room, ref, target = command.room, command.ref, command.target
        room_id = self._joined_room(room, ref, target=target)
        wait_ms = self._bucket.take()  # the writing commands share one bucket
        if wait_ms:
            raise ProtocolError(
                "rate_limited", "changing too fast", ref, room=room, target=target,
                retry_after_ms=wait_ms,
            )  # fmt: skip
        if isinstance(command, Edit):
            draft = ChangeDraft(room_id, room, self.username, "edit", target, body=command.body)
        elif isinstance(command, Delete):
            draft = ChangeDraft(room_id, room, self.username, "delete", target)
        else:
            draft = ChangeDraft(
                room_id, room, self.username, "reaction", target,
                emoji=command.emoji, op=command.op,
            )  # fmt: skip
        try:
            future = await self.chat.change(draft)
        except Unavailable as error:
            raise ProtocolError("unavailable", str(error), ref, room=room, target=target) from None
        future.add_done_callback(lambda f: self._changed(f, room, target, ref))

    def _changed(self, future: asyncio.Future[Outcome], room: str, target: int, ref: Ref) -> None:
        error = None if future.cancelled() else future.exception()
        if isinstance(error, OutcomeUnknown):
            return  # as for a send: a repeat after reconnecting answers duplicate
        if future.cancelled() or error is not None:
            if error is None or isinstance(error, Unavailable):
                code, detail = "unavailable", "the database cannot be reached; nothing was stored"
            else:
                code, detail = "internal", "the change could not be stored"
            self._error(ProtocolError(code, detail, ref, room=room, target=target))
            return
        outcome = future.result()
        assert isinstance(outcome, Changed)
        if outcome.refusal is not None:
            self._error(
                ProtocolError(outcome.refusal, _REFUSALS[outcome.refusal], ref, room=room,
                              target=target)
            )  # fmt: skip
            return
        self.push_answer(
            protocol.change_ack(room, outcome.seq, outcome.created_at, outcome.duplicate, ref)
        )

    def _acked(
        self, future: asyncio.Future[Outcome], room: str, client_id: str | None, ref: Ref
    ) -> None:
        error = None if future.cancelled() else future.exception()
        if isinstance(error, OutcomeUnknown):
            return  # no answer is better than a wrong one: the client resends on reconnecting
        if future.cancelled() or error is not None:
            if error is None or isinstance(error, Unavailable):
                code, detail = "unavailable", "the database cannot be reached; nothing was stored"
            else:
                code, detail = "internal", "the message could not be stored"
            self._error(ProtocolError(code, detail, ref, room=room, client_id=client_id))
            return
        posted = future.result()
        assert isinstance(posted, Posted)
        if posted.refusal is not None:
            detail = _REFUSALS[posted.refusal]
            self._error(ProtocolError(posted.refusal, detail, ref, room=room, client_id=client_id))
            return
        (metrics.ACKS_DUPLICATE if posted.duplicate else metrics.ACKS_FRESH).inc()
        self.push_answer(protocol.ack(posted.message, posted.duplicate, ref))

    async def _typing(self, command: Typing) -> None:
        room_id = self._joined_room(command.room, command.ref)
        now = time.monotonic()
        if now - self._typing_at.get(command.room, 0.0) < _TYPING_INTERVAL:
            return  # typing is a hint; extra ones are dropped, not refused
        self._typing_at[command.room] = now
        await self.chat.typing(room_id, command.room, self.username)

    async def leave_all(self) -> None:
        for room, room_id in list(self.rooms.items()):
            del self.rooms[room]
            await self.chat.leave(self, room_id, room)
        self._kinds.clear()
        if self._leaving:
            await asyncio.gather(*self._leaving, return_exceptions=True)


class Endpoint:
    """Pure ASGI middleware that takes `/ws` straight to `websocket_endpoint`.

    Through FastAPI's router a socket held its routing and dependency machinery (six
    AsyncExitStacks and a dozen coroutine frames) for its whole life."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            await websocket_endpoint(WebSocket(scope, receive, send), receive)
        else:
            await self.app(scope, receive, send)


async def websocket_endpoint(websocket: WebSocket, receive: Receive) -> None:
    chat: Chat = websocket.app.state.chat
    sessions: Sessions = websocket.app.state.sessions
    try:
        claims = await websocket_claims(websocket, chat.settings, sessions)
    except Unavailable:
        # Not "log in again" (1008): the session could not be checked; the client retries.
        await websocket.accept()
        metrics.CLOSES.labels(str(CLOSE_TRY_AGAIN)).inc()
        await websocket.close(CLOSE_TRY_AGAIN, "the database cannot be reached; try again")
        return
    if claims is None:
        await websocket.close(CLOSE_POLICY)  # before accept: the handshake gets HTTP 403
        return
    username, expires_at, session_id = claims
    refusal = chat.admit(username)
    await websocket.accept()
    if refusal is not None:
        metrics.CLOSES.labels(str(CLOSE_TRY_AGAIN)).inc()
        await websocket.close(CLOSE_RESTART if chat.draining else CLOSE_TRY_AGAIN, refusal)
        return
    conn = Connection(websocket, username, chat, session_id)
    chat.attach(conn)
    metrics.CONNECTIONS.inc()
    # Closed (1008) when its session ends, on any instance (sessions.py); and it lives no
    # longer than the token that opened it: the client logs in again.
    if not sessions.attach(session_id, conn):
        conn.close(CLOSE_POLICY, "session ended: log in again")
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, expires_at - time.time()), conn.close, CLOSE_POLICY, "token expired"
    )
    try:
        try:
            await conn.read_until_closed()
        except Exception:
            log.exception("socket %d failed", conn.id)
            conn.close(CLOSE_INTERNAL, "internal error: reconnect with since")
        if conn.close_code == CLOSE_RESTART:
            # Reading has stopped; write what is queued: every send this instance took has
            # its ack or error on the wire before the close frame.
            await conn.flush(_RESTART_FLUSH_SECONDS)
    finally:
        expiry.cancel()
        sessions.detach(session_id, conn)
        await conn.stop_writing()
        metrics.CONNECTIONS.dec()
        code = conn.close_code
        if code is not None and code != CLOSE_GONE:
            metrics.CLOSES.labels(str(code)).inc()
        if code == CLOSE_TRY_AGAIN:
            # The close frame waits behind what the client has not read: leave first.
            await conn.leave_all()
        if (
            code != CLOSE_GONE
            and websocket.application_state == WebSocketState.CONNECTED
            and websocket.client_state == WebSocketState.CONNECTED
        ):  # not when the client has closed already: it would wait for nothing
            slow = code == CLOSE_TRY_AGAIN
            timeout = _SLOW_CLOSE_SECONDS if slow else _CLOSE_HANDSHAKE_SECONDS
            await _close(websocket, receive, code or 1000, conn.close_reason, timeout)
        await conn.leave_all()
        # Last: a draining instance waits for this, so uvicorn's own shutdown finds nothing
        # left to cut.
        chat.detach(conn)


async def _close(
    websocket: WebSocket, receive: Receive, code: int, reason: str, timeout: float
) -> None:
    """Send the close frame, then wait for the client's reply, both within `timeout`.

    A client that stopped reading gets the frame only after what is already buffered for
    it, so it can see its 1013 if it reads again soon enough. Waiting for the reply matters:
    closing a TCP connection with unread input resets it, and a client that gets a reset may
    lose the frames written just before the close, acks included; once the client has
    answered, it sends nothing more."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await websocket.close(code, reason)
            # uvicorn queues one disconnect event when the app closes and another when the
            # connection is gone; Starlette's WebSocket.receive() stops at the first, so the
            # raw ASGI receive is read here. Frames that arrived meanwhile are dropped.
            disconnects = 0
            while disconnects < 2:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    disconnects += 1
