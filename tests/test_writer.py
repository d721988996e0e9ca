"""The batch writer (service/writer.py) against the in-memory store: batching, isolation of
a failing message, outages, repeats, and shutdown with nothing left hanging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from service import writer as writer_module
from service.db import OutcomeUnknown, Unavailable
from service.protocol import MessagesNote, decode_note
from service.store import Draft, Outcome, Posted
from service.writer import MessageWriter
from tests.memory_store import MemoryStore, Poisoned


class Committed:
    """What the writer reports after each commit."""

    def __init__(self) -> None:
        self.posted: list[Outcome] = []
        self.payloads: list[str] = []

    @property
    def bodies(self) -> list[str]:
        """The bodies of the messages committed, in order."""
        return [p.message.body for p in self.posted if isinstance(p, Posted)]

    async def __call__(self, posted: list[Outcome], payloads: list[str]) -> None:
        self.posted += posted
        self.payloads += payloads


@pytest.fixture
async def parts() -> AsyncIterator[tuple[MemoryStore, MessageWriter, Committed]]:
    store, committed = MemoryStore(), Committed()
    writer = MessageWriter(store, channel=None, on_commit=committed, batch_max=100)
    writer.start()
    try:
        yield store, writer, committed
    finally:
        await writer.stop(1)


def draft(body: str, room_id: int = 1, client_id: str | None = None) -> Draft:
    return Draft(room_id, f"room{room_id}", "alice", body, client_id)


async def settle(futures: list[asyncio.Future[Outcome]]) -> list[Outcome | BaseException]:
    async with asyncio.timeout(2):
        return await asyncio.gather(*futures, return_exceptions=True)


async def test_sends_arriving_during_a_commit_form_the_next_batch(
    parts: tuple[MemoryStore, MessageWriter, Committed],
) -> None:
    store, writer, committed = parts
    store.hold = asyncio.Event()
    first = await writer.submit(draft("first"))
    await asyncio.sleep(0.01)  # the writer took it and waits in the store
    rest = [await writer.submit(draft(f"m{i}")) for i in range(30)]
    assert writer.depth == 30
    store.hold.set()
    results = await settle([first, *rest])
    assert store.batches == [1, 30]
    assert [r.message.seq for r in results if isinstance(r, Posted)] == list(range(1, 32))
    assert committed.bodies == ["first"] + [f"m{i}" for i in range(30)]
    # Without a channel the notifications come back to be published after the commit.
    notes = [decode_note(store.key.open(p) or "") for p in committed.payloads]
    assert all(isinstance(n, MessagesNote) for n in notes)
    assert [m.seq for n in notes if isinstance(n, MessagesNote) for m in n.messages] == list(
        range(1, 32)
    )


async def test_batches_are_cut_at_the_batch_bound(
    parts: tuple[MemoryStore, MessageWriter, Committed],
) -> None:
    store, writer, _ = parts
    store.hold = asyncio.Event()
    futures = [await writer.submit(draft(f"m{i}")) for i in range(250)]
    store.hold.set()
    await settle(futures)
    assert sum(store.batches) == 250 and max(store.batches) == 100


async def test_a_failing_message_does_not_fail_its_batch_mates(
    parts: tuple[MemoryStore, MessageWriter, Committed],
) -> None:
    store, writer, committed = parts
    store.poison.add("poison")
    store.hold = asyncio.Event()
    futures = [await writer.submit(draft(b)) for b in ("a", "b", "poison", "c", "d")]
    store.hold.set()
    results = await settle(futures)
    assert isinstance(results[2], Poisoned)
    good = [r for i, r in enumerate(results) if i != 2]
    assert all(isinstance(r, Posted) for r in good)
    assert [r.message.body for r in good if isinstance(r, Posted)] == ["a", "b", "c", "d"]
    assert [r.message.seq for r in good if isinstance(r, Posted)] == [1, 2, 3, 4]
    assert committed.bodies == [
        "a",
        "b",
        "c",
        "d",
    ]
    # The writer goes on.
    after = await settle([await writer.submit(draft("after"))])
    assert isinstance(after[0], Posted) and after[0].message.seq == 5


async def test_an_outage_fails_the_whole_batch_as_unavailable_and_stores_nothing(
    parts: tuple[MemoryStore, MessageWriter, Committed],
) -> None:
    store, writer, committed = parts
    store.outage = True
    results = await settle([await writer.submit(draft(f"m{i}")) for i in range(5)])
    assert all(isinstance(r, Unavailable) for r in results)
    assert committed.posted == [] and store.last_seq == {}
    store.outage = False
    again = await settle([await writer.submit(draft("back"))])
    assert isinstance(again[0], Posted) and again[0].message.seq == 1


async def test_repeated_client_ids_are_stored_once(
    parts: tuple[MemoryStore, MessageWriter, Committed],
) -> None:
    store, writer, committed = parts
    store.hold = asyncio.Event()
    futures = [
        await writer.submit(draft("one", client_id="c1")),
        await writer.submit(draft("one again", client_id="c1")),
        await writer.submit(draft("other room", room_id=2, client_id="c1")),
    ]
    store.hold.set()
    first, repeat, other = await settle(futures)
    assert isinstance(first, Posted) and isinstance(repeat, Posted) and isinstance(other, Posted)
    assert (first.duplicate, repeat.duplicate, other.duplicate) == (False, True, False)
    assert repeat.message == first.message
    later = await settle([await writer.submit(draft("retry", client_id="c1"))])
    assert isinstance(later[0], Posted) and later[0].duplicate
    assert later[0].message.body == "one"
    # Only fresh messages are fanned out.
    assert committed.bodies == [
        "one",
        "other room",
    ]


async def test_stop_resolves_every_future() -> None:
    """A batch held in the store past the grace period, and sends queued behind it: after
    stop(), every future is done (an ack or Unavailable), none hangs."""
    store, committed = MemoryStore(), Committed()
    writer = MessageWriter(store, channel="chat", on_commit=committed)
    writer.start()
    store.hold = asyncio.Event()
    futures = [await writer.submit(draft(f"m{i}")) for i in range(10)]
    async with asyncio.timeout(3):
        await writer.stop(0.2)
    assert all(f.done() for f in futures)
    assert all(isinstance(f.exception(), Unavailable) for f in futures)
    with pytest.raises(Unavailable):
        await writer.submit(draft("too late"))


async def test_a_lost_reply_is_read_back_and_acked(
    parts: tuple[MemoryStore, MessageWriter, Committed],
) -> None:
    """The batch committed but its reply was lost: the senders are acked with what was
    stored, never told `unavailable`."""
    store, writer, committed = parts
    store.lose_replies = 1
    results = await settle(
        [await writer.submit(draft(f"m{i}", client_id=f"c{i}")) for i in range(3)]
    )
    assert all(isinstance(r, Posted) for r in results), results
    assert [r.message.seq for r in results if isinstance(r, Posted)] == [1, 2, 3]
    assert committed.bodies == ["m0", "m1", "m2"]
    assert store.last_seq == {1: 3}


async def test_a_lost_request_is_unavailable_once_known(
    parts: tuple[MemoryStore, MessageWriter, Committed],
) -> None:
    """The batch never reached the database: once the writer knows it (the database
    answers again), its senders get `unavailable`, and nothing is stored."""
    store, writer, committed = parts
    store.lose_requests = 1
    futures = [await writer.submit(draft(f"m{i}")) for i in range(2)]
    results = await settle(futures)
    assert all(isinstance(r, Unavailable) and not isinstance(r, OutcomeUnknown) for r in results)
    assert committed.posted == [] and store.last_seq == {}


async def test_recovery_waits_for_the_database_and_the_writer_goes_on(
    parts: tuple[MemoryStore, MessageWriter, Committed],
) -> None:
    """While a lost reply cannot be read back (the database is away), its senders wait, and
    later batches are handled (here refused as unavailable); once the database answers, the
    lost batch's senders are acked."""
    store, writer, _ = parts
    store.lose_replies, store.down_after_loss = 1, True
    lost = await writer.submit(draft("lost", client_id="c1"))
    await asyncio.sleep(0.02)
    later = await writer.submit(draft("later"))
    (refused,) = await settle([later])
    assert isinstance(refused, Unavailable)
    await asyncio.sleep(0.2)
    assert not lost.done()
    store.outage = False
    (acked,) = await settle([lost])
    assert isinstance(acked, Posted) and acked.message.body == "lost" and not acked.duplicate


async def test_stop_with_an_unknown_outcome_says_so() -> None:
    """Shut down while the outcome cannot be learnt: the sender is told the outcome is
    unknown (the socket sends nothing, REST answers 504), not `unavailable`."""
    store, committed = MemoryStore(), Committed()
    writer = MessageWriter(store, channel="chat", on_commit=committed)
    writer.start()
    store.lose_replies, store.down_after_loss = 1, True
    future = await writer.submit(draft("m"))
    await asyncio.sleep(0.02)
    async with asyncio.timeout(3):
        await writer.stop(0.2)
    assert isinstance(future.exception(), OutcomeUnknown)


async def test_old_outcomes_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Old outcomes are dropped by a task of the writer's own, with or without batches."""
    store = MemoryStore()
    monkeypatch.setattr(writer_module, "_FORGET_EVERY_SECONDS", 0.01)
    writer = MessageWriter(store, channel="chat", on_commit=Committed())
    writer.start()
    try:
        async with asyncio.timeout(3):
            while len(store.forgotten_before) < 2:  # it goes on after the first
                await asyncio.sleep(0.01)
        await settle([await writer.submit(draft("m"))])
    finally:
        await writer.stop(1)
    kept = datetime.now(UTC) - store.forgotten_before[-1]
    assert writer_module.OUTCOME_KEPT <= kept < writer_module.OUTCOME_KEPT + timedelta(seconds=5)
