"""/metrics on real instances: with CHAT_METRICS_TOKEN, anyone without its bearer gets 401
and no metric, however they guess; without it, /metrics is open, as before."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from tests.support import Instance

TOKEN = "scrape-" + "m" * 40


async def test_metrics_need_the_token_when_one_is_set(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
) -> None:
    (guarded,) = await hostile_instances(1, CHAT_METRICS_TOKEN=TOKEN)
    (open_,) = await hostile_instances(1)
    guesses = [
        {},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN[:-1]}n"},
        {"Authorization": f"Bearer{TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}{TOKEN}"},
        {"Authorization": "Bearer"},
        {"Cookie": f"session={TOKEN}"},
    ]
    async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as http:
        for n in range(200):  # a guesser at it, and every guess answered the same way
            headers = guesses[n % len(guesses)]
            if n >= len(guesses):
                headers = {"Authorization": f"Bearer {TOKEN[:-3]}{n:03d}"}
            r = await http.get("/metrics", headers=headers)
            assert (r.status_code, r.headers.get("www-authenticate")) == (401, "Bearer"), headers
            assert r.json() == {"detail": "not authenticated: /metrics needs its bearer token"}
        r = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        assert "chat_http_requests_total" in r.text
        # The 200 refusals were counted like any other request.
        refused = [
            line
            for line in r.text.splitlines()
            if line.startswith("chat_http_requests_total{") and 'status="401"' in line
        ]
        assert refused and float(refused[0].split()[-1]) >= 200, refused
        assert (await http.get("/readyz")).status_code == 200  # probes need no token
    async with httpx.AsyncClient(base_url=open_.url, timeout=10) as http:
        r = await http.get("/metrics")
        assert r.status_code == 200 and "chat_connections" in r.text
