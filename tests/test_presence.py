"""Presence counts users, not connections, across tabs and instances; dead instances expire."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support import Instance, User, WsClient, new_user, unique, ws_connect


async def _presence_until(
    ws: WsClient, user: str, event: str, timeout: float = 20
) -> list[dict[str, Any]]:
    """Presence frames received until `user` `event`; returns them all (the last included)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.recv(timeout)
            if frame["type"] == "presence":
                seen.append(frame)
                if frame["user"] == user and frame["event"] == event:
                    return seen


async def _online(instance: Instance, user: User, room: str) -> list[str]:
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        r = await http.get(f"/api/rooms/{room}/online", headers=user.headers)
        assert r.status_code == 200, r.text
        users: list[str] = r.json()["users"]
        return users


async def test_two_tabs_make_one_join_and_one_leave(pair: tuple[Instance, Instance]) -> None:
    """Two tabs of one user on two instances: one join event, and one leave after both close."""
    a, b = pair
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        alice, bob, carol = [await new_user(http) for _ in range(3)]
    room = unique("r-")
    async with ws_connect(b.url, bob.token) as observer:
        joined, _ = await observer.join(room)
        assert joined["online"] == [bob.name]
        tab1 = ws_connect(a.url, alice.token)
        ws1 = await tab1.__aenter__()
        joined, _ = await ws1.join(room)
        assert sorted(joined["online"]) == sorted([alice.name, bob.name])
        assert await _presence_until(observer, alice.name, "join") == [
            {"type": "presence", "room": room, "user": alice.name, "event": "join"}
        ]
        async with ws_connect(b.url, alice.token) as ws2:
            joined, _ = await ws2.join(room)
            assert alice.name in joined["online"]
            # Carol's join is a barrier: presence events travel in commit order, so a second
            # join of alice's would arrive before it.
            async with ws_connect(a.url, carol.token) as ws3:
                await ws3.join(room)
                seen = await _presence_until(observer, carol.name, "join")
                assert [f["user"] for f in seen] == [carol.name]
            seen = await _presence_until(observer, carol.name, "leave")
            assert [f["user"] for f in seen] == [carol.name]
            assert sorted(await _online(a, bob, room)) == sorted([alice.name, bob.name])
            await tab1.__aexit__(None, None, None)  # first tab closes: alice is still online
            async with ws_connect(a.url, carol.token) as ws3:
                await ws3.join(room)
                seen = await _presence_until(observer, carol.name, "join")
                assert [f["user"] for f in seen] == [carol.name]
            assert alice.name in await _online(b, bob, room)
        # The last tab closed.
        seen = await _presence_until(observer, alice.name, "leave")
        assert [(f["user"], f["event"]) for f in seen] == [
            (carol.name, "leave"),
            (alice.name, "leave"),
        ]
        assert await _online(b, bob, room) == [bob.name]


async def test_typing_reaches_the_other_members_only(pair: tuple[Instance, Instance]) -> None:
    """`typing` reaches the room's other members on any instance, not the typist."""
    a, b = pair
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        alice, bob = await new_user(http), await new_user(http)
    room = unique("r-")
    async with ws_connect(a.url, alice.token) as ws_a, ws_connect(b.url, bob.token) as ws_b:
        await ws_a.join(room)
        await ws_b.join(room)
        await ws_a.send(type="typing", room=room)
        frame, _ = await ws_b.expect("typing")
        assert frame == {"type": "typing", "room": room, "user": alice.name}
        await ws_a.send(type="ping", ref="after-typing")
        pong, before = await ws_a.expect("pong")
        assert pong["ref"] == "after-typing"
        assert all(f["type"] != "typing" for f in before)


@pytest.mark.timeout(120)
async def test_users_of_a_killed_instance_expire(
    spawn: Callable[..., Instance], own_database: str
) -> None:
    """kill -9 an instance: its users get a leave event and leave the online list in time."""
    url = own_database  # short presence TTLs would disturb the other tests' instances
    fast = {"CHAT_PRESENCE_TTL_SECONDS": 4, "CHAT_PRESENCE_HEARTBEAT_SECONDS": 1}
    doomed, survivor = spawn(database=url, **fast), spawn(database=url, **fast)
    await doomed.wait_ready()
    await survivor.wait_ready()
    async with httpx.AsyncClient(base_url=survivor.url, timeout=10) as http:
        alice, bob = await new_user(http), await new_user(http)
    room = unique("r-")
    async with ws_connect(survivor.url, bob.token) as observer:
        await observer.join(room)
        ws = ws_connect(doomed.url, alice.token)
        ws_alice = await ws.__aenter__()
        await ws_alice.join(room)
        await _presence_until(observer, alice.name, "join")
        assert alice.name in await _online(survivor, bob, room)
        doomed.kill()
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        await _presence_until(observer, alice.name, "leave", timeout=60)
        assert loop.time() - killed_at < 60
        assert await _online(survivor, bob, room) == [bob.name]
        with pytest.raises(Exception):  # noqa: B017, PT011 - the socket died with its instance
            await ws_alice.recv(5)
    survivor.stop()
