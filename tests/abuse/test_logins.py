"""Login abuse against a real instance. Guesses for one name sent all at once cost at most
that name's budget of argon2 verifications (each holds its token before it is verified). A
flood of logins over many names fills the password threads' bounded queue and no more (the
rest are answered 503 at once), while a bystander's REST request and socket ping keep
answering about as fast as when the instance was idle."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.faults.harness import make_users, metric
from tests.support import PASSWORD, Instance, WsClient, unique, ws_connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

VERIFICATIONS = 'chat_password_checks_total{op="verify"}'

GUESSES = 50
BUDGET = 10  # CHAT_LOGIN_ATTEMPTS_PER_MINUTE: failures per name

FLOODERS = 16
# A hostile client ignores Retry-After (1 s). Paced at a quarter of it, the flood still
# offers many times what one password thread verifies, and its 503s stay a small load:
# the test's own HTTP client and the instance share the machine, and a flood of plain HTTP
# requests is not what this scenario is about.
FLOOD_PAUSE_AFTER_503 = 0.25
QUEUE_LIMIT = 4
SAMPLES = 25
# Bystander latency under the flood, relative to the idle baseline of the same test: loose,
# since the flood's own requests share the event loop, and the password thread, the test
# and PostgreSQL share the machine's cores. Six password threads and an unbounded queue
# (asyncio's default executor on two cores) measured well past it (README, Abuse).
RATIO = 15.0


async def test_concurrent_guesses_for_one_name_cost_at_most_its_budget(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
) -> None:
    """50 wrong guesses for one name at once: exactly the budget (10) are verified, counted
    by the instance's own metric, and answer 401; the other 40 answer 429 with Retry-After."""
    (instance,) = await hostile_instances(
        1,
        CHAT_LOGIN_ATTEMPTS_PER_MINUTE=BUDGET,
        CHAT_PASSWORD_THREADS=1,
        CHAT_PASSWORD_QUEUE_LIMIT=GUESSES,  # the queue is not what this scenario is about
    )
    name = unique("target_")
    limits = httpx.Limits(max_connections=GUESSES)
    async with httpx.AsyncClient(base_url=instance.url, timeout=30, limits=limits) as http:
        r = await http.post("/api/users", json={"username": name, "password": PASSWORD})
        assert r.status_code == 201, r.text
        before = await metric(instance.url, VERIFICATIONS, 0)
        started = time.monotonic()
        async with asyncio.timeout(60):
            answers = await asyncio.gather(
                *(
                    http.post("/api/token", data={"username": name, "password": f"guess {i:03}"})
                    for i in range(GUESSES)
                )
            )
        elapsed = time.monotonic() - started
        verified = await metric(instance.url, VERIFICATIONS) - before
    codes = Counter(r.status_code for r in answers)
    print(f"\n{GUESSES} guesses in {elapsed:.2f} s: {dict(codes)}, {verified:.0f} verified")
    assert verified == codes[401] == BUDGET, (verified, codes)
    assert codes[429] == GUESSES - BUDGET, codes
    refused = [r for r in answers if r.status_code == 429]
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in refused)


async def _rest_ms(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    r = await http.get(path, headers=headers)
    assert r.status_code == 200, r.text
    return (time.perf_counter() - started) * 1000


async def _ping_ms(ws: WsClient, n: int) -> float:
    started = time.perf_counter()
    await ws.send(type="ping", ref=n)
    assert await ws.recv(timeout=10) == {"type": "pong", "ref": n}
    return (time.perf_counter() - started) * 1000


async def test_a_login_flood_fills_the_bounded_queue_and_starves_nobody(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
    database_url: str,
    secret_key: str,
) -> None:
    """16 clients log in to fresh names while a bystander takes 25 samples (no login
    budget in the way): the password queue reaches its bound and never passes it, every
    other attempt is answered 503 at once (verifications = 401s: a refusal costs no
    hash), and the bystander's history page and socket ping answer, at the median, within
    RATIO times their idle median."""
    (instance,) = await hostile_instances(
        1,
        CHAT_LOGIN_ATTEMPTS_PER_MINUTE=1_000_000,
        CHAT_PASSWORD_THREADS=1,
        CHAT_PASSWORD_QUEUE_LIMIT=QUEUE_LIMIT,
    )
    (bystander,) = await make_users(database_url, secret_key, 1, "by")
    room = unique("calm-")
    path = f"/api/rooms/{room}/messages"
    async with (
        httpx.AsyncClient(base_url=instance.url, timeout=30) as http,
        httpx.AsyncClient(base_url=instance.url, timeout=30) as probe,
        ws_connect(instance.url, bystander.token) as ws,
    ):
        r = await http.post(path, json={"body": "still here"}, headers=bystander.headers)
        assert r.status_code == 201, r.text
        await ws.join(room)

        async def sample(pause: float) -> tuple[list[float], list[float], list[float]]:
            rest, ping, depth = [], [], []
            for n in range(SAMPLES):
                rest.append(await _rest_ms(probe, path, bystander.headers))
                ping.append(await _ping_ms(ws, n))
                depth.append(await metric(instance.url, "chat_password_queue_depth"))
                await asyncio.sleep(pause)
            return rest, ping, depth

        async with asyncio.timeout(60):
            idle_rest, idle_ping, _ = await sample(0.02)
            before = await metric(instance.url, VERIFICATIONS, 0)
            codes: Counter[int] = Counter()
            stop = asyncio.Event()

            async def flood() -> None:
                # No request is cut off at the end: every verification started is counted.
                while not stop.is_set():
                    form = {"username": unique("flood_"), "password": "not the password"}
                    status = (await http.post("/api/token", data=form)).status_code
                    codes[status] += 1
                    if status == 503:
                        await asyncio.sleep(FLOOD_PAUSE_AFTER_503)

            flooders = [asyncio.create_task(flood()) for _ in range(FLOODERS)]
            await asyncio.sleep(0.5)  # the queue fills
            busy_rest, busy_ping, depths = await sample(0.1)
            stop.set()
            await asyncio.gather(*flooders)
        verified = await metric(instance.url, VERIFICATIONS) - before
        peak = await metric(instance.url, "chat_password_queue_peak")

    ratios = {
        "rest": statistics.median(busy_rest) / statistics.median(idle_rest),
        "ping": statistics.median(busy_ping) / statistics.median(idle_ping),
    }
    print(
        f"\nflood: {dict(codes)}, {verified:.0f} verified, queue peak {peak:.0f} "
        f"(sampled max {max(depths):.0f}); REST median idle {statistics.median(idle_rest):.1f} "
        f"-> {statistics.median(busy_rest):.1f} ms (max {max(busy_rest):.1f}), ping "
        f"{statistics.median(idle_ping):.1f} -> {statistics.median(busy_ping):.1f} ms "
        f"(max {max(busy_ping):.1f}); ratios {ratios}"
    )
    assert set(codes) <= {401, 503}, codes
    assert codes[503] > codes[401] > 0, codes  # the bound was reached, again and again
    assert verified == codes[401], (verified, codes)
    assert peak == QUEUE_LIMIT and max(depths) <= QUEUE_LIMIT, (peak, depths)
    assert ratios["rest"] <= RATIO and ratios["ping"] <= RATIO, ratios
