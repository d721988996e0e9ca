"""The database check behind /readyz: at most one ping per interval, shared by concurrent
probes, and honest about a ping that failed."""

from __future__ import annotations

import asyncio

from service.readiness import DatabaseCheck


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Database:
    """A ping that answers `answer` once released (or at once when `gate` is None)."""

    def __init__(self) -> None:
        self.pings = 0
        self.answer: bool | Exception = True
        self.gate: asyncio.Event | None = None

    async def ping(self) -> bool:
        self.pings += 1
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_a_flood_of_probes_costs_one_ping_per_interval() -> None:
    clock, database = Clock(), Database()
    check = DatabaseCheck(database.ping, interval=1.0, clock=clock)
    async with asyncio.timeout(5):
        assert all([await check.ok() for _ in range(500)])
        assert database.pings == 1
        clock.now += 0.999
        assert await check.ok()
        assert database.pings == 1
        clock.now += 0.001
        assert await check.ok()
        assert database.pings == 2


async def test_concurrent_probes_share_the_ping_in_flight() -> None:
    clock, database = Clock(), Database()
    database.gate = asyncio.Event()
    check = DatabaseCheck(database.ping, interval=1.0, clock=clock)
    async with asyncio.timeout(5):
        probes = [asyncio.create_task(check.ok()) for _ in range(200)]
        await asyncio.sleep(0.01)
        clock.now += 5  # the ping is slow: later probes still wait for it, start none
        probes += [asyncio.create_task(check.ok()) for _ in range(200)]
        await asyncio.sleep(0.01)
        assert database.pings == 1
        database.gate.set()
        assert all(await asyncio.gather(*probes))
        assert database.pings == 1


async def test_a_probe_that_goes_away_does_not_cancel_the_others_ping() -> None:
    clock, database = Clock(), Database()
    database.gate = asyncio.Event()
    check = DatabaseCheck(database.ping, interval=1.0, clock=clock)
    async with asyncio.timeout(5):
        first = asyncio.create_task(check.ok())
        second = asyncio.create_task(check.ok())
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.sleep(0.01)
        database.gate.set()
        assert await second
        assert first.cancelled()
        assert database.pings == 1


async def test_a_failed_ping_is_not_ready_until_one_succeeds() -> None:
    clock, database = Clock(), Database()
    check = DatabaseCheck(database.ping, interval=1.0, clock=clock)
    async with asyncio.timeout(5):
        database.answer = False
        assert not await check.ok()
        database.answer = True
        assert not await check.ok()  # the last answer, until the interval has passed
        clock.now += 1
        assert await check.ok()
        database.answer = RuntimeError("the pool is broken")
        clock.now += 1
        assert not await check.ok()
        assert not await check.ok()
        assert database.pings == 3
