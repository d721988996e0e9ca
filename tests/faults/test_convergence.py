"""Convergence of the room log under faults (PROTOCOL v2, guarantees 2-5): two instances;
mutators post, reply, edit, delete and react in a storm through both; observers apply every
frame they get by the `version` rule, and resume with `since` whenever their socket goes.
One observer also drops its socket on purpose mid-storm, in every run; the runs differ in
the fault added: none, an instance killed with -9, the LISTEN connections terminated, or
PostgreSQL restarted.

At the end each observer saw every seq of the log once, in order, and holds, field for
field, the state a fresh REST load of the room gives."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from service import pgcluster
from tests.faults.conftest import MakeUsers
from tests.faults.harness import RECONNECT_DELAY, Urls, close_code, dumps, join, loads, metric
from tests.support import Instance, User, unique

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# More distinct emoji than a message may carry (20): some reactions meet `limit_reached`.
EMOJI = ["👍", "🎉", "❤️", "😂", "🙂", "🔥", "👀", "✅", "🚀", "💯", "🤔", "😢", "🙏", "👏",
         "😮", "🥳", "⭐", "🍕", "☕", "🐛", "🎯", "📌", "🧪", "👨‍👩‍👧"]  # fmt: skip
ANSWERS = frozenset({"ack", "error"})
# Refusals a storm meets honestly: a target deleted meanwhile, a 21st emoji, the database
# away. Anything else fails the test.
EXPECTED_ERRORS = frozenset({"not_found", "limit_reached", "unavailable"})
MESSAGE_FIELDS = (
    "seq", "author", "body", "created_at", "client_id", "reply_to", "edited_at", "deleted",
    "version",
)  # fmt: skip


@dataclass
class Mutator:
    """Sends `ops` random commands (a send, a reply, an edit or delete of its own message, a
    reaction added or removed) with up to `window` unanswered; after a lost socket it
    reconnects (to the next instance) and goes on."""

    user: User
    room: str
    urls: Urls
    ops: int
    seed: int
    window: int = 4
    sent: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    connections: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.mine: list[int] = []  # seqs of own messages
        self.seen: list[int] = []  # seqs of every message seen

    @property
    def done(self) -> bool:
        return self.sent >= self.ops

    async def run(self) -> None:
        while not self.done:
            ws = await self.urls.connect(self.user.token)
            self.connections += 1
            try:
                _, replay = await join(ws, self.room, None)
                self.seen += [m["seq"] for m in replay]
                await self._session(ws)
            except ConnectionClosed:
                self.urls.advance()
            finally:
                await ws.close()
            await asyncio.sleep(RECONNECT_DELAY)

    def _command(self) -> dict[str, Any]:
        rng, n = self.rng, self.sent
        roll = rng.random()
        base: dict[str, Any] = {"room": self.room, "ref": n}
        if roll < 0.35 or not self.seen:
            frame = {**base, "type": "send", "body": f"{self.user.name} {n}",
                     "client_id": f"{self.user.name}-{n}"}  # fmt: skip
            if self.seen and rng.random() < 0.3:
                frame["reply_to"] = rng.choice(self.seen)
            return frame
        if roll < 0.55 and self.mine:
            return {**base, "type": "edit", "target": rng.choice(self.mine),
                    "body": f"edited {n} ✏️ {rng.randrange(3)}"}  # fmt: skip
        if roll < 0.62 and self.mine:
            return {**base, "type": "delete", "target": rng.choice(self.mine)}
        return {**base, "type": "react", "target": rng.choice(self.seen[-40:]),
                "emoji": rng.choice(EMOJI), "op": rng.choice(["add", "add", "remove"])}  # fmt: skip

    async def _session(self, ws: Any) -> None:
        pending: dict[int, dict[str, Any]] = {}
        while not self.done or pending:
            while not self.done and len(pending) < self.window:
                frame = self._command()
                pending[frame["ref"]] = frame
                self.sent += 1
                await ws.send(dumps(frame))
            got = loads(await ws.recv())
            if got["type"] == "message" and got["room"] == self.room:
                self.seen.append(got["seq"])
            if got["type"] not in ANSWERS or got.get("ref") not in pending:
                continue
            asked = pending.pop(got["ref"])
            if got["type"] == "error":
                assert got["code"] in EXPECTED_ERRORS, (asked, got)
                self.answers[got["code"]] += 1
                continue
            self.answers[f"{asked['type']}{' duplicate' if got['duplicate'] else ''}"] += 1
            if asked["type"] == "send" and not got["duplicate"]:
                self.mine.append(got["seq"])


@dataclass
class Observer:
    """Applies every frame of the room by the version rule; on any close resumes with the
    last seq it saw. `log` is every event seq received, in order."""

    user: User
    room: str
    urls: Urls
    log: list[int] = field(default_factory=list)
    state: dict[int, dict[str, Any]] = field(default_factory=dict)
    connections: int = 0
    close_codes: list[int] = field(default_factory=list)
    drop_now: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last(self) -> int:
        return self.log[-1] if self.log else 0

    async def run(self) -> None:
        while True:
            ws = await self.urls.connect(self.user.token)
            self.connections += 1
            try:
                await self._session(ws)
            except ConnectionClosed:
                self.close_codes.append(close_code(ws))
                self.urls.advance()
            finally:
                await ws.close()
            await asyncio.sleep(RECONNECT_DELAY)

    async def _session(self, ws: Any) -> None:
        since = self.last
        await ws.send(dumps({"type": "join", "room": self.room, "since": since, "ref": "j"}))
        dropping = asyncio.create_task(self.drop_now.wait())
        try:
            while True:
                receiving = asyncio.create_task(ws.recv())
                await asyncio.wait({receiving, dropping}, return_when=asyncio.FIRST_COMPLETED)
                if dropping.done():
                    receiving.cancel()
                    self.drop_now.clear()
                    await ws.close()
                    await asyncio.sleep(1.0)  # away for a while: the room moves on
                    raise ConnectionClosed(None, None)
                frame = loads(receiving.result())
                if frame["type"] == "error" and frame.get("ref") == "j":
                    assert frame["code"] == "unavailable", frame
                    await asyncio.sleep(0.2)
                    await ws.send(dumps({"type": "join", "room": self.room, "since": since,
                                         "ref": "j"}))  # fmt: skip
                    continue
                if frame["type"] == "joined":
                    assert not frame["truncated"], frame
                if frame.get("room") == self.room and "seq" in frame:
                    self.apply(frame)
        finally:
            dropping.cancel()

    def apply(self, frame: dict[str, Any]) -> None:
        """PROTOCOL.md's version rule."""
        kind, seq = frame["type"], frame["seq"]
        self.log.append(seq)
        if kind == "message":
            known = self.state.get(seq)
            if known is None or frame["version"] > known["version"]:
                self.state[seq] = {k: frame[k] for k in MESSAGE_FIELDS} | {
                    "reactions": [(r["emoji"], r["count"]) for r in frame["reactions"]]
                }
            return
        target = self.state.get(frame.get("target", -1))
        if target is None or seq <= target["version"]:
            return
        target["version"] = seq
        if kind == "edit":
            target["body"], target["edited_at"] = frame["body"], frame["edited_at"]
        elif kind == "delete":
            target["body"], target["deleted"], target["reactions"] = "", True, []
        elif kind == "reaction":
            counts = dict(target["reactions"])
            counts[frame["emoji"]] = frame["count"]
            order = [e for e, _ in target["reactions"]]
            if frame["emoji"] not in order:
                order.append(frame["emoji"])
            target["reactions"] = [(e, counts[e]) for e in order if counts[e] > 0]


async def rest_state(url: str, user: User, room: str) -> dict[int, dict[str, Any]]:
    """The room's messages in their current state, read fresh over REST."""
    state: dict[int, dict[str, Any]] = {}
    after = 0
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while True:
            r = await http.get(
                f"/api/rooms/{room}/messages",
                params={"after": after, "limit": 200},
                headers=user.headers,
            )
            r.raise_for_status()
            page = r.json()
            for m in page["messages"]:
                state[m["seq"]] = {k: m[k] for k in MESSAGE_FIELDS} | {
                    "reactions": [(x["emoji"], x["count"]) for x in m["reactions"]]
                }
                after = m["seq"]
            if not page["has_more"]:
                return state


FAULTS = ["disconnect", "kill-9", "listener", "restart"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_resume_converges_to_the_rest_state(
    fault: str,
    start_instances: Callable[..., Awaitable[list[Instance]]],
    users: MakeUsers,
    own_database: str,
    cluster: pgcluster.Cluster,
    cluster_database: str,
) -> None:
    database = cluster_database if fault == "restart" else own_database
    a, b = await start_instances(2, database, CHAT_RESUME_LIMIT=100_000)
    people = await users(8, database=database)
    room = unique("conv-")
    routes = [[a.url, b.url], [b.url, a.url]]
    mutators = [Mutator(people[i], room, Urls(routes[i % 2]), ops=250, seed=i) for i in range(6)]
    observers = [Observer(people[6 + i], room, Urls(routes[i % 2])) for i in range(2)]
    reconnects = [await metric(i.url, "chat_listener_reconnects_total") for i in (a, b)]
    tasks = [asyncio.create_task(o.run()) for o in observers]
    try:
        async with asyncio.timeout(20):
            while any(o.connections == 0 for o in observers):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        working = [asyncio.create_task(m.run()) for m in mutators]
        tasks += working
        started = time.monotonic()

        async def until_sent(share: float) -> None:
            async with asyncio.timeout(60):
                while sum(m.sent for m in mutators) < share * sum(m.ops for m in mutators):
                    for t in working:
                        if t.done():
                            t.result()
                    await asyncio.sleep(0.02)

        await until_sent(0.25)
        observers[1].drop_now.set()  # away for a second, then resumes with since
        await until_sent(0.4)
        if fault == "kill-9":
            a.kill()
        elif fault == "listener":
            await _terminate_listeners(database)
        elif fault == "restart":
            cluster.restart()
        async with asyncio.timeout(120):
            await asyncio.gather(*working)
        conn = await asyncpg.connect(database)
        try:
            head = int(await conn.fetchval("SELECT last_seq FROM rooms WHERE name = $1", room))
        finally:
            await conn.close()
        async with asyncio.timeout(60):
            while any(o.last < head for o in observers):
                for t in tasks:
                    if t.done():
                        t.result()
                await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(
        f"\nconvergence ({fault}): {head} events in {time.monotonic() - started:.1f}s; "
        f"answers {sum((m.answers for m in mutators), Counter())}; "
        f"observer sockets {[o.connections for o in observers]}, "
        f"closes {[o.close_codes for o in observers]}"
    )
    kinds = sum((m.answers for m in mutators), Counter())
    assert kinds["send"] and kinds["edit"] and kinds["delete"] and kinds["react"], kinds
    survivor = b if fault == "kill-9" else a
    expected = await rest_state(survivor.url, people[6], room)
    for observer in observers:
        assert observer.log == list(range(1, head + 1)), (
            f"{observer.user.name}: {len(observer.log)} seqs for a log of {head}; missing "
            f"{sorted(set(range(1, head + 1)) - set(observer.log))[:10]}, "
            f"twice {[s for s, n in Counter(observer.log).items() if n > 1][:10]}"
        )
        assert observer.state == expected
    assert observers[1].connections >= 2, "the dropped observer did not resume"
    if fault == "kill-9":
        assert observers[0].connections >= 2, "the killed instance's observer did not move"
    if fault in ("listener", "restart"):  # the fault really hit: both rebuilt their listener
        for instance, before in zip((a, b), reconnects, strict=True):
            assert await metric(instance.url, "chat_listener_reconnects_total") > before


_LISTENERS = (
    "FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%' "
    "AND pid <> pg_backend_pid()"
)


async def _terminate_listeners(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        killed = await conn.fetchval(f"SELECT count(pg_terminate_backend(pid)) {_LISTENERS}")
        assert killed >= 2, "the instances' LISTEN connections were not found"
    finally:
        await conn.close()
