"""The store's read paths against a real PostgreSQL: every one that addresses messages to a
user (history pages before and after, around, one message, a join's replay, the log's
range and its frames) gives each reaction's `me` for that user alone, read in the same
statement as the page, and nothing of the kind to nobody in particular."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.db import create_engine
from service.members import readable
from service.protocol import MAX_SEQ, StoredMessage
from service.refusals import Forbidden, NotFound
from service.settings import Settings
from service.store import PostgresStore
from tests.support import unique

# seq -> {username: emoji they reacted with}; the reactions column is derived from it.
REACTED = {2: {"ann": ["👍"], "bob": ["👍", "🎉"]}, 4: {"bob": ["🎉"]}, 5: {"ann": ["🙂"]}}


@pytest.fixture
async def reader(database_url: str) -> AsyncIterator[PostgresStore]:
    engine = create_engine(Settings(database_url=database_url))
    try:
        yield PostgresStore(engine)
    finally:
        await engine.dispose()


async def _room(pg: asyncpg.Connection) -> tuple[int, str, dict[str, str]]:
    """A room of six messages (seqs 1-6) and an edit event at seq 7, with REACTED; and the
    usernames that stand for ann, bob and carol in it."""
    names = {who: unique(f"{who}_") for who in ("ann", "bob", "carol")}
    for username in names.values():
        await pg.execute("INSERT INTO users (username, password_hash) VALUES ($1, 'x')", username)
    name = unique("reads-")
    room_id: int = await pg.fetchval(
        "INSERT INTO rooms (name, last_seq, last_message_seq) VALUES ($1, 7, 6) RETURNING id",
        name,
    )
    for seq in range(1, 7):
        counts: dict[str, int] = {}
        for emoji in (e for who in REACTED.get(seq, {}).values() for e in who):
            counts[emoji] = counts.get(emoji, 0) + 1
        reactions = json.dumps([{"emoji": e, "count": c} for e, c in counts.items()])
        await pg.execute(
            "INSERT INTO messages (room_id, seq, author, body, reactions)"
            " VALUES ($1, $2, $3, $4, $5::jsonb)",
            room_id, seq, names["ann"], f"message {seq}", reactions if counts else None,
        )  # fmt: skip
        for user, emoji in ((u, e) for u, es in REACTED.get(seq, {}).items() for e in es):
            await pg.execute(
                "INSERT INTO reactions (room_id, seq, emoji, username) VALUES ($1, $2, $3, $4)",
                room_id, seq, emoji, names[user],
            )  # fmt: skip
    await pg.execute(
        "INSERT INTO events (room_id, seq, kind, actor, target, body)"
        " VALUES ($1, 7, 'edit', $2, 1, 'message 1, edited')",
        room_id, names["ann"],
    )  # fmt: skip
    return room_id, name, names


def _expected(seq: int, who: str | None) -> frozenset[str] | None:
    if who is None:
        return None
    return frozenset(REACTED.get(seq, {}).get(who, ()))


def _check(messages: list[StoredMessage], who: str | None) -> None:
    assert messages, "nothing read"
    for m in messages:
        assert m.mine == _expected(m.seq, who), (m.seq, who, m.mine)
        if m.seq in REACTED:
            assert m.reactions, m.seq
            wire = m.to_wire()["reactions"]
            if who is not None:
                assert frozenset(r["emoji"] for r in wire if r["me"]) == _expected(m.seq, who)
            else:
                assert all("me" not in r for r in wire)


async def test_every_read_path_addresses_me_to_its_user(
    pg: asyncpg.Connection, reader: PostgresStore
) -> None:
    room_id, room, names = await _room(pg)
    for who in ("ann", "bob", "carol", None):
        user = None if who is None else names[who]
        newest = await reader.page(room_id, room, before=None, after=None, limit=50, user=user)
        assert [m.seq for m in newest.messages] == [1, 2, 3, 4, 5, 6] and not newest.has_more
        _check(newest.messages, who)
        older = await reader.page(room_id, room, before=5, after=None, limit=2, user=user)
        assert [m.seq for m in older.messages] == [3, 4] and older.has_more
        _check(older.messages, who)
        later = await reader.page(room_id, room, before=None, after=1, limit=3, user=user)
        assert [m.seq for m in later.messages] == [2, 3, 4] and later.has_more
        _check(later.messages, who)
        around = await reader.around(room_id, room, 4, 4, user)
        assert [m.seq for m in around.messages] == [2, 3, 4, 5]
        _check(around.messages, who)
        for seq in (2, 3):
            one = await reader.message(room_id, room, seq, user)
            assert one is not None
            _check([one], who)
        assert await reader.message(room_id, room, 99, user) is None
        replay = await reader.replay(room_id, room, 3, user)
        assert replay.last_seq == 7 and replay.truncated
        assert [m.seq for m in replay.messages] == [4, 5, 6]
        _check(replay.messages, who)
        entries = await reader.fetch_range(room_id, room, 0, MAX_SEQ, 100, user)
        assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6, 7]
        _check([e for e in entries if isinstance(e, StoredMessage)], who)
        if user is not None:  # a resume's pages: the same entries, as their frames
            items = await reader.fetch_frames(room_id, room, 2, MAX_SEQ, 100, user)
            assert [(i.seq, i.frame) for i in items] == [(e.seq, e.frame()) for e in entries[2:]]
            assert [i.event for i in items] == [None, None, None, None, entries[6]]


async def test_a_replay_of_a_room_without_messages_still_gives_its_last_seq(
    pg: asyncpg.Connection, reader: PostgresStore
) -> None:
    name = unique("reads-empty-")
    room_id: int = await pg.fetchval(
        "INSERT INTO rooms (name, last_seq) VALUES ($1, 3) RETURNING id", name
    )
    replay = await reader.replay(room_id, name, 50, "ann")
    assert replay.last_seq == 3 and replay.messages == [] and not replay.truncated


async def test_a_readable_page_is_the_page_with_the_right_to_read_it(
    pg: asyncpg.Connection, reader: PostgresStore
) -> None:
    """readable_page gives what page gives (as the wire writes it), with the row
    members.readable decides on; for a room the user may not read it reads no message at
    all; for no room, no row."""
    room_id, room, names = await _room(pg)
    ann, carol = names["ann"], names["carol"]
    cases = [(None, None, 50), (5, None, 2), (None, 1, 3), (None, 6, 3), (2, None, 5), (None, 0, 6)]
    for before, after, limit in cases:
        for user in (ann, carol):
            access, page = await reader.readable_page(
                room, user, before=before, after=after, limit=limit
            )
            assert access is not None and (access.id, access.kind) == (room_id, "public")
            assert readable(room, access).room_id == room_id
            plain = await reader.page(
                room_id, room, before=before, after=after, limit=limit, user=user
            )
            wired = [m.to_wire() for m in plain.messages]
            assert (page.messages, page.has_more) == (wired, plain.has_more), (before, after)

    await pg.execute("UPDATE rooms SET kind = 'private' WHERE id = $1", room_id)
    await pg.execute(
        "INSERT INTO members (room_id, username, role) VALUES ($1, $2, 'member')", room_id, ann
    )
    access, page = await reader.readable_page(room, ann, before=None, after=None, limit=50)
    assert access is not None and access.role == "member" and len(page.messages) == 6
    for before, after in ((None, None), (None, 0)):
        access, page = await reader.readable_page(room, carol, before=before, after=after, limit=50)
        assert access is not None and access.kind == "private" and access.role is None
        assert page.messages == [] and not page.has_more  # nothing read for a non-member
        with pytest.raises(Forbidden):
            readable(room, access)
    access, page = await reader.readable_page(
        unique("nowhere-"), ann, before=None, after=None, limit=50
    )
    assert access is None and page.messages == []
    with pytest.raises(NotFound):
        readable("nowhere", access)
