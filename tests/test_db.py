"""service.db: every session in UTC, and the one rule that tells an outage from a bug,
provoked against the real database where PostgreSQL lets us, and in unit tests for the rest."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, migrate, ops
from service.backends import PostgresBackend
from service.settings import Settings
from tests.support import unique


async def _execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement, timeout=10)
    finally:
        await conn.close(timeout=5)


def _name(url: str) -> str:
    return url.rpartition("/")[2]


def as_role(url: str, role: str, password: str) -> str:
    """`url` with another role's credentials."""
    parts = urlsplit(url)
    netloc = f"{role}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# -- UTC on every path -----------------------------------------------------------------------


@pytest.fixture
def new_york(new_database: Callable[[], str]) -> str:
    """A fresh, empty database whose default TimeZone is not UTC."""
    url = new_database()
    asyncio.run(_execute(url, f"ALTER DATABASE {_name(url)} SET timezone = 'America/New_York'"))
    return url


@pytest.fixture
def session_zones(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The TimeZone of every asyncpg connection opened from now on, whoever opens it
    (SQLAlchemy's dialect, the fan-out backend and Alembic all call asyncpg.connect)."""
    seen: list[str] = []
    real = asyncpg.connect

    async def spy(*args: Any, **kwargs: Any) -> Any:
        conn = await real(*args, **kwargs)
        seen.append(await conn.fetchval("SHOW timezone"))
        return conn

    monkeypatch.setattr(asyncpg, "connect", spy)
    return seen


def test_every_session_the_service_opens_runs_in_utc(
    new_york: str, session_zones: list[str]
) -> None:
    """On a database whose default TimeZone is America/New_York: Alembic's session, the
    engine's, the operator commands' and the fan-out listener's all run in UTC, and a
    timestamptz PostgreSQL writes as text (as json_build_object does) ends in +00:00."""
    settings = Settings(database_url=new_york)
    migrate.upgrade(settings)
    assert session_zones and set(session_zones) == {"UTC"}, f"Alembic: {session_zones}"
    session_zones.clear()

    async def as_text(engine: AsyncEngine) -> str:
        async with db.reading(engine) as conn:
            value: str = (
                await conn.execute(text("SELECT json_build_object('at', now())::text"))
            ).scalar_one()
        return value

    async def each_path() -> dict[str, list[str]]:
        zones: dict[str, list[str]] = {}
        control = await asyncpg.connect(new_york)  # ours, without the service's settings
        await control.close()
        zones["control"], session_zones[:] = list(session_zones), []

        engine = db.create_engine(settings)
        try:
            assert (await as_text(engine)).endswith('+00:00"}')
        finally:
            await engine.dispose()
        zones["engine"], session_zones[:] = list(session_zones), []

        async with ops.connect(settings) as engine:
            assert (await as_text(engine)).endswith('+00:00"}')
        zones["ops"], session_zones[:] = list(session_zones), []

        backend = PostgresBackend(settings.fanout_url)
        await backend.connect()
        await backend.disconnect()
        zones["fan-out"], session_zones[:] = list(session_zones), []
        return zones

    zones = asyncio.run(each_path())
    assert zones.pop("control") == ["America/New_York"], "the database's default is not UTC"
    assert zones == {"engine": ["UTC"], "ops": ["UTC"], "fan-out": ["UTC"]}


# -- the outage rule, unit by unit ---------------------------------------------------------

TRANSIENT = [
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),  # 53300
    asyncpg.ConfigurationLimitExceededError("too many ..."),  # 53400
    asyncpg.OutOfMemoryError("out of memory"),  # 53200
    asyncpg.DiskFullError("could not extend file"),  # 53100
    asyncpg.InsufficientResourcesError("insufficient resources"),  # 53000
    asyncpg.QueryCanceledError("canceling statement due to statement timeout"),  # 57014
    asyncpg.LockNotAvailableError("canceling statement due to lock timeout"),  # 55P03
    asyncpg.DeadlockDetectedError("deadlock detected"),  # 40P01
    asyncpg.SerializationError("could not serialize access"),  # 40001
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    ConnectionResetError("reset by peer"),
    TimeoutError(),
]
BUGS = [
    asyncpg.UniqueViolationError("duplicate key"),  # 23505
    asyncpg.ForeignKeyViolationError("violates foreign key"),  # 23503
    asyncpg.UndefinedTableError("relation does not exist"),  # 42P01
    asyncpg.PostgresSyntaxError("syntax error"),  # 42601
    asyncpg.CheckViolationError("violates check constraint"),  # 23514
    asyncpg.InvalidTextRepresentationError("invalid input syntax"),  # 22P02
    ValueError("a bug of ours"),
]


def _wrapped(error: BaseException) -> sa_exc.DBAPIError:
    """As SQLAlchemy raises a driver's error: a DBAPIError whose `orig` chains to it."""
    adapted = RuntimeError("adapted by the dialect")
    adapted.__cause__ = error
    return sa_exc.DBAPIError("SELECT 1", {}, adapted)


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_errors_are_outages(error: BaseException) -> None:
    assert db.is_outage(error)
    assert db.is_outage(_wrapped(error))
    with pytest.raises(db.Unavailable), db.outages_unavailable():
        raise _wrapped(error)


@pytest.mark.parametrize("error", BUGS, ids=lambda e: type(e).__name__)
def test_bugs_are_not_outages(error: BaseException) -> None:
    assert not db.is_outage(error)
    assert not db.is_outage(_wrapped(error))
    with pytest.raises(type(_wrapped(error))), db.outages_unavailable():
        raise _wrapped(error)


def test_sqlstate_and_retry_at_once() -> None:
    assert db.sqlstate(_wrapped(asyncpg.DeadlockDetectedError("x"))) == "40P01"
    assert db.sqlstate(ValueError()) is None
    assert db.retry_at_once(_wrapped(asyncpg.DeadlockDetectedError("x")))
    assert db.retry_at_once(_wrapped(asyncpg.SerializationError("x")))
    assert not db.retry_at_once(_wrapped(asyncpg.QueryCanceledError("x")))
    assert not db.retry_at_once(_wrapped(asyncpg.TooManyConnectionsError("x")))


async def test_retrying_runs_a_deadlock_victim_again_and_bounds_it() -> None:
    calls = 0

    async def twice_a_victim() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise _wrapped(asyncpg.DeadlockDetectedError("deadlock detected"))
        return "done"

    assert await db.retrying(twice_a_victim, delay=0) == "done"
    assert calls == 3

    async def always() -> str:
        raise _wrapped(asyncpg.SerializationError("could not serialize access"))

    with pytest.raises(db.Unavailable):
        await db.retrying(always, attempts=2, delay=0)

    async def timed_out() -> str:
        nonlocal calls
        calls += 1
        raise _wrapped(asyncpg.QueryCanceledError("canceling statement"))

    calls = 0
    with pytest.raises(db.Unavailable):
        await db.retrying(timed_out, delay=0)
    assert calls == 1, "only deadlocks and serialization failures run again at once"


# -- the outage rule against the real database ---------------------------------------------


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(Settings(database_url=database_url))
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def limited(new_database: Callable[[], str], pg_admin_url: str) -> AsyncIterator[str]:
    """The URL of a fresh database that admits one connection of its (non-superuser) owner;
    superusers are not held to CONNECTION LIMIT."""
    url = await asyncio.to_thread(new_database)
    role, password = unique("lim_"), unique("pw")
    await _execute(
        pg_admin_url,
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}'",
        f"ALTER DATABASE {_name(url)} OWNER TO {role}",
        f"ALTER DATABASE {_name(url)} CONNECTION LIMIT 1",
    )
    yield as_role(url, role, password)
    with contextlib.suppress(Exception):
        await _execute(pg_admin_url, f"DROP DATABASE {_name(url)} WITH (FORCE)")
        await _execute(pg_admin_url, f"DROP ROLE {role}")


async def test_too_many_connections_is_unavailable(limited: str) -> None:
    """53300 from the server (CONNECTION LIMIT reached) comes out as Unavailable."""
    first = await asyncpg.connect(limited, timeout=10)
    engine = db.create_engine(Settings(database_url=limited))
    try:
        with pytest.raises(db.Unavailable) as raised:
            async with db.reading(engine) as conn:
                await conn.execute(text("SELECT 1"))
        assert db.sqlstate(raised.value) == "53300"
        await first.close(timeout=5)
        async with db.reading(engine) as conn:  # a slot is free again
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()
        if not first.is_closed():
            await first.close(timeout=5)


async def test_statement_timeout_is_unavailable(engine: AsyncEngine) -> None:
    async def slow() -> None:
        async with db.writing(engine) as conn:
            await conn.execute(text("SET LOCAL statement_timeout = 50"))
            await conn.execute(text("SELECT pg_sleep(5)"))

    with pytest.raises(db.Unavailable) as raised:
        await slow()
    assert db.sqlstate(raised.value) == "57014"


async def test_cancelled_statement_is_unavailable(
    engine: AsyncEngine, pg: asyncpg.Connection
) -> None:
    """pg_cancel_backend from another session: 57014 as well."""
    tag = unique("cancel_me_")

    async def sleep() -> None:
        async with db.reading(engine) as conn:
            await conn.execute(text(f"SELECT pg_sleep(10) AS {tag}"))

    sleeper = asyncio.create_task(sleep())
    async with asyncio.timeout(10):
        while not await pg.fetchval(
            "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity "
            "WHERE query LIKE '%' || $1 AND pid <> pg_backend_pid()",
            tag,
        ):
            await asyncio.sleep(0.02)
        with pytest.raises(db.Unavailable) as raised:
            await sleeper
    assert db.sqlstate(raised.value) == "57014"


async def test_deadlock_victim_is_unavailable(engine: AsyncEngine) -> None:
    """Two transactions that take two locks in opposite orders: PostgreSQL rolls one back
    (40P01), which comes out as Unavailable; the other commits."""
    a, b = (hash(unique("k")) for _ in range(2))
    both_hold = asyncio.Barrier(2)

    async def take(first: int, second: int) -> str:
        try:
            async with db.writing(engine) as conn:
                await conn.execute(text("SET LOCAL deadlock_timeout = 50"))
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": first})
                await both_hold.wait()
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": second})
        except db.Unavailable as error:
            return db.sqlstate(error) or "?"
        return "committed"

    async with asyncio.timeout(20):
        outcomes = await asyncio.gather(take(a, b), take(b, a))
    assert sorted(outcomes) == ["40P01", "committed"]


async def test_serialization_failure_is_unavailable(engine: AsyncEngine) -> None:
    """Write skew between two SERIALIZABLE transactions: one fails with 40001."""
    table = unique("skew_")
    async with db.writing(engine) as conn:
        await conn.execute(text(f"CREATE TABLE {table} (v int)"))
    both_read = asyncio.Barrier(2)

    async def skew(value: int) -> str:
        try:
            async with db.writing(engine) as conn:
                await conn.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
                await conn.execute(text(f"SELECT count(*) FROM {table}"))
                await both_read.wait()
                await conn.execute(text(f"INSERT INTO {table} VALUES ({value})"))
        except db.Unavailable as error:
            return db.sqlstate(error) or "?"
        return "committed"

    try:
        async with asyncio.timeout(20):
            outcomes = await asyncio.gather(skew(1), skew(2))
        assert sorted(outcomes) == ["40001", "committed"]
    finally:
        async with db.writing(engine) as conn:
            await conn.execute(text(f"DROP TABLE {table}"))
