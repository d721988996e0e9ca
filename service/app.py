"""The app factory: `create_app(settings)` and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import api, db, logs, metrics, ws
from .accounts import Accounts
from .chat import Chat
from .fanout import Fanout
from .presence import Presence
from .rooms import RoomDirectory
from .settings import Settings
from .store import PostgresStore

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
class Resources:
    """What the lifespan builds and disposes; the routes reach `chat` and `accounts`."""

    engine: AsyncEngine
    fanout: Fanout
    chat: Chat
    accounts: Accounts

    async def close(self) -> None:
        await self.chat.stop()
        await self.engine.dispose()


def build(settings: Settings) -> Resources:
    """Wire one instance: nothing here connects; `Chat.start` does."""
    engine = db.create_engine(settings)
    instance_id = uuid.uuid4().hex
    fanout = Fanout(
        url=settings.fanout_url,
        channel=settings.broadcast_channel,
        engine=engine,
        instance_id=instance_id,
        check_interval=settings.listener_check_interval_seconds,
        timeout=settings.listener_timeout_seconds,
    )
    presence = Presence(
        engine,
        instance_id,
        fanout=fanout,
        heartbeat_seconds=settings.presence_heartbeat_seconds,
        ttl_seconds=settings.presence_ttl_seconds,
        debounce_seconds=settings.presence_debounce_seconds,
    )
    chat = Chat(
        settings,
        store=PostgresStore(engine),
        rooms=RoomDirectory(engine),
        fanout=fanout,
        presence=presence,
    )
    return Resources(engine, fanout, chat, Accounts(engine, settings))


class SecurityHeaders:
    """Pure ASGI (BaseHTTPMiddleware costs far more per request): security headers on every HTTP
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
        resources = build(settings)
        chat = resources.chat
        app.state.chat, app.state.accounts = chat, resources.accounts
        app.state.engine = resources.engine
        await chat.start()
        # What startup made (modules, routes and models, SQLAlchemy's caches) lives as long as
        # the process: keep it out of every later collection. A full collection over it is a
        # stall for every socket and request at once (the fan-out p99 showed it in bench/).
        gc.collect()
        gc.freeze()
        stop_watching = metrics.watch(
            lambda: chat.writer_depth, lambda: (c.queued for c in chat.connections)
        )
        try:
            yield
        finally:
            stop_watching()
            await resources.close()

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
        # An outage (db.Unavailable, or a pooled connection that died with the last one) is
        # 503 and the client retries; anything else is a bug and stays a 500.
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
        database = await db.ping(request.app.state.engine)
        listener = chat.listener_healthy
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
