"""The fan-out listener: one broadcaster subscription per instance, whose health we own.

broadcaster does not notice when its connection dies (FACTS.md): subscribers just wait. So
the supervisor sends itself a canary over the channel every second; when one has not come
back within the timeout, it throws the Broadcast away, builds a new one, and, once the new
subscription hears again, calls `on_recovered` (the core's resync: every room reads back from
the database what it missed meanwhile). `healthy` is what /readyz reports. What a
notification says is protocol.py's business; this module only carries it.

Publishing: with the Postgres backend, message notifications ride the writer's own
transaction (service/sql/post_messages.sql sends them), and ephemeral events (presence,
typing, canaries) are sent with `pg_notify` over the engine's pool, never over the
listener's connection. With another backend (Redis), everything goes through
`Broadcast.publish`, after commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from broadcaster import Broadcast
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import backends, metrics
from .db import reading
from .protocol import CanaryNote, FanoutKey, Note, decode_note, encode_note

log = logging.getLogger(__name__)


def make_broadcast(url: str) -> tuple[Broadcast, asyncio.Event]:
    """A Broadcast on our own backend for `url` (service/backends.py), and the event that
    backend sets when its connection is lost, so the listener is rebuilt at once rather than
    when the canary times out; the canary still catches a connection that dies silently."""
    backend = backends.for_url(url)
    return Broadcast(backend=backend), backend.lost


_NOTIFY_MANY = text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p")


def via_postgres(url: str) -> bool:
    """Whether a fan-out URL names PostgreSQL (LISTEN/NOTIFY) rather than another backend."""
    return url.startswith(("postgresql:", "postgres:"))


def _ignore(note: Note) -> None:
    pass


async def _nothing() -> None:
    pass


class Fanout:
    def __init__(
        self,
        *,
        url: str,
        channel: str,
        engine: AsyncEngine,
        instance_id: str,
        key: FanoutKey,
        check_interval: float = 1.0,
        timeout: float = 3.0,
    ) -> None:
        self._url = url
        self._key = key
        self._channel = channel
        self._engine = engine
        self._instance_id = instance_id
        self._on_note: Callable[[Note], None] = _ignore
        self._on_recovered: Callable[[], Awaitable[None]] = _nothing
        self._check_interval = check_interval
        self._timeout = timeout
        self._broadcast: Broadcast | None = None
        self._task: asyncio.Task[None] | None = None
        self._canary_seen = 0.0
        self._counter = itertools.count()
        self.healthy = False
        self._healthy_event = asyncio.Event()
        self.via_postgres = via_postgres(url)

    def start(
        self, on_note: Callable[[Note], None], on_recovered: Callable[[], Awaitable[None]]
    ) -> None:
        """Listen: every notification from any instance (this one included) goes to
        `on_note`; `on_recovered` runs each time the listener hears again after being deaf,
        to read back from the database what was missed."""
        self._on_note, self._on_recovered = on_note, on_recovered
        self._task = asyncio.create_task(self._supervise(), name="fanout-supervisor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._discard()

    async def wait_healthy(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._healthy_event.wait()
        return self.healthy

    @property
    def notify_channel(self) -> str | None:
        """The channel to NOTIFY inside a transaction, or None when notifications are
        published after the commit (another backend)."""
        return self._channel if self.via_postgres else None

    def signed(self, payload: str) -> str:
        """`payload` as every notification goes out: signed with the fan-out key."""
        return self._key.sign(payload)

    async def notify_in(self, conn: AsyncConnection, payloads: list[str]) -> list[str]:
        """Inside a transaction: with Postgres, NOTIFY as part of it (delivered if and only if
        it commits); otherwise return them signed, to `publish` after the commit."""
        signed = [self._key.sign(p) for p in payloads]
        if not signed or not self.via_postgres:
            return signed
        await conn.execute(_NOTIFY_MANY, {"channel": self._channel, "payloads": signed})
        return []

    async def publish_note(self, note: Note) -> None:
        """Sign and send one notification now."""
        await self.publish([self._key.sign(encode_note(note))])

    async def publish(self, payloads: list[str]) -> None:
        """Send signed notifications now (outside any message transaction)."""
        if self.via_postgres:
            # One statement in autocommit: its own transaction, delivered at its commit,
            # without the BEGIN and COMMIT round trips.
            async with reading(self._engine) as conn:
                await conn.execute(_NOTIFY_MANY, {"channel": self._channel, "payloads": payloads})
            return
        broadcast = self._broadcast
        if broadcast is None:
            raise ConnectionError("fan-out is reconnecting")
        for payload in payloads:
            await broadcast.publish(self._channel, payload)

    async def _supervise(self) -> None:
        delay = 0.2
        first = True
        while True:
            try:
                await self._listen_once(first)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("fan-out listener lost: %s", error or type(error).__name__)
            self._set_healthy(False)
            await self._discard()
            metrics.LISTENER_RECONNECTS.inc()
            first = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _listen_once(self, first: bool) -> None:
        broadcast, lost = make_broadcast(self._url)
        self._broadcast = broadcast
        async with asyncio.timeout(self._timeout):
            await broadcast.connect()
        subscription = broadcast.subscribe(self._channel)
        async with asyncio.timeout(self._timeout):
            subscriber = await subscription.__aenter__()
        # The subscription is abandoned, not exited, on failure: exiting would UNLISTEN on
        # a connection that may be dead and hang.
        consumer = asyncio.create_task(self._consume(subscriber), name="fanout-consumer")
        try:
            self._canary_seen = 0.0
            sent_at = time.monotonic()
            while True:
                await self._send_canary()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._check_interval):
                        await lost.wait()
                if lost.is_set():
                    raise ConnectionError("listener connection closed")
                if consumer.done():
                    raise ConnectionError("subscriber stopped")
                heard = self._canary_seen >= sent_at
                if not self.healthy and heard:
                    self._set_healthy(True)
                    log.info("fan-out listener %s", "ready" if first else "recovered")
                    # Whatever was committed while we were deaf is in the database.
                    await self._on_recovered()
                if time.monotonic() - max(self._canary_seen, sent_at) > self._timeout:
                    raise ConnectionError("canary not heard back")
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)

    async def _send_canary(self) -> None:
        note = CanaryNote(self._instance_id, next(self._counter))
        try:
            async with asyncio.timeout(self._timeout):
                await self.publish_note(note)
        except Exception as error:
            log.debug("canary not sent: %s", error)

    async def _consume(self, subscriber: Any) -> None:
        while True:
            event = await subscriber.get()
            payload = self._key.open(event.message)
            note = decode_note(payload) if payload is not None else None
            if note is None:
                # Not signed by us, or malformed: never trusted, not even in part (a forged
                # one is counted); a real one lost this way is caught by the resync.
                metrics.NOTIFICATIONS_REFUSED.inc()
                log.debug("a notification that is not ours, or malformed, was dropped")
                continue
            if isinstance(note, CanaryNote):
                if note.instance == self._instance_id:
                    self._canary_seen = time.monotonic()
                continue
            try:
                self._on_note(note)
            except Exception:
                log.exception("a notification could not be delivered")

    def _set_healthy(self, value: bool) -> None:
        self.healthy = value
        if value:
            self._healthy_event.set()
        else:
            self._healthy_event.clear()
        metrics.LISTENER_HEALTHY.set(1 if value else 0)

    async def _discard(self) -> None:
        broadcast, self._broadcast = self._broadcast, None
        if broadcast is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await broadcast.disconnect()
