"""Someone else who can NOTIFY on the same database (or publish on the same Redis) sends the
instances notifications of their own: unsigned, signed with another key, claiming a seq far
beyond the room. None of it reaches a socket, and the room's real messages still do."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as redis

from service.protocol import FanoutKey, MessagesNote, NotifiedMessage, PresenceNote, encode_note
from tests.support import Instance, metric, new_user, unique, ws_connect

CHANNEL = "chat"  # the default CHAT_BROADCAST_CHANNEL


def _forgeries(room_id: int, next_seq: int) -> list[str]:
    at = datetime.now(UTC)
    fake = MessagesNote(
        (NotifiedMessage(room_id, next_seq, "mallory", "forged body", None, at),), ()
    )
    claim = MessagesNote((), ((room_id, 1_000_000),))
    ghost = PresenceNote(room_id, "x", "mallory", "join")
    other_key = FanoutKey.from_secret("not this deployment's secret at all")
    plain = [encode_note(n) for n in (fake, claim, ghost)]
    return [*plain, *(other_key.sign(p) for p in plain), "0" * 64 + "." + plain[0]]


@pytest.mark.parametrize("backend", ["postgres", "redis"])
async def test_forged_notifications_reach_no_socket_and_silence_no_room(
    backend: str,
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
    database_url: str,
    redis_url: str,
) -> None:
    env = {"CHAT_BROADCAST_URL": redis_url} if backend == "redis" else {}
    (instance,) = await hostile_instances(1, **env)
    room = unique("forge-")
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        alice = await new_user(http)
        r = await http.post(f"/api/rooms/{room}/messages", json={"body": "first"},
                            headers=alice.headers)  # fmt: skip
        assert r.status_code == 201
        refused_before = await metric(instance, "chat_notifications_refused_total")
        async with ws_connect(instance.url, alice.token) as ws:
            joined, _ = await ws.join(room)
            conn = await asyncpg.connect(database_url, timeout=10)
            try:
                room_id = await conn.fetchval("SELECT id FROM rooms WHERE name = $1", room)
                forgeries = _forgeries(room_id, joined["last_seq"] + 1)
                if backend == "postgres":
                    for payload in forgeries:
                        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
                else:
                    client = redis.Redis.from_url(redis_url)
                    try:
                        for payload in forgeries:
                            await client.publish(CHANNEL, payload)
                    finally:
                        await client.aclose()
            finally:
                await conn.close(timeout=5)
            # The room's real messages still arrive, and nothing else does.
            for body in ("second", "third"):
                r = await http.post(f"/api/rooms/{room}/messages", json={"body": body},
                                    headers=alice.headers)  # fmt: skip
                assert r.status_code == 201
            await ws.send(type="ping", ref="end")
            frames: list[dict[str, object]] = []
            while len([f for f in frames if f["type"] in ("message", "pong")]) < 3:
                frames.append(await ws.recv(timeout=15))
            frames = [f for f in frames if f["type"] != "pong"]
        assert [(f["seq"], f["body"]) for f in frames if f["type"] == "message"] == [
            (joined["last_seq"] + 1, "second"),
            (joined["last_seq"] + 2, "third"),
        ]
        assert all(f["type"] == "message" for f in frames), frames  # no forged presence
        assert "forged" not in orjson.dumps(frames).decode()
        refused = await metric(instance, "chat_notifications_refused_total") - refused_before
        assert refused >= len(forgeries), refused
