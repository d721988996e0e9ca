"""What happens to a message: queued, committed in a batch with its seq, acknowledged, fanned out.

One writer task per instance takes every pending send (from all sockets and REST posts) and
commits them together: one transaction locks the rooms involved, assigns each room's next
seqs, inserts the rows and issues the notifications, so a notification exists if and only if
its messages do. A send that arrives while nothing is committing goes at once; the ones that
arrive meanwhile form the next batch. This is what lifts the write path above PostgreSQL's
one-NOTIFY-per-commit ceiling (see FACTS.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import metrics, notifications
from .db import Unavailable, is_outage
from .fanout import Fanout
from .history import StoredMessage

log = logging.getLogger(__name__)

_LOCK_ROOMS = text(
    "SELECT id, last_seq FROM rooms WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id FOR UPDATE"
)
_FIND_REPEATS = text(
    "SELECT m.room_id, m.author, m.client_id, m.seq, m.body, m.created_at FROM messages m "
    "JOIN unnest(CAST(:rooms AS bigint[]), CAST(:authors AS text[]), CAST(:cids AS text[])) "
    "AS k(room_id, author, client_id) "
    "ON m.room_id = k.room_id AND m.author = k.author AND m.client_id = k.client_id "
    "WHERE m.client_id IS NOT NULL"
)
# statement_timestamp() runs after the rooms are locked, so created_at follows seq order.
_INSERT = text(
    "WITH ins AS ("
    " INSERT INTO messages (room_id, seq, author, body, client_id, created_at)"
    " SELECT r, s, a, b, c, statement_timestamp() FROM unnest("
    "  CAST(:r AS bigint[]), CAST(:s AS bigint[]), CAST(:a AS text[]),"
    "  CAST(:b AS text[]), CAST(:c AS text[])) AS t(r, s, a, b, c)"
    "), adv AS ("
    " UPDATE rooms SET last_seq = v.seq, last_message_at = statement_timestamp()"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:seqs AS bigint[])) AS v(id, seq)"
    " WHERE rooms.id = v.id"
    ") SELECT statement_timestamp()"
)


@dataclass(frozen=True, slots=True)
class Posted:
    """The outcome of a send: the stored message, and whether it was stored before."""

    room_id: int
    message: StoredMessage
    duplicate: bool


@dataclass(slots=True)
class _Draft:
    room_id: int
    room: str
    author: str
    body: str
    client_id: str | None
    future: asyncio.Future[Posted]


def _fail(draft: _Draft, error: BaseException) -> None:
    # A future may be done already: a REST caller that went away cancels the one it awaited.
    if not draft.future.done():
        draft.future.set_exception(error)


# Called after each commit with the new messages and the notifications still to publish
# (those that could not ride the transaction).
OnCommit = Callable[[list[Posted], list[str]], Awaitable[None]]


class MessageWriter:
    """Stores messages in batches. `submit` returns a future that resolves after commit."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        fanout: Fanout,
        on_commit: OnCommit,
        batch_max: int = 500,
        queue_max: int = 10_000,
    ) -> None:
        self._engine = engine
        self._fanout = fanout
        self._on_commit = on_commit
        self._batch_max = batch_max
        self._queue: asyncio.Queue[_Draft] = asyncio.Queue(queue_max)
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def depth(self) -> int:
        """Sends waiting for a transaction."""
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="message-writer")

    async def stop(self, timeout: float) -> None:
        """Finish what was submitted (each send is acked or failed), then stop."""
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            log.warning("writer stopped with %d sends pending", self._queue.qsize())
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._stopped = True
        while not self._queue.empty():
            _fail(self._queue.get_nowait(), Unavailable("shutting down"))

    async def submit(
        self, room_id: int, room: str, author: str, body: str, client_id: str | None
    ) -> asyncio.Future[Posted]:
        """Queue a validated message; waits only when the queue is full (back-pressure)."""
        if self._stopped:
            raise Unavailable("shutting down")
        future: asyncio.Future[Posted] = asyncio.get_running_loop().create_future()
        draft = _Draft(room_id, room, author, body, client_id, future)
        await self._queue.put(draft)
        if self._stopped:  # queued after stop() emptied the queue: nobody will store it
            _fail(draft, Unavailable("shutting down"))
        return future

    async def post(
        self, room_id: int, room: str, author: str, body: str, client_id: str | None
    ) -> Posted:
        return await (await self.submit(room_id, room, author, body, client_id))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except Exception:  # never let one bad batch stop the writer
                log.exception("writer batch failed")
                for draft in batch:
                    _fail(draft, RuntimeError("internal error"))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[_Draft]) -> None:
        started = time.perf_counter()
        try:
            posted, payloads = await self._store(batch)
        except Exception as error:
            if is_outage(error):
                for draft in batch:
                    _fail(draft, Unavailable(str(error)))
                return
            if len(batch) == 1:
                log.exception("could not store a message")
                _fail(batch[0], error)
                return
            # Isolate the culprit: one bad message must not fail its batch-mates.
            for draft in batch:
                await self._commit([draft])
            return
        metrics.WRITE_BATCH_SIZE.observe(len(batch))
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        for draft, result in zip(batch, posted, strict=True):
            if not draft.future.done():
                draft.future.set_result(result)
        fresh = [p for p in posted if not p.duplicate]
        if fresh:
            await self._on_commit(fresh, payloads)

    async def _store(self, batch: list[_Draft]) -> tuple[list[Posted], list[str]]:
        # Each draft's outcome: a Posted for a repeat of an earlier commit, or the index of
        # the fresh row it stores (or repeats, for a client_id sent twice in one batch).
        outcome: list[Posted | int] = []
        fresh: list[tuple[_Draft, int]] = []
        async with self._engine.begin() as conn:
            # Locked in id order, so concurrent writers (other instances) cannot deadlock.
            locked = await conn.execute(_LOCK_ROOMS, {"ids": sorted({d.room_id for d in batch})})
            last_seq = {row.id: row.last_seq for row in locked}
            earlier = await self._find_repeats(conn, batch)
            in_batch: dict[tuple[int, str, str], int] = {}
            for draft in batch:
                key = (draft.room_id, draft.author, draft.client_id or "")
                if draft.client_id is not None and key in earlier:
                    outcome.append(Posted(draft.room_id, earlier[key], True))
                elif draft.client_id is not None and key in in_batch:
                    outcome.append(in_batch[key])
                else:
                    last_seq[draft.room_id] += 1
                    if draft.client_id is not None:
                        in_batch[key] = len(fresh)
                    outcome.append(len(fresh))
                    fresh.append((draft, last_seq[draft.room_id]))
            stored: list[StoredMessage] = []
            payloads: list[str] = []
            if fresh:
                advanced = {d.room_id: last_seq[d.room_id] for d, _ in fresh}
                created_at = (
                    await conn.execute(
                        _INSERT,
                        {
                            "r": [d.room_id for d, _ in fresh],
                            "s": [seq for _, seq in fresh],
                            "a": [d.author for d, _ in fresh],
                            "b": [d.body for d, _ in fresh],
                            "c": [d.client_id for d, _ in fresh],
                            "ids": list(advanced),
                            "seqs": list(advanced.values()),
                        },
                    )
                ).scalar_one()
                stored = [
                    StoredMessage(d.room, seq, d.author, d.body, d.client_id, created_at)
                    for d, seq in fresh
                ]
                payloads = notifications.encode_messages(
                    (d.room_id, m) for (d, _), m in zip(fresh, stored, strict=True)
                )
                payloads = await self._fanout.notify_in(conn, payloads)
        results: list[Posted] = []
        for draft, result in zip(batch, outcome, strict=True):
            if isinstance(result, int):
                owner = fresh[result][0]
                results.append(Posted(draft.room_id, stored[result], owner is not draft))
            else:
                results.append(result)
        return results, payloads

    @staticmethod
    async def _find_repeats(
        conn: AsyncConnection, batch: list[_Draft]
    ) -> dict[tuple[int, str, str], StoredMessage]:
        keyed = [d for d in batch if d.client_id is not None]
        if not keyed:
            return {}
        rows = await conn.execute(
            _FIND_REPEATS,
            {
                "rooms": [d.room_id for d in keyed],
                "authors": [d.author for d in keyed],
                "cids": [d.client_id for d in keyed],
            },
        )
        rooms = {d.room_id: d.room for d in keyed}
        return {
            (r.room_id, r.author, r.client_id or ""): StoredMessage(
                rooms[r.room_id], r.seq, r.author, r.body, r.client_id, r.created_at
            )
            for r in rows
        }
