"""Search over the whole history (PROTOCOL.md, `GET /api/search`), served by PostgreSQL alone:
the messages matching a query (service/search_text.py makes its `tsquery`) in the rooms a
user may read, newest first, a page at a time.

The caller's rooms are read again on every page, so a removed member stops finding a room
at once. A page is the newest `limit` by (created_at, room_id, seq), a keyset the opaque
cursor carries, found one of two ways:

- **the walk**: each room's primary key read back from its newest message in windows of
  seqs, all rooms a window at a time (one statement a round), each window checked against
  the query. Within a room created_at follows seq, so the rows not yet read in a room are
  older than the oldest one read there; once `limit` matches are newer than every room's
  unread rest, they are the page. Rooms that cannot hold a newer match stop; the others
  read a next window sized to the matches still missing, at most four times the last. For
  a word in many messages this reads a few rows per match wanted, whatever the size of the
  table or of the rooms.
- **the index**: every match in the rooms through the GIN index of the lexemes (ANDed with
  the primary key's ranges of the rooms), then the newest. Its cost follows the word's
  postings in the whole table, however few of them are in the caller's rooms.

A search compares what walking would cost (the matches wanted over their density) with what
the index would (its fixed cost plus the postings that density gives the whole table). Before
any walking the density is the share of messages the planner's statistics give the query's
rarest word (pg_stats keeps the commonest lexemes of the table with their shares), so a rare
word goes to the index at once; otherwise the walk starts (first windows of _PROBE rows in
all), and after each round the density is what the walk met, the statistics' share counting
as one match more, and it switches when the index is cheaper, or once the walk has cost what
the index would. The planner cannot make this choice itself: the walk is rounds of
statements, not a plan. bench/search.py measures both at 1M and 10M.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import writing
from .members import _cursor_time, _decode_cursor, _encode_cursor
from .protocol import MAX_SEQ, StoredMessage
from .ratelimit import KeyedLimiter, RateLimited
from .refusals import Invalid
from .search_text import parse_query
from .store import _message

MAX_LIMIT = 100

# The emoji :user reacted with on each of the messages (rooms[i], seqs[i]).
_MINE = text(
    "SELECT x.room_id, x.seq, x.emoji FROM unnest(CAST(:rooms AS bigint[]),"
    " CAST(:seqs AS bigint[])) AS t (room_id, seq) JOIN reactions x"
    " ON x.room_id = t.room_id AND x.seq = t.seq AND x.username = :user"
)
_COLUMNS = (
    "m.seq, m.author, m.body, m.client_id, m.created_at, m.reply_to, m.edited_at, m.deleted,"
    " m.version, m.reactions"
)
# Custom plans: the best plan depends on how common the words are, which a generic plan of
# a prepared statement cannot know. The timeout bounds what one request can cost. Memory for
# the bitmaps of the GIN path: at the default 4 MB, the bitmap of a word in a few percent of
# 10M messages turns lossy and the heap scan rechecks every row of a million pages (0.62 s
# against 0.33 s exact, bench/search.py's words at 10M); a search holds one of at most
# `max_concurrent_searches` connections (SearchGate), so this is bounded per instance. JIT
# compilation costs more than the walk it would speed up (17 ms of a 360 ms walk).
# The same statement answers the messages in the table (the planner's count, kept by
# ANALYZE and autovacuum), which the choice between the walk and the index needs.
_SETTINGS = text(
    "SELECT set_config('plan_cache_mode', 'force_custom_plan', true),"
    " set_config('statement_timeout', :timeout, true),"
    " set_config('work_mem', '64MB', true), set_config('jit', 'off', true),"
    " (SELECT reltuples FROM pg_class WHERE oid = 'messages'::regclass) AS table_rows"
)
# Checked on every page: the rooms the caller is a member of now, and how long their logs
# are (an upper bound of their messages).
_MY_ROOMS = text(
    "SELECT r.id, r.name, r.last_seq FROM members m JOIN rooms r ON r.id = m.room_id"
    " WHERE m.username = :user"
)
_ONE_ROOM = text("SELECT id, name, last_seq FROM rooms WHERE id = :room_id")
_MATCHES = "m.room_id = ANY(CAST(:rooms AS bigint[])) AND m.search @@ CAST(:q AS tsquery)"
_AFTER = "(m.created_at, m.room_id, m.seq) < (:at, :room_id, :seq)"
_ORDER = "ORDER BY m.created_at DESC, m.room_id DESC, m.seq DESC LIMIT :limit"
# The index: every match in the rooms through the GIN index, then the newest.
_FIND = text(f"SELECT m.room_id, {_COLUMNS} FROM messages m WHERE {_MATCHES} AND {_AFTER} {_ORDER}")
# The walk's round: for each room, its matches among seqs lo..hi (by the primary key: the
# GIN index would read the word's postings once per room), and the created_at of the oldest
# message there (the frontier: every message of the room below lo is older). OFFSET 0 keeps
# the planner from flattening the windows into one join over the whole table (a hash join
# of a sequential scan, which it chose for a word of every message in a small table).
_WINDOWS = text(
    f"SELECT m.room_id, {_COLUMNS}, w.room AS window, f.created_at AS frontier"
    " FROM unnest(CAST(:rooms AS bigint[]), CAST(:lo AS bigint[]), CAST(:hi AS bigint[]))"
    " AS w (room, lo, hi)"
    " LEFT JOIN LATERAL (SELECT f.created_at FROM messages f WHERE f.room_id = w.room"
    " AND f.seq BETWEEN w.lo AND w.hi ORDER BY f.seq LIMIT 1) AS f ON true"
    f" LEFT JOIN LATERAL (SELECT m.room_id, {_COLUMNS} FROM messages m WHERE m.room_id = w.room"
    " AND m.seq BETWEEN w.lo AND w.hi AND m.search @@ CAST(:q AS tsquery) OFFSET 0) AS m ON true"
)
# For a page after the first: in each room, the message at or before seqs at doubling
# distances from the newest, so the walk can start near the cursor's time instead of
# reading again every message newer than it (at most as many as it skips).
_SEEK = text(
    "SELECT p.room, f.seq, f.created_at"
    " FROM unnest(CAST(:rooms AS bigint[]), CAST(:seqs AS bigint[])) AS p (room, at_seq)"
    " CROSS JOIN LATERAL (SELECT m.seq, m.created_at FROM messages m WHERE m.room_id = p.room"
    " AND m.seq <= p.at_seq ORDER BY m.seq DESC LIMIT 1) AS f"
)
# The lexemes' statistics that ANALYZE (autovacuum's too) keeps for the planner: the
# commonest lexemes (ten times the statistics target: 1,000 by default), each with the share
# of the messages that hold it, then the least and the greatest of those shares.
_LEXEME_STATS = text(
    "SELECT CAST(CAST(most_common_elems AS text) AS text[]) AS lexemes,"
    " most_common_elem_freqs AS shares FROM pg_stats WHERE schemaname = current_schema()"
    " AND tablename = 'messages' AND attname = 'search'"
)
_STATS_SECONDS = 60.0  # how long a Search trusts the statistics it read
_ITEM = re.compile(r"'([^']*)'(:\*)?")  # a lexeme of a tsquery literal, and whether a prefix
_BY_KEY = text("SELECT set_config('enable_bitmapscan', 'off', true)")
_BY_INDEX = text("SELECT set_config('enable_bitmapscan', 'on', true)")
_FIRST = (datetime.max.replace(tzinfo=UTC), 0, 0)

# What the two ways cost, in rows walked (bench/search.py, 10M messages in 5,000 rooms, a
# user in 50: a walked row 3.7 us, the index 10 ms plus 0.75 us a posting of the word).
_PROBE = 800  # the rows of the first windows, all rooms together (16 each for 50 rooms)
_PROBE_MAX = 64  # the first window of a room at most
_GROWTH = 4  # each next window of a room that goes on, against the last
_INDEX_FIXED = 2700.0
_INDEX_PER_POSTING = 0.2


@dataclass(frozen=True, slots=True)
class LexemeShares:
    """The statistics' commonest lexemes (sorted) with the share of messages holding each,
    and the least of those shares: a lexeme not listed is in about that share or fewer."""

    lexemes: list[str]
    shares: list[float]
    least: float

    @classmethod
    def of(cls, lexemes: Sequence[str] | None, shares: Sequence[float] | None) -> LexemeShares:
        """From pg_stats' most_common_elems and most_common_elem_freqs (the shares of the
        lexemes, then their least and greatest); empty when ANALYZE has not run yet."""
        if not lexemes or not shares or len(shares) < len(lexemes) + 2:
            return _NO_SHARES
        ordered = sorted(zip(lexemes, shares, strict=False))
        least = float(shares[len(lexemes)])
        return cls([k for k, _ in ordered], [float(v) for _, v in ordered], max(least, 1e-9))

    def share(self, tsquery: str) -> float | None:
        """At most what share of the messages match `tsquery` (search_text.parse_query's:
        its lexemes are all required), or None without statistics. A prefix's share is
        the sum of its listed lexemes' (those not listed are left out: a rare word's
        share stays its own), or the least share when none is listed."""
        if not self.lexemes:
            return None
        bound = 1.0
        for lexeme, prefix in _ITEM.findall(tsquery):
            at = bisect.bisect_left(self.lexemes, lexeme)
            if prefix:
                upto = bisect.bisect_left(self.lexemes, lexeme + "\U0010ffff", at)
                share = math.fsum(self.shares[at:upto]) or self.least
            elif at < len(self.lexemes) and self.lexemes[at] == lexeme:
                share = self.shares[at]
            else:
                share = self.least
            bound = min(bound, share)
        return bound


_NO_SHARES = LexemeShares([], [], 1.0)  # no statistics (before ANALYZE): share() is None


def density(matches: int, walked: int, prior: float | None = None) -> float:
    """The share of messages that match, after walking `walked` rows and meeting `matches`
    (newer than the cursor or not); one more than seen, so that a first window with a
    match or two does not take a word of one message in two hundred for a rare one. With
    the statistics' share (`prior`), that one more is spread over the rows the share says
    one match takes: before any walking the density is the share, and what is walked
    outweighs it as it grows (the caller's rooms need not be like the whole table)."""
    if prior is None:
        return (matches + 1) / max(walked, 1)
    return (matches + 1) / (walked + 1 / prior)


def index_is_cheaper(
    matches: int, walked: int, wanted: int, table_rows: float, prior: float | None = None
) -> bool:
    """Whether the index would cost less than walking on for `wanted` more matches, or
    less than the walk has cost already. The second bounds what no density foresees: a room
    of many messages newer than the matches, none of them matching, is read through before
    the page is known; stopping there keeps a search within twice the index's cost."""
    share = density(matches, walked, prior)
    index = _INDEX_FIXED + _INDEX_PER_POSTING * share * table_rows
    return index < wanted / share or index < walked


@dataclass(slots=True)
class _Walk:
    """One room's walk: the newest seq not read yet, the next window's length, and a key
    above every unread message's."""

    hi: int
    size: int
    bound: tuple[datetime, int, int]


class SearchesBusy(Exception):
    """As many searches run on this instance as may, and none finished in time: nothing was
    done; try again shortly (503)."""


class SearchGate:
    """What searching may cost: each user's bucket (past it, RateLimited: 429), and at most
    `concurrent` searches at once on this instance (each holds a pooled connection for up to
    the statement timeout); the others wait up to `wait_seconds`, then SearchesBusy."""

    def __init__(self, rate: float, burst: int, concurrent: int, wait_seconds: float) -> None:
        self._limiter = KeyedLimiter(rate, burst)
        self._slots = asyncio.Semaphore(concurrent)
        self._wait = wait_seconds

    @asynccontextmanager
    async def admit(self, user: str) -> AsyncIterator[None]:
        wait_ms = self._limiter.take(user)
        if wait_ms:
            raise RateLimited(wait_ms, "searching too fast; try again later")
        try:
            async with asyncio.timeout(self._wait):
                await self._slots.acquire()
        except TimeoutError:
            raise SearchesBusy from None
        try:
            yield
        finally:
            self._slots.release()


@dataclass(frozen=True, slots=True)
class Results:
    messages: list[StoredMessage]
    next_cursor: str | None
    # How they were found: the walk's rounds and the rows it read, and whether the index
    # finished the search (bench/search.py reports them).
    rounds: int = 0
    walked: int = 0
    by_index: bool = False


def _position(cursor: str | None) -> tuple[datetime, int, int]:
    if cursor is None:
        return _FIRST
    stamp, room_id, seq = _decode_cursor(cursor, "search", (str, int, int))
    if not (0 <= room_id <= MAX_SEQ and 0 <= seq <= MAX_SEQ):  # bigints, both
        raise Invalid("cursor is not one this list gave")
    return _cursor_time(stamp), room_id, seq


class Search:
    """Messages matching a query in the rooms a user may read, newest first."""

    def __init__(self, engine: AsyncEngine, timeout_ms: int = 5000) -> None:
        self._engine = engine
        self._timeout = str(timeout_ms)
        self._shares = _NO_SHARES
        self._shares_until = 0.0  # time.monotonic() when they are read again

    async def _lexeme_shares(self, conn: AsyncConnection) -> LexemeShares:
        """The statistics of the lexemes, read again once a minute (ANALYZE changes them)."""
        if time.monotonic() >= self._shares_until:
            row = (await conn.execute(_LEXEME_STATS)).first()
            self._shares = LexemeShares.of(*row) if row else _NO_SHARES
            self._shares_until = time.monotonic() + _STATS_SECONDS
        return self._shares

    async def find(
        self,
        user: str,
        q: str,
        *,
        room_id: int | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> Results:
        """The page after `cursor` of the messages matching `q` (parse_query) in the rooms
        `user` is a member of, or in `room_id` alone (the caller checked that `user` may read
        it). Invalid for a query without words or a cursor this did not give."""
        query = parse_query(q)
        position = _position(cursor)
        async with writing(self._engine) as conn:
            settings = (await conn.execute(_SETTINGS, {"timeout": self._timeout})).one()
            if room_id is None:
                heads = (await conn.execute(_MY_ROOMS, {"user": user})).all()
            else:
                heads = (await conn.execute(_ONE_ROOM, {"room_id": room_id})).all()
            rows: Sequence[Any] = []
            walk = _Walked()
            if heads:
                table_rows = max(float(settings.table_rows), sum(r.last_seq for r in heads))
                prior = (await self._lexeme_shares(conn)).share(query)
                walk = await _walked(conn, heads, query, position, limit + 1, table_rows, prior)
                if walk.found is None:
                    at, after_room, after_seq = position
                    params = {
                        "rooms": [r.id for r in heads], "q": query, "at": at,
                        "room_id": after_room, "seq": after_seq, "limit": limit + 1,
                    }  # fmt: skip
                    await conn.execute(_BY_INDEX)
                    rows = (await conn.execute(_FIND, params)).all()
                else:
                    rows = walk.found
            names = {r.id: r.name for r in heads}
            messages = await _addressed(conn, user, names, rows[:limit])
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _encode_cursor(
                "search", [last.created_at.isoformat(), int(last.room_id), int(last.seq)]
            )
        by_index = bool(heads) and walk.found is None
        return Results(messages, next_cursor, walk.rounds, walk.rows, by_index)


def _key(row: Any) -> tuple[datetime, int, int]:
    return (row.created_at, row.room_id, row.seq)


@dataclass(slots=True)
class _Walked:
    """What a walk found (None: the index will), in how many rounds, reading how many rows."""

    found: list[Any] | None = None
    rounds: int = 0
    rows: int = 0


async def _walked(
    conn: AsyncConnection,
    heads: Sequence[Any],
    query: str,
    position: tuple[datetime, int, int],
    wanted: int,
    table_rows: float,
    prior: float | None,
) -> _Walked:
    """The newest `wanted` matches older than `position`, walking the rooms back (the
    module's docstring); found None as soon as the index would cost less than walking on,
    before the first round if the statistics' share (`prior`) says so."""
    if prior is not None and index_is_cheaper(0, 0, wanted + 1, table_rows, prior):
        return _Walked(None, 0, 0)
    first = min(_PROBE_MAX, max(2, _PROBE // len(heads)))
    walks = {
        int(r.id): _Walk(r.last_seq, first, (_FIRST[0], int(r.id), r.last_seq + 1))
        for r in heads
        if r.last_seq > 0
    }
    found: list[Any] = []
    matches = walked = 0
    todo = list(walks)
    await conn.execute(_BY_KEY)
    if position != _FIRST:
        await _seek(conn, walks, position[0])
        todo = [room for room, walk in walks.items() if walk.hi > 0]
    rounds = 0
    while todo:
        rounds += 1
        lo = [max(1, walks[r].hi - walks[r].size + 1) for r in todo]
        params = {"rooms": todo, "lo": lo, "hi": [walks[r].hi for r in todo], "q": query}
        frontiers: dict[int, datetime | None] = {}
        for row in (await conn.execute(_WINDOWS, params)).all():
            frontiers[row.window] = row.frontier
            if row.room_id is not None:
                matches += 1
                if _key(row) < position:
                    found.append(row)
        for room, start in zip(todo, lo, strict=True):
            walk = walks[room]
            walked += walk.hi - start + 1
            # No message in the window (its seqs were other events): the old frontier holds.
            walk.bound = (frontiers.get(room) or walk.bound[0], room, start)
            walk.hi = start - 1
        found.sort(key=_key, reverse=True)
        del found[wanted:]
        going = [room for room, walk in walks.items() if walk.hi > 0]
        if len(found) == wanted:
            last = _key(found[-1])  # only a room whose unread rest may be newer goes on
            todo = [room for room in going if walks[room].bound > last]
        else:
            todo = going
        missing = wanted - len(found) + 1
        if todo and index_is_cheaper(matches, walked, missing, table_rows, prior):
            return _Walked(None, rounds, walked)
        # The next windows: what the matches still missing take at the density seen, with
        # half again to spare, shared by the rooms that go on; at most _GROWTH times longer.
        # With the page full, or in a room whose window was all newer than the cursor
        # (nothing in it could count), what is left is reaching a time: _GROWTH times longer.
        share = math.ceil(1.5 * missing / density(matches, walked, prior) / max(len(todo), 1))
        full = len(found) == wanted
        for room in todo:
            walk = walks[room]
            longer = walk.size * _GROWTH
            reaching = full or walk.bound >= position
            walk.size = longer if reaching else max(4, min(share, longer))
    return _Walked(found, rounds, walked)


async def _seek(conn: AsyncConnection, walks: dict[int, _Walk], at: datetime) -> None:
    """Move each room's walk past the messages newer than `at` (none of them can be on the
    page after a cursor at `at`), found by probing seqs at doubling distances back."""
    rooms, seqs = [], []
    for room, walk in walks.items():
        distance = 1
        while distance <= walk.hi:
            rooms.append(room)
            seqs.append(walk.hi - distance + 1)
            distance *= 2
    for row in (await conn.execute(_SEEK, {"rooms": rooms, "seqs": seqs})).all():
        walk = walks[row.room]
        if row.created_at > at and row.seq <= walk.hi:
            # This message and every later one of the room are newer than the cursor.
            walk.hi = row.seq - 1
            walk.bound = (row.created_at, row.room, row.seq)


async def _addressed(
    conn: AsyncConnection, user: str, names: dict[int, str], rows: Sequence[Any]
) -> list[StoredMessage]:
    """The rows as messages addressed to `user` (with `me`), in their order: the emoji the
    user reacted with are read in one statement for the rows that have reactions."""
    reacted = [row for row in rows if row.reactions is not None]
    mine: dict[tuple[int, int], set[str]] = {}
    if reacted:
        params = {
            "rooms": [row.room_id for row in reacted],
            "seqs": [row.seq for row in reacted],
            "user": user,
        }
        for room_id, seq, emoji in (await conn.execute(_MINE, params)).all():
            mine.setdefault((room_id, seq), set()).add(emoji)
    return [
        _message(names[row.room_id], row[1:11], frozenset(mine.get((row.room_id, row.seq), ())))
        for row in rows
    ]
