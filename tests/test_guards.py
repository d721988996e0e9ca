"""The request guard in-process: malformed or repeated Host and Origin refused (400, or 403
for a handshake), bodies capped (413, declared or streamed) and timed (408), and what passes
reaches the app whole."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from service.guards import Guard
from tests.support import app_client, new_user, unique

LIMIT = 1000


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the length of the body it read and how many messages carried it."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        return
    size = messages = 0
    while True:
        message = await receive()
        messages += 1
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = orjson.dumps({"size": size, "messages": messages})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def guarded(timeout: float = 5.0) -> Guard:
    return Guard(echo, max_body_bytes=LIMIT, body_timeout_seconds=timeout)


def http_scope(headers: list[tuple[bytes, bytes]], method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": "/", "headers": headers}


async def call(
    app: Guard, scope: dict[str, Any], incoming: Iterable[dict[str, Any]], pause: float = 0.0
) -> list[dict[str, Any]]:
    """Run `app` with these messages from the client (each after `pause` s, then nothing);
    returns what it sent."""
    sent: list[dict[str, Any]] = []
    queue = iter(incoming)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(pause)
        message = next(queue, None)
        if message is None:
            await asyncio.sleep(3600)
        assert message is not None
        return message

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    async with asyncio.timeout(10):
        await app(scope, receive, send)
    return sent


def answer(sent: list[dict[str, Any]]) -> tuple[int, dict[str, Any], dict[bytes, bytes]]:
    start, body = sent[0], sent[1]
    return start["status"], orjson.loads(body["body"]), dict(start["headers"])


@pytest.mark.parametrize(
    "headers",
    [
        [(b"host", b"h:99999")],
        [(b"host", b"[::1")],
        [(b"host", b"")],
        [(b"host", "é.example".encode())],
        [(b"host", b"a"), (b"host", b"b")],
        [(b"host", b"h"), (b"origin", b"http://h:abc")],
        [(b"host", b"h"), (b"origin", b"http://h"), (b"origin", b"http://h")],
        [(b"origin", b"http://")],
    ],
)
async def test_malformed_host_or_origin_is_400_and_a_handshake_403(
    headers: list[tuple[bytes, bytes]],
) -> None:
    sent = await call(guarded(), http_scope(headers, "GET"), [])
    status, body, response_headers = answer(sent)
    assert (status, response_headers[b"connection"]) == (400, b"close")
    assert body["detail"].startswith(("malformed", "more than one"))
    ws = await call(guarded(), {"type": "websocket", "path": "/ws", "headers": headers}, [])
    assert ws == [{"type": "websocket.close", "code": 1008}]  # before accept: HTTP 403


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"host", b"chat.example")],
        [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")],
        [(b"host", b"chat.example"), (b"origin", b"null")],
        [(b"host", b"chat.example"), (b"origin", b"https://elsewhere.example")],
    ],
)
async def test_well_formed_headers_pass(headers: list[tuple[bytes, bytes]]) -> None:
    """A foreign but well-formed Origin passes here: the socket's origin rule decides."""
    sent = await call(guarded(), http_scope(headers, "GET"), [{"type": "http.request"}])
    assert answer(sent)[:2] == (200, {"size": 0, "messages": 1})
    connect = [{"type": "websocket.connect"}]
    ws = await call(guarded(), {"type": "websocket", "path": "/ws", "headers": headers}, connect)
    assert ws == [{"type": "websocket.accept"}]


def chunks(size: int, count: int | None) -> Iterator[dict[str, Any]]:
    """`count` body messages of `size` bytes, the last one final; endless for None."""
    for n in itertools.count(1) if count is None else range(1, count + 1):
        yield {"type": "http.request", "body": b"x" * size, "more_body": n != count}


async def test_a_declared_length_over_the_limit_is_refused_before_it_is_read() -> None:
    """413 at once to a client that waits for 100 Continue (receiving would send it); from
    one that sends at once, what it sends is dropped (up to a bound) before the 413, so
    that closing does not reset the connection under the answer."""
    expect = [(b"host", b"h"), (b"content-length", b"2000"), (b"expect", b"100-continue")]
    sent = await call(guarded(), http_scope(expect), [])  # a receive would hang: none is
    status, body, headers = answer(sent)
    assert (status, body, headers[b"connection"]) == (
        413,
        {"detail": f"request body too large: at most {LIMIT} bytes"},
        b"close",
    )
    given = chunks(500, 4)
    sent = await call(guarded(), http_scope([(b"content-length", b"2000")]), given)
    assert answer(sent)[0] == 413
    assert next(given, None) is None  # all of it was read


async def test_a_streamed_body_is_cut_once_it_passes_the_limit() -> None:
    """A chunked body is refused once it passes the limit: the rest is dropped if it ends
    soon, else the refusal goes out with a bounded part of it read."""
    scope = http_scope([(b"host", b"h"), (b"transfer-encoding", b"chunked")])
    given = chunks(300, 10)
    assert answer(await call(guarded(), scope, given))[0] == 413
    assert next(given, None) is None
    read: list[int] = []

    def endless() -> Iterator[dict[str, Any]]:
        for message in chunks(4096, None):
            read.append(len(message["body"]))
            yield message

    assert answer(await call(guarded(), scope, endless()))[0] == 413
    # Past the limit (1 message here), at most _DRAIN_BYTES more (64 of 4 kB) were read.
    assert len(read) == 1 + 64, len(read)


async def test_a_streamed_body_within_the_limit_reaches_the_app_whole() -> None:
    chunks = [{"type": "http.request", "body": b"x" * 250, "more_body": True}] * 3
    chunks.append({"type": "http.request", "body": b"x" * 250, "more_body": False})
    scope = http_scope([(b"transfer-encoding", b"chunked")])
    sent = await call(guarded(), scope, chunks)
    assert answer(sent)[:2] == (200, {"size": LIMIT, "messages": 1})


async def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    chunks = [{"type": "http.request", "body": b"x", "more_body": True}] * 100
    scope = http_scope([(b"content-length", b"100")])
    started = asyncio.get_running_loop().time()
    sent = await call(guarded(timeout=0.3), scope, chunks, pause=0.05)
    elapsed = asyncio.get_running_loop().time() - started
    status, body, headers = answer(sent)
    assert (status, headers[b"connection"]) == (408, b"close")
    assert body == {"detail": "request body not received within 0.3 s"}
    assert 0.3 <= elapsed < 1.5


async def test_a_client_gone_mid_body_gets_nothing() -> None:
    scope = http_scope([(b"content-length", b"100")])
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"x" * 10, "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert await call(guarded(), scope, incoming) == []


# -- in the service's app -------------------------------------------------------------------


async def test_the_app_caps_rest_bodies_and_still_takes_the_largest_message(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A post over CHAT_MAX_REQUEST_BYTES is 413 with FastAPI's body and stores nothing;
    the largest legal message, each character escaped as a surrogate pair, still fits."""
    settings = app.state.settings
    user = await new_user(client)
    room = unique("guard-")
    limit = settings.max_request_bytes
    big = b'{"body": "' + b"a" * limit + b'"}'
    r = await client.post(
        f"/api/rooms/{room}/messages",
        content=big,
        headers={**user.headers, "content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json() == {"detail": f"request body too large: at most {limit} bytes"}
    largest = orjson.dumps({"body": "\U0001f600" * settings.max_message_chars}).decode()
    escaped = largest.encode("ascii", "backslashreplace").replace(b"\\U0001f600", b"\\ud83d\\ude00")
    assert len(escaped) > 12 * settings.max_message_chars
    r = await client.post(
        f"/api/rooms/{room}/messages",
        content=escaped,
        headers={**user.headers, "content-type": "application/json"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["body"] == "\U0001f600" * settings.max_message_chars
    r = await client.get(f"/api/rooms/{room}/messages", headers=user.headers)
    assert [m["seq"] for m in r.json()["messages"]] == [1]


async def test_the_app_refuses_a_malformed_host(app: FastAPI) -> None:
    async with app_client(app) as http:
        assert (await http.get("/healthz", headers={"Host": "h:99999"})).status_code == 400
        r = await http.post("/api/token", headers={"Host": "[::1"}, data={"username": "x"})
        assert (r.status_code, r.json()) == (400, {"detail": "malformed Host header"})
        assert (await http.get("/healthz", headers={"Host": "h:8000"})).status_code == 200
