"""Posting over REST: gapless seqs under concurrency, idempotent retries, refused bodies;
and the operational endpoints (health, readiness, OpenAPI docs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings
from tests.support import User, app_client, new_user, unique

API_PATHS = {
    "/api/config",
    "/api/users",
    "/api/token",
    "/api/logout",
    "/api/me",
    "/api/rooms",
    "/api/rooms/{room}/messages",
    "/api/rooms/{room}/online",
}


async def post(
    client: httpx.AsyncClient, user: User, room: str, body: object, **extra: object
) -> httpx.Response:
    return await client.post(
        f"/api/rooms/{room}/messages", json={"body": body, **extra}, headers=user.headers
    )


async def history(client: httpx.AsyncClient, user: User, room: str) -> list[dict[str, Any]]:
    """Every message of the room (at most 200), ascending."""
    r = await client.get(f"/api/rooms/{room}/messages?limit=200", headers=user.headers)
    assert r.status_code == 200, r.text
    assert r.json()["has_more"] is False
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages


async def last_seq(client: httpx.AsyncClient, user: User, room: str) -> int:
    """The room's last_seq as GET /api/rooms/{room} reports it."""
    r = await client.get(f"/api/rooms/{room}", headers=user.headers)
    assert r.status_code == 200, r.text
    seq: int = r.json()["last_seq"]
    return seq


@pytest.fixture(scope="module")
async def unlimited_app(database_url: str, secret_key: str) -> AsyncIterator[FastAPI]:
    """An app of its own whose REST writes are not rate limited (a rate of 0), for the tests
    that post faster than a user may."""
    settings = Settings(
        database_url=database_url, secret_key=secret_key, log_format="text", rate_limit_per_second=0
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


# -- concurrency and idempotency ---------------------------------------------------------


async def test_concurrent_posts_get_gapless_seqs(unlimited_app: FastAPI) -> None:
    """200 posts at once from 4 users on separate clients: each 201 with a distinct seq,
    and the room holds exactly seqs 1..200, each message as its response said. (50 each,
    more than the write burst: a rate of 0 turns the REST limit off.)"""
    room = unique("storm-")
    clients = [app_client(unlimited_app) for _ in range(4)]
    try:
        users = [await new_user(c) for c in clients]

        async def send(i: int) -> httpx.Response:
            k = i % len(users)
            return await post(clients[k], users[k], room, f"{users[k].name} #{i}")

        async with asyncio.timeout(120):
            responses = await asyncio.gather(*(send(i) for i in range(200)))
        assert [r.status_code for r in responses] == [201] * 200
        by_seq = {r.json()["seq"]: r.json() for r in responses}
        assert sorted(by_seq) == list(range(1, 201))
        stored = await history(clients[0], users[0], room)
        assert [m["seq"] for m in stored] == list(range(1, 201))
        for message in stored:
            assert message == by_seq[message["seq"]]
        assert {m["body"] for m in stored} == {f"{users[i % 4].name} #{i}" for i in range(200)}
        assert await last_seq(clients[0], users[0], room) == 200
    finally:
        for c in clients:
            await c.aclose()


async def test_concurrent_posts_to_many_rooms_count_per_room(unlimited_app: FastAPI) -> None:
    """Posts to five rooms at once: each room counts its own seqs 1..30, and one client_id
    used once in every room is five different messages."""
    async with app_client(unlimited_app) as client:
        user = await new_user(client)
        rooms = [unique(f"multi{k}-") for k in range(5)]
        async with asyncio.timeout(120):
            responses = await asyncio.gather(
                *(
                    post(client, user, room, f"{room} {i}", client_id=f"c{i}")
                    for i in range(30)
                    for room in rooms
                )
            )
        assert {r.status_code for r in responses} == {201}
        for room in rooms:
            stored = await history(client, user, room)
            assert [m["seq"] for m in stored] == list(range(1, 31))
            assert sorted(m["body"] for m in stored) == sorted(f"{room} {i}" for i in range(30))
            assert all(m["body"] == f"{room} {m['client_id'][1:]}" for m in stored)


async def test_repeated_client_id_returns_the_original(client: httpx.AsyncClient) -> None:
    """A repeated client_id answers 200 with the original seq, created_at and body, and
    stores nothing (last_seq unchanged), even when the retry's body differs."""
    user = await new_user(client)
    room = unique("idem-")
    assert (await post(client, user, room, "before")).status_code == 201
    first = await post(client, user, room, "hello", client_id="retry-1")
    assert first.status_code == 201
    original = first.json()
    assert original["seq"] == 2 and original["client_id"] == "retry-1"
    for body in ("hello", "hello, edited"):
        again = await post(client, user, room, body, client_id="retry-1")
        assert again.status_code == 200, again.text
        assert again.json() == original
    assert await last_seq(client, user, room) == 2
    assert [m["seq"] for m in await history(client, user, room)] == [1, 2]
    nxt = await post(client, user, room, "after", client_id="retry-2")
    assert nxt.status_code == 201 and nxt.json()["seq"] == 3


async def test_concurrent_retries_store_once(client: httpx.AsyncClient) -> None:
    """Ten sends of one client_id at once: one 201, nine 200, all the same message."""
    user = await new_user(client)
    room = unique("idem-burst-")
    async with asyncio.timeout(60):
        responses = await asyncio.gather(
            *(post(client, user, room, "once", client_id="same") for _ in range(10))
        )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 9 + [201]
    assert {r.json()["seq"] for r in responses} == {1}
    assert len({r.json()["created_at"] for r in responses}) == 1
    assert [m["seq"] for m in await history(client, user, room)] == [1]


async def test_client_id_is_per_author(client: httpx.AsyncClient) -> None:
    """The same client_id from a different author is a different message."""
    alice, bob = await new_user(client), await new_user(client)
    room = unique("idem-authors-")
    a = await post(client, alice, room, "from alice", client_id="shared")
    b = await post(client, bob, room, "from bob", client_id="shared")
    assert (a.status_code, b.status_code) == (201, 201)
    assert (a.json()["seq"], b.json()["seq"]) == (1, 2)
    assert b.json()["author"] == bob.name and b.json()["body"] == "from bob"
    stored = await history(client, alice, room)
    assert [(m["author"], m["client_id"]) for m in stored] == [
        (alice.name, "shared"),
        (bob.name, "shared"),
    ]


async def test_client_id_is_per_room(client: httpx.AsyncClient) -> None:
    """The same client_id in a different room is a different message."""
    user = await new_user(client)
    one, two = unique("idem-one-"), unique("idem-two-")
    a = await post(client, user, one, "in one", client_id="shared")
    b = await post(client, user, two, "in two", client_id="shared")
    assert (a.status_code, b.status_code) == (201, 201)
    assert b.json()["room"] == two and b.json()["seq"] == 1 and b.json()["body"] == "in two"


async def test_messages_without_client_id_are_never_merged(client: httpx.AsyncClient) -> None:
    """Identical bodies without client_id (or with null) are separate messages."""
    user = await new_user(client)
    room = unique("no-cid-")
    codes = [(await post(client, user, room, "same")).status_code for _ in range(2)]
    codes.append((await post(client, user, room, "same", client_id=None)).status_code)
    assert codes == [201, 201, 201]
    assert [m["seq"] for m in await history(client, user, room)] == [1, 2, 3]


async def test_author_is_the_authenticated_user(client: httpx.AsyncClient) -> None:
    """A client cannot choose the author: a posted `author` field is ignored."""
    user, other = await new_user(client), await new_user(client)
    room = unique("author-")
    r = await post(client, user, room, "hi", author=other.name)
    assert r.status_code == 201
    assert r.json()["author"] == user.name
    assert (await history(client, user, room))[0]["author"] == user.name


# -- limits ------------------------------------------------------------------------------


@pytest.fixture
async def limited_app(
    database_url: str, secret_key: str, request: pytest.FixtureRequest
) -> AsyncIterator[FastAPI]:
    """An app of its own with the settings the test gives (indirect parametrisation)."""
    settings = Settings(
        database_url=database_url, secret_key=secret_key, log_format="text", **request.param
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.mark.parametrize(
    "limited_app", [{"rate_limit_per_second": 0.1, "rate_limit_burst": 3}], indirect=True
)
async def test_rest_writes_are_rate_limited_per_user(limited_app: FastAPI) -> None:
    """Past the burst a user's posts answer 429 with Retry-After and store nothing; another
    user's bucket is their own."""
    async with app_client(limited_app) as client:
        user, other = await new_user(client), await new_user(client)
        room = unique("rate-")
        codes = []
        for i in range(5):
            r = await post(client, user, room, f"m{i}")
            codes.append(r.status_code)
            if r.status_code == 429:  # a token every 10 s
                assert 1 <= int(r.headers["retry-after"]) <= 10, r.headers
        assert codes == [201, 201, 201, 429, 429]
        assert [m["body"] for m in await history(client, other, room)] == ["m0", "m1", "m2"]
        assert (await post(client, other, room, "from the other")).status_code == 201


@pytest.mark.parametrize("limited_app", [{"rooms_created_per_hour": 2}], indirect=True)
async def test_rooms_created_are_limited_per_user(limited_app: FastAPI) -> None:
    """Past CHAT_ROOMS_CREATED_PER_HOUR a post to a new room answers 429 and creates
    nothing; posting to existing rooms goes on, and another user may still create one."""
    async with app_client(limited_app) as client:
        user, other = await new_user(client), await new_user(client)
        first, second, third = (unique(f"made{k}-") for k in range(3))
        assert (await post(client, user, first, "hi")).status_code == 201
        assert (await post(client, user, second, "hi")).status_code == 201
        r = await post(client, user, third, "hi")
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["retry-after"]) <= 1800  # a room every half hour
        r = await client.get(f"/api/rooms/{third}/messages", headers=user.headers)
        assert r.status_code == 404  # not created
        assert (await post(client, other, third, "mine")).status_code == 201
        assert (await post(client, user, third, "now it exists")).status_code == 201


# -- bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("", 422),
        ("  \n\t", 422),
        ("\u00a0\u2003\u3000", 422),
        ("x" * 4001, 413),
        ("😀" * 4001, 413),
        ("a\u0000b", 422),
        (None, 422),
        (42, 422),
        (["x"], 422),
        ({"text": "x"}, 422),
        (True, 422),
    ],
)
async def test_refused_bodies_store_nothing(
    client: httpx.AsyncClient, body: object, code: int
) -> None:
    """Empty, blank, too long, NUL-bearing and non-string bodies are refused; nothing is
    stored."""
    user = await new_user(client)
    room = unique("refuse-")
    assert (await post(client, user, room, "first")).status_code == 201
    r = await post(client, user, room, body)
    assert r.status_code == code, r.text
    assert "detail" in r.json()
    assert [m["seq"] for m in await history(client, user, room)] == [1]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"body": "\\ud800"}',
        b'{"body": "bad \\udc00 low"}',
        b'{"body": "x\\ud83d"}',
        b'{"body": "ok", "client_id": "\\ud800"}',
        b'{"body": "ok", "client_id": "a\\u0000b"}',
        b'{"client_id": "no-body"}',
        b'["body"]',
        b'"just a string"',
        b"{not json",
        b"",
    ],
)
async def test_refused_raw_payloads_store_nothing(client: httpx.AsyncClient, raw: bytes) -> None:
    """Unpaired surrogates (which httpx cannot even encode), NUL in client_id, missing body
    and malformed JSON: 422, nothing stored."""
    user = await new_user(client)
    room = unique("refuse-raw-")
    assert (await post(client, user, room, "first")).status_code == 201
    r = await client.post(
        f"/api/rooms/{room}/messages",
        content=raw,
        headers={**user.headers, "content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert [m["seq"] for m in await history(client, user, room)] == [1]


async def test_escaped_surrogate_pair_is_one_character(client: httpx.AsyncClient) -> None:
    """A JSON-escaped surrogate pair is a valid character and reads back decoded."""
    user = await new_user(client)
    room = unique("pair-")
    r = await client.post(
        f"/api/rooms/{room}/messages",
        content=b'{"body": "smile \\ud83d\\ude00"}',
        headers={**user.headers, "content-type": "application/json"},
    )
    assert r.status_code == 201, r.text
    assert (await history(client, user, room))[0]["body"] == "smile 😀"


@pytest.mark.parametrize(
    ("client_id", "code"),
    [("c" * 65, 422), ("", 422), (17, 422), (["a"], 422), ("c" * 64, 201), ("é", 201)],
)
async def test_client_id_bounds(client: httpx.AsyncClient, client_id: object, code: int) -> None:
    """client_id is a string of 1 to 64 characters, or null."""
    user = await new_user(client)
    room = unique("cid-")
    r = await post(client, user, room, "hi", client_id=client_id)
    assert r.status_code == code, r.text
    if code == 201:
        assert r.json()["client_id"] == client_id


@pytest.mark.parametrize(
    "body",
    [
        "😀" * 4000,
        "x" * 4000,
        "👩\u200d👩\u200d👧\u200d👦 family",
        "line one\nline two\r\nline three",
        "שלום עולם مرحبا",
        "e\u0301 combining",
        "<script>alert(1)</script> & \"quotes\" 'single'",
        "\u200b",
    ],
)
async def test_valid_bodies_read_back_intact(client: httpx.AsyncClient, body: str) -> None:
    """Bodies up to 4000 characters (4-byte ones too) are stored and read back unchanged."""
    user = await new_user(client)
    room = unique("intact-")
    r = await post(client, user, room, body)
    assert r.status_code == 201, r.text[:200]
    assert r.json()["body"] == body
    (stored,) = await history(client, user, room)
    assert stored["body"] == body


@pytest.fixture
async def short_app(database_url: str, secret_key: str) -> AsyncIterator[FastAPI]:
    """An app of its own with CHAT_MAX_MESSAGE_CHARS=10."""
    settings = Settings(
        database_url=database_url, secret_key=secret_key, log_format="text", max_message_chars=10
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_max_message_chars_is_configurable(short_app: FastAPI) -> None:
    """CHAT_MAX_MESSAGE_CHARS bounds the body: 10 characters pass, 11 are 413."""
    async with app_client(short_app) as client:
        user = await new_user(client)
        room = unique("short-")
        assert (await post(client, user, room, "😀" * 10)).status_code == 201
        assert (await post(client, user, room, "x" * 11)).status_code == 413


# -- operations --------------------------------------------------------------------------


async def test_healthz(client: httpx.AsyncClient) -> None:
    """GET /healthz is 200 {"status": "ok"} while the process runs."""
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_with_the_database_up(client: httpx.AsyncClient) -> None:
    """GET /readyz is 200 when the database answers and the listener is healthy."""
    async with asyncio.timeout(15):
        while (r := await client.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.1)
    assert r.json()["status"] == "ok"


async def test_docs_page(client: httpx.AsyncClient) -> None:
    """/docs serves the Swagger UI."""
    r = await client.get("/docs")
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    assert "swagger" in r.text.lower()


async def test_openapi_lists_the_api_and_the_password_flow(client: httpx.AsyncClient) -> None:
    """/openapi.json lists every /api path, and the OAuth2 password flow with tokenUrl
    /api/token guards the protected operations (so the docs' Authorize button works)."""
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert set(spec["paths"]) >= API_PATHS
    schemes = spec["components"]["securitySchemes"]
    oauth = {name: s for name, s in schemes.items() if s["type"] == "oauth2"}
    assert len(oauth) == 1
    ((name, scheme),) = oauth.items()
    assert scheme["flows"]["password"]["tokenUrl"] == "/api/token"
    for path, method in [
        ("/api/me", "get"),
        ("/api/rooms", "get"),
        ("/api/rooms/{room}/messages", "get"),
        ("/api/rooms/{room}/messages", "post"),
        ("/api/rooms/{room}/online", "get"),
    ]:
        assert {name: []} in spec["paths"][path][method].get("security", []), (path, method)
    token = spec["paths"]["/api/token"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in token
