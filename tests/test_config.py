"""GET /api/config: every field of the contract, from the app's own settings, with name
patterns that accept and refuse exactly what the server's validation does; and the fields
this server adds (README, API): the bounds that search, registration and reactions enforce."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.protocol import PROTOCOL_VERSION
from service.search_text import MAX_QUERY_CHARS
from service.settings import Settings
from service.validation import check_emoji, check_room, normalize_username
from tests.support import ROOM_NAMES, USERNAMES, accepts, app_client, new_user, unique

INT_FIELDS = {
    "protocol",
    "max_search_chars",
    "min_password_chars",
    "max_password_chars",
    "max_emoji_chars",
    "max_message_chars",
    "max_frame_bytes",
    "replay_limit",
    "resume_limit",
    "max_rooms_per_connection",
    "rate_limit_burst",
    "max_emoji_per_message",
}
# Added to the contract's fields (README, API): clients that know only those ignore them.
ADDED = {"max_search_chars", "min_password_chars", "max_password_chars", "max_emoji_chars"}
FIELDS = INT_FIELDS | ADDED | {"rate_limit_per_second", "room_pattern", "username_pattern"}
LIMITS = FIELDS - ADDED - {"protocol", "room_pattern", "username_pattern"}


async def test_config_has_every_field_and_needs_no_authentication(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Exactly the contract's fields and the added ones, typed, from the app's settings; no
    token, no cookie."""
    r = await client.get("/api/config")
    assert r.status_code == 200, r.text
    config = r.json()
    assert set(config) == FIELDS
    for name in INT_FIELDS:
        assert type(config[name]) is int, (name, config[name])
    assert type(config["rate_limit_per_second"]) in (int, float)
    assert type(config["room_pattern"]) is str and type(config["username_pattern"]) is str
    assert config["protocol"] == PROTOCOL_VERSION
    for name in LIMITS:
        assert config[name] == getattr(settings, name), name


async def test_config_is_documented_as_public(client: httpx.AsyncClient) -> None:
    """OpenAPI describes the answer with every field required, and no security scheme."""
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/api/config"]["get"]
    assert "security" not in operation
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    model = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(model["properties"]) == FIELDS
    assert set(model["required"]) == FIELDS


async def test_max_search_chars_is_the_bound_search_enforces(client: httpx.AsyncClient) -> None:
    """A query of `max_search_chars` characters is searched; one more is refused (422)."""
    bound = (await client.get("/api/config")).json()["max_search_chars"]
    assert bound == MAX_QUERY_CHARS
    user = await new_user(client)
    for length, status in ((bound, 200), (bound + 1, 422)):
        r = await client.get("/api/search", params={"q": "é" * length}, headers=user.headers)
        assert r.status_code == status, (length, r.text)


async def test_password_bounds_are_the_ones_registration_enforces(
    client: httpx.AsyncClient,
) -> None:
    """Passwords of `min_password_chars` and `max_password_chars` characters register; one
    fewer and one more are refused (422)."""
    config = (await client.get("/api/config")).json()
    low, high = config["min_password_chars"], config["max_password_chars"]
    for length, status in ((low - 1, 422), (low, 201), (high, 201), (high + 1, 422)):
        name = unique("pw_")[:32]
        r = await client.post("/api/users", json={"username": name, "password": "é" * length})
        assert r.status_code == status, (length, r.text)


async def test_max_emoji_chars_is_the_bound_reactions_enforce(client: httpx.AsyncClient) -> None:
    """A reaction key of `max_emoji_chars` code points (astral ones) passes the check; one
    more is refused."""
    bound = (await client.get("/api/config")).json()["max_emoji_chars"]
    assert check_emoji("\U0001f600" * bound)
    assert not accepts(check_emoji, "\U0001f600" * (bound + 1))


@pytest.fixture
async def tuned_app(database_url: str, secret_key: str) -> AsyncIterator[FastAPI]:
    """An app of its own whose every reported limit differs from its default."""
    settings = Settings(
        database_url=database_url,
        secret_key=secret_key,
        log_format="text",
        max_message_chars=50,
        max_frame_bytes=2048,
        replay_limit=7,
        resume_limit=99,
        max_rooms_per_connection=3,
        rate_limit_per_second=2.5,
        rate_limit_burst=5,
        max_emoji_per_message=4,
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def test_config_follows_the_settings_given_to_create_app(tuned_app: FastAPI) -> None:
    """Each limit is the one the app was built with, not a default."""
    async with app_client(tuned_app) as client:
        config = (await client.get("/api/config")).json()
    assert {name: config[name] for name in LIMITS} == {
        "max_message_chars": 50,
        "max_frame_bytes": 2048,
        "replay_limit": 7,
        "resume_limit": 99,
        "max_rooms_per_connection": 3,
        "rate_limit_per_second": 2.5,
        "rate_limit_burst": 5,
        "max_emoji_per_message": 4,
    }
    assert all(config[name] != Settings.model_fields[name].default for name in LIMITS)


async def test_room_pattern_refuses_what_the_server_refuses(client: httpx.AsyncClient) -> None:
    """The reported room pattern accepts a name exactly when the socket's check and the REST
    path parameter do."""
    pattern = (await client.get("/api/config")).json()["room_pattern"]
    user = await new_user(client)
    verdicts = []
    for name in ROOM_NAMES:
        by_pattern = re.fullmatch(pattern, name) is not None
        assert accepts(check_room, name) is by_pattern, name
        verdicts.append(by_pattern)
        if name and "/" not in name:  # those never reach the route
            r = await client.get(
                f"/api/rooms/{quote(name, safe='')}/messages", headers=user.headers
            )
            assert (r.status_code != 422) is by_pattern, (name, r.status_code, r.text)
            assert r.status_code in (200, 404, 422), (name, r.status_code)
    assert any(verdicts) and not all(verdicts)


async def test_username_pattern_refuses_what_the_server_refuses(client: httpx.AsyncClient) -> None:
    """The reported username pattern (applied to the lower-cased name) accepts a name exactly
    when registration's check does; a refused one is 422 on POST /api/users."""
    pattern = (await client.get("/api/config")).json()["username_pattern"]
    verdicts = []
    for name in USERNAMES + [n.upper() for n in USERNAMES]:
        by_pattern = re.fullmatch(pattern, name.lower()) is not None
        assert accepts(normalize_username, name) is by_pattern, name
        verdicts.append(by_pattern)
        if not by_pattern:
            r = await client.post("/api/users", json={"username": name, "password": "x" * 12})
            assert r.status_code == 422, (name, r.text)
    assert any(verdicts) and not all(verdicts)
