"""The app factory: `create_app(settings)` and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import api, db, history, logs, metrics, notifications, ws
from .fanout import Fanout
from .history import StoredMessage
from .hubs import Hubs
from .messages import MessageWriter, Posted
from .presence import Presence
from .ratelimit import KeyedLimiter
from .rooms import RoomDirectory
from .settings import Settings

if TYPE_CHECKING:
    from .ws import Connection

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"

# A debugging figure, counted at each scrape: with no sockets open it should fall back to the
# handful of background tasks (writer, fan-out, resync, heartbeat); a count that stays up
# after the sockets are gone is a leak.
ASYNCIO_TASKS = Gauge("chat_asyncio_tasks", "asyncio tasks alive in the process, at scrape time")

# The page loads only its own scripts and styles, and talks only to its own origin ('self'
# covers ws: and wss: to the page's own host in CSP Level 3).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
# Swagger UI and ReDoc come from a CDN and start with an inline script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: "
    "https://fastapi.tiangolo.com; connect-src 'self'; frame-ancestors 'none'"
)


@dataclass
class Chat:
    """Everything one instance runs, built by the lifespan and reached through app.state."""

    settings: Settings
    engine: AsyncEngine
    instance_id: str
    rooms: RoomDirectory
    hubs: Hubs
    fanout: Fanout
    presence: Presence
    writer: MessageWriter
    login_limiter: KeyedLimiter
    login_ip_limiter: KeyedLimiter
    register_limiter: KeyedLimiter
    connections: set[Connection] = field(default_factory=set)
    draining: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def admit(self, username: str) -> str | None:
        """None to accept a new socket for `username`, else why it is refused."""
        if self.draining:
            return "the instance is shutting down; reconnect"
        if len(self.connections) >= self.settings.max_connections:
            return "too many connections on this instance; try another or later"
        # A socket being closed (its close handshake may wait for a slow client) no longer
        # counts against its user, who may well be reconnecting.
        mine = sum(1 for c in self.connections if c.username == username and c.close_code is None)
        if mine >= self.settings.max_connections_per_user:
            return "too many connections for this user"
        return None

    # -- fan-out in ----------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        """A notification from any instance (this one included)."""
        kind = event["k"]
        if kind == "m":
            for room_id, seq, author, body, client_id, created_at in event.get("m", ()):
                hub = self.hubs.get(room_id)
                if hub is None or seq <= hub.head:
                    continue  # nobody here, or already delivered (e.g. by our own writer)
                at = datetime.fromisoformat(created_at)
                message = StoredMessage(hub.room, seq, author, body, client_id, at)
                hub.offer(seq, message.frame(), at)
            for room_id, seq in event.get("r", ()):
                self.hubs.committed(room_id, seq)
        elif kind in ("p", "t"):
            hub = self.hubs.get(event["r"])
            if hub is None:
                return
            if kind == "p":
                frame = ws._frame("presence", room=hub.room, user=event["u"], event=event["e"])
            else:
                frame = ws._frame("typing", room=hub.room, user=event["u"])
            hub.send_all(frame, skip_user=event["u"])

    async def on_commit(self, posted: list[Posted], later: list[str]) -> None:
        """Local sockets get new messages straight from the writer, without the round trip."""
        for p in posted:
            hub = self.hubs.get(p.room_id)
            if hub is not None:
                hub.offer(p.message.seq, p.message.frame(), p.message.created_at)
        if later:
            try:
                # Bounded: a Redis that stops answering must not stall the writer.
                async with asyncio.timeout(self.settings.listener_timeout_seconds):
                    await self.fanout.publish(later)
            except Exception as error:  # other instances catch up at their next resync
                log.warning("publish after commit failed: %s", error)

    async def resync(self) -> None:
        """Compare every local room with the database; hubs read back what they missed."""
        room_ids = self.hubs.room_ids()
        if not room_ids:
            return
        try:
            self.hubs.resync(await history.last_seqs(self.engine, room_ids))
        except Exception as error:
            log.warning("resync failed: %s", error)

    async def publish_typing(self, room_id: int, room: str, user: str) -> None:
        with contextlib.suppress(Exception):
            await self.fanout.publish([notifications.encode("t", r=room_id, n=room, u=user)])

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval_seconds)
            await self.resync()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.presence.start()
        self.writer.start()
        self.fanout.start()
        self._tasks.append(asyncio.create_task(self._resync_loop(), name="resync"))
        if not await self.fanout.wait_healthy(10):
            log.warning("fan-out listener not healthy yet; /readyz says 503 until it is")

    async def drain(self) -> None:
        """Graceful shutdown: refuse new work, finish in-flight sends (each acked or failed),
        flush acks, then close every socket with 1012."""
        if self.draining:
            return
        self.draining = True
        grace = self.settings.shutdown_grace_seconds
        await self.writer.stop(grace)
        await asyncio.gather(*(c.flush(grace / 2) for c in list(self.connections)))
        for conn in list(self.connections):
            conn.close(ws.CLOSE_RESTART, "instance shutting down: reconnect with since")
        # Each socket writes what it still holds, closes and hears the client's reply;
        # uvicorn's own shutdown would cut the ones still open.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace / 2):
                while self.connections:
                    await asyncio.sleep(0.02)

    async def stop(self) -> None:
        await self.drain()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while self.connections:
                    await asyncio.sleep(0.05)
        await self.presence.stop()
        await self.fanout.stop()
        await self.hubs.close()
        await self.engine.dispose()


def build_chat(settings: Settings) -> Chat:
    engine = db.create_engine(settings)
    instance_id = uuid.uuid4().hex
    hubs = Hubs(engine)
    chat: Chat

    def on_event(event: dict[str, Any]) -> None:
        chat.on_event(event)

    async def on_recovered() -> None:
        await chat.resync()

    async def on_commit(posted: list[Posted], later: list[str]) -> None:
        await chat.on_commit(posted, later)

    fanout = Fanout(
        url=settings.fanout_url,
        channel=settings.broadcast_channel,
        engine=engine,
        instance_id=instance_id,
        on_event=on_event,
        on_recovered=on_recovered,
        check_interval=settings.listener_check_interval_seconds,
        timeout=settings.listener_timeout_seconds,
    )
    chat = Chat(
        settings=settings,
        engine=engine,
        instance_id=instance_id,
        rooms=RoomDirectory(engine),
        hubs=hubs,
        fanout=fanout,
        presence=Presence(
            engine,
            instance_id,
            fanout=fanout,
            heartbeat_seconds=settings.presence_heartbeat_seconds,
            ttl_seconds=settings.presence_ttl_seconds,
        ),
        writer=MessageWriter(
            engine, fanout=fanout, on_commit=on_commit, batch_max=settings.write_batch_max
        ),
        login_limiter=KeyedLimiter(settings.login_attempts_per_minute),
        login_ip_limiter=KeyedLimiter(settings.login_attempts_per_minute * 5),
        register_limiter=KeyedLimiter(settings.registrations_per_minute),
    )
    return chat


class SecurityHeaders:
    """Pure ASGI (BaseHTTPMiddleware cost ~1 ms a request): security headers on every HTTP
    response, the strict CSP everywhere but the API docs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        https = scope.get("scheme") == "https"
        extra = [
            (
                "Content-Security-Policy",
                DOCS_CSP if path.startswith(("/docs", "/redoc")) else PAGE_CSP,
            ),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("X-Frame-Options", "DENY"),
            ("Cross-Origin-Opener-Policy", "same-origin"),
            ("Cross-Origin-Resource-Policy", "same-origin"),
        ]
        if https:
            extra.append(("Strict-Transport-Security", "max-age=31536000"))
        if path.startswith("/api"):
            extra.append(("Cache-Control", "no-store"))
        elif path.startswith("/static"):
            # Revalidate (cheap, with ETag) so an upgrade never mixes old and new modules.
            extra.append(("Cache-Control", "no-cache"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra:
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app with its own settings; nothing is connected until the lifespan starts."""
    settings = settings or Settings()
    settings.require_secret()
    settings.require_database_url()
    ws.quiet_client_errors()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        chat = build_chat(settings)
        app.state.chat = chat
        await chat.start()
        # What startup made (modules, routes and models, SQLAlchemy's caches) lives as long as
        # the process: keep it out of every later collection. A full collection over it took
        # ~60 ms on the benchmark machine, a stall for every socket and request at once.
        gc.collect()
        gc.freeze()
        stop_watching = metrics.watch(
            lambda: chat.writer.depth, lambda: (c.queued for c in chat.connections)
        )
        try:
            yield
        finally:
            stop_watching()
            await chat.stop()

    app = FastAPI(
        title="Chat",
        version="1.0",
        description="Rooms, history and realtime messages stored in PostgreSQL. "
        "The WebSocket protocol at `/ws` is described in PROTOCOL.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(SecurityHeaders)
    app.add_middleware(ws.Endpoint)  # /ws, under the request context only
    app.add_middleware(logs.RequestContext)  # added last: it wraps everything else
    app.include_router(api.router)

    async def database_error(request: Request, error: Exception) -> Response:
        # An outage (or a pooled connection that died with the last one) is 503 and the
        # client retries; anything else is a bug and stays a 500.
        if db.is_outage(error):
            return JSONResponse({"detail": "the database cannot be reached"}, status_code=503)
        log.error("request failed", exc_info=error)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    for kind in (SQLAlchemyError, OSError, db.Unavailable):
        app.add_exception_handler(kind, database_error)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process runs."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(request: Request) -> JSONResponse:
        """200 when the database answers and the fan-out listener hears itself, else 503."""
        chat: Chat = request.app.state.chat
        database = await db.ping(chat.engine)
        listener = chat.fanout.healthy
        ready = database and listener and not chat.draining
        return JSONResponse(
            {
                "status": "ok" if ready else "unavailable",
                "database": database,
                "listener": listener,
                "draining": chat.draining,
            },
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics_endpoint() -> Response:
        ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app
