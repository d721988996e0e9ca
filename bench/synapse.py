"""Matrix Synapse, the peer that persists as we do: a homeserver from a venv of its own
(peer_env.py), on a database of its own in the benchmark's PostgreSQL, driven through the
Client-Server API with aiohttp (as the history measurement drives the chat over REST).

What is measured, each with the chat's counterpart in the report:
- ingest: concurrent senders, each one `PUT /rooms/{id}/send/m.room.message/{txnId}` at a
  time (a Matrix client sends a room's messages in order), acked sends/s and server CPU;
- latency: paced senders at a rate it sustains; receivers long-polling `/sync` take the
  send-to-receipt time of every message (the body carries `time.time_ns()`, as the chat's);
- history: `GET /rooms/{id}/messages?dir=b&limit=50` from random page tokens of one room.

The configuration is generated at run time (`VARIANTS`): registration open, no federation,
every `rc_*` rate limit lifted; see `VARIANTS` for what each variant changes, and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import asyncpg
import orjson

from . import clients, peer_env
from .cluster import Database, Server, free_port
from .config import BODY_TEXT, Profile
from .figures import Fanout, Pages, Percentiles, SynapseResults, Throughput, median_run
from .system import CpuMeter
from .ui import Ui

SERVER_NAME = "bench.localhost"
_CLIENT = "/_matrix/client/v3"
_UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}
# Timelines as Element asks for them: members loaded lazily, no presence or account data.
_SYNC_FILTER = orjson.dumps(
    {
        "room": {"timeline": {"limit": 100}, "state": {"lazy_load_members": True}},
        "presence": {"types": []},
        "account_data": {"types": []},
    }
).decode()
_PAGE_FILTER = orjson.dumps({"lazy_load_members": True}).decode()


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


# -- the Client-Server API -------------------------------------------------------------------


class MatrixError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status
        self.body = body
        try:
            self.errcode = str(json.loads(body).get("errcode", status))
        except ValueError:
            self.errcode = str(status)


async def _call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    token: str | None = None,
    body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = orjson.dumps(body) if body is not None else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with http.request(method, path, data=data, headers=headers, params=params) as response:
        raw = await response.read()
        if response.status != 200:
            raise MatrixError(response.status, raw.decode(errors="replace"))
    result: dict[str, Any] = orjson.loads(raw)
    return result


async def register(http: aiohttp.ClientSession, username: str) -> str:
    """A new user by the m.login.dummy flow; its access token."""
    path = f"{_CLIENT}/register"
    body: dict[str, Any] = {"username": username, "password": secrets.token_hex(12)}
    try:
        return str((await _call(http, "POST", path, body=body))["access_token"])
    except MatrixError as error:
        if error.status != 401:
            raise
        session = json.loads(error.body).get("session")
    body["auth"] = {"type": "m.login.dummy", "session": session}
    return str((await _call(http, "POST", path, body=body))["access_token"])


async def create_room(http: aiohttp.ClientSession, token: str, name: str) -> str:
    body = {"preset": "public_chat", "name": name, "visibility": "private"}
    return str((await _call(http, "POST", f"{_CLIENT}/createRoom", token, body))["room_id"])


async def join_room(http: aiohttp.ClientSession, token: str, room_id: str) -> None:
    await _call(http, "POST", f"{_CLIENT}/join/{quote(room_id)}", token, {})


async def send_text(http: aiohttp.ClientSession, token: str, room_id: str, body: str) -> str:
    """One message, acknowledged: its event id."""
    path = f"{_CLIENT}/rooms/{quote(room_id)}/send/m.room.message/{uuid.uuid4().hex}"
    sent = await _call(http, "PUT", path, token, {"msgtype": "m.text", "body": body})
    return str(sent["event_id"])


def _session(base: str, connections: int = 0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=base,
        timeout=aiohttp.ClientTimeout(total=120),
        connector=aiohttp.TCPConnector(limit=connections),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
    )


async def register_users(hs: Homeserver, count: int, ui: Ui) -> list[str]:
    step = ui.step(f"synapse: registering {count} users", count)
    run = uuid.uuid4().hex[:6]
    async with _session(hs.server.url, 8) as http:
        gate = asyncio.Semaphore(8)

        async def one(i: int) -> str:
            async with gate:
                token = await register(http, f"bench_{run}_{i:04d}")
            step.advance()
            return token

        try:
            return list(await asyncio.gather(*(one(i) for i in range(count))))
        finally:
            step.done()


async def rooms_with_members(
    hs: Homeserver, tokens: list[str], members: list[list[int]], label: str
) -> list[str]:
    """A public room per list of members (user indexes; the first creates it)."""
    async with _session(hs.server.url, 8) as http:
        ids = []
        for k, group in enumerate(members):
            room_id = await create_room(http, tokens[group[0]], f"{label}-{k}")
            await asyncio.gather(*(join_room(http, tokens[u], room_id) for u in group[1:]))
            ids.append(room_id)
        return ids


def _meter(hs: Homeserver, db: Database) -> CpuMeter:
    pids = hs.processes() | {"bench client": os.getpid()}
    return CpuMeter(pids, {"postgres": db.data_dir} if db.data_dir is not None else {})


async def _cpu_between(
    make: Callable[[], CpuMeter], start: float, stop: float, into: dict[str, float]
) -> None:
    await asyncio.sleep(max(start - time.perf_counter(), 0))
    meter = make()
    await asyncio.sleep(max(stop - time.perf_counter(), 0))
    into.update(meter.stop())


# -- ingest ---------------------------------------------------------------------------------


async def ingest(
    hs: Homeserver, db: Database, p: Profile, ui: Ui, tokens: list[str], rooms: list[str]
) -> Throughput:
    """`p.synapse_senders` senders over the rooms (sender i in room i // per_room), each with
    one send in flight, for the ingest duration; acks counted inside the window."""
    senders = p.synapse_senders
    per_room = senders // len(rooms)
    step = ui.step("synapse ingest: sending", None)
    acks = 0
    ack_ms: list[float] = []
    errors: dict[str, int] = {}
    cpu: dict[str, float] = {}
    start = time.perf_counter() + 0.2
    measure_from = start + p.warmup_seconds
    stop_at = measure_from + p.synapse_ingest_seconds

    async def sender(i: int, http: aiohttp.ClientSession) -> None:
        nonlocal acks
        room = rooms[(i // per_room) % len(rooms)]
        await asyncio.sleep(max(start - time.perf_counter(), 0))
        k = 0
        while (began := time.perf_counter()) < stop_at:
            k += 1
            try:
                await send_text(http, tokens[i], room, f"{i}-{k} {BODY_TEXT}")
            except (MatrixError, aiohttp.ClientError, TimeoutError) as error:
                code = error.errcode if isinstance(error, MatrixError) else type(error).__name__
                errors[code] = errors.get(code, 0) + 1
                await asyncio.sleep(0.05)
                continue
            done = time.perf_counter()
            if measure_from <= done <= stop_at:
                acks += 1
                ack_ms.append((done - began) * 1000)

    try:
        async with _session(hs.server.url, senders) as http:
            await asyncio.gather(
                *(sender(i, http) for i in range(senders)),
                step.tick(stop_at - time.perf_counter()),
                _cpu_between(lambda: _meter(hs, db), measure_from, stop_at, cpu),
            )
    finally:
        step.done()
    seconds = p.synapse_ingest_seconds
    return Throughput(
        label=f"Synapse ({hs.variant.name})",
        per_second=round(acks / seconds, 1),
        count=acks,
        seconds=seconds,
        setup=(
            f"{senders} senders in {len(rooms)} rooms ({per_room} each), one send in flight "
            f"per sender (PUT /send/m.room.message), aiohttp, {seconds:g} s"
        ),
        errors=errors,
        latency_ms=Percentiles.of(ack_ms),
        cpu=cpu,
        servers=(*hs.processes(), "postgres"),
    )


# -- send to receipt through /sync ----------------------------------------------------------


class _SyncReceiver:
    """One user long-polling `/sync`: every m.room.message whose body carries a send time
    inside the window gives one latency, taken when the response has been read."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.count = 0
        self.window = (0, 0)
        self.latencies: list[float] | None = None
        self.since: str | None = None

    async def initial(self, http: aiohttp.ClientSession) -> None:
        params = {"filter": _SYNC_FILTER, "timeout": "0"}
        self.since = str(
            (await _call(http, "GET", f"{_CLIENT}/sync", self.token, None, params))["next_batch"]
        )

    async def poll(self, http: aiohttp.ClientSession, until: float) -> None:
        while time.perf_counter() < until:
            params = {"filter": _SYNC_FILTER, "timeout": "5000", "since": self.since or ""}
            data = await _call(http, "GET", f"{_CLIENT}/sync", self.token, None, params)
            now = time.time_ns()
            self.since = str(data["next_batch"])
            for room in data.get("rooms", {}).get("join", {}).values():
                for event in room.get("timeline", {}).get("events", []):
                    if event.get("type") != "m.room.message":
                        continue
                    body = str(event.get("content", {}).get("body", ""))
                    parts = body.split(" ", 2)
                    if len(parts) < 3 or not parts[1].isdigit():
                        continue
                    self.count += 1
                    sent = int(parts[1])
                    if self.latencies is not None and self.window[0] <= sent <= self.window[1]:
                        self.latencies.append((now - sent) / 1e6)


async def latency(
    hs: Homeserver, db: Database, p: Profile, ui: Ui, tokens: list[str], rooms: list[str]
) -> Fanout:
    """Paced senders (one per room) at `p.peer_latency_rate` in all; `/sync` receivers,
    `per_room` in each room. Users: receivers first (room k's are k*per_room...), then the
    senders."""
    per_room = p.peer_latency_receivers // len(rooms)
    receivers = [_SyncReceiver(tokens[i]) for i in range(per_room * len(rooms))]
    sender_tokens = tokens[per_room * len(rooms) : per_room * len(rooms) + len(rooms)]
    step = ui.step(f"synapse latency: {p.peer_latency_rate:g} msg/s, /sync receivers", None)
    tally = clients.FanoutTally()
    cpu: dict[str, float] = {}
    start = time.perf_counter() + 1.0
    measure_from = start + p.warmup_seconds
    stop_at = measure_from + p.peer_latency_seconds
    to_ns = time.time_ns() - time.perf_counter_ns()
    window = (int(measure_from * 1e9) + to_ns, int(stop_at * 1e9) + to_ns)
    sent_per_room = [0] * len(rooms)

    async def paced(k: int, http: aiohttp.ClientSession) -> None:
        interval = len(rooms) / p.peer_latency_rate
        due = start + k * interval / len(rooms)  # rooms staggered across the interval
        while due < stop_at:
            await asyncio.sleep(max(due - time.perf_counter(), 0))
            timed = due >= measure_from
            began = time.perf_counter()
            body = f"0 {time.time_ns()} {BODY_TEXT}"
            try:
                await send_text(http, sender_tokens[k], rooms[k], body)
            except (MatrixError, aiohttp.ClientError) as error:
                tally.errors[getattr(error, "errcode", type(error).__name__)] += 1
            else:
                sent_per_room[k] += 1
                tally.acks += 1
                if timed:
                    tally.sent += 1
                    tally.ack_ms.append((time.perf_counter() - began) * 1000)
            due += interval

    try:
        async with _session(hs.server.url) as http:
            await asyncio.gather(*(r.initial(http) for r in receivers))
            for r in receivers:
                r.window, r.latencies = window, tally.same_ms
            grace = stop_at + 10
            polls = [asyncio.create_task(r.poll(http, stop_at + 1.5)) for r in receivers]
            try:
                async with asyncio.timeout(grace - time.perf_counter() + 10):
                    await asyncio.gather(
                        *(paced(k, http) for k in range(len(rooms))),
                        step.tick(stop_at - time.perf_counter()),
                        _cpu_between(lambda: _meter(hs, db), measure_from, stop_at, cpu),
                    )
                    await asyncio.gather(*polls)
            finally:
                for task in polls:
                    task.cancel()
                await asyncio.gather(*polls, return_exceptions=True)
    finally:
        step.done()
    expected = [sent_per_room[i // per_room] for i in range(len(receivers))]
    missing = sum(max(e - r.count, 0) for e, r in zip(expected, receivers, strict=True))
    return Fanout(
        offered_per_second=p.peer_latency_rate,
        sent=tally.sent,
        receivers=len(receivers),
        rooms=len(rooms),
        seconds=p.peer_latency_seconds,
        cross_instance_ms=Percentiles.of([]),
        same_instance_ms=Percentiles.of(tally.same_ms),
        ack_ms=Percentiles.of(tally.ack_ms),
        deliveries_per_second=round(len(tally.same_ms) / p.peer_latency_seconds, 1),
        expected_deliveries_per_second=round(tally.sent * per_room / p.peer_latency_seconds, 1),
        missing=missing,
        closed={},
        errors=dict(tally.errors),
        cpu=cpu,
        all_ms=Percentiles.of(tally.same_ms),
    )


# -- history ---------------------------------------------------------------------------------


async def history(
    hs: Homeserver, db: Database, p: Profile, ui: Ui, tokens: list[str], room: str
) -> Pages:
    """Fill one room with `p.synapse_history_messages` (8 senders), walk it back once to
    collect every page's token, then time `p.synapse_history_requests` pages from random
    tokens, one request at a time (as the chat's history measurement does)."""
    count = p.synapse_history_messages
    step = ui.step(f"synapse history: sending {count} messages", count)
    began = time.perf_counter()
    async with _session(hs.server.url, 8) as http:
        todo = iter(range(count))

        async def fill(u: int) -> None:
            for k in todo:
                await send_text(http, tokens[u], room, f"history {k} {BODY_TEXT}")
                step.advance()

        await asyncio.gather(*(fill(u) for u in range(8)))
    load_seconds = time.perf_counter() - began
    path = f"{_CLIENT}/rooms/{quote(room)}/messages"
    latencies: list[float] = []
    cpu: dict[str, float] = {}
    async with _session(hs.server.url, 1) as http:
        step.update(description="synapse history: collecting page tokens", completed=0)
        page_tokens: list[str | None] = [None]
        params = {"dir": "b", "limit": "50", "filter": _PAGE_FILTER}
        for _ in range(count // 50 + 20):
            token = page_tokens[-1]
            page = await _call(http, "GET", path, tokens[0], None, params | _from(token))
            if not page.get("chunk") or "end" not in page:
                break
            page_tokens.append(str(page["end"]))
        # The last tokens reach the room's creation: pages of 50 messages are wanted.
        usable = page_tokens[: max(count // 50, 1)]
        rng = random.Random(count)
        step.update(description="synapse history: pages", total=p.synapse_history_requests)
        meter = _meter(hs, db)
        for i in range(20 + p.synapse_history_requests):
            token = rng.choice(usable)
            t0 = time.perf_counter()
            page = await _call(http, "GET", path, tokens[0], None, params | _from(token))
            elapsed = (time.perf_counter() - t0) * 1000
            texts = [e for e in page["chunk"] if e.get("type") == "m.room.message"]
            if len(texts) < 40:  # state events may share a page near the start
                raise RuntimeError(f"synapse history page has {len(texts)} messages")
            if i >= 20:
                latencies.append(elapsed)
                step.advance()
        cpu = meter.stop()
    step.done()
    return Pages(
        messages=count,
        load_seconds=round(load_seconds, 1),
        requests=len(latencies),
        latency_ms=Percentiles.of(latencies),
        cpu=cpu,
    )


def _from(token: str | None) -> dict[str, str]:
    return {"from": token} if token is not None else {}


# -- all of it -------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A running homeserver with its users and rooms, ready for each measurement."""

    hs: Homeserver
    db: Database
    profile: Profile
    ui: Ui
    tokens: list[str]
    ingest_rooms: list[str]
    latency_rooms: list[str]
    history_room: str
    packages: list[str]

    async def ingest(self) -> Throughput:
        return await ingest(self.hs, self.db, self.profile, self.ui, self.tokens, self.ingest_rooms)

    async def latency(self) -> Fanout:
        return await latency(
            self.hs, self.db, self.profile, self.ui, self.tokens, self.latency_rooms
        )

    async def history(self) -> Pages:
        return await history(
            self.hs, self.db, self.profile, self.ui, self.tokens, self.history_room
        )

    def results(self, ingests: list[Throughput], late: Fanout, pages: Pages) -> SynapseResults:
        return SynapseResults(
            version=peer_env.SYNAPSE_VERSION,
            variant=self.hs.variant.name,
            configuration=self.hs.variant.description,
            ingest=median_run(ingests),
            latency=late,
            history=pages,
            packages=self.packages,
        )


@contextlib.asynccontextmanager
async def running(
    db: Database, p: Profile, ui: Ui, workdir: Path, variant_name: str
) -> AsyncIterator[Prepared]:
    """The venv (built if missing), the homeserver started, its users registered and its
    rooms made; stopped (and its database dropped) at the end."""
    variant = VARIANTS[variant_name]
    step = ui.step(f"synapse ({variant.name}): venv, schema, start", None)
    python = await asyncio.to_thread(peer_env.ensure, peer_env.SYNAPSE)
    packages = await asyncio.to_thread(peer_env.freeze, peer_env.SYNAPSE)
    with contextlib.ExitStack() as stack:
        redis = None
        if variant.persisters:
            redis = stack.enter_context(peer_env.redis_server(workdir / "synapse-redis"))
        hs = await start(db, workdir, variant, python, redis)
        step.done()
        try:
            yield await _prepare(hs, db, p, ui, packages)
        except BaseException:
            for server in [hs.server, *hs.workers]:
                ui.log(f"--- {server.name} log ---\n{server.log_tail()}")
            raise
        finally:
            await stop(hs, db)


async def _prepare(
    hs: Homeserver, db: Database, p: Profile, ui: Ui, packages: list[str]
) -> Prepared:
    """Users registered, rooms made and joined."""
    senders = p.synapse_senders
    latency_users = p.peer_latency_receivers + p.peer_latency_rooms
    tokens = await register_users(hs, max(senders, latency_users) + 1, ui)
    rooms_step = ui.step("synapse: rooms and joins", None)
    per_room = senders // p.synapse_rooms
    ingest_rooms = await rooms_with_members(
        hs,
        tokens,
        [list(range(k * per_room, (k + 1) * per_room)) for k in range(p.synapse_rooms)],
        "ingest",
    )
    per_latency_room = p.peer_latency_receivers // p.peer_latency_rooms
    first_sender = per_latency_room * p.peer_latency_rooms
    latency_rooms = await rooms_with_members(
        hs,
        tokens,
        [
            [first_sender + k, *range(k * per_latency_room, (k + 1) * per_latency_room)]
            for k in range(p.peer_latency_rooms)
        ],
        "latency",
    )
    (history_room,) = await rooms_with_members(hs, tokens, [list(range(8))], "history")
    rooms_step.done()
    return Prepared(hs, db, p, ui, tokens, ingest_rooms, latency_rooms, history_room, packages)
