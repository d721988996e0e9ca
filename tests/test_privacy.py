"""PROTOCOL v2's Privacy guarantee across two real instances, on both fan-out backends: a
third user learns nothing of a private room by any path; a member removed mid-stream gets
nothing after the `member` event (nor the event), on any instance; the users' own streams
follow every membership change."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.support import Instance, User, WsClient, quiet, unique, users, ws_connect


async def rest(
    instance: Instance, user: User, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        return await http.request(method, path, headers=user.headers, **kwargs)


async def private_room(instance: Instance, owner: User, *members: User) -> str:
    room = unique("priv-")
    r = await rest(instance, owner, "POST", "/api/rooms", json={"name": room, "kind": "private"})
    assert r.status_code == 201, r.text
    for member in members:
        r = await rest(instance, owner, "PUT", f"/api/rooms/{room}/members/{member.name}")
        assert r.status_code == 200, r.text
    return room


def room_frames(frames: list[dict[str, Any]], room: str) -> list[dict[str, Any]]:
    """The frames that mention `room` at all."""
    return [f for f in frames if room in str(f)]


async def test_a_third_user_learns_nothing_by_any_path(
    instances: tuple[Instance, Instance],
) -> None:
    a, b = instances
    owner, member, stranger = await users(a, 3)
    async with (
        ws_connect(b.url, stranger.token, stream=True) as watcher_b,
        ws_connect(a.url, stranger.token, stream=True) as watcher_a,
    ):
        room = await private_room(a, owner, member)
        async with ws_connect(a.url, owner.token) as on_a, ws_connect(b.url, member.token) as on_b:
            await on_a.join(room)
            await on_b.join(room)
            await on_b.send(type="typing", room=room)
            await on_b.send(type="send", room=room, body="the secret plan", client_id="s1")
            await on_a.messages_until(room, 2)
            r = await rest(b, owner, "PUT", f"/api/rooms/{room}/members/{member.name}",
                           json={"role": "moderator"})  # fmt: skip
            assert r.status_code == 200

            # Every REST path: refused, or silent about the room.
            for method, path in [
                ("GET", f"/api/rooms/{room}"),
                ("GET", f"/api/rooms/{room}/messages"),
                ("GET", f"/api/rooms/{room}/members"),
                ("GET", f"/api/rooms/{room}/online"),
                ("GET", f"/api/rooms/{room}/events"),
                ("GET", f"/api/rooms/{room}/messages?around=1"),
                ("GET", f"/api/rooms/{room}/messages/1/reactions"),
                ("PUT", f"/api/rooms/{room}/messages/1/reactions/%F0%9F%91%8D"),
                ("PATCH", f"/api/rooms/{room}/messages/1"),
                ("DELETE", f"/api/rooms/{room}/messages/1"),
                ("PUT", f"/api/rooms/{room}/members/me"),
                ("DELETE", f"/api/rooms/{room}/members/{member.name}"),
                ("POST", f"/api/rooms/{room}/messages"),
            ]:
                for instance in (a, b):
                    kwargs = {"json": {"body": "hi"}} if method in ("POST", "PATCH") else {}
                    r = await rest(instance, stranger, method, path, **kwargs)
                    assert r.status_code == 403, (method, path, r.status_code)
                    assert "secret" not in r.text and member.name not in r.text
            for path in ("/api/rooms", "/api/rooms/public", f"/api/rooms/public?q={room[:6]}"):
                r = await rest(b, stranger, "GET", path)
                assert r.status_code == 200 and room not in r.text, path

            # The socket: no join, and nothing heard of the room on either instance.
            await watcher_a.send(type="join", room=room, since=0)
            refused = await watcher_a.recv()
            assert (refused["type"], refused["code"]) == ("error", "forbidden")
            for watcher in (watcher_a, watcher_b):
                assert room_frames(await quiet(watcher, 1.0), room) == []


async def test_a_removed_member_gets_nothing_after_the_event(
    instances: tuple[Instance, Instance],
) -> None:
    """Messages stream into the room from A while the owner removes the member over REST on
    B; the member's two sockets (one per instance) get every message below the event's
    seq, then `left` with reason `removed`, and nothing after; the owner's socket gets the
    whole log, the event in its place. The removed user can neither rejoin nor resume."""
    a, b = instances
    owner, member, sender = await users(a, 3)
    room = await private_room(a, owner, member, sender)
    async with (
        ws_connect(a.url, owner.token) as owner_ws,
        ws_connect(a.url, member.token, stream=True) as member_a,
        ws_connect(b.url, member.token, stream=True) as member_b,
        ws_connect(a.url, sender.token) as sender_ws,
    ):
        for ws in (owner_ws, member_a, member_b, sender_ws):
            await ws.join(room)

        async def stream() -> None:
            for i in range(60):
                await sender_ws.send(type="send", room=room, body=f"m{i}")
                await asyncio.sleep(0.005)

        sending = asyncio.create_task(stream())
        await asyncio.sleep(0.1)
        r = await rest(b, owner, "DELETE", f"/api/rooms/{room}/members/{member.name}")
        assert r.status_code == 204
        await sending

        log: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while len([f for f in log if f["type"] == "message"]) < 60:
                frame = await owner_ws.recv()
                if frame["type"] in ("message", "member"):
                    log.append(frame)
        seqs = [f["seq"] for f in log]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the owner's log has a gap"
        (event,) = [f for f in log if f["type"] == "member"]
        assert (event["user"], event["event"], event["by"]) == (member.name, "removed", owner.name)
        assert 0 < seqs.index(event["seq"]) < len(seqs) - 1, "the removal was not mid-stream"

        for ws in (member_a, member_b):
            everything: list[dict[str, Any]] = []
            async with asyncio.timeout(10):
                while not everything or everything[-1]["type"] != "left":
                    everything.append(await ws.recv())
            frames = [f for f in everything if f["type"] in ("message", "member", "left")]
            assert frames[-1] == {"type": "left", "room": room, "reason": "removed"}
            got = [f["seq"] for f in frames[:-1]]
            assert got == [s for s in seqs if s < event["seq"]]
            after = await quiet(ws, 1.0)
            assert [f for f in after if f["type"] in ("message", "member", "typing")] == []
            # The user's stream says the room is gone from their list.
            removed = {"type": "rooms", "room": room, "event": "removed"}
            assert removed in everything + after
            await ws.send(type="send", room=room, body="still here?")
            assert (await ws.expect("error"))[0]["code"] == "not_joined"
            await ws.send(type="join", room=room, since=event["seq"] - 1)
            assert (await ws.expect("error"))[0]["code"] == "forbidden"
        r = await rest(a, member, "GET", f"/api/rooms/{room}/messages")
        assert r.status_code == 403


async def test_leaving_from_another_tab_ends_the_subscription_everywhere(
    instances: tuple[Instance, Instance],
) -> None:
    """Leaving a private room over REST is a `left` event: the user's sockets joined to it,
    on both instances, get `left` with reason `removed`; the others see the event. Leaving a
    public room writes no event, and the user's stream ends its subscriptions instead."""
    a, b = instances
    owner, member = await users(a, 2)
    room = await private_room(a, owner, member)
    public = unique("pub-")
    async with (
        ws_connect(a.url, owner.token) as owner_ws,
        ws_connect(a.url, member.token) as tab_a,
        ws_connect(b.url, member.token) as tab_b,
    ):
        await owner_ws.join(room)
        await owner_ws.join(public)  # its first member, so its owner: the last owner stays
        for tab in (tab_a, tab_b):
            await tab.join(room)
            await tab.join(public)
        r = await rest(b, member, "DELETE", f"/api/rooms/{room}/members/me")
        assert r.status_code == 204
        event, _ = await owner_ws.expect("member")
        assert (event["user"], event["event"], event["by"]) == (member.name, "left", member.name)
        for tab in (tab_a, tab_b):
            left, _ = await tab.expect("left")
            assert left == {"type": "left", "room": room, "reason": "removed"}
        r = await rest(a, member, "DELETE", f"/api/rooms/{public}/members/me")
        assert r.status_code == 204
        for tab in (tab_a, tab_b):
            left, _ = await tab.expect("left")
            assert left == {"type": "left", "room": public, "reason": "removed"}
            await tab.send(type="send", room=public, body="gone?")
            assert (await tab.expect("error"))[0]["code"] == "not_joined"


async def test_every_membership_change_reaches_the_users_stream(
    instances: tuple[Instance, Instance],
) -> None:
    """`rooms` frames on every connection of the user, on both instances, whatever rooms
    they have joined: added to a private room, role changed, removed; a dm opened by the
    peer; never to anyone else."""
    a, b = instances
    owner, member, peer, bystander = await users(a, 4)

    async def next_rooms(ws: WsClient) -> dict[str, Any]:
        frame, _ = await ws.expect("rooms")
        return frame

    async with (
        ws_connect(a.url, member.token, stream=True) as tab_a,
        ws_connect(b.url, member.token, stream=True) as tab_b,
        ws_connect(b.url, bystander.token, stream=True) as other,
    ):
        room = await private_room(b, owner)
        r = await rest(a, owner, "PUT", f"/api/rooms/{room}/members/{member.name}")
        assert r.status_code == 200
        for tab in (tab_a, tab_b):
            assert await next_rooms(tab) == {"type": "rooms", "room": room, "event": "added"}
        r = await rest(b, owner, "PUT", f"/api/rooms/{room}/members/{member.name}",
                       json={"role": "moderator"})  # fmt: skip
        assert r.status_code == 200
        for tab in (tab_a, tab_b):
            assert await next_rooms(tab) == {"type": "rooms", "room": room, "event": "updated"}
        r = await rest(a, owner, "DELETE", f"/api/rooms/{room}/members/{member.name}")
        assert r.status_code == 204
        for tab in (tab_a, tab_b):
            assert await next_rooms(tab) == {"type": "rooms", "room": room, "event": "removed"}
        r = await rest(a, peer, "POST", "/api/dms", json={"username": member.name})
        assert r.status_code == 201
        dm = r.json()["name"]
        for tab in (tab_a, tab_b):
            assert await next_rooms(tab) == {"type": "rooms", "room": dm, "event": "added"}
        assert [f for f in await quiet(other, 1.0) if f["type"] == "rooms"] == []
