"""Alembic revisions on real, empty databases: up, down, up again, and several at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service import migrate
from service.models import Base
from service.settings import Settings
from tests.support import PROJECT

TABLES = {
    "reactions",
    "users",
    "rooms",
    "messages",
    "instances",
    "presence",
    "write_batches",
    "members",
    "events",
    "sessions",
    "mentions",
}
INDEXES = {
    "pk_users",
    "pk_rooms",
    "uq_rooms_name",
    "pk_messages",
    "uq_messages_room_author_client_id",
    "pk_instances",
    "pk_presence",
    "ix_presence_instance_id",
    "pk_write_batches",
    "pk_mentions",
    "ix_mentions_username",
    "ix_messages_deleted",
}
CONSTRAINTS = {
    "fk_messages_room_id_rooms",
    "fk_messages_author_users",
    "fk_presence_room_id_rooms",
    "fk_presence_instance_id_instances",
    "ck_messages_seq_positive",
    "ck_messages_client_id_length",
    "ck_rooms_last_seq_nonnegative",
}


def fetch(url: str, sql: str, *args: object) -> list[Any]:
    """The rows of `sql`, over a fresh asyncpg connection (sync tests: no loop is running)."""

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return list(await conn.fetch(sql, *args, timeout=10))
        finally:
            await conn.close(timeout=5)

    return asyncio.run(run())


def tables(url: str) -> set[str]:
    rows = fetch(
        url,
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    return {r["table_name"] for r in rows}


def indexes(url: str) -> dict[str, str]:
    rows = fetch(url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    return {r["indexname"]: r["indexdef"] for r in rows}


def constraints(url: str) -> set[str]:
    rows = fetch(
        url,
        "SELECT constraint_name FROM information_schema.table_constraints "
        "WHERE table_schema = 'public'",
    )
    return {r["constraint_name"] for r in rows}


def versions(url: str) -> list[str]:
    if "alembic_version" not in tables(url):
        return []
    return [r["version_num"] for r in fetch(url, "SELECT version_num FROM alembic_version")]


def head(url: str) -> str:
    script = ScriptDirectory.from_config(migrate.alembic_config(Settings(database_url=url)))
    revision = script.get_current_head()
    assert revision is not None
    return revision


def assert_at_head(url: str) -> None:
    assert versions(url) == [head(url)]
    assert tables(url) >= TABLES
    assert set(indexes(url)) >= INDEXES


def test_single_head() -> None:
    """The revisions form one line: exactly one head, reachable from base."""
    script = ScriptDirectory.from_config(
        migrate.alembic_config(Settings(database_url="postgresql://u@h/d"))
    )
    assert len(script.get_heads()) == 1
    assert [r.revision for r in script.walk_revisions()][-1] == "0001"


def test_upgrade_downgrade_upgrade(new_database: Callable[[], str]) -> None:
    """On an empty database: upgrade makes the schema, downgrade removes it, upgrade again."""
    url = new_database()
    settings = Settings(database_url=url)
    assert tables(url) == set()

    migrate.upgrade(settings)
    assert_at_head(url)
    assert tables(url) == TABLES | {"alembic_version"}
    assert constraints(url) >= CONSTRAINTS
    found = indexes(url)
    # Idempotency lookups need the unique index, and only over rows that carry a client_id.
    assert "UNIQUE" in found["uq_messages_room_author_client_id"]
    assert "(room_id, author, client_id)" in found["uq_messages_room_author_client_id"]
    assert "client_id IS NOT NULL" in found["uq_messages_room_author_client_id"]
    assert "(room_id, seq)" in found["pk_messages"]
    # The whole history path is range scans of the primary key; the other indexes a new
    # message enters are the unique one and search's GIN index of the lexemes (the unread
    # count's holds deleted messages only).
    on_messages = {name for name, sql in found.items() if " ON public.messages " in sql}
    assert on_messages == {
        "pk_messages",
        "uq_messages_room_author_client_id",
        "ix_messages_deleted",
        "ix_messages_search",
    }
    assert found["ix_messages_deleted"].endswith("WHERE deleted")
    assert "USING gin (search)" in found["ix_messages_search"]

    migrate.downgrade(settings, "base")
    assert tables(url) <= {"alembic_version"}
    assert versions(url) == []
    assert not set(indexes(url)) & INDEXES

    migrate.upgrade(settings)
    assert_at_head(url)


def test_upgrade_twice_is_a_no_op(new_database: Callable[[], str]) -> None:
    """Upgrading a database already at head changes nothing and does not fail."""
    url = new_database()
    settings = Settings(database_url=url)
    migrate.upgrade(settings)
    before = (tables(url), indexes(url))
    migrate.upgrade(settings)
    assert (tables(url), indexes(url)) == before
    assert versions(url) == [head(url)]


def test_models_match_migrations(new_database: Callable[[], str]) -> None:
    """Autogenerate finds nothing to do: the models and the revisions describe one schema."""
    url = new_database()
    settings = Settings(database_url=url)
    migrate.upgrade(settings)

    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async def run() -> list[Any]:
        engine = create_async_engine(settings.sqlalchemy_url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(compare)
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == []


def test_migrated_names_match_the_models(new_database: Callable[[], str]) -> None:
    """The revisions name every constraint and index as the models (and their naming
    convention) do, so later autogenerated revisions can find them by name."""
    migrated, from_models = new_database(), new_database()
    migrate.upgrade(Settings(database_url=migrated))

    async def create_all() -> None:
        engine = create_async_engine(Settings(database_url=from_models).sqlalchemy_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
        finally:
            await engine.dispose()

    asyncio.run(create_all())
    sql = (
        "SELECT conrelid::regclass::text AS tbl, conname, contype FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> "
        "'alembic_version'"
    )

    def names(url: str) -> set[tuple[str, str, str]]:
        return {(r["tbl"], r["conname"], r["contype"]) for r in fetch(url, sql)}

    assert names(migrated) == names(from_models)
    assert set(indexes(migrated)) - {"alembic_version_pkc"} == set(indexes(from_models))


def test_rooms_fillfactor(new_database: Callable[[], str]) -> None:
    """rooms keeps free space per page so the per-commit counter updates stay HOT."""
    url = new_database()
    migrate.upgrade(Settings(database_url=url))
    rows = fetch(url, "SELECT reloptions FROM pg_class WHERE relname = 'rooms'")
    assert "fillfactor=50" in (rows[0]["reloptions"] or [])


def test_alembic_config_escapes_percent() -> None:
    """A percent-encoded password survives Alembic's ConfigParser interpolation."""
    config = migrate.alembic_config(Settings(database_url="postgresql://u:p%40ss@h:5432/d"))
    assert config.get_main_option("sqlalchemy.url") == "postgresql+asyncpg://u:p%40ss@h:5432/d"


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["CHAT_DATABASE_URL"] = url
    return env


def test_three_concurrent_migrations(new_database: Callable[[], str], tmp_path: Path) -> None:
    """Three `chat migrate` started at once on one empty database all succeed, and the
    database is at head exactly once."""
    url = new_database()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "service", "migrate"],
            env=_env(url),
            cwd=tmp_path,  # no .env of the developer's
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs: list[str] = []
    try:
        for proc in procs:
            raw, _ = proc.communicate(timeout=120)
            outputs.append(raw.decode(errors="replace"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
        assert "migrations applied" in out
    assert_at_head(url)
    assert tables(url) == TABLES | {"alembic_version"}


def test_alembic_command_line_reads_chat_database_url(
    new_database: Callable[[], str],
) -> None:
    """`alembic upgrade head` in the project does what `chat migrate` does."""
    url = new_database()
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        env=_env(url),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_at_head(url)


@pytest.mark.parametrize("command", ["migrate"])
def test_migrate_without_database_url_fails_clearly(command: str, tmp_path: Path) -> None:
    """`chat migrate` without CHAT_DATABASE_URL exits non-zero, naming the variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    result = subprocess.run(
        [sys.executable, "-m", "service", command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "CHAT_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
