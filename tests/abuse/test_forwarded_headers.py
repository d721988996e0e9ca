"""X-Forwarded-Proto and X-Forwarded-For from an address outside CHAT_FORWARDED_ALLOW_IPS are
ignored (the session cookie is not Secure, the origin check uses the connection's own
scheme, per-address limits see the connection's address); from a trusted proxy they are
honoured, as behind a TLS-terminating balancer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.support import PASSWORD, Instance, unique

# At most this many registrations per client address and minute on both instances.
REGISTRATIONS = 3


async def _handshake(instance: Instance, token: str, origin: str) -> int:
    """The status of a cookie-authenticated handshake that claims to come over HTTPS."""
    url = instance.url.replace("http", "ws", 1) + "/ws"
    headers = {"Cookie": f"session={token}", "X-Forwarded-Proto": "https"}
    try:
        async with websockets.connect(
            url,
            origin=origin,  # type: ignore[arg-type]
            additional_headers=headers,
            open_timeout=10,
            close_timeout=5,
        ):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def _as_seen_through(instance: Instance) -> dict[str, object]:
    """Register REGISTRATIONS + 1 users from distinct forwarded addresses, log the last one
    in over forwarded HTTPS, and open sockets with its cookie from both schemes' origins."""
    statuses = []
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        names = [unique("fw_") for _ in range(REGISTRATIONS + 1)]
        for n, name in enumerate(names):
            r = await http.post(
                "/api/users",
                json={"username": name, "password": PASSWORD},
                headers={"X-Forwarded-For": f"203.0.113.{n + 1}"},
            )
            statuses.append(r.status_code)
        r = await http.post(
            "/api/token",
            data={"username": names[0], "password": PASSWORD},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.99"},
        )
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"]
        token = r.json()["access_token"]
        hsts = "strict-transport-security" in r.headers
    host = f"127.0.0.1:{instance.port}"
    return {
        "registrations": statuses,
        "secure_cookie": "secure" in [p.strip().lower() for p in cookie.split(";")],
        "hsts": hsts,
        "https_origin": await _handshake(instance, token, f"https://{host}"),
        "http_origin": await _handshake(instance, token, f"http://{host}"),
    }


@pytest.mark.parametrize(
    ("trusted", "seen"),
    [
        (
            "192.0.2.1",  # a proxy that is not this client: loopback is not trusted
            {
                "registrations": [201] * REGISTRATIONS + [429],  # all from 127.0.0.1
                "secure_cookie": False,
                "hsts": False,
                "https_origin": 403,  # the connection is ws:, so the page must be http:
                "http_origin": 101,
            },
        ),
        (
            None,  # the default: loopback is the trusted proxy
            {
                "registrations": [201] * (REGISTRATIONS + 1),  # each its own address
                "secure_cookie": True,
                "hsts": True,
                "https_origin": 101,
                "http_origin": 403,  # an http: page may not use the https: site's cookie
            },
        ),
    ],
)
async def test_forwarded_headers_only_from_trusted_proxies(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
    trusted: str | None,
    seen: dict[str, object],
) -> None:
    env: dict[str, object] = {"CHAT_REGISTRATIONS_PER_MINUTE": REGISTRATIONS}
    if trusted is not None:
        env["CHAT_FORWARDED_ALLOW_IPS"] = trusted
    (instance,) = await hostile_instances(1, **env)
    assert await _as_seen_through(instance) == seen
