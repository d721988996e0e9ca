"""Who is calling: bearer token or session cookie, for REST and for the socket."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, WebSocket, status
from fastapi.security import OAuth2PasswordBearer

from .origins import origin_allowed
from .security import read_token, read_token_claims
from .settings import Settings

COOKIE = "session"
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/token", auto_error=False)


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="not authenticated",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def current_user(
    request: Request, bearer: Annotated[str | None, Depends(oauth2_scheme)]
) -> str:
    settings: Settings = request.app.state.settings
    token = bearer or request.cookies.get(COOKIE)
    username = read_token(token, settings.require_secret()) if token else None
    if username is None:
        raise _unauthorized()
    return username


CurrentUser = Annotated[str, Depends(current_user)]


def websocket_user(websocket: WebSocket, settings: Settings) -> tuple[str, float] | None:
    """The socket's user and its token's expiry (Unix time), or None to refuse it (missing,
    bad or expired token, bad Origin)."""
    secret = settings.require_secret()
    token = websocket.query_params.get("token")
    if not token:
        header = websocket.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    if token:
        return read_token_claims(token, secret)
    cookie = websocket.cookies.get(COOKIE)
    if not cookie:
        return None
    # The scope's scheme, not websocket.url's: building the URL parses the Host header. Behind
    # a trusted proxy (CHAT_FORWARDED_ALLOW_IPS) it is the forwarded one.
    if not origin_allowed(
        websocket.headers.get("origin"),
        websocket.headers.get("host"),
        websocket.scope["scheme"],
        settings.allowed_origins,
    ):
        return None
    return read_token_claims(cookie, secret)
