"""Our broadcaster backends (service/backends.py) against the run's real PostgreSQL and Redis:
delivery through broadcaster's public API, `lost` when the connection is killed from
outside, the first message after a Redis subscribe, and the queue's bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from broadcaster import Broadcast, Event
from redis import asyncio as redis

from service.backends import Backend, PostgresBackend, RedisBackend, for_url
from tests.support import unique

WAIT = 10


def _with_query(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


@dataclass
class Server:
    """One kind of server, with what a test needs to do to it from another connection."""

    kind: str
    admin_url: str
    name: str

    @property
    def url(self) -> str:
        """The backend's URL, naming its connections so that `kill` finds them and no other."""
        key = "application_name" if self.kind == "postgres" else "client_name"
        return _with_query(self.admin_url, key, self.name)

    def backend(self, queue_max: int = 100) -> Backend:
        if self.kind == "postgres":
            return PostgresBackend(self.url, queue_max=queue_max)
        return RedisBackend(self.url, queue_max=queue_max)

    async def publish(self, channel: str, messages: list[str]) -> None:
        """From another connection; with PostgreSQL in one transaction, as the writer does."""
        if self.kind == "postgres":
            conn = await asyncpg.connect(self.admin_url)
            try:
                await conn.execute(
                    "SELECT pg_notify($1, m) FROM unnest($2::text[]) AS m", channel, messages
                )
            finally:
                await conn.close()
            return
        async with redis.Redis.from_url(self.admin_url) as client:
            for message in messages:
                await client.publish(channel, message)

    async def connections(self) -> int:
        """How many connections the backend holds open on the server."""
        if self.kind == "postgres":
            conn = await asyncpg.connect(self.admin_url)
            try:
                return int(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        self.name,
                    )
                )
            finally:
                await conn.close()
        async with redis.Redis.from_url(self.admin_url, decode_responses=True) as client:
            return sum(1 for c in await client.client_list() if c["name"] == self.name)

    async def kill(self) -> int:
        """Ends the listening connection from outside; returns how many were ended."""
        if self.kind == "postgres":
            conn = await asyncpg.connect(self.admin_url)
            try:
                killed = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    self.name,
                )
            finally:
                await conn.close()
            return int(killed)
        async with redis.Redis.from_url(self.admin_url, decode_responses=True) as client:
            mine = [c for c in await client.client_list(_type="pubsub") if c["name"] == self.name]
            assert len(mine) == 1, mine
            return await client.client_kill_filter(_id=mine[0]["id"], _type="pubsub")


@pytest.fixture(params=["postgres", "redis"])
def server(request: pytest.FixtureRequest) -> Server:
    fixture = "database_url" if request.param == "postgres" else "redis_url"
    return Server(request.param, request.getfixturevalue(fixture), unique("backend_"))


@pytest.fixture
async def backend(server: Server) -> AsyncIterator[Backend]:
    """Connected and subscribed to nothing yet; disconnected at the end."""
    backend = server.backend()
    async with asyncio.timeout(WAIT):
        await backend.connect()
    try:
        yield backend
    finally:
        async with asyncio.timeout(WAIT):
            await backend.disconnect()


async def _next(backend: Backend, count: int) -> list[str]:
    async with asyncio.timeout(WAIT):
        return [(await backend.next_published()).message for _ in range(count)]


def test_for_url_picks_the_backend_by_scheme() -> None:
    assert isinstance(for_url("postgresql://u@h/d"), PostgresBackend)
    assert isinstance(for_url("postgres://u@h/d"), PostgresBackend)
    assert isinstance(for_url("redis://h:6379/0"), RedisBackend)
    with pytest.raises(ValueError, match="kafka"):
        for_url("kafka://h:9092")


async def test_a_publish_reaches_a_subscriber(server: Server) -> None:
    """Through broadcaster's public API: the backend's own publish and one from another
    connection both reach the subscriber, in order; a clean disconnect is not `lost`, and
    leaves no connection open."""
    channel = unique("ch_")
    backend = server.backend()
    async with (
        asyncio.timeout(WAIT),
        Broadcast(backend=backend) as broadcast,
        broadcast.subscribe(channel) as subscriber,
    ):
        await broadcast.publish(channel, "from the backend")
        await server.publish(channel, ["from outside"])
        got = [await subscriber.get(), await subscriber.get()]
        assert await server.connections() > 0
    assert got == [Event(channel, "from the backend"), Event(channel, "from outside")]
    assert not backend.lost.is_set()
    # A closed PostgreSQL session leaves pg_stat_activity once its process has exited.
    async with asyncio.timeout(WAIT):
        while await server.connections():
            await asyncio.sleep(0.05)


async def test_lost_when_the_connection_is_killed(server: Server, backend: Backend) -> None:
    await backend.subscribe(unique("ch_"))
    assert not backend.lost.is_set()
    assert await server.kill() == 1
    async with asyncio.timeout(WAIT):
        await backend.lost.wait()


async def test_redis_receives_the_first_message_published_right_after_subscribe(
    redis_url: str,
) -> None:
    """broadcaster 0.3.1's own Redis backend never receives this one: its reader starts
    before SUBSCRIBE completes. Ours returns from subscribe once Redis counts the subscriber."""
    channel = unique("ch_")
    async with (
        asyncio.timeout(WAIT),
        Broadcast(backend=RedisBackend(redis_url)) as broadcast,
        broadcast.subscribe(channel) as subscriber,
        redis.Redis.from_url(redis_url) as client,
    ):
        assert await client.publish(channel, "first") == 1
        assert await subscriber.get() == Event(channel, "first")


async def test_queue_bound(server: Server) -> None:
    """Up to the bound, events wait for the reader; past it the newest is dropped and
    `lost` is set, so that Fanout rebuilds and reads back from the database."""
    channel = unique("ch_")
    bound = 5
    backend = server.backend(queue_max=bound)
    async with asyncio.timeout(WAIT):
        await backend.connect()
    try:
        await backend.subscribe(channel)
        await server.publish(channel, [f"a{i}" for i in range(bound)])
        assert await _next(backend, bound) == [f"a{i}" for i in range(bound)]
        assert not backend.lost.is_set()

        # One past the bound, so that nothing is still on its way once `lost` is set.
        await server.publish(channel, [f"b{i}" for i in range(bound + 1)])
        async with asyncio.timeout(WAIT):
            await backend.lost.wait()
        assert await _next(backend, bound) == [f"b{i}" for i in range(bound)]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await backend.next_published()
    finally:
        async with asyncio.timeout(WAIT):
            await backend.disconnect()
