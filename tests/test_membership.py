"""Membership across real instances: who may join, read and post in a private room (checked
in the transaction that numbers a message, not only before it), public rooms that make their
posters and joiners members, and the user's own stream on both fan-out backends."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from tests.support import Instance, quiet, unique, users, ws_connect


async def private_room(pg: asyncpg.Connection, owner: str, *members: str) -> str:
    """A private room made directly in the database (the REST form is tested elsewhere)."""
    room = unique("p-")
    room_id = await pg.fetchval(
        "INSERT INTO rooms (name, kind) VALUES ($1, 'private') RETURNING id", room
    )
    await pg.execute(
        "INSERT INTO members (room_id, username, role) VALUES ($1, $2, 'owner')", room_id, owner
    )
    for name in members:
        await pg.execute("INSERT INTO members (room_id, username) VALUES ($1, $2)", room_id, name)
    return room


async def test_only_members_join_or_post_in_a_private_room(
    instances: tuple[Instance, Instance], pg: asyncpg.Connection
) -> None:
    a, b = instances
    owner, member, stranger = await users(a, 3)
    room = await private_room(pg, owner.name, member.name)
    async with (
        ws_connect(a.url, owner.token) as on_a,
        ws_connect(b.url, member.token) as on_b,
        ws_connect(b.url, stranger.token) as outsider,
    ):
        joined, _ = await on_a.join(room)
        assert (joined["kind"], joined["role"], joined["online_count"]) == ("private", "owner", 1)
        joined, _ = await on_b.join(room)
        assert (joined["kind"], joined["role"]) == ("private", "member")
        assert sorted(joined["online"]) == sorted([owner.name, member.name])
        await on_a.expect("presence")

        await outsider.send(type="join", room=room, ref="j")
        refused = await outsider.recv()
        assert (refused["type"], refused["code"], refused["ref"]) == ("error", "forbidden", "j")
        await outsider.send(type="send", room=room, body="let me in")
        assert (await outsider.recv())["code"] == "not_joined"

        await on_b.send(type="send", room=room, body="members only", client_id="m1")
        ack, early = await on_b.expect("ack")
        got = [f for f in early if f["type"] == "message"]
        if not got:
            got = await on_b.messages_until(room, ack["seq"])
        assert [m["body"] for m in got] == ["members only"]
        got = await on_a.messages_until(room, ack["seq"])
        assert [m["body"] for m in got] == ["members only"]
        # Nothing of the room reached the outsider: not the message, not the presence.
        assert await quiet(outsider) == []
        assert [f for f in await quiet(on_a) if f["type"] == "presence"] == []

    async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
        r = await http.post(
            f"/api/rooms/{room}/messages", json={"body": "via REST"}, headers=stranger.headers
        )
        assert r.status_code == 403
        r = await http.post(
            f"/api/rooms/{room}/messages", json={"body": "via REST"}, headers=member.headers
        )
        assert r.status_code == 201
    stored = await pg.fetch(
        "SELECT m.author, m.body FROM messages m JOIN rooms r ON r.id = m.room_id"
        " WHERE r.name = $1 ORDER BY m.seq",
        room,
    )
    assert [tuple(s) for s in stored] == [(member.name, "members only"), (member.name, "via REST")]


async def test_a_send_is_refused_in_the_transaction_that_would_number_it(
    instances: tuple[Instance, Instance], pg: asyncpg.Connection
) -> None:
    """A member joined to a private room stops being one in the database (no event reaches
    the instances): their next send stores nothing, answers `forbidden`, and takes no seq."""
    a, _ = instances
    owner, member = await users(a, 2)
    room = await private_room(pg, owner.name, member.name)
    async with ws_connect(a.url, member.token) as ws:
        await ws.join(room)
        await ws.send(type="send", room=room, body="first", client_id="c1")
        first, _ = await ws.expect("ack")
        await pg.execute(
            "DELETE FROM members WHERE username = $1 AND room_id = (SELECT id FROM rooms"
            " WHERE name = $2)",
            member.name,
            room,
        )
        await ws.send(type="send", room=room, body="second", client_id="c2", ref=7)
        refused, _ = await ws.expect("error")
        assert (refused["code"], refused["ref"], refused["client_id"]) == ("forbidden", 7, "c2")
        # A retry of what was stored before is refused too: the check comes first.
        await ws.send(type="send", room=room, body="first", client_id="c1")
        assert (await ws.expect("error"))[0]["code"] == "forbidden"
    last = await pg.fetchval("SELECT last_seq FROM rooms WHERE name = $1", room)
    assert last == first["seq"]


async def test_a_banned_author_stores_nothing(
    instances: tuple[Instance, Instance], pg: asyncpg.Connection
) -> None:
    a, _ = instances
    (author,) = await users(a, 1)
    room = unique("pub-")
    async with ws_connect(a.url, author.token) as ws:
        await ws.join(room)
        await pg.execute("UPDATE users SET banned_at = now() WHERE username = $1", author.name)
        await ws.send(type="send", room=room, body="spam")
        assert (await ws.expect("error"))[0]["code"] == "forbidden"
    assert await pg.fetchval("SELECT last_seq FROM rooms WHERE name = $1", room) == 0


async def test_joining_or_posting_makes_a_public_member_and_tells_every_tab(
    instances: tuple[Instance, Instance], pg: asyncpg.Connection
) -> None:
    """The user's own stream: a join on A, and a first post over REST on B, each say `rooms`
    `added` to every connection of that user on both instances, whatever they joined; other
    users hear nothing of it."""
    a, b = instances
    alice, bob = await users(a, 2)
    joined_room, posted_room = unique("pub-"), unique("pub-")
    async with (
        ws_connect(a.url, alice.token, stream=True) as tab_a,
        ws_connect(b.url, alice.token, stream=True) as tab_b,
        ws_connect(b.url, bob.token, stream=True) as other,
    ):
        await tab_a.send(type="join", room=joined_room)
        _, before = await tab_a.expect("joined")  # the stream's frame may come first
        got = [f for f in before if f["type"] == "rooms"] or [(await tab_a.expect("rooms"))[0]]
        got.append((await tab_b.expect("rooms"))[0])
        assert got == [{"type": "rooms", "room": joined_room, "event": "added"}] * 2
        async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
            r = await http.post(
                f"/api/rooms/{posted_room}/messages", json={"body": "hi"}, headers=alice.headers
            )
            assert r.status_code == 201
        for tab in (tab_a, tab_b):
            frame, _ = await tab.expect("rooms")
            assert frame == {"type": "rooms", "room": posted_room, "event": "added"}
        # Joining again (a member already) says nothing more.
        await tab_b.join(joined_room)
        assert [f for f in await quiet(tab_a) if f["type"] == "rooms"] == []
        assert await quiet(other) == []
    roles = await pg.fetch(
        "SELECT r.name, m.role FROM members m JOIN rooms r ON r.id = m.room_id"
        " WHERE m.username = $1 ORDER BY r.name",
        alice.name,
    )
    assert {r["name"] for r in roles} == {joined_room, posted_room}


async def test_dm_names_are_reserved(instances: tuple[Instance, Instance]) -> None:
    """A `dm-` name that is not an existing dm of the caller is neither created nor joined."""
    a, _ = instances
    (user,) = await users(a, 1)
    room = unique("dm-")
    async with ws_connect(a.url, user.token) as ws:
        await ws.send(type="join", room=room)
        assert (await ws.recv())["code"] == "forbidden"
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        r = await http.post(f"/api/rooms/{room}/messages", json={"body": "x"}, headers=user.headers)
        assert r.status_code == 403


async def test_a_member_removed_while_their_join_reads_the_head_is_refused(
    instances: tuple[Instance, Instance], pg: asyncpg.Connection, database_url: str
) -> None:
    """A join of a private room checks the membership before presence, and uses that read
    again once the room's head is read unless the head has moved past what it saw
    (service/chat.py). A removal committed between the two (here: while the head's read
    waits for a lock the test holds) is such a move, so the membership is read again and
    the join refused: nothing of the room reaches the removed user."""
    a, _ = instances
    owner, member = await users(a, 2)
    room = await private_room(pg, owner.name, member.name)
    locker = await asyncpg.connect(database_url)
    watch = await asyncpg.connect(database_url)
    try:
        async with (
            ws_connect(a.url, member.token) as ws,
            httpx.AsyncClient(base_url=a.url, timeout=20) as http,
        ):
            async with locker.transaction():
                await locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
                await ws.send(type="join", room=room, ref="j")
                async with asyncio.timeout(10):  # the join's replay waits for the lock
                    while not await watch.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                        " AND query LIKE '%FROM rooms LEFT JOIN LATERAL%'"
                    ):
                        await asyncio.sleep(0.01)
                removed = await http.delete(
                    f"/api/rooms/{room}/members/{member.name}", headers=owner.headers
                )
            answer = await ws.recv()
            after = await quiet(ws)
    finally:
        await locker.close()
        await watch.close()
    assert removed.status_code == 204, removed.text
    assert (answer["type"], answer.get("code"), answer.get("ref")) == ("error", "forbidden", "j")
    assert after == []
