"""Room hubs (service/hubs.py) against the in-memory store: every member gets each message
once, in seq order, whatever order and path messages arrive by."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from service import hubs as hubs_module
from service.hubs import FEED_PAGE, Hubs, Joined
from tests.memory_store import MemoryStore

ROOM_ID, ROOM = 7, "general"


class Member:
    """Records what it is sent. `gate`, when set, is an event a feed step waits for (a socket
    that has not drained yet); `steps` counts the feed steps, which must never overlap."""

    def __init__(self, username: str = "alice") -> None:
        self.username = username
        self.live: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self.joined: list[Joined] = []
        self.gate: asyncio.Event | None = None
        self.closing = False
        self.steps = 0
        self._stepping = False

    @contextlib.asynccontextmanager
    async def room_for(self, frames: int) -> AsyncIterator[bool]:
        gate = self.gate
        if gate is not None:
            await gate.wait()
            gate.clear()
        assert not self._stepping, "two feed steps at once"
        self._stepping = True
        self.steps += 1
        try:
            yield not self.closing
        finally:
            self._stepping = False

    def on_joined(self, joined: Joined) -> None:
        self.joined.append(joined)
        self.answers.append({"type": "joined", "last_seq": joined.last_seq})

    def push_live(self, frame: str) -> None:
        self.live.append(orjson.loads(frame))

    def push_answer(self, frame: str) -> None:
        self.answers.append(orjson.loads(frame))

    def removed(self, room: str) -> None:
        self.live.append({"type": "left", "room": room, "reason": "removed"})

    @property
    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.live if f["type"] == "message"]


async def admitted(head: int) -> None:
    """Every member may read the room (membership is tested against PostgreSQL)."""


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[MemoryStore, Hubs]]:
    store = MemoryStore()
    hubs = Hubs(store)
    try:
        yield store, hubs
    finally:
        await hubs.close()


async def join(
    hubs: Hubs, member: Member, since: int | None = None, resume_limit: int = 1000
) -> None:
    """Join; returns once `joined` was sent (a resume is fed in the background)."""
    await hubs.join(
        ROOM_ID, ROOM, member, since, 50, resume_limit, on_joined=member.on_joined, admit=admitted
    )
    await until(lambda: bool(member.joined))


def replayed(member: Member) -> list[int]:
    return [f["seq"] for f in member.answers if f["type"] == "message"]


def replayed_count(member: Member, n: int) -> Callable[[], bool]:
    return lambda: len(replayed(member)) == n


def open_gate(member: Member) -> None:
    """From now on the member always has room (a feed step already waiting goes on)."""
    gate, member.gate = member.gate, None
    if gate is not None:
        gate.set()


async def test_offers_in_any_order_are_delivered_once_in_seq_order(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    store, hubs = setup
    member = Member()
    await join(hubs, member)
    hub = hubs.get(ROOM_ID)
    assert hub is not None
    messages = [store.add(ROOM_ID, ROOM, f"m{i}") for i in range(1, 6)]
    for m in (messages[2], messages[0], messages[4], messages[1], messages[3], messages[0]):
        hub.offer(m)
    await until(lambda: len(member.seqs) == 5)
    await asyncio.sleep(0.01)
    assert member.seqs == [1, 2, 3, 4, 5]
    assert [f["body"] for f in member.live] == ["m1", "m2", "m3", "m4", "m5"]


async def test_a_missing_seq_is_read_back_before_anything_after_it(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    """Seq 2 was never offered (its notification was lost, or too large to carry): the hub
    reads it from the store and only then delivers 3."""
    store, hubs = setup
    member = Member()
    await join(hubs, member)
    hub = hubs.get(ROOM_ID)
    assert hub is not None
    one, two, three = (store.add(ROOM_ID, ROOM, f"m{i}") for i in (1, 2, 3))
    hub.offer(one)
    hub.offer(three)
    await until(lambda: len(member.seqs) == 3)
    assert member.seqs == [1, 2, 3]
    assert member.live[1]["body"] == two.body


async def test_a_ref_alone_is_read_back(setup: tuple[MemoryStore, Hubs]) -> None:
    store, hubs = setup
    member = Member()
    await join(hubs, member)
    for i in range(1, 4):
        store.add(ROOM_ID, ROOM, f"m{i}")
    hubs.committed(ROOM_ID, 3)
    await until(lambda: len(member.seqs) == 3)
    assert member.seqs == [1, 2, 3]


async def test_resync_catches_a_lost_final_notification(setup: tuple[MemoryStore, Hubs]) -> None:
    store, hubs = setup
    member = Member()
    await join(hubs, member)
    store.add(ROOM_ID, ROOM, "nobody told us")
    hubs.resync(await store.last_seqs(hubs.room_ids()))
    await until(lambda: member.seqs == [1])


async def test_join_replays_and_records_the_cursor(setup: tuple[MemoryStore, Hubs]) -> None:
    """A resume gets what followed `since` as answers, then only later seqs live; a
    re-offer of a replayed seq reaches nobody twice."""
    store, hubs = setup
    early = [store.add(ROOM_ID, ROOM, f"m{i}") for i in range(1, 6)]
    member = Member()
    await join(hubs, member, since=2)
    (joined,) = member.joined
    assert joined.last_seq == 5 and not joined.truncated
    assert [f.get("seq", "joined") for f in member.answers] == [3, 4, 5, "joined"]
    hub = hubs.get(ROOM_ID)
    assert hub is not None
    hub.offer(early[4])
    six = store.add(ROOM_ID, ROOM, "m6")
    hub.offer(six)
    await until(lambda: member.seqs == [6])
    await asyncio.sleep(0.01)
    assert member.seqs == [6]


async def test_what_commits_during_a_join_is_neither_lost_nor_doubled(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    """The replay read and the cursor happen under the hub's lock: messages offered while a
    second member's replay is being read reach it exactly once (in the replay or live)."""
    store, hubs = setup
    first = Member("first")
    await join(hubs, first)
    hub = hubs.get(ROOM_ID)
    assert hub is not None
    slow_read = store.hold_replay = asyncio.Event()
    second = Member("second")
    joining = asyncio.create_task(join(hubs, second, since=0, resume_limit=1000))
    await asyncio.sleep(0.01)
    for i in range(1, 11):
        hub.offer(store.add(ROOM_ID, ROOM, f"m{i}"))
        if i == 5:
            slow_read.set()
            await asyncio.sleep(0)
    async with asyncio.timeout(2):
        await joining
    await until(lambda: len(first.seqs) == 10)
    await until(lambda: replayed(second) + second.seqs == list(range(1, 11)))
    assert first.seqs == list(range(1, 11))


async def test_members_with_different_cursors(setup: tuple[MemoryStore, Hubs]) -> None:
    store, hubs = setup
    old = Member("old")
    await join(hubs, old)
    hub = hubs.get(ROOM_ID)
    assert hub is not None
    for i in range(1, 4):
        hub.offer(store.add(ROOM_ID, ROOM, f"m{i}"))
    await until(lambda: old.seqs == [1, 2, 3])
    new = Member("new")
    await join(hubs, new, since=3)
    hub.offer(store.add(ROOM_ID, ROOM, "m4"))
    await until(lambda: old.seqs == [1, 2, 3, 4] and replayed(new) + new.seqs == [4])
    await asyncio.sleep(0.01)
    assert replayed(new) + new.seqs == [4]


async def test_the_store_away_delays_delivery_and_loses_nothing(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    store, hubs = setup
    member = Member()
    await join(hubs, member)
    for i in range(1, 4):
        store.add(ROOM_ID, ROOM, f"m{i}")
    store.outage = True
    hubs.committed(ROOM_ID, 3)
    await asyncio.sleep(0.05)
    assert member.seqs == []
    store.outage = False
    await until(lambda: member.seqs == [1, 2, 3], timeout=3)


async def test_pruned_seqs_are_skipped_not_waited_for(setup: tuple[MemoryStore, Hubs]) -> None:
    store, hubs = setup
    member = Member()
    await join(hubs, member)
    for i in range(1, 5):
        store.add(ROOM_ID, ROOM, f"m{i}")
    store.gone |= {(ROOM_ID, 1), (ROOM_ID, 2)}
    hubs.committed(ROOM_ID, 4)
    await until(lambda: member.seqs == [3, 4])


async def test_more_pending_than_the_hub_holds_is_read_back(
    setup: tuple[MemoryStore, Hubs], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offers beyond the held-back bound are not kept; they are read back from the store
    when their turn comes, so nothing is lost while memory stays bounded."""
    monkeypatch.setattr(hubs_module, "_PENDING_MAX", 3)
    store, hubs = setup
    member = Member()
    await join(hubs, member)
    hub = hubs.get(ROOM_ID)
    assert hub is not None
    messages = [store.add(ROOM_ID, ROOM, f"m{i}") for i in range(1, 11)]
    for m in reversed(messages[1:]):  # seq 1 last: nothing can be delivered meanwhile
        hub.offer(m)
    reads = store.reads
    hub.offer(messages[0])
    await until(lambda: member.seqs == list(range(1, 11)))
    assert store.reads > reads


async def test_presence_and_typing_skip_their_own_user(setup: tuple[MemoryStore, Hubs]) -> None:
    _, hubs = setup
    alice, bob = Member("alice"), Member("bob")
    await join(hubs, alice)
    await join(hubs, bob)
    hub = hubs.get(ROOM_ID)
    assert hub is not None
    hub.send_all('{"type":"typing","room":"general","user":"alice"}', skip_user="alice")
    assert alice.live == [] and bob.live == [{"type": "typing", "room": ROOM, "user": "alice"}]


async def test_a_room_without_members_has_no_hub(setup: tuple[MemoryStore, Hubs]) -> None:
    _, hubs = setup
    member = Member()
    await join(hubs, member)
    assert hubs.room_ids() == [ROOM_ID]
    await hubs.leave(ROOM_ID, member)
    assert hubs.get(ROOM_ID) is None and hubs.room_ids() == []


async def test_a_long_resume_is_fed_a_page_at_a_time_as_the_member_drains(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    """1,000 missed messages: never more than a page is handed over before the member has
    room again; then `joined`, then what was committed during the resume, then live; every
    seq once, in order."""
    store, hubs = setup
    watcher = Member("watcher")
    await join(hubs, watcher)
    hub = hubs.get(ROOM_ID)
    assert hub is not None
    for i in range(1, 1001):
        hub.offer(store.add(ROOM_ID, ROOM, f"m{i}"))
    await until(lambda: len(watcher.seqs) == 1000)
    slow = Member("slow")
    slow.gate = asyncio.Event()
    await hubs.join(ROOM_ID, ROOM, slow, 0, 50, 1000, on_joined=slow.on_joined, admit=admitted)
    for step in range(1, 4):
        slow.gate.set()
        await until(replayed_count(slow, step * FEED_PAGE))
        await asyncio.sleep(0.01)
        assert len(replayed(slow)) == step * FEED_PAGE  # nothing more until it drains again
    # Messages committed while it is behind reach it through the feed, after `joined`.
    for i in range(1001, 1011):
        hub.offer(store.add(ROOM_ID, ROOM, f"m{i}"))
    while not slow.joined or len(replayed(slow)) + len(slow.seqs) < 1010:
        slow.gate.set()
        await asyncio.sleep(0.001)
    (joined,) = slow.joined
    assert joined.last_seq == 1000 and not joined.truncated
    kinds = [f.get("seq", "joined") for f in slow.answers]
    assert kinds[:1000] == list(range(1, 1001)) and kinds[1000] == "joined"
    assert replayed(slow) + slow.seqs == list(range(1, 1011))
    open_gate(slow)
    await until(lambda: slow in hub.members)
    hub.offer(store.add(ROOM_ID, ROOM, "m1011"))
    await until(lambda: slow.seqs[-1:] == [1011])
    assert replayed(slow) + slow.seqs == list(range(1, 1012))


async def test_a_resume_beyond_the_limit_starts_at_the_newest_and_says_truncated(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    store, hubs = setup
    for i in range(1, 31):
        store.add(ROOM_ID, ROOM, f"m{i}")
    member = Member()
    await join(hubs, member, since=5, resume_limit=10)
    (joined,) = member.joined
    assert joined.truncated and joined.last_seq == 30
    assert replayed(member) == list(range(21, 31))


async def test_a_resume_from_below_what_prune_kept_says_truncated(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    store, hubs = setup
    for i in range(1, 11):
        store.add(ROOM_ID, ROOM, f"m{i}")
    store.gone |= {(ROOM_ID, s) for s in range(1, 5)}
    member = Member()
    await join(hubs, member, since=2)
    (joined,) = member.joined
    assert joined.truncated and replayed(member) == list(range(5, 11))
    kept = Member("kept")
    await join(hubs, kept, since=6)
    assert not kept.joined[0].truncated and replayed(kept) == [7, 8, 9, 10]


async def test_leaving_during_a_resume_stops_its_feed(setup: tuple[MemoryStore, Hubs]) -> None:
    store, hubs = setup
    for i in range(1, 501):
        store.add(ROOM_ID, ROOM, f"m{i}")
    member = Member()
    member.gate = asyncio.Event()
    await hubs.join(ROOM_ID, ROOM, member, 0, 50, 1000, on_joined=member.on_joined, admit=admitted)
    member.gate.set()
    await until(lambda: len(replayed(member)) == FEED_PAGE)
    await hubs.leave(ROOM_ID, member)
    member.gate.set()
    await asyncio.sleep(0.05)
    assert len(replayed(member)) == FEED_PAGE and not member.joined
    assert hubs.get(ROOM_ID) is None


async def test_a_resume_waits_out_an_outage(setup: tuple[MemoryStore, Hubs]) -> None:
    store, hubs = setup
    for i in range(1, 251):
        store.add(ROOM_ID, ROOM, f"m{i}")
    member = Member()
    member.gate = asyncio.Event()
    await hubs.join(ROOM_ID, ROOM, member, 0, 50, 1000, on_joined=member.on_joined, admit=admitted)
    member.gate.set()
    await until(lambda: len(replayed(member)) == FEED_PAGE)
    store.outage = True
    member.gate.set()
    await asyncio.sleep(0.15)
    store.outage = False
    open_gate(member)
    await until(lambda: bool(member.joined), timeout=3)
    assert replayed(member) == list(range(1, 251))


async def test_a_claim_beyond_the_room_never_skips_real_seqs(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    """A ref to a seq the store does not have (a forged or garbled notification) is checked
    against the store's last seq before anything is skipped: the real messages that come
    next are still delivered."""
    store, hubs = setup
    member = Member()
    await join(hubs, member)
    hubs.committed(ROOM_ID, 1_000_000)
    await asyncio.sleep(0.05)
    hub = hubs.get(ROOM_ID)
    assert hub is not None
    assert hub.target == hub.head == 0
    for i in range(1, 4):
        hub.offer(store.add(ROOM_ID, ROOM, f"m{i}"))
    await until(lambda: member.seqs == [1, 2, 3])


async def test_presence_reaches_a_member_still_catching_up_after_its_joined(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    store, hubs = setup
    for i in range(1, 301):
        store.add(ROOM_ID, ROOM, f"m{i}")
    slow = Member("slow")
    slow.gate = asyncio.Event()
    await hubs.join(ROOM_ID, ROOM, slow, 0, 50, 1000, on_joined=slow.on_joined, admit=admitted)
    hub = hubs.get(ROOM_ID)
    assert hub is not None
    hub.send_all('{"type":"presence","user":"early"}')
    while not slow.joined:
        slow.gate.set()
        await asyncio.sleep(0.001)
    assert slow not in hub.members  # still fed: the hand-over has not happened yet
    hub.send_all('{"type":"presence","user":"late"}')
    assert [f["user"] for f in slow.live] == ["late"]


def kinds(member: Member) -> list[tuple[str, int | None]]:
    """What reached the member live, as (type, seq)."""
    return [(f["type"], f.get("seq")) for f in member.live]


async def test_a_member_event_cuts_the_removed_user_off_at_its_seq(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    """Live delivery: the removed user's members get `removed` in place of the event and
    nothing after it; everyone else gets the event, in order, and what follows."""
    store, hubs = setup
    alice, carol, carol_tab = Member("alice"), Member("carol"), Member("carol")
    for member in (alice, carol, carol_tab):
        await join(hubs, member)
    store.add(ROOM_ID, ROOM, "before")
    store.add_member_event(ROOM_ID, ROOM, "carol", "removed")
    store.add(ROOM_ID, ROOM, "after")
    hubs.committed(ROOM_ID, 3)  # one ref: the hub reads the three back in order
    await until(lambda: len(alice.live) == 3)
    await until(lambda: len(carol.live) == 2 and len(carol_tab.live) == 2)
    assert kinds(alice) == [("message", 1), ("member", 2), ("message", 3)]
    assert alice.live[1]["user"] == "carol" and alice.live[1]["event"] == "removed"
    for tab in (carol, carol_tab):
        assert kinds(tab) == [("message", 1), ("left", None)]
        assert tab.live[1]["reason"] == "removed"
    hub = hubs.get(ROOM_ID)
    assert hub is not None and set(hub.members) == {alice}
    # Events committed later never reach carol's members.
    store.add(ROOM_ID, ROOM, "later")
    hubs.committed(ROOM_ID, 4)
    await until(lambda: len(alice.live) == 4)
    await asyncio.sleep(0.01)
    assert len(carol.live) == 2


async def test_a_resume_stops_at_the_event_that_ends_its_membership(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    """A resume still being fed (its socket has not drained, and the room has moved on by
    more than a page) meets the removal in what it reads: it gets what came before, then
    `removed`, and never the event itself or anything after it."""
    store, hubs = setup
    alice = Member("alice")
    await join(hubs, alice)
    for i in range(1, 4):
        store.add(ROOM_ID, ROOM, f"m{i}")
    hubs.committed(ROOM_ID, 3)
    await until(lambda: len(alice.seqs) == 3)
    carol = Member("carol")

    def joined_then_stall(joined: Joined) -> None:
        carol.on_joined(joined)
        carol.gate = asyncio.Event()  # the socket stops draining right after `joined`

    await hubs.join(ROOM_ID, ROOM, carol, 0, 50, 1000, on_joined=joined_then_stall, admit=admitted)
    await until(lambda: bool(carol.joined))
    store.add_member_event(ROOM_ID, ROOM, "carol", "left", by="carol")
    for i in range(FEED_PAGE + 50):
        store.add(ROOM_ID, ROOM, f"after{i}")
    hubs.committed(ROOM_ID, store.last_seq[ROOM_ID])
    await until(lambda: len(alice.live) == 3 + 1 + FEED_PAGE + 50)
    hub = hubs.get(ROOM_ID)
    assert hub is not None and carol in hub.feeding  # still being fed
    open_gate(carol)
    await until(lambda: any(f["type"] == "left" for f in carol.live))
    await asyncio.sleep(0.02)
    assert replayed(carol) == [1, 2, 3]
    assert carol.seqs == []
    assert not [f for f in carol.answers + carol.live if f["type"] == "member"]
    assert carol not in hub.members and carol not in hub.feeding


async def test_admission_is_checked_after_the_head_is_read(
    setup: tuple[MemoryStore, Hubs],
) -> None:
    """A join whose user may not read the room sends nothing and registers nothing."""
    store, hubs = setup
    store.add(ROOM_ID, ROOM, "secret")
    calls: list[int] = []

    async def refuse(head: int) -> None:
        assert head == store.last_seq[ROOM_ID]
        calls.append(store.last_seq[ROOM_ID])
        raise PermissionError("not a member")

    carol = Member("carol")
    with pytest.raises(PermissionError):
        await hubs.join(
            ROOM_ID, ROOM, carol, None, 50, 1000, on_joined=carol.on_joined, admit=refuse
        )
    with pytest.raises(PermissionError):
        await hubs.join(ROOM_ID, ROOM, carol, 0, 50, 1000, on_joined=carol.on_joined, admit=refuse)
    assert calls == [1, 1]
    assert carol.answers == [] and carol.live == []
    assert hubs.get(ROOM_ID) is None
