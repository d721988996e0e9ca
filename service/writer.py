"""The batch writer: every pending send of the instance, committed together.

One task takes every waiting send (from all sockets and REST posts) and stores them with one
call to the store (one statement, one transaction, one round trip with PostgreSQL: see
service/sql/post_messages.sql), so a notification exists if and only if its messages do. A
send that arrives while nothing is committing goes at once; the ones that arrive meanwhile
form the next batch. This is what lifts the write path above PostgreSQL's one-NOTIFY-per-
commit ceiling (FACTS.md). A message that fails alone (not an outage) is retried alone, so
it cannot fail its batch-mates.

`unavailable` means nothing was stored. When the database goes away after a batch was sent,
its outcome is unknown: a recovery task reads it back (each batch records its outcome in
the same transaction, under an id of its own) once the database answers, and only then are
its senders answered: acked if it committed, `unavailable` if not. Meanwhile the writer
goes on with later batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from . import metrics
from .db import OutcomeUnknown, Unavailable
from .store import Item, Outcome, Store, Stored

log = logging.getLogger(__name__)

# How long a batch's recorded outcome is kept: far longer than any recovery takes.
OUTCOME_KEPT = timedelta(minutes=10)
_FORGET_EVERY_SECONDS = 60.0
_RECOVERY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

# Called after each commit with the outcomes that stored something new (messages and other
# events) and the notifications still to publish (those that could not ride the
# transaction).
OnCommit = Callable[[list[Outcome], list[str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Pending:
    draft: Item
    future: asyncio.Future[Outcome]

    def fail(self, error: BaseException) -> None:
        # A future may be done already: a REST caller that went away cancels the one it
        # awaited.
        if not self.future.done():
            self.future.set_exception(error)


class MessageWriter:
    """Stores the room log's events (messages, edits, deletes, reactions) in batches.
    `submit` returns a future that resolves after commit."""

    def __init__(
        self,
        store: Store,
        *,
        channel: str | None,
        on_commit: OnCommit,
        batch_max: int = 500,
        queue_max: int = 10_000,
    ) -> None:
        self._store = store
        self._channel = channel
        self._on_commit = on_commit
        self._batch_max = batch_max
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(queue_max)
        self._task: asyncio.Task[None] | None = None
        self._recoveries: set[asyncio.Task[None]] = set()
        self._forgetter: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def depth(self) -> int:
        """Sends waiting for a transaction."""
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="message-writer")
        self._forgetter = asyncio.create_task(self._forget_old_outcomes(), name="writer-forget")

    async def stop(self, timeout: float) -> None:
        """Finish what was submitted (each send is acked or failed), then stop."""
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            log.warning("writer stopped with %d sends pending", self._queue.qsize())
        if self._recoveries:
            # Batches whose outcome is not known yet: give them the rest of the grace.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*self._recoveries, return_exceptions=True)
        tasks = [t for t in [self._task, self._forgetter, *self._recoveries] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._stopped = True
        while not self._queue.empty():
            self._queue.get_nowait().fail(Unavailable("shutting down"))

    async def submit(self, draft: Item) -> asyncio.Future[Outcome]:
        """Queue a validated message or change; waits only when the queue is full
        (back-pressure)."""
        if self._stopped:
            raise Unavailable("shutting down")
        pending = _Pending(draft, asyncio.get_running_loop().create_future())
        await self._queue.put(pending)
        if self._stopped:  # queued after stop() emptied the queue: nobody will store it
            pending.fail(Unavailable("shutting down"))
        return pending.future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                # Stopped past the grace period with this batch in flight: its outcome is not
                # known, and nobody will learn it here. Never leave a sender waiting, and
                # never tell it `unavailable`: it learns on reconnecting (with its client_id,
                # a retry of a stored message answers duplicate).
                for pending in batch:
                    pending.fail(OutcomeUnknown("shutting down with the outcome unknown"))
                raise
            except Exception:  # never let one bad batch stop the writer
                log.exception("writer batch failed")
                for pending in batch:
                    pending.fail(RuntimeError("internal error"))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        drafts = [p.draft for p in batch]
        batch_id = uuid.uuid4()
        try:
            stored = await self._store.store(drafts, self._channel, batch_id)
        except OutcomeUnknown:
            metrics.WRITE_OUTCOMES_UNKNOWN.inc()
            task = asyncio.create_task(self._recover(batch, batch_id), name="writer-recovery")
            self._recoveries.add(task)
            task.add_done_callback(self._recoveries.discard)
            return
        except Unavailable as error:
            for pending in batch:
                pending.fail(error)
            return
        except Exception as error:
            if len(batch) == 1:
                log.exception("could not store a message")
                batch[0].fail(error)
                return
            # Isolate the culprit: one bad message must not fail its batch-mates.
            for pending in batch:
                await self._commit([pending])
            return
        metrics.WRITE_BATCH_SIZE.observe(len(batch))
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        await self._resolve(batch, stored)

    async def _resolve(self, batch: list[_Pending], stored: Stored) -> None:
        for pending, posted in zip(batch, stored.posted, strict=True):
            if not pending.future.done():
                pending.future.set_result(posted)
        fresh = [p for p in stored.posted if not p.duplicate and not p.refused]
        if fresh:
            await self._on_commit(fresh, stored.payloads)

    async def _recover(self, batch: list[_Pending], batch_id: uuid.UUID) -> None:
        """Learn whether `batch` committed, trying until the database answers; then answer
        its senders. Cancelled (shutdown), they are told the outcome is unknown."""
        drafts = [p.draft for p in batch]
        attempt = 0
        try:
            while True:
                try:
                    stored = await self._store.recover(drafts, batch_id)
                    break
                except Unavailable:
                    await asyncio.sleep(_RECOVERY_DELAYS[min(attempt, len(_RECOVERY_DELAYS) - 1)])
                    attempt += 1
        except asyncio.CancelledError:
            for pending in batch:
                pending.fail(OutcomeUnknown("shutting down with the outcome unknown"))
            raise
        if stored is None:
            for pending in batch:
                pending.fail(Unavailable("the database went away; nothing was stored"))
            return
        log.info("a batch whose reply was lost had committed; its %d sends acked", len(batch))
        # Its notifications were sent in the transaction, or (another backend) are lost with
        # the reply: other instances catch up by their resync.
        await self._resolve(batch, stored)

    async def _forget_old_outcomes(self) -> None:
        """Every _FORGET_EVERY_SECONDS, in a task of its own: never in a batch's way (it was
        once a minute before a batch, a transaction of its own that the batch waited for)."""
        while True:
            await asyncio.sleep(_FORGET_EVERY_SECONDS)
            try:
                await self._store.forget_batches(datetime.now(UTC) - OUTCOME_KEPT)
            except Exception as error:  # kept a little longer; tried again next time
                log.warning("could not forget old batch outcomes: %s", error)
