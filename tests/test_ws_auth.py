"""Socket authentication: query token, bearer header or cookie (with the Origin check)."""

from __future__ import annotations

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.security import issue_token
from tests.support import Instance, new_user, unique, ws_connect


async def _refused(url: str, **kwargs: object) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with websockets.connect(url, open_timeout=10, **kwargs):  # type: ignore[arg-type]
            pass
    assert caught.value.response.status_code == 403


async def test_socket_refuses_missing_bad_and_expired_tokens(
    pair: tuple[Instance, Instance], secret_key: str
) -> None:
    """No token, a forged token and an expired token are all refused at the handshake."""
    a, _ = pair
    ws_url = a.url.replace("http", "ws") + "/ws"
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        user = await new_user(http)
    await _refused(ws_url)
    await _refused(ws_url + "?token=not-a-token")
    forged = issue_token(user.name, "another-secret-" + "x" * 40, 600, user.session_id)
    await _refused(ws_url + f"?token={forged}")
    expired = issue_token(user.name, secret_key, -10, user.session_id)
    await _refused(ws_url + f"?token={expired}")
    await _refused(ws_url, additional_headers={"Authorization": f"Bearer {expired}"})


async def test_socket_accepts_query_token_and_bearer_header(
    pair: tuple[Instance, Instance],
) -> None:
    """A valid token works as query parameter and as Authorization header."""
    a, _ = pair
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        user = await new_user(http)
    async with ws_connect(a.url, user.token) as ws:
        await ws.send(type="ping", ref=1)
        assert (await ws.recv())["type"] == "pong"
    async with ws_connect(a.url, additional_headers=user.headers) as ws:
        joined, _ = await ws.join(unique("r-"))
        assert joined["online"] == [user.name]


async def test_cookie_needs_a_same_origin(pair: tuple[Instance, Instance]) -> None:
    """The session cookie authenticates only with a same-origin Origin header."""
    a, _ = pair
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        user = await new_user(http)
    cookie = {"Cookie": f"session={user.token}"}
    ws_url = a.url.replace("http", "ws") + "/ws"
    await _refused(ws_url, additional_headers=cookie, origin="http://evil.example")
    await _refused(ws_url, additional_headers=cookie)  # no Origin at all
    await _refused(ws_url, additional_headers=cookie, origin="http://127.0.0.1:1")
    # Scheme, host and port all count: an https page with the same host and port is
    # another origin.
    await _refused(ws_url, additional_headers=cookie, origin=a.url.replace("http", "https"))
    await _refused(ws_url, additional_headers=cookie, origin=f"http://localhost:{a.port}")
    # Malformed: refused the same way, never a 500 (urlsplit raised on these).
    for garbage in ("http://127.0.0.1:99999", "http://[::1", f"http://é:{a.port}", "null"):
        await _refused(ws_url, additional_headers=cookie, origin=garbage)
    async with ws_connect(a.url, additional_headers=cookie, origin=a.url) as ws:
        await ws.send(type="ping")
        assert (await ws.recv())["type"] == "pong"


async def test_socket_is_closed_when_its_token_expires(
    pair: tuple[Instance, Instance], secret_key: str
) -> None:
    """A socket lives no longer than its token: at expiry it is closed with 1008."""
    a, _ = pair
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        user = await new_user(http)
    short = issue_token(user.name, secret_key, 2, user.session_id)
    async with ws_connect(a.url, short) as ws:
        joined, _ = await ws.join(unique("r-"))
        assert joined["online"] == [user.name]
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv(timeout=10)  # nothing else arrives in this room before the close
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
