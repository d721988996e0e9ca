"""The database refuses or gives up, on purpose, under a real `chat serve`: its connection
limit is reached (53300), a statement times out or is cancelled (57014), a join's presence
write is chosen as a deadlock's victim (40P01). Each is answered `unavailable` (socket) or
503 (REST), or retried at once (the deadlock), never 1011 or 500, and never a traceback in
the instance's log (the fixture checks it); once the database lets go, all works again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from service import migrate
from service.settings import Settings
from tests.support import Instance, User, WsClient, new_user, unique, ws_connect

pytestmark = pytest.mark.timeout(120)

# Besides its pool, the instance holds its LISTEN connection and its writer's own.
CONNECTION_LIMIT = 7
SPARE = 3  # joins kept back to take any connection given back after the first ones
STATEMENT_TIMEOUT_MS = 3000
DEADLOCK_TIMEOUT_MS = 500  # the instance's; the test's own sessions wait far longer


async def _answer(ws: WsClient, ref: str, timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.recv(timeout)
            if frame.get("ref") == ref:
                return frame


def _key(room_id: int, user: str) -> str:
    return f"{room_id}/{user}"


@asynccontextmanager
async def _sockets(url: str, users: list[User]) -> AsyncIterator[list[WsClient]]:
    managers = [ws_connect(url, user.token) for user in users]
    opened = [await m.__aenter__() for m in managers]
    try:
        yield opened
    finally:
        for m in managers:
            await m.__aexit__(None, None, None)


# -- the connection limit ------------------------------------------------------------------


@pytest.fixture
def limited(new_database: Callable[[], str], pg_admin_url: str) -> str:
    """A migrated database of a role of its own (superusers are not held to CONNECTION
    LIMIT), which admits CONNECTION_LIMIT connections."""
    url = new_database()
    role, password = unique("lim_"), unique("pw")
    name = url.rpartition("/")[2]

    async def setup() -> None:
        conn = await asyncpg.connect(pg_admin_url)
        try:
            await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            await conn.execute(f"ALTER DATABASE {name} OWNER TO {role}")
        finally:
            await conn.close()

    asyncio.run(setup())
    parts = urlsplit(url)
    role_url = urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}"))
    migrate.upgrade(Settings(database_url=role_url))

    async def limit() -> None:
        conn = await asyncpg.connect(pg_admin_url)
        try:
            await conn.execute(f"ALTER DATABASE {name} CONNECTION LIMIT {CONNECTION_LIMIT}")
        finally:
            await conn.close()

    asyncio.run(limit())
    return role_url


async def test_connection_limit_answers_unavailable_and_503(
    limited: str,
    pg_admin_url: str,
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
) -> None:
    """Joins whose presence writes wait on locks the test holds keep the instance's pool
    busy until it needs one more connection than the database admits: the joins beyond
    that and REST requests are answered `unavailable` / 503, while a send is stored on the
    writer's own connection."""
    (instance,) = await hostile_instances(1, limited)
    async with httpx.AsyncClient(base_url=instance.url, timeout=20) as http:
        people = [await new_user(http) for _ in range(CONNECTION_LIMIT + 3 + SPARE)]
        sender, joiners, spare_users = people[0], people[1:-SPARE], people[-SPARE:]
        room = unique("limit-")
        r = await http.post(
            f"/api/rooms/{room}/messages", json={"body": "x"}, headers=sender.headers
        )
        assert r.status_code == 201, r.text
    admin = await asyncpg.connect(_database(pg_admin_url, limited))
    try:
        room_id = await admin.fetchval("SELECT id FROM rooms WHERE name = $1", room)
        async with (
            _sockets(instance.url, [sender, *joiners, *spare_users]) as (ws_sender, *all_sockets),
            httpx.AsyncClient(base_url=instance.url, timeout=20) as http,
        ):
            await ws_sender.join(room)
            sockets, spare = all_sockets[:-SPARE], all_sockets[-SPARE:]
            spares: list[asyncio.Task[dict[str, Any]]] = []
            hold = admin.transaction()
            await hold.start()
            for user in [*joiners, *spare_users]:  # each join's presence write waits
                await admin.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    _key(room_id, user.name),
                )
            # A connection of someone else's during the storm, closed after it: the slot it
            # gives back is what a background write of the instance's may give back too.
            other = await asyncpg.connect(limited)
            answering = []
            for i, ws in enumerate(sockets):
                await ws.send(type="join", room=room, ref=f"j{i}")
                answering.append(asyncio.create_task(_answer(ws, f"j{i}")))
            # Those that could not get a connection are answered at once; the others wait.
            done, waiting = await asyncio.wait(answering, timeout=5)
            await other.close()
            statuses = []
            for extra in [None, *spare]:
                if extra is not None:
                    # A background write of the instance's may have given a connection back
                    # to its pool meanwhile (or another client a slot to the database): a
                    # spare join takes it and waits on its lock, or is refused at once.
                    await extra.send(type="join", room=room, ref="spare")
                    task = asyncio.create_task(_answer(extra, "spare"))
                    await asyncio.wait({task}, timeout=2)
                    spares.append(task)
                url = f"/api/rooms/{room}/messages"
                statuses.append((await http.get(url, headers=sender.headers)).status_code)
                if statuses[-1] == 503:
                    break
            await ws_sender.send(
                type="send", room=room, body="at the limit", client_id="c1", ref="s"
            )
            sent = await _answer(ws_sender, "s")
            in_use = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND usename <> current_user"
            )
            await hold.rollback()  # the waiting joins go on
            answers = [await task for task in answering]
            spared = [await task for task in spares]
            # Everything works again.
            await ws_sender.send(type="send", room=room, body="after", client_id="c2", ref="s2")
            after = await _answer(ws_sender, "s2")
            r = await http.get(f"/api/rooms/{room}/messages", headers=sender.headers)
            retried = [
                await ws.join(room)
                for ws, answer in zip(sockets + spare, answers + spared, strict=False)
                if answer["type"] == "error"
            ]
    finally:
        await admin.close()
    kinds = [a["type"] if a["type"] != "error" else a["code"] for a in answers]
    print(
        f"\nconnection limit {CONNECTION_LIMIT}: {in_use} in use, {len(waiting)} joins "
        f"waiting on locks, {len(done)} answered at once; joins answered {kinds}; "
        f"{len(spares)} spare joins; REST {statuses}; "
        f"send {sent.get('code', sent['type'])}; after: send {after['type']}, "
        f"REST {r.status_code}, {len(retried)} refused joins joined"
    )
    assert set(kinds) <= {"joined", "unavailable"} and "unavailable" in kinds, answers
    assert waiting and all(t.result()["code"] == "unavailable" for t in done), answers
    assert all(a["type"] == "joined" or a["code"] == "unavailable" for a in spared), spared
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    # The writer stores on a connection of its own (opened by the first post, above), so
    # sends go on while reads have the pool and the database has no slot to spare.
    assert sent["type"] == "ack", sent
    assert after["type"] == "ack", after
    assert r.status_code == 200
    assert all(j["type"] == "joined" for j, _ in retried)


def _database(admin_url: str, url: str) -> str:
    """`url`'s database as the admin (a superuser: no connection limit)."""
    return admin_url.rpartition("/")[0] + "/" + url.rpartition("/")[2]


# -- statement timeout, cancel, deadlock ---------------------------------------------------


@pytest.fixture
def impatient(own_database: str) -> str:
    """A migrated database whose sessions time statements out and detect deadlocks soon."""

    async def setup() -> None:
        conn = await asyncpg.connect(own_database)
        try:
            name = await conn.fetchval("SELECT current_database()")
            await conn.execute(
                f"ALTER DATABASE {name} SET statement_timeout = {STATEMENT_TIMEOUT_MS}"
            )
            await conn.execute(
                f"ALTER DATABASE {name} SET deadlock_timeout = {DEADLOCK_TIMEOUT_MS}"
            )
        finally:
            await conn.close()

    asyncio.run(setup())
    return own_database


_WAITING = (
    "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND wait_event_type = 'Lock' AND wait_event = ANY($1::text[]) AND query LIKE $2"
)
# The instance's presence write is one call (service/sql/presence_set.sql): its waits, for
# the key's advisory lock or for a row, are seen on that statement.
ADVISORY = (["advisory"], "%chat_presence_set%")
ROW = (["tuple", "transactionid"], "%chat_presence_set%")


async def _room_with_users(instance: Instance, count: int, prefix: str) -> tuple[list[User], str]:
    """`count` new users, and a public room the first of them has posted in."""
    async with httpx.AsyncClient(base_url=instance.url, timeout=20) as http:
        users = [await new_user(http) for _ in range(count)]
        room = unique(prefix)
        r = await http.post(
            f"/api/rooms/{room}/messages", json={"body": "x"}, headers=users[0].headers
        )
        assert r.status_code == 201, r.text
    return users, room


async def _until_waiting(conn: asyncpg.Connection, on: tuple[list[str], str]) -> None:
    """Until a session of the instance waits for the lock `on` names. `conn` must not be in
    a transaction: pg_stat_activity is read once per transaction."""
    async with asyncio.timeout(10):
        while not await conn.fetchval(f"SELECT count(*) {_WAITING}", *on):
            await asyncio.sleep(0.01)


async def test_timeouts_cancels_and_deadlocks_are_answered(
    impatient: str, hostile_instances: Callable[..., Awaitable[list[Instance]]]
) -> None:
    (instance,) = await hostile_instances(1, impatient)
    (alice, bob, carol), room = await _room_with_users(instance, 3, "impatient-")
    conn = await asyncpg.connect(impatient)  # holds the locks
    watch = await asyncpg.connect(impatient)  # looks at the instance's sessions
    try:
        await conn.execute("SET statement_timeout = 0; SET deadlock_timeout = '60s'")
        room_id = await conn.fetchval("SELECT id FROM rooms WHERE name = $1", room)
        deadlocks = await conn.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
        async with (
            _sockets(instance.url, [alice, bob, carol]) as (ws_alice, ws_bob, ws_carol),
            httpx.AsyncClient(base_url=instance.url, timeout=20) as http,
        ):
            await ws_alice.join(room)

            # 1. The room's row locked: the writer's statement times out (57014).
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM rooms WHERE id = $1 FOR UPDATE", room_id)
                await ws_alice.send(type="send", room=room, body="late", client_id="t1", ref="t1")
                posted = await http.post(
                    f"/api/rooms/{room}/messages", json={"body": "late too"}, headers=alice.headers
                )
                timed_out = await _answer(ws_alice, "t1")

            # 2. The join's presence write cancelled while it waits (57014 again).
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _key(room_id, bob.name)
                )
                await ws_bob.send(type="join", room=room, ref="b1")
                await _until_waiting(watch, ADVISORY)
                await watch.execute(f"SELECT pg_cancel_backend(pid) {_WAITING}", *ADVISORY)
                cancelled = await _answer(ws_bob, "b1")
            rejoined, _ = await ws_bob.join(room)
            async with asyncio.timeout(10):  # bob's row written (after the debounce)
                while not await conn.fetchval(
                    "SELECT count(*) FROM presence WHERE username = $1", bob.name
                ):
                    await asyncio.sleep(0.05)

            # 3. A deadlock: the instance holds carol's key and waits for the room's row, which
            # the test holds while it asks for carol's key. PostgreSQL rolls the instance's
            # transaction back; its presence write runs again and the join goes through.
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM rooms WHERE id = $1 FOR UPDATE", room_id)
                await ws_carol.send(type="join", room=room, ref="c1")
                await _until_waiting(watch, ROW)
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    _key(room_id, carol.name),
                )
            deadlocked = await _answer(ws_carol, "c1")

            await ws_alice.send(type="send", room=room, body="after", client_id="t2", ref="t2")
            after = await _answer(ws_alice, "t2")
        # Backends report their statistics a moment later (at most once a second).
        counted = deadlocks
        async with asyncio.timeout(10):
            while counted == deadlocks:
                await asyncio.sleep(0.2)
                counted = await watch.fetchval(
                    "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
                )
        deadlocks = counted - deadlocks
    finally:
        await conn.close()
        await watch.close()
    print(
        f"\nstatement timeout {STATEMENT_TIMEOUT_MS} ms: send {timed_out.get('code')}, REST "
        f"{posted.status_code}; cancelled join: {cancelled.get('code')}, then "
        f"{rejoined['type']}; deadlock ({deadlocks} detected): join {deadlocked['type']}; "
        f"after: send {after['type']}"
    )
    assert timed_out["type"] == "error" and timed_out["code"] == "unavailable", timed_out
    assert posted.status_code == 503, posted.text
    assert cancelled["type"] == "error" and cancelled["code"] == "unavailable", cancelled
    assert rejoined["type"] == "joined"
    assert deadlocks >= 1
    assert deadlocked["type"] == "joined", deadlocked  # run again at once
    assert after["type"] == "ack"


# A join's replay, as pg_stat_activity shows it (store._REPLAY).
REPLAY = (["relation"], "%FROM rooms LEFT JOIN LATERAL%")


async def test_a_join_that_fails_after_its_presence_was_written_leaves_no_presence(
    impatient: str, hostile_instances: Callable[..., Awaitable[list[Instance]]]
) -> None:
    """A join's presence is written while its replay is read (service/chat.py): when the
    read fails after the write, the join is answered `unavailable` and the user goes
    offline again, for the members who saw them arrive and in the database."""
    (instance,) = await hostile_instances(1, impatient)
    (alice, bob), room = await _room_with_users(instance, 2, "half-joined-")
    conn = await asyncpg.connect(impatient)  # holds the lock
    watch = await asyncpg.connect(impatient)  # looks at the instance's sessions
    try:
        await conn.execute("SET statement_timeout = 0")
        async with _sockets(instance.url, [alice, bob]) as (ws_alice, ws_bob):
            await ws_alice.join(room)
            async with conn.transaction():
                await conn.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
                await ws_bob.send(type="join", room=room, ref="b1")
                await _until_waiting(watch, REPLAY)
                async with asyncio.timeout(10):  # the presence write went through meanwhile
                    while not await watch.fetchval(
                        "SELECT count(*) FROM presence WHERE username = $1", bob.name
                    ):
                        await asyncio.sleep(0.01)
                await watch.execute(f"SELECT pg_cancel_backend(pid) {_WAITING}", *REPLAY)
                failed = await _answer(ws_bob, "b1")
            seen: list[tuple[str, str]] = []
            async with asyncio.timeout(20):  # bob came and went, for alice
                while ("leave", bob.name) not in seen:
                    frame = await ws_alice.recv(20)
                    if frame["type"] == "presence":
                        seen.append((frame["event"], frame["user"]))
            async with asyncio.timeout(10):
                while await watch.fetchval(
                    "SELECT count(*) FROM presence WHERE username = $1", bob.name
                ):
                    await asyncio.sleep(0.05)
            async with httpx.AsyncClient(base_url=instance.url, timeout=20) as http:
                online = await http.get(f"/api/rooms/{room}/online", headers=alice.headers)
            rejoined, _ = await ws_bob.join(room)  # and nothing is left half done
    finally:
        await conn.close()
        await watch.close()
    assert failed["type"] == "error" and failed["code"] == "unavailable", failed
    assert seen == [("join", bob.name), ("leave", bob.name)]
    assert online.json()["users"] == [alice.name]
    assert rejoined["type"] == "joined"
