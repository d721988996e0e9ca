"""Our own broadcaster backends: PostgreSQL LISTEN/NOTIFY and Redis pub/sub.

Why our own: broadcaster 0.3.1's backends never say that their connection is gone
(subscribers just wait), queue without bound, run LISTEN and NOTIFY on one connection with no
lock, and its Redis listener starts before SUBSCRIBE completes and then never receives.
Fixing that from outside meant subclassing private modules, which upstream has already
renamed. These implement broadcaster's public `BroadcastBackend`, are given to it with
`Broadcast(backend=...)`, and each sets `lost` when its connection ends, which Fanout watches
to rebuild the listener at once.

Each queues at most `queue_max` events. When the queue is full, the new event is dropped and
`lost` is set: Fanout then rebuilds the listener and reads back from the database what the
dropped notifications announced (they are wake-ups; the database is the truth). Waiting for
room instead is not possible in asyncpg's synchronous callbacks, and would only move the
backlog somewhere unbounded (a task per notification, or the socket).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from broadcaster import BroadcastBackend, Event
from redis import asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .db import SESSION_SETTINGS

log = logging.getLogger(__name__)

QUEUE_MAX = 10_000


class Backend(BroadcastBackend):
    """A bounded queue of received events, and `lost`: set when the connection ends (or an
    event had to be dropped), never by `disconnect()`."""

    def __init__(self, url: str, *, queue_max: int = QUEUE_MAX) -> None:
        self._url = url
        self.lost = asyncio.Event()
        self._queue: asyncio.Queue[Event] = asyncio.Queue(queue_max)

    async def next_published(self) -> Event:
        return await self._queue.get()

    def _offer(self, channel: str, message: str) -> None:
        try:
            self._queue.put_nowait(Event(channel, message))
        except asyncio.QueueFull:
            self.lost.set()


class PostgresBackend(Backend):
    """LISTEN/NOTIFY on one asyncpg connection, whose commands take turns (asyncpg refuses
    a second one while the first runs); asyncpg's termination listener sets `lost`."""

    def __init__(self, url: str, *, queue_max: int = QUEUE_MAX) -> None:
        super().__init__(url, queue_max=queue_max)
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        # In UTC like every session of ours, though nothing here formats a timestamp today.
        self._conn = await asyncpg.connect(self._url, server_settings=dict(SESSION_SETTINGS))
        self._conn.add_termination_listener(self._terminated)

    async def disconnect(self) -> None:
        self._conn.remove_termination_listener(self._terminated)
        await self._conn.close()

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            await self._conn.add_listener(channel, self._notified)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            await self._conn.remove_listener(channel, self._notified)

    async def publish(self, channel: str, message: Any) -> None:
        async with self._lock:
            await self._conn.execute("SELECT pg_notify($1, $2)", channel, message)

    def _notified(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self._offer(channel, payload)

    def _terminated(self, _conn: object) -> None:
        self.lost.set()


class RedisBackend(Backend):
    """Redis pub/sub on redis-py's asyncio client. `subscribe` returns once Redis has
    confirmed the subscription, so anything published after it is received; the reader
    starts only then, since redis-py's `listen()` returns at once while nothing is
    subscribed. A reader that fails sets `lost`."""

    def __init__(self, url: str, *, queue_max: int = QUEUE_MAX) -> None:
        super().__init__(url, queue_max=queue_max)
        self._reader: asyncio.Task[None] | None = None
        self._confirmations: dict[str, asyncio.Future[None]] = {}

    async def connect(self) -> None:
        # No retries, said explicitly because redis-py's defaults have changed between
        # releases: a retried read reconnects and resubscribes unseen, and whatever was
        # published in between would never be read back.
        self._redis = redis.Redis.from_url(
            self._url, decode_responses=True, retry=Retry(NoBackoff(), 0)
        )
        self._pubsub = self._redis.pubsub()
        try:
            await self._redis.ping()
        except BaseException:
            await self._redis.aclose()
            raise

    async def disconnect(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        # Closes the client's whole pool, the subscription's connection included.
        await self._redis.aclose()

    async def subscribe(self, channel: str) -> None:
        if self.lost.is_set():
            raise ConnectionError("the Redis connection was lost")
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations[channel] = confirmed
        try:
            await self._pubsub.subscribe(channel)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="redis-fanout-reader")
            await confirmed
        finally:
            self._confirmations.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        await self._pubsub.unsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        await self._redis.publish(channel, message)

    async def _read(self) -> None:
        try:
            async for message in self._pubsub.listen():
                if message["type"] == "message":
                    self._offer(message["channel"], message["data"])
                elif message["type"] == "subscribe":
                    confirmed = self._confirmations.pop(message["channel"], None)
                    if confirmed is not None and not confirmed.done():
                        confirmed.set_result(None)
        except Exception as error:
            log.warning("redis fan-out reader stopped: %s", error or type(error).__name__)
            self.lost.set()
            for confirmed in self._confirmations.values():
                if not confirmed.done():
                    confirmed.set_exception(ConnectionError("the Redis connection was lost"))
            self._confirmations.clear()


def for_url(url: str, *, queue_max: int = QUEUE_MAX) -> Backend:
    """The backend for a fan-out URL: `postgresql://` (or `postgres://`) or `redis://`."""
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        return PostgresBackend(url, queue_max=queue_max)
    if scheme in ("redis", "rediss"):
        return RedisBackend(url, queue_max=queue_max)
    raise ValueError(f"no fan-out backend for {scheme}:// URLs (postgresql:// or redis://)")
