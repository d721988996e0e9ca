"""A join/leave flood: three users (two with three sockets each, one with a single socket)
join and leave one room as fast as a client may for FLOOD_SECONDS, while two bystanders (one
on each instance) count the presence frames they get. Presence changes are coalesced per
(room, user): each bystander gets at most about one change per second per flapping user
(without coalescing, every time a user's last socket left or its first one joined would be
one), and the state each user ends in is the last thing announced, and what GET /online
says."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support import Instance, User, WsClient, new_user, unique, ws_connect

pytestmark = pytest.mark.timeout(120)

FLOOD_SECONDS = 6.0
SOCKETS_PER_USER = 3
# Commands per socket per second: under the join/leave rate limit a client may meet.
PACE = 16
DEBOUNCE = 1.0  # CHAT_PRESENCE_DEBOUNCE_SECONDS's default
SETTLE_SECONDS = 10.0


@dataclass
class Bystander:
    """Joined to the room for the whole flood; records every presence frame it gets."""

    ws: WsClient
    frames: list[tuple[float, str, str]] = field(default_factory=list)  # (at, user, event)

    async def listen(self) -> None:
        while True:
            frame = await self.ws.recv(60)
            if frame["type"] == "presence":
                self.frames.append((time.monotonic(), frame["user"], frame["event"]))

    def of(self, user: str) -> list[str]:
        return [event for _, who, event in self.frames if who == user]


@dataclass
class Tally:
    """A flapping user's sockets joined now, and how often that went 0 -> 1 or 1 -> 0: the
    presence changes an instance that coalesced nothing would announce."""

    joined: int = 0
    changes: int = 0

    def moved(self, by: int) -> None:
        before, self.joined = self.joined, self.joined + by
        self.changes += (before == 0) != (self.joined == 0)


@dataclass
class Flapper:
    """One socket of a flapping user: join, leave, join, leave ... until the deadline."""

    ws: WsClient
    room: str
    tally: Tally
    commands: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    async def answer(self, ref: str) -> dict[str, Any]:
        while True:
            frame = await self.ws.recv(20)
            if frame.get("ref") == ref:
                return frame

    async def command(self, kind: str, expected: str) -> None:
        """Send `kind` until it is answered with `expected` (a rate limit means later)."""
        while True:
            ref = f"{kind}-{self.commands}"
            await self.ws.send(type=kind, room=self.room, ref=ref)
            self.commands += 1
            frame = await self.answer(ref)
            if frame["type"] == expected:
                return
            assert frame["type"] == "error" and frame["code"] == "rate_limited", frame
            self.refused[frame["code"]] += 1
            await asyncio.sleep(frame.get("retry_after_ms", 100) / 1000)

    async def flap(self, until: float, stay: bool) -> None:
        while time.monotonic() < until:
            await self.command("join", "joined")
            self.tally.moved(+1)
            await asyncio.sleep(random.uniform(0, 2 / PACE))
            await self.command("leave", "left")
            self.tally.moved(-1)
            await asyncio.sleep(random.uniform(0, 2 / PACE))
        if stay:
            await self.command("join", "joined")
            self.tally.moved(+1)


async def _online(instance: Instance, user: User, room: str) -> list[str]:
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        r = await http.get(f"/api/rooms/{room}/online", headers=user.headers)
        assert r.status_code == 200, r.text
        users: list[str] = r.json()["users"]
        return users


async def test_a_join_leave_flood_is_coalesced(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
) -> None:
    a, b = await hostile_instances(2)
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        leaver, stayer, single, watcher_a, watcher_b = [await new_user(http) for _ in range(5)]
    tallies = {user.name: Tally() for user in (leaver, stayer, single)}
    room = unique("flood-")
    async with (
        ws_connect(a.url, watcher_a.token) as ws_a,
        ws_connect(b.url, watcher_b.token) as ws_b,
    ):
        await ws_a.join(room)
        await ws_b.join(room)
        bystanders = [Bystander(ws_a), Bystander(ws_b)]
        listening = [asyncio.create_task(x.listen()) for x in bystanders]
        sockets = [
            (user, ws_connect(a.url, user.token))
            for user in (leaver, stayer)
            for _ in range(SOCKETS_PER_USER)
        ] + [(single, ws_connect(a.url, single.token))]
        opened = [(user, await cm.__aenter__()) for user, cm in sockets]
        try:
            flappers = [(user, Flapper(ws, room, tallies[user.name])) for user, ws in opened]
            # One socket of the stayer ends joined; every other socket ends having left.
            staying = next(f for user, f in flappers if user is stayer)
            started = time.monotonic()
            until = started + FLOOD_SECONDS
            await asyncio.gather(*(f.flap(until, stay=f is staying) for _, f in flappers))
            flooded = time.monotonic() - started
            expected = {leaver.name: "leave", stayer.name: "join", single.name: "leave"}
            async with asyncio.timeout(SETTLE_SECONDS):
                while any(
                    x.of(name)[-1:] != [event]
                    for x in bystanders
                    for name, event in expected.items()
                ):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(2 * DEBOUNCE)  # nothing further comes
            span = time.monotonic() - started
            online = await _online(b, watcher_b, room)
        finally:
            for task in listening:
                task.cancel()
            await asyncio.gather(*listening, return_exceptions=True)
            for _, cm in sockets:
                await cm.__aexit__(None, None, None)

    commands = sum(f.commands for _, f in flappers)
    refused = sum(sum(f.refused.values()) for _, f in flappers)
    counts = {name: [len(x.of(name)) for x in bystanders] for name in expected}
    print(
        f"\npresence flood: 2 users x {SOCKETS_PER_USER} sockets and 1 x 1 sent {commands} "
        f"joins and leaves in {flooded:.1f}s ({refused} refused as rate_limited); changes "
        f"without coalescing {[t.changes for t in tallies.values()]}; presence frames per "
        f"bystander (on a, on b) over {span:.1f}s: {list(counts.values())}; final online "
        f"{len(online)} users, as expected"
    )
    for name, event in expected.items():
        for x in bystanders:
            changes = x.of(name)
            # About one per second, plus the final state: never the flood itself.
            assert len(changes) <= span / DEBOUNCE + 1, (name, changes)
            assert changes[-1] == event, (name, changes)
            assert all(e != f for e, f in itertools.pairwise(changes)), changes
    assert commands > 10 * len(counts) * FLOOD_SECONDS, "the flood was no flood"
    assert sorted(online) == sorted([stayer.name, watcher_a.name, watcher_b.name])
    assert all(t.changes > span for t in tallies.values()), "some user hardly flapped"
