"""The same delivery guarantees with fan-out through broadcaster's Redis backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from tests.support import Instance, assert_exactly_once_in_order, new_user, unique, ws_connect


@pytest.fixture(scope="module")
async def redis_pair(spawn: Callable[..., Instance], redis_url: str) -> tuple[Instance, Instance]:
    env = {
        "CHAT_BROADCAST_URL": redis_url,
        "CHAT_BROADCAST_CHANNEL": unique("chat_"),
        "CHAT_RATE_LIMIT_PER_SECOND": 0,
    }
    a, b = spawn(**env), spawn(**env)
    await a.wait_ready()
    await b.wait_ready()
    return a, b


async def test_two_instances_over_redis(redis_pair: tuple[Instance, Instance]) -> None:
    """Sent on A, received on A and B, exactly once and in order, with Redis fan-out."""
    a, b = redis_pair
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        alice, bob = await new_user(http), await new_user(http)
    room = unique("r-")
    async with (
        ws_connect(a.url, alice.token) as on_a,
        ws_connect(b.url, bob.token) as on_b,
        ws_connect(b.url, bob.token) as sender_b,
    ):
        for ws in (on_a, on_b, sender_b):
            await ws.join(room)
        receivers = [asyncio.create_task(ws.messages_until(room, 400, 60)) for ws in (on_a, on_b)]
        for i in range(200):
            await on_a.send(type="send", room=room, body=f"a{i}")
            await sender_b.send(type="send", room=room, body=f"b{i}")
        for got in await asyncio.gather(*receivers):
            assert_exactly_once_in_order([m["seq"] for m in got], 1, 400)
            assert [m["body"] for m in got if m["body"][0] == "a"] == [f"a{i}" for i in range(200)]
