"""Server-side sessions (PROTOCOL.md, Sessions): every token names a row of `sessions`, and
is refused once that row has ended, on every instance, without a database round trip per
request or frame in the steady state.

How an instance knows that a session is still live:

- **Cache**: the sessions it has validated (one query each), bounded, least recently used
  out first, and re-validated after `revalidate_seconds` whatever else happens (a safety net
  for an ending the poll could not see: a transaction open longer than the overlap below).
  Sessions known to have ended are remembered too (bounded): an ended token replayed
  costs no query.
- **Poll**: every `poll_seconds` one indexed query (`ix_sessions_ended_at`) lists the
  sessions ended since the previous poll. An ending stamps `ended_at` with its transaction's
  start, which may precede its commit, so each poll re-reads `OVERLAP_SECONDS` before the
  previous one's database clock: an ending that commits late is still seen. Each id found
  leaves the cache, and the sockets opened with it are closed with 1008.
- **Freshness**: a cached session answers without the database only while the newest
  completed poll (or its own validation) *started* less than `fresh_seconds` ago; past
  that, the check asks the database. And an ending (logout, DELETE, ban) answers only
  `fresh_seconds` after its commit. So a request that starts after that answer, on any
  instance, either finds the session gone (a poll that started after the commit saw it)
  or asks the database, which says ended: that is PROTOCOL.md's "refused on every
  instance" without a query per request.
- **Outage**: when polls fail, cached sessions go stale after `fresh_seconds` and every
  check asks the database, which fails: REST answers 503 (db.Unavailable), a new socket is
  told to try again (1013), never "log in again". Sockets already open stay open: a database
  blip logs nobody out. Safety over availability for new requests, none of it lost: polls
  resume from the last one that succeeded, so every session ended meanwhile is closed when
  the database answers again.

`last_seen_at` is written lazily: at most once per `SEEN_INTERVAL_SECONDS` per session and
instance, batched by the poll loop, and skipped by the database when another instance wrote
it lately.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import Unavailable, driver_reading, reading, writing
from .protocol import CLOSE_POLICY

log = logging.getLogger(__name__)

# How far each poll looks back before the previous one's clock: longer than an ending's
# transaction may take between its start (its ended_at) and its commit.
OVERLAP_SECONDS = 10.0
SEEN_INTERVAL_SECONDS = 300.0
# GET /api/sessions lists at most this many (the newest); a user keeps at most
# `max_per_user` live sessions, fewer than this, so the list is whole.
LISTED_MAX = 200
USER_AGENT_MAX_CHARS = 256
# Ended rows are kept this long (nothing reads them after the overlap), expired ones this
# long past their tokens' expiry; then the purge, every PURGE_SECONDS or so, deletes them in
# batches.
KEEP_ENDED = timedelta(hours=1)
PURGE_SECONDS = 600.0
PURGE_BATCH = 1000


class Closable(Protocol):
    """A socket as sessions see it."""

    def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: uuid.UUID
    created_at: datetime
    last_seen_at: datetime
    user_agent: str | None


@dataclass(slots=True)
class _Live:
    username: str
    validated_at: float  # monotonic: when the query that found it live started
    seen_at: float  # monotonic: when last_seen_at was last asked to move


def _uuid(value: object) -> uuid.UUID:
    """asyncpg's own UUID type as the standard one (hashes and compares alike, but mypy and
    a reader need not know that)."""
    return value if type(value) is uuid.UUID else uuid.UUID(str(value))


def bounded_user_agent(value: str | None) -> str | None:
    if not value:
        return None
    return value.replace("\x00", "")[:USER_AGENT_MAX_CHARS] or None


# -- the SQL, shared with accounts (bans) and the operator commands ------------------------


async def lock_user(conn: AsyncConnection, username: str) -> tuple[bool, bool] | None:
    """Lock the user's row for the rest of the transaction; (admin, banned), or None when
    there is no such user. Every transaction that changes several sessions of one user takes
    this lock first (login, ban, ending them all), so they cannot deadlock on the sessions'
    rows, and a login cannot slip a new session past a ban."""
    row = (
        await conn.execute(
            text(
                "SELECT admin, banned_at IS NOT NULL FROM users WHERE username = :u "
                "FOR NO KEY UPDATE"
            ),
            {"u": username},
        )
    ).first()
    return (bool(row[0]), bool(row[1])) if row is not None else None


async def end_all_of(conn: AsyncConnection, username: str) -> list[uuid.UUID]:
    """End every live session of `username` (in the caller's transaction, after
    `lock_user`); their ids."""
    result = await conn.execute(
        text(
            "UPDATE sessions SET ended_at = now() "
            "WHERE username = :u AND ended_at IS NULL RETURNING id"
        ),
        {"u": username},
    )
    return [_uuid(row[0]) for row in result]


class Sessions:
    """One instance's view of the sessions table (module docstring). `start()` runs the
    poll; `stop()` ends it."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        token_ttl_seconds: int,
        poll_seconds: float = 0.5,
        fresh_seconds: float = 1.5,
        revalidate_seconds: float = 300.0,
        max_per_user: int = 100,
        cache_max: int = 50_000,
    ) -> None:
        self._engine = engine
        self._ttl = token_ttl_seconds
        self.poll_seconds = poll_seconds
        self.fresh_seconds = fresh_seconds
        self.revalidate_seconds = revalidate_seconds
        self.max_per_user = max_per_user
        self.cache_max = cache_max
        self._live: OrderedDict[uuid.UUID, _Live] = OrderedDict()
        self._ended: OrderedDict[uuid.UUID, None] = OrderedDict()
        self._sockets: dict[uuid.UUID, set[Closable]] = {}
        self._seen: set[uuid.UUID] = set()
        self._since: datetime | None = None  # the database's clock, minus the overlap
        self._polled_at = float("-inf")  # monotonic start of the newest completed poll
        self._task: asyncio.Task[None] | None = None

    # -- the cache -----------------------------------------------------------------------

    @property
    def cached(self) -> int:
        """Sessions held in memory, live and ended: never more than twice `cache_max`."""
        return len(self._live) + len(self._ended)

    def _remember_ended(self, session_id: uuid.UUID) -> None:
        self._live.pop(session_id, None)
        self._seen.discard(session_id)
        self._ended[session_id] = None
        self._ended.move_to_end(session_id)
        while len(self._ended) > self.cache_max:
            self._ended.popitem(last=False)

    def _remember_live(self, session_id: uuid.UUID, username: str, validated_at: float) -> None:
        entry = self._live.get(session_id)
        if entry is None:
            # New here: last_seen_at moves at its first use (the database skips it when it
            # moved lately).
            entry = _Live(username, validated_at, float("-inf"))
            self._live[session_id] = entry
        entry.validated_at = validated_at
        self._live.move_to_end(session_id)
        while len(self._live) > self.cache_max:
            old, _ = self._live.popitem(last=False)
            self._seen.discard(old)

    def ended(self, session_ids: Iterable[uuid.UUID]) -> None:
        """These sessions have ended (committed): forget them here and close their sockets
        now; other instances learn it from their poll."""
        for session_id in session_ids:
            self._remember_ended(session_id)
            for socket in self._sockets.pop(session_id, ()):
                socket.close(CLOSE_POLICY, "session ended: log in again")

    async def check(self, session_id: uuid.UUID, username: str) -> bool:
        """Whether `session_id` is a live session of `username`. From memory while that is
        fresh (module docstring), else one query; raises Unavailable when it must ask and
        the database cannot answer."""
        now = time.monotonic()
        entry = self._live.get(session_id)
        if entry is not None:
            if entry.username != username:
                return False
            fresh = now - max(entry.validated_at, self._polled_at) < self.fresh_seconds
            if fresh and now - entry.validated_at < self.revalidate_seconds:
                self._live.move_to_end(session_id)
                due = now - entry.seen_at >= SEEN_INTERVAL_SECONDS
                if due and len(self._seen) < self.cache_max:
                    entry.seen_at = now
                    self._seen.add(session_id)
                return True
        elif session_id in self._ended:
            return False
        return await self._validate(session_id, username, now)

    async def _validate(self, session_id: uuid.UUID, username: str, started: float) -> bool:
        async with driver_reading(self._engine) as driver:
            row = await driver.fetchrow(
                "SELECT username, ended_at FROM sessions WHERE id = $1", session_id
            )
        if row is None or row[1] is not None:
            # Ended, or never was (or purged, long expired): either way it never comes back.
            self._remember_ended(session_id)
            return False
        if row[0] != username:
            return False
        if session_id in self._ended:
            return False  # a poll saw it end while this query ran
        self._remember_live(session_id, username, started)
        return True

    # -- sockets -------------------------------------------------------------------------

    def attach(self, session_id: uuid.UUID, socket: Closable) -> bool:
        """Close `socket` (1008) when its session ends; False if it has already ended."""
        if session_id in self._ended:
            return False
        self._sockets.setdefault(session_id, set()).add(socket)
        return True

    def detach(self, session_id: uuid.UUID, socket: Closable) -> None:
        sockets = self._sockets.get(session_id)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self._sockets[session_id]

    # -- changes -------------------------------------------------------------------------

    async def create(self, username: str, user_agent: str | None) -> uuid.UUID | None:
        """A new session for `username`; None when the user is banned (or gone). A user
        keeps at most `max_per_user` live sessions: the oldest beyond end here."""
        session_id = uuid.uuid4()
        async with writing(self._engine) as conn:
            state = await lock_user(conn, username)
            if state is None or state[1]:
                return None
            await conn.execute(
                text("INSERT INTO sessions (id, username, user_agent) VALUES (:id, :u, :ua)"),
                {"id": session_id, "u": username, "ua": bounded_user_agent(user_agent)},
            )
            result = await conn.execute(
                text(
                    "UPDATE sessions SET ended_at = now() WHERE id IN ("
                    "  SELECT id FROM sessions WHERE username = :u AND ended_at IS NULL"
                    "  ORDER BY created_at DESC, id OFFSET :keep) RETURNING id"
                ),
                {"u": username, "keep": self.max_per_user},
            )
            pushed_out = [_uuid(row[0]) for row in result]
        self._remember_live(session_id, username, time.monotonic())
        self.ended(pushed_out)
        return session_id

    async def end(self, session_id: uuid.UUID, username: str) -> bool:
        """End one live session of `username`; False when there is none such. Answers once
        every instance refuses it (`settle`)."""
        async with writing(self._engine) as conn:
            ended = await conn.scalar(
                text(
                    "UPDATE sessions SET ended_at = now() "
                    "WHERE id = :id AND username = :u AND ended_at IS NULL RETURNING id"
                ),
                {"id": session_id, "u": username},
            )
        if ended is None:
            return False
        self.ended([session_id])
        await self.settle()
        return True

    async def end_all(self, username: str) -> list[uuid.UUID]:
        """End every session of `username`; answers once every instance refuses them."""
        async with writing(self._engine) as conn:
            if await lock_user(conn, username) is None:
                return []
            ended = await end_all_of(conn, username)
        self.ended(ended)
        await self.settle()
        return ended

    async def settle(self) -> None:
        """Wait until every instance that reaches the database refuses what ended before
        this call: by then each has either polled since, or stopped trusting its cache."""
        await asyncio.sleep(self.fresh_seconds)

    async def live(self, username: str) -> list[SessionInfo]:
        """The user's live sessions (not ended, token not expired), newest first, at most
        LISTED_MAX."""
        async with reading(self._engine) as conn:
            result = await conn.execute(
                text(
                    "SELECT id, created_at, last_seen_at, user_agent FROM sessions "
                    "WHERE username = :u AND ended_at IS NULL "
                    "AND created_at > now() - make_interval(secs => :ttl) "
                    "ORDER BY created_at DESC, id LIMIT :limit"
                ),
                {"u": username, "ttl": self._ttl, "limit": LISTED_MAX},
            )
            return [SessionInfo(_uuid(row[0]), *row[1:]) for row in result]

    # -- the poll ------------------------------------------------------------------------

    async def poll(self) -> None:
        """Learn which sessions ended since the previous poll (module docstring)."""
        started = time.monotonic()
        async with reading(self._engine) as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT now(), array(SELECT id FROM sessions WHERE ended_at > "
                        "coalesce(CAST(:since AS timestamptz), now() - make_interval(secs => "
                        ":overlap)))"
                    ),
                    {"since": self._since, "overlap": OVERLAP_SECONDS},
                )
            ).one()
        polled, ended = row[0], row[1]
        self.ended(_uuid(i) for i in ended)
        self._since = polled - timedelta(seconds=OVERLAP_SECONDS)
        self._polled_at = started

    async def _write_seen(self) -> None:
        ids, self._seen = list(self._seen), set()
        async with writing(self._engine) as conn:
            await conn.execute(
                text(
                    "UPDATE sessions SET last_seen_at = now() WHERE id = ANY(:ids) "
                    "AND ended_at IS NULL "
                    "AND last_seen_at < now() - make_interval(secs => :interval)"
                ),
                {"ids": ids, "interval": SEEN_INTERVAL_SECONDS / 2},
            )

    async def purge(self) -> int:
        """Delete a batch of rows nothing needs any more; how many."""
        async with writing(self._engine) as conn:
            result = await conn.execute(
                text(
                    "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions "
                    "WHERE ended_at < now() - make_interval(secs => :keep) "
                    "OR created_at < now() - make_interval(secs => :expired) LIMIT :batch)"
                ),
                {
                    "keep": KEEP_ENDED.total_seconds(),
                    "expired": self._ttl + KEEP_ENDED.total_seconds(),
                    "batch": PURGE_BATCH,
                },
            )
            return result.rowcount or 0

    async def _run(self) -> None:
        failing_since: float | None = None
        next_purge = time.monotonic() + random.uniform(0, PURGE_SECONDS)
        while True:
            try:
                await self.poll()
                if self._seen:
                    await self._write_seen()
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_SECONDS
                    await self.purge()
                if failing_since is not None:
                    log.warning("sessions: the database answers again; ended sessions caught up")
                    failing_since = None
            except Unavailable as error:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning(
                        "sessions: cannot poll (%s); cached sessions are checked against the "
                        "database until it answers",
                        error,
                    )
            except Exception:
                log.exception("sessions: poll failed")
            await asyncio.sleep(self.poll_seconds)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sessions")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
