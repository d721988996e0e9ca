"""REST for search (PROTOCOL.md, `GET /api/search`): a thin adapter over service/search.py."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from .api import MembersDep, MessageOut, _errors
from .api_rooms import Cursor
from .auth import CurrentUser
from .search import MAX_LIMIT, Search, SearchGate
from .search_text import MAX_QUERY_CHARS
from .validation import ROOM_PATTERN

router = APIRouter(prefix="/api")


class SearchOut(BaseModel):
    results: list[MessageOut]
    next_cursor: str | None


@router.get("/search", response_model=SearchOut, responses=_errors(401, 403, 404, 429, 503))
async def search(
    request: Request,
    user: CurrentUser,
    members: MembersDep,
    q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
    room: Annotated[str | None, Query(pattern=ROOM_PATTERN)] = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
) -> Response:
    """Messages matching `q` in the caller's rooms (or in `room` alone, if the caller may
    read it), newest first; 422 for a query with no word to search for or a cursor this did
    not give; 429 past the user's search bucket; 503 when the instance's searches are all
    busy for `search_wait_seconds`."""
    gate: SearchGate = request.app.state.search_gate
    async with gate.admit(user):
        room_id = None if room is None else (await members.access(room, user)).room_id
        searcher: Search = request.app.state.search
        found = await searcher.find(user, q, room_id=room_id, cursor=cursor, limit=limit)
    results = [m.to_wire() for m in found.messages]
    body = orjson.dumps({"results": results, "next_cursor": found.next_cursor})
    return Response(body, media_type="application/json")
