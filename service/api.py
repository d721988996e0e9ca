"""REST routes (PROTOCOL.md, Authentication and REST): thin adapters over the domain."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field, field_validator

from . import accounts as accounts_db
from . import metrics
from .accounts import USERS_LISTED_MAX, Accounts, UsernameTaken
from .auth import COOKIE, CurrentCaller, CurrentUser, oauth2_scheme, request_claims
from .members import Members
from .protocol import MAX_SEQ, PROTOCOL_VERSION
from .ratelimit import KeyedLimiter, RateLimited
from .refusals import Forbidden, NotFound
from .search_text import MAX_QUERY_CHARS
from .security import issue_token
from .sessions import Sessions
from .settings import Settings
from .validation import (
    EMOJI_MAX,
    PASSWORD_MAX,
    PASSWORD_MIN,
    ROOM_PATTERN,
    USERNAME_PATTERN,
    InvalidInput,
    check_body,
    check_client_id,
    check_password,
    normalize_username,
)

if TYPE_CHECKING:
    from .chat import Chat


class ErrorOut(BaseModel):
    """FastAPI's error body; a refused field's `detail` is a list of problems instead."""

    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "not authenticated, or wrong credentials",
        403: "not allowed: a private room or dm the caller is not a member of, a reserved "
        "dm- name, a banned user's login, a non-admin's ban",
        404: "no such room, user or session",
        409: "username is taken",
        413: "body too long",
        429: "rate limited: nothing was done; try again after Retry-After seconds",
        503: "the database cannot be reached, or the instance is too busy; nothing was "
        "stored; try again (after Retry-After seconds, when given)",
    }
    return {code: {"model": ErrorOut, "description": described[code]} for code in codes}


router = APIRouter(prefix="/api")
# A history page's size: at most, and when none is asked for.
MAX_PAGE = 200
DEFAULT_PAGE = 50
RoomName = Annotated[str, Path(pattern=ROOM_PATTERN)]


async def get_chat(request: Request) -> Chat:
    # async: a plain `def` dependency would be run in the threadpool on every request.
    chat: Chat = request.app.state.chat
    return chat


async def get_accounts(request: Request) -> Accounts:
    accounts: Accounts = request.app.state.accounts
    return accounts


async def get_sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


SessionsDep = Annotated[Sessions, Depends(get_sessions)]


async def writing_user(request: Request, user: CurrentUser) -> str:
    """The caller of a REST write, charged one token of their write bucket: every REST write
    shares it (PROTOCOL.md, `rate_limited`), so past it each answers 429 and does nothing.
    Charged once the caller is authenticated, before the body is looked at."""
    limiter: KeyedLimiter = request.app.state.rest_writes
    wait_ms = limiter.take(user)
    if wait_ms:
        raise RateLimited(wait_ms, "writing too fast; try again later")
    return user


async def get_members(request: Request) -> Members:
    members: Members = request.app.state.members
    return members


ChatDep = Annotated["Chat", Depends(get_chat)]
MembersDep = Annotated[Members, Depends(get_members)]
AccountsDep = Annotated[Accounts, Depends(get_accounts)]
# A write's user: use it instead of CurrentUser on every route that changes something.
WritingUser = Annotated[str, Depends(writing_user)]


class Registration(BaseModel):
    username: str = Field(examples=["alice"])
    password: str = Field(examples=["correct horse battery"])

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        try:
            return normalize_username(value)
        except InvalidInput as error:
            raise ValueError(error.detail) from None

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        try:
            return check_password(value)
        except InvalidInput as error:
            raise ValueError(error.detail) from None


class UserOut(BaseModel):
    username: str


class MeOut(BaseModel):
    username: str
    admin: bool


class SessionOut(BaseModel):
    id: uuid.UUID
    created_at: datetime
    last_seen_at: datetime
    user_agent: str | None
    current: bool


class UsersOut(BaseModel):
    users: list[str]


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int


class ReactionOut(BaseModel):
    emoji: str
    count: int
    me: bool | None = None


class MessageOut(BaseModel):
    room: str
    seq: int
    author: str
    body: str
    created_at: str
    client_id: str | None
    reply_to: int | None
    edited_at: str | None
    deleted: bool
    reactions: list[ReactionOut]
    version: int


class PageOut(BaseModel):
    room: str
    messages: list[MessageOut]
    has_more: bool


class OnlineOut(BaseModel):
    room: str
    users: list[str]


class NewMessage(BaseModel):
    body: str = Field(examples=["hello"])
    client_id: str | None = Field(default=None, examples=["3f6c2a1e-0b7d-4e1a-9d1e-6c1f0f9d2a11"])
    reply_to: int | None = Field(default=None, gt=0, lt=MAX_SEQ, examples=[None])


def _secure(settings: Settings, request: Request) -> bool:
    """The cookie's Secure flag: CHAT_COOKIE_SECURE, or a request made over HTTPS (behind a
    TLS-terminating proxy, its X-Forwarded-Proto, believed only from
    CHAT_FORWARDED_ALLOW_IPS). The scope's scheme, not request.url's, which parses Host."""
    return settings.cookie_secure or request.scope["scheme"] == "https"


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    responses=_errors(409, 429, 503),
)
async def register(registration: Registration, request: Request, accounts: AccountsDep) -> UserOut:
    """RateLimited (429) and PasswordsBusy (503) are answered by app.py's handlers."""
    client = request.client.host if request.client else "?"
    try:
        await accounts.register(registration.username, registration.password, client)
    except UsernameTaken:
        raise HTTPException(status.HTTP_409_CONFLICT, "username is taken") from None
    return UserOut(username=registration.username)


@router.post("/token", response_model=TokenOut, responses=_errors(401, 403, 429, 503))
async def login(
    request: Request,
    response: Response,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    accounts: AccountsDep,
    sessions: SessionsDep,
) -> TokenOut:
    """OAuth2 password flow: a new session, and its token; also sets the `session` cookie
    for the browser. A banned user's right password answers 403."""
    settings: Settings = request.app.state.settings
    username = form.username.lower()
    client = request.client.host if request.client else "?"
    outcome = await accounts.login(username, form.password, client)
    if outcome == "wrong":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    session_id = None
    if outcome == "ok":
        session_id = await sessions.create(username, request.headers.get("user-agent"))
    if session_id is None:  # banned (perhaps since the password was checked)
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this user is banned")
    ttl = settings.token_ttl_seconds
    token = issue_token(username, settings.require_secret(), ttl, session_id)
    response.set_cookie(
        COOKIE,
        token,
        max_age=ttl,
        httponly=True,
        samesite="lax",
        secure=_secure(settings, request),
        path="/",
    )
    return TokenOut(access_token=token, expires_in=ttl)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=_errors(503))
async def logout(
    request: Request,
    sessions: SessionsDep,
    bearer: Annotated[str | None, Depends(oauth2_scheme)],
    everywhere: bool = False,
) -> Response:
    """End the session of the token or cookie that calls (with `everywhere`, every session
    of its user) and clear the cookie: 204, also without a valid token. Answers once every
    instance refuses the session; 503 when the database cannot be reached (nothing ended)."""
    settings: Settings = request.app.state.settings
    claims = request_claims(request, bearer)
    if claims is not None:
        if everywhere:
            # Only a live session may end the others: an ended token is worth nothing.
            if await sessions.check(claims.session_id, claims.username):
                await sessions.end_all(claims.username)
        else:
            await sessions.end(claims.session_id, claims.username)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(
        COOKIE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=_secure(settings, request),
    )
    return response


@router.get("/me", response_model=MeOut, responses=_errors(401))
async def me(request: Request, user: CurrentUser) -> MeOut:
    return MeOut(username=user, admin=await accounts_db.is_admin(request.app.state.engine, user))


@router.get("/sessions", response_model=list[SessionOut], responses=_errors(401))
async def list_sessions(caller: CurrentCaller, sessions: SessionsDep) -> list[SessionOut]:
    """The caller's live sessions, newest first (at most 200)."""
    return [
        SessionOut(
            id=s.id,
            created_at=s.created_at,
            last_seen_at=s.last_seen_at,
            user_agent=s.user_agent,
            current=s.id == caller.session_id,
        )
        for s in await sessions.live(caller.username)
    ]


@router.delete(
    "/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_errors(401, 404),
)
async def end_session(
    session_id: uuid.UUID, caller: CurrentCaller, sessions: SessionsDep
) -> Response:
    """End one of the caller's live sessions (the current one too); 404 for any other."""
    if not await sessions.end(session_id, caller.username):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such session")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/users", response_model=UsersOut, responses=_errors(401))
async def find_users(
    request: Request,
    user: CurrentUser,
    q: Annotated[str, Query(min_length=1, max_length=64)],
    limit: Annotated[int, Query(ge=1, le=USERS_LISTED_MAX)] = 20,
) -> UsersOut:
    """Usernames starting with `q` (case-insensitive), by name; banned users included."""
    names = await accounts_db.find_users(request.app.state.engine, q.lower(), limit)
    return UsersOut(users=names)


async def _ban_target(request: Request, caller: str, name: str) -> str:
    """The user an admin's ban route names; 403 for a non-admin, 404 for an unknown user."""
    if not await accounts_db.is_admin(request.app.state.engine, caller):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only an admin may ban or unban")
    try:
        return normalize_username(name)
    except InvalidInput:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {name} does not exist") from None


@router.post(
    "/users/{name}/ban",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_errors(401, 403, 404, 429),
)
async def ban_user(
    name: str, request: Request, user: WritingUser, sessions: SessionsDep
) -> Response:
    """Ban the user: every session of theirs ends (their sockets close with 1008 on every
    instance), and their logins answer 403 until unbanned. Answers once every instance
    refuses their sessions. Banning a banned user changes nothing and answers 204."""
    target = await _ban_target(request, user, name)
    ended = await accounts_db.ban(request.app.state.engine, target)
    if ended is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {target} does not exist")
    sessions.ended(ended)
    await sessions.settle()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/users/{name}/ban",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_errors(401, 403, 404, 429),
)
async def unban_user(name: str, request: Request, user: WritingUser) -> Response:
    """Lift the ban: the user may log in again (ended sessions stay ended)."""
    target = await _ban_target(request, user, name)
    if not await accounts_db.unban(request.app.state.engine, target):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {target} does not exist")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class ConfigOut(BaseModel):
    protocol: int
    max_message_chars: int
    max_frame_bytes: int
    replay_limit: int
    resume_limit: int
    max_rooms_per_connection: int
    rate_limit_per_second: float
    rate_limit_burst: int
    max_emoji_per_message: int
    # Not in PROTOCOL.md's list: additions (README, API) so that the page checks a search's,
    # a password's and a reaction's length with the server's own bounds.
    max_search_chars: int
    min_password_chars: int
    max_password_chars: int
    max_emoji_chars: int
    room_pattern: str = Field(examples=[ROOM_PATTERN])
    username_pattern: str = Field(examples=[USERNAME_PATTERN])


@router.get("/config", response_model=ConfigOut)
async def config(chat: ChatDep) -> ConfigOut:
    """The limits this instance enforces, so clients check input with the server's own rules;
    no authentication, because the login form needs them too."""
    s = chat.settings
    return ConfigOut(
        protocol=PROTOCOL_VERSION,
        max_message_chars=s.max_message_chars,
        max_frame_bytes=s.max_frame_bytes,
        replay_limit=s.replay_limit,
        resume_limit=s.resume_limit,
        max_rooms_per_connection=s.max_rooms_per_connection,
        rate_limit_per_second=s.rate_limit_per_second,
        rate_limit_burst=s.rate_limit_burst,
        max_emoji_per_message=s.max_emoji_per_message,
        max_search_chars=MAX_QUERY_CHARS,
        min_password_chars=PASSWORD_MIN,
        max_password_chars=PASSWORD_MAX,
        max_emoji_chars=EMOJI_MAX,
        room_pattern=ROOM_PATTERN,
        username_pattern=USERNAME_PATTERN,
    )


async def _readable(members: Members, room: str, user: str) -> int:
    """The room's id when `user` may read it: 404 unknown, 403 a private room or dm of
    others (members.py raises; app.py answers)."""
    return (await members.access(room, user)).room_id


@router.get("/rooms/{room}/messages", response_model=PageOut, responses=_errors(401, 403, 404))
async def room_messages(
    room: RoomName,
    user: CurrentUser,
    chat: ChatDep,
    members: MembersDep,
    before: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    around: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> Response:
    """A page of messages in their current state (tombstones included, `me` in each
    reaction), ascending seq: the newest `limit` before `before`, the oldest `limit` after
    `after`, up to `limit` centred on `around` (with `has_more_before` and
    `has_more_after`), or the newest `limit`; `has_more` says whether more lie beyond.
    An ordinary request (no `around`) is answered below FastAPI by fastpath.py, with
    history_body as here."""
    if sum(p is not None for p in (before, after, around)) > 1:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "give one of before, after and around"
        )
    if around is None:
        body = await history_body(chat, room, user, before=before, after=after, limit=limit)
        return Response(body, media_type="application/json")
    room_id = await _readable(members, room, user)
    centred = await chat.around(room_id, room, around, limit, user)
    # Encoded directly: validating the page against PageOut again (FastAPI's default for a
    # returned dict) cost more than the query. PageOut still documents it.
    centred_body = {
        "room": room,
        "messages": [m.to_wire() for m in centred.messages],
        "has_more_before": centred.has_more_before,
        "has_more_after": centred.has_more_after,
    }
    return Response(orjson.dumps(centred_body), media_type="application/json")


async def history_body(
    chat: Chat, room: str, user: str, *, before: int | None, after: int | None, limit: int
) -> bytes:
    """The JSON of a page before `before`, after `after` or the newest, for `user`; raises
    NotFound or Forbidden as members.readable does. The check and the page are one statement
    (store.py, _READABLE)."""
    page = await chat.readable_history(room, user, before=before, after=after, limit=limit)
    body = {"room": room, "messages": page.messages, "has_more": page.has_more}
    return orjson.dumps(body)


@router.post(
    "/rooms/{room}/messages",
    status_code=status.HTTP_201_CREATED,
    response_model=MessageOut,
    responses={
        200: {"model": MessageOut, "description": "the original, for a repeated client_id"},
        **_errors(401, 403, 413, 429, 503),
    },
)
async def post_message(
    room: RoomName, new: NewMessage, user: WritingUser, chat: ChatDep, members: MembersDep
) -> Any:
    """Store a message (the room is created on first use, unless the user has created too
    many lately: 429); idempotent on `client_id`. 403 for a private room or dm of others,
    and for an unknown `dm-` name (reserved)."""
    try:
        body = check_body(new.body, chat.settings.max_message_chars)
        client_id = check_client_id(new.client_id)
    except InvalidInput as error:
        code = (
            status.HTTP_413_CONTENT_TOO_LARGE
            if error.code == "too_large"
            else status.HTTP_422_UNPROCESSABLE_CONTENT
        )
        raise HTTPException(code, error.detail) from None
    try:
        await members.access(room, user)
    except NotFound:
        if room.startswith("dm-"):
            raise Forbidden("names beginning dm- are reserved for direct messages") from None
    metrics.MESSAGES_IN_REST.inc()
    # Unavailable: 503, RateLimited: 429, NotFound (reply_to): 404 (app.py)
    posted = await chat.post(room, user, body, client_id, new.reply_to)
    return JSONResponse(
        posted.message.to_wire(),
        status_code=status.HTTP_200_OK if posted.duplicate else status.HTTP_201_CREATED,
    )


@router.get("/rooms/{room}/online", response_model=OnlineOut, responses=_errors(401, 403, 404))
async def room_online(
    room: RoomName, user: CurrentUser, chat: ChatDep, members: MembersDep
) -> OnlineOut:
    room_id = await _readable(members, room, user)
    return OnlineOut(room=room, users=await chat.online(room_id))
