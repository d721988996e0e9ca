"""Storms of edits, deletes and reactions against real instances.

One hostile socket flooding reactions, edits and deletes is held to its write bucket (the
one `send` uses): past it every command answers `rate_limited` with `retry_after_ms` and
stores nothing. Hundreds of users reacting to one message at once each cost one event of
the log, the counts are exact, and nobody waits on a lock convoy: every reaction is
answered, on both instances, while messages keep flowing."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from tests.faults.harness import make_users
from tests.support import Instance, unique, ws_connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RATE, BURST = 20, 40
COMMANDS = 400
STORM_USERS = 240


async def test_a_change_flood_is_held_to_the_write_bucket(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
    database_url: str,
    secret_key: str,
    pg: asyncpg.Connection,
) -> None:
    (instance,) = await hostile_instances(
        1, CHAT_RATE_LIMIT_PER_SECOND=RATE, CHAT_RATE_LIMIT_BURST=BURST
    )
    (flooder,) = await make_users(database_url, secret_key, 1, "cs")
    room = unique("cflood-")
    answers: Counter[str] = Counter()
    async with ws_connect(instance.url, flooder.token) as ws:
        await ws.join(room)
        await ws.send(type="send", room=room, body="target", ref="t")
        target = None
        while target is None:
            frame = await ws.recv()
            if frame["type"] == "ack" and frame.get("ref") == "t":
                target = frame["seq"]
        started = time.monotonic()
        kinds = ["react", "edit", "delete"]
        for i in range(COMMANDS):
            kind = kinds[i % 3]
            command: dict[str, Any] = {"type": kind, "room": room, "target": target, "ref": i}
            if kind == "react":
                command |= {"emoji": f"e{i % 15}", "op": "add" if i % 2 else "remove"}
            elif kind == "edit":
                command["body"] = f"edit {i}"
            await ws.send(**command)
        got = 0
        async with asyncio.timeout(60):
            while got < COMMANDS:
                frame = await ws.recv()
                if frame["type"] not in ("ack", "error") or frame.get("ref") is None:
                    continue
                got += 1
                if frame["type"] == "error":
                    answers[frame["code"]] += 1
                    if frame["code"] == "rate_limited":
                        assert 0 < frame["retry_after_ms"] <= 1000, frame
                        assert frame["target"] == target
                else:
                    answers["duplicate" if frame["duplicate"] else "stored"] += 1
        elapsed = time.monotonic() - started
    accepted = COMMANDS - answers["rate_limited"]
    print(f"\nchange flood: {dict(answers)} in {elapsed:.2f}s")
    assert answers["rate_limited"] > 0
    assert accepted <= BURST + RATE * (elapsed + 1), answers
    # Exactly what was accepted and changed something is in the log.
    events = await pg.fetchval(
        "SELECT count(*) FROM events WHERE room_id = (SELECT id FROM rooms WHERE name = $1)",
        room,
    )
    assert events == answers["stored"]
    assert set(answers) <= {"rate_limited", "stored", "duplicate", "not_found"}, answers


async def test_a_reaction_storm_on_one_message(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
    database_url: str,
    secret_key: str,
    pg: asyncpg.Connection,
) -> None:
    """240 users on two instances react to one message at once while messages flow: one
    event each, a gapless log, counts that end exact, every socket answered."""
    a, b = await hostile_instances(2, CHAT_RATE_LIMIT_PER_SECOND=0)
    people = await make_users(database_url, secret_key, STORM_USERS + 1, "rs")
    poster, crowd = people[0], people[1:]
    room = unique("rstorm-")
    async with ws_connect(a.url, poster.token) as post_ws:
        await post_ws.join(room)
        await post_ws.send(type="send", room=room, body="react to me", ref="t")
        target = None
        while target is None:
            frame = await post_ws.recv()
            if frame["type"] == "ack" and frame.get("ref") == "t":
                target = frame["seq"]

        async def react(i: int) -> tuple[str, int]:
            instance = (a, b)[i % 2]
            async with ws_connect(instance.url, crowd[i].token) as ws:
                await ws.join(room)
                await ws.send(type="react", room=room, target=target, emoji="🎉", op="add",
                              ref="r")  # fmt: skip
                async with asyncio.timeout(60):
                    while True:
                        frame = await ws.recv()
                        if frame.get("ref") == "r":
                            return frame["type"], frame["seq"]

        async def chatter() -> None:
            for i in range(50):
                await post_ws.send(type="send", room=room, body=f"meanwhile {i}")
                await asyncio.sleep(0.01)

        started = time.monotonic()
        results = await asyncio.gather(*(react(i) for i in range(STORM_USERS)), chatter())
        elapsed = time.monotonic() - started
    answers = [r for r in results if r is not None]
    assert [kind for kind, _ in answers] == ["ack"] * STORM_USERS
    seqs = sorted(seq for _, seq in answers)
    assert len(set(seqs)) == STORM_USERS
    room_id = await pg.fetchval("SELECT id FROM rooms WHERE name = $1", room)
    rows = await pg.fetch(
        "SELECT seq FROM messages WHERE room_id = $1 UNION ALL"
        " SELECT seq FROM events WHERE room_id = $1 ORDER BY 1",
        room_id,
    )
    last = await pg.fetchval("SELECT last_seq FROM rooms WHERE id = $1", room_id)
    assert [r["seq"] for r in rows] == list(range(1, last + 1))
    counts = await pg.fetchval(
        "SELECT reactions FROM messages WHERE room_id = $1 AND seq = $2", room_id, target
    )
    assert json.loads(counts) == [{"emoji": "🎉", "count": STORM_USERS}]
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM events WHERE room_id = $1 AND kind = 'reaction'", room_id
        )
        == STORM_USERS
    )
    counted = await pg.fetch(
        "SELECT count FROM events WHERE room_id = $1 AND kind = 'reaction' ORDER BY seq", room_id
    )
    # Each event carries the count after it: 1, 2, ..., 240 in log order.
    assert [r["count"] for r in counted] == list(range(1, STORM_USERS + 1))
    print(f"\nreaction storm: {STORM_USERS} reactions answered in {elapsed:.2f}s on two instances")


async def test_a_read_flood_is_held_to_the_rooms_bucket(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
    database_url: str,
    secret_key: str,
    pg: asyncpg.Connection,
) -> None:
    """`read` shares the bucket of `join` and `leave`: past its burst every read answers
    `rate_limited` and writes nothing; the cursor ends at the highest seq accepted (capped at
    the head) and never moved back on the way."""
    (instance,) = await hostile_instances(
        1, CHAT_RATE_LIMIT_PER_SECOND=RATE, CHAT_RATE_LIMIT_BURST=BURST
    )
    flooder, poster = await make_users(database_url, secret_key, 2, "rf")
    room = unique("rflood-")
    async with (
        ws_connect(instance.url, flooder.token) as ws,
        ws_connect(instance.url, poster.token) as posting,
    ):
        await ws.join(room)  # the cursor starts at 0, the head
        await posting.join(room)
        for i in range(5):
            await posting.send(type="send", room=room, body=f"m{i}")
        await ws.messages_until(room, 5)
        started = time.monotonic()
        for i in range(COMMANDS):
            await ws.send(type="read", room=room, seq=(i * 7) % 9, ref=i)
        acked: list[tuple[int, int, bool]] = []  # (asked, cursor, duplicate)
        limited = 0
        async with asyncio.timeout(60):
            while len(acked) + limited < COMMANDS:
                frame = await ws.recv()
                if frame.get("ref") is None or frame["type"] not in ("ack", "error"):
                    continue
                if frame["type"] == "error":
                    assert frame["code"] == "rate_limited", frame
                    limited += 1
                else:
                    acked.append(((frame["ref"] * 7) % 9, frame["seq"], frame["duplicate"]))
        elapsed = time.monotonic() - started
    burst = max(BURST, 100)  # the rooms bucket's burst covers CHAT_MAX_ROOMS_PER_CONNECTION
    assert limited > 0 and len(acked) <= burst + RATE * (elapsed + 1), (len(acked), limited)
    cursors = [cursor for _, cursor, _ in acked]
    assert cursors == sorted(cursors), "a cursor moved back"
    assert max(cursors) == 5 == max(min(asked, 5) for asked, _, _ in acked)
    # `duplicate` exactly when the cursor did not move.
    assert [dup for _, _, dup in acked] == [
        cursor == before for cursor, before in zip(cursors, [0, *cursors], strict=False)
    ]
    stored = await pg.fetchval(
        "SELECT last_read_seq FROM members m JOIN rooms r ON r.id = m.room_id "
        "WHERE r.name = $1 AND m.username = $2",
        room,
        flooder.name,
    )
    assert stored == 5
