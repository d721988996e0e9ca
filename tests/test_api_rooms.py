"""REST for rooms, dms and members (PROTOCOL.md, REST): status codes, the room form, privacy
of private rooms on every route, the log's seqs across messages and member events, paging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from service.api_rooms import RoomsOut
from service.app import create_app
from service.settings import Settings
from tests.support import User, app_client, new_user, unique

ROOM_FIELDS = {
    "name", "kind", "role", "last_seq", "last_message_seq", "created_at", "last_message_at",
    "last_read_seq", "unread", "mentions", "peer",
}  # fmt: skip


async def create(
    client: httpx.AsyncClient, user: User, kind: str = "private", name: str | None = None
) -> str:
    name = name or unique(f"{kind[:4]}-")
    r = await client.post("/api/rooms", json={"name": name, "kind": kind}, headers=user.headers)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name and r.json()["role"] == "owner"
    return name


async def put_member(
    client: httpx.AsyncClient, user: User, room: str, who: str, role: str | None = None
) -> httpx.Response:
    body = {"role": role} if role else None
    return await client.put(f"/api/rooms/{room}/members/{who}", json=body, headers=user.headers)


async def delete_member(
    client: httpx.AsyncClient, user: User, room: str, who: str
) -> httpx.Response:
    return await client.delete(f"/api/rooms/{room}/members/{who}", headers=user.headers)


async def post(client: httpx.AsyncClient, user: User, room: str, body: str) -> dict[str, Any]:
    r = await client.post(f"/api/rooms/{room}/messages", json={"body": body}, headers=user.headers)
    assert r.status_code == 201, r.text
    message: dict[str, Any] = r.json()
    return message


async def every(
    client: httpx.AsyncClient, user: User, path: str, key: str, **params: Any
) -> list[dict[str, Any]]:
    """Every item of a paged list, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await client.get(path, params=query, headers=user.headers)
        assert r.status_code == 200, r.text
        data = r.json()
        assert len(data[key]) <= params.get("limit", 1000)
        items += data[key]
        cursor = data["next_cursor"]
        if cursor is None:
            return items


async def test_create_room(client: httpx.AsyncClient) -> None:
    alice, bob = await new_user(client), await new_user(client)
    room = await create(client, alice, "private")
    r = await client.get(f"/api/rooms/{room}", headers=alice.headers)
    assert r.status_code == 200 and set(r.json()) == ROOM_FIELDS
    assert r.json()["kind"] == "private" and r.json()["last_seq"] == 0
    r = await client.post("/api/rooms", json={"name": room, "kind": "public"}, headers=bob.headers)
    assert r.status_code == 409
    r = await client.post("/api/rooms", json={"name": unique("dm-")}, headers=bob.headers)
    assert r.status_code == 403
    for bad in ({"name": "Bad Name"}, {"name": unique("k-"), "kind": "dm"}, {}):
        r = await client.post("/api/rooms", json=bad, headers=bob.headers)
        assert r.status_code == 422, (bad, r.text)
    public = await create(client, bob, "public")
    r = await client.get(f"/api/rooms/{public}", headers=alice.headers)
    assert r.json()["kind"] == "public" and r.json()["role"] is None


async def test_dms(client: httpx.AsyncClient, pg: asyncpg.Connection) -> None:
    alice, bob, banned = [await new_user(client) for _ in range(3)]
    await pg.execute("UPDATE users SET banned_at = now() WHERE username = $1", banned.name)
    r = await client.post("/api/dms", json={"username": bob.name}, headers=alice.headers)
    assert r.status_code == 201, r.text
    dm = r.json()
    assert set(dm) == ROOM_FIELDS and dm["kind"] == "dm" and dm["peer"] == bob.name
    r = await client.post("/api/dms", json={"username": alice.name.upper()}, headers=bob.headers)
    assert r.status_code == 200 and r.json()["name"] == dm["name"]
    assert r.json()["peer"] == alice.name
    r = await client.post("/api/dms", json={"username": bob.name}, headers=alice.headers)
    assert r.status_code == 200 and r.json()["name"] == dm["name"]
    for who, code in [
        (unique("ghost_"), 404),
        (banned.name, 403),
        (alice.name, 422),
        ("\x00\u00e9", 422),
        ("a b", 422),
    ]:
        r = await client.post("/api/dms", json={"username": who}, headers=alice.headers)
        assert r.status_code == code, (who, r.text)
    # Its membership never changes.
    carol = await new_user(client)
    assert (await put_member(client, alice, dm["name"], carol.name)).status_code == 403
    assert (await delete_member(client, alice, dm["name"], "me")).status_code == 403
    assert (await delete_member(client, alice, dm["name"], bob.name)).status_code == 403
    # Posting to an unknown dm- name would take a dm's name: refused.
    r = await client.post(
        f"/api/rooms/{unique('dm-')}/messages", json={"body": "x"}, headers=alice.headers
    )
    assert r.status_code == 403
    # Both see it in their rooms; a dm's messages are theirs alone.
    await post(client, alice, dm["name"], "hi")
    mine = await every(client, bob, "/api/rooms", "rooms")
    (listed,) = [x for x in mine if x["name"] == dm["name"]]
    assert listed["peer"] == alice.name and listed["unread"] == 1
    r = await client.get(f"/api/rooms/{dm['name']}/messages", headers=carol.headers)
    assert r.status_code == 403


async def test_outsiders_get_403_on_every_route_of_a_private_room(
    client: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    owner, outsider, boss = [await new_user(client) for _ in range(3)]
    await pg.execute("UPDATE users SET admin = true WHERE username = $1", boss.name)
    room = await create(client, owner, "private")
    await post(client, owner, room, "secret")
    dm = await client.post("/api/dms", json={"username": owner.name}, headers=boss.headers)
    dm_room = dm.json()["name"]
    for who, name in [(outsider, room), (boss, room), (outsider, dm_room)]:
        for method, path, body in [
            ("GET", f"/api/rooms/{name}", None),
            ("GET", f"/api/rooms/{name}/messages", None),
            ("GET", f"/api/rooms/{name}/messages?after=0", None),
            ("POST", f"/api/rooms/{name}/messages", {"body": "let me in"}),
            ("GET", f"/api/rooms/{name}/online", None),
            ("GET", f"/api/rooms/{name}/members", None),
            ("DELETE", f"/api/rooms/{name}/members/me", None),
            ("PUT", f"/api/rooms/{name}/members/{outsider.name}", None),
            ("DELETE", f"/api/rooms/{name}/members/{owner.name}", None),
        ]:
            r = await client.request(method, path, json=body, headers=who.headers)
            assert r.status_code == 403, (who.name, method, path, r.text)
        listed = await every(client, who, "/api/rooms", "rooms")
        assert room not in [x["name"] for x in listed]
    for who in (outsider, boss):
        public = await every(client, who, "/api/rooms/public", "rooms", q=room[:5])
        assert room not in [x["name"] for x in public]
    # An outsider's PUT members/me on a private room is refused too (only admins add
    # themselves), and nothing was written.
    assert (await put_member(client, outsider, room, "me")).status_code == 403
    r = await client.get(f"/api/rooms/{room}/messages", headers=owner.headers)
    assert [m["body"] for m in r.json()["messages"]] == ["secret"]
    # Unknown rooms are 404 on the same routes.
    nowhere = unique("nowhere-")
    for method, path in [
        ("GET", f"/api/rooms/{nowhere}"),
        ("GET", f"/api/rooms/{nowhere}/members"),
        ("PUT", f"/api/rooms/{nowhere}/members/me"),
        ("DELETE", f"/api/rooms/{nowhere}/members/me"),
        ("GET", f"/api/rooms/{nowhere}/online"),
    ]:
        r = await client.request(method, path, headers=outsider.headers)
        assert r.status_code == 404, (method, path, r.text)


async def test_admin_adds_themselves_visibly(
    client: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    owner, boss = await new_user(client), await new_user(client)
    await pg.execute("UPDATE users SET admin = true WHERE username = $1", boss.name)
    room = await create(client, owner, "private")
    r = await put_member(client, boss, room, "me")
    assert r.status_code == 200 and r.json() == {"username": boss.name, "role": "member"}
    row = await pg.fetchrow(
        "SELECT e.seq, e.actor, e.subject, e.op FROM events e JOIN rooms r ON r.id = e.room_id "
        "WHERE r.name = $1",
        room,
    )
    assert dict(row) == {"seq": 1, "actor": boss.name, "subject": boss.name, "op": "added"}
    r = await client.get(f"/api/rooms/{room}/messages", headers=boss.headers)
    assert r.status_code == 200


async def test_member_events_interleave_with_messages(
    client: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    """Message 1, member added (event 2), message 3: one log, gapless."""
    owner, bob = await new_user(client), await new_user(client)
    room = await create(client, owner, "private")
    assert (await post(client, owner, room, "one"))["seq"] == 1
    r = await put_member(client, owner, room, bob.name)
    assert r.status_code == 200 and r.json() == {"username": bob.name, "role": "member"}
    assert (await post(client, owner, room, "three"))["seq"] == 3
    r = await client.get(f"/api/rooms/{room}/messages", headers=bob.headers)
    assert [m["seq"] for m in r.json()["messages"]] == [1, 3]
    events = await pg.fetch(
        "SELECT e.seq, e.op FROM events e JOIN rooms r ON r.id = e.room_id WHERE r.name = $1",
        room,
    )
    assert [(e["seq"], e["op"]) for e in events] == [(2, "added")]
    info = (await client.get(f"/api/rooms/{room}", headers=bob.headers)).json()
    assert info["last_seq"] == 3
    # Bob's cursor started at the head when he was added (2): message 3 is unread.
    assert (info["role"], info["last_read_seq"], info["unread"], info["mentions"]) == (
        "member",
        2,
        1,
        0,
    )
    mine = (await client.get(f"/api/rooms/{room}", headers=owner.headers)).json()
    assert mine["unread"] == 0  # the owner's own messages


async def test_public_rooms_write_no_events(
    client: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    owner, bob = await new_user(client), await new_user(client)
    room = await create(client, owner, "public")
    await post(client, owner, room, "one")
    r = await put_member(client, bob, room, "me")
    assert r.status_code == 200 and r.json() == {"username": bob.name, "role": "member"}
    assert (await put_member(client, owner, room, bob.name, "moderator")).status_code == 200
    assert (await delete_member(client, owner, room, bob.name)).status_code == 403
    assert (await delete_member(client, bob, room, "me")).status_code == 204
    assert (await post(client, owner, room, "two"))["seq"] == 2
    count = await pg.fetchval(
        "SELECT count(*) FROM events e JOIN rooms r ON r.id = e.room_id WHERE r.name = $1", room
    )
    assert count == 0


async def test_roles_over_rest(client: httpx.AsyncClient) -> None:
    owner, mod, alice, bob = [await new_user(client) for _ in range(4)]
    room = await create(client, owner, "private")
    assert (await put_member(client, owner, room, mod.name, "moderator")).status_code == 200
    assert (await put_member(client, mod, room, alice.name)).status_code == 200
    assert (await put_member(client, mod, room, bob.name, "owner")).status_code == 403
    assert (await put_member(client, alice, room, bob.name)).status_code == 403
    assert (await put_member(client, owner, room, unique("ghost_"))).status_code == 404
    assert (await put_member(client, owner, room, "me", "member")).status_code == 409
    assert (await delete_member(client, owner, room, "me")).status_code == 409
    assert (await delete_member(client, mod, room, owner.name)).status_code == 403
    assert (await delete_member(client, mod, room, alice.name)).status_code == 204
    assert (await delete_member(client, owner, room, alice.name)).status_code == 404
    r = await client.put(
        f"/api/rooms/{room}/members/{bob.name}", json={"role": "king"}, headers=owner.headers
    )
    assert r.status_code == 422
    members = await every(client, mod, f"/api/rooms/{room}/members", "members")
    assert sorted((m["username"], m["role"]) for m in members) == sorted(
        [(owner.name, "owner"), (mod.name, "moderator")]
    )


async def test_my_rooms_and_paging(client: httpx.AsyncClient) -> None:
    user, other = await new_user(client), await new_user(client)
    made = [await create(client, user, "private") for _ in range(3)]
    made.append(await create(client, user, "public"))
    await post(client, user, made[0], "now the most recent")
    expected = [made[0], made[3], made[2], made[1]]
    for limit in (1, 2, 3, 1000):
        listed = await every(client, user, "/api/rooms", "rooms", limit=limit)
        assert [x["name"] for x in listed] == expected, limit
        assert all(set(x) == ROOM_FIELDS for x in listed)
    # The list is serialised without its response model; it still answers to the model.
    r = await client.get("/api/rooms", headers=user.headers)
    assert r.headers["content-type"] == "application/json"
    assert RoomsOut.model_validate(r.json(), strict=True).model_dump() == r.json()
    assert await every(client, other, "/api/rooms", "rooms") == []
    # The public list and the members list page the same way.
    prefix = unique("pg") + "-"
    names = [await create(client, other, "public", prefix + str(k)) for k in range(5)]
    for limit in (1, 2, 200):
        listed = await every(client, user, "/api/rooms/public", "rooms", q=prefix, limit=limit)
        assert [x["name"] for x in listed] == sorted(names)
        assert all(x["members"] == 1 for x in listed)
    for limit in (1, 2):
        listed = await every(client, other, f"/api/rooms/{made[3]}/members", "members", limit=limit)
        assert listed == [{"username": user.name, "role": "owner"}]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/rooms", {"limit": 0}),
        ("/api/rooms", {"limit": 1001}),
        ("/api/rooms", {"cursor": "garbage"}),
        ("/api/rooms", {"cursor": "x" * 600}),
        ("/api/rooms/public", {"limit": 0}),
        ("/api/rooms/public", {"limit": 201}),
        ("/api/rooms/public", {"cursor": "WyJtaW5lIiwgIngiLCAxXQ"}),
        ("/api/rooms/public", {"q": "x" * 65}),
        ("/api/rooms/public", {"q": "a\x00b"}),
        ("/api/rooms/public", {"cursor": "WyJwdWJsaWMiLCJcdTAwMDAiXQ"}),
        ("members", {"limit": 0}),
        ("members", {"limit": 1001}),
        ("members", {"cursor": "e30"}),
    ],
)
async def test_bad_list_parameters_are_422(
    client: httpx.AsyncClient, path: str, params: dict[str, Any]
) -> None:
    user = await new_user(client)
    if path == "members":
        path = f"/api/rooms/{await create(client, user, 'public')}/members"
    r = await client.get(path, params=params, headers=user.headers)
    assert r.status_code == 422, r.text


@pytest.fixture(scope="module")
async def unlimited_app(database_url: str, secret_key: str) -> AsyncIterator[FastAPI]:
    """An app of its own whose REST writes are not rate limited, for the concurrency test."""
    settings = Settings(
        database_url=database_url, secret_key=secret_key, log_format="text", rate_limit_per_second=0
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_concurrent_changes_and_messages_keep_one_gapless_log(
    unlimited_app: FastAPI, pg: asyncpg.Connection
) -> None:
    """Members added, promoted and removed by many tasks while messages are posted to the
    same private room: the seqs of messages and events together are exactly 1..last_seq."""
    async with app_client(unlimited_app) as client:
        owner = await new_user(client)
        others = [await new_user(client) for _ in range(6)]
        room = await create(client, owner, "private")

        async def churn(user: User) -> None:
            for _ in range(4):
                assert (await put_member(client, owner, room, user.name)).status_code == 200
                r = await put_member(client, owner, room, user.name, "moderator")
                assert r.status_code == 200
                assert (await delete_member(client, owner, room, user.name)).status_code == 204

        async def talk(k: int) -> None:
            for i in range(10):
                await post(client, owner, room, f"{k}-{i}")

        async with asyncio.timeout(90):
            await asyncio.gather(*(churn(u) for u in others), *(talk(k) for k in range(3)))
    rows = await pg.fetch(
        "SELECT seq FROM messages WHERE room_id = (SELECT id FROM rooms WHERE name = $1) "
        "UNION ALL "
        "SELECT seq FROM events WHERE room_id = (SELECT id FROM rooms WHERE name = $1) "
        "ORDER BY seq",
        room,
    )
    seqs = [r["seq"] for r in rows]
    last = await pg.fetchval("SELECT last_seq FROM rooms WHERE name = $1", room)
    assert last == 30 + 6 * 4 * 3
    assert seqs == list(range(1, last + 1))
