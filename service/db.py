"""The engine, and telling a database outage apart from a bug."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .settings import Settings


class Unavailable(Exception):
    """The database cannot be reached now; nothing was stored.

    The one way an outage reaches the domain and the adapters: every database access goes
    through `reading`, `writing` or `outages_unavailable`, which turn what `is_outage`
    recognises into this, so callers catch this alone (socket: `unavailable`, REST: 503,
    command line: exit 1)."""


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        # No pre-ping: with asyncpg it is BEGIN; ROLLBACK around each checkout (3 round
        # trips). A connection found dead raises an outage error (callers answer
        # `unavailable`, clients retry) and SQLAlchemy then recycles the whole pool.
        pool_pre_ping=False,
        pool_timeout=5,
        connect_args={"timeout": 5, "command_timeout": 30},
        # SQLAlchemy puts a failed statement's parameters in the error's text, and the
        # writer's parameters are message bodies: never let them reach a log.
        hide_parameters=True,
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


@asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction, committed at the end of the block."""
    with outages_unavailable():
        async with engine.begin() as conn:
            yield conn


def is_outage(error: BaseException) -> bool:
    """True when `error` means 'the database is unreachable or going away', not a bug."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
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
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and (sqlstate.startswith("08") or sqlstate.startswith("57P")):
            return True
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
    return False


async def ping(engine: AsyncEngine, timeout: float = 2.0) -> bool:
    """Ask the database itself; True only if it answered in time."""
    try:
        async with asyncio.timeout(timeout), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
