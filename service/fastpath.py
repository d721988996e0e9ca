"""The history page (`GET /api/rooms/{room}/messages`) served below FastAPI, as `/ws` is.

A page is the REST call a browser makes most, and most of an instance's time on one went to
FastAPI's machinery around the statement rather than to the statement: the routing, the
dependency solving and the exception layers took about a quarter (README, Performance). This
middleware answers the ordinary request itself with the route's own functions: the same
authentication (auth.current_caller), the same page (api.history_body) and, for an error
the route would raise, the same exception handlers (the app's, looked up as Starlette's
ExceptionMiddleware looks them up). A request it does not recognise as ordinary (a
malformed or repeated parameter, `around`, a room name the route refuses, a method other
than GET) goes on to the route, so every 422 and every other answer keeps FastAPI's shape.
tests/test_fastpath.py compares the two answers, request by request."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from . import api
from .auth import current_caller, oauth2_scheme
from .protocol import MAX_SEQ
from .validation import ROOM_PATTERN

_PATH = re.compile(r"/api/rooms/([^/]+)/messages")
_ROOM = re.compile(ROOM_PATTERN.removeprefix("^").removesuffix("$"))
_NUMBER = re.compile(r"[0-9]{1,19}")
# The route's query parameters this path takes, with their bounds (api.room_messages).
_BOUNDS = {"before": (0, MAX_SEQ), "after": (0, MAX_SEQ), "limit": (1, api.MAX_PAGE)}

Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]


def ordinary(query_string: bytes) -> dict[str, int] | None:
    """The page's parameters when the query is one the route takes as it is: at most one of
    `before` and `after`, each parameter once, in decimal digits, within its bounds (other
    parameters are ignored, as by the route). None for anything else, left to the route."""
    found: dict[str, int] = {}
    # As Starlette parses it for the route (starlette.datastructures.QueryParams).
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == "around":
            return None
        bounds = _BOUNDS.get(key)
        if bounds is None:
            continue
        if key in found or not _NUMBER.fullmatch(value):
            return None
        number = int(value)
        if not bounds[0] <= number <= bounds[1]:
            return None
        found[key] = number
    if "before" in found and "after" in found:
        return None
    return found


def _handler(app: Any, error: Exception) -> Handler | None:
    """The app's handler for `error`, by its class's MRO (as Starlette's ExceptionMiddleware
    finds it), or None."""
    handlers: dict[Any, Handler] = app.exception_handlers
    for cls in type(error).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


class HistoryPages:
    """Pure ASGI middleware in front of the routes: takes an ordinary history page request
    to api.history_body directly, and everything else on to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            matched = _PATH.fullmatch(scope["path"])
            if matched is not None and _ROOM.fullmatch(room := matched.group(1)):
                params = ordinary(scope["query_string"])
                if params is not None:
                    await self._page(scope, receive, send, room, params)
                    return
        await self.app(scope, receive, send)

    async def _page(
        self, scope: Scope, receive: Receive, send: Send, room: str, params: dict[str, int]
    ) -> None:
        request = Request(scope, receive)
        try:
            caller = await current_caller(request, await oauth2_scheme(request))
            body = await api.history_body(
                request.app.state.chat,
                room,
                caller.username,
                before=params.get("before"),
                after=params.get("after"),
                limit=params.get("limit", api.DEFAULT_PAGE),
            )
            response = Response(body, media_type="application/json")
        except Exception as error:
            handler = _handler(request.app, error)
            if handler is None:
                raise
            response = await handler(request, error)
        await response(scope, receive, send)
