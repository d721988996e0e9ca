"""The wire, defined once: every frame the server sends or parses (PROTOCOL.md, WebSocket),
and every notification instances send each other over the fan-out channel.

Frames are JSON objects with a `type`. Notifications are JSON objects with a `kind`:

- `messages`: committed messages, `{"kind": "messages", "messages": [entry], "refs": [ref]}`;
  an entry is `{"room_id", "seq", "author", "body", "client_id", "created_at"}`, a ref
  `{"room_id", "seq"}` names a message too large to travel inline, which receivers read back
  from the database. These are built by PostgreSQL itself, inside the writer's transaction
  (service/sql/post_messages.sql, with the same keys and the limits below, which the writer
  passes in); tests/test_protocol_codec.py decodes what PostgreSQL actually produced.
- `presence`: `{"kind": "presence", "room_id", "room", "user", "event": "join" | "leave"}`.
- `typing`: `{"kind": "typing", "room_id", "room", "user"}`.
- `canary`: `{"kind": "canary", "instance", "n"}`, the listener's proof that it still hears.
- `user`: `{"kind": "user", "users": [username], "frame": {...}}`, a frame for those users'
  own streams (PROTOCOL.md, the user's own stream), on every instance.

A notification is a wake-up: the database stays the truth, and a receiver that sees a gap
reads it back. So a notification that does not decode is dropped, never trusted in part.

Every notification travels signed, as `<hex HMAC-SHA256>.<json>`, with a key derived from
CHAT_SECRET_KEY (`FanoutKey`): anyone else who can NOTIFY on the same database, or publish
on the same Redis, cannot make an instance deliver a message that was never stored. The SQL
signs what it builds with the two padded keys of HMAC (RFC 2104) that the writer passes, so
it needs nothing beyond PostgreSQL's built-in sha256().
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from .validation import InvalidInput, check_body, check_client_id, check_emoji, check_room

# The version of PROTOCOL.md this service implements in full.
PROTOCOL_VERSION = 2
# Beyond any seq a room can reach: the bound of `since`, `before` and `after`.
MAX_SEQ = 2**62
# A `ref` is echoed in the direct reply; longer ones are refused.
MAX_REF_CHARS = 128

CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013

# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; payloads stay under the first
# figure, signature included, and a message whose entry is larger than the second travels as
# a ref.
NOTIFY_PAYLOAD_MAX_BYTES = 7900
NOTIFY_INLINE_MAX_BYTES = 6000
# What the signature adds to a payload: 64 hex digits and a dot.
SIGNATURE_BYTES = 65


# -- messages ------------------------------------------------------------------------------


# The last instant written, and (_utc) the last read. The messages of a batch share one
# created_at (the writer's clock_timestamp() for the batch: sql/post_messages.sql), so the
# acks and frames of a batch write the same text hundreds of times, and a notification
# carries it as many times: each is made once. Not functools' cache for the writing: equal
# instants in other time zones are equal keys there, and write other text.
_written: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")


def _timestamp(at: datetime) -> str:
    global _written
    last, text = _written
    if at == last and at.tzinfo is last.tzinfo:
        return text
    # orjson writes the same text as isoformat(timespec="microseconds") in a third of the
    # time (0.33 against 1.1 us; a resume writes one per frame), except that it leaves the
    # fraction out when it is zero.
    if at.microsecond:
        text = orjson.dumps(at)[1:-1].decode()
    else:
        text = at.isoformat(timespec="microseconds")
    _written = (at, text)
    return text


# A message's reactions: (emoji, count) in order of first use, counts above 0.
Reactions = tuple[tuple[str, int], ...]


def message_wire(
    room: str,
    seq: int,
    author: str,
    body: str,
    client_id: str | None,
    created_at: datetime,
    reply_to: int | None,
    edited_at: datetime | None,
    deleted: bool,
    version: int,
    reactions: Reactions,
    mine: frozenset[str] | None,
) -> dict[str, Any]:
    """A message as REST answers and `message` frames carry it (StoredMessage.to_wire), from
    its fields: a history page makes its messages' from the rows without the objects."""
    return {
        "room": room,
        "seq": seq,
        "author": author,
        "body": body,
        "created_at": _timestamp(created_at),
        "client_id": client_id,
        "reply_to": reply_to,
        "edited_at": _timestamp(edited_at) if edited_at is not None else None,
        "deleted": deleted,
        "reactions": [
            {"emoji": e, "count": c} if mine is None else {"emoji": e, "count": c, "me": e in mine}
            for e, c in reactions
        ],
        "version": version or seq,
    }


def message_frame(wire: dict[str, Any]) -> str:
    """The `message` frame of a message as message_wire writes it."""
    return orjson.dumps({"type": "message", **wire}).decode()


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A committed message in its current state: `(room, seq)` is its identity, `version`
    the seq of the latest event that changed it (0 stands for its own seq). `mine`: the
    emoji the receiving user reacted with, in what is addressed to one user (REST, a join's
    replay, /events: the `me` of each reaction); None in what every receiver shares."""

    room: str
    seq: int
    author: str
    body: str
    client_id: str | None
    created_at: datetime
    reply_to: int | None = None
    edited_at: datetime | None = None
    deleted: bool = False
    version: int = 0
    reactions: Reactions = ()
    mine: frozenset[str] | None = None

    def to_wire(self) -> dict[str, Any]:
        """The message as REST answers and `message` frames carry it."""
        return message_wire(
            self.room, self.seq, self.author, self.body, self.client_id, self.created_at,
            self.reply_to, self.edited_at, self.deleted, self.version, self.reactions, self.mine,
        )  # fmt: skip

    def frame(self) -> str:
        """The `message` frame, encoded once and shared by every receiving socket."""
        return message_frame(self.to_wire())


@dataclass(frozen=True, slots=True)
class EditEvent:
    """An `edit` event: `author` changed message `target`'s body (erased to "" once the
    target is deleted)."""

    room: str
    seq: int
    target: int
    author: str
    body: str
    created_at: datetime  # the edit's time: the message's edited_at

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "edit",
            "room": self.room,
            "seq": self.seq,
            "target": self.target,
            "author": self.author,
            "body": self.body,
            "edited_at": _timestamp(self.created_at),
        }

    def frame(self) -> str:
        return orjson.dumps(self.to_wire()).decode()


@dataclass(frozen=True, slots=True)
class DeleteEvent:
    """A `delete` event: `by` deleted message `target`."""

    room: str
    seq: int
    target: int
    by: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "delete",
            "room": self.room,
            "seq": self.seq,
            "target": self.target,
            "by": self.by,
        }

    def frame(self) -> str:
        return orjson.dumps(self.to_wire()).decode()


ReactionOp = Literal["add", "remove"]


@dataclass(frozen=True, slots=True)
class ReactionEvent:
    """A `reaction` event: `user` added or removed `emoji` on message `target`, whose count
    of that emoji is `count` after it."""

    room: str
    seq: int
    target: int
    user: str
    emoji: str
    op: ReactionOp
    count: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "reaction",
            "room": self.room,
            "seq": self.seq,
            "target": self.target,
            "user": self.user,
            "emoji": self.emoji,
            "op": self.op,
            "count": self.count,
        }

    def frame(self) -> str:
        return orjson.dumps(self.to_wire()).decode()


MemberChange = Literal["added", "left", "removed", "role"]


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A `member` event of a private room's log: `user` was added, left, was removed, or
    given `role` (for left and removed, the role they had), by `by`."""

    room: str
    seq: int
    user: str
    event: MemberChange
    role: str
    by: str
    created_at: datetime

    @property
    def ends_membership(self) -> bool:
        return self.event in ("left", "removed")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "member",
            "room": self.room,
            "seq": self.seq,
            "user": self.user,
            "event": self.event,
            "role": self.role,
            "by": self.by,
        }

    def frame(self) -> str:
        return orjson.dumps(self.to_wire()).decode()


# An entry of a room's log as hubs deliver it: a message, or another event.
LogEntry = StoredMessage | EditEvent | DeleteEvent | ReactionEvent | MemberEvent


# -- server to client ----------------------------------------------------------------------

Ref = str | int | None


def _encode(frame_type: str, ref: Ref = None, /, **fields: Any) -> str:
    if ref is not None:
        fields["ref"] = ref
    return orjson.dumps({"type": frame_type, **fields}).decode()


# `online` in `joined` names at most this many users; `online_count` counts them all.
JOINED_ONLINE_MAX = 100


@dataclass(frozen=True, slots=True)
class RoomState:
    """What `joined` says of the room beyond its log: the caller's place in it."""

    kind: str
    role: str | None
    last_read_seq: int
    last_message_seq: int


def joined(
    room: str, last_seq: int, truncated: bool, online: list[str], state: RoomState, ref: Ref
) -> str:
    return _encode(
        "joined",
        ref,
        room=room,
        last_seq=last_seq,
        truncated=truncated,
        online=online[:JOINED_ONLINE_MAX],
        kind=state.kind,
        role=state.role,
        last_read_seq=state.last_read_seq,
        last_message_seq=state.last_message_seq,
        online_count=len(online),
    )


def left(room: str, ref: Ref, *, removed: bool = False) -> str:
    if removed:
        return _encode("left", ref, room=room, reason="removed")
    return _encode("left", ref, room=room)


def rooms_changed(room: str, event: str) -> str:
    """The user's own stream: their set of rooms, or their role in `room`, changed."""
    return _encode("rooms", room=room, event=event)


def ack(message: StoredMessage, duplicate: bool, ref: Ref) -> str:
    return _encode(
        "ack",
        ref,
        room=message.room,
        seq=message.seq,
        created_at=_timestamp(message.created_at),
        client_id=message.client_id,
        duplicate=duplicate,
    )


def change_ack(room: str, seq: int, created_at: datetime | None, duplicate: bool, ref: Ref) -> str:
    """The `ack` of an edit, delete or reaction: the new event's seq, or (duplicate) the
    target's current version."""
    return _encode(
        "ack",
        ref,
        room=room,
        seq=seq,
        created_at=_timestamp(created_at) if created_at is not None else None,
        client_id=None,
        duplicate=duplicate,
    )


def activity(room: str, last_seq: int, last_message_seq: int, last_message_at: datetime) -> str:
    """A room of the user's has new messages (their own stream)."""
    return _encode(
        "activity",
        room=room,
        last_seq=last_seq,
        last_message_seq=last_message_seq,
        last_message_at=_timestamp(last_message_at),
    )


def read_moved(room: str, seq: int) -> str:
    """The user's read cursor in `room` moved to `seq` (their own stream)."""
    return _encode("read", room=room, seq=seq)


def presence(room: str, user: str, event: str) -> str:
    return _encode("presence", room=room, user=user, event=event)


def typing(room: str, user: str) -> str:
    return _encode("typing", room=room, user=user)


def pong(ref: Ref) -> str:
    return _encode("pong", ref)


def error(code: str, detail: str, ref: Ref = None, **extra: Any) -> str:
    return _encode("error", ref, code=code, detail=detail, **extra)


# -- client to server ----------------------------------------------------------------------


class ProtocolError(Exception):
    """A frame refused with an `error` frame; the connection stays open."""

    def __init__(self, code: str, detail: str, ref: Ref = None, **extra: Any) -> None:
        super().__init__(detail)
        self.code, self.detail, self.ref, self.extra = code, detail, ref, extra

    def frame(self) -> str:
        return error(self.code, self.detail, self.ref, **self.extra)


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    since: int | None
    ref: Ref


@dataclass(frozen=True, slots=True)
class Leave:
    room: str
    ref: Ref


@dataclass(frozen=True, slots=True)
class Send:
    room: str
    body: str
    client_id: str | None
    ref: Ref
    reply_to: int | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    room: str
    target: int
    body: str
    ref: Ref


@dataclass(frozen=True, slots=True)
class Delete:
    room: str
    target: int
    ref: Ref


@dataclass(frozen=True, slots=True)
class React:
    room: str
    target: int
    emoji: str
    op: ReactionOp
    ref: Ref


@dataclass(frozen=True, slots=True)
class Read:
    room: str
    seq: int
    ref: Ref


@dataclass(frozen=True, slots=True)
class Typing:
    room: str
    ref: Ref


@dataclass(frozen=True, slots=True)
class Ping:
    ref: Ref


Command = Join | Leave | Send | Edit | Delete | React | Read | Typing | Ping


def _seq(data: dict[str, Any], key: str, ref: Ref, room: str) -> int:
    """A message seq given by the client (`target`, `reply_to`)."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < MAX_SEQ:
        raise ProtocolError("bad_request", f"{key} must be a message seq (an integer > 0)",
                            ref, room=room)  # fmt: skip
    return value


def parse(text: str, max_body_chars: int) -> Command:
    """The command a text frame carries, fully validated; raises ProtocolError (carrying
    the frame's `ref` when it had a usable one)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("bad_request", "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_request", "frame must be a JSON object")
    ref = data.get("ref")
    if ref is not None and (
        isinstance(ref, bool) or not isinstance(ref, (str, int)) or len(str(ref)) > MAX_REF_CHARS
    ):
        raise ProtocolError("bad_request", "ref must be a string or an integer")
    kind = data.get("type")
    try:
        if kind == "send":
            client_id = check_client_id(data.get("client_id"))
            room = check_room(data.get("room"))
            extra = {"client_id": client_id} if client_id is not None else {}
            try:
                body = check_body(data.get("body"), max_body_chars)
            except InvalidInput as refused:
                raise ProtocolError(refused.code, refused.detail, ref, room=room, **extra) from None
            reply_to = None
            if data.get("reply_to") is not None:
                try:
                    reply_to = _seq(data, "reply_to", ref, room)
                except ProtocolError as refused:
                    refused.extra.update(extra)
                    raise
            return Send(room, body, client_id, ref, reply_to)
        if kind in ("edit", "delete", "react"):
            room = check_room(data.get("room"))
            target = _seq(data, "target", ref, room)
            try:
                if kind == "edit":
                    return Edit(room, target, check_body(data.get("body"), max_body_chars), ref)
                if kind == "delete":
                    return Delete(room, target, ref)
                op = data.get("op")
                if op not in ("add", "remove"):
                    raise InvalidInput('op must be "add" or "remove"')
                return React(room, target, check_emoji(data.get("emoji")), op, ref)
            except InvalidInput as refused:
                raise ProtocolError(
                    refused.code, refused.detail, ref, room=room, target=target
                ) from None
        if kind == "join":
            room = check_room(data.get("room"))
            since = data.get("since")
            if since is not None and (
                isinstance(since, bool) or not isinstance(since, int) or not 0 <= since < MAX_SEQ
            ):
                raise ProtocolError("bad_request", "since must be an integer >= 0", ref, room=room)
            return Join(room, since, ref)
        if kind == "leave":
            return Leave(check_room(data.get("room")), ref)
        if kind == "read":
            room = check_room(data.get("room"))
            seq = data.get("seq")
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < MAX_SEQ:
                raise ProtocolError("bad_request", "seq must be an integer >= 0", ref, room=room)
            return Read(room, seq, ref)
        if kind == "typing":
            return Typing(check_room(data.get("room")), ref)
        if kind == "ping":
            return Ping(ref)
    except InvalidInput as refused:
        raise ProtocolError(refused.code, refused.detail, ref) from None
    raise ProtocolError("bad_request", "unknown or missing type", ref)


# -- between instances ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotifiedMessage:
    room_id: int
    seq: int
    author: str
    body: str
    client_id: str | None
    created_at: datetime
    reply_to: int | None = None

    def stored(self, room: str) -> StoredMessage:
        return StoredMessage(
            room, self.seq, self.author, self.body, self.client_id, self.created_at,
            self.reply_to,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class NotifiedChange:
    """An edit, delete or reaction as a notification carries it inline: the event of room
    `room_id` (whose `room` field is filled in by the receiver, which knows the name)."""

    room_id: int
    event: EditEvent | DeleteEvent | ReactionEvent

    @property
    def seq(self) -> int:
        return self.event.seq

    def stored(self, room: str) -> EditEvent | DeleteEvent | ReactionEvent:
        return replace(self.event, room=room)


@dataclass(frozen=True, slots=True)
class MessagesNote:
    """Messages committed together: inline ones, and refs `(room_id, seq)` to read back."""

    messages: tuple[NotifiedMessage | NotifiedChange, ...]
    refs: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class PresenceNote:
    room_id: int
    room: str
    user: str
    event: Literal["join", "leave"]


@dataclass(frozen=True, slots=True)
class TypingNote:
    room_id: int
    room: str
    user: str


@dataclass(frozen=True, slots=True)
class CanaryNote:
    instance: str
    n: int


@dataclass(frozen=True, slots=True)
class UserNote:
    """A frame for the users' own streams: every connection of each of `users`, on every
    instance, gets `frame` (an encoded frame, see `rooms_changed`)."""

    users: tuple[str, ...]
    frame: str


Note = MessagesNote | PresenceNote | TypingNote | CanaryNote | UserNote


_BLOCK = 64  # SHA-256's block size, for HMAC's padded keys


@dataclass(frozen=True, slots=True)
class FanoutKey:
    """The key that signs notifications, derived from the instance secret (every instance
    of a deployment shares CHAT_SECRET_KEY), and HMAC's two padded forms of it."""

    key: bytes
    inner: bytes
    outer: bytes

    @classmethod
    def from_secret(cls, secret: str) -> FanoutKey:
        key = hmac.new(secret.encode(), b"chat fan-out notifications", hashlib.sha256).digest()
        padded = key.ljust(_BLOCK, b"\0")
        return cls(
            key,
            bytes(b ^ 0x36 for b in padded),
            bytes(b ^ 0x5C for b in padded),
        )

    def sign(self, payload: str) -> str:
        mac = hmac.new(self.key, payload.encode(), hashlib.sha256).hexdigest()
        return f"{mac}.{payload}"

    def open(self, signed: str) -> str | None:
        """The payload of a notification signed with this key, else None."""
        mac, dot, payload = signed.partition(".")
        if not dot or len(mac) != SIGNATURE_BYTES - 1:
            return None
        expected = hmac.new(self.key, payload.encode(), hashlib.sha256).hexdigest()
        return payload if hmac.compare_digest(mac, expected) else None


def encode_note(note: Note) -> str:
    if isinstance(note, MessagesNote):
        return orjson.dumps(
            {
                "kind": "messages",
                "messages": [message_entry(m) for m in note.messages],
                "refs": [{"room_id": r, "seq": s} for r, s in note.refs],
            }
        ).decode()
    if isinstance(note, PresenceNote):
        fields: dict[str, Any] = {
            "kind": "presence",
            "room_id": note.room_id,
            "room": note.room,
            "user": note.user,
            "event": note.event,
        }
    elif isinstance(note, TypingNote):
        fields = {"kind": "typing", "room_id": note.room_id, "room": note.room, "user": note.user}
    elif isinstance(note, UserNote):
        fields = {"kind": "user", "users": list(note.users), "frame": orjson.loads(note.frame)}
    else:
        fields = {"kind": "canary", "instance": note.instance, "n": note.n}
    return orjson.dumps(fields).decode()


def message_entry(m: NotifiedMessage | NotifiedChange) -> dict[str, Any]:
    """One event as a `messages` notification carries it inline: a message has no `kind`;
    an edit, delete or reaction has its frame's fields (no `type`, no `room`), a `kind`, and
    its room's id."""
    if isinstance(m, NotifiedChange):
        fields = m.event.to_wire()
        kind = fields.pop("type")
        del fields["room"]
        return {"room_id": m.room_id, "kind": kind, **fields}
    return {
        "room_id": m.room_id,
        "seq": m.seq,
        "author": m.author,
        "body": m.body,
        "client_id": m.client_id,
        "created_at": _timestamp(m.created_at),
        "reply_to": m.reply_to,
    }


class _Malformed(Exception):
    pass


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(key)
    return value


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise _Malformed(key)
    return value


def _optional_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _Malformed(key)
    return value


@functools.lru_cache(maxsize=1)
def _utc(text: str) -> datetime | None:
    """The instant `text` writes, in UTC; None when it is not one with a zone."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    # An instant, shown in UTC whatever TimeZone the producing session had (an instance of
    # an older release, mid-upgrade, may not have set it): the contract says +00:00.
    return at.astimezone(UTC) if at.tzinfo is not None else None


def _instant(data: dict[str, Any], key: str) -> datetime:
    at = _utc(_str(data, key))
    if at is None:
        raise _Malformed(key)
    return at


def _change(data: dict[str, Any], kind: object) -> NotifiedChange:
    room_id, seq, target = _int(data, "room_id"), _int(data, "seq"), _int(data, "target")
    event: EditEvent | DeleteEvent | ReactionEvent
    if kind == "edit":
        event = EditEvent(
            "", seq, target, _str(data, "author"), _str(data, "body"), _instant(data, "edited_at")
        )
    elif kind == "delete":
        event = DeleteEvent("", seq, target, _str(data, "by"))
    elif kind == "reaction":
        op = data.get("op")
        if op not in ("add", "remove"):
            raise _Malformed("op")
        event = ReactionEvent(
            "", seq, target, _str(data, "user"), _str(data, "emoji"), op, _int(data, "count")
        )
    else:
        raise _Malformed("kind")
    return NotifiedChange(room_id, event)


def _entry(data: object) -> NotifiedMessage | NotifiedChange:
    if not isinstance(data, dict):
        raise _Malformed("entry")
    kind = data.get("kind")
    if kind is not None:
        return _change(data, kind)
    client_id = data.get("client_id")
    if client_id is not None and not isinstance(client_id, str):
        raise _Malformed("client_id")
    return NotifiedMessage(
        _int(data, "room_id"), _int(data, "seq"), _str(data, "author"), _str(data, "body"),
        client_id, _instant(data, "created_at"), _optional_int(data, "reply_to"),
    )  # fmt: skip


def _ref(data: object) -> tuple[int, int]:
    if not isinstance(data, dict):
        raise _Malformed("ref")
    return _int(data, "room_id"), _int(data, "seq")


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise _Malformed(key)
    return value


def decode_note(payload: str) -> Note | None:
    """The notification, or None when it is not one of ours or is malformed in any part."""
    try:
        data = orjson.loads(payload)
        if not isinstance(data, dict):
            return None
        kind = data.get("kind")
        if kind == "messages":
            return MessagesNote(
                tuple(_entry(e) for e in _list(data, "messages")),
                tuple(_ref(r) for r in _list(data, "refs")),
            )
        if kind == "presence":
            event = data.get("event")
            if event not in ("join", "leave"):
                return None
            return PresenceNote(
                _int(data, "room_id"), _str(data, "room"), _str(data, "user"), event
            )
        if kind == "typing":
            return TypingNote(_int(data, "room_id"), _str(data, "room"), _str(data, "user"))
        if kind == "canary":
            return CanaryNote(_str(data, "instance"), _int(data, "n"))
        if kind == "user":
            users = _list(data, "users")
            frame = data.get("frame")
            if not all(isinstance(u, str) for u in users) or not isinstance(frame, dict):
                return None
            if not isinstance(frame.get("type"), str):
                return None
            return UserNote(tuple(users), orjson.dumps(frame).decode())
    except (orjson.JSONDecodeError, _Malformed):
        return None
    return None
