"""The history page below FastAPI (service/fastpath.py) answers exactly what the route
answers: request by request, an app with it and an app without it (the same database) give
the same status, body and headers, for the ordinary requests it serves itself and for every
odd one it hands on; and it does serve the ordinary ones itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from fastapi import FastAPI

from service import api
from service.app import create_app
from service.fastpath import HistoryPages, ordinary
from service.protocol import MAX_SEQ
from service.settings import Settings
from tests.support import User, app_client, new_user, unique


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", {}),
        (b"before=5", {"before": 5}),
        (b"after=0&limit=200", {"after": 0, "limit": 200}),
        (b"limit=1&x=%00&before=" + str(MAX_SEQ).encode(), {"limit": 1, "before": MAX_SEQ}),
        (b"other=1&other=2", {}),  # parameters the route does not take are ignored by both
    ],
)
def test_ordinary_queries_are_read(query: bytes, expected: dict[str, int]) -> None:
    assert ordinary(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        b"around=3",
        b"before=1&after=2",
        b"before=1&before=2",
        b"limit=0",
        b"limit=201",
        b"before=-1",
        b"before=+1",
        b"before=1.0",
        b"before=",
        b"before=%201",
        b"before=" + str(MAX_SEQ + 1).encode(),
        b"before=99999999999999999999",
        b"limit=\xd9\xa3",  # a digit, but not an ASCII one
    ],
)
def test_other_queries_go_to_the_route(query: bytes) -> None:
    assert ordinary(query) is None


@pytest.fixture
async def plain_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app without HistoryPages: every page through FastAPI's route."""
    application = create_app(settings)
    kept = len(application.user_middleware)
    application.user_middleware = [
        m
        for m in application.user_middleware
        if m.cls is not HistoryPages  # type: ignore[comparison-overlap]
    ]
    assert len(application.user_middleware) == kept - 1
    async with application.router.lifespan_context(application):
        yield application


def _answer(response: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = response.content
    return response.status_code, body, headers


async def _rooms(client: httpx.AsyncClient, alice: User, bob: User) -> tuple[str, str]:
    """A public room and a private one of alice's (bob a member), each with messages, a
    reaction of each, an edit and a delete."""
    public, private = unique("fp-"), unique("fp-priv-")
    for room, kind in ((public, "public"), (private, "private")):
        r = await client.post(
            "/api/rooms", json={"name": room, "kind": kind}, headers=alice.headers
        )
        assert r.status_code == 201, r.text
    r = await client.put(f"/api/rooms/{private}/members/{bob.name}", headers=alice.headers)
    assert r.status_code == 200, r.text
    for room in (public, private):
        for i in range(6):
            author = (alice, bob)[i % 2]
            r = await client.post(
                f"/api/rooms/{room}/messages",
                json={"body": f"message {i} in {room}", "client_id": f"c{i}"},
                headers=author.headers,
            )
            assert r.status_code == 201, r.text
        seqs = [m["seq"] for m in (await _page(client, room, alice))["messages"]]
        for user, emoji in ((alice, "👍"), (bob, "👍"), (bob, "🎉")):
            r = await client.put(
                f"/api/rooms/{room}/messages/{seqs[1]}/reactions/{emoji}", headers=user.headers
            )
            assert r.status_code in (200, 201), r.text
        r = await client.patch(
            f"/api/rooms/{room}/messages/{seqs[0]}", json={"body": "edited"}, headers=alice.headers
        )
        assert r.status_code == 200, r.text
        r = await client.delete(f"/api/rooms/{room}/messages/{seqs[3]}", headers=bob.headers)
        assert r.status_code == 200, r.text
    return public, private


async def _page(client: httpx.AsyncClient, room: str, user: User) -> dict[str, Any]:
    r = await client.get(f"/api/rooms/{room}/messages", headers=user.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_the_page_below_fastapi_answers_as_the_route(
    app: FastAPI, plain_app: FastAPI
) -> None:
    async with app_client(app) as fast, app_client(plain_app) as plain:
        alice, bob, carol = await new_user(fast), await new_user(fast), await new_user(fast)
        public, private = await _rooms(fast, alice, bob)
        cookie = {"cookie": f"session={bob.token}"}
        ordinary_requests: list[tuple[str, dict[str, str]]] = []
        odd_requests: list[tuple[str, str, dict[str, str]]] = []
        for room in (public, private):
            base = f"/api/rooms/{room}/messages"
            queries = ("", "?before=5", "?after=2", "?limit=1", "?after=0&limit=200",
                       "?before=3&limit=2", "?after=99", "?before=1", "?x=1&before=4")  # fmt: skip
            for query in queries:
                for headers in (alice.headers, bob.headers, carol.headers, cookie):
                    ordinary_requests.append((base + query, headers))
            for query in ("?around=3", "?limit=0", "?limit=201", "?before=-1", "?before=abc",
                          "?before=", "?before=1&after=2", "?before=1&before=2",
                          "?before=1.0", "?around=2&limit=3"):  # fmt: skip
                odd_requests.append(("GET", base + query, alice.headers))
                odd_requests.append(("GET", base + query, carol.headers))
            # No credential, a bad one, one of an ended session: 401 before anything else.
            ordinary_requests.append((base, {}))
            ordinary_requests.append((base, {"Authorization": "Bearer not-a-token"}))
            ordinary_requests.append((base, {"Authorization": f"Basic {alice.token}"}))
            odd_requests.append(("HEAD", base, alice.headers))
            odd_requests.append(("GET", base + "/", alice.headers))
        for name in (unique("fp-none-"), "Upper", "a" * 65, "-dash", "%2Fslash", "dm-x-y"):
            ordinary_requests.append((f"/api/rooms/{name}/messages", alice.headers))
        ended = await new_user(fast)
        r = await fast.post("/api/logout", headers=ended.headers)
        assert r.status_code in (200, 204), r.text
        ordinary_requests.append((f"/api/rooms/{public}/messages", ended.headers))

        for path, headers in ordinary_requests:
            expected = _answer(await plain.get(path, headers=headers))
            assert _answer(await fast.get(path, headers=headers)) == expected, path
        for method, path, headers in odd_requests:
            expected = _answer(await plain.request(method, path, headers=headers))
            got = _answer(await fast.request(method, path, headers=headers))
            assert got == expected, (method, path)

        # The statuses the comparison covered, so that it compared more than refusals.
        statuses = {_answer(await fast.get(p, headers=h))[0] for p, h in ordinary_requests}
        assert statuses == {200, 401, 403, 404, 422}, statuses
        page = await _page(fast, public, bob)
        assert page["messages"][0]["body"] == "edited"
        reacted = next(m for m in page["messages"] if m["reactions"])
        assert {r["emoji"]: r["me"] for r in reacted["reactions"]} == {"👍": True, "🎉": True}


async def test_ordinary_pages_never_reach_the_route(app: FastAPI, settings: Settings) -> None:
    """With the route's dependencies made to fail, ordinary pages still answer: the
    middleware served them; a request it hands on (around) meets the failing route."""

    async def no_route() -> None:
        raise AssertionError("the route was called")

    async with app_client(app) as client:
        alice = await new_user(client)
        room = unique("fp-")
        r = await client.post("/api/rooms", json={"name": room}, headers=alice.headers)
        assert r.status_code == 201, r.text
        r = await client.post(
            f"/api/rooms/{room}/messages", json={"body": "hello"}, headers=alice.headers
        )
        assert r.status_code == 201, r.text
        app.dependency_overrides[api.get_chat] = no_route
        try:
            for query in ("", "?before=2", "?after=0&limit=5"):
                r = await client.get(f"/api/rooms/{room}/messages{query}", headers=alice.headers)
                assert r.status_code == 200 and r.json()["messages"][0]["body"] == "hello"
            with pytest.raises(AssertionError, match="the route was called"):
                await client.get(f"/api/rooms/{room}/messages?around=1", headers=alice.headers)
        finally:
            app.dependency_overrides.clear()


async def test_a_page_after_its_connection_died_gets_a_new_one(
    own_database: str, secret_key: str
) -> None:
    """The page's connection is asyncpg's own, outside SQLAlchemy's statements: when the
    database ends it, the page answers 503 (retry) and the pool replaces the connection, as
    for SQLAlchemy's own statements; the next page answers 200."""
    settings = Settings(database_url=own_database, secret_key=secret_key, log_format="text")
    application = create_app(settings)
    async with application.router.lifespan_context(application), app_client(application) as c:
        alice = await new_user(c)
        room = unique("fp-")
        r = await c.post("/api/rooms", json={"name": room}, headers=alice.headers)
        assert r.status_code == 201, r.text
        path = f"/api/rooms/{room}/messages"
        for _ in range(3):
            admin = await asyncpg.connect(own_database, timeout=10)
            try:
                r = await c.get(path, headers=alice.headers)
                assert r.status_code == 200, r.text
                ended = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND backend_type = 'client backend' AND query NOT ILIKE 'LISTEN%'"
                )
                assert ended >= 1
            finally:
                await admin.close()
            answers = [(await c.get(path, headers=alice.headers)).status_code for _ in range(2)]
            # The dead connection fails one page at most (503), never the one after it.
            assert answers in ([503, 200], [200, 200]), answers
