"""The room log's edits, deletes, reactions and replies (PROTOCOL v2) across two real
instances: every rule and error, the frames and acks, the message's current state in
replays, history and /events, erasure (a scan of the tables finds nothing), the REST forms,
and a v1 client that ignores the new frames still seeing every message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx

from tests.support import Instance, User, WsClient, unique, users, ws_connect


async def rest(
    instance: Instance, user: User, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        return await http.request(method, path, headers=user.headers, **kwargs)


# Frames each socket received that no wait has taken yet: an answer may come after the
# frames it caused, and a later wait still finds those.
_BACKLOG: dict[int, list[dict[str, Any]]] = {}


async def first_frame(ws: WsClient, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first frame, received already or next, that `match`es."""
    backlog = _BACKLOG.setdefault(id(ws), [])
    for i, frame in enumerate(backlog):
        if match(frame):
            return backlog.pop(i)
    while True:
        frame = await ws.recv()
        if match(frame):
            return frame
        backlog.append(frame)


async def answer(ws: WsClient, ref: object) -> dict[str, Any]:
    """The ack or error with this ref."""
    return await first_frame(ws, lambda f: f["type"] in ("ack", "error") and f.get("ref") == ref)


async def send(ws: WsClient, room: str, body: str, **extra: Any) -> int:
    ref = unique("s")
    await ws.send(type="send", room=room, body=body, ref=ref, **extra)
    ack = await answer(ws, ref)
    assert ack["type"] == "ack", ack
    seq: int = ack["seq"]
    return seq


async def command(ws: WsClient, **frame: Any) -> dict[str, Any]:
    ref = unique("c")
    await ws.send(ref=ref, **frame)
    return await answer(ws, ref)


async def until_frame(ws: WsClient, kind: str, seq: int) -> dict[str, Any]:
    return await first_frame(ws, lambda f: f["type"] == kind and f.get("seq") == seq)


async def test_edit_delete_react_over_the_socket(pair: tuple[Instance, Instance]) -> None:
    """Each command takes the next seq of the room's log; its frame reaches every joined
    socket on both instances; repeats are duplicates carrying the target's version."""
    a, b = pair
    alice, bob = await users(a, 2)
    room = unique("log-")
    async with ws_connect(a.url, alice.token) as on_a, ws_connect(b.url, bob.token) as on_b:
        await on_a.join(room)
        await on_b.join(room)
        first = await send(on_a, room, "helo")
        reply = await send(on_b, room, "hi alice", reply_to=first)
        assert reply == first + 1
        message = await until_frame(on_a, "message", reply)
        assert message["reply_to"] == first and message["version"] == reply

        edit = await command(on_a, type="edit", room=room, target=first, body="hello")
        assert (edit["type"], edit["seq"], edit["duplicate"]) == ("ack", reply + 1, False)
        assert edit["client_id"] is None and edit["created_at"].endswith("+00:00")
        for ws in (on_a, on_b):
            frame = await until_frame(ws, "edit", edit["seq"])
            assert frame == {
                "type": "edit", "room": room, "seq": edit["seq"], "target": first,
                "author": alice.name, "body": "hello", "edited_at": frame["edited_at"],
            }  # fmt: skip
        again = await command(on_a, type="edit", room=room, target=first, body="hello")
        assert (again["seq"], again["duplicate"]) == (edit["seq"], True)

        react = await command(on_b, type="react", room=room, target=first, emoji="👍", op="add")
        assert react["seq"] == edit["seq"] + 1 and not react["duplicate"]
        frame = await until_frame(on_a, "reaction", react["seq"])
        assert (frame["user"], frame["emoji"], frame["op"], frame["count"]) == (
            bob.name, "👍", "add", 1,
        )  # fmt: skip
        twice = await command(on_b, type="react", room=room, target=first, emoji="👍", op="add")
        assert (twice["seq"], twice["duplicate"]) == (react["seq"], True)
        mine = await command(on_a, type="react", room=room, target=first, emoji="👍", op="add")
        assert (await until_frame(on_b, "reaction", mine["seq"]))["count"] == 2
        gone = await command(on_a, type="react", room=room, target=first, emoji="👀", op="remove")
        assert gone["duplicate"] and gone["seq"] == mine["seq"]

        delete = await command(on_a, type="delete", room=room, target=first)
        assert delete["seq"] == mine["seq"] + 1
        frame = await until_frame(on_b, "delete", delete["seq"])
        assert frame == {"type": "delete", "room": room, "seq": delete["seq"],
                         "target": first, "by": alice.name}  # fmt: skip
        repeat = await command(on_a, type="delete", room=room, target=first)
        assert (repeat["seq"], repeat["duplicate"]) == (delete["seq"], True)

    r = await rest(b, bob, "GET", f"/api/rooms/{room}/messages")
    first_now, reply_now = r.json()["messages"]
    assert first_now == {
        "room": room, "seq": first, "author": alice.name, "body": "", "created_at":
        first_now["created_at"], "client_id": None, "reply_to": None,
        "edited_at": first_now["edited_at"], "deleted": True, "reactions": [],
        "version": delete["seq"],
    }  # fmt: skip
    assert reply_now["reply_to"] == first and reply_now["body"] == "hi alice"


async def test_rules_and_their_errors(
    pair: tuple[Instance, Instance], pg: asyncpg.Connection
) -> None:
    """not_joined before anything; forbidden to edit another's message or to delete it
    without the right; not_found for no such message, a deleted one (edit, react) or a
    reply to nothing; limit_reached at one emoji too many; bad_request for a bad emoji."""
    a, b = pair
    owner, moderator, member, other, stranger = await users(a, 5)
    room = unique("rules-")
    async with (
        ws_connect(a.url, owner.token) as o,
        ws_connect(b.url, moderator.token) as mod,
        ws_connect(a.url, member.token) as mem,
        ws_connect(b.url, other.token) as oth,
    ):
        for ws in (o, mod, mem):
            await ws.join(room)
        assert (await command(oth, type="edit", room=room, target=1, body="x"))["code"] == (
            "not_joined"
        )
        await oth.join(room)
        r = await rest(a, owner, "PUT", f"/api/rooms/{room}/members/{moderator.name}",
                       json={"role": "moderator"})  # fmt: skip
        assert r.status_code == 200, r.text
        by_owner = await send(o, room, "the owner's")
        by_member = await send(mem, room, "a member's")
        by_other = await send(oth, room, "another's")

        refused = await command(mem, type="edit", room=room, target=by_owner, body="mine now")
        assert (refused["type"], refused["code"], refused["target"]) == (
            "error", "forbidden", by_owner,
        )  # fmt: skip
        assert (await command(mem, type="delete", room=room, target=by_other))["code"] == (
            "forbidden"
        )
        # Moderators delete members' messages, never an owner's; owners delete anyone's.
        assert (await command(mod, type="delete", room=room, target=by_owner))["code"] == (
            "forbidden"
        )
        # Nor anyone who is no member of the (public) room, by REST, where no join is needed.
        r = await rest(b, stranger, "DELETE", f"/api/rooms/{room}/messages/{by_member}")
        assert r.status_code == 403, r.text
        assert (await command(mod, type="delete", room=room, target=by_member))["type"] == "ack"
        assert (await command(o, type="delete", room=room, target=by_other))["type"] == "ack"
        for frame in (
            {"type": "edit", "target": by_member, "body": "too late"},
            {"type": "react", "target": by_member, "emoji": "👍", "op": "add"},
            {"type": "edit", "target": 10_000, "body": "nothing there"},
            {"type": "delete", "target": 10_000},
        ):
            got = await command(mem, room=room, **frame)
            assert got["code"] == "not_found", (frame, got)
        ref = unique("r")
        await mem.send(type="send", room=room, body="to nothing", reply_to=10_000, ref=ref,
                       client_id="c-nothing")  # fmt: skip
        got = await answer(mem, ref)
        assert (got["code"], got["client_id"]) == ("not_found", "c-nothing")
        for bad in ("", "a/b", "x" * 33, "a b", "\u200b", 7):
            got = await command(mem, type="react", room=room, target=by_owner, emoji=bad,
                                op="add")  # fmt: skip
            assert got["code"] == "bad_request", (bad, got)
        assert (await command(mem, type="react", room=room, target=by_owner, emoji="👍",
                              op="toggle"))["code"] == "bad_request"  # fmt: skip
        # A zero-width joiner binds an emoji sequence: allowed.
        family = "👨\u200d👩\u200d👧"
        assert (await command(mem, type="react", room=room, target=by_owner, emoji=family,
                              op="add"))["type"] == "ack"  # fmt: skip
        for i in range(19):
            got = await command(o, type="react", room=room, target=by_owner, emoji=f"e{i}",
                                op="add")  # fmt: skip
            assert got["type"] == "ack", got
        full = await command(mod, type="react", room=room, target=by_owner, emoji="🆕", op="add")
        assert full["code"] == "limit_reached"
        # An emoji already there can still be added to by others.
        more = await command(mod, type="react", room=room, target=by_owner, emoji="e3", op="add")
        assert more["type"] == "ack"
    # Nothing refused took a seq: the log is gapless.
    seqs = await pg.fetch(
        "SELECT seq FROM messages WHERE room_id = (SELECT id FROM rooms WHERE name = $1)"
        " UNION ALL SELECT seq FROM events WHERE room_id = (SELECT id FROM rooms WHERE name = $1)"
        " ORDER BY 1",
        room,
    )
    last = await pg.fetchval("SELECT last_seq FROM rooms WHERE name = $1", room)
    assert [r["seq"] for r in seqs] == list(range(1, last + 1))


async def test_delete_erases_every_version(
    pair: tuple[Instance, Instance], pg: asyncpg.Connection
) -> None:
    """After a delete, no table holds the text or any earlier version of it, and no path
    serves it: history, replay, resume, /events, the reactions list."""
    a, b = pair
    alice, bob = await users(a, 2)
    room = unique("erase-")
    secret = unique("launch-code-")
    async with ws_connect(a.url, alice.token) as ws:
        await ws.join(room)
        seq = await send(ws, room, f"{secret} v1", client_id="erase-me")
        for v in (2, 3):
            assert (await command(ws, type="edit", room=room, target=seq,
                                  body=f"{secret} v{v}"))["type"] == "ack"  # fmt: skip
        assert (await command(ws, type="react", room=room, target=seq, emoji="🔥",
                              op="add"))["type"] == "ack"  # fmt: skip
        deleted = await command(ws, type="delete", room=room, target=seq)
        assert deleted["type"] == "ack"
    for table, column in (("messages", "body"), ("events", "body")):
        found = await pg.fetchval(
            f"SELECT count(*) FROM {table} WHERE {column} LIKE '%' || $1 || '%'", secret
        )
        assert found == 0, f"{table}.{column} still holds the text"
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM reactions WHERE room_id = (SELECT id FROM rooms WHERE name = $1)",
            room,
        )
        == 0
    )
    async with ws_connect(b.url, bob.token) as ws:
        _, replay = await ws.join(room)
    r = await rest(b, bob, "GET", f"/api/rooms/{room}/events")
    events = r.json()["events"]
    assert [e["type"] for e in events] == ["message", "edit", "edit", "reaction", "delete"]
    assert all(secret not in str(e) for e in events), events
    assert events[0]["deleted"] and events[0]["body"] == "" and events[0]["client_id"] == "erase-me"
    assert [e["body"] for e in events[1:3]] == ["", ""]
    assert all(secret not in str(m) for m in replay)
    r = await rest(a, alice, "GET", f"/api/rooms/{room}/messages")
    assert secret not in r.text
    # A late retry of the deleted message's send answers duplicate, storing nothing again.
    r = await rest(a, alice, "POST", f"/api/rooms/{room}/messages",
                   json={"body": f"{secret} v1", "client_id": "erase-me"})  # fmt: skip
    assert r.status_code == 200 and r.json()["deleted"] and r.json()["body"] == ""
    assert (
        await pg.fetchval("SELECT count(*) FROM messages WHERE body LIKE '%' || $1 || '%'", secret)
        == 0
    )


async def test_replay_and_resume_carry_the_current_state(pair: tuple[Instance, Instance]) -> None:
    """A join without since replays messages in their current state (me included); with
    since, every event as it happened."""
    a, b = pair
    alice, bob = await users(a, 2)
    room = unique("state-")
    async with ws_connect(a.url, alice.token) as ws:
        _, _ = await ws.join(room)
        one = await send(ws, room, "one")
        two = await send(ws, room, "two")
        await command(ws, type="edit", room=room, target=one, body="one, edited")
        await command(ws, type="react", room=room, target=two, emoji="🎉", op="add")
        await command(ws, type="delete", room=room, target=two)
        await command(ws, type="react", room=room, target=one, emoji="🙂", op="add")
    async with ws_connect(b.url, bob.token) as ws:
        joined, replay = await ws.join(room)
        assert joined["last_seq"] == 6 and joined["last_message_seq"] == 2
        assert [(m["seq"], m["body"], m["deleted"], m["version"]) for m in replay] == [
            (1, "one, edited", False, 6), (2, "", True, 5),
        ]  # fmt: skip
        assert replay[0]["reactions"] == [{"emoji": "🙂", "count": 1, "me": False}]
        await ws.send(type="leave", room=room)
        await ws.expect("left")
        await ws.send(type="join", room=room, since=2)
        joined, events = await ws.expect("joined")
        assert [(e["type"], e["seq"]) for e in events] == [
            ("edit", 3),
            ("reaction", 4),
            ("delete", 5),
            ("reaction", 6),
        ]
    async with ws_connect(a.url, alice.token) as ws:
        _, replay = await ws.join(room)
        assert replay[0]["reactions"] == [{"emoji": "🙂", "count": 1, "me": True}]


async def test_rest_forms(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    alice, bob, carol = await users(a, 3)
    room = unique("restlog-")
    r = await rest(a, alice, "POST", f"/api/rooms/{room}/messages", json={"body": "hello"})
    seq = r.json()["seq"]
    r = await rest(b, bob, "POST", f"/api/rooms/{room}/messages",
                   json={"body": "hey", "reply_to": seq})  # fmt: skip
    assert r.status_code == 201 and r.json()["reply_to"] == seq
    r = await rest(b, bob, "POST", f"/api/rooms/{room}/messages",
                   json={"body": "to nothing", "reply_to": 999})  # fmt: skip
    assert r.status_code == 404

    r = await rest(a, alice, "PATCH", f"/api/rooms/{room}/messages/{seq}", json={"body": "hi!"})
    assert r.status_code == 200 and r.json()["body"] == "hi!" and r.json()["edited_at"]
    assert r.json()["version"] == 3
    r = await rest(b, bob, "PATCH", f"/api/rooms/{room}/messages/{seq}", json={"body": "no"})
    assert r.status_code == 403
    r = await rest(a, alice, "PATCH", f"/api/rooms/{room}/messages/{seq}", json={"body": " "})
    assert r.status_code == 422
    r = await rest(a, alice, "PATCH", f"/api/rooms/{room}/messages/{seq}",
                   json={"body": "x" * 5000})  # fmt: skip
    assert r.status_code == 413

    for user, emoji in ((bob, "👍"), (carol, "👍"), (carol, "🎉")):
        r = await rest(a, user, "PUT", f"/api/rooms/{room}/messages/{seq}/reactions/{emoji}")
        assert r.status_code == 200, r.text
    assert r.json()["reactions"] == [
        {"emoji": "👍", "count": 2, "me": True}, {"emoji": "🎉", "count": 1, "me": True},
    ]  # fmt: skip
    r = await rest(b, bob, "DELETE", f"/api/rooms/{room}/messages/{seq}/reactions/👍")
    assert r.json()["reactions"][0] == {"emoji": "👍", "count": 1, "me": False}
    r = await rest(b, bob, "PUT", f"/api/rooms/{room}/messages/{seq}/reactions/a%2Fb")
    assert r.status_code in (404, 422)
    r = await rest(a, alice, "GET", f"/api/rooms/{room}/messages/{seq}/reactions")
    assert r.json() == {"room": room, "seq": seq, "reactions": [
        {"emoji": "👍", "count": 1, "users": [carol.name]},
        {"emoji": "🎉", "count": 1, "users": [carol.name]},
    ]}  # fmt: skip

    r = await rest(b, bob, "DELETE", f"/api/rooms/{room}/messages/{seq}")
    assert r.status_code == 403
    r = await rest(a, alice, "DELETE", f"/api/rooms/{room}/messages/{seq}")
    assert r.status_code == 200 and r.json()["deleted"] and r.json()["reactions"] == []
    r = await rest(a, alice, "DELETE", f"/api/rooms/{room}/messages/{seq}")
    assert r.status_code == 200  # already deleted: the same tombstone
    r = await rest(a, alice, "PUT", f"/api/rooms/{room}/messages/{seq}/reactions/👍")
    assert r.status_code == 404
    r = await rest(a, alice, "GET", f"/api/rooms/{room}/messages/424242/reactions")
    assert r.status_code == 404

    r = await rest(b, carol, "GET", f"/api/rooms/{room}/events", params={"after": 0, "limit": 3})
    page = r.json()
    assert [e["seq"] for e in page["events"]] == [1, 2, 3] and page["has_more"]
    r = await rest(b, carol, "GET", f"/api/rooms/{room}/events", params={"after": 3})
    assert [e["type"] for e in r.json()["events"]] == [
        "reaction", "reaction", "reaction", "reaction", "delete",
    ] and not r.json()["has_more"]  # fmt: skip


async def test_history_around(pair: tuple[Instance, Instance]) -> None:
    a, _ = pair
    (user,) = await users(a, 1)
    room = unique("around-")
    async with ws_connect(a.url, user.token) as ws:
        await ws.join(room)
        for i in range(30):
            await send(ws, room, f"m{i}")
    r = await rest(
        a, user, "GET", f"/api/rooms/{room}/messages", params={"around": 15, "limit": 10}
    )
    page = r.json()
    assert [m["seq"] for m in page["messages"]] == list(range(10, 20))
    assert page["has_more_before"] and page["has_more_after"] and "has_more" not in page
    r = await rest(a, user, "GET", f"/api/rooms/{room}/messages", params={"around": 2, "limit": 10})
    assert [m["seq"] for m in r.json()["messages"]] == list(range(1, 7))
    assert not r.json()["has_more_before"]
    r = await rest(a, user, "GET", f"/api/rooms/{room}/messages",
                   params={"around": 2, "before": 5})  # fmt: skip
    assert r.status_code == 422


async def test_a_v1_client_that_ignores_new_frames_sees_every_message(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    writer, reader = await users(a, 2)
    room = unique("v1-")
    async with ws_connect(a.url, writer.token) as w, ws_connect(b.url, reader.token) as r:
        await w.join(room)
        await r.join(room)
        seqs = []
        for i in range(10):
            seqs.append(await send(w, room, f"m{i}"))
            await command(w, type="react", room=room, target=seqs[-1], emoji="👍", op="add")
            if i % 3 == 0:
                await command(w, type="edit", room=room, target=seqs[-1], body=f"m{i}!")
        got: list[int] = []
        async with asyncio.timeout(20):
            while len(got) < 10:
                frame = await r.recv()
                if frame["type"] == "message":  # a v1 client knows nothing else
                    got.append(frame["seq"])
        assert got == seqs
