"""The store seam (service/store.py) in memory, for the fast tests of the core's logic: hubs
and the writer run against it in milliseconds. Storage itself is tested against PostgreSQL
(tests/test_write_path.py, tests/test_protocol_codec.py); this fake only has to keep the
contract the core relies on: gapless seqs per room in commit order, repeats by client_id,
and notifications built with service/protocol.py.

Knobs for the tests: `outage` makes every call raise Unavailable; a body in `poison` fails
any batch holding it (as a constraint violation fails a statement); `hold`, when set, is an
event every `store` call waits for, so a test can keep a commit in flight; likewise
`hold_replay` for `replay`; `gone` seqs are missing from reads (as after a prune);
`lose_replies` makes that many `store` calls raise OutcomeUnknown after committing, and
`lose_requests` that many before committing (the database went away with the reply, or
with the request), and `down_after_loss` sets `outage` when they do.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from service.db import OutcomeUnknown, Unavailable
from service.protocol import (
    DeleteEvent,
    EditEvent,
    FanoutKey,
    LogEntry,
    MemberChange,
    MemberEvent,
    MessagesNote,
    NotifiedChange,
    NotifiedMessage,
    ReactionEvent,
    StoredMessage,
    encode_note,
)
from service.store import (
    Changed,
    ChangeDraft,
    FeedItem,
    Item,
    Outcome,
    Posted,
    Replay,
    Stored,
    unique_drafts,
)

TEST_KEY = FanoutKey.from_secret("the in-memory store's own test secret")


class Poisoned(Exception):
    """What a batch holding a poisoned body fails with."""


@dataclass
class MemoryStore:
    messages: dict[int, dict[int, LogEntry]] = field(default_factory=dict)  # the rooms' logs
    last_seq: dict[int, int] = field(default_factory=dict)
    outage: bool = False
    poison: set[str] = field(default_factory=set)
    hold: asyncio.Event | None = None
    hold_replay: asyncio.Event | None = None
    gone: set[tuple[int, int]] = field(default_factory=set)
    batches: list[int] = field(default_factory=list)  # size of each committed batch
    notified: list[str] = field(default_factory=list)  # payloads "sent" in a transaction
    reads: int = 0
    key: FanoutKey = field(default_factory=lambda: TEST_KEY)
    lose_replies: int = 0
    lose_requests: int = 0
    down_after_loss: bool = False
    outcomes: dict[uuid.UUID, Stored] = field(default_factory=dict)
    reacted: dict[tuple[int, int], set[tuple[str, str]]] = field(default_factory=dict)
    max_emoji: int = 20
    forgotten_before: list[datetime] = field(default_factory=list)

    def _check(self) -> None:
        if self.outage:
            raise Unavailable("the test's database is away")

    def add(self, room_id: int, room: str, body: str, author: str = "someone") -> StoredMessage:
        """Commit one message directly, as another instance would."""
        seq = self.last_seq.get(room_id, 0) + 1
        message = StoredMessage(room, seq, author, body, None, datetime.now(UTC))
        self.messages.setdefault(room_id, {})[seq] = message
        self.last_seq[room_id] = seq
        return message

    def add_member_event(
        self, room_id: int, room: str, user: str, event: MemberChange, by: str = "owner"
    ) -> MemberEvent:
        """Commit a `member` event directly, as a membership change on any instance would."""
        seq = self.last_seq.get(room_id, 0) + 1
        entry = MemberEvent(room, seq, user, event, "member", by, datetime.now(UTC))
        self.messages.setdefault(room_id, {})[seq] = entry
        self.last_seq[room_id] = seq
        return entry

    async def store(self, drafts: Sequence[Item], channel: str | None, batch: uuid.UUID) -> Stored:
        if self.hold is not None:
            await self.hold.wait()
        self._check()
        if self.lose_requests:
            self.lose_requests -= 1
            raise OutcomeUnknown("the request was lost")
        if any(d.body in self.poison for d in drafts):
            raise Poisoned("a poisoned body")
        unique, owner = unique_drafts(drafts)
        now = datetime.now(UTC)
        outcomes: list[Outcome] = []
        fresh: list[NotifiedMessage | NotifiedChange] = []
        for d in unique:
            if isinstance(d, ChangeDraft):
                outcomes.append(self._change(d, now, fresh))
                continue
            earlier = next(
                (
                    m
                    for m in self.messages.get(d.room_id, {}).values()
                    if isinstance(m, StoredMessage)
                    and d.client_id is not None
                    and (m.author, m.client_id) == (d.author, d.client_id)
                ),
                None,
            )
            if earlier is not None:
                outcomes.append(Posted(d.room_id, earlier, True))
                continue
            seq = self._next(d.room_id)
            message = StoredMessage(d.room, seq, d.author, d.body, d.client_id, now, d.reply_to)
            self.messages.setdefault(d.room_id, {})[seq] = message
            outcomes.append(Posted(d.room_id, message, False))
            fresh.append(
                NotifiedMessage(d.room_id, seq, d.author, d.body, d.client_id, now, d.reply_to)
            )
        self.batches.append(len(drafts))
        note = MessagesNote(tuple(fresh), ())
        payloads = [self.key.sign(encode_note(note))] if fresh else []
        if channel is not None:
            self.notified += payloads
            payloads = []
        posted: list[Outcome] = []
        for draft, i in zip(drafts, owner, strict=True):
            outcome = outcomes[i]
            if isinstance(outcome, Posted) and unique[i] is not draft:
                outcome = replace(outcome, duplicate=True)
            posted.append(outcome)
        self.outcomes[batch] = Stored(posted, [])
        if self.lose_replies:
            self.lose_replies -= 1
            self.outage = self.down_after_loss
            raise OutcomeUnknown("the reply was lost")
        return Stored(posted, payloads)

    async def recover(self, drafts: Sequence[Item], batch: uuid.UUID) -> Stored | None:
        self._check()
        return self.outcomes.get(batch)

    async def forget_batches(self, before: datetime) -> int:
        self.forgotten_before.append(before)
        return 0

    def _next(self, room_id: int) -> int:
        seq = self.last_seq.get(room_id, 0) + 1
        self.last_seq[room_id] = seq
        return seq

    def _change(
        self, d: ChangeDraft, now: datetime, fresh: list[NotifiedMessage | NotifiedChange]
    ) -> Changed:
        """The rules of service/sql/post_messages.sql, as far as the core's tests need them:
        no roles here (only the author edits or deletes)."""
        log = self.messages.get(d.room_id, {})
        target = log.get(d.target)
        if not isinstance(target, StoredMessage):
            return Changed(d.room_id, d.room, 0, None, False, "not_found")
        if d.actor != target.author and d.kind != "reaction":
            return Changed(d.room_id, d.room, 0, None, False, "forbidden")
        if target.deleted and d.kind != "delete":
            return Changed(d.room_id, d.room, 0, None, False, "not_found")
        counts = dict(target.reactions)
        mine = self.reacted.setdefault((d.room_id, d.target), set())
        key = (d.emoji or "", d.actor)
        unchanged = (
            (d.kind == "edit" and d.body == target.body)
            or (d.kind == "delete" and target.deleted)
            or (d.kind == "reaction" and (key in mine) == (d.op == "add"))
        )
        if unchanged:
            version = target.version or target.seq
            return Changed(d.room_id, d.room, version, None, True)
        full = len(counts) >= self.max_emoji
        if d.kind == "reaction" and d.op == "add" and d.emoji not in counts and full:
            return Changed(d.room_id, d.room, 0, None, False, "limit_reached")
        seq = self._next(d.room_id)
        event: EditEvent | DeleteEvent | ReactionEvent
        if d.kind == "edit":
            assert d.body is not None
            event = EditEvent(d.room, seq, d.target, d.actor, d.body, now)
            log[d.target] = replace(target, body=d.body, edited_at=now, version=seq)
        elif d.kind == "delete":
            event = DeleteEvent(d.room, seq, d.target, d.actor)
            log[d.target] = replace(target, body="", deleted=True, reactions=(), version=seq)
            mine.clear()
            for s, e in log.items():
                if isinstance(e, EditEvent) and e.target == d.target:
                    log[s] = replace(e, body="")
        else:
            assert d.emoji is not None and d.op is not None
            count = counts.get(d.emoji, 0) + (1 if d.op == "add" else -1)
            if d.op == "add":
                mine.add(key)
            else:
                mine.discard(key)
            counts[d.emoji] = count
            reactions = tuple((e, c) for e, c in counts.items() if c > 0)
            log[d.target] = replace(target, reactions=reactions, version=seq)
            event = ReactionEvent(d.room, seq, d.target, d.actor, d.emoji, d.op, count)
        log[seq] = event
        fresh.append(NotifiedChange(d.room_id, event))
        return Changed(d.room_id, d.room, seq, now, False, None, event)

    def _present(self, room_id: int) -> list[LogEntry]:
        rows = self.messages.get(room_id, {})
        return [m for seq, m in sorted(rows.items()) if (room_id, seq) not in self.gone]

    async def replay(
        self, room_id: int, room: str, replay_limit: int, user: str | None = None
    ) -> Replay:
        if self.hold_replay is not None:
            await self.hold_replay.wait()
        self._check()
        self.reads += 1
        last_seq = self.last_seq.get(room_id, 0)
        rows = [m for m in self._present(room_id) if isinstance(m, StoredMessage)]
        newest = rows[-replay_limit:] if replay_limit else []
        return Replay(newest, len(rows) > len(newest), last_seq)

    async def fetch_range(
        self, room_id: int, room: str, after: int, upto: int, limit: int, user: str | None = None
    ) -> list[LogEntry]:
        self._check()
        self.reads += 1
        return [m for m in self._present(room_id) if after < m.seq <= upto][:limit]

    async def fetch_frames(
        self, room_id: int, room: str, after: int, upto: int, limit: int, user: str
    ) -> list[FeedItem]:
        entries = await self.fetch_range(room_id, room, after, upto, limit, user)
        return [
            FeedItem(e.seq, e.frame(), None if isinstance(e, StoredMessage) else e) for e in entries
        ]

    async def last_seqs(self, room_ids: list[int]) -> dict[int, int]:
        self._check()
        return {r: self.last_seq[r] for r in room_ids if r in self.last_seq}
