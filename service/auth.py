"""Who is calling: bearer token or session cookie, for REST and for the socket. A token is
worth something only while its session is live (sessions.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, WebSocket, status
from fastapi.security import OAuth2PasswordBearer

from .origins import origin_allowed
from .security import Claims, read_token_claims
from .sessions import Sessions
from .settings import Settings

COOKIE = "session"
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/token", auto_error=False)


@dataclass(frozen=True, slots=True)
class Caller:
    username: str
    session_id: uuid.UUID


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="not authenticated",
        headers={"WWW-Authenticate": "Bearer"},
    )


def request_claims(request: Request, bearer: str | None) -> Claims | None:
    """The claims of the request's bearer token, else of its cookie, if validly signed and
    unexpired; whether the session is live is not asked here."""
    settings: Settings = request.app.state.settings
    token = bearer or request.cookies.get(COOKIE)
    return read_token_claims(token, settings.require_secret()) if token else None


async def current_caller(
    request: Request, bearer: Annotated[str | None, Depends(oauth2_scheme)]
) -> Caller:
    """The caller and their session; 401 unless the session is live, 503 (Unavailable) when
    that must be asked of a database that does not answer."""
    claims = request_claims(request, bearer)
    sessions: Sessions = request.app.state.sessions
    if claims is None or not await sessions.check(claims.session_id, claims.username):
        raise _unauthorized()
    return Caller(claims.username, claims.session_id)


CurrentCaller = Annotated[Caller, Depends(current_caller)]


async def current_user(caller: CurrentCaller) -> str:
    return caller.username


CurrentUser = Annotated[str, Depends(current_user)]


async def websocket_claims(
    websocket: WebSocket, settings: Settings, sessions: Sessions
) -> Claims | None:
    """The socket's claims (user, token expiry, session), or None to refuse it (missing, bad
    or expired token, ended session, bad Origin). Raises Unavailable when the session must be
    asked of a database that does not answer."""
    secret = settings.require_secret()
    token = websocket.query_params.get("token")
    if not token:
        header = websocket.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    if not token:
        token = websocket.cookies.get(COOKIE)
        # The scope's scheme, not websocket.url's: building the URL parses the Host header.
        # Behind a trusted proxy (CHAT_FORWARDED_ALLOW_IPS) it is the forwarded one.
        if not token or not origin_allowed(
            websocket.headers.get("origin"),
            websocket.headers.get("host"),
            websocket.scope["scheme"],
            settings.allowed_origins,
        ):
            return None
    claims = read_token_claims(token, secret)
    if claims is None or not await sessions.check(claims.session_id, claims.username):
        return None
    return claims
