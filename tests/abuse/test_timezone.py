"""A database whose default TimeZone is not UTC (America/New_York, set on the database before
it is migrated, as an operator's server might be): every `created_at` still ends in +00:00,
and names the same instant, on every path: the ack, REST answers (post, history, rooms),
socket frames live on the sender's instance and on the other one (whose notification
PostgreSQL itself wrote as JSON, in its session's TimeZone), replayed on a join, and
`chat export`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from service import migrate
from service.settings import Settings
from tests.support import PROJECT, Instance, WsClient, new_user, unique, ws_connect

pytestmark = pytest.mark.timeout(120)

ZONE = "America/New_York"


@pytest.fixture
def new_york(new_database: Callable[[], str]) -> str:
    """A migrated database of this test's own, in New York unless a session says otherwise."""
    url = new_database()

    async def set_zone() -> str:
        conn = await asyncpg.connect(url)
        try:
            name = await conn.fetchval("SELECT current_database()")
            await conn.execute(f"ALTER DATABASE {name} SET timezone = '{ZONE}'")
        finally:
            await conn.close()
        conn = await asyncpg.connect(url)  # a session of ours, without the service's settings
        try:
            shown: str = await conn.fetchval("SELECT json_build_object('at', now())::text")
        finally:
            await conn.close()
        return shown

    shown = asyncio.run(set_zone())
    assert not shown.endswith('+00:00"}'), f"the database is in UTC after all: {shown}"
    migrate.upgrade(Settings(database_url=url))
    return url


async def _message(ws: WsClient, room: str, seq: int) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            frame = await ws.recv()
            if frame["type"] == "message" and frame["room"] == room and frame["seq"] == seq:
                return frame


def _export(database_url: str, room: str) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(CHAT_DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-m", "service", "export", room],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


async def test_every_created_at_is_utc_on_a_database_in_new_york(
    new_york: str, hostile_instances: Callable[..., Awaitable[list[Instance]]]
) -> None:
    a, b = await hostile_instances(2, new_york)
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        alice, bob = await new_user(http), await new_user(http)
    room = unique("tz-")
    seen: dict[str, str] = {}  # path: created_at, each of messages 1 and 2 by its path
    # What PostgreSQL itself wrote into the notifications between instances.
    notified: list[str] = []
    listener = await asyncpg.connect(new_york)

    def on_notify(_conn: object, _pid: int, _channel: str, signed: str) -> None:
        note = orjson.loads(signed.partition(".")[2])  # after the signature (protocol.py)
        if note.get("kind") == "messages":
            notified.extend(m["created_at"] for m in note["messages"])

    await listener.add_listener("chat", on_notify)
    try:
        async with (
            ws_connect(a.url, alice.token) as on_a,
            ws_connect(b.url, bob.token) as on_b,
            httpx.AsyncClient(base_url=b.url, timeout=10) as via_b,
        ):
            await on_a.join(room)
            await on_b.join(room)
            await on_a.send(type="send", room=room, body="from a socket", client_id="one")
            ack, before = await on_a.expect("ack")
            seen["1 ack"] = ack["created_at"]
            mine = [f for f in before if f["type"] == "message"] or [await _message(on_a, room, 1)]
            seen["1 live, same instance"] = mine[0]["created_at"]
            seen["1 live, other instance"] = (await _message(on_b, room, 1))["created_at"]

            r = await via_b.post(
                f"/api/rooms/{room}/messages", json={"body": "over REST"}, headers=bob.headers
            )
            assert r.status_code == 201, r.text
            seen["2 REST post"] = r.json()["created_at"]
            seen["2 live, same instance"] = (await _message(on_b, room, 2))["created_at"]
            seen["2 live, other instance"] = (await _message(on_a, room, 2))["created_at"]

            r = await via_b.get(f"/api/rooms/{room}/messages", headers=bob.headers)
            for m in r.json()["messages"]:
                seen[f"{m['seq']} REST history"] = m["created_at"]
            r = await via_b.get(f"/api/rooms/{room}", headers=bob.headers)
            listed = r.json()
            rooms_at = [listed["created_at"], listed["last_message_at"]]

        async with ws_connect(b.url, alice.token) as again:
            _, replay = await again.join(room, since=0)
            for m in replay:
                seen[f"{m['seq']} replayed"] = m["created_at"]
        for m in await asyncio.to_thread(_export, new_york, room):
            seen[f"{m['seq']} chat export"] = m["created_at"]
    finally:
        await listener.close()

    print(f"\nnon-UTC database ({ZONE}): created_at on {len(seen)} paths: {seen}")
    assert len(seen) == 2 * 6, seen  # six paths for each message
    not_utc = {path: at for path, at in seen.items() if not at.endswith("+00:00")}
    assert not not_utc, not_utc
    assert all(at.endswith("+00:00") for at in rooms_at), rooms_at
    # json_build_object writes `2026-12-01T09:30:00.123456+00:00` in a UTC session.
    assert len(notified) == 2 and all(at.endswith("+00:00") for at in notified), notified
    for seq in ("1", "2"):
        same = {at for path, at in seen.items() if path.startswith(seq)}
        assert len(same) == 1, f"message {seq} has several created_at: {seen}"
