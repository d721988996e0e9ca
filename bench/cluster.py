"""The system under test: a PostgreSQL database of the benchmark's own, `chat serve` instances,
the naive baseline app, and the users whose tokens the clients present."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from service import migrate, pgcluster
from service.security import issue_token
from service.settings import Settings

from .system import process_cpu_seconds, rss_kib

PROJECT = Path(__file__).resolve().parent.parent

# Realistic durability: fsync and synchronous_commit keep their defaults (on). A larger
# max_wal_size only spaces checkpoints out during the bulk loads, as production servers do.
CLUSTER_SETTINGS = {"shared_buffers": "256MB", "max_wal_size": "4GB"}


@dataclass(frozen=True)
class Database:
    url: str  # the benchmark's own database
    admin_url: str
    name: str
    data_dir: Path | None  # the private cluster's, None on an existing server


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@contextlib.contextmanager
def database(external_url: str | None, workdir: Path) -> Iterator[Database]:
    """A fresh, migrated database: on `external_url`'s server when given (created there and
    dropped at the end), else on a private cluster in `workdir` (stopped at the end)."""
    cluster: pgcluster.Cluster | None = None
    if external_url:
        admin_url = external_url
    else:
        workdir.chmod(0o755)  # the server runs as `postgres` when we are root
        cluster = pgcluster.start_cluster(workdir / "pg", settings=CLUSTER_SETTINGS)
        admin_url = cluster.admin_url
    name = f"chat_bench_{uuid.uuid4().hex[:10]}"
    try:
        pgcluster.ensure_database(admin_url, name)
        url = _with_database(admin_url, name)
        migrate.upgrade(Settings(database_url=url))
        data_dir = cluster.data_dir if cluster is not None else None
        yield Database(url=url, admin_url=admin_url, name=name, data_dir=data_dir)
    finally:
        with contextlib.suppress(Exception):
            pgcluster.drop_database(admin_url, name)
        if cluster is not None:
            cluster.stop("fast")
            shutil.rmtree(workdir / "pg", ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server subprocess on a loopback port: a `chat serve` instance or the naive app."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    ready_path: str
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT
            )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.ready_path)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "NAIVE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def chat_instance(
    name: str, db: Database, secret: str, logs: Path, extra_env: dict[str, str] | None = None
) -> Server:
    """A `chat serve` process: rate limits off (the commands' and the searches': one client
    stands for many users), warnings only; `extra_env` adds or overrides CHAT_ variables
    (e.g. CHAT_WS_IMPLEMENTATION)."""
    port = free_port()
    env = _base_env() | {
        "CHAT_DATABASE_URL": db.url,
        "CHAT_SECRET_KEY": secret,
        "CHAT_RATE_LIMIT_PER_SECOND": "0",
        "CHAT_SEARCH_RATE_PER_SECOND": "0",
        "CHAT_LOG_LEVEL": "WARNING",
        "CHAT_LOG_FORMAT": "text",
    }
    env |= extra_env or {}
    argv = [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--no-migrate"]
    return Server(name, argv, env, port, logs / f"{name}.log", "/readyz")


def naive_instance(name: str, db: Database, logs: Path) -> Server:
    """The naive baseline app under uvicorn's defaults (see naive_app.py)."""
    port = free_port()
    env = _base_env() | {"NAIVE_DATABASE_URL": db.url}
    argv = [sys.executable, "-m", "uvicorn", "bench.naive_app:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    return Server(name, argv, env, port, logs / f"{name}.log", "/healthz")


# -- users ---------------------------------------------------------------------------------


def username(i: int) -> str:
    return f"bench_{i:05d}"


def session_id(i: int) -> uuid.UUID:
    """A fixed session per benchmark user, so tokens can be minted before the rows exist."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"chat-bench:{username(i)}")


async def seed_users(db: Database, count: int) -> None:
    """`count` users, bench_00000 and on, each with one session. Their password hash is not a
    hash, so nobody can log in as them: the benchmark mints their tokens with the instances'
    secret instead."""
    conn = await asyncpg.connect(db.url)
    try:
        await conn.execute(
            "INSERT INTO users (username, password_hash) "
            "SELECT 'bench_' || lpad(g::text, 5, '0'), '!' FROM generate_series(0, $1 - 1) g "
            "ON CONFLICT DO NOTHING",
            count,
        )
        await conn.executemany(
            "INSERT INTO sessions (id, username, user_agent) VALUES ($1, $2, 'bench') "
            "ON CONFLICT (id) DO UPDATE SET ended_at = NULL, created_at = now()",
            [(session_id(i), username(i)) for i in range(count)],
        )
    finally:
        await conn.close()


def tokens(secret: str, count: int) -> list[str]:
    return [issue_token(username(i), secret, 24 * 3600, session_id(i)) for i in range(count)]


# -- data ----------------------------------------------------------------------------------


async def create_rooms(conn: asyncpg.Connection, names: list[str]) -> dict[str, int]:
    """Rooms by name (made if missing), with their ids."""
    await conn.execute(
        "INSERT INTO rooms (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING", names
    )
    rows = await conn.fetch("SELECT id, name FROM rooms WHERE name = ANY($1::text[])", names)
    return {r["name"]: int(r["id"]) for r in rows}


# One message in ten carries reactions (two emoji), as its current state and as the rows
# of who reacted, so that history pages read what a v2 room holds: a page's `me` is looked
# up for the messages that have reactions.
_LOAD = """
INSERT INTO messages (room_id, seq, author, body, client_id, created_at, reactions, n)
SELECT $1, g, 'bench_' || lpad((g % $4)::text, 5, '0'),
       'history ' || g || ' lorem ipsum dolor sit amet, consectetur adipiscing elit',
       NULL, $5::timestamptz + g * interval '1 millisecond',
       CASE WHEN g % 10 = 0
            THEN '[{"emoji": "👍", "count": 2}, {"emoji": "🎉", "count": 1}]'::jsonb END,
       g - $6::bigint
FROM generate_series($2::bigint, $3::bigint) AS g
"""
_LOAD_REACTIONS = """
INSERT INTO reactions (room_id, seq, emoji, username, created_at)
SELECT $1, g, e.emoji, 'bench_' || lpad(((g + e.n) % $4)::text, 5, '0'),
       $5::timestamptz + g * interval '1 millisecond'
FROM generate_series($2::bigint, $3::bigint) AS g
CROSS JOIN (VALUES ('👍', 1), ('👍', 2), ('🎉', 3)) AS e (emoji, n)
WHERE g % 10 = 0
"""
_ADVANCE = """
UPDATE rooms SET last_seq = $2::bigint, last_message_seq = $2::bigint,
       last_message_at = $3::timestamptz + $2::bigint * interval '1 millisecond',
       message_count = $2::bigint - $4::bigint
WHERE id = $1
"""


async def bulk_load(
    conn: asyncpg.Connection,
    room_id: int,
    count: int,
    *,
    authors: int,
    chunk: int = 500_000,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """Append `count` messages to a room, generated in SQL, `chunk` rows per transaction, and
    advance the room's last_seq and message count (each message's `n` is its ordinal, as
    the writer numbers them). The room must have no writer meanwhile."""
    row = await conn.fetchrow("SELECT last_seq, message_count FROM rooms WHERE id = $1", room_id)
    last = int(row["last_seq"])
    offset = last - int(row["message_count"])  # seq - n: the room's events so far
    base = await conn.fetchval("SELECT now() - interval '400 days'")
    # Superusers skip the per-row foreign key triggers: the generated authors and room exist.
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("SET session_replication_role = replica")
    try:
        done = 0
        while done < count:
            size = min(chunk, count - done)
            first, upto = last + done + 1, last + done + size
            async with conn.transaction():
                await conn.execute(_LOAD, room_id, first, upto, authors, base, offset)
                await conn.execute(_LOAD_REACTIONS, room_id, first, upto, authors, base)
                await conn.execute(_ADVANCE, room_id, upto, base, offset)
            done += size
            if on_chunk is not None:
                on_chunk(size)
    finally:
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute("RESET session_replication_role")
