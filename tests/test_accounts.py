"""Accounts and authentication over REST: registration, login, cookie, tokens, limits."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import jwt
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from service import security
from service.app import create_app
from service.settings import Settings
from tests.support import PASSWORD, app_client, new_user, unique

PROTECTED = [
    ("GET", "/api/me"),
    ("GET", "/api/rooms"),
    ("GET", "/api/rooms/{room}/messages"),
    ("POST", "/api/rooms/{room}/messages"),
    ("GET", "/api/rooms/{room}/online"),
]


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def session_cookie(response: httpx.Response) -> str:
    cookies = [c for c in set_cookies(response) if c.startswith("session=")]
    assert len(cookies) == 1, set_cookies(response)
    return cookies[0]


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def register(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> int:
    r = await client.post("/api/users", json={"username": username, "password": password})
    return r.status_code


async def me(app: FastAPI, token: str) -> int:
    """GET /api/me with a bearer token, from a client without cookies."""
    async with app_client(app) as fresh:
        r = await fresh.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        return r.status_code


# -- registration ------------------------------------------------------------------------


async def test_register_returns_201_with_lower_case_name(client: httpx.AsyncClient) -> None:
    """Registration answers 201 with the name, stored lower-case."""
    name = unique("Reg_")
    r = await client.post("/api/users", json={"username": name, "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert r.json() == {"username": name.lower()}


async def test_duplicate_name_is_409_case_insensitively(client: httpx.AsyncClient) -> None:
    """A name taken in any letter case is refused with 409."""
    name = unique("alice_")
    assert await register(client, name.capitalize()) == 201
    assert await register(client, name) == 409
    assert await register(client, name.upper(), "another password 123") == 409


async def test_concurrent_registrations_of_one_name(app: FastAPI) -> None:
    """Five registrations of one name at once: exactly one 201, the others 409."""
    name = unique("race_")
    async with app_client(app) as c:
        async with asyncio.timeout(60):
            codes = await asyncio.gather(*(register(c, name) for _ in range(5)))
    assert sorted(codes) == [201, 409, 409, 409, 409]


@pytest.mark.parametrize(
    "username",
    [
        "",
        "ab",
        "x" * 33,
        "bad!name",
        "bad name",
        "tab\tname",
        ".leading-dot",
        "-leading-dash",
        "ünïcödé_name",
        "slash/name",
        "at@name",
    ],
)
async def test_invalid_username_is_422(client: httpx.AsyncClient, username: str) -> None:
    """Names outside ^[a-z0-9_][a-z0-9_.-]{2,31}$ (after lower-casing) are refused."""
    assert await register(client, username) == 422


@pytest.mark.parametrize("username", ["_u{}", "u.{}", "u-{}", "9{}"])
async def test_valid_username_shapes(client: httpx.AsyncClient, username: str) -> None:
    """Leading '_' or digit, inner '.', '-' are allowed."""
    assert await register(client, username.format(unique(""))) == 201


async def test_longest_username_is_accepted(client: httpx.AsyncClient) -> None:
    """A 32-character name is accepted."""
    name = unique("long_").ljust(32, "x")
    assert len(name) == 32
    assert await register(client, name) == 201


@pytest.mark.parametrize("password", ["", "1234567", "p" * 129])
async def test_invalid_password_is_422(client: httpx.AsyncClient, password: str) -> None:
    """Passwords shorter than 8 or longer than 128 characters are refused."""
    assert await register(client, unique("pw_"), password) == 422


@pytest.mark.parametrize("password", ["12345678", "p" * 128, "pässwörd😀"])
async def test_password_bounds_accepted(client: httpx.AsyncClient, password: str) -> None:
    """8 and 128 characters (counted as characters, not bytes) are accepted and log in."""
    name = unique("pw_")
    assert await register(client, name, password) == 201
    r = await client.post("/api/token", data={"username": name, "password": password})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "payload",
    [
        {"username": "missing_password"},
        {"password": PASSWORD},
        {"username": 12345, "password": PASSWORD},
        {"username": ["a", "b", "c"], "password": PASSWORD},
        {"username": "okname_x", "password": 12345678},
    ],
)
async def test_malformed_registration_is_422(
    client: httpx.AsyncClient, payload: dict[str, object]
) -> None:
    """Missing or wrongly typed fields are 422, not 500."""
    r = await client.post("/api/users", json=payload)
    assert r.status_code == 422, r.text


async def test_registration_body_not_json_is_422(client: httpx.AsyncClient) -> None:
    """A body that is not JSON is 422."""
    r = await client.post(
        "/api/users", content=b"username=x", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


# -- login -------------------------------------------------------------------------------


async def test_login_returns_token_and_session_cookie(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Login answers the OAuth2 token fields and sets an HttpOnly, SameSite=Lax `session`."""
    name = unique("login_")
    assert await register(client, name) == 201
    r = await client.post("/api/token", data={"username": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.token_ttl_seconds
    assert isinstance(body["access_token"], str) and body["access_token"]
    cookie = session_cookie(r)
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert attributes[0] == f"session={body['access_token']}".lower()
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "path=/" in attributes
    assert f"max-age={settings.token_ttl_seconds}" in attributes
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == name
    assert claims["exp"] - claims["iat"] == settings.token_ttl_seconds


async def test_token_response_is_not_cached(client: httpx.AsyncClient) -> None:
    """The token response says Cache-Control: no-store (RFC 6749, 5.1)."""
    name = unique("nostore_")
    assert await register(client, name) == 201
    r = await client.post("/api/token", data={"username": name, "password": PASSWORD})
    assert "no-store" in r.headers.get("cache-control", "")


async def test_cookie_is_secure_over_https(app: FastAPI) -> None:
    """Over https the session cookie is marked Secure."""
    name = unique("https_")
    transport = httpx.ASGITransport(app=app, client=("198.51.100.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://chat.example") as c:
        assert await register(c, name) == 201
        r = await c.post("/api/token", data={"username": name, "password": PASSWORD})
    assert r.status_code == 200
    assert "secure" in [part.strip().lower() for part in session_cookie(r).split(";")]


async def test_login_is_case_insensitive(client: httpx.AsyncClient, app: FastAPI) -> None:
    """Logging in as 'NAME' is logging in as 'name'; /api/me answers the stored name."""
    name = unique("case_")
    assert await register(client, name) == 201
    r = await client.post("/api/token", data={"username": name.upper(), "password": PASSWORD})
    assert r.status_code == 200, r.text
    async with app_client(app) as fresh:
        r = await fresh.get(
            "/api/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"}
        )
    assert r.json() == {"username": name, "admin": False}


async def test_wrong_password_is_401(client: httpx.AsyncClient) -> None:
    """A wrong password is 401 and sets no cookie."""
    name = unique("wrong_")
    assert await register(client, name) == 201
    r = await client.post("/api/token", data={"username": name, "password": PASSWORD + "!"})
    assert r.status_code == 401
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert not [c for c in set_cookies(r) if c.startswith("session=")]


async def test_unknown_user_is_401(client: httpx.AsyncClient) -> None:
    """An unknown user gets the same 401 as a wrong password."""
    r = await client.post("/api/token", data={"username": unique("ghost_"), "password": PASSWORD})
    assert r.status_code == 401
    known = unique("known_")
    assert await register(client, known) == 201
    wrong = await client.post("/api/token", data={"username": known, "password": "x" * 12})
    assert wrong.json() == r.json()


@pytest.mark.parametrize(
    "form",
    [
        b"username=a%00b&password=xxxxxxxxxx",
        b"username=%ff%fe&password=xxxxxxxxxx",
        b"username=%ED%A0%80&password=xxxxxxxxxx",
        b"username=" + b"x" * 10_000 + b"&password=xxxxxxxxxx",
        b"username=&password=xxxxxxxxxx",
        b"username=some_name&password=a%00b%ff",
    ],
)
async def test_login_with_impossible_names_is_401(client: httpx.AsyncClient, form: bytes) -> None:
    """Names no account can have (NUL, bad UTF-8, huge, empty): 401 or 422, never a 500."""
    r = await client.post(
        "/api/token", content=form, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code in (401, 422), r.text


async def test_login_with_json_body_is_422(client: httpx.AsyncClient) -> None:
    """The token endpoint takes form fields (OAuth2), not JSON."""
    r = await client.post("/api/token", json={"username": "someone", "password": PASSWORD})
    assert r.status_code == 422


# -- the cookie --------------------------------------------------------------------------


async def test_cookie_alone_authenticates(app: FastAPI) -> None:
    """After login, the `session` cookie without any header authenticates GET /api/me."""
    name = unique("cookie_")
    async with app_client(app) as browser:
        assert await register(browser, name) == 201
        r = await browser.post("/api/token", data={"username": name, "password": PASSWORD})
        assert r.status_code == 200
        assert browser.cookies.get("session") == r.json()["access_token"]
        r = await browser.get("/api/me")
        assert r.status_code == 200, r.text
        assert r.json() == {"username": name, "admin": False}


async def test_logout_clears_the_cookie(app: FastAPI) -> None:
    """POST /api/logout expires the cookie; the browser is then anonymous again."""
    name = unique("logout_")
    async with app_client(app) as browser:
        assert await register(browser, name) == 201
        await browser.post("/api/token", data={"username": name, "password": PASSWORD})
        assert (await browser.get("/api/me")).status_code == 200
        r = await browser.post("/api/logout")
        assert r.status_code in (200, 204)
        cookie = session_cookie(r).lower()
        expired = "max-age=0" in cookie or "expires=thu, 01 jan 1970" in cookie
        assert expired, cookie
        assert "session" not in browser.cookies
        assert (await browser.get("/api/me")).status_code == 401


# -- tokens ------------------------------------------------------------------------------


async def test_bearer_token_authenticates(client: httpx.AsyncClient, app: FastAPI) -> None:
    """The access token as `Authorization: Bearer` authenticates."""
    user = await new_user(client)
    assert await me(app, user.token) == 200


async def test_expired_token_is_refused(
    client: httpx.AsyncClient, app: FastAPI, secret_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token past its `exp` is refused (issued by the service an hour ago, ttl 60 s)."""
    user = await new_user(client)
    an_hour_ago = time.time() - 3600
    monkeypatch.setattr(security, "time", SimpleNamespace(time=lambda: an_hour_ago))
    stale = security.issue_token(user.name, secret_key, 60, user.session_id)
    monkeypatch.undo()
    assert await me(app, stale) == 401
    assert await me(app, security.issue_token(user.name, secret_key, 60, user.session_id)) == 200


async def test_expired_pyjwt_token_is_refused(
    client: httpx.AsyncClient, app: FastAPI, secret_key: str
) -> None:
    """A correctly signed token whose exp passed a second ago is refused."""
    user = await new_user(client)
    now = int(time.time())
    token = jwt.encode(
        {"sub": user.name, "iat": now - 120, "exp": now - 1, "sid": str(user.session_id)},
        secret_key,
        algorithm="HS256",
    )
    assert await me(app, token) == 401


async def test_token_signed_with_another_secret_is_refused(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """A token signed with any other key is refused."""
    user = await new_user(client)
    now = int(time.time())
    claims = {"sub": user.name, "iat": now, "exp": now + 600, "sid": str(user.session_id)}
    forged = jwt.encode(claims, "another-secret-" + "x" * 40, algorithm="HS256")
    assert await me(app, forged) == 401


async def test_alg_none_token_is_refused(
    client: httpx.AsyncClient, app: FastAPI, secret_key: str
) -> None:
    """An unsigned token (`alg: none`) is refused, whatever its claims."""
    user = await new_user(client)
    now = int(time.time())
    claims = {"sub": user.name, "iat": now, "exp": now + 600, "sid": str(user.session_id)}
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    assert await me(app, unsigned) == 401
    # The signature of a real token does not make another alg acceptable either.
    signature = user.token.rsplit(".", 1)[1]
    assert await me(app, f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.{signature}") == 401
    hs512 = jwt.encode(claims, secret_key, algorithm="HS512")
    assert await me(app, hs512) == 401


@pytest.mark.parametrize("missing", ["sub", "exp", "iat", "sid"])
async def test_token_without_required_claim_is_refused(
    client: httpx.AsyncClient, app: FastAPI, secret_key: str, missing: str
) -> None:
    """Signed tokens that lack sub, exp, iat or sid (every v1 token) are refused; with all
    four the same claims pass."""
    user = await new_user(client)
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user.name,
        "iat": now,
        "exp": now + 600,
        "sid": str(user.session_id),
    }
    assert await me(app, jwt.encode(claims, secret_key, algorithm="HS256")) == 200
    del claims[missing]
    assert await me(app, jwt.encode(claims, secret_key, algorithm="HS256")) == 401


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "Bearer", "x" * 5000])
async def test_malformed_token_is_refused(app: FastAPI, token: str) -> None:
    """Tokens that are not JWTs at all are 401, never 500."""
    async with app_client(app) as fresh:
        r = await fresh.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


async def test_bad_cookie_is_refused(app: FastAPI) -> None:
    """A `session` cookie that is not a valid token is 401."""
    async with app_client(app) as browser:
        browser.cookies.set("session", "not-a-token", domain="testserver")
        assert (await browser.get("/api/me")).status_code == 401


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_endpoints_need_credentials(
    app: FastAPI, client: httpx.AsyncClient, method: str, path: str
) -> None:
    """Every /api endpoint but registration, login and logout is 401 without credentials."""
    user = await new_user(client)
    room = unique("auth-")
    r = await client.post(f"/api/rooms/{room}/messages", json={"body": "hi"}, headers=user.headers)
    assert r.status_code == 201  # the room exists, so only authentication can refuse
    async with app_client(app) as anonymous:
        body = {"body": "hello"} if method == "POST" else None
        r = await anonymous.request(method, path.format(room=room), json=body)
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
    # Nothing was stored by the refused post.
    r = await client.get(f"/api/rooms/{room}/messages", headers=user.headers)
    assert [m["seq"] for m in r.json()["messages"]] == [1]


# -- the login limit ---------------------------------------------------------------------


@pytest.fixture
async def limited_app(database_url: str, secret_key: str) -> AsyncIterator[FastAPI]:
    """An app of its own that allows 3 login attempts per minute."""
    settings = Settings(
        database_url=database_url,
        secret_key=secret_key,
        log_format="text",
        login_attempts_per_minute=3,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_login_attempts_are_limited_per_username(limited_app: FastAPI) -> None:
    """After CHAT_LOGIN_ATTEMPTS_PER_MINUTE attempts for one name the next is 429 with
    Retry-After, even with the right password and from another client."""
    name = unique("brute_")
    async with app_client(limited_app) as attacker:
        assert await register(attacker, name) == 201
        for _ in range(3):
            r = await attacker.post("/api/token", data={"username": name, "password": "x" * 10})
            assert r.status_code == 401
        r = await attacker.post("/api/token", data={"username": name, "password": "x" * 10})
        assert r.status_code == 429
        retry_after = int(r.headers["retry-after"])
        assert 1 <= retry_after <= 60
        r = await attacker.post("/api/token", data={"username": name.upper(), "password": PASSWORD})
        assert r.status_code == 429
    async with app_client(limited_app) as elsewhere:
        r = await elsewhere.post("/api/token", data={"username": name, "password": PASSWORD})
        assert r.status_code == 429


async def test_login_limit_of_one_name_spares_other_names(limited_app: FastAPI) -> None:
    """Exhausting one name's attempts from a client does not lock another name elsewhere."""
    victim, other = unique("victim_"), unique("other_")
    async with app_client(limited_app) as attacker:
        assert await register(attacker, victim) == 201
        for _ in range(4):
            await attacker.post("/api/token", data={"username": victim, "password": "x" * 10})
    async with app_client(limited_app) as elsewhere:
        assert await register(elsewhere, other) == 201
        r = await elsewhere.post("/api/token", data={"username": other, "password": PASSWORD})
        assert r.status_code == 200, r.text


async def test_many_users_may_log_in_from_one_client(limited_app: FastAPI) -> None:
    """The per-name attempt limit does not cap successful logins of different users from
    one address (an office behind NAT, a reverse proxy)."""
    async with app_client(limited_app, host="203.0.113.7") as office:
        names = [unique("staff_") for _ in range(6)]
        for name in names:
            assert await register(office, name) == 201
        for name in names:
            r = await office.post("/api/token", data={"username": name, "password": PASSWORD})
            assert r.status_code == 200, f"login {names.index(name) + 1}: {r.status_code}"


def verifications() -> float:
    """argon2 verifications run in this process so far (every app's)."""
    return REGISTRY.get_sample_value("chat_password_checks_total", {"op": "verify"}) or 0.0


async def test_concurrent_guesses_cost_at_most_the_budget(limited_app: FastAPI) -> None:
    """20 wrong guesses for one name at once: the budget (3) are verified and answer 401,
    the 17 others answer 429 at once, without a verification: each guess holds its token
    before its password is checked."""
    name = unique("swarm_")
    async with app_client(limited_app) as attacker:
        assert await register(attacker, name) == 201
        before = verifications()
        async with asyncio.timeout(60):
            answers = await asyncio.gather(
                *(
                    attacker.post("/api/token", data={"username": name, "password": f"guess {i}"})
                    for i in range(20)
                )
            )
    codes = sorted(r.status_code for r in answers)
    assert codes == [401] * 3 + [429] * 17
    assert verifications() - before == 3
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in answers if r.status_code == 429)


async def test_successes_give_their_failure_tokens_back(limited_app: FastAPI) -> None:
    """Logging in rightly, even often and concurrently, costs none of the name's failure
    budget: the 3 wrong guesses that follow still answer 401, the fourth 429."""
    name = unique("often_")
    async with app_client(limited_app) as browser:
        assert await register(browser, name) == 201
        async with asyncio.timeout(60):
            right = await asyncio.gather(
                *(
                    browser.post("/api/token", data={"username": name, "password": PASSWORD})
                    for _ in range(3)
                )
            )
            assert [r.status_code for r in right] == [200] * 3
            for expected in (401, 401, 401, 429):
                r = await browser.post("/api/token", data={"username": name, "password": "x" * 9})
                assert r.status_code == expected


async def test_successful_logins_are_limited_per_address(
    database_url: str, secret_key: str
) -> None:
    """Past CHAT_LOGINS_PER_MINUTE successful logins from one address the next login is
    429 with Retry-After, whoever it is for; another address still logs in."""
    settings = Settings(
        database_url=database_url, secret_key=secret_key, log_format="text", logins_per_minute=2
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        names = [unique("many_") for _ in range(3)]
        async with app_client(application) as one:
            for name in names:
                assert await register(one, name) == 201
            for name in names[:2]:
                r = await one.post("/api/token", data={"username": name, "password": PASSWORD})
                assert r.status_code == 200
            r = await one.post("/api/token", data={"username": names[2], "password": PASSWORD})
            assert r.status_code == 429
            assert 1 <= int(r.headers["retry-after"]) <= 60
        async with app_client(application) as other:
            r = await other.post("/api/token", data={"username": names[2], "password": PASSWORD})
            assert r.status_code == 200


async def test_busy_password_threads_answer_503_at_once(database_url: str, secret_key: str) -> None:
    """With one password thread and no queue, logins that find it busy are answered 503 with
    Retry-After at once, and cost no budget: with one failure allowed per name, the same
    guess again is verified (401), not refused (429)."""
    settings = Settings(
        database_url=database_url,
        secret_key=secret_key,
        log_format="text",
        password_threads=1,
        password_queue_limit=0,
        login_attempts_per_minute=1,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        clients = [app_client(application) for _ in range(4)]
        names = [unique("nobody_") for _ in clients]
        try:

            async def guess(k: int) -> httpx.Response:
                form = {"username": names[k], "password": "x" * 9}
                return await clients[k].post("/api/token", data=form)

            async with asyncio.timeout(60):
                answers = await asyncio.gather(*(guess(k) for k in range(len(clients))))
                codes = [r.status_code for r in answers]
                assert set(codes) == {401, 503}, codes
                busy = [k for k, code in enumerate(codes) if code == 503]
                assert all(answers[k].headers["retry-after"] == "1" for k in busy)
                for k in busy:
                    assert (await guess(k)).status_code == 401
        finally:
            for c in clients:
                await c.aclose()


# -- the registration limit --------------------------------------------------------------


async def test_registrations_are_limited_per_address(database_url: str, secret_key: str) -> None:
    """Past CHAT_REGISTRATIONS_PER_MINUTE from one address: 429 with Retry-After, nothing
    created; another address may still register."""
    settings = Settings(
        database_url=database_url,
        secret_key=secret_key,
        log_format="text",
        registrations_per_minute=2,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        async with app_client(application) as one:
            assert await register(one, unique("reg_")) == 201
            assert await register(one, unique("reg_")) == 201
            refused = unique("reg_")
            r = await one.post("/api/users", json={"username": refused, "password": PASSWORD})
            assert r.status_code == 429
            assert 1 <= int(r.headers["retry-after"]) <= 60
            r = await one.post("/api/token", data={"username": refused, "password": PASSWORD})
            assert r.status_code == 401  # it was not created
        async with app_client(application) as other:
            assert await register(other, unique("reg_")) == 201
