"""Read state (PROTOCOL.md, Read cursor, `read`, guarantee 8): the counts against a model of
the room after random sequences of sends, edits, deletes, reactions, reads, joins and leaves
by three users (property-based), and against a brute-force count in SQL; the cursor's rules;
what a count costs at scale; and that a message writes no per-member row."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import migrate
from service.members import _MY_ROOMS
from service.readstate import COUNTS
from service.settings import Settings
from tests.faults.harness import make_users
from tests.support import Instance, User, unique
from tests.test_ops import chat

pytestmark = pytest.mark.timeout(600)

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def mentioned(body: str, members: set[str], author: str) -> set[str]:
    """PROTOCOL.md's mention rule, written independently of the SQL that applies it: `@`
    at the start or after a character that cannot be in a username, the longest run of
    username characters lower-cased, a member (else without its trailing `.`/`-`)."""
    found: set[str] = set()
    i = 0
    while i < len(body):
        if body[i] == "@" and (i == 0 or body[i - 1] not in NAME_CHARS):
            j = i + 1
            while j < len(body) and body[j] in NAME_CHARS:
                j += 1
            name = body[i + 1 : j].lower()
            if name in members:
                found.add(name)
            elif name.rstrip(".-") in members:
                found.add(name.rstrip(".-"))
            i = j
        else:
            i += 1
    found.discard(author)
    return found


def test_the_mention_rule_by_example() -> None:
    members = {"bob", "carol", "bob.x"}
    assert mentioned("hi @bob", members, "al") == {"bob"}
    assert mentioned("@Bob.", members, "al") == {"bob"}  # lower-cased, trailing dot dropped
    assert mentioned("@bob.x and @carol-", members, "al") == {"bob.x", "carol"}
    assert mentioned("mail me@bob and x@carol", members, "al") == set()
    assert mentioned("(@carol) @@bob", members, "al") == {"carol", "bob"}
    assert mentioned("@bob@carol", members, "al") == {"bob"}
    assert mentioned("@bob", members, "bob") == set()  # never the author
    assert mentioned("@nobody", members, "al") == set()


# Bodies, with {a} {b} {c} for the three users' names ({B}: b upper-cased).
TEMPLATES = [
    "plain words",
    "hi @{b}",
    "@{c}. thanks",
    "@{B} and @{c}",
    "mail x@{b} please",
    "@{a} talking to myself",
    "(@{b})@{c}",
    "@nobody_here",
    "@{b}- see",
    "@{a} @{b} @{c}",
]
OPS = ["send", "send", "send", "edit", "delete", "react", "read", "read", "join", "leave"]


@dataclass
class Message:
    author: str
    body: str
    deleted: bool = False
    mentions: set[str] = field(default_factory=set)


@dataclass
class Model:
    """What the room should be: members with their cursors, messages, the log's head."""

    kind: str
    owner: str
    peer: str | None = None
    cursors: dict[str, int] = field(default_factory=dict)
    messages: dict[int, Message] = field(default_factory=dict)
    head: int = 0

    def mentions_of(self, body: str, author: str) -> set[str]:
        if self.kind == "dm":
            return {u for u in self.cursors if u != author}
        return mentioned(body, set(self.cursors), author)

    def unread(self, user: str) -> int:
        cursor = self.cursors[user]
        return sum(
            1
            for seq, m in self.messages.items()
            if seq > cursor and not m.deleted and m.author != user
        )

    def mention_count(self, user: str) -> int:
        cursor = self.cursors[user]
        return sum(
            1
            for seq, m in self.messages.items()
            if seq > cursor and not m.deleted and m.author != user and user in m.mentions
        )

    def enrol_for_change(self, user: str, seq: int) -> None:
        """Acting in a public room makes the actor a member, their cursor at the head the
        event found."""
        if user not in self.cursors:
            self.cursors[user] = seq - 1


@dataclass
class World:
    instance: Instance
    database: str
    secret: str
    users: list[User]
    runner: asyncio.Runner

    def renew(self) -> None:
        """Three new users (a dm is one per pair, so each example needs its own)."""
        self.users = self.runner.run(make_users(self.database, self.secret, 3, "rs"))

    conn: asyncpg.Connection

    def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return list(self.runner.run(self.conn.fetch(query, *args, timeout=30)))


@pytest.fixture(scope="module")
def world(spawn: Any, new_database: Any, secret_key: str) -> Iterator[World]:
    database = str(new_database())
    migrate.upgrade(Settings(database_url=database))
    instance: Instance = spawn(database, CHAT_RATE_LIMIT_PER_SECOND=0)
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(instance.wait_ready())
        users = runner.run(make_users(database, secret_key, 3, "rs"))
        conn = runner.run(asyncpg.connect(database, timeout=10))
        try:
            yield World(instance, database, secret_key, users, runner, conn)
        finally:
            runner.run(conn.close(timeout=5))


def _setup(http: httpx.Client, world: World, kind: str) -> tuple[str, Model]:
    a, b, _ = world.users
    model = Model(kind, a.name)
    if kind == "dm":
        r = http.post("/api/dms", json={"username": b.name}, headers=a.headers)
        assert r.status_code == 201, r.text
        model.cursors = {a.name: 0, b.name: 0}
        return r.json()["name"], model
    room = unique("rs-")
    r = http.post("/api/rooms", json={"name": room, "kind": kind}, headers=a.headers)
    assert r.status_code == 201, r.text
    model.cursors = {a.name: 0}
    return room, model


def _target(model: Model, k: int) -> int | None:
    seqs = sorted(model.messages)
    return seqs[k % len(seqs)] if seqs else None


def _apply(http: httpx.Client, world: World, room: str, model: Model, op: tuple[Any, ...]) -> None:
    """Carry `op` out on the server and on the model, checking the server's answer."""
    name, who, k, t = op
    user = world.users[who]
    u = user.name
    a, b, c = (x.name for x in world.users)
    member = u in model.cursors
    base = f"/api/rooms/{room}"
    if name == "send":
        body = TEMPLATES[t].format(a=a, b=b, c=c, B=b.upper())
        r = http.post(f"{base}/messages", json={"body": body}, headers=user.headers)
        if model.kind != "public" and not member:
            assert r.status_code == 403, r.text
            return
        assert r.status_code == 201, r.text
        seq = r.json()["seq"]
        assert seq == model.head + 1
        model.head = seq
        model.cursors[u] = seq  # posting moves the author's cursor to the message
        model.messages[seq] = Message(u, body, mentions=model.mentions_of(body, u))
    elif name in ("edit", "delete", "react"):
        seq_or_none = _target(model, k)
        if seq_or_none is None:
            return
        seq = seq_or_none
        msg = model.messages[seq]
        body = TEMPLATES[t].format(a=a, b=b, c=c, B=b.upper())
        if name == "edit":
            r = http.patch(f"{base}/messages/{seq}", json={"body": body}, headers=user.headers)
        elif name == "delete":
            r = http.delete(f"{base}/messages/{seq}", headers=user.headers)
        else:
            r = http.put(f"{base}/messages/{seq}/reactions/%F0%9F%91%8D", headers=user.headers)
        if model.kind != "public" and not member:
            assert r.status_code == 403, r.text
            return
        owns = u == model.owner and model.kind != "dm"
        may = {"edit": msg.author == u, "react": True, "delete": msg.author == u or owns}[name]
        if not may:
            assert r.status_code == 403, r.text
            return
        if msg.deleted and name != "delete":
            assert r.status_code == 404, r.text
            return
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        if version <= model.head:  # changed nothing: a duplicate, no event
            return
        assert version == model.head + 1
        model.head = version
        model.enrol_for_change(u, version)
        if name == "edit":
            msg.body, msg.mentions = body, model.mentions_of(body, u)
        elif name == "delete":
            msg.deleted, msg.mentions = True, set()
    elif name == "read":
        r = http.put(f"{base}/read", json={"seq": k}, headers=user.headers)
        if not member:
            assert r.status_code == 403, r.text
            return
        assert r.status_code == 200, r.text
        model.cursors[u] = max(model.cursors[u], min(k, model.head))
        assert r.json() == {
            "room": room,
            "last_read_seq": model.cursors[u],
            "unread": model.unread(u),
            "mentions": model.mention_count(u),
        }
    elif name in ("join", "leave") and model.kind != "dm":
        public = model.kind == "public"
        actor = user if public else world.users[0]
        path = f"{base}/members/{'me' if public else u}"
        if name == "join":
            r = http.put(path, headers=actor.headers)
            assert r.status_code == 200, r.text
            if not member:  # the cursor starts at the head, the member event included
                model.head += 0 if public else 1
                model.cursors[u] = model.head
        else:
            r = http.delete(path, headers=actor.headers)
            if u == model.owner:
                assert r.status_code == 409, r.text
            elif not member:  # nothing to leave: a no-op (public) or no such member
                assert r.status_code in (204, 404), r.text
            else:
                assert r.status_code == 204, r.text
                del model.cursors[u]
                model.head += 0 if public else 1


def _check(http: httpx.Client, world: World, room: str, model: Model) -> None:
    """Every user's view of the room against the model, and the unread counts against a
    brute-force count of the stored rows."""
    for user in world.users:
        r = http.get(f"/api/rooms/{room}", headers=user.headers)
        if user.name not in model.cursors:
            if model.kind == "public":
                assert r.status_code == 200 and r.json()["unread"] is None, r.text
            else:
                assert r.status_code == 403, r.text
            continue
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["last_seq"] == model.head
        want = {
            "last_read_seq": model.cursors[user.name],
            "unread": model.unread(user.name),
            "mentions": model.mention_count(user.name),
        }
        assert {key: got[key] for key in want} == want, (user.name, got, model)
        (brute,) = world.sql(
            "SELECT count(*) AS n FROM messages m JOIN rooms r ON r.id = m.room_id "
            "WHERE r.name = $1 AND m.seq > $2 AND NOT m.deleted AND m.author <> $3",
            room,
            got["last_read_seq"],
            user.name,
        )
        assert got["unread"] == brute["n"]


ops = st.lists(
    st.tuples(
        st.sampled_from(OPS),
        st.integers(0, 2),
        st.integers(0, 30),
        st.integers(0, len(TEMPLATES) - 1),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kind=st.sampled_from(["public", "private", "dm"]), steps=ops)
def test_counts_match_a_model_after_random_sequences(
    world: World, kind: str, steps: list[tuple[Any, ...]]
) -> None:
    world.renew()
    with httpx.Client(base_url=world.instance.url, timeout=10) as http:
        room, model = _setup(http, world, kind)
        for step in steps:
            _apply(http, world, room, model, step)
            _check(http, world, room, model)
        # The mentions recorded are the model's, row for row (dms keep none).
        rows = world.sql(
            "SELECT mt.seq, mt.username FROM mentions mt JOIN rooms r ON r.id = mt.room_id "
            "WHERE r.name = $1",
            room,
        )
        recorded = {(row["seq"], row["username"]) for row in rows}
        expected = set()
        if kind != "dm":
            expected = {(s, u) for s, m in model.messages.items() for u in m.mentions}
        assert recorded == expected


def _rooms_list(http: httpx.Client, user: User) -> dict[str, dict[str, Any]]:
    r = http.get("/api/rooms", headers=user.headers)
    assert r.status_code == 200, r.text
    return {room["name"]: room for room in r.json()["rooms"]}


def test_the_room_list_counts_and_the_read_route(world: World) -> None:
    a, b, c = world.users
    with httpx.Client(base_url=world.instance.url, timeout=10) as http:
        room = unique("rl-")
        r = http.post("/api/rooms", json={"name": room, "kind": "private"}, headers=a.headers)
        assert r.status_code == 201, r.text
        assert http.put(f"/api/rooms/{room}/members/{b.name}", headers=a.headers).status_code == 200
        for body in ("one", f"two @{b.name}", "three", f"@{b.name} four"):
            r = http.post(f"/api/rooms/{room}/messages", json={"body": body}, headers=a.headers)
            assert r.status_code == 201
        listed = _rooms_list(http, b)[room]
        assert (listed["unread"], listed["mentions"]) == (4, 2)
        assert _rooms_list(http, a)[room]["unread"] == 0  # her own
        # A cursor beyond the head stops at it; a cursor never moves back.
        r = http.put(f"/api/rooms/{room}/read", json={"seq": 10**9}, headers=b.headers)
        head = listed["last_seq"]
        assert r.json() == {"room": room, "last_read_seq": head, "unread": 0, "mentions": 0}
        r = http.put(f"/api/rooms/{room}/read", json={"seq": 1}, headers=b.headers)
        assert r.json()["last_read_seq"] == head
        # Refusals: a non-member, an unknown room, a bad seq.
        assert (
            http.put(f"/api/rooms/{room}/read", json={"seq": 1}, headers=c.headers).status_code
            == 403
        )
        missing = unique("none-")
        r = http.put(f"/api/rooms/{missing}/read", json={"seq": 1}, headers=b.headers)
        assert r.status_code == 404
        for bad in (-1, "7", None, 2**63):
            r = http.put(f"/api/rooms/{room}/read", json={"seq": bad}, headers=b.headers)
            assert r.status_code == 422, (bad, r.text)


def _post_batch(world: World, room_id: int, author: str, bodies: list[str]) -> None:
    """Messages stored through the writer's own SQL (chat_post_messages), many at once."""
    n = len(bodies)
    world.sql(
        "SELECT codes FROM chat_post_messages($1, $2, $3, $4, $5, '{}', '{}', '{}', '{}', '{}',"
        " '{}', '{}', '{}', 20, '{}', NULL, 7000, 1000, $6, '\\x00'::bytea, '\\x00'::bytea)",
        [room_id] * n,
        [author] * n,
        bodies,
        [None] * n,
        [None] * n,
        uuid.uuid4(),
    )


def _public_room_of_two(http: httpx.Client, world: World, prefix: str) -> tuple[str, int]:
    """A new public room of the first user, joined by the second: its name and id."""
    a, b, _ = world.users
    room = unique(prefix)
    r = http.post("/api/rooms", json={"name": room, "kind": "public"}, headers=a.headers)
    assert r.status_code == 201, r.text
    assert http.put(f"/api/rooms/{room}/members/me", headers=b.headers).status_code == 200
    ((room_id,),) = world.sql("SELECT id FROM rooms WHERE name = $1", room)
    return room, int(room_id)


def test_a_count_reads_a_few_pages_however_many_are_unread(world: World) -> None:
    """50,000 unread messages, some deleted and some mentioning the reader: the count is
    exact, and reading it touches a handful of pages (a count of the rows would read
    hundreds)."""
    a, b, _ = world.users
    with httpx.Client(base_url=world.instance.url, timeout=30) as http:
        room, room_id = _public_room_of_two(http, world, "big-")
        bodies = [f"m{i}" if i % 1000 else f"hey @{b.name} {i}" for i in range(50_000)]
        _post_batch(world, room_id, a.name, bodies)
        for seq in (2, 3, 1001, 40_000):  # a mention among the deleted
            r = http.delete(f"/api/rooms/{room}/messages/{seq}", headers=a.headers)
            assert r.status_code == 200
        info = http.get(f"/api/rooms/{room}", headers=b.headers).json()
        assert (info["unread"], info["mentions"]) == (50_000 - 4, 50 - 1)
    plan = world.sql(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT rs.* FROM rooms r "
        "JOIN members m ON m.room_id = r.id AND m.username = $2 "
        f"LEFT JOIN LATERAL ({COUNTS}) AS rs ON true WHERE r.id = $1",
        room_id,
        b.name,
    )
    top = _plan_json(plan)
    pages = top["Shared Hit Blocks"] + top["Shared Read Blocks"]
    assert pages < 60, pages
    assert "Seq Scan" not in str(top)


def _plan_json(rows: list[asyncpg.Record]) -> dict[str, Any]:
    (row,) = rows
    data = orjson.loads(row[0])
    plan: dict[str, Any] = data[0]["Plan"]
    return plan


def test_the_room_list_reads_the_callers_rooms_not_the_servers(world: World) -> None:
    """Among 4,000 rooms with members, the list of a user in 303 of them reaches their rooms
    by index: no sequential scan of rooms or members. The list before took the planner's
    choice, a hash join over every room of the server, which grew with the server and not
    with the user (this test failed with it)."""
    world.renew()
    a, b, _ = world.users
    with httpx.Client(base_url=world.instance.url, timeout=30) as http:
        mine = [_public_room_of_two(http, world, "few-")[0] for _ in range(3)]
        before = _rooms_list(http, b)
        others = unique("others-")
        world.sql(
            "INSERT INTO rooms (name, kind) SELECT $1 || g, 'private' "
            "FROM generate_series(1, 4000) g",
            others,
        )
        world.sql(
            "INSERT INTO members (room_id, username) SELECT id, $1 FROM rooms "
            "WHERE starts_with(name, $2)",
            a.name,
            others,
        )
        world.sql(
            "INSERT INTO members (room_id, username) SELECT id, $1 FROM rooms "
            "WHERE starts_with(name, $2) ORDER BY id LIMIT 300",
            b.name,
            others,
        )
        world.sql("ANALYZE rooms")
        world.sql("ANALYZE members")
        names = ["username", "active", "after_id", "limit"]
        sql = re.sub(r"(?<!:):(\w+)", lambda m: f"${names.index(m[1]) + 1}", _MY_ROOMS.text)
        plan = world.sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", b.name, None, 0, 1001)
        top = _plan_json(plan)
        assert "Seq Scan" not in str(top), top
        assert top["Actual Rows"] == 303
        assert set(before) == set(mine)
        r = http.get("/api/rooms?limit=1000", headers=b.headers)
        assert r.status_code == 200, r.text
        listed = [room["name"] for room in r.json()["rooms"]]
        assert len(listed) == 303 and set(mine) < set(listed)
    world.renew()  # the first user is in 4,000 rooms: not for the tests after this one


def test_a_message_writes_no_row_per_member(world: World) -> None:
    """A send to a room of 2,000 members that mentions one of them changes the author's
    membership row (the cursor) and the mentioned member's (the unread mention count), no
    other; the mentioned member's count is 1."""
    a, _, _ = world.users
    with httpx.Client(base_url=world.instance.url, timeout=30) as http:
        room = unique("crowd-")
        r = http.post("/api/rooms", json={"name": room, "kind": "public"}, headers=a.headers)
        assert r.status_code == 201, r.text
        ((room_id,),) = world.sql("SELECT id FROM rooms WHERE name = $1", room)
        names = [unique("crowd_") for _ in range(2000)]
        world.sql(
            "WITH u AS (INSERT INTO users (username, password_hash) "
            "SELECT unnest($2::text[]), 'x' RETURNING username) "
            "INSERT INTO members (room_id, username, last_read_seq) SELECT $1, username, 0 FROM u",
            room_id,
            names,
        )
        before = {
            r["username"]: r["xmin"]
            for r in world.sql(
                "SELECT username, xmin::text AS xmin FROM members WHERE room_id = $1", room_id
            )
        }
        r = http.post(
            f"/api/rooms/{room}/messages", json={"body": f"hello @{names[0]}"}, headers=a.headers
        )
        assert r.status_code == 201
        after = {
            r["username"]: r["xmin"]
            for r in world.sql(
                "SELECT username, xmin::text AS xmin FROM members WHERE room_id = $1", room_id
            )
        }
    changed = {u for u in after if before.get(u) != after[u]}
    assert changed == {a.name, names[0]}
    assert len(after) == 2001
    ((count,),) = world.sql(
        "SELECT unread_mentions FROM members WHERE room_id = $1 AND username = $2",
        room_id,
        names[0],
    )
    assert count == 1


def test_counts_after_a_prune(world: World) -> None:
    """A prune under an old cursor: what it removed no longer counts (unread nor mentions),
    what is left is counted exactly, and new messages count on from there."""
    a, b, _ = world.users
    with httpx.Client(base_url=world.instance.url, timeout=30) as http:
        room, room_id = _public_room_of_two(http, world, "pruned-")
        _post_batch(world, room_id, a.name, [f"old {i} @{b.name}" for i in range(30)])
        _post_batch(world, room_id, a.name, [f"new {i}" for i in range(10)])
        r = http.delete(f"/api/rooms/{room}/messages/35", headers=a.headers)
        assert r.status_code == 200
        # The first 30 messages become 60 days old (their order in time kept).
        world.sql(
            "UPDATE messages SET created_at = now() - interval '60 days' + seq * interval '1 s' "
            "WHERE room_id = $1 AND seq <= 30",
            room_id,
        )
        info = http.get(f"/api/rooms/{room}", headers=b.headers).json()
        assert (info["unread"], info["mentions"]) == (39, 30)
        pruned = chat(
            ["prune", "--older-than", "30d", "--room", room, "--batch", "7"], world.database
        )
        assert pruned.returncode == 0, pruned.stderr
        info = http.get(f"/api/rooms/{room}", headers=b.headers).json()
        assert (info["last_read_seq"], info["unread"], info["mentions"]) == (0, 9, 0)
        r = http.post(f"/api/rooms/{room}/messages", json={"body": f"@{b.name}"}, headers=a.headers)
        assert r.status_code == 201
        info = http.get(f"/api/rooms/{room}", headers=b.headers).json()
        assert (info["unread"], info["mentions"]) == (10, 1)
        (brute,) = world.sql(
            "SELECT count(*) AS n FROM messages WHERE room_id = $1 AND NOT deleted", room_id
        )
        assert brute["n"] == 10


def test_mention_counts_hold_under_concurrent_reads_and_writes(world: World) -> None:
    """The unread mention count is kept, not counted (readstate.py): while one user posts
    messages that mention another, edits mentions in and out and deletes some, and the
    other moves their cursor all along, every request in flight at once, the count the room
    list reads equals a count of the mention rows above the cursor, and the rows are the
    current texts' mentions."""
    a, b, _ = world.users
    with httpx.Client(base_url=world.instance.url, timeout=30) as http:
        room, room_id = _public_room_of_two(http, world, "racing-")

    async def storm() -> None:
        limits = httpx.Limits(max_connections=24)
        async with httpx.AsyncClient(
            base_url=world.instance.url, timeout=30, limits=limits
        ) as http:
            gate = asyncio.Semaphore(16)
            posted: list[int] = []

            async def call(method: str, path: str, user: User, **kw: Any) -> httpx.Response:
                async with gate:
                    return await http.request(method, path, headers=user.headers, **kw)

            async def post(i: int) -> None:
                body = f"m{i} @{b.name}" if i % 3 else f"m{i} plain"
                r = await call("POST", f"/api/rooms/{room}/messages", a, json={"body": body})
                assert r.status_code == 201, r.text
                posted.append(r.json()["seq"])

            async def edit(i: int) -> None:
                while len(posted) < 5:
                    await asyncio.sleep(0.01)
                seq = posted[(i * 7) % len(posted)]
                body = f"e{i} @{b.name}" if i % 2 else f"e{i} nobody"
                r = await call("PATCH", f"/api/rooms/{room}/messages/{seq}", a, json={"body": body})
                assert r.status_code in (200, 404), r.text  # 404: deleted meanwhile

            async def delete(i: int) -> None:
                while len(posted) < 10:
                    await asyncio.sleep(0.01)
                seq = posted[(i * 13) % len(posted)]
                r = await call("DELETE", f"/api/rooms/{room}/messages/{seq}", a)
                assert r.status_code == 200, r.text

            async def read(i: int) -> None:
                await asyncio.sleep(0.005 * i)
                seq = max(posted, default=1)
                r = await call("PUT", f"/api/rooms/{room}/read", b, json={"seq": seq})
                assert r.status_code == 200, r.text

            async with asyncio.timeout(120):
                await asyncio.gather(
                    *(post(i) for i in range(150)),
                    *(edit(i) for i in range(60)),
                    *(delete(i) for i in range(20)),
                    *(read(i) for i in range(60)),
                )

    world.runner.run(storm())
    with httpx.Client(base_url=world.instance.url, timeout=30) as http:
        info = http.get(f"/api/rooms/{room}", headers=b.headers).json()
        ((cursor, kept, rows),) = world.sql(
            "SELECT m.last_read_seq, m.unread_mentions, (SELECT count(*) FROM mentions mt "
            "WHERE mt.room_id = m.room_id AND mt.username = m.username "
            "AND mt.seq > m.last_read_seq) FROM members m WHERE m.room_id = $1 "
            "AND m.username = $2",
            room_id,
            b.name,
        )
        assert (info["last_read_seq"], info["mentions"]) == (cursor, rows)
        assert kept == rows
        # The rows are the current texts' mentions.
        named = world.sql(
            "SELECT seq FROM messages WHERE room_id = $1 AND NOT deleted AND strpos(body, $2) > 0 "
            "ORDER BY seq",
            room_id,
            f"@{b.name}",
        )
        stored = world.sql(
            "SELECT seq FROM mentions WHERE room_id = $1 AND username = $2 ORDER BY seq",
            room_id,
            b.name,
        )
        assert [r["seq"] for r in stored] == [r["seq"] for r in named]
        r = http.put(f"/api/rooms/{room}/read", json={"seq": 10**9}, headers=b.headers)
        assert r.status_code == 200 and r.json()["mentions"] == 0, r.text
