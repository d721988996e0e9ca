"""REST for the room log (PROTOCOL.md v2): its events, and the edits, deletes and reactions
of messages. Thin adapters over `Chat`: each change goes through the batch writer like a
socket's, and the rules are checked in the transaction that would number it."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, Field

from .api import ChatDep, MembersDep, MessageOut, RoomName, WritingUser, _errors
from .auth import CurrentUser
from .protocol import MAX_SEQ, StoredMessage
from .store import ChangeDraft
from .validation import InvalidInput, check_body, check_emoji

router = APIRouter(prefix="/api")
Seq = Annotated[int, Path(gt=0, lt=MAX_SEQ)]
# At most this many users are named per emoji in a reactions list.
REACTORS_LISTED = 100


class EventsOut(BaseModel):
    room: str
    events: list[dict[str, Any]] = Field(
        description="frames as a resume with `since` sends them, ascending seq"
    )
    has_more: bool


class Edit(BaseModel):
    body: str = Field(examples=["hello, corrected"])


class ReactorsOut(BaseModel):
    emoji: str
    count: int
    users: list[str]


class ReactionsOut(BaseModel):
    room: str
    seq: int
    reactions: list[ReactorsOut]


def _json(value: dict[str, Any]) -> Response:
    return Response(orjson.dumps(value), media_type="application/json")


def _message(message: StoredMessage) -> Response:
    return _json(message.to_wire())


@router.get("/rooms/{room}/events", response_model=EventsOut, responses=_errors(401, 403, 404))
async def room_events(
    room: RoomName,
    user: CurrentUser,
    chat: ChatDep,
    members: MembersDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The room's log after `after`: messages in their current state (with `me`), edits
    (an erased target's with empty bodies), deletes, reactions and member events."""
    room_id = (await members.access(room, user)).room_id
    entries, has_more = await chat.events(room_id, room, after, limit, user)
    events = [orjson.Fragment(e.frame()) for e in entries]
    return _json({"room": room, "events": events, "has_more": has_more})


async def _apply(
    chat: ChatDep, members: MembersDep, room: str, user: str, seq: int, **change: Any
) -> Response:
    room_id = (await members.access(room, user)).room_id
    # Refusals (403, 404, 409) are answered by app.py's handler.
    return _message(await chat.apply(ChangeDraft(room_id, room, user, target=seq, **change)))


@router.patch(
    "/rooms/{room}/messages/{seq}",
    response_model=MessageOut,
    responses=_errors(401, 403, 404, 413, 429),
)
async def edit_message(
    room: RoomName, seq: Seq, edit: Edit, user: WritingUser, chat: ChatDep, members: MembersDep
) -> Response:
    """Edit your own message: 200 with it in its new state (the same when the body is
    unchanged); 403 another's; 404 no such message, or deleted."""
    try:
        body = check_body(edit.body, chat.settings.max_message_chars)
    except InvalidInput as error:
        code = (
            status.HTTP_413_CONTENT_TOO_LARGE
            if error.code == "too_large"
            else status.HTTP_422_UNPROCESSABLE_CONTENT
        )
        raise HTTPException(code, error.detail) from None
    return await _apply(chat, members, room, user, seq, kind="edit", body=body)


@router.delete(
    "/rooms/{room}/messages/{seq}", response_model=MessageOut, responses=_errors(401, 403, 404, 429)
)
async def delete_message(
    room: RoomName, seq: Seq, user: WritingUser, chat: ChatDep, members: MembersDep
) -> Response:
    """Delete a message (yours; as the room's owner or moderator, others'; as an admin
    member, any): 200 with its tombstone, also when it was deleted already."""
    return await _apply(chat, members, room, user, seq, kind="delete")


def _emoji(value: str) -> str:
    try:
        return check_emoji(value)
    except InvalidInput as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, error.detail) from None


@router.put(
    "/rooms/{room}/messages/{seq}/reactions/{emoji}",
    response_model=MessageOut,
    responses=_errors(401, 403, 404, 409, 429),
)
async def add_reaction(
    room: RoomName, seq: Seq, emoji: str, user: WritingUser, chat: ChatDep, members: MembersDep
) -> Response:
    """React with `emoji` (URL-encoded): 200 with the message's state; 409 one emoji more
    than CHAT_MAX_EMOJI_PER_MESSAGE."""
    return await _apply(
        chat, members, room, user, seq, kind="reaction", emoji=_emoji(emoji), op="add"
    )


@router.delete(
    "/rooms/{room}/messages/{seq}/reactions/{emoji}",
    response_model=MessageOut,
    responses=_errors(401, 403, 404, 429),
)
async def remove_reaction(
    room: RoomName, seq: Seq, emoji: str, user: WritingUser, chat: ChatDep, members: MembersDep
) -> Response:
    """Take a reaction back: 200 with the message's state."""
    return await _apply(
        chat, members, room, user, seq, kind="reaction", emoji=_emoji(emoji), op="remove"
    )


@router.get(
    "/rooms/{room}/messages/{seq}/reactions",
    response_model=ReactionsOut,
    responses=_errors(401, 403, 404),
)
async def reactions(
    room: RoomName, seq: Seq, user: CurrentUser, chat: ChatDep, members: MembersDep
) -> Response:
    """Each emoji on the message with its count and at most 100 of the users, earliest
    first."""
    room_id = (await members.access(room, user)).room_id
    message = await chat.message(room_id, room, seq, user)
    if message is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no message {seq} in {room}")
    users = await chat.who_reacted(room_id, seq, REACTORS_LISTED)
    listed = [
        {"emoji": emoji, "count": count, "users": users.get(emoji, [])}
        for emoji, count in message.reactions
    ]
    return _json({"room": room, "seq": seq, "reactions": listed})
