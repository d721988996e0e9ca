"""Operator commands, run as `python -m service ...` against a database of each test's own:
user create, rooms, export, prune; and the service serving a pruned room."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import httpx
import orjson
import pytest

from service import accounts, db, ops
from service.security import Passwords
from service.settings import Settings
from tests.support import (
    PASSWORD,
    PROJECT,
    Instance,
    assert_exactly_once_in_order,
    new_user,
    unique,
    ws_connect,
)


def chat(
    args: list[str], database_url: str, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(CHAT_DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        cwd=PROJECT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        # No controlling terminal: a password prompt reads standard input, never the
        # terminal of whoever runs the tests.
        start_new_session=True,
    )


async def seed(
    url: str, room: str, count: int, *, age_days: float = 0, old: int = 0, author: str = "seeder"
) -> None:
    """Room `room` with messages 1..count; the first `old` of them `age_days` old, the
    rest from the last hour; created_at ascending with seq, as the writer stamps them."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(
            "INSERT INTO users (username, password_hash) VALUES ($1, 'x') ON CONFLICT DO NOTHING",
            author,
        )
        room_id = await conn.fetchval(
            "INSERT INTO rooms (name, last_seq, last_message_at, created_at) "
            "VALUES ($1, $2::bigint, CASE WHEN $2::bigint > 0 THEN now() END, "
            "now() - make_interval(days => 90)) "
            "RETURNING id",
            room,
            count,
        )
        await conn.execute(
            "INSERT INTO messages (room_id, seq, author, body, client_id, created_at) "
            "SELECT $1, g, $2, 'body ' || g || ' é🙂', CASE WHEN g % 3 = 0 THEN 'c' || g END, "
            "  CASE WHEN g <= $4 THEN now() - make_interval(days => $5) + g * interval '1 ms' "
            "  ELSE now() - interval '1 hour' + g * interval '1 ms' END "
            "FROM generate_series(1, $3) AS g",
            room_id,
            author,
            count,
            old,
            age_days,
        )
    finally:
        await conn.close(timeout=5)


async def seqs(url: str, room: str) -> tuple[list[int], int]:
    """The room's stored seqs and its last_seq counter."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT m.seq FROM messages m JOIN rooms r ON r.id = m.room_id "
            "WHERE r.name = $1 ORDER BY m.seq",
            room,
        )
        last = await conn.fetchval("SELECT last_seq FROM rooms WHERE name = $1", room)
    finally:
        await conn.close(timeout=5)
    return [r["seq"] for r in rows], last


# -- chat user create --------------------------------------------------------------------


async def test_user_create_from_stdin_then_login(own_database: str) -> None:
    """`chat user create NAME --password-stdin` makes an account that logs in with that
    password (the name lower-cased); the same name again fails with exit 1."""
    name = unique("Op_")
    result = await asyncio.to_thread(
        chat, ["user", "create", name, "--password-stdin"], own_database, PASSWORD + "\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"created user {name.lower()}"
    engine = db.create_engine(Settings(database_url=own_database))
    passwords = Passwords(threads=1, queue_limit=1)
    try:
        assert await accounts.authenticate(engine, passwords, name, PASSWORD) == "ok"
        assert await accounts.authenticate(engine, passwords, name, PASSWORD + "x") == "wrong"
    finally:
        passwords.close()
        await engine.dispose()
    again = await asyncio.to_thread(
        chat, ["user", "create", name.lower(), "--password-stdin"], own_database, PASSWORD
    )
    assert again.returncode == 1
    assert "already exists" in again.stderr


def test_user_create_prompts_for_the_password_twice(own_database: str) -> None:
    """Without --password-stdin the password is prompted for, with a confirmation."""
    name = unique("op_")
    result = chat(["user", "create", name], own_database, f"{PASSWORD}\n{PASSWORD}\n")
    assert result.returncode == 0, result.stderr
    assert f"created user {name}" in result.stdout
    assert PASSWORD not in result.stdout


@pytest.mark.parametrize(
    ("name", "password", "complaint"),
    [("x", PASSWORD, "username"), ("a b c", PASSWORD, "username"), (None, "short", "password")],
)
def test_user_create_refuses_invalid_input(
    own_database: str, name: str | None, password: str, complaint: str
) -> None:
    """An invalid name or a too-short password exits 2 naming the problem, storing nothing."""
    result = chat(
        ["user", "create", name or unique("op_"), "--password-stdin"], own_database, password
    )
    assert result.returncode == 2
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr


# -- chat rooms ----------------------------------------------------------------------------


async def test_user_admin_ban_and_unban(own_database: str) -> None:
    """`user create --admin`, `user admin`, `user ban` (ends every session) and `user unban`
    change the rows they name; an unknown user exits 1, an invalid name 2."""
    boss, name = unique("op_"), unique("op_")
    result = chat(["user", "create", boss, "--admin", "--password-stdin"], own_database, PASSWORD)
    assert result.returncode == 0, result.stderr
    assert (
        chat(["user", "create", name, "--password-stdin"], own_database, PASSWORD).returncode == 0
    )
    conn = await asyncpg.connect(own_database, timeout=10)
    try:
        flags = "SELECT admin, banned_at IS NOT NULL FROM users WHERE username = $1"
        assert tuple(await conn.fetchrow(flags, boss)) == (True, False)
        assert tuple(await conn.fetchrow(flags, name)) == (False, False)
        assert chat(["user", "admin", name], own_database).returncode == 0
        assert tuple(await conn.fetchrow(flags, name)) == (True, False)
        await conn.executemany(
            "INSERT INTO sessions (id, username) VALUES (gen_random_uuid(), $1)", [(name,)] * 2
        )
        result = chat(["user", "ban", name], own_database)
        assert result.returncode == 0, result.stderr
        assert "2 session(s) ended" in result.stdout
        assert tuple(await conn.fetchrow(flags, name)) == (True, True)
        live = "SELECT count(*) FROM sessions WHERE username = $1 AND ended_at IS NULL"
        assert await conn.fetchval(live, name) == 0
        assert chat(["user", "unban", name], own_database).returncode == 0
        assert tuple(await conn.fetchrow(flags, name)) == (True, False)
    finally:
        await conn.close()
    for command in ("admin", "ban", "unban"):
        result = chat(["user", command, unique("nobody_")], own_database)
        assert result.returncode == 1 and "does not exist" in result.stderr
        result = chat(["user", command, "not a name"], own_database)
        assert result.returncode == 2 and "Traceback" not in result.stderr


async def test_rooms_lists_counts_seqs_and_activity(own_database: str) -> None:
    """`chat rooms` prints a table: each room's messages kept, first and last seq, newest
    first; `--limit` says how many more there are."""
    await seed(own_database, "busy", 120)
    await seed(own_database, "quiet", 3)
    await seed(own_database, "empty", 0)
    result = await asyncio.to_thread(chat, ["rooms"], own_database)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ROOM",
        "MESSAGES",
        "FIRST",
        "SEQ",
        "LAST",
        "SEQ",
        "LAST",
        "ACTIVITY",
        "CREATED",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["busy"][1:4] == ["120", "1", "120"]
    assert rows["quiet"][1:4] == ["3", "1", "3"]
    assert rows["empty"][1:5] == ["0", "-", "0", "-"]
    assert [line.split()[0] for line in lines[1:]][-1] == "empty"  # never active: last

    limited = await asyncio.to_thread(chat, ["rooms", "--limit", "1"], own_database)
    assert limited.returncode == 0, limited.stderr
    assert len(limited.stdout.splitlines()) == 3
    assert "(1 of 3 rooms" in limited.stdout


# -- chat export ---------------------------------------------------------------------------


async def test_export_writes_json_lines_in_seq_order(own_database: str, tmp_path: Path) -> None:
    """`chat export ROOM` writes every event of the room's log as one JSON object per line
    (its frame, as a resume sends it), in seq order, across many pages; `--since S --out FILE`
    writes those above S to the file."""
    await seed(own_database, "archive", 2500)
    result = await asyncio.to_thread(chat, ["export", "archive"], own_database)
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert_exactly_once_in_order([m["seq"] for m in lines], 1, 2500)
    assert set(lines[0]) == {
        "type", "room", "seq", "author", "body", "created_at", "client_id",
        "reply_to", "edited_at", "deleted", "reactions", "version",
    }  # fmt: skip
    assert {m["type"] for m in lines} == {"message"}
    assert lines[2] == {
        **lines[2],
        "room": "archive",
        "author": "seeder",
        "body": "body 3 é🙂",
        "client_id": "c3",
    }
    assert lines[0]["client_id"] is None
    assert lines[0]["created_at"] < lines[-1]["created_at"]
    assert "exported 2500 events" in result.stderr

    out = tmp_path / "archive.jsonl"
    partial = await asyncio.to_thread(
        chat, ["export", "archive", "--since", "2400", "--out", str(out)], own_database
    )
    assert partial.returncode == 0, partial.stderr
    written = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [m["seq"] for m in written] == list(range(2401, 2501))
    assert written == lines[2400:]
    assert "exported 100 events" in partial.stderr
    assert partial.stdout == ""


@pytest.mark.parametrize(
    ("room", "code", "complaint"), [("nowhere", 1, "no room named"), ("Bad Name", 2, "room")]
)
def test_export_refuses_unknown_or_invalid_rooms(
    own_database: str, room: str, code: int, complaint: str
) -> None:
    """Exporting a room that does not exist exits 1; an invalid room name exits 2."""
    result = chat(["export", room], own_database)
    assert result.returncode == code
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr


async def test_export_stops_at_the_last_seq_it_started_with(own_database: str) -> None:
    """The export covers the room as it was when it started, however the room grows."""
    await seed(own_database, "growing", 10)
    engine = db.create_engine(Settings(database_url=own_database))
    try:
        span = await ops.export_range(engine, "growing", 0)
        conn = await asyncpg.connect(own_database, timeout=10)
        try:
            await conn.execute(
                "INSERT INTO messages (room_id, seq, author, body) VALUES ($1, 11, 'seeder', 'x')",
                span.room_id,
            )
            await conn.execute("UPDATE rooms SET last_seq = 11 WHERE id = $1", span.room_id)
        finally:
            await conn.close(timeout=5)

        class Sink:
            data = b""

            def write(self, chunk: bytes) -> int:
                self.data += chunk
                return len(chunk)

            def flush(self) -> None:
                pass

        sink = Sink()
        written = await ops.export(engine, "growing", span, sink)  # type: ignore[arg-type]
    finally:
        await engine.dispose()
    assert written == 10
    assert [orjson.loads(x)["seq"] for x in sink.data.splitlines()] == list(range(1, 11))


# -- chat prune ----------------------------------------------------------------------------


def test_durations() -> None:
    """--older-than takes s, m, h, d, w and their sums; anything else is refused."""
    assert ops.parse_duration("30d") == timedelta(days=30)
    assert ops.parse_duration("1w2d") == timedelta(days=9)
    assert ops.parse_duration("90m") == timedelta(minutes=90)
    for bad in ("", "30", "d", "30x", "0d", "1d 2h", "-1d"):
        with pytest.raises(ValueError, match=r"duration"):
            ops.parse_duration(bad)


async def test_prune_dry_run_then_prune_in_batches(own_database: str) -> None:
    """A dry run lists what is older than the cutoff and deletes nothing; the prune deletes
    exactly that, in batches, and keeps every room's seq counter."""
    await seed(own_database, "mixed", 300, age_days=40, old=200)
    await seed(own_database, "ancient", 50, age_days=60, old=50)
    await seed(own_database, "fresh", 20)

    dry = await asyncio.to_thread(chat, ["prune", "--older-than", "30d", "--dry-run"], own_database)
    assert dry.returncode == 0, dry.stderr
    assert "mixed: would delete 200 events (seq 1..200)" in dry.stdout
    assert "ancient: would delete 50 events (seq 1..50)" in dry.stdout
    assert "fresh" not in dry.stdout
    assert "would delete 250 events" in dry.stdout
    assert await seqs(own_database, "mixed") == (list(range(1, 301)), 300)

    result = await asyncio.to_thread(
        chat, ["prune", "--older-than", "30d", "--batch", "64"], own_database
    )
    assert result.returncode == 0, result.stderr
    assert "mixed: deleted 200 events (seq 1..200)" in result.stdout
    assert "deleted 250 events" in result.stdout
    assert await seqs(own_database, "mixed") == (list(range(201, 301)), 300)
    assert await seqs(own_database, "ancient") == ([], 50)
    assert await seqs(own_database, "fresh") == (list(range(1, 21)), 20)

    again = await asyncio.to_thread(chat, ["prune", "--older-than", "30d"], own_database)
    assert again.returncode == 0, again.stderr
    assert "nothing older than" in again.stdout


async def test_prune_one_room_only(own_database: str) -> None:
    """`--room` prunes that room and leaves the others alone; an unknown room exits 1."""
    await seed(own_database, "one", 30, age_days=10, old=25)
    await seed(own_database, "other", 30, age_days=10, old=25)
    result = await asyncio.to_thread(
        chat, ["prune", "--older-than", "1w", "--room", "one"], own_database
    )
    assert result.returncode == 0, result.stderr
    assert await seqs(own_database, "one") == (list(range(26, 31)), 30)
    assert await seqs(own_database, "other") == (list(range(1, 31)), 30)

    missing = await asyncio.to_thread(
        chat, ["prune", "--older-than", "1w", "--room", "nowhere"], own_database
    )
    assert missing.returncode == 1
    assert "no room named nowhere" in missing.stderr


@pytest.mark.parametrize("older_than", ["30", "0d", "thirty days"])
def test_prune_refuses_bad_durations(own_database: str, older_than: str) -> None:
    """A malformed or zero --older-than exits 2 and deletes nothing."""
    result = chat(["prune", "--older-than", older_than], own_database)
    assert result.returncode == 2
    assert "--older-than" in result.stderr


async def test_service_serves_a_pruned_room(
    own_database: str, spawn: Callable[..., Instance]
) -> None:
    """After a prune under a running instance: a live socket keeps receiving, new seqs go on
    counting up, a resume across the pruned range gets what is left and says truncated,
    joins and history pages work."""
    instance = spawn(own_database, CHAT_RATE_LIMIT_PER_SECOND=0)
    await instance.wait_ready()
    room = unique("pruned-")
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        user = await new_user(http)

        async def post(n: int) -> int:
            r = await http.post(
                f"/api/rooms/{room}/messages", json={"body": f"m{n}"}, headers=user.headers
            )
            assert r.status_code == 201, r.text
            seq: int = r.json()["seq"]
            return seq

        async with ws_connect(instance.url, user.token) as live:
            await live.join(room)
            for n in range(1, 31):
                await post(n)
            assert [m["seq"] for m in await live.messages_until(room, 30)] == list(range(1, 31))

            conn = await asyncpg.connect(own_database, timeout=10)
            try:
                await conn.execute(
                    "UPDATE messages SET created_at = created_at - interval '40 days' "
                    "WHERE seq <= 20 AND room_id = (SELECT id FROM rooms WHERE name = $1)",
                    room,
                )
            finally:
                await conn.close(timeout=5)
            pruned = await asyncio.to_thread(chat, ["prune", "--older-than", "30d"], own_database)
            assert pruned.returncode == 0, pruned.stderr
            assert f"{room}: deleted 20 events (seq 1..20)" in pruned.stdout

            assert await post(31) == 31
            assert [m["seq"] for m in await live.messages_until(room, 31)] == [31]

        async with ws_connect(instance.url, user.token) as resumed:
            joined, replay = await resumed.join(room, since=5)
            assert [m["seq"] for m in replay] == list(range(21, 32))
            # Below what prune kept: what is left, and truncated (PROTOCOL v2, Joining), so
            # the client knows seqs 6..20 are gone rather than missed.
            assert (joined["last_seq"], joined["truncated"]) == (31, True)
        async with ws_connect(instance.url, user.token) as fresh:
            joined, replay = await fresh.join(room)
            assert [m["seq"] for m in replay] == list(range(21, 32))
            assert (joined["last_seq"], joined["truncated"]) == (31, False)
            assert await post(32) == 32
            assert [m["seq"] for m in await fresh.messages_until(room, 32)] == [32]

        page = (
            await http.get(
                f"/api/rooms/{room}/messages", params={"before": 25}, headers=user.headers
            )
        ).json()
        assert ([m["seq"] for m in page["messages"]], page["has_more"]) == ([21, 22, 23, 24], False)
        info = (await http.get(f"/api/rooms/{room}", headers=user.headers)).json()
        assert info["last_seq"] == 32
    instance.stop()


async def test_prune_removes_the_log_and_what_points_into_it(own_database: str) -> None:
    """The old prefix of the log goes from both tables, with the reactions of the messages
    removed; later edits, deletes and reactions of those messages go too (nothing points at
    a message that is gone); later events of kept messages stay; the counter stays."""
    # Messages 1..6 are 40 days old, then two old events (7, 8), then new messages 9..12 and
    # new events 13..15: created_at follows seq across both tables, as the writer stamps.
    await seed(own_database, "logged", 6, age_days=40, old=6)
    conn = await asyncpg.connect(own_database, timeout=10)
    try:
        room_id = await conn.fetchval("SELECT id FROM rooms WHERE name = 'logged'")
        await conn.execute(
            "INSERT INTO messages (room_id, seq, author, body, created_at)"
            " SELECT $1, g, 'seeder', 'new ' || g, now() - interval '1 hour' + g * interval '1 ms'"
            " FROM generate_series(9, 12) AS g",
            room_id,
        )
        await conn.execute(
            "INSERT INTO events (room_id, seq, kind, actor, target, emoji, op, count, created_at)"
            " VALUES ($1, 7, 'reaction', 'seeder', 2, '👍', 'add', 1,"
            " now() - interval '40 days' + interval '1 s'),"
            " ($1, 8, 'edit', 'seeder', 3, NULL, NULL, NULL,"
            " now() - interval '40 days' + interval '2 s'),"
            " ($1, 13, 'reaction', 'seeder', 1, '🎉', 'add', 1, now()),"
            " ($1, 14, 'delete', 'seeder', 4, NULL, NULL, NULL, now()),"
            " ($1, 15, 'reaction', 'seeder', 9, '🎉', 'add', 1, now())",
            room_id,
        )
        await conn.execute("UPDATE events SET body = 'v2' WHERE room_id = $1 AND seq = 8", room_id)
        await conn.execute(
            "INSERT INTO reactions (room_id, seq, emoji, username) VALUES"
            " ($1, 2, '👍', 'seeder'), ($1, 1, '🎉', 'seeder'), ($1, 9, '🎉', 'seeder')",
            room_id,
        )
        await conn.execute("UPDATE rooms SET last_seq = 15 WHERE id = $1", room_id)
        result = await asyncio.to_thread(chat, ["prune", "--older-than", "30d"], own_database)
        assert result.returncode == 0, result.stderr
        assert "logged: deleted 8 events (seq 1..8)" in result.stdout
        messages = await conn.fetch(
            "SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq", room_id
        )
        events = await conn.fetch("SELECT seq FROM events WHERE room_id = $1 ORDER BY seq", room_id)
        reactions = await conn.fetch("SELECT seq FROM reactions WHERE room_id = $1", room_id)
        last = await conn.fetchval("SELECT last_seq FROM rooms WHERE id = $1", room_id)
    finally:
        await conn.close(timeout=5)
    assert [r["seq"] for r in messages] == [9, 10, 11, 12]
    # 13 and 14 changed messages 1 and 4, which are gone; 15 changed a kept one.
    assert [r["seq"] for r in events] == [15]
    assert [r["seq"] for r in reactions] == [9]
    assert last == 15
