"""REST routes for rooms, dms and members (PROTOCOL.md, REST): thin adapters over members.py.

Each mutating route runs one membership transaction, then hands the committed change to
`Chat.membership_changed`, which tells the room's sockets and the users' own streams.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from .api import ChatDep, MembersDep, RoomName, WritingUser
from .auth import CurrentUser
from .members import ListPage
from .protocol import MAX_SEQ
from .refusals import Conflict, Forbidden, Invalid, LimitReached, NotFound, Refused
from .validation import InvalidInput, normalize_username

router = APIRouter(prefix="/api")
# A user in a members path: a username (any case) or `me`.
UserName = Annotated[str, Path(min_length=2, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
Cursor = Annotated[str | None, Query(max_length=512)]

_STATUS: dict[type[Refused], int] = {
    NotFound: status.HTTP_404_NOT_FOUND,
    Forbidden: status.HTTP_403_FORBIDDEN,
    Conflict: status.HTTP_409_CONFLICT,
    LimitReached: status.HTTP_409_CONFLICT,
    Invalid: status.HTTP_422_UNPROCESSABLE_CONTENT,
}


class ErrorOut(BaseModel):
    detail: str


_DESCRIBED = {
    401: "not authenticated",
    403: "not allowed: a private room or dm of others, a reserved dm- name, a role too low, "
    "a banned user",
    404: "no such room, user or member",
    409: "the name exists, the last owner, or the room is full",
    429: "rate limited: nothing was done; try again after Retry-After seconds",
    503: "the database cannot be reached; nothing was done; try again",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut, "description": _DESCRIBED[code]} for code in codes}


async def refused(request: Request, error: Exception) -> Response:
    """A refusal as its status (app.py registers this for `Refused`)."""
    assert isinstance(error, Refused)
    return JSONResponse({"detail": error.detail}, status_code=_STATUS[type(error)])


class RoomOut(BaseModel):
    name: str
    kind: Literal["public", "private", "dm"]
    role: str | None
    last_seq: int
    last_message_seq: int
    created_at: str
    last_message_at: str | None
    last_read_seq: int | None
    unread: int | None
    mentions: int | None
    peer: str | None


class RoomsOut(BaseModel):
    rooms: list[RoomOut]
    next_cursor: str | None


class PublicRoomOut(BaseModel):
    name: str
    created_at: str
    last_message_at: str | None
    members: int


class PublicRoomsOut(BaseModel):
    rooms: list[PublicRoomOut]
    next_cursor: str | None


class MemberOut(BaseModel):
    username: str
    role: str


class MembersOut(BaseModel):
    room: str
    members: list[MemberOut]
    next_cursor: str | None


class NewRoom(BaseModel):
    name: str = Field(max_length=64, examples=["general"])
    kind: Literal["public", "private"] = "public"


class NewDm(BaseModel):
    username: str = Field(max_length=64, examples=["bob"])

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        try:
            return normalize_username(value)
        except InvalidInput as error:
            raise ValueError(error.detail) from None


class MemberIn(BaseModel):
    role: Literal["owner", "moderator", "member"] | None = None


class ReadIn(BaseModel):
    seq: int = Field(ge=0, lt=MAX_SEQ, strict=True)


class ReadOut(BaseModel):
    room: str
    last_read_seq: int
    unread: int
    mentions: int


def _listed(page: ListPage, key: str, **extra: Any) -> dict[str, Any]:
    return {**extra, key: page.items, "next_cursor": page.next_cursor}


@router.get("/rooms", response_model=RoomsOut, responses=_errors(401, 503))
async def my_rooms(
    user: CurrentUser,
    members: MembersDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    cursor: Cursor = None,
) -> Response:
    """The caller's rooms, most recently active first; `next_cursor` pages on (null at the
    end). `unread` and `mentions` are exact (readstate.py)."""
    # Serialised by orjson directly: the response model documents the answer but validating
    # 200 rooms through it took 0.6 ms, a sizeable share of a list the badges wait for.
    page = await members.my_rooms(user, limit, cursor)
    return Response(orjson.dumps(_listed(page, "rooms")), media_type="application/json")


@router.get("/rooms/public", response_model=PublicRoomsOut, responses=_errors(401, 503))
async def public_rooms(
    user: CurrentUser,
    members: MembersDep,
    # A prefix of a room name (any case): anything else could match nothing.
    q: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")] = "",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """The public rooms whose name starts with `q`, by name."""
    return _listed(await members.public_rooms(q.lower(), limit, cursor), "rooms")


@router.get("/rooms/{room}", response_model=RoomOut, responses=_errors(401, 403, 404, 503))
async def room_info(room: RoomName, user: CurrentUser, members: MembersDep) -> dict[str, Any]:
    """One room as the caller sees it; for a public room they are not in, their own fields
    (role, last_read_seq, unread, mentions) are null."""
    return await members.room_info(room, user)


@router.post(
    "/rooms",
    status_code=status.HTTP_201_CREATED,
    response_model=RoomOut,
    responses=_errors(401, 403, 409, 429, 503),
)
async def create_room(
    new: NewRoom, user: WritingUser, members: MembersDep, chat: ChatDep
) -> dict[str, Any]:
    """A new room with the caller as its owner; 409 if the name exists, 403 for `dm-`."""
    change = await members.create_room(new.name, new.kind, user)
    await chat.membership_changed(change)
    return await members.room_info(change.room, user)


@router.post(
    "/dms",
    status_code=status.HTTP_201_CREATED,
    response_model=RoomOut,
    responses={
        200: {"model": RoomOut, "description": "the dm, opened before"},
        **_errors(401, 403, 404, 429, 503),
    },
)
async def open_dm(new: NewDm, user: WritingUser, members: MembersDep, chat: ChatDep) -> Response:
    """The dm of the caller and `username`: 201 when this opened it, 200 after."""
    change, created = await members.open_dm(user, new.username)
    if created:
        await chat.membership_changed(change)
    return JSONResponse(
        await members.room_info(change.room, user),
        status_code=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
    )


@router.get(
    "/rooms/{room}/members", response_model=MembersOut, responses=_errors(401, 403, 404, 503)
)
async def room_members(
    room: RoomName,
    user: CurrentUser,
    members: MembersDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """The room's members by name."""
    return _listed(await members.members(room, user, limit, cursor), "members", room=room)


@router.put(
    "/rooms/{room}/members/{username}",
    response_model=MemberOut,
    responses=_errors(401, 403, 404, 409, 429, 503),
)
async def put_member(
    room: RoomName,
    username: UserName,
    user: WritingUser,
    members: MembersDep,
    chat: ChatDep,
    body: MemberIn | None = None,
) -> MemberOut:
    """Add a member, join a public room (`me`), or set a role, as the roles allow."""
    done = await members.set_member(room, user, username, body.role if body else None)
    if done.change is not None:
        await chat.membership_changed(done.change)
    return MemberOut(username=done.username, role=done.role)


@router.delete(
    "/rooms/{room}/members/{username}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_errors(401, 403, 404, 409, 429, 503),
)
async def delete_member(
    room: RoomName, username: UserName, user: WritingUser, members: MembersDep, chat: ChatDep
) -> Response:
    """Leave (`me`) or remove a member of a private room, as the roles allow."""
    change = await members.remove(room, user, username)
    if change is not None:
        await chat.membership_changed(change)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/rooms/{room}/read", response_model=ReadOut, responses=_errors(401, 403, 404, 429, 503)
)
async def mark_read(room: RoomName, read: ReadIn, user: WritingUser, chat: ChatDep) -> ReadOut:
    """Move the caller's read cursor to `seq` (capped at the room's last seq; it never moves
    back); every connection of theirs hears a `read` frame when it moved. The answer has the
    cursor in force and the room's counts after it."""
    marked = await chat.mark_read(room, user, read.seq)
    counts = await chat.reads.counts(marked.room_id, user)
    return ReadOut(
        room=room,
        last_read_seq=counts.last_read_seq,
        unread=counts.unread,
        mentions=counts.mentions,
    )
