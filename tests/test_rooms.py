"""The room directory against PostgreSQL: rooms created on first use, at most so many per
user, concurrent creations included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db
from service.ratelimit import RateLimited
from service.rooms import RoomDirectory
from service.settings import Settings
from tests.support import unique


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = db.create_engine(Settings(database_url=database_url))
    try:
        yield made
    finally:
        await made.dispose()


async def existing(pg: asyncpg.Connection, names: list[str]) -> set[str]:
    rows = await pg.fetch("SELECT name FROM rooms WHERE name = ANY($1::text[])", names)
    return {r["name"] for r in rows}


async def test_past_the_limit_nothing_is_created(
    engine: AsyncEngine, pg: asyncpg.Connection
) -> None:
    """Three rooms an hour: the fourth new name raises RateLimited and is not created; the
    rooms that exist still resolve for that user, and another user may create."""
    rooms = RoomDirectory(engine, created_per_hour=3)
    names = [unique(f"mine{k}-") for k in range(4)]
    async with asyncio.timeout(30):
        ids = [await rooms.ensure(name, "alice") for name in names[:3]]
        with pytest.raises(RateLimited) as refused:
            await rooms.ensure(names[3], "alice")
        assert 0 < refused.value.retry_after_ms <= 1_200_000  # one every 20 minutes
        assert await existing(pg, names) == set(names[:3])
        assert [await rooms.ensure(name, "alice") for name in names[:3]] == ids
        assert await rooms.ensure(names[3], "bob") > 0


async def test_concurrent_creations_cost_at_most_the_budget(
    engine: AsyncEngine, pg: asyncpg.Connection
) -> None:
    """Ten new rooms at once by one user, three allowed: three are created, seven refused."""
    rooms = RoomDirectory(engine, created_per_hour=3)
    names = [unique(f"swarm{k}-") for k in range(10)]
    async with asyncio.timeout(30):
        results = await asyncio.gather(
            *(rooms.ensure(name, "carol") for name in names), return_exceptions=True
        )
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(refused) == 7 and len(results) - len(refused) == 3, results
    assert len(await existing(pg, names)) == 3


async def test_a_room_someone_else_created_costs_nothing(engine: AsyncEngine) -> None:
    """Two instances (directories) create one name at once for the same user, one room
    allowed on each: only the one whose insert made the room spent its budget, so exactly
    one of their next creations is refused."""
    one = RoomDirectory(engine, created_per_hour=1)
    two = RoomDirectory(engine, created_per_hour=1)
    name = unique("both-")
    async with asyncio.timeout(30):
        first, second = await asyncio.gather(one.ensure(name, "dave"), two.ensure(name, "dave"))
        assert first == second
        results = await asyncio.gather(
            one.ensure(unique("next-"), "dave"),
            two.ensure(unique("next-"), "dave"),
            return_exceptions=True,
        )
    assert sum(isinstance(r, RateLimited) for r in results) == 1, results
    assert sum(isinstance(r, int) for r in results) == 1, results


async def test_sends_racing_to_one_new_room_spend_one_creation(engine: AsyncEngine) -> None:
    """Fifty sends by one user to a room nobody has used yet, all at once: one room is
    created, all fifty get its id, and the user's budget lost one creation, not fifty."""
    rooms = RoomDirectory(engine, created_per_hour=2)
    name = unique("race-")
    async with asyncio.timeout(30):
        ids = await asyncio.gather(*(rooms.ensure(name, "racer") for _ in range(50)))
    assert len(set(ids)) == 1
    await rooms.ensure(unique("second-"), "racer")  # the budget's second creation is left
    with pytest.raises(RateLimited):
        await rooms.ensure(unique("third-"), "racer")
