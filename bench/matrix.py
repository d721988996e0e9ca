"""The few Matrix Client-Server API calls the benchmark makes (aiohttp), and their errors."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

CLIENT = "/_matrix/client/v3"


class MatrixError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status
        self.body = body
        try:
            self.errcode = str(json.loads(body).get("errcode", status))
        except ValueError:
            self.errcode = str(status)


async def call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    token: str | None = None,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = orjson.dumps(body) if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with http.request(method, path, data=data, headers=headers, params=params) as response:
        raw = await response.read()
        if response.status != 200:
            raise MatrixError(response.status, raw.decode(errors="replace"))
    result: dict[str, Any] = orjson.loads(raw)
    return result


async def register(http: aiohttp.ClientSession, username: str) -> str:
    """A new user by the m.login.dummy flow; its access token."""
    path = f"{CLIENT}/register"
    body: dict[str, Any] = {"username": username, "password": secrets.token_hex(12)}
    try:
        return str((await call(http, "POST", path, body=body))["access_token"])
    except MatrixError as error:
        if error.status != 401:
            raise
        session = json.loads(error.body).get("session")
    body["auth"] = {"type": "m.login.dummy", "session": session}
    return str((await call(http, "POST", path, body=body))["access_token"])


async def create_room(http: aiohttp.ClientSession, token: str, name: str) -> str:
    body = {"preset": "public_chat", "name": name, "visibility": "private"}
    return str((await call(http, "POST", f"{CLIENT}/createRoom", token, body))["room_id"])


async def join_room(http: aiohttp.ClientSession, token: str, room_id: str) -> None:
    await call(http, "POST", f"{CLIENT}/join/{quote(room_id)}", token, {})


async def send_text(http: aiohttp.ClientSession, token: str, room_id: str, body: str) -> str:
    """One message, acknowledged: its event id."""
    path = f"{CLIENT}/rooms/{quote(room_id)}/send/m.room.message/{uuid.uuid4().hex}"
    sent = await call(http, "PUT", path, token, {"msgtype": "m.text", "body": body})
    return str(sent["event_id"])


def session(base: str, connections: int = 0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=base,
        timeout=aiohttp.ClientTimeout(total=120),
        connector=aiohttp.TCPConnector(limit=connections),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
    )
