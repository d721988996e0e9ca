"""Write abuse against a real instance. One user's REST post flood is held to the user's
bucket (CHAT_RATE_LIMIT_PER_SECOND / _BURST): the rest answer 429 with Retry-After, and
exactly the accepted posts are stored. One user creating rooms as fast as it can, over REST
and the socket at once, creates its budget (CHAT_ROOMS_CREATED_PER_HOUR) and no more;
existing rooms stay open to it and other users keep their own budgets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.faults.harness import make_users
from tests.support import Instance, User, WsClient, unique, ws_connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RATE, BURST = 20, 40
POSTS = 300
IN_FLIGHT = 20

ROOMS_PER_HOUR = 5
ATTEMPTS = 20  # new rooms tried over each of REST and the socket


async def test_a_rest_post_flood_is_held_to_the_users_bucket(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
    database_url: str,
    secret_key: str,
    pg: asyncpg.Connection,
) -> None:
    """300 posts, 20 in flight, from one user: at most the burst plus the rate over the
    flood's duration are accepted, every other one is 429 with Retry-After, the database
    holds exactly the accepted ones, and another user posts at once."""
    (instance,) = await hostile_instances(
        1, CHAT_RATE_LIMIT_PER_SECOND=RATE, CHAT_RATE_LIMIT_BURST=BURST
    )
    flooder, other = await make_users(database_url, secret_key, 2, "wr")
    room = unique("flood-")
    path = f"/api/rooms/{room}/messages"
    codes: Counter[int] = Counter()
    retry_after: list[int] = []
    gate = asyncio.Semaphore(IN_FLIGHT)
    limits = httpx.Limits(max_connections=IN_FLIGHT + 1)
    async with httpx.AsyncClient(base_url=instance.url, timeout=30, limits=limits) as http:

        async def post(i: int) -> None:
            body = {"body": f"flood {i}", "client_id": f"c{i}"}
            async with gate:
                r = await http.post(path, json=body, headers=flooder.headers)
            codes[r.status_code] += 1
            if r.status_code == 429:
                retry_after.append(int(r.headers["retry-after"]))

        started = time.monotonic()
        async with asyncio.timeout(60):
            await asyncio.gather(*(post(i) for i in range(POSTS)))
        elapsed = time.monotonic() - started
        r = await http.post(path, json={"body": "someone else"}, headers=other.headers)
        assert r.status_code == 201, r.text
    stored = await pg.fetchval(
        "SELECT count(*) FROM messages m JOIN rooms r ON r.id = m.room_id "
        "WHERE r.name = $1 AND m.author = $2",
        room,
        flooder.name,
    )
    print(f"\n{POSTS} posts in {elapsed:.2f} s: {dict(codes)}, {stored} stored")
    assert set(codes) == {201, 429}, codes
    assert stored == codes[201]
    assert BURST <= codes[201] <= BURST + RATE * elapsed + 1, (codes, elapsed)
    assert len(retry_after) == codes[429] and min(retry_after) >= 1


async def _join_all(ws: WsClient, rooms: list[str]) -> dict[str, dict[str, Any]]:
    """Send every join at once; the answer (`joined` or `error`) to each, by room."""
    for ref, room in enumerate(rooms):
        await ws.send(type="join", room=room, ref=ref)
    answers: dict[str, dict[str, Any]] = {}
    while len(answers) < len(rooms):
        frame = await ws.recv()
        if frame["type"] in ("joined", "error"):
            answers[rooms[frame["ref"]]] = frame
    return answers


async def test_a_room_creation_flood_creates_at_most_the_users_budget(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
    database_url: str,
    secret_key: str,
    pg: asyncpg.Connection,
) -> None:
    """20 posts to new rooms and 20 joins of new rooms at once, by one user allowed 5 an
    hour: 5 rooms exist afterwards, exactly those whose post or join succeeded; the others
    answered 429 with Retry-After (REST) or `rate_limited` with retry_after_ms (socket).
    The user still posts to and joins an existing room; another user still creates one."""
    (instance,) = await hostile_instances(1, CHAT_ROOMS_CREATED_PER_HOUR=ROOMS_PER_HOUR)
    creator, other = await make_users(database_url, secret_key, 2, "rc")
    prefix = unique("spree-")
    by_rest = [f"{prefix}-r{i}" for i in range(ATTEMPTS)]
    by_socket = [f"{prefix}-w{i}" for i in range(ATTEMPTS)]
    existing = unique("old-")

    async def post(http: httpx.AsyncClient, user: User, room: str) -> httpx.Response:
        return await http.post(
            f"/api/rooms/{room}/messages", json={"body": "first!"}, headers=user.headers
        )

    async with (
        httpx.AsyncClient(base_url=instance.url, timeout=30) as http,
        ws_connect(instance.url, creator.token) as ws,
    ):
        assert (await post(http, other, existing)).status_code == 201
        started = time.monotonic()
        async with asyncio.timeout(60):
            rest, socket = await asyncio.gather(
                asyncio.gather(*(post(http, creator, room) for room in by_rest)),
                _join_all(ws, by_socket),
            )
        elapsed = time.monotonic() - started
        rows = await pg.fetch("SELECT name FROM rooms WHERE name LIKE $1", f"{prefix}-%")
        created = {r["name"] for r in rows}
        accepted = {room for room, r in zip(by_rest, rest, strict=True) if r.status_code == 201}
        accepted |= {room for room, frame in socket.items() if frame["type"] == "joined"}
        refused_rest = [r for r in rest if r.status_code != 201]
        refused_socket = [f for f in socket.values() if f["type"] != "joined"]
        print(
            f"\n{2 * ATTEMPTS} creations in {elapsed:.2f} s: {len(created)} rooms, "
            f"{len(refused_rest)} refused over REST, {len(refused_socket)} on the socket"
        )
        assert len(created) == ROOMS_PER_HOUR and created == accepted, (created, accepted)
        assert all(r.status_code == 429 for r in refused_rest), [r.text for r in refused_rest]
        assert all(1 <= int(r.headers["retry-after"]) <= 3600 for r in refused_rest)
        assert all(
            f["code"] == "rate_limited" and 0 < f["retry_after_ms"] <= 3_600_000 and f["room"]
            for f in refused_socket
        ), refused_socket
        # Existing rooms are unaffected; other users have budgets of their own.
        assert (await post(http, creator, existing)).status_code == 201
        joined, _ = await ws.join(existing)
        assert joined["room"] == existing
        assert (await post(http, other, unique("theirs-"))).status_code == 201
