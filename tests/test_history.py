"""REST history pages and the room list (PROTOCOL.md, REST)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings
from tests.support import User, app_client, new_user, unique

N = 10


async def post(client: httpx.AsyncClient, user: User, room: str, body: str) -> dict[str, Any]:
    r = await client.post(f"/api/rooms/{room}/messages", json={"body": body}, headers=user.headers)
    assert r.status_code == 201, r.text
    message: dict[str, Any] = r.json()
    return message


async def filled_room(client: httpx.AsyncClient, n: int = N) -> tuple[User, str]:
    """A fresh room holding messages "m1".."m<n>" (seqs 1..n), posted one after another."""
    user = await new_user(client)
    room = unique("hist-")
    for i in range(1, n + 1):
        assert (await post(client, user, room, f"m{i}"))["seq"] == i
    return user, room


async def page(
    client: httpx.AsyncClient, user: User, room: str, **params: int
) -> tuple[list[int], bool]:
    """(seqs, has_more) of one history page; checks the page's shape on the way."""
    r = await client.get(f"/api/rooms/{room}/messages", params=params, headers=user.headers)
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"room", "messages", "has_more"}
    assert data["room"] == room
    seqs = [m["seq"] for m in data["messages"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    for m in data["messages"]:
        assert m["body"] == f"m{m['seq']}"
        assert m["room"] == room
    return seqs, data["has_more"]


async def status_of(
    client: httpx.AsyncClient, user: User, room: str, **params: str | int | float
) -> int:
    r = await client.get(f"/api/rooms/{room}/messages", params=params, headers=user.headers)
    return r.status_code


async def test_newest_page_without_params(client: httpx.AsyncClient) -> None:
    """Without before/after: the newest `limit` (default 50) in ascending seq."""
    user, room = await filled_room(client)
    assert await page(client, user, room) == (list(range(1, N + 1)), False)
    assert await page(client, user, room, limit=3) == ([8, 9, 10], True)
    assert await page(client, user, room, limit=N) == (list(range(1, N + 1)), False)


async def test_messages_have_the_documented_fields(client: httpx.AsyncClient) -> None:
    """Each message has v1's room, seq, author, body, created_at (UTC offset) and client_id,
    and v2's reply_to, edited_at, deleted, reactions and version."""
    user = await new_user(client)
    room = unique("fields-")
    posted = await post(client, user, room, "hello")
    r = await client.post(
        f"/api/rooms/{room}/messages",
        json={"body": "keyed", "client_id": "cid-1"},
        headers=user.headers,
    )
    assert r.status_code == 201
    r = await client.get(f"/api/rooms/{room}/messages", headers=user.headers)
    first, second = r.json()["messages"]
    assert first == posted
    assert set(first) == {
        "room", "seq", "author", "body", "created_at", "client_id",
        "reply_to", "edited_at", "deleted", "reactions", "version",
    }  # fmt: skip
    assert (first["reply_to"], first["edited_at"], first["deleted"]) == (None, None, False)
    assert (first["reactions"], first["version"]) == ([], first["seq"])
    assert first == {**first, "room": room, "seq": 1, "author": user.name, "client_id": None}
    assert second["client_id"] == "cid-1" and second["body"] == "keyed"
    at = datetime.fromisoformat(first["created_at"])
    assert at.utcoffset() == timedelta(0)
    assert abs(datetime.now(at.tzinfo) - at) < timedelta(minutes=5)


async def test_before_walks_back_to_the_first_message(client: httpx.AsyncClient) -> None:
    """Paging back with `before` from the newest page yields 1..N exactly once."""
    user, room = await filled_room(client)
    seen: list[int] = []
    seqs, has_more = await page(client, user, room, limit=3)
    pages = [seqs]
    while has_more:
        seqs, has_more = await page(client, user, room, before=seqs[0], limit=3)
        pages.append(seqs)
        assert len(pages) <= N, "paging does not end"
    for p in reversed(pages):
        seen += p
    assert pages == [[8, 9, 10], [5, 6, 7], [2, 3, 4], [1]]
    assert seen == list(range(1, N + 1))


async def test_after_walks_forward_to_the_last_message(client: httpx.AsyncClient) -> None:
    """Paging forward with `after` from 0 yields 1..N exactly once, in order."""
    user, room = await filled_room(client)
    seen: list[int] = []
    cursor, has_more = 0, True
    while has_more:
        seqs, has_more = await page(client, user, room, after=cursor, limit=4)
        seen += seqs
        cursor = seqs[-1]
        assert len(seen) <= N
    assert seen == list(range(1, N + 1))
    assert await page(client, user, room, after=N, limit=4) == ([], False)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"before": 6, "limit": 5}, ([1, 2, 3, 4, 5], False)),
        ({"before": 7, "limit": 5}, ([2, 3, 4, 5, 6], True)),
        ({"before": 11, "limit": 5}, ([6, 7, 8, 9, 10], True)),
        ({"before": 10**9, "limit": 5}, ([6, 7, 8, 9, 10], True)),
        ({"before": 2, "limit": 5}, ([1], False)),
        ({"before": 1, "limit": 5}, ([], False)),
        ({"before": 0, "limit": 5}, ([], False)),
        ({"after": 5, "limit": 5}, ([6, 7, 8, 9, 10], False)),
        ({"after": 4, "limit": 5}, ([5, 6, 7, 8, 9], True)),
        ({"after": 0, "limit": 5}, ([1, 2, 3, 4, 5], True)),
        ({"after": 9, "limit": 5}, ([10], False)),
        ({"after": 10, "limit": 5}, ([], False)),
        ({"after": 10**9, "limit": 5}, ([], False)),
        ({"limit": 1}, ([10], True)),
        ({"limit": 200}, (list(range(1, 11)), False)),
        ({"before": 11, "limit": 10}, (list(range(1, 11)), False)),
        ({"after": 0, "limit": 10}, (list(range(1, 11)), False)),
    ],
)
async def test_has_more_is_exact_at_the_edges(
    client: httpx.AsyncClient, params: dict[str, int], expected: tuple[list[int], bool]
) -> None:
    """`has_more` is true exactly when messages exist beyond the page, in its direction."""
    user, room = await filled_room(client)
    assert await page(client, user, room, **params) == expected


async def create_room(database_url: str, room: str) -> None:
    """A room as a join creates it: a row, no messages."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute("INSERT INTO rooms (name) VALUES ($1)", room)
    finally:
        await conn.close(timeout=5)


async def test_empty_room_has_an_empty_page(client: httpx.AsyncClient, database_url: str) -> None:
    """A room that exists without messages answers an empty page, not 404."""
    user = await new_user(client)
    room = unique("empty-")
    await create_room(database_url, room)
    assert await page(client, user, room) == ([], False)
    assert await page(client, user, room, after=0) == ([], False)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 201},
        {"limit": -1},
        {"limit": "ten"},
        {"before": 5, "after": 2},
        {"before": 0, "after": 0},
        {"before": -1},
        {"after": -1},
        {"before": "x"},
        {"after": 1.5},
    ],
)
async def test_invalid_page_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, str | int | float]
) -> None:
    """limit outside 1..200, both before and after, or non-integers: 422."""
    user = await new_user(client)
    room = unique("bad-params-")
    await post(client, user, room, "m1")
    assert await status_of(client, user, room, **params) == 422


async def test_unknown_room_is_404(client: httpx.AsyncClient) -> None:
    """History of a room nobody has used is 404 (reading does not create it)."""
    user = await new_user(client)
    room = unique("nowhere-")
    assert await status_of(client, user, room) == 404
    assert await status_of(client, user, room, after=0) == 404
    r = await client.get("/api/rooms", headers=user.headers)
    assert room not in [x["name"] for x in r.json()["rooms"]]


@pytest.mark.parametrize(
    "room", ["Bad!", "UPPER", "-lead", "_lead", "a" * 65, "..", "%2E%2E%2Fx", "a%00b", "é"]
)
async def test_invalid_room_name_is_refused(client: httpx.AsyncClient, room: str) -> None:
    """An invalid room name is 404 or 422, never a server error, for reads and posts."""
    user = await new_user(client)
    assert await status_of(client, user, room) in (404, 422)
    r = await client.post(f"/api/rooms/{room}/messages", json={"body": "x"}, headers=user.headers)
    assert r.status_code in (404, 405, 422), r.text
    r = await client.get(f"/api/rooms/{room}/online", headers=user.headers)
    assert r.status_code in (404, 422)


async def test_longest_room_name_works(client: httpx.AsyncClient) -> None:
    """A 64-character room name is valid."""
    user = await new_user(client)
    room = unique("long-").ljust(64, "z")
    await post(client, user, room, "m1")
    assert await page(client, user, room) == ([1], False)


async def test_created_at_follows_seq(client: httpx.AsyncClient) -> None:
    """created_at never decreases along seq."""
    user, room = await filled_room(client)
    r = await client.get(f"/api/rooms/{room}/messages", headers=user.headers)
    stamps = [datetime.fromisoformat(m["created_at"]) for m in r.json()["messages"]]
    assert stamps == sorted(stamps)


async def test_rooms_most_recently_active_first(client: httpx.AsyncClient) -> None:
    """GET /api/rooms lists the caller's rooms by last activity: A, B, then A again puts A
    before B (a room's first poster is its owner, so both are the user's)."""
    user = await new_user(client)
    a, b = unique("room-a-"), unique("room-b-")
    await post(client, user, a, "m1")
    await post(client, user, b, "m1")
    r = await client.get("/api/rooms", headers=user.headers)
    names = [x["name"] for x in r.json()["rooms"]]
    assert names.index(b) < names.index(a)
    last = await post(client, user, a, "m2")
    r = await client.get("/api/rooms", headers=user.headers)
    assert r.status_code == 200
    listed = r.json()["rooms"]
    rooms = {x["name"]: x for x in listed}
    names = [x["name"] for x in listed]
    assert names.index(a) < names.index(b)
    for room in listed:
        assert set(room) == {
            "name", "kind", "role", "last_seq", "last_message_seq", "created_at",
            "last_message_at", "last_read_seq", "unread", "mentions", "peer",
        }  # fmt: skip
    assert rooms[a]["last_seq"] == 2 and rooms[b]["last_seq"] == 1
    assert datetime.fromisoformat(rooms[a]["last_message_at"]) == datetime.fromisoformat(
        last["created_at"]
    )
    created = datetime.fromisoformat(rooms[a]["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert created <= datetime.fromisoformat(rooms[a]["last_message_at"])


@pytest.fixture
async def own_app(own_database: str, secret_key: str) -> AsyncIterator[FastAPI]:
    """An app on a database of its own: tests that look at the whole room list."""
    application = create_app(
        Settings(database_url=own_database, secret_key=secret_key, log_format="text")
    )
    async with application.router.lifespan_context(application):
        yield application


async def test_room_without_messages_is_listed_by_its_creation(
    own_app: FastAPI, own_database: str
) -> None:
    """A room created but never posted to has last_seq 0, last_message_at null, and counts
    as active since its creation: after a newer message, before an older one."""
    async with app_client(own_app) as client:
        user = await new_user(client)
        busy, quiet = unique("busy-"), unique("quiet-")
        await post(client, user, busy, "m1")
        r = await client.post("/api/rooms", json={"name": quiet}, headers=user.headers)
        assert r.status_code == 201
        r = await client.get("/api/rooms", headers=user.headers)
        assert [x["name"] for x in r.json()["rooms"]] == [quiet, busy]
        await post(client, user, busy, "m2")
        r = await client.get("/api/rooms", headers=user.headers)
    assert [x["name"] for x in r.json()["rooms"]] == [busy, quiet]
    (entry,) = [x for x in r.json()["rooms"] if x["name"] == quiet]
    assert entry["last_seq"] == 0 and entry["last_message_at"] is None


async def test_online_of_a_room_nobody_joined(client: httpx.AsyncClient) -> None:
    """GET /api/rooms/{room}/online is {"room", "users": []} when no socket joined it;
    404 for a room that does not exist."""
    user = await new_user(client)
    room = unique("online-")
    r = await client.get(f"/api/rooms/{room}/online", headers=user.headers)
    assert r.status_code == 404
    await post(client, user, room, "m1")
    r = await client.get(f"/api/rooms/{room}/online", headers=user.headers)
    assert r.status_code == 200
    assert r.json() == {"room": room, "users": []}
