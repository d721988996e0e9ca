"""Fixtures of the fault suite: users made straight in the database, instances made to fail.

Each scenario runs real `chat serve` processes against a real PostgreSQL on loopback, breaks
something on purpose, and ends with the checks of harness.py.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service import migrate, pgcluster
from service.settings import Settings
from tests.faults.harness import make_users
from tests.support import Instance, User

# Storms send as fast as the service stores: the per-socket rate limit is not what is tested.
STORM_ENV: dict[str, Any] = {"CHAT_RATE_LIMIT_PER_SECOND": 0}

MakeUsers = Callable[..., Awaitable[list[User]]]


@pytest.fixture
def users(database_url: str, secret_key: str) -> MakeUsers:
    """`await users(n)` (or `users(n, database=url)`): n users with tokens."""

    async def make(n: int, database: str | None = None) -> list[User]:
        return await make_users(database or database_url, secret_key, n)

    return make


@pytest.fixture
def start_instances(
    spawn: Callable[..., Instance],
) -> Iterator[Callable[..., Awaitable[list[Instance]]]]:
    """`await start_instances(n, database=None, **env)`: n fresh instances of this test's
    own, ready; stopped when the test ends (the ones it killed are simply gone)."""
    started: list[Instance] = []

    async def start(n: int, database: str | None = None, **env: Any) -> list[Instance]:
        instances = [spawn(database, **{**STORM_ENV, **env}) for _ in range(n)]
        started.extend(instances)
        for instance in instances:
            await instance.wait_ready()
        return instances

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture(scope="package")
def cluster() -> Iterator[pgcluster.Cluster]:
    """A private PostgreSQL server that this module may stop and start."""
    root = Path(tempfile.mkdtemp(prefix="chat-fault-pg-"))
    root.chmod(0o755)  # the server runs as another user and must reach its data dir
    server = pgcluster.start_cluster(root / "data")
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def cluster_database(cluster: pgcluster.Cluster) -> str:
    pgcluster.ensure_database(cluster.admin_url, "chat")
    url = cluster.url("chat")
    migrate.upgrade(Settings(database_url=url))
    return url
