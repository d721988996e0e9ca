"""The WebSocket endpoint: a thin adapter from frames to the domain (PROTOCOL.md, WebSocket).

Each connection has one bounded outgoing queue, drained by a writer task that exists only
while frames are queued, so a slow reader delays nobody else: when more than
CHAT_SEND_QUEUE_LIMIT frames of live traffic wait for it, it is closed with 1013 and resumes
with `since`. Answers to its own requests (acks, errors, a join's replay) are bounded by the
request rate and the resume limit instead, so a resume of 1,000 is not cut off by the first
live message behind it. The endpoint's own
task reads: inbound frames are handled in order; a `send` is queued to the batch writer and
its `ack` is pushed when the commit resolves, so a client may pipeline sends without waiting
for each commit. An idle joined socket holds that one task and ~29 KiB in all (bench/).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from . import metrics
from .auth import websocket_user
from .db import Unavailable, is_outage
from .hubs import Joined
from .messages import Posted
from .ratelimit import TokenBucket
from .validation import InvalidInput, check_body, check_client_id, check_room

if TYPE_CHECKING:
    from .app import Chat

log = logging.getLogger(__name__)

CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
_MAX_SINCE = 2**62
_TYPING_INTERVAL = 1.0
_RESTART_FLUSH_SECONDS = 2.0
_CLOSE_HANDSHAKE_SECONDS = 2.0
_SLOW_CLOSE_SECONDS = 10.0
_ids = itertools.count(1)


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


def _frame(kind: str, **fields: Any) -> str:
    return orjson.dumps({"type": kind, **fields}).decode()


class ProtocolError(Exception):
    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code, self.detail, self.extra = code, detail, extra


class Connection:
    """One socket: its user, its rooms, its outgoing queue."""

    def __init__(self, websocket: WebSocket, username: str, chat: Chat) -> None:
        self.id = next(_ids)
        self.websocket = websocket
        self.username = username
        self.chat = chat
        self.rooms: dict[str, int] = {}
        # A frame, or a 1-tuple holding an answer to the client's own request; `_answers`
        # counts those, which the overflow limit leaves out.
        self._queue: deque[str | tuple[str]] = deque()
        self._answers = 0
        self._writer: asyncio.Task[None] | None = None  # exists only while frames are queued
        self._reader: asyncio.Task[Any] | None = None  # the endpoint's task, while it reads
        self._interrupted = False  # close() cancelled the reader
        self._limit = chat.settings.send_queue_limit
        self.close_code: int | None = None
        self.close_reason = ""
        self.gone = False  # the client went away while frames were being written
        self._finished = False  # the endpoint is closing up: nothing more is written
        self._bucket = TokenBucket(
            chat.settings.rate_limit_per_second, chat.settings.rate_limit_burst
        )
        self._typing_at: dict[str, float] = {}

    # -- outgoing ---------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Frames waiting to be written to this socket."""
        return len(self._queue)

    def push(self, frame: str, *, force: bool = False) -> None:
        if self.close_code is not None or self._finished:
            return
        if force:
            self._queue.append((frame,))
            self._answers += 1
        elif len(self._queue) - self._answers >= self._limit:
            self.close(CLOSE_TRY_AGAIN, "send queue overflow: reconnect with since")
            return
        else:
            self._queue.append(frame)
        if self._writer is None:
            # An idle socket holds no task: one is started when there is something to write
            # and ends when its queue is empty (each task costs ~1.5 KiB while it lives).
            self._writer = asyncio.create_task(self._write())

    def close(self, code: int, reason: str = "") -> None:
        """Ask for the socket to be closed. The endpoint does it, even while the writer is
        blocked on a client that stopped reading."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self._stop_reading()

    def _stop_reading(self) -> None:
        """Wake the endpoint from its read (or from handling a frame) by cancelling its task.
        Never from inside that task: there, the read loop sees close_code before it reads
        again."""
        task = self._reader
        if task is not None and task is not asyncio.current_task() and not self._interrupted:
            self._interrupted = True
            task.cancel()

    async def read_until_closed(self) -> None:
        """The endpoint's own task reads and handles frames until the client leaves or
        close() is called (one task per socket instead of a reader and a watcher)."""
        task = asyncio.current_task()
        assert task is not None
        self._reader = task
        try:
            while self.close_code is None and not self.gone:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    self.error("bad_request", "binary frames are not accepted; send JSON text")
                    continue
                await self.handle(text)
        except asyncio.CancelledError:
            # Ours (close() or the writer found the client gone): the end of reading. Any
            # other cancellation, uvicorn's, goes on.
            if not self._interrupted or task.uncancel() > 0:
                raise
        finally:
            self._reader = None

    @property
    def writing(self) -> bool:
        """Whether queued frames still go out: a restart (1012) is closed after the acks and
        errors already queued; any other close drops them (the client resumes with since)."""
        return self.close_code is None or self.close_code == CLOSE_RESTART

    async def _write(self) -> None:
        try:
            while self._queue and self.writing:
                frame = self._queue.popleft()
                if isinstance(frame, tuple):
                    self._answers -= 1
                    frame = frame[0]
                await self.websocket.send_text(frame)
        except WebSocketDisconnect:
            # The client closed, or vanished, while we wrote: the end of this socket, not
            # a failure.
            self.gone = True
            self._stop_reading()
        except Exception:
            log.exception("socket %d: writing failed", self.id)
            self.close(CLOSE_INTERNAL, "internal error: reconnect with since")
        finally:
            self._writer = None

    async def stop_writing(self) -> None:
        self._finished = True
        writer = self._writer
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def flush(self, timeout: float) -> None:
        """Wait (bounded) until everything queued so far has been written."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._queue and self.writing and not self.gone:
                    await asyncio.sleep(0.01)

    def error(self, code: str, detail: str, ref: Any = None, **extra: Any) -> None:
        metrics.ERRORS.labels(code).inc()
        fields = {"code": code, "detail": detail, **extra}
        if ref is not None:
            fields["ref"] = ref
        self.push(_frame("error", **fields), force=True)

    # -- incoming ---------------------------------------------------------------------------

    async def handle(self, text: str) -> None:
        ref = None
        try:
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise ProtocolError("bad_request", "frame is not valid JSON") from None
            if not isinstance(data, dict):
                raise ProtocolError("bad_request", "frame must be a JSON object")
            ref = data.get("ref")
            if ref is not None and (
                isinstance(ref, bool) or not isinstance(ref, (str, int)) or len(str(ref)) > 128
            ):
                ref = None
                raise ProtocolError("bad_request", "ref must be a string or an integer")
            kind = data.get("type")
            if kind == "send":
                await self._send(data, ref)
            elif kind == "join":
                await self._join(data, ref)
            elif kind == "leave":
                await self._leave(data, ref)
            elif kind == "typing":
                await self._typing(data)
            elif kind == "ping":
                self.push(_frame("pong", **({"ref": ref} if ref is not None else {})), force=True)
            else:
                raise ProtocolError("bad_request", "unknown or missing type")
        except ProtocolError as error:
            self.error(error.code, error.detail, ref, **error.extra)
        except InvalidInput as error:
            self.error(error.code, error.detail, ref)
        except Unavailable:
            self.error("unavailable", "the database cannot be reached; try again", ref)
        except Exception as error:
            if not is_outage(error):
                raise
            self.error("unavailable", "the database cannot be reached; try again", ref)

    def _joined_room(self, data: dict[str, Any]) -> tuple[str, int]:
        room = check_room(data.get("room"))
        room_id = self.rooms.get(room)
        if room_id is None:
            raise ProtocolError("not_joined", f"room {room} is not joined", room=room)
        return room, room_id

    async def _join(self, data: dict[str, Any], ref: Any) -> None:
        settings = self.chat.settings
        room = check_room(data.get("room"))
        since = data.get("since")
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int) or not 0 <= since < _MAX_SINCE
        ):
            raise ProtocolError("bad_request", "since must be an integer >= 0", room=room)
        if room in self.rooms:
            raise ProtocolError("conflict", f"room {room} is already joined", room=room)
        if len(self.rooms) >= settings.max_rooms_per_connection:
            raise ProtocolError(
                "too_many_rooms",
                f"at most {settings.max_rooms_per_connection} rooms per connection",
                room=room,
            )
        room_id = await self.chat.rooms.ensure(room)
        await self.chat.presence.join(room_id, room, self.username)
        try:
            online = await self.chat.presence.online(room_id)
            if self.username not in online:
                online = sorted([*online, self.username])

            def announce(joined: Joined) -> None:
                fields = {
                    "room": room,
                    "last_seq": joined.last_seq,
                    "truncated": joined.truncated,
                    "online": online,
                }
                if ref is not None:
                    fields["ref"] = ref
                self.push(_frame("joined", **fields), force=True)

            await self.chat.hubs.join(
                room_id,
                room,
                self,
                since,
                settings.replay_limit,
                settings.resume_limit,
                on_joined=announce,
            )
        except BaseException:
            await self.chat.presence.leave(room_id, room, self.username)
            raise
        self.rooms[room] = room_id
        metrics.JOINED_ROOMS.inc()

    async def _leave(self, data: dict[str, Any], ref: Any) -> None:
        room, room_id = self._joined_room(data)
        await self._part(room, room_id)
        self.push(
            _frame("left", room=room, **({"ref": ref} if ref is not None else {})), force=True
        )

    async def _part(self, room: str, room_id: int) -> None:
        del self.rooms[room]
        metrics.JOINED_ROOMS.dec()
        await self.chat.hubs.leave(room_id, self)
        with contextlib.suppress(Exception):
            await self.chat.presence.leave(room_id, room, self.username)

    async def _send(self, data: dict[str, Any], ref: Any) -> None:
        client_id = check_client_id(data.get("client_id"))
        extra = {"client_id": client_id} if client_id is not None else {}
        room, room_id = self._joined_room(data)
        try:
            body = check_body(data.get("body"), self.chat.settings.max_message_chars)
        except InvalidInput as error:
            raise ProtocolError(error.code, error.detail, room=room, **extra) from None
        wait_ms = self._bucket.take()
        if wait_ms:
            raise ProtocolError(
                "rate_limited", "sending too fast", room=room, retry_after_ms=wait_ms, **extra
            )
        if self.chat.draining:
            raise ProtocolError("unavailable", "the instance is shutting down", room=room, **extra)
        metrics.MESSAGES_IN_WS.inc()
        future = await self.chat.writer.submit(room_id, room, self.username, body, client_id)
        future.add_done_callback(lambda f: self._acked(f, room, client_id, ref))

    def _acked(
        self, future: asyncio.Future[Posted], room: str, client_id: str | None, ref: Any
    ) -> None:
        extra: dict[str, Any] = {"ref": ref} if ref is not None else {}
        if future.cancelled() or future.exception() is not None:
            error = None if future.cancelled() else future.exception()
            if error is None or isinstance(error, Unavailable) or is_outage(error):
                self.error(
                    "unavailable",
                    "the database cannot be reached; nothing was stored",
                    ref,
                    room=room,
                    client_id=client_id,
                )
            else:
                self.error(
                    "internal",
                    "the message could not be stored",
                    ref,
                    room=room,
                    client_id=client_id,
                )
            return
        posted = future.result()
        (metrics.ACKS_DUPLICATE if posted.duplicate else metrics.ACKS_FRESH).inc()
        self.push(
            _frame(
                "ack",
                room=room,
                seq=posted.message.seq,
                created_at=posted.message.created_at.isoformat(timespec="microseconds"),
                client_id=client_id,
                duplicate=posted.duplicate,
                **extra,
            ),
            force=True,
        )

    async def _typing(self, data: dict[str, Any]) -> None:
        room, room_id = self._joined_room(data)
        now = time.monotonic()
        if now - self._typing_at.get(room, 0.0) < _TYPING_INTERVAL:
            return  # typing is a hint; extra ones are dropped, not refused
        self._typing_at[room] = now
        await self.chat.publish_typing(room_id, room, self.username)

    async def part_all(self) -> None:
        for room, room_id in list(self.rooms.items()):
            await self._part(room, room_id)


class Endpoint:
    """Pure ASGI middleware that takes `/ws` straight to `websocket_endpoint`.

    Through FastAPI's router a socket held its routing and dependency machinery (six
    AsyncExitStacks and a dozen coroutine frames, ~6 KiB) for its whole life."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            await websocket_endpoint(WebSocket(scope, receive, send))
        else:
            await self.app(scope, receive, send)


async def websocket_endpoint(websocket: WebSocket) -> None:
    chat: Chat = websocket.app.state.chat
    identity = websocket_user(websocket, chat.settings)
    if identity is None:
        await websocket.close(CLOSE_POLICY)  # before accept: the handshake gets HTTP 403
        return
    username, expires_at = identity
    refusal = chat.admit(username)
    await websocket.accept()
    if refusal is not None:
        metrics.CLOSES.labels(str(CLOSE_TRY_AGAIN)).inc()
        await websocket.close(CLOSE_RESTART if chat.draining else CLOSE_TRY_AGAIN, refusal)
        return
    conn = Connection(websocket, username, chat)
    chat.connections.add(conn)
    metrics.CONNECTIONS.inc()
    # A socket lives no longer than the token that opened it; the client logs in again.
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
        await conn.stop_writing()
        metrics.CONNECTIONS.dec()
        if conn.close_code is not None:
            metrics.CLOSES.labels(str(conn.close_code)).inc()
        code = conn.close_code or 1000
        if code == CLOSE_TRY_AGAIN:
            # The close frame waits behind what the client has not read: leave first.
            await conn.part_all()
        if (
            websocket.application_state == WebSocketState.CONNECTED
            and websocket.client_state == WebSocketState.CONNECTED
        ):  # not when the client has closed already: it would wait for nothing
            slow = code == CLOSE_TRY_AGAIN
            timeout = _SLOW_CLOSE_SECONDS if slow else _CLOSE_HANDSHAKE_SECONDS
            await _close(websocket, code, conn.close_reason, timeout)
        await conn.part_all()
        # Last: a draining instance waits for this, so uvicorn's own shutdown finds nothing
        # left to cut.
        chat.connections.discard(conn)


async def _close(websocket: WebSocket, code: int, reason: str, timeout: float) -> None:
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
            # connection is gone; Starlette's receive() stops at the first, hence the raw
            # ASGI receive. Frames that arrived meanwhile are dropped.
            disconnects = 0
            while disconnects < 2:
                message = await websocket._receive()
                if message["type"] == "websocket.disconnect":
                    disconnects += 1
