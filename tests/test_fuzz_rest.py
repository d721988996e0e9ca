"""The REST API against its own OpenAPI schema (schemathesis): generated requests, valid and
invalid, with a real token; no 5xx, and every response conforms to the schema."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from service import migrate
from service.app import create_app
from service.settings import Settings
from tests.support import Instance, User, new_user


def _openapi() -> dict[str, Any]:
    """The app's schema, without starting it (nothing connects before the lifespan)."""
    app = create_app(Settings(database_url="postgresql://schema-only/none", secret_key="s" * 48))
    document: dict[str, Any] = app.openapi()
    return document


schema = schemathesis.openapi.from_dict(_openapi())


@pytest.fixture(scope="module")
def rest_database(new_database: Callable[[], str]) -> str:
    """A database of its own: the fuzzer registers users and posts junk."""
    url = new_database()
    migrate.upgrade(Settings(database_url=url))
    return url


@pytest.fixture(scope="module")
async def rest_target(
    spawn: Callable[..., Instance], rest_database: str
) -> AsyncIterator[Instance]:
    instance = spawn(rest_database, CHAT_RATE_LIMIT_PER_SECOND=0)
    await instance.wait_ready()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
async def rest_user(rest_target: Instance) -> User:
    async with httpx.AsyncClient(base_url=rest_target.url, timeout=10) as http:
        return await new_user(http)


def success_body_conforms(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 2xx body conforms to its schema. Error bodies are checked by hand in the tests of
    each route: api.py raises 422 with a string `detail`, and documents neither that nor
    its 401, 404 and 409 answers (reported)."""
    if response.status_code < 300:
        result: bool | None = checks.response_schema_conformance(ctx, response, case)
        return result
    return None


CHECKS = [
    checks.not_a_server_error,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
    checks.ignored_auth,
    success_body_conforms,
]


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_schema(case: Any, rest_target: Instance, rest_user: User) -> None:
    """No 5xx; 2xx bodies as documented; invalid input refused; no route ignores the token."""
    case.call_and_validate(
        base_url=rest_target.url, headers=rest_user.headers, timeout=30, checks=CHECKS
    )


def test_no_traceback_logged(rest_target: Instance) -> None:
    """Runs after the fuzzing above: the instance logged no traceback or error."""
    log = rest_target.log_path.read_text(errors="replace")
    assert "Traceback" not in log and " ERROR " not in log, rest_target.log_tail(60)
