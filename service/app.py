"""The app factory: `create_app(settings)` and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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

from . import api, api_log, api_rooms, api_search, db, logs, metrics, ws
from .accounts import Accounts
from .chat import Chat
from .fanout import Fanout
from .fastpath import HistoryPages
from .guards import Guard
from .members import Members
from .presence import Presence
from .protocol import FanoutKey
from .ratelimit import KeyedLimiter, RateLimited
from .readiness import DatabaseCheck
from .readstate import ReadState
from .refusals import Refused
from .rooms import RoomDirectory
from .search import Search, SearchesBusy, SearchGate
from .security import Passwords, PasswordsBusy, default_password_threads
from .sessions import Sessions
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
    """What the lifespan builds and disposes; the routes reach `chat`, `accounts` and
    `rest_writes`."""

    engine: AsyncEngine
    # The writer's own connection (PostgresStore's `writes`).
    writes: AsyncEngine
    fanout: Fanout
    chat: Chat
    passwords: Passwords
    accounts: Accounts
    # One bucket per user for every REST write, at the sockets' rate (PROTOCOL.md, Errors).
    rest_writes: KeyedLimiter
    members: Members
    sessions: Sessions

    async def close(self) -> None:
        await self.sessions.stop()
        await self.chat.stop()
        self.passwords.close()
        await self.engine.dispose()
        await self.writes.dispose()


def build(settings: Settings) -> Resources:
    """Wire one instance: nothing here connects; `Chat.start` does."""
    engine = db.create_engine(settings)
    writes = db.create_engine(settings, pool_size=1)
    instance_id = uuid.uuid4().hex
    key = FanoutKey.from_secret(settings.require_secret())
    fanout = Fanout(
        url=settings.fanout_url,
        channel=settings.broadcast_channel,
        engine=engine,
        instance_id=instance_id,
        key=key,
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
    rooms = RoomDirectory(engine, created_per_hour=settings.rooms_created_per_hour)
    members = Members(
        engine,
        max_members_per_room=settings.max_members_per_room,
        dms_per_hour=settings.max_dms_per_hour,
        creations=rooms.creations,
    )
    chat = Chat(
        settings,
        store=PostgresStore(engine, key, settings.max_emoji_per_message, writes=writes),
        rooms=rooms,
        fanout=fanout,
        presence=presence,
        reads=ReadState(engine),
    )
    passwords = Passwords(
        settings.password_threads or default_password_threads(), settings.password_queue_limit
    )
    rest_writes = KeyedLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    poll = settings.session_poll_seconds
    sessions = Sessions(
        engine,
        token_ttl_seconds=settings.token_ttl_seconds,
        poll_seconds=poll,
        # Three polls' worth: one slow poll does not send every request to the database.
        fresh_seconds=3 * poll,
        max_per_user=settings.max_sessions_per_user,
    )
    return Resources(
        engine,
        writes,
        fanout,
        chat,
        passwords,
        Accounts(engine, settings, passwords),
        rest_writes,
        members,
        sessions,
    )


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


def _bearer_is(request: Request, token: bytes) -> bool:
    """Whether the request's `Authorization: Bearer` credential is `token`, compared in
    constant time (header values are bytes read as latin-1: encoding gives them back)."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    presented = credential.strip().encode("latin-1")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented, token)


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
        app.state.rest_writes = resources.rest_writes
        app.state.search_gate = SearchGate(
            settings.search_rate_per_second,
            settings.search_rate_burst,
            settings.max_concurrent_searches,
            settings.search_wait_seconds,
        )
        app.state.members = resources.members
        app.state.sessions = resources.sessions
        app.state.engine = engine = resources.engine
        app.state.search = Search(engine)  # one per app: it keeps the lexemes' statistics
        app.state.database_check = DatabaseCheck(lambda: db.ping(engine))
        await chat.start()
        await resources.sessions.start()
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
    app.add_middleware(HistoryPages)  # the ordinary history page, below FastAPI
    app.add_middleware(SecurityHeaders)
    app.add_middleware(ws.Endpoint)  # /ws, under the request context only
    # In front of /ws too: a handshake with a malformed Host or Origin is refused (403).
    app.add_middleware(
        Guard,
        max_body_bytes=settings.max_request_bytes,
        body_timeout_seconds=settings.body_timeout_seconds,
    )
    app.add_middleware(logs.RequestContext)  # added last: it wraps everything else
    app.include_router(api.router)
    app.include_router(api_rooms.router)
    app.include_router(api_log.router)
    app.include_router(api_search.router)

    async def database_error(request: Request, error: Exception) -> Response:
        # An outage (db.Unavailable, or a pooled connection that died with the last one) is
        # 503 and the client retries; anything else is a bug and stays a 500. A write whose
        # outcome could not be learnt before shutdown is neither: 504, retry with the same
        # client_id (a stored message then answers 200 with the original).
        if isinstance(error, db.OutcomeUnknown):
            detail = "the outcome is not known: retry with the same client_id"
            return JSONResponse({"detail": detail}, status_code=504)
        if db.is_outage(error):
            return JSONResponse({"detail": "the database cannot be reached"}, status_code=503)
        log.error("request failed", exc_info=error)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    for kind in (SQLAlchemyError, OSError, db.Unavailable):
        app.add_exception_handler(kind, database_error)

    async def rate_limited(request: Request, error: Exception) -> Response:
        assert isinstance(error, RateLimited)
        return JSONResponse(
            {"detail": error.detail},
            status_code=429,
            headers={"Retry-After": str(error.retry_after_seconds)},
        )

    def busy(what: str) -> Callable[[Request, Exception], Awaitable[Response]]:
        """503 for an instance whose `what` are all in progress: the instance is busy, not
        this client, as for any overload (README, Choices)."""

        async def handler(request: Request, error: Exception) -> Response:
            return JSONResponse(
                {"detail": f"too many {what} in progress; try again shortly"},
                status_code=503,
                headers={"Retry-After": "1"},
            )

        return handler

    app.add_exception_handler(RateLimited, rate_limited)
    app.add_exception_handler(SearchesBusy, busy("searches"))
    app.add_exception_handler(PasswordsBusy, busy("logins and registrations"))
    app.add_exception_handler(Refused, api_rooms.refused)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process runs."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(request: Request) -> JSONResponse:
        """200 when the database answers and the fan-out listener hears itself, else 503.
        The database is asked at most once a second, however many probes come
        (readiness.py); the listener and draining are read as they are now."""
        chat: Chat = request.app.state.chat
        check: DatabaseCheck = request.app.state.database_check
        database = await check.ok()
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

    metrics_token = (
        settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None
    )

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus text format; with CHAT_METRICS_TOKEN set, only for its bearer."""
        if metrics_token is not None and not _bearer_is(request, metrics_token):
            return JSONResponse(
                {"detail": "not authenticated: /metrics needs its bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app
