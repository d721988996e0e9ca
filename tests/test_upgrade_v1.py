"""A v1 database with data, upgraded to v2: its rooms stay public and keep serving, their
posters become members (the first poster the owner), and its users log in again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from argon2 import PasswordHasher

from service import migrate
from service.app import create_app
from service.settings import Settings
from tests.support import PASSWORD, app_client

V1_HEAD = "0003"


async def _fill_v1(url: str) -> None:
    """Two rooms as v1 left them: `lobby` with three posters (bob first), `quiet` empty."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        hashed = PasswordHasher().hash(PASSWORD)
        for name in ("alice", "bob", "carol", "dave"):
            await conn.execute(
                "INSERT INTO users (username, password_hash) VALUES ($1, $2)", name, hashed
            )
        lobby = await conn.fetchval("INSERT INTO rooms (name) VALUES ('lobby') RETURNING id")
        await conn.execute("INSERT INTO rooms (name) VALUES ('quiet')")
        start = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        authors = ["bob", "alice", "bob", "carol", "alice"]
        for seq, author in enumerate(authors, start=1):
            await conn.execute(
                "INSERT INTO messages (room_id, seq, author, body, client_id, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                lobby, seq, author, f"v1 message {seq}", f"c{seq}",
                start + timedelta(minutes=seq),
            )  # fmt: skip
        await conn.execute(
            "UPDATE rooms SET last_seq = 5, last_message_at = $2 WHERE id = $1",
            lobby,
            start + timedelta(minutes=5),
        )
    finally:
        await conn.close(timeout=5)


async def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [tuple(r) for r in await conn.fetch(sql, timeout=10)]
    finally:
        await conn.close(timeout=5)


def test_a_v1_database_upgrades_and_keeps_serving(
    new_database: Callable[[], str], secret_key: str
) -> None:
    url = new_database()
    settings = Settings(database_url=url, secret_key=secret_key, log_format="text")
    migrate.upgrade(settings, V1_HEAD)
    asyncio.run(_fill_v1(url))

    migrate.upgrade(settings)

    members = asyncio.run(
        _rows(
            url,
            "SELECT r.name, m.username, m.role, m.last_read_seq FROM members m"
            " JOIN rooms r ON r.id = m.room_id ORDER BY r.name, m.username",
        )
    )
    assert members == [
        ("lobby", "alice", "member", 5),
        ("lobby", "bob", "owner", 3),
        ("lobby", "carol", "member", 4),
    ]
    rooms = asyncio.run(
        _rows(url, "SELECT name, kind, last_seq, last_message_seq FROM rooms ORDER BY name")
    )
    assert rooms == [("lobby", "public", 5, 5), ("quiet", "public", 0, 0)]
    assert asyncio.run(_rows(url, "SELECT count(*) FROM events")) == [(0,)]

    async def serve() -> None:
        app = create_app(settings)
        async with app.router.lifespan_context(app), app_client(app) as http:
            r = await http.post("/api/token", data={"username": "dave", "password": PASSWORD})
            assert r.status_code == 200, r.text
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
            r = await http.get("/api/rooms/lobby/messages", headers=headers)
            assert r.status_code == 200, r.text
            page = r.json()["messages"]
            assert [(m["seq"], m["author"], m["body"]) for m in page] == [
                (seq, author, f"v1 message {seq}")
                for seq, author in enumerate(["bob", "alice", "bob", "carol", "alice"], 1)
            ]
            assert all(m["version"] == m["seq"] and not m["deleted"] for m in page)
            # A retry of a v1 send is still recognised by its client_id.
            r = await http.post(
                "/api/rooms/lobby/messages",
                json={"body": "again", "client_id": "c1"},
                headers=headers,
            )
            assert r.status_code == 201  # dave's own client_id c1 is new: another author
            assert r.json()["seq"] == 6
            r = await http.post("/api/token", data={"username": "bob", "password": PASSWORD})
            bob = {"Authorization": f"Bearer {r.json()['access_token']}"}
            r = await http.post(
                "/api/rooms/lobby/messages", json={"body": "again", "client_id": "c1"}, headers=bob
            )
            assert (r.status_code, r.json()["seq"]) == (200, 1)

    asyncio.run(serve())
    # Posting made dave a member of the public room, with the log's head as his cursor.
    assert asyncio.run(
        _rows(
            url,
            "SELECT m.role FROM members m JOIN rooms r ON r.id = m.room_id"
            " WHERE r.name = 'lobby' AND m.username = 'dave'",
        )
    ) == [("member",)]
    assert asyncio.run(
        _rows(url, "SELECT last_seq, last_message_seq FROM rooms WHERE name = 'lobby'")
    ) == [(6, 6)]
