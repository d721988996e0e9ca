"""Matrix Synapse as a process: its configuration, generated at run time (`VARIANTS`: what
each sets, and why), a database of its own in the benchmark's PostgreSQL, the homeserver (and
its workers, in the variant that has them) started and stopped. The measurements are in
synapse.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from . import peer_env
from .cluster import Database, Server, free_port

SERVER_NAME = "bench.localhost"
_UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}


@dataclass(frozen=True)
class Variant:
    """One way to configure the homeserver: what it sets, in words and as config keys."""

    name: str
    description: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    log_level: str = "INFO"
    env: dict[str, str] = field(default_factory=dict)
    pool_max: int = 10  # database connections (cp_max)
    # Durable as the chat is (an acked message survives a crash) unless turned off.
    synchronous_commit: bool = True
    # event persisters in processes of their own (generic workers; Redis for replication)
    persisters: int = 0


_BASE_DESCRIPTION = [
    "one homeserver process (no workers), registration open (m.login.dummy), no federation "
    "(federation_domain_whitelist: [], no trusted key servers), report_stats false, every rc_* "
    "rate limit lifted, bcrypt_rounds 4 (registration only); its database in the benchmark's "
    "PostgreSQL (fsync and synchronous_commit on), ENCODING UTF8, C collation"
]
_TUNED = {
    "presence": {"enabled": False},
    "caches": {"global_factor": 4.0},
    "event_cache_size": "100K",
}
VARIANTS = {
    "plain": Variant("plain", [*_BASE_DESCRIPTION, "everything else as generated (INFO logs)"]),
    "tuned": Variant(
        "tuned",
        [
            *_BASE_DESCRIPTION,
            "logs at WARNING (INFO writes a line per request)",
            "presence disabled (its per-user timers and presence streams are work a chat "
            "without presence would not ask for)",
            "caches.global_factor 4 and event_cache_size 100K (its docs' first tuning step; "
            "the machine has the memory)",
            "database pool cp_min 5, cp_max 20",
        ],
        config=_TUNED,
        log_level="WARNING",
        pool_max=20,
    ),
    # Its docs' way to use more cores: events persisted by a worker process of its own (the
    # main process creates, authorises and signs them, and serves the client API). Here,
    # on 2 cores, it acked fewer (~62 against ~87 msg/s) at more CPU per message (~23
    # against ~15 ms): the replication costs more than the second process gains.
    "tuned-workers": Variant(
        "tuned-workers",
        [
            *_BASE_DESCRIPTION,
            "as tuned, and one event persister worker (stream_writers.events), replication "
            "over HTTP and a private Redis",
        ],
        config=_TUNED,
        log_level="WARNING",
        pool_max=20,
        persisters=1,
    ),
    # Not used for the comparison: the chat acks after a durable commit, and so does Synapse
    # with its default. Measured to see what durability costs it.
    "tuned-async-commit": Variant(
        "tuned-async-commit",
        [*_BASE_DESCRIPTION, "as tuned, and synchronous_commit off (acked sends may be lost)"],
        config=_TUNED,
        log_level="WARNING",
        pool_max=20,
        synchronous_commit=False,
    ),
}
# What `--synapse-variant` picks when not given: the best measured here (README, Performance):
# plain and tuned ack about as many (tuned at a few % less CPU per message); with
# synchronous_commit off, no more (it is CPU-bound, not commit-bound); with a worker, fewer.
DEFAULT_VARIANT = "tuned"


def _worker_config(
    home: Path, port: int, replication: dict[str, int], redis_url: str
) -> dict[str, Any]:
    """What the main process needs to know of its workers (empty without workers)."""
    if not replication:
        return {}
    redis = urlsplit(redis_url)
    return {
        "instance_map": {name: {"host": "127.0.0.1", "port": p} for name, p in replication.items()},
        "stream_writers": {"events": [n for n in replication if n != "main"]},
        "redis": {"enabled": True, "host": redis.hostname, "port": redis.port},
    }


def _homeserver_config(
    home: Path,
    port: int,
    db_url: str,
    variant: Variant,
    replication: dict[str, int],
    redis_url: str,
) -> dict[str, Any]:
    parts = urlsplit(db_url)
    listeners: list[dict[str, Any]] = [
        {
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": False,
            "x_forwarded": False,
            "resources": [{"names": ["client"], "compress": False}],
        }
    ]
    if replication:
        listeners.append(
            {
                "port": replication["main"],
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "resources": [{"names": ["replication"]}],
            }
        )
    return {
        "server_name": SERVER_NAME,
        "pid_file": str(home / "homeserver.pid"),
        "listeners": listeners,
        "database": {
            "name": "psycopg2",
            "synchronous_commit": variant.synchronous_commit,
            "args": {
                "user": parts.username or "postgres",
                "password": parts.password or "",
                "dbname": parts.path.lstrip("/"),
                "host": parts.hostname or "127.0.0.1",
                "port": parts.port or 5432,
                "cp_min": 5,
                "cp_max": variant.pool_max,
            },
        },
        "log_config": str(home / "log.json"),
        "media_store_path": str(home / "media"),
        "signing_key_path": str(home / "signing.key"),
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "report_stats": False,
        "macaroon_secret_key": secrets.token_hex(32),
        "form_secret": secrets.token_hex(32),
        "registration_shared_secret": secrets.token_hex(32),
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "bcrypt_rounds": 4,
        "federation_domain_whitelist": [],
        "allow_public_rooms_over_federation": False,
        "url_preview_enabled": False,
        "enable_metrics": False,
        "rc_message": _UNLIMITED,
        "rc_registration": _UNLIMITED,
        "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
        "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
        "rc_joins_per_room": _UNLIMITED,
        "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
        "rc_room_creation": _UNLIMITED,
        "rc_presence": {"per_user": _UNLIMITED},
        "rc_delayed_event_mgmt": _UNLIMITED,
        **variant.config,
        **_worker_config(home, port, replication, redis_url),
    }


def _log_config(home: Path, level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(home / "homeserver.log"),
            }
        },
        "root": {"level": level, "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


@dataclass
class Homeserver:
    server: Server  # the main process
    variant: Variant
    db_name: str
    workers: list[Server] = field(default_factory=list)
    redis_pid: int | None = None  # the workers' replication

    def processes(self) -> dict[str, int]:
        """The CPU meter's names for its processes."""
        names = {"synapse": self.server.pid} | {w.name: w.pid for w in self.workers}
        return names | ({"redis": self.redis_pid} if self.redis_pid is not None else {})


async def _create_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url, timeout=30)
    try:
        await conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' "
            "TEMPLATE template0"
        )
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    return parts._replace(path=f"/{name}").geturl()


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=30)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def start(
    db: Database,
    workdir: Path,
    variant: Variant,
    python: Path,
    redis: peer_env.Redis | None = None,
) -> Homeserver:
    """A database of its own, a generated configuration and signing key, the homeserver
    (and its workers) started and answering `/health`."""
    name = f"synapse_{uuid.uuid4().hex[:10]}"
    url = await _create_database(db.admin_url, name)
    home = workdir / name
    home.mkdir(parents=True)
    port = free_port()
    workers = [f"persister-{i + 1}" for i in range(variant.persisters)]
    replication = {n: free_port() for n in ["main", *workers]} if workers else {}
    config = home / "homeserver.yaml"
    # YAML is a superset of JSON.
    config.write_text(
        json.dumps(
            _homeserver_config(home, port, url, variant, replication, redis.url if redis else "")
        )
    )
    (home / "log.json").write_text(json.dumps(_log_config(home, variant.log_level)))
    (home / "media").mkdir()
    argv = [str(python), "-m", "synapse.app.homeserver", "-c", str(config)]
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", **variant.env}
    keys = await asyncio.to_thread(
        subprocess.run,
        [*argv, "--generate-keys"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if keys.returncode != 0:
        raise RuntimeError(f"synapse --generate-keys failed:\n{keys.stdout}\n{keys.stderr}")
    server = Server(f"synapse-{variant.name}", argv, env, port, home / "stdout.log", "/health")
    hs = Homeserver(server, variant, name, redis_pid=redis.pid if redis else None)
    server.start()
    # The first start creates its schema: tens of seconds on a busy machine.
    await server.wait_ready(timeout=240)
    try:
        await _start_workers(hs, home, config, python, env, workers, replication)
    except BaseException:
        await stop(hs, db)
        raise
    return hs


async def _start_workers(
    hs: Homeserver,
    home: Path,
    config: Path,
    python: Path,
    env: dict[str, str],
    workers: list[str],
    replication: dict[str, int],
) -> None:
    for worker in workers:
        worker_config = home / f"{worker}.yaml"
        worker_config.write_text(
            json.dumps(
                {
                    "worker_app": "synapse.app.generic_worker",
                    "worker_name": worker,
                    "worker_listeners": [
                        {
                            "type": "http",
                            "port": replication[worker],
                            "bind_addresses": ["127.0.0.1"],
                            "resources": [{"names": ["replication"]}],
                        }
                    ],
                    "worker_log_config": str(home / "log.json"),
                }
            )
        )
        worker_argv = [str(python), "-m", "synapse.app.generic_worker", "-c", str(config)]
        worker_argv += ["-c", str(worker_config)]
        process = Server(
            f"synapse {worker}",
            worker_argv,
            env,
            replication[worker],
            home / f"{worker}.stdout.log",
            "/health",
        )
        hs.workers.append(process)
        process.start()
        await process.wait_ready(timeout=120)


async def stop(hs: Homeserver, db: Database) -> None:
    await asyncio.gather(*(asyncio.to_thread(s.stop) for s in [hs.server, *hs.workers]))
    with contextlib.suppress(Exception):
        await _drop_database(db.admin_url, hs.db_name)
