"""Every error code and close code of the socket protocol; the connection survives errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from service.protocol import _instant, _timestamp
from tests.support import Instance, User, WsClient, new_user, unique, ws_connect

LIMITS = {
    "CHAT_MAX_ROOMS_PER_CONNECTION": 3,
    "CHAT_RATE_LIMIT_PER_SECOND": 1,
    "CHAT_RATE_LIMIT_BURST": 3,
    "CHAT_MAX_FRAME_BYTES": 4096,
    "CHAT_MAX_MESSAGE_CHARS": 100,
}


@pytest.fixture(scope="module")
async def limited(spawn: Callable[..., Instance]) -> Instance:
    """An instance with small limits, so each one can be reached."""
    instance = spawn(**LIMITS)
    await instance.wait_ready()
    return instance


async def _user(instance: Instance) -> User:
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        return await new_user(http)


async def _still_serves(ws: WsClient) -> None:
    await ws.send(type="ping", ref="alive")
    assert await ws.recv() == {"type": "pong", "ref": "alive"}


async def _error(ws: WsClient, raw: str | bytes) -> dict[str, Any]:
    await ws.ws.send(raw)
    frame = await ws.recv()
    assert frame["type"] == "error", frame
    return frame


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('"a string"', "bad_request"),
        ("{}", "bad_request"),
        ('{"type": "shout", "ref": 1}', "bad_request"),
        ('{"type": "join"}', "bad_request"),
        ('{"type": "join", "room": "../etc"}', "bad_request"),
        ('{"type": "join", "room": "Upper"}', "bad_request"),
        ('{"type": "join", "room": "' + "a" * 65 + '"}', "bad_request"),
        ('{"type": "join", "room": "x\'; DROP TABLE messages; --"}', "bad_request"),
        ('{"type": "join", "room": "ok", "since": -1}', "bad_request"),
        ('{"type": "join", "room": "ok", "since": "5"}', "bad_request"),
        ('{"type": "join", "room": "ok", "since": true}', "bad_request"),
        ('{"type": "join", "room": "ok", "since": 1e400}', "bad_request"),
        ('{"type": "join", "room": "ok", "since": 99999999999999999999999999}', "bad_request"),
        ('{"type": "join", "room": NaN}', "bad_request"),
        ('{"type": "ping", "ref": {"nested": 1}}', "bad_request"),
        ("[" * 5000 + "]" * 5000, "bad_request"),
        (b"\x00\x01binary", "bad_request"),
    ],
)
async def test_malformed_frames_get_bad_request(
    pair: tuple[Instance, Instance], raw: str | bytes, code: str
) -> None:
    """Malformed frames get an error frame with the documented code; the socket keeps serving."""
    a, _ = pair
    user = await _user(a)
    async with ws_connect(a.url, user.token) as ws:
        frame = await _error(ws, raw)
        assert frame["code"] == code
        assert frame["detail"]
        await _still_serves(ws)


async def test_room_state_errors(pair: tuple[Instance, Instance]) -> None:
    """not_joined, conflict and left, each echoing ref and naming the room."""
    a, _ = pair
    user = await _user(a)
    room = unique("r-")
    async with ws_connect(a.url, user.token) as ws:
        for kind in ("send", "typing", "leave"):
            await ws.send(type=kind, room=room, body="x", ref=kind)
            frame = await ws.recv()
            assert frame == {
                "type": "error",
                "code": "not_joined",
                "detail": frame["detail"],
                "room": room,
                "ref": kind,
            }
        await ws.send(type="join", room=room, ref="j1")
        joined, _ = await ws.expect("joined")
        assert joined["ref"] == "j1"
        await ws.send(type="join", room=room, ref="j2")
        frame = await ws.recv()
        assert (frame["code"], frame["ref"], frame["room"]) == ("conflict", "j2", room)
        await ws.send(type="leave", room=room, ref=3)
        assert await ws.recv() == {"type": "left", "room": room, "ref": 3}
        await ws.send(type="send", room=room, body="after leaving")
        assert (await ws.recv())["code"] == "not_joined"


async def test_invalid_bodies_are_refused_and_not_stored(limited: Instance) -> None:
    """too_large and bad_request bodies carry room and client_id, and store nothing."""
    user = await _user(limited)
    room = unique("r-")
    async with ws_connect(limited.url, user.token) as ws:
        joined, _ = await ws.join(room)
        cases = [
            ("x" * 101, "too_large"),
            ("", "bad_request"),
            (" \n\t ", "bad_request"),
            ("nul\u0000", "bad_request"),
            (5, "bad_request"),
            (None, "bad_request"),
        ]
        for body, code in cases:
            await ws.send(type="send", room=room, body=body, client_id="c")
            frame = await ws.recv()
            assert (frame["type"], frame["code"], frame["room"], frame["client_id"]) == (
                "error",
                code,
                room,
                "c",
            )
        await ws.ws.send('{"type": "send", "room": "' + room + '", "body": "\\ud800"}')
        assert (await ws.recv())["code"] == "bad_request"
        await ws.send(type="send", room=room, body="ok", client_id="x" * 65)
        assert (await ws.recv())["code"] == "bad_request"
    async with httpx.AsyncClient(base_url=limited.url, timeout=10) as http:
        r = await http.get(f"/api/rooms/{room}/messages", headers=user.headers)
        assert r.json()["messages"] == []
    assert joined["last_seq"] == 0


async def test_rate_limit_refuses_and_stores_nothing(limited: Instance) -> None:
    """Past the burst, sends get rate_limited with retry_after_ms, and nothing is stored."""
    user = await _user(limited)
    room = unique("r-")
    async with ws_connect(limited.url, user.token) as ws:
        await ws.join(room)
        for i in range(6):
            await ws.send(type="send", room=room, body=f"m{i}", client_id=f"c{i}")
        frames = [await ws.recv() for _ in range(6 + 3)]  # 3 acks + 3 messages + 3 errors
    acks = [f for f in frames if f["type"] == "ack"]
    errors = [f for f in frames if f["type"] == "error"]
    assert [a["client_id"] for a in acks] == ["c0", "c1", "c2"]
    assert [e["client_id"] for e in errors] == ["c3", "c4", "c5"]
    assert all(e["code"] == "rate_limited" and 0 < e["retry_after_ms"] <= 1000 for e in errors)
    async with httpx.AsyncClient(base_url=limited.url, timeout=10) as http:
        r = await http.get(f"/api/rooms/{room}/messages", headers=user.headers)
        assert [m["body"] for m in r.json()["messages"]] == ["m0", "m1", "m2"]


async def test_join_and_leave_have_a_bucket_of_their_own(limited: Instance) -> None:
    """join and leave share a bucket (burst: at least CHAT_MAX_ROOMS_PER_CONNECTION) apart
    from sends: past it they get rate_limited with retry_after_ms and change nothing; sends
    still go through, and after the wait a leave succeeds."""
    user = await _user(limited)
    room = unique("r-")
    burst, rate = LIMITS["CHAT_MAX_ROOMS_PER_CONNECTION"], LIMITS["CHAT_RATE_LIMIT_PER_SECOND"]
    async with ws_connect(limited.url, user.token) as ws:
        started = asyncio.get_running_loop().time()
        done, joined, refused = 0, False, None
        while refused is None and done < 20:
            kind = "leave" if joined else "join"
            await ws.send(type=kind, room=room, ref=done)
            while True:
                frame = await ws.recv()
                if frame["type"] in ("joined", "left", "error"):
                    break
            if frame["type"] == "error":
                refused = frame
            else:
                done, joined = done + 1, not joined
        elapsed = asyncio.get_running_loop().time() - started
        assert refused is not None, "never rate limited"
        assert refused["code"] == "rate_limited" and refused["ref"] == done
        assert refused["room"] == room and 0 < refused["retry_after_ms"] <= 1000 / rate
        assert burst <= done <= burst + elapsed * rate + 1
        # The refused command changed nothing, and sends have their own bucket.
        if joined:
            await ws.send(type="send", room=room, body="still sends", client_id="s1")
            ack, _ = await ws.expect("ack")
            assert ack["client_id"] == "s1"
        else:
            await ws.send(type="send", room=room, body="x")
            assert (await ws.recv())["code"] == "not_joined"
        await asyncio.sleep(refused["retry_after_ms"] / 1000 + 0.05)
        await ws.send(type="leave" if joined else "join", room=room)
        frame, _ = await ws.expect("left" if joined else "joined")
        assert frame["room"] == room


async def test_too_many_rooms(limited: Instance) -> None:
    """Joining more rooms than CHAT_MAX_ROOMS_PER_CONNECTION is refused."""
    user = await _user(limited)
    async with ws_connect(limited.url, user.token) as ws:
        for _ in range(3):
            await ws.join(unique("r-"))
        await ws.send(type="join", room=unique("r-"))
        frame = await ws.recv()
        assert frame["code"] == "too_many_rooms"
        await _still_serves(ws)


async def test_oversized_frame_closes_with_1009(limited: Instance) -> None:
    """A frame over CHAT_MAX_FRAME_BYTES closes the socket with 1009."""
    user = await _user(limited)
    async with ws_connect(limited.url, user.token) as ws:
        await ws.ws.send(orjson.dumps({"type": "ping", "pad": "x" * 5000}).decode())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_since_beyond_the_end_is_a_plain_join(pair: tuple[Instance, Instance]) -> None:
    """A since past the room's last seq replays the latest messages, as a join without since."""
    a, _ = pair
    user = await _user(a)
    room = unique("r-")
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        for i in range(3):
            r = await http.post(
                f"/api/rooms/{room}/messages", json={"body": f"m{i}"}, headers=user.headers
            )
            assert r.status_code == 201
    async with ws_connect(a.url, user.token) as ws:
        joined, replay = await ws.join(room, since=1000)
        assert [m["seq"] for m in replay] == [1, 2, 3]
        assert (joined["last_seq"], joined["truncated"]) == (3, False)


def test_a_timestamp_is_written_as_isoformat_writes_it() -> None:
    """_timestamp's fast path (orjson) writes what isoformat(timespec="microseconds") does:
    in every zone, before 1970 and after 2038, and with a fraction of zero (which orjson
    would leave out)."""
    zones = [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]
    seen = 0
    for zone in zones:
        for year in (1969, 2026, 2039):
            for micro in (0, 1, 6000, 999999):
                at = datetime(year, 2, 3, 4, 5, 6, micro, tzinfo=zone)
                assert _timestamp(at) == at.isoformat(timespec="microseconds"), at
                seen += 1
    assert seen == 36
    assert _timestamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)).endswith(":05.000000+00:00")


def test_the_remembered_instant_is_only_reused_for_the_same_one() -> None:
    """_timestamp and _instant remember their last answer (a batch shares one created_at):
    an equal instant in another zone, or a different one, is written afresh."""
    at = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    assert _timestamp(at) == "2026-01-02T03:04:05.006000+00:00"
    assert _timestamp(at) == "2026-01-02T03:04:05.006000+00:00"
    plus_two = at.astimezone(timezone(timedelta(hours=2)))
    assert plus_two == at
    assert _timestamp(plus_two) == "2026-01-02T05:04:05.006000+02:00"
    assert _timestamp(at + timedelta(microseconds=1)) == "2026-01-02T03:04:05.006001+00:00"
    text = "2026-01-02T05:04:05.006000+02:00"
    assert _instant({"t": text}, "t") == at and _instant({"t": text}, "t").tzinfo is UTC
    later = _instant({"t": "2026-01-02T03:04:06+00:00"}, "t")
    assert later == at.replace(second=6, microsecond=0)
