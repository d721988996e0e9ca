"""Delivery across real instances: exactly once, in order, whichever instance is used."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from tests.support import (
    Instance,
    User,
    WsClient,
    assert_exactly_once_in_order,
    new_user,
    unique,
    ws_connect,
)


async def _users(instance: Instance, n: int) -> list[User]:
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        return [await new_user(http) for _ in range(n)]


async def _send_many(ws: WsClient, room: str, count: int, tag: str) -> list[dict[str, object]]:
    """Pipeline `count` sends, then wait for every ack."""
    for i in range(count):
        await ws.send(type="send", room=room, body=f"{tag} {i}", client_id=f"{tag}-{i}")
    acks: list[dict[str, object]] = []
    async with asyncio.timeout(60):
        while len(acks) < count:
            frame = await ws.recv(60)
            assert frame["type"] != "error", frame
            if frame["type"] == "ack":
                acks.append(frame)
    return acks


async def test_message_sent_on_a_reaches_sockets_on_a_and_b(
    pair: tuple[Instance, Instance],
) -> None:
    """A socket message sent through A reaches joined sockets on A and on B; so does a REST post."""
    a, b = pair
    alice, bob = await _users(a, 2)
    room = unique("r-")
    async with ws_connect(a.url, alice.token) as on_a, ws_connect(b.url, bob.token) as on_b:
        await on_a.join(room)
        await on_b.join(room)
        await on_a.send(type="send", room=room, body="over the wire", client_id="m1")
        for ws in (on_a, on_b):
            got = await ws.messages_until(room, 1)
            assert [(m["seq"], m["author"], m["body"]) for m in got] == [
                (1, alice.name, "over the wire")
            ]
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
            r = await http.post(
                f"/api/rooms/{room}/messages", json={"body": "via rest"}, headers=bob.headers
            )
            assert r.status_code == 201, r.text
        for ws in (on_a, on_b):
            got = await ws.messages_until(room, 2)
            assert [(m["seq"], m["author"], m["body"]) for m in got] == [(2, bob.name, "via rest")]


async def test_ordering_under_load_across_instances(pair: tuple[Instance, Instance]) -> None:
    """4 senders over both instances send 500 each; every receiver gets 1..2000 once, in order."""
    a, b = pair
    users = await _users(a, 4)
    room = unique("r-")
    instances = [a, b, a, b]
    async with (
        ws_connect(a.url, users[0].token) as r1,
        ws_connect(b.url, users[1].token) as r2,
        ws_connect(b.url, users[2].token) as r3,
    ):
        for r in (r1, r2, r3):
            await r.join(room)
        receivers = [asyncio.create_task(r.messages_until(room, 2000, 90)) for r in (r1, r2, r3)]

        async def sender(i: int) -> None:
            async with ws_connect(instances[i].url, users[i].token) as ws:
                await ws.join(room)
                acks = await _send_many(ws, room, 500, f"s{i}")
                assert len({ack["seq"] for ack in acks}) == 500

        await asyncio.gather(*(sender(i) for i in range(4)))
        for got in await asyncio.gather(*receivers):
            assert_exactly_once_in_order([m["seq"] for m in got], 1, 2000)
            # Each sender's own messages keep the order in which it sent them.
            for i in range(4):
                mine = [int(m["body"].split()[1]) for m in got if m["body"].startswith(f"s{i} ")]
                assert mine == list(range(500))


async def test_resume_gets_exactly_the_missed_messages(pair: tuple[Instance, Instance]) -> None:
    """A client that left rejoins with since and receives exactly what it missed."""
    a, b = pair
    alice, bob = await _users(a, 2)
    room = unique("r-")
    async with ws_connect(a.url, alice.token) as ws:
        await ws.join(room)
        acks = await _send_many(ws, room, 10, "before")
        last = max(int(str(ack["seq"])) for ack in acks)
        assert last == 10
    async with ws_connect(a.url, bob.token) as sender:
        await sender.join(room)
        await _send_many(sender, room, 300, "missed")
    async with ws_connect(b.url, alice.token) as ws:
        joined, replay = await ws.join(room, since=last)
        assert_exactly_once_in_order([m["seq"] for m in replay], 11, 310)
        assert joined["last_seq"] == 310
        assert joined["truncated"] is False
        assert replay[0]["body"] == "missed 0"


async def test_resume_beyond_the_limit_is_truncated(
    spawn: Callable[..., Instance], pair: tuple[Instance, Instance]
) -> None:
    """With more than CHAT_RESUME_LIMIT missed, the newest ones come and truncated is true."""
    a, _ = pair
    limited = spawn(CHAT_RESUME_LIMIT=100, CHAT_RATE_LIMIT_PER_SECOND=0)
    await limited.wait_ready()
    (alice,) = await _users(a, 1)
    room = unique("r-")
    async with ws_connect(a.url, alice.token) as ws:
        await ws.join(room)
        await _send_many(ws, room, 250, "m")
    async with ws_connect(limited.url, alice.token) as ws:
        joined, replay = await ws.join(room, since=20)
        assert joined["truncated"] is True
        assert_exactly_once_in_order([m["seq"] for m in replay], 151, 250)
        joined, replay = await ws.join(unique("r-"), since=0)
        assert joined["truncated"] is False
    limited.stop()


async def test_join_during_a_send_storm_has_no_gap_and_no_double(
    pair: tuple[Instance, Instance],
) -> None:
    """Clients joining while messages stream in see replay then live with no gap or repeat."""
    a, b = pair
    users = await _users(a, 2)
    room = unique("r-")
    total = 600
    async with ws_connect(a.url, users[0].token) as sender:
        await sender.join(room)
        storm = asyncio.create_task(_send_many(sender, room, total, "x"))

        async def late_joiner(n: int) -> None:
            await asyncio.sleep(random.uniform(0, 1.5))
            target = (a, b)[n % 2]
            async with ws_connect(target.url, users[1].token) as ws:
                since = None if n % 3 == 0 else random.randint(0, 50)
                joined, replay = await ws.join(room, since=since)
                seqs = [m["seq"] for m in replay]
                assert joined["last_seq"] == (seqs[-1] if seqs else (since or 0)) or not seqs
                if joined["last_seq"] < total:
                    live = await ws.messages_until(room, total, 60)
                    seqs += [m["seq"] for m in live]
                first = seqs[0] if seqs else total
                assert_exactly_once_in_order(seqs, first, total)
                if since is not None and since <= joined["last_seq"]:
                    assert first == since + 1
                elif since is not None:
                    # A since beyond the room's head when the join was read is a plain join.
                    assert first == max(1, joined["last_seq"] - 49)

        await asyncio.gather(*(late_joiner(n) for n in range(24)))
        await storm


async def test_idempotent_retry_over_the_socket(pair: tuple[Instance, Instance]) -> None:
    """A send repeated with the same client_id is acked as a duplicate with the original seq."""
    a, b = pair
    (alice,) = await _users(a, 1)
    room = unique("r-")
    async with ws_connect(a.url, alice.token) as ws:
        await ws.join(room)
        await ws.send(type="send", room=room, body="once", client_id="same")
        first, _ = await ws.expect("ack")
    async with ws_connect(b.url, alice.token) as ws:
        await ws.join(room)
        await ws.send(type="send", room=room, body="once", client_id="same")
        again, _ = await ws.expect("ack")
        await ws.send(type="send", room=room, body="next", client_id="other")
        nxt, _ = await ws.expect("ack")
    assert first["duplicate"] is False
    assert again["duplicate"] is True
    assert (again["seq"], again["created_at"]) == (first["seq"], first["created_at"])
    assert nxt["seq"] == first["seq"] + 1


async def test_emoji_body_of_the_maximum_length_crosses_instances(
    pair: tuple[Instance, Instance],
) -> None:
    """A 4000-character body of 4-byte characters (16 kB, over NOTIFY's limit) is delivered."""
    a, b = pair
    alice, bob = await _users(a, 2)
    room = unique("r-")
    body = "😀" * 4000
    async with ws_connect(a.url, alice.token) as on_a, ws_connect(b.url, bob.token) as on_b:
        await on_a.join(room)
        await on_b.join(room)
        await on_a.send(type="send", room=room, body=body)
        (got,) = await on_b.messages_until(room, 1)
        assert got["body"] == body


async def _listener_pids(database_url: str) -> list[int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


@pytest.mark.timeout(240)
async def test_killing_the_listener_loses_nothing(
    pair: tuple[Instance, Instance], database_url: str
) -> None:
    """pg_terminate_backend on every LISTEN connection mid-storm: all still arrive, in order,
    and /readyz reports 503 until the listener is rebuilt."""
    a, b = pair
    users = await _users(a, 3)
    room = unique("r-")
    total = 400
    async with (
        ws_connect(b.url, users[1].token) as on_b,
        ws_connect(a.url, users[2].token) as on_a,
        ws_connect(a.url, users[0].token) as sender,
    ):
        for ws in (on_b, on_a, sender):
            await ws.join(room)
        receivers = [
            asyncio.create_task(ws.messages_until(room, total, 120)) for ws in (on_a, on_b)
        ]
        sent = 0

        async def trickle(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                await _send_many(sender, room, 1, f"t{sent}")
                sent += 1
                await asyncio.sleep(0.01)

        await trickle(50)
        pids = await _listener_pids(database_url)
        assert len(pids) >= 2, "each instance should hold a LISTEN connection"
        conn = await asyncpg.connect(database_url)
        try:
            for pid in pids:
                await conn.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()
        saw_503 = False

        async def watch_ready() -> None:
            nonlocal saw_503
            async with httpx.AsyncClient(base_url=b.url, timeout=5) as http:
                for _ in range(200):
                    if (await http.get("/readyz")).status_code == 503:
                        saw_503 = True
                        return
                    await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch_ready())
        await trickle(total - 50)
        await watcher
        for got in await asyncio.gather(*receivers):
            assert_exactly_once_in_order([m["seq"] for m in got], 1, total)
        assert saw_503, "/readyz never reported the dead listener"
        for instance in (a, b):
            await instance.wait_ready(30)
