"""Past two instances: three instances fanning out through Redis, everyone sending and
receiving everywhere."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.support import (
    Instance,
    WsClient,
    assert_exactly_once_in_order,
    new_user,
    unique,
    ws_connect,
)

PER_SENDER = 150


@pytest.fixture(scope="module")
async def trio(spawn: Callable[..., Instance], redis_url: str) -> AsyncIterator[list[Instance]]:
    """Three instances of this module's own on one Redis channel, rate limit off."""
    env = {
        "CHAT_BROADCAST_URL": redis_url,
        "CHAT_BROADCAST_CHANNEL": unique("scale_"),
        "CHAT_RATE_LIMIT_PER_SECOND": 0,
    }
    instances = [spawn(**env) for _ in range(3)]
    try:
        for instance in instances:
            await instance.wait_ready()
        yield instances
    finally:
        for instance in instances:
            instance.stop()


async def test_three_instances_over_redis_everyone_everywhere(trio: list[Instance]) -> None:
    """A sender and a receiver on each of three instances: all six sockets get every message
    once, in seq order, and each sender's messages in the order it sent them."""
    room = unique("scale-")
    total = 3 * PER_SENDER
    async with httpx.AsyncClient(base_url=trio[0].url, timeout=10) as http:
        users = [await new_user(http) for _ in range(6)]
    async with contextlib.AsyncExitStack() as stack:
        senders: list[WsClient] = []
        receivers: list[WsClient] = []
        for i, instance in enumerate(trio):
            for group, user in ((senders, users[i]), (receivers, users[3 + i])):
                ws = await stack.enter_async_context(ws_connect(instance.url, user.token))
                await ws.join(room)
                group.append(ws)
        reading = [
            asyncio.create_task(ws.messages_until(room, total, 90)) for ws in senders + receivers
        ]
        for n in range(PER_SENDER):
            for i, ws in enumerate(senders):
                await ws.send(type="send", room=room, body=f"s{i}-{n}")
        for got in await asyncio.gather(*reading):
            assert_exactly_once_in_order([m["seq"] for m in got], 1, total)
            for i in range(3):
                mine = [m["body"] for m in got if m["body"].startswith(f"s{i}-")]
                assert mine == [f"s{i}-{n}" for n in range(PER_SENDER)]
