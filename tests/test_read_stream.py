"""The read state on the users' own streams, across two real instances and on both fan-out
backends (PROTOCOL.md, `read` and `notification`): tabs clear together, a mention reaches
every connection of the member whether or not it joined the room, and never a non-member
or the author."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support import Instance, WsClient, quiet, users, ws_connect
from tests.test_privacy import private_room, rest


async def next_of(ws: WsClient, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    frame, _ = await ws.expect(kind, timeout)
    return frame


async def test_two_tabs_on_two_instances_clear_together(
    instances: tuple[Instance, Instance],
) -> None:
    a, b = instances
    owner, reader = await users(a, 2)
    room = await private_room(a, owner, reader)
    for i in range(3):
        r = await rest(a, owner, "POST", f"/api/rooms/{room}/messages", json={"body": f"m{i}"})
        assert r.status_code == 201
    head = r.json()["seq"]
    async with (
        ws_connect(a.url, reader.token, stream=True) as tab_a,
        ws_connect(b.url, reader.token, stream=True) as tab_b,
    ):
        joined, _ = await tab_b.join(room)
        assert joined["last_read_seq"] == 1  # the cursor started at the member event
        # `read` needs membership only: tab A has not joined the room.
        await tab_a.send(type="read", room=room, seq=head - 1, ref="r1")
        ack = await next_of(tab_a, "ack")
        assert ack == {"type": "ack", "ref": "r1", "room": room, "seq": head - 1,
                       "created_at": None, "client_id": None, "duplicate": False}  # fmt: skip
        for tab in (tab_a, tab_b):
            assert await next_of(tab, "read") == {"type": "read", "room": room, "seq": head - 1}
        r = await rest(b, reader, "GET", f"/api/rooms/{room}")
        assert (r.json()["last_read_seq"], r.json()["unread"]) == (head - 1, 1)

        # From REST on the other instance, past the head: capped, and heard by both tabs.
        r = await rest(b, reader, "PUT", f"/api/rooms/{room}/read", json={"seq": head + 50})
        assert r.json() == {"room": room, "last_read_seq": head, "unread": 0, "mentions": 0}
        for tab in (tab_a, tab_b):
            assert await next_of(tab, "read") == {"type": "read", "room": room, "seq": head}

        # Backwards or in place: acked as a duplicate with the cursor in force; nobody hears.
        await tab_b.send(type="read", room=room, seq=1, ref="r2")
        ack = await next_of(tab_b, "ack")
        assert (ack["seq"], ack["duplicate"]) == (head, True)
        for tab in (tab_a, tab_b):
            assert [f for f in await quiet(tab, 0.5) if f["type"] == "read"] == []


async def test_read_refusals_on_the_socket(instances: tuple[Instance, Instance]) -> None:
    a, _ = instances
    owner, stranger = await users(a, 2)
    room = await private_room(a, owner)
    async with ws_connect(a.url, stranger.token) as ws:
        await ws.send(type="read", room=room, seq=1, ref=1)
        refused = await ws.recv()
        assert (refused["type"], refused["code"], refused["ref"]) == ("error", "forbidden", 1)
        for bad in (-1, "1", None, 1.5, True):
            await ws.send(type="read", room=room, seq=bad, ref=2)
            refused = await ws.recv()
            assert (refused["type"], refused["code"]) == ("error", "bad_request"), bad


async def test_mentions_notify_every_connection_of_the_member_and_nobody_else(
    instances: tuple[Instance, Instance],
) -> None:
    a, b = instances
    author, mentioned, stranger = await users(a, 3)
    room = await private_room(a, author, mentioned)
    long_body = f"@{mentioned.name} " + "x" * 300
    async with (
        ws_connect(a.url, author.token, stream=True) as author_ws,
        ws_connect(a.url, mentioned.token, stream=True) as idle_a,  # joined to nothing
        ws_connect(b.url, mentioned.token, stream=True) as idle_b,
        ws_connect(b.url, stranger.token, stream=True) as stranger_ws,
    ):
        await author_ws.join(room)
        # The stranger is named, but is no member: no notification, no mention.
        body = f"hey @{mentioned.name.upper()}, and @{stranger.name}, and @{author.name}"
        await author_ws.send(type="send", room=room, body=body, client_id="c1")
        ack = await next_of(author_ws, "ack")
        for ws in (idle_a, idle_b):
            assert await next_of(ws, "notification") == {
                "type": "notification",
                "room": room,
                "seq": ack["seq"],
                "author": author.name,
                "excerpt": body,
            }
        # Long: the excerpt is the first 140 characters.
        r = await rest(b, author, "POST", f"/api/rooms/{room}/messages", json={"body": long_body})
        assert r.status_code == 201
        for ws in (idle_a, idle_b):
            frame = await next_of(ws, "notification")
            assert (frame["seq"], frame["excerpt"]) == (r.json()["seq"], long_body[:140])
        # An edit that adds a mention counts, but sends no new notification.
        r = await rest(a, author, "POST", f"/api/rooms/{room}/messages", json={"body": "plain"})
        seq = r.json()["seq"]
        r = await rest(
            a, author, "PATCH", f"/api/rooms/{room}/messages/{seq}",
            json={"body": f"plain @{mentioned.name}"},
        )  # fmt: skip
        assert r.status_code == 200
        r = await rest(b, mentioned, "GET", f"/api/rooms/{room}")
        assert (r.json()["unread"], r.json()["mentions"]) == (3, 3)
        for ws in (idle_a, idle_b, stranger_ws, author_ws):
            frames = await quiet(ws, 0.7)
            assert [f for f in frames if f["type"] == "notification"] == []
        assert [f for f in await quiet(stranger_ws, 0.1) if room in str(f)] == []


async def test_every_dm_message_notifies_the_peer(instances: tuple[Instance, Instance]) -> None:
    a, b = instances
    one, other = await users(a, 2)
    r = await rest(a, one, "POST", "/api/dms", json={"username": other.name})
    dm = r.json()["name"]
    async with ws_connect(b.url, other.token, stream=True) as peer_ws:
        r = await rest(a, one, "POST", f"/api/rooms/{dm}/messages", json={"body": "psst"})
        frame = await next_of(peer_ws, "notification")
        assert (frame["room"], frame["seq"], frame["excerpt"]) == (dm, r.json()["seq"], "psst")
    r = await rest(b, other, "GET", f"/api/rooms/{dm}")
    assert (r.json()["unread"], r.json()["mentions"]) == (1, 1)


def activities(frames: list[dict[str, Any]], room: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "activity" and f["room"] == room]


async def test_activity_reaches_unjoined_connections_once_a_second(
    instances: tuple[Instance, Instance],
) -> None:
    """New messages in a room of the user's: `activity` on every connection of theirs,
    joined to the room or not, at most once a second, naming the room's last message; an
    edit is no new message; a non-member and a removed member hear nothing of the room."""
    a, b = instances
    poster, watcher, stranger = await users(a, 3)
    room = await private_room(a, poster, watcher)
    async with (
        ws_connect(b.url, watcher.token, stream=True) as watcher_b,
        ws_connect(a.url, watcher.token, stream=True) as watcher_a,
        ws_connect(b.url, stranger.token, stream=True) as stranger_ws,
    ):
        await asyncio.sleep(0.5)  # the instances read the watcher's rooms
        seqs = []
        for i in range(8):
            r = await rest(a, poster, "POST", f"/api/rooms/{room}/messages", json={"body": f"m{i}"})
            seqs.append(r.json()["seq"])
            await asyncio.sleep(0.1)
        for ws in (watcher_a, watcher_b):
            got = activities(await quiet(ws, 2.5), room)
            # 8 messages over ~0.8 s: one or two frames a second, the last naming the last.
            assert 1 <= len(got) <= 3, got
            last = got[-1]
            assert (last["last_seq"], last["last_message_seq"]) == (seqs[-1], seqs[-1])
            assert set(last) == {"type", "room", "last_seq", "last_message_seq", "last_message_at"}
        # An edit is no new message.
        r = await rest(a, poster, "PATCH", f"/api/rooms/{room}/messages/{seqs[0]}",
                       json={"body": "edited"})  # fmt: skip
        assert r.status_code == 200
        assert activities(await quiet(watcher_b, 1.5), room) == []
        # Removed: nothing more of the room.
        r = await rest(a, poster, "DELETE", f"/api/rooms/{room}/members/{watcher.name}")
        assert r.status_code == 204
        await asyncio.sleep(0.3)
        await rest(a, poster, "POST", f"/api/rooms/{room}/messages", json={"body": "after"})
        for ws in (watcher_a, watcher_b):
            assert activities(await quiet(ws, 1.5), room) == []
        assert [f for f in await quiet(stranger_ws, 0.1) if room in str(f)] == []


async def test_activity_follows_a_room_added_after_connecting(
    instances: tuple[Instance, Instance],
) -> None:
    a, b = instances
    poster, watcher = await users(a, 2)
    async with ws_connect(b.url, watcher.token, stream=True) as ws:
        await asyncio.sleep(0.3)
        room = await private_room(a, poster, watcher)  # a `rooms` frame: watched from then on
        await next_of(ws, "rooms")
        await asyncio.sleep(0.5)
        r = await rest(a, poster, "POST", f"/api/rooms/{room}/messages", json={"body": "hi"})
        frame = await next_of(ws, "activity", timeout=5)
        assert (frame["room"], frame["last_message_seq"]) == (room, r.json()["seq"])
