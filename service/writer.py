"""The batch writer: every pending send of the instance, committed together.

One task takes every waiting send (from all sockets and REST posts) and stores them with one
call to the store (one statement, one transaction, one round trip with PostgreSQL: see
service/sql/post_messages.sql), so a notification exists if and only if its messages do. A
send that arrives while nothing is committing goes at once; the ones that arrive meanwhile
form the next batch. This is what lifts the write path above PostgreSQL's one-NOTIFY-per-
commit ceiling (FACTS.md). A message that fails alone (not an outage) is retried alone, so
it cannot fail its batch-mates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import metrics
from .db import Unavailable
from .store import Draft, Posted, Store

log = logging.getLogger(__name__)

# Called after each commit with the new messages and the notifications still to publish
# (those that could not ride the transaction).
OnCommit = Callable[[list[Posted], list[str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Pending:
    draft: Draft
    future: asyncio.Future[Posted]

    def fail(self, error: BaseException) -> None:
        # A future may be done already: a REST caller that went away cancels the one it
        # awaited.
        if not self.future.done():
            self.future.set_exception(error)


class MessageWriter:
    """Stores messages in batches. `submit` returns a future that resolves after commit."""

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
            self._queue.get_nowait().fail(Unavailable("shutting down"))

    async def submit(self, draft: Draft) -> asyncio.Future[Posted]:
        """Queue a validated message; waits only when the queue is full (back-pressure)."""
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
                # known, and nobody will learn it. Never leave a sender waiting: it retries
                # (with its client_id, a retry of a stored message answers duplicate).
                for pending in batch:
                    pending.fail(Unavailable("shutting down"))
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
        try:
            stored = await self._store.store([p.draft for p in batch], self._channel)
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
        for pending, posted in zip(batch, stored.posted, strict=True):
            if not pending.future.done():
                pending.future.set_result(posted)
        fresh = [p for p in stored.posted if not p.duplicate]
        if fresh:
            await self._on_commit(fresh, stored.payloads)
