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
from dataclasses import dataclass, field
from datetime import UTC, datetime

from service.db import OutcomeUnknown, Unavailable
from service.protocol import (
    FanoutKey,
    LogEntry,
    MemberChange,
    MemberEvent,
    MessagesNote,
    NotifiedMessage,
    StoredMessage,
    encode_note,
)
from service.store import Draft, Posted, Replay, Stored, unique_drafts

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

    async def store(self, drafts: Sequence[Draft], channel: str | None, batch: uuid.UUID) -> Stored:
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
        outcomes: list[tuple[StoredMessage, bool]] = []
        fresh: list[NotifiedMessage] = []
        for d in unique:
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
                outcomes.append((earlier, True))
                continue
            seq = self.last_seq.get(d.room_id, 0) + 1
            message = StoredMessage(d.room, seq, d.author, d.body, d.client_id, now)
            self.messages.setdefault(d.room_id, {})[seq] = message
            self.last_seq[d.room_id] = seq
            outcomes.append((message, False))
            fresh.append(NotifiedMessage(d.room_id, seq, d.author, d.body, d.client_id, now))
        self.batches.append(len(drafts))
        note = MessagesNote(tuple(fresh), ())
        payloads = [self.key.sign(encode_note(note))] if fresh else []
        if channel is not None:
            self.notified += payloads
            payloads = []
        posted = [
            Posted(draft.room_id, outcomes[i][0], outcomes[i][1] or unique[i] is not draft)
            for draft, i in zip(drafts, owner, strict=True)
        ]
        self.outcomes[batch] = Stored(posted, [])
        if self.lose_replies:
            self.lose_replies -= 1
            self.outage = self.down_after_loss
            raise OutcomeUnknown("the reply was lost")
        return Stored(posted, payloads)

    async def recover(self, drafts: Sequence[Draft], batch: uuid.UUID) -> Stored | None:
        self._check()
        return self.outcomes.get(batch)

    async def forget_batches(self, before: datetime) -> int:
        self.forgotten_before.append(before)
        return 0

    def _present(self, room_id: int) -> list[LogEntry]:
        rows = self.messages.get(room_id, {})
        return [m for seq, m in sorted(rows.items()) if (room_id, seq) not in self.gone]

    async def replay(
        self, room_id: int, room: str, since: int | None, replay_limit: int, resume_limit: int
    ) -> Replay:
        if self.hold_replay is not None:
            await self.hold_replay.wait()
        self._check()
        self.reads += 1
        last_seq = self.last_seq.get(room_id, 0)
        rows = [m for m in self._present(room_id) if isinstance(m, StoredMessage)]
        if since is not None and since <= last_seq:
            after = [m for m in rows if m.seq > since]
            return Replay(after[-resume_limit:], len(after) > resume_limit, last_seq)
        newest = rows[-replay_limit:] if replay_limit else []
        return Replay(newest, len(rows) > len(newest), last_seq)

    async def fetch_range(
        self, room_id: int, room: str, after: int, upto: int, limit: int
    ) -> list[LogEntry]:
        self._check()
        self.reads += 1
        return [m for m in self._present(room_id) if after < m.seq <= upto][:limit]

    async def last_seqs(self, room_ids: list[int]) -> dict[int, int]:
        self._check()
        return {r: self.last_seq[r] for r in room_ids if r in self.last_seq}
