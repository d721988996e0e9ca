"""The engine, and telling a database outage apart from a bug."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import asyncpg
import orjson
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .settings import Settings

T = TypeVar("T")

# Every session the service opens runs in UTC (the engine's, the fan-out listener's, the
# operator commands', Alembic's): PostgreSQL writes a timestamptz as text in the session's
# TimeZone (json_build_object in sql/post_messages.sql does), and PROTOCOL.md promises
# `+00:00` whatever the server's or the database's default is.
SESSION_SETTINGS: Mapping[str, str] = {"timezone": "UTC"}


def connect_args(**extra: Any) -> dict[str, Any]:
    """asyncpg's connect() arguments for a session of ours: SESSION_SETTINGS, plus `extra`."""
    return {"server_settings": dict(SESSION_SETTINGS), **extra}


class Unavailable(Exception):
    """The database cannot be reached now; nothing was stored.

    The one way an outage reaches the domain and the adapters: every database access goes
    through `reading`, `writing` or `outages_unavailable`, which turn what `is_outage`
    recognises into this, so callers catch this alone (socket: `unavailable`, REST: 503,
    command line: exit 1)."""


def create_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    """The instance's pool: `settings.db_pool_size` connections (as many again in overflow),
    or exactly `pool_size` (no overflow)."""
    if pool_size is None:
        size, overflow = settings.db_pool_size, settings.db_pool_size
    else:
        size, overflow = pool_size, 0
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=size,
        max_overflow=overflow,
        # No pre-ping: with asyncpg it is BEGIN; ROLLBACK around each checkout (3 round
        # trips). A connection found dead raises an outage error (callers answer
        # `unavailable`, clients retry) and SQLAlchemy then recycles the whole pool.
        pool_pre_ping=False,
        # The connection used last goes out first: at a light load one backend stays warm
        # instead of each write waking the one idle longest (FIFO). bench/, 10 msg/s, two
        # runs each: a write's commit 6.9-7.5 ms mean against 10.0-10.9, commit to frame
        # queued 5.5-5.7 against 6.4-6.5, send to receipt p50 8.7-8.9 against 9.2-9.8 ms.
        pool_use_lifo=True,
        pool_timeout=5,
        connect_args=connect_args(timeout=5, command_timeout=30),
        # SQLAlchemy puts a failed statement's parameters in the error's text, and the
        # writer's parameters are message bodies: never let them reach a log.
        hide_parameters=True,
        # JSON columns (a message's reactions) decoded by orjson rather than the standard
        # library's json (~2 % of a history page's CPU in the instance, py-spy).
        json_deserializer=orjson.loads,
    )


class OutcomeUnknown(Unavailable):
    """The database went away after a write was sent: it may or may not have committed.
    Whoever sent it finds out (service/writer.py) before answering anyone."""


@contextmanager
def outages_unavailable() -> Iterator[None]:
    """Within the block, an error that means an outage is raised as Unavailable."""
    try:
        yield
    except Unavailable:
        raise
    except Exception as error:
        if is_outage(error):
            raise Unavailable(str(error) or type(error).__name__) from error
        raise


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for reads only, in autocommit: no BEGIN and ROLLBACK round trips."""
    with outages_unavailable():
        async with engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")


def numbered(statement: str, names: Sequence[str]) -> str:
    """`statement` with its named parameters numbered for asyncpg ($1 for names[0], ...),
    for driver_reading."""
    return re.sub(r"(?<!:):(\w+)\b", lambda m: f"${names.index(m.group(1)) + 1}", statement)


@asynccontextmanager
async def driver_reading(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection's asyncpg connection itself, for the hot reads (a history page,
    a join's replay and standing, a resume's pages, a session's validation), where
    SQLAlchemy's execution of a statement cost more than asyncpg's: each statement is its
    own transaction (a standing's enrolment commits with it), with asyncpg's own statement
    cache. An outage invalidates the connection, so the pool replaces it, as SQLAlchemy
    does when one of its own statements meets a dead connection (its dialect asks
    `is_closed()`). A connection found in a state asyncpg cannot go on from
    (InternalClientError: a backend ended while the connection was idle leaves its FATAL
    error half consumed) is replaced likewise, and the read is an outage: answered 503, and
    retried on a new connection."""
    with outages_unavailable():
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: asyncpg.Connection = raw.driver_connection
            try:
                yield driver
            except Exception as error:
                broken = isinstance(error, asyncpg.InternalClientError) or driver.is_closed()
                if broken or is_outage(error):
                    await conn.invalidate()
                if broken:
                    raise Unavailable(f"connection lost: {error}") from error
                raise


@asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction, committed at the end of the block."""
    with outages_unavailable():
        async with engine.begin() as conn:
            yield conn


# SQLSTATE classes and codes that mean "not now" rather than "never": the statement was not
# carried out (its transaction rolled back, or the session never began), nothing was stored,
# and the same request may well succeed when tried again.
_TRANSIENT_CLASSES = (
    "08",  # connection exception
    "53",  # insufficient resources: too many connections, out of memory, disk full
    "57P",  # operator intervention: shutdown, crash, database dropped, idle session timeout
)
_TRANSIENT_CODES = frozenset(
    {
        "57014",  # query_canceled: statement_timeout, or pg_cancel_backend()
        "55P03",  # lock_not_available: lock_timeout
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
    }
)
# Of those, the ones where the transaction was chosen to roll back so that another could go
# on: running it again at once is the standard answer.
_RETRY_AT_ONCE = frozenset({"40001", "40P01"})


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and what caused it (SQLAlchemy wraps the driver's error; asyncpg's own may sit
    behind a TimeoutError or an InterfaceError), each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE PostgreSQL gave for `error` (or for what caused it), if any."""
    for current in _chain(error):
        code = getattr(current, "sqlstate", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def is_outage(error: BaseException) -> bool:
    """True when `error` means "the database cannot do this now", not a bug: it is
    unreachable or going away, out of connections or other resources, or it cancelled the
    statement (statement timeout, pg_cancel_backend) or rolled the transaction back to get
    out of a deadlock or a serialization failure. Nothing was stored; try again."""
    for current in _chain(error):
        if isinstance(current, Unavailable):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, (OSError, ConnectionError, TimeoutError, asyncio.TimeoutError)):
            return True
        if isinstance(
            current,
            (
                asyncpg.PostgresConnectionError,
                asyncpg.CannotConnectNowError,
                asyncpg.AdminShutdownError,
                asyncpg.InterfaceError,
                asyncpg.ConnectionDoesNotExistError,
                sa_exc.TimeoutError,
            ),
        ):
            return True
        code = getattr(current, "sqlstate", None)
        if isinstance(code, str) and (
            code in _TRANSIENT_CODES or code.startswith(_TRANSIENT_CLASSES)
        ):
            return True
    return False


def retry_at_once(error: BaseException) -> bool:
    """True for a deadlock or a serialization failure: PostgreSQL rolled this transaction back
    so that another could go on, and running it again is expected to succeed."""
    return sqlstate(error) in _RETRY_AT_ONCE


async def retrying(
    attempt: Callable[[], Awaitable[T]], *, attempts: int = 3, delay: float = 0.05
) -> T:
    """`await attempt()`, run again (at most `attempts` times in all, a little later each
    time) while it fails with what `retry_at_once` recognises; then its error as
    `outages_unavailable` maps it."""
    for n in range(1, attempts + 1):
        try:
            with outages_unavailable():
                return await attempt()
        except Unavailable as error:
            if n == attempts or not retry_at_once(error):
                raise
        await asyncio.sleep(delay * n)
    raise AssertionError("unreachable")


async def ping(engine: AsyncEngine, timeout: float = 2.0) -> bool:
    """Ask the database itself; True only if it answered in time."""
    try:
        async with asyncio.timeout(timeout), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
