"""Presence counts users, not connections, across tabs and instances; dead instances expire;
and it cannot ghost: changes are coalesced, failed writes retried, a reaped instance comes
back, and what lost events missed is repaired. Real instances for what crosses processes;
`Presence` itself in-process, against the real database, for the rest."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from service import db
from service.fanout import Fanout
from service.presence import Presence
from service.protocol import FanoutKey, PresenceNote
from service.settings import Settings
from tests.faults.harness import check_log
from tests.support import Instance, User, WsClient, new_user, unique, ws_connect

KEY = FanoutKey.from_secret("the presence tests' own secret")


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
            # Leaves are written a moment later (PRESENCE_DEBOUNCE): wait for carol's, so
            # that alice's below cannot overtake it.
            seen = await _presence_until(observer, carol.name, "leave")
            assert [f["user"] for f in seen] == [carol.name]
            assert alice.name in await _online(b, bob, room)
        # The last tab closed.
        seen = await _presence_until(observer, alice.name, "leave")
        assert [(f["user"], f["event"]) for f in seen] == [(alice.name, "leave")]
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


async def test_a_reaped_instance_registers_again(
    spawn: Callable[..., Instance], own_database: str
) -> None:
    """An instance taken for dead during an outage is reaped by another (its users leave);
    its instance row gone, its presence rows went with it by the foreign key. Its next join
    registers it again instead of failing, and the users still connected to it come back."""
    url = own_database
    # Its own heartbeat comes late enough for the test to make it look dead first.
    reaped = spawn(database=url, CHAT_PRESENCE_HEARTBEAT_SECONDS=25)
    await reaped.wait_ready()
    conn = await asyncpg.connect(url)
    try:
        (instance_id,) = [r["id"] for r in await conn.fetch("SELECT id FROM instances")]
        reaper = spawn(database=url, CHAT_PRESENCE_HEARTBEAT_SECONDS=1)
        await reaper.wait_ready()
        async with httpx.AsyncClient(base_url=reaper.url, timeout=10) as http:
            alice, bob, carol = [await new_user(http) for _ in range(3)]
        room = unique("r-")
        async with (
            ws_connect(reaper.url, bob.token) as observer,
            ws_connect(reaped.url, alice.token) as ws_alice,
            ws_connect(reaped.url, carol.token) as ws_carol,
        ):
            await observer.join(room)
            await ws_alice.join(room)
            await _presence_until(observer, alice.name, "join")
            # An outage longer than the TTL, as the others see it.
            await conn.execute(
                "UPDATE instances SET heartbeat_at = now() - interval '1 hour' WHERE id = $1",
                instance_id,
            )
            await _presence_until(observer, alice.name, "leave")
            assert await _online(reaper, bob, room) == [bob.name]
            assert not await conn.fetchval(
                "SELECT count(*) FROM instances WHERE id = $1", instance_id
            )

            joined, _ = await ws_carol.join(room)  # before: 1011, and a traceback per join
            assert joined["type"] == "joined", joined
            back: set[str] = set()
            async with asyncio.timeout(20):
                while back != {alice.name, carol.name}:
                    frame = await observer.recv(20)
                    if frame["type"] == "presence":
                        assert frame["event"] == "join", frame
                        back.add(frame["user"])
            assert sorted(await _online(reaper, bob, room)) == sorted(
                [alice.name, bob.name, carol.name]
            )
    finally:
        await conn.close()
    reaped.stop()
    reaper.stop()
    check_log(reaped.log_path)


# -- Presence in-process, against the real database ----------------------------------------


@dataclass
class Side:
    """One in-process Presence (one 'instance'), what it told its members, and every event
    sent on its fan-out channel."""

    presence: Presence
    me: str  # its instance id
    changes: list[tuple[int, str, str]] = field(default_factory=list)


@dataclass
class Events:
    """Presence events as sent on a channel, in commit order."""

    seen: list[tuple[int, str, str]] = field(default_factory=list)

    def of(self, room_id: int, user: str) -> list[str]:
        return [e for r, u, e in self.seen if (r, u) == (room_id, user)]


@pytest.fixture
async def events_and_sides(
    database_url: str,
) -> AsyncIterator[tuple[Events, Callable[..., Awaitable[Side]], asyncpg.Connection]]:
    """`await side(debounce=...)` makes a started Presence sharing one fan-out channel that
    nobody routes back to it (so every event is 'lost' unless a test hands it over), and
    `events` records what that channel carried."""
    engine = db.create_engine(Settings(database_url=database_url))
    channel = unique("presence_test_")
    listener = await asyncpg.connect(database_url)
    events = Events()

    def on_notify(_conn: object, _pid: int, _channel: str, signed: str) -> None:
        payload = KEY.open(signed)
        assert payload is not None, f"not signed with the fan-out's key: {signed[:80]}"
        data = orjson.loads(payload)
        events.seen.append((data["room_id"], data["user"], data["event"]))

    await listener.add_listener(channel, on_notify)
    started: list[Presence] = []

    async def side(debounce: float = 0.2, heartbeat: float = 60.0) -> Side:
        me = uuid.uuid4().hex
        fanout = Fanout(url=database_url, channel=channel, engine=engine, instance_id=me, key=KEY)
        presence = Presence(
            engine,
            me,
            fanout=fanout,
            heartbeat_seconds=heartbeat,
            ttl_seconds=30,
            debounce_seconds=debounce,
        )
        made = Side(presence, me)
        await presence.start(on_change=lambda r, u, e: made.changes.append((r, u, e)))
        started.append(presence)
        return made

    try:
        yield events, side, listener
    finally:
        for presence in started:
            await presence.stop()
        await listener.close()
        await engine.dispose()


async def _room(conn: asyncpg.Connection) -> int:
    room_id: int = await conn.fetchval(
        "INSERT INTO rooms (name) VALUES ($1) RETURNING id", unique("p-")
    )
    return room_id


async def _rows(conn: asyncpg.Connection, room_id: int, user: str) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM presence WHERE room_id = $1 AND username = $2", room_id, user
    )
    return count


async def _until(condition: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.02)


async def test_flapping_is_coalesced_and_the_final_state_written(
    events_and_sides: tuple[Events, Callable[..., Awaitable[Side]], asyncpg.Connection],
) -> None:
    """A user whose tabs join and leave every 10 ms for 2 s makes at most one change per
    debounce period, and the state it ends in is the one written and announced; a leave
    followed quickly by a join makes no event at all."""
    events, side, conn = events_and_sides
    debounce = 0.25
    a = (await side(debounce=debounce)).presence
    room_id, user = await _room(conn), unique("flap_")
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < 2.0:
        await a.join(room_id, "r", user)
        await asyncio.sleep(0.005)
        await a.leave(room_id, "r", user)
        await asyncio.sleep(0.005)
    await a.join(room_id, "r", user)  # ends online
    flapped = loop.time() - started
    await _until(lambda: _rows_is(conn, room_id, user, 1))
    await asyncio.sleep(debounce * 3)
    changes = events.of(room_id, user)
    assert changes and changes[-1] == "join", changes
    assert len(changes) <= flapped / debounce + 2, changes
    assert all(x != y for x, y in itertools.pairwise(changes)), changes

    # A reload: leave, then join again within the debounce: nothing at all.
    before = len(events.of(room_id, user))
    await a.leave(room_id, "r", user)
    await asyncio.sleep(debounce / 3)
    await a.join(room_id, "r", user)
    await asyncio.sleep(debounce * 3)
    assert len(events.of(room_id, user)) == before
    assert await _rows(conn, room_id, user) == 1

    await a.leave(room_id, "r", user)
    await _until(lambda: _rows_is(conn, room_id, user, 0))
    await asyncio.sleep(0.1)
    assert events.of(room_id, user)[-1] == "leave"


class PublishingAfterCommit(Fanout):
    """A fan-out other than PostgreSQL's (Redis, say): nothing is NOTIFYed in a transaction;
    what would be is handed to `publish` after the commit, here recorded."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.via_postgres = False
        self.published: list[str] = []

    async def publish(self, payloads: list[str]) -> None:
        self.published.extend(payloads)


async def test_without_notify_the_rooms_changes_are_published_after_the_commit(
    database_url: str, pg: asyncpg.Connection
) -> None:
    """With a fan-out that is not PostgreSQL's, the change a write makes for the room (the
    user's first row anywhere, their last one gone) is published, signed, once the row is
    committed; a second instance's row for the same user announces nothing."""
    engine = db.create_engine(Settings(database_url=database_url))
    made: list[Presence] = []
    fanouts: list[PublishingAfterCommit] = []
    try:
        for _ in range(2):
            me = uuid.uuid4().hex
            fanout = PublishingAfterCommit(
                url=database_url, channel=unique("p_"), engine=engine, instance_id=me, key=KEY
            )
            presence = Presence(
                engine, me, fanout=fanout, heartbeat_seconds=60.0, ttl_seconds=30,
                debounce_seconds=0.05,
            )  # fmt: skip
            await presence.start(on_change=lambda r, u, e: None)
            made.append(presence)
            fanouts.append(fanout)
        a, b = made
        room_id, user = await _room(pg), unique("pub_")

        def published(fanout: PublishingAfterCommit) -> list[str]:
            notes = [orjson.loads(KEY.open(p) or "null") for p in fanout.published]
            return [n["event"] for n in notes if n["room_id"] == room_id and n["user"] == user]

        await a.join(room_id, "r", user)
        assert await _rows(pg, room_id, user) == 1 and published(fanouts[0]) == ["join"]
        await b.join(room_id, "r", user)  # online from a already: not the room's change
        assert await _rows(pg, room_id, user) == 2 and published(fanouts[1]) == []
        await b.leave(room_id, "r", user)
        await a.leave(room_id, "r", user)
        await _until(lambda: _rows_is(pg, room_id, user, 0))
        await asyncio.sleep(0.1)
        assert published(fanouts[1]) == [] and published(fanouts[0]) == ["join", "leave"]
    finally:
        for presence in made:
            await presence.stop()
        await engine.dispose()


async def _rows_is(conn: asyncpg.Connection, room_id: int, user: str, n: int) -> bool:
    return await _rows(conn, room_id, user) == n


_WAITING_FOR_KEY = (
    "FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'advisory' "
    "AND (query LIKE '%pg_advisory_xact_lock%' OR query LIKE '%chat_presence_set%')"
    " AND pid <> pg_backend_pid()"
)


async def test_a_leave_that_fails_is_retried_until_written(
    events_and_sides: tuple[Events, Callable[..., Awaitable[Side]], asyncpg.Connection],
    database_url: str,
) -> None:
    """The leave's write fails at the database (cancelled twice while it waits for the key's
    lock): it is tried again in the background until the row is gone and the leave sent."""
    events, side, conn = events_and_sides
    a = (await side(debounce=0.05)).presence
    room_id, user = await _room(conn), unique("leaver_")
    await a.join(room_id, "r", user)
    blocker = await asyncpg.connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{room_id}/{user}"
            )
            await a.leave(room_id, "r", user)
            for _ in range(2):
                await _until(lambda: _count(conn, f"SELECT count(*) {_WAITING_FOR_KEY}"))
                await conn.fetchval(f"SELECT count(pg_cancel_backend(pid)) {_WAITING_FOR_KEY}")
                await asyncio.sleep(0.05)
            assert await _rows(conn, room_id, user) == 1, "still online while it cannot write"
        await _until(lambda: _rows_is(conn, room_id, user, 0))
    finally:
        await blocker.close()
    await asyncio.sleep(0.1)
    assert events.of(room_id, user) == ["join", "leave"]


async def _count(conn: asyncpg.Connection, sql: str) -> bool:
    return bool(await conn.fetchval(sql))


async def test_rows_come_back_after_a_reaper_took_them(
    events_and_sides: tuple[Events, Callable[..., Awaitable[Side]], asyncpg.Connection],
) -> None:
    """Taken for dead (its heartbeat made stale) and reaped by another instance, with leave
    events: a join registers it again, a repair does too, and every local user's row is
    written back with a join event."""
    events, side, conn = events_and_sides
    a_side, b = await side(), (await side()).presence
    a, me = a_side.presence, a_side.me
    room_id = await _room(conn)
    alice, carol = unique("alice_"), unique("carol_")
    await a.join(room_id, "r", alice)
    stale = "UPDATE instances SET heartbeat_at = now() - interval '1 hour' WHERE id = $1"

    await conn.execute(stale, me)
    await b.reap()
    assert await _rows(conn, room_id, alice) == 0
    await a.join(room_id, "r", carol)  # meets the foreign key: registers again
    await _until(lambda: _rows_is(conn, room_id, alice, 1))
    assert await _rows(conn, room_id, carol) == 1

    await conn.execute(stale, me)
    await b.reap()
    await a.repair()  # its heartbeat finds no row: registers again
    await _until(lambda: _rows_is(conn, room_id, alice, 1))
    await _until(lambda: _rows_is(conn, room_id, carol, 1))
    await asyncio.sleep(0.1)
    assert events.of(room_id, alice) == ["join", "leave", "join", "leave", "join"]
    assert events.of(room_id, carol) == ["join", "leave", "join"]


async def test_repair_tells_members_what_lost_events_missed(
    events_and_sides: tuple[Events, Callable[..., Awaitable[Side]], asyncpg.Connection],
) -> None:
    """Instance A hears nothing of B's events (lost, as while its listener was deaf); its
    repair compares its view with the database and tells its members the difference once.
    An event heard afterwards that changes nothing is not passed on."""
    _, side, conn = events_and_sides
    a_side, b = await side(debounce=0.05), (await side(debounce=0.05)).presence
    a = a_side.presence
    room_id = await _room(conn)
    local, remote = unique("local_"), unique("remote_")
    await a.join(room_id, "r", local)
    await a.watch(room_id)
    assert a.online_now(room_id, including=local) == [local]

    await b.join(room_id, "r", remote)
    await a.repair()
    assert a_side.changes == [(room_id, remote, "join")]
    assert a.online_now(room_id, including=local) == sorted([local, remote])
    a.heard(PresenceNote(room_id, "r", remote, "join"))  # arrives late: nothing new
    assert a_side.changes == [(room_id, remote, "join")]

    await b.leave(room_id, "r", remote)
    await _until(lambda: _rows_is(conn, room_id, remote, 0))
    await a.repair()
    assert a_side.changes[1:] == [(room_id, remote, "leave")]
    a.heard(PresenceNote(room_id, "r", remote, "join"))  # a real change: passed on
    assert a_side.changes[2:] == [(room_id, remote, "join")]


async def test_a_socket_closed_right_after_joined_still_leaves(
    pair: tuple[Instance, Instance],
) -> None:
    """Joining a public room for the first time makes the user a member, and the user's
    stream says so after `joined`; a socket closed at once must still leave the room (it
    once did not: the close cancelled the join after it had succeeded)."""
    a, b = pair
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        alice, bob = await new_user(http), await new_user(http)
    for _ in range(3):
        room = unique("r-")
        async with ws_connect(b.url, bob.token) as observer:
            await observer.join(room)
            async with ws_connect(a.url, alice.token) as ws:
                await ws.join(room)
            await _presence_until(observer, alice.name, "leave", timeout=10)
            assert await _online(b, bob, room) == [bob.name]
