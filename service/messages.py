"""What happens to a message: queued, committed in a batch with its seq, acknowledged, fanned out.

One writer task per instance takes every pending send (from all sockets and REST posts) and
commits them together with one statement (chat_post_messages, migration 0002), one
transaction and one round trip: it locks the rooms involved, assigns each room's next seqs,
inserts the rows and issues the notifications, so a notification exists if and only if its
messages do. A send that arrives while nothing is committing goes at once; the ones that
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
from sqlalchemy.ext.asyncio import AsyncEngine

from . import metrics
from .db import Unavailable, is_outage, reading
from .fanout import Fanout
from .history import StoredMessage

log = logging.getLogger(__name__)

# One round trip, one implicit transaction: lock the rooms, find repeated client_ids, number
# and insert the new rows, advance the rooms, NOTIFY (migrations/versions/0002).
_POST = text(
    "SELECT seqs, created, repeated, stored_bodies, payloads FROM chat_post_messages("
    "CAST(:rooms AS bigint[]), CAST(:authors AS text[]), CAST(:bodies AS text[]),"
    " CAST(:cids AS text[]), CAST(:channel AS text))"
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
        # A client_id sent twice in one batch is stored once: the later sends repeat the
        # first (`owner[i]` is the index, among the unique sends, of the one that stores i).
        unique: list[_Draft] = []
        owner: list[int] = []
        first: dict[tuple[int, str, str], int] = {}
        for draft in batch:
            if draft.client_id is None:
                owner.append(len(unique))
                unique.append(draft)
                continue
            key = (draft.room_id, draft.author, draft.client_id)
            index = first.setdefault(key, len(unique))
            if index == len(unique):
                unique.append(draft)
            owner.append(index)
        async with reading(self._engine) as conn:
            row = (
                await conn.execute(
                    _POST,
                    {
                        "rooms": [d.room_id for d in unique],
                        "authors": [d.author for d in unique],
                        "bodies": [d.body for d in unique],
                        "cids": [d.client_id for d in unique],
                        "channel": self._fanout.notify_channel,
                    },
                )
            ).one()
        stored = [
            StoredMessage(d.room, seq, d.author, body if again else d.body, d.client_id, at)
            for d, seq, at, again, body in zip(
                unique, row.seqs, row.created, row.repeated, row.stored_bodies, strict=True
            )
        ]
        results = [
            Posted(
                draft.room_id,
                stored[index],
                row.repeated[index] or unique[index] is not draft,
            )
            for draft, index in zip(batch, owner, strict=True)
        ]
        return results, list(row.payloads)
