"""The wire codec (service/protocol.py): client commands parsed, server frames and
notifications encoded and decoded; and the contract with the SQL that builds notifications,
checked on what PostgreSQL actually produced."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from service import protocol
from service.protocol import (
    MAX_SEQ,
    NOTIFY_INLINE_MAX_BYTES,
    NOTIFY_PAYLOAD_MAX_BYTES,
    SIGNATURE_BYTES,
    CanaryNote,
    FanoutKey,
    Join,
    Leave,
    MessagesNote,
    NotifiedMessage,
    Ping,
    PresenceNote,
    ProtocolError,
    Send,
    StoredMessage,
    Typing,
    TypingNote,
    decode_note,
    encode_note,
)
from tests.support import unique

KEY = FanoutKey.from_secret("the codec tests' own secret")


def parse(frame: Any) -> protocol.Command:
    return protocol.parse(orjson.dumps(frame).decode(), 100)


def refused(frame: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        protocol.parse(frame if isinstance(frame, str) else orjson.dumps(frame).decode(), 100)
    return caught.value


def test_every_command_parses() -> None:
    assert parse({"type": "join", "room": "a", "since": 3, "ref": 1}) == Join("a", 3, 1)
    assert parse({"type": "join", "room": "a"}) == Join("a", None, None)
    assert parse({"type": "leave", "room": "a", "ref": "x"}) == Leave("a", "x")
    assert parse({"type": "send", "room": "a", "body": "hi", "client_id": "c"}) == Send(
        "a", "hi", "c", None
    )
    assert parse({"type": "typing", "room": "a"}) == Typing("a", None)
    assert parse({"type": "ping", "ref": 9}) == Ping(9)


@pytest.mark.parametrize(
    ("frame", "code", "extra"),
    [
        ("not json", "bad_request", {}),
        ("[1, 2]", "bad_request", {}),
        ({"type": "dance"}, "bad_request", {}),
        ({"room": "a"}, "bad_request", {}),
        ({"type": "join", "room": "Not A Room"}, "bad_request", {}),
        ({"type": "join", "room": "a", "since": -1}, "bad_request", {"room": "a"}),
        ({"type": "join", "room": "a", "since": MAX_SEQ}, "bad_request", {"room": "a"}),
        ({"type": "join", "room": "a", "since": True}, "bad_request", {"room": "a"}),
        ({"type": "send", "room": "a", "body": "   "}, "bad_request", {"room": "a"}),
        (
            {"type": "send", "room": "a", "body": "x" * 101, "client_id": "c"},
            "too_large",
            {"room": "a", "client_id": "c"},
        ),
        ({"type": "send", "room": "a", "body": "hi", "client_id": ""}, "bad_request", {}),
        ({"type": "ping", "ref": True}, "bad_request", {}),
        ({"type": "ping", "ref": "r" * 129}, "bad_request", {}),
    ],
)
def test_refusals_name_their_code_and_context(frame: Any, code: str, extra: dict[str, Any]) -> None:
    error = refused(frame)
    assert error.code == code
    assert error.extra == extra
    sent = orjson.loads(error.frame())
    assert sent["type"] == "error" and sent["code"] == code and sent["detail"]
    assert "ref" not in sent


def test_a_refusal_echoes_a_usable_ref() -> None:
    error = refused({"type": "join", "room": "a", "since": "x", "ref": "r1"})
    assert orjson.loads(error.frame())["ref"] == "r1"


def test_server_frames() -> None:
    at = datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC)
    message = StoredMessage("a", 4, "bob", "hi", None, at)
    assert orjson.loads(message.frame()) == {
        "type": "message",
        "room": "a",
        "seq": 4,
        "author": "bob",
        "body": "hi",
        "created_at": "2026-12-01T09:30:00.123456+00:00",
        "client_id": None,
        "reply_to": None,
        "edited_at": None,
        "deleted": False,
        "reactions": [],
        "version": 4,
    }
    member = protocol.MemberEvent("a", 5, "carol", "removed", "member", "bob", at)
    assert orjson.loads(member.frame()) == {
        "type": "member",
        "room": "a",
        "seq": 5,
        "user": "carol",
        "event": "removed",
        "role": "member",
        "by": "bob",
    }
    assert orjson.loads(protocol.ack(message, True, 5)) == {
        "type": "ack",
        "room": "a",
        "seq": 4,
        "created_at": "2026-12-01T09:30:00.123456+00:00",
        "client_id": None,
        "duplicate": True,
        "ref": 5,
    }
    state = protocol.RoomState("private", "owner", 7, 8)
    assert orjson.loads(protocol.joined("a", 9, False, ["bob"], state, None)) == {
        "type": "joined",
        "room": "a",
        "last_seq": 9,
        "truncated": False,
        "online": ["bob"],
        "kind": "private",
        "role": "owner",
        "last_read_seq": 7,
        "last_message_seq": 8,
        "online_count": 1,
    }
    many = [f"u{i:03}" for i in range(150)]
    crowded = orjson.loads(protocol.joined("a", 9, False, many, state, None))
    assert crowded["online"] == many[:100]
    assert crowded["online_count"] == 150
    assert orjson.loads(protocol.left("a", None, removed=True)) == {
        "type": "left",
        "room": "a",
        "reason": "removed",
    }
    assert orjson.loads(protocol.left("a", "r")) == {"type": "left", "room": "a", "ref": "r"}
    assert orjson.loads(protocol.pong(None)) == {"type": "pong"}


def test_notifications_round_trip() -> None:
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    notes: list[protocol.Note] = [
        MessagesNote((NotifiedMessage(1, 2, "bob", 'é " \\ 🙂', "c", at),), ((1, 3), (2, 9))),
        PresenceNote(1, "a", "bob", "join"),
        TypingNote(1, "a", "bob"),
        CanaryNote("abc", 7),
    ]
    for note in notes:
        assert decode_note(encode_note(note)) == note


def test_a_signature_opens_only_with_its_key_and_payload() -> None:
    payload = encode_note(TypingNote(1, "a", "bob"))
    signed = KEY.sign(payload)
    assert KEY.open(signed) == payload
    assert FanoutKey.from_secret("another deployment").open(signed) is None
    assert KEY.open(signed.replace('"bob"', '"eve"')) is None
    assert KEY.open(payload) is None
    assert KEY.open("." + payload) is None
    assert len(signed) - len(payload) == SIGNATURE_BYTES


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[]",
        '{"kind": "unknown"}',
        '{"k": "m", "m": [[1, 2, "a", "b", null, "2026-12-01T00:00:00+00:00"]], "r": []}',
        '{"kind": "messages", "messages": [{"room_id": 1}], "refs": []}',
        '{"kind": "messages", "messages": [], "refs": [{"room_id": "1", "seq": 2}]}',
        '{"kind": "messages", "messages": []}',
        '{"kind": "presence", "room_id": 1, "room": "a", "user": "b", "event": "dance"}',
        '{"kind": "typing", "room_id": true, "room": "a", "user": "b"}',
        '{"kind": "canary", "instance": "x"}',
    ],
)
def test_malformed_notifications_are_dropped_whole(payload: str) -> None:
    assert decode_note(payload) is None


async def test_what_postgresql_builds_decodes_to_the_stored_messages(
    pg: asyncpg.Connection,
) -> None:
    """The contract between sql/post_messages.sql and protocol.py: every payload the
    function returns decodes, and carries exactly the stored messages (inline ones field for
    field, large ones as refs), each payload within the limit the writer passed."""
    author = unique("codec_")
    await pg.execute("INSERT INTO users (username, password_hash) VALUES ($1, 'x')", author)
    room_id = await pg.fetchval("INSERT INTO rooms (name) VALUES ($1) RETURNING id", unique("c-"))
    bodies = ["plain", 'quote " backslash \\ tab \t', "é🙂" * 1600, "x" * 120, "🙂" * 4000]
    bodies += [f"filler {i}" for i in range(150)]
    client_ids = ["c1", None, "c3", None, None] + [None] * 150
    row = await pg.fetchrow(
        "SELECT seqs, payloads FROM chat_post_messages($1, $2, $3, $4, $5, '{}', '{}', '{}', '{}',"
        " '{}', '{}', '{}', '{}', 20, '{}', NULL, $6, $7, $8, $9, $10)",
        [room_id] * len(bodies),
        [author] * len(bodies),
        bodies,
        client_ids,
        [None] * len(bodies),
        NOTIFY_PAYLOAD_MAX_BYTES - SIGNATURE_BYTES,
        NOTIFY_INLINE_MAX_BYTES,
        uuid.uuid4(),
        KEY.inner,
        KEY.outer,
    )
    stored = {
        r["seq"]: r
        for r in await pg.fetch(
            "SELECT seq, author, body, client_id, created_at FROM messages WHERE room_id = $1",
            room_id,
        )
    }
    assert len(row["payloads"]) > 1
    inline: list[NotifiedMessage] = []
    refs: list[tuple[int, int]] = []
    for signed in row["payloads"]:
        assert len(signed.encode()) <= NOTIFY_PAYLOAD_MAX_BYTES
        # PostgreSQL's HMAC is Python's: the signature checks with the key.
        payload = KEY.open(signed)
        assert payload is not None, signed[:100]
        note = decode_note(payload)
        assert isinstance(note, MessagesNote), payload
        inline += [m for m in note.messages if isinstance(m, NotifiedMessage)]
        refs += note.refs
    assert [m.seq for m in inline] + [s for _, s in refs] != []
    assert sorted([m.seq for m in inline] + [s for _, s in refs]) == row["seqs"]
    for m in inline:
        r = stored[m.seq]
        assert (m.room_id, m.author, m.body, m.client_id, m.created_at) == (
            room_id,
            r["author"],
            r["body"],
            r["client_id"],
            r["created_at"],
        )
    # Large bodies travel as refs, small ones inline.
    by_body = {r["body"]: seq for seq, r in stored.items()}
    assert {s for _, s in refs} == {by_body["é🙂" * 1600], by_body["🙂" * 4000]}
    assert all(r == room_id for r, _ in refs)
    # The keys are the ones protocol.py writes: no key added, renamed or missing at either end.
    for signed in row["payloads"]:
        raw = orjson.loads(signed.partition(".")[2])
        assert set(raw) == set(orjson.loads(encode_note(MessagesNote((), ()))))
        python_keys = set(protocol.message_entry(inline[0]))
        assert all(set(entry) == python_keys for entry in raw["messages"])
        assert all(set(ref) == {"room_id", "seq"} for ref in raw["refs"])


def test_a_notified_created_at_comes_out_in_utc() -> None:
    """A notification written by a session in another TimeZone (an instance of an older
    release, mid-upgrade) still gives `+00:00` on the wire; one without an offset is not ours."""
    entry = {"room_id": 1, "seq": 2, "author": "bob", "body": "hi", "client_id": None}
    payload = {"kind": "messages", "refs": []}
    at = "2026-12-01T04:30:00.123456-05:00"
    note = decode_note(
        orjson.dumps({**payload, "messages": [{**entry, "created_at": at}]}).decode()
    )
    assert isinstance(note, MessagesNote)
    wire = note.messages[0].stored("r").to_wire()
    assert wire["created_at"] == "2026-12-01T09:30:00.123456+00:00"
    naive = {**entry, "created_at": "2026-12-01T04:30:00.123456"}
    assert decode_note(orjson.dumps({**payload, "messages": [naive]}).decode()) is None
