"""service.pgcluster against a real PostgreSQL started from this machine's server binaries."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest

from service import pgcluster
from service.pgcluster import (
    Cluster,
    PostgresNotFound,
    drop_database,
    ensure_database,
    find_bindir,
    start_cluster,
)

FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir path whose parents the server's user can traverse (pytest's tmp_path is
    0700 under root); any server left on it is stopped afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="pgc-"))
    parent.chmod(0o755)
    path = parent / "pg"
    try:
        yield path
    finally:
        try:
            if (path / "PG_VERSION").exists():
                Cluster(path, 0, started_here=False, bindir=find_bindir()).stop("immediate")
        finally:
            shutil.rmtree(parent, ignore_errors=True)


def query(url: str, sql: str, *args: object) -> object:
    """The first value of `sql` run over a fresh asyncpg connection."""

    async def run() -> object:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await conn.fetchval(sql, *args, timeout=10)
        finally:
            await conn.close(timeout=5)

    return asyncio.run(run())


def execute(url: str, sql: str) -> None:
    """Run `sql` (several statements allowed) over a fresh asyncpg connection."""

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(sql, timeout=10)
        finally:
            await conn.close(timeout=5)

    asyncio.run(run())


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {condition}"
        time.sleep(0.05)


def test_lifecycle_and_reuse_of_the_data_dir(
    data_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A fresh dir is initialised and served; after stop the port is closed; a second start
    on the same dir serves the same data again."""
    cluster = start_cluster(data_dir, settings=FAST)
    try:
        assert cluster.started_here
        assert cluster.is_running()
        assert cluster.port != 5432
        assert accepting(cluster.port)
        assert cluster.admin_url == f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
        assert query(cluster.admin_url, "SELECT 41 + 1") == 42
        assert query(cluster.admin_url, "SHOW max_connections") == "300"
        assert query(cluster.admin_url, "SHOW fsync") == "off"
        assert query(cluster.admin_url, "SHOW server_encoding") == "UTF8"

        ensure_database(cluster.admin_url, "chat")
        ensure_database(cluster.admin_url, "chat")  # idempotent
        execute(cluster.url("chat"), "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hi')")
    finally:
        cluster.stop()
    assert not cluster.is_running()
    assert not accepting(cluster.port)
    cluster.stop()  # idempotent
    out, _ = capfd.readouterr()
    assert out == "", "the server must log to its file, not to our stdout"
    assert "ready to accept connections" in (data_dir / pgcluster.LOG_NAME).read_text()

    again = start_cluster(data_dir, settings=FAST)
    try:
        assert again.started_here
        assert again.port == cluster.port, "a free previous port is reused, keeping the URL"
        assert query(again.url("chat"), "SELECT v FROM kept") == "hi"
    finally:
        again.stop()
    assert not again.is_running()


def test_start_while_running_reuses_the_server(data_dir: Path) -> None:
    """Starting on a dir whose server runs returns that server: same port, started_here=False."""
    first = start_cluster(data_dir, settings=FAST)
    try:
        second = start_cluster(data_dir, settings=FAST)
        assert not second.started_here
        assert second.port == first.port
        assert second.data_dir == first.data_dir
        assert query(second.admin_url, "SELECT 1") == 1
    finally:
        first.stop()


def test_stale_pid_file_after_sigkill_does_not_prevent_start(data_dir: Path) -> None:
    """After the postmaster is SIGKILLed, its leftover postmaster.pid does not block a start,
    and committed data survives crash recovery."""
    cluster = start_cluster(data_dir)
    ensure_database(cluster.admin_url, "chat")
    execute(cluster.url("chat"), "CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
    pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not cluster.is_running())
    assert (data_dir / "postmaster.pid").exists(), "the kill must leave a stale pid file"

    again = start_cluster(data_dir, settings=FAST, timeout=30)
    try:
        assert again.started_here
        assert again.is_running()
        assert query(again.url("chat"), "SELECT v FROM kept") == 7
    finally:
        again.stop()


def test_restart_keeps_port_settings_and_data(data_dir: Path) -> None:
    """restart() brings the server back on the same port with the same settings and data;
    connections from before the restart are broken, new ones work."""
    cluster = start_cluster(data_dir, settings={**FAST, "max_connections": "42"})
    try:
        ensure_database(cluster.admin_url, "chat")
        execute(cluster.url("chat"), "CREATE TABLE kept (v int); INSERT INTO kept VALUES (1)")

        async def survive_restart() -> None:
            conn = await asyncpg.connect(cluster.url("chat"), timeout=10)
            try:
                await asyncio.to_thread(cluster.restart)
                with pytest.raises((asyncpg.PostgresError, OSError, asyncpg.InterfaceError)):
                    await conn.fetchval("SELECT 1", timeout=10)
            finally:
                conn.terminate()

        asyncio.run(survive_restart())
        assert cluster.is_running()
        assert accepting(cluster.port)
        assert query(cluster.url("chat"), "SELECT v FROM kept") == 1
        assert query(cluster.admin_url, "SHOW max_connections") == "42"

        cluster.stop()
        cluster.restart()  # also starts a stopped server
        assert query(cluster.url("chat"), "SELECT v FROM kept") == 1
    finally:
        cluster.stop()


def test_drop_database_and_quoting(data_dir: Path) -> None:
    """Database names are quoted safely; drop_database removes a database even while it has
    sessions, and dropping a missing one is fine."""
    cluster = start_cluster(data_dir, settings=FAST)
    try:
        name = 'we"ird; DROP DATABASE postgres; --'
        ensure_database(cluster.admin_url, name)
        sql = "SELECT count(*) FROM pg_database WHERE datname IN ('postgres', $1)"
        assert query(cluster.admin_url, sql, name) == 2

        async def drop_with_open_session() -> None:
            conn = await asyncpg.connect(cluster.url("chat_drop"), timeout=10)
            try:
                await asyncio.to_thread(drop_database, cluster.admin_url, "chat_drop")
            finally:
                conn.terminate()

        ensure_database(cluster.admin_url, "chat_drop")
        asyncio.run(drop_with_open_session())
        drop_database(cluster.admin_url, "chat_drop")
        drop_database(cluster.admin_url, name)
        count = "SELECT count(*) FROM pg_database WHERE datname NOT LIKE 'template%'"
        assert query(cluster.admin_url, count) == 1
    finally:
        cluster.stop()


def test_ensure_database_refuses_a_running_event_loop() -> None:
    """ensure_database inside a running event loop raises RuntimeError instead of deadlocking."""

    async def inside_loop() -> None:
        with pytest.raises(RuntimeError, match="event loop"):
            ensure_database("postgresql://postgres@127.0.0.1:1/postgres", "x")

    asyncio.run(inside_loop())


def test_start_failure_reports_the_server_log(data_dir: Path) -> None:
    """When the server cannot start, the RuntimeError carries the tail of its log."""
    with pytest.raises(RuntimeError, match="shared_buffers") as excinfo:
        start_cluster(data_dir, settings={"shared_buffers": "lots"}, timeout=30)
    assert "last lines of" in str(excinfo.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_untraversable_parent_is_reported(tmp_path: Path) -> None:
    """As root, a data dir the server's user cannot reach fails with a message saying so."""
    parent = tmp_path / "private"
    parent.mkdir(mode=0o700)
    with pytest.raises(RuntimeError, match="traversable"):
        start_cluster(parent / "pg", timeout=10)


def test_find_bindir_without_postgres_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With nothing on PATH and no versioned install, PostgresNotFound names the fixes."""
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(pgcluster, "PG_LIB_ROOT", tmp_path)
    with pytest.raises(PostgresNotFound) as excinfo:
        find_bindir()
    message = str(excinfo.value)
    assert "apt-get install postgresql" in message
    assert "CHAT_DATABASE_URL" in message


def test_find_bindir_prefers_the_highest_complete_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without pg_ctl on PATH, the highest version with all three binaries wins."""
    for version, tools in [
        ("9.6", ("pg_ctl", "initdb", "postgres")),
        ("15", ("pg_ctl", "initdb", "postgres")),
        ("17", ("pg_ctl",)),  # incomplete: skipped
    ]:
        bindir = tmp_path / version / "bin"
        bindir.mkdir(parents=True)
        for tool in tools:
            (bindir / tool).touch()
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(pgcluster, "PG_LIB_ROOT", tmp_path)
    assert find_bindir() == tmp_path / "15" / "bin"


def test_find_bindir_resolves_pg_ctl_on_path() -> None:
    """pg_ctl found on PATH (through symlinks) gives the directory with initdb and postgres."""
    bindir = find_bindir()
    assert all((bindir / tool).is_file() for tool in ("pg_ctl", "initdb", "postgres"))
    on_path = shutil.which("pg_ctl")
    if on_path:
        assert bindir == Path(on_path).resolve().parent
