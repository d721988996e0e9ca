"""`python -m bench`: start everything, measure, print the table, write JSON and a plot.

- `python -m bench`: the default profile (history at 1M rows), a few minutes;
- `python -m bench --smoke`: every code path at tiny sizes, in seconds;
- `python -m bench --full`: also history at 10M rows;
- `--peers` / `--no-peers`: Matrix Synapse and python-socketio + Redis, measured in the same
  run (default: on, except with --smoke); their venvs are built under bench/.peers/ once;
- `--database-url URL` (or CHAT_BENCH_DATABASE_URL): use an existing server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console

from . import (
    baselines,
    largeroom,
    peer_env,
    readstate,
    report,
    resync,
    scenarios,
    search,
    socketio_peer,
    synapse,
    synapse_server,
)
from .cluster import PROJECT, Database, chat_instance, database, seed_users, tokens
from .config import DEFAULT, FULL, SMOKE, Profile
from .figures import (
    Fanout,
    Percentiles,
    Results,
    SocketIoResults,
    Throughput,
    median_fanout,
    median_latency,
    median_run,
    size_label,
)
from .system import load_average, machine_info, raise_open_files_limit, settled
from .ui import Ui

SCENARIOS = (
    "memory",
    "transports",
    "joins",
    "ingest",
    "ingest-mixed",
    "reaction-storm",
    "baseline-a",
    "baseline-b",
    "fanout",
    "history",
    "read-state",
    "search",
    "ingest-unindexed",
    "large-room",
    "resume-converged",
)
# Measured only when peers are on (or named with --only).
PEER_SCENARIOS = ("synapse", "socketio")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes: a few seconds in all")
    size.add_argument("--full", action="store_true", help="also page through 10M rows")
    parser.add_argument(
        "--out",
        type=Path,
        help="where latest.json and latest.png go (default: bench/results, or a temporary "
        "directory with --smoke)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CHAT_BENCH_DATABASE_URL"),
        help="an existing PostgreSQL server (admin URL) to create and drop a database on, "
        "instead of a private cluster (env CHAT_BENCH_DATABASE_URL)",
    )
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure Matrix Synapse and python-socketio + Redis (default: on, off with "
        "--smoke)",
    )
    parser.add_argument(
        "--synapse-variant",
        choices=sorted(synapse_server.VARIANTS),
        default=synapse_server.DEFAULT_VARIANT,
        help=f"Synapse's configuration (default {synapse_server.DEFAULT_VARIANT}; "
        "bench/synapse_server.py)",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated subset of: {', '.join(SCENARIOS + PEER_SCENARIOS)}",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
    )
    parser.add_argument("--ingest-seconds", type=float)
    parser.add_argument("--fanout-rate", type=float, help="offered messages/s in the fan-out")
    parser.add_argument("--fanout-receivers", type=int)
    parser.add_argument("--fanout-rooms", type=int)
    parser.add_argument("--idle-sockets", type=int)
    parser.add_argument("--repeats", type=int, help="runs of ingest, baseline A and fan-out")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    unknown = set(args.only or []) - set(SCENARIOS + PEER_SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def choose_profile(args: argparse.Namespace) -> Profile:
    profile = SMOKE if args.smoke else FULL if args.full else DEFAULT
    overrides: dict[str, Any] = {
        "ingest_seconds": args.ingest_seconds,
        "fanout_rate": args.fanout_rate,
        "fanout_receivers": args.fanout_receivers,
        "fanout_rooms": args.fanout_rooms,
        "idle_sockets": args.idle_sockets,
        "repeats": args.repeats,
        "peers": args.peers,
    }
    return replace(profile, **{k: v for k, v in overrides.items() if v is not None})


async def postgres_version(db: Database) -> dict[str, Any]:
    """The server's version and durability settings, and the round trip time of `SELECT 1`
    from asyncpg (every statement the service sends pays it at least once)."""
    conn = await asyncpg.connect(db.url)
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = {
            name: str(await conn.fetchval(f"SHOW {name}"))
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_wal_size")
        }
        trips = []
        for _ in range(300):
            began = time.perf_counter()
            await conn.fetchval("SELECT 1")
            trips.append((time.perf_counter() - began) * 1000)
    finally:
        await conn.close()
    rtt = Percentiles.of(trips[50:])
    return {"version": str(version), **settings, "round_trip_ms": {"p50": rtt.p50, "p99": rtt.p99}}


def wanted_scenarios(profile: Profile, only: list[str] | None) -> set[str]:
    if only:
        return set(only)
    return set(SCENARIOS) | (set(PEER_SCENARIOS) if profile.peers else set())


async def run(
    profile: Profile, db: Database, workdir: Path, ui: Ui, wanted: set[str], variant: str
) -> tuple[Results, dict[str, Any]]:
    results = Results()
    pg = await postgres_version(db)
    secret = secrets.token_urlsafe(48)
    setup = ui.step("starting: users, two chat instances", 3)
    await seed_users(db, profile.users_needed)
    setup.advance()
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    instances = [chat_instance(f"chat-{name}", db, secret, logs) for name in ("a", "b")]
    bench = scenarios.Bench(
        profile=profile,
        db=db,
        instances=instances,
        tokens=tokens(secret, profile.users_needed),
        ui=ui,
        workdir=workdir,
        secret=secret,
    )
    try:
        for instance in instances:
            instance.start()
        await asyncio.gather(*(i.wait_ready() for i in instances))
        setup.advance(2)
        async with asyncio.timeout(profile.budget_seconds):
            await _measure(bench, results, wanted, variant)
    except BaseException:
        for instance in instances:
            ui.log(f"--- {instance.name} log ---\n{instance.log_tail()}")
        raise
    finally:
        await asyncio.gather(*(asyncio.to_thread(i.stop) for i in instances))
    return results, pg


async def _measure(
    bench: scenarios.Bench, results: Results, wanted: set[str], variant: str
) -> None:
    a, b = bench.instances

    async def step(name: str, action: Callable[[], Awaitable[None]]) -> None:
        if name in wanted:
            await settled(action())

    # Memory first, on instances that have done nothing yet: memory freed by earlier load
    # would be reused by the new sockets and hide their cost.
    async def memory() -> None:
        results.memory.append(await scenarios.idle_memory(bench, a, compression=True))
        results.memory.append(await scenarios.idle_memory(bench, b, compression=False))

    # Each implementation and loop on an instance of its own, before any load on the main two.
    async def transports() -> None:
        results.transports = await scenarios.transports(bench)

    async def joins() -> None:
        results.connect_replay = await scenarios.connect_replay(bench)
        results.resume = await scenarios.resume(bench)

    # Ingest and baseline A alternate, so that both meet the same conditions.
    ingests: list[Throughput] = []
    raws: list[Throughput] = []

    async def ingest() -> None:
        ingests.append(await scenarios.ingest(bench))

    mixed: list[Throughput] = []

    async def ingest_mixed() -> None:
        mixed.append(await scenarios.ingest_mixed(bench))

    storms: list[Throughput] = []

    async def reaction_storm() -> None:
        storms.append(await scenarios.reaction_storm(bench))

    async def baseline_a() -> None:
        raws.append(await baselines.raw_asyncpg(bench))

    async def baseline_b() -> None:
        results.baseline_b = await baselines.naive(bench)

    # The chat's fan-out and the socket.io peer's alternate, so that both meet the same
    # conditions (both peers' servers stay up, idle, meanwhile).
    async def fanouts() -> None:
        ours: list[Fanout] = []
        theirs: list[Fanout] = []
        async with contextlib.AsyncExitStack() as stack:
            sio = None
            if "socketio" in wanted:
                sio = await stack.enter_async_context(
                    socketio_peer.running(bench.profile, bench.ui, bench.workdir)
                )
            for _ in range(bench.profile.repeats):
                if "fanout" in wanted:
                    ours.append(await settled(scenarios.fanout(bench)))
                if sio is not None:
                    theirs.append(await settled(socketio_peer.fanout(sio)))
            if ours:
                results.fanout = median_fanout(ours)
            if sio is not None:
                results.socketio = SocketIoResults(
                    version=peer_env.SOCKETIO_VERSION,
                    setup=socketio_peer.SETUP,
                    fanout=median_fanout(theirs),
                    packages=sio.packages,
                )

    async def history(sizes: list[int]) -> None:
        for rows in sizes:
            results.history[size_label(rows)] = await settled(scenarios.history(bench, rows))

    unindexed: list[Throughput] = []

    async def ingest_unindexed() -> None:
        unindexed.append(await search.ingest_without_index(bench, scenarios.ingest))

    # The chat at the load Synapse is measured at, with the same topology.
    async def latency_peer_load() -> Fanout:
        p = bench.profile
        at = replace(
            p,
            fanout_rate=p.peer_latency_rate,
            fanout_rooms=p.peer_latency_rooms,
            fanout_receivers=p.peer_latency_receivers,
            fanout_seconds=p.peer_latency_seconds,
        )
        return await scenarios.fanout(replace(bench, profile=at))

    await step("memory", memory)
    await step("joins", joins)
    async with contextlib.AsyncExitStack() as stack:
        # Synapse runs (idle when not measured) from here to its last measurement, so that
        # each of its measurements follows the chat's counterpart under the same conditions.
        peer: synapse.Prepared | None = None
        if "synapse" in wanted:
            peer = await stack.enter_async_context(
                synapse.running(bench.db, bench.profile, bench.ui, bench.workdir, variant)
            )
        synapse_ingests: list[Throughput] = []
        for _ in range(bench.profile.repeats):
            await step("ingest", ingest)
            await step("ingest-mixed", ingest_mixed)
            await step("reaction-storm", reaction_storm)
            await step("baseline-a", baseline_a)
            await step("ingest-unindexed", ingest_unindexed)
            if peer is not None:
                synapse_ingests.append(await settled(peer.ingest()))
        results.ingest = median_run(ingests) if ingests else None
        results.ingest_mixed = median_run(mixed) if mixed else None
        results.reaction_storm = median_run(storms) if storms else None
        results.baseline_a = median_run(raws) if raws else None
        results.ingest_unindexed = median_run(unindexed) if unindexed else None
        await step("baseline-b", baseline_b)
        if wanted & {"fanout", "socketio"}:
            await fanouts()
        if peer is not None:
            # Alternating, each the median of its runs by p99: one slow moment of a shared
            # machine decides a single run's p99.
            ours: list[Fanout] = []
            theirs: list[Fanout] = []
            for _ in range(bench.profile.repeats):
                ours.append(await settled(latency_peer_load()))
                theirs.append(await settled(peer.latency()))
            results.latency_peer_load = median_latency(ours)
            synapse_latency = median_latency(theirs)
        if peer is not None:
            # The chat at the size Synapse's room has (it cannot be loaded with a million),
            # then Synapse's pages, one right after the other.
            await history([bench.profile.synapse_history_messages])
            pages = await settled(peer.history())
            results.synapse = peer.results(synapse_ingests, synapse_latency, pages)
    # Search at each size right after history at that size: the figures side by side.
    for rows in bench.profile.history_sizes:
        if "history" in wanted:
            await history([rows])
        if "search" in wanted:
            results.search[size_label(rows)] = await settled(search.search(bench, rows))
    if "read-state" in wanted:
        results.read_state = await settled(readstate.read_state(bench))
    if "large-room" in wanted:
        results.large_room = await settled(
            largeroom.measure(bench, with_socketio="socketio" in wanted)
        )
    if "resume-converged" in wanted:
        results.resyncs = await settled(resync.resyncs(bench))
    # Last: it starts and stops six instances of its own, and the first ingest run after it
    # was 1,350-2,300 msg/s instead of ~10,000 (PostgreSQL or the client settling; the two
    # main instances took no part in it).
    await step("transports", transports)


def code_version() -> dict[str, object]:
    """The commit measured, and whether service/ had uncommitted changes (read-only git)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=PROJECT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "service", "migrations")
    return {"commit": git("rev-parse", "HEAD"), "service_uncommitted_changes": bool(changed)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = choose_profile(args)
    if args.out is not None:
        out: Path = args.out
    elif args.smoke:
        out = Path(tempfile.mkdtemp(prefix="chat-bench-results-"))
    else:
        out = PROJECT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    raise_open_files_limit()
    stdout = Console(width=None if sys.stdout.isatty() else 150)
    workdir = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    started = datetime.datetime.now(datetime.UTC)
    load_at_start = load_average()
    wanted = wanted_scenarios(profile, args.only)
    peers = [
        env
        for name, env in (("synapse", peer_env.SYNAPSE), ("socketio", peer_env.SOCKETIO))
        if name in wanted
    ]
    try:
        with Ui(Console(stderr=True)) as ui:
            # Outside the run's time budget: the first build downloads and installs.
            for env in peers:
                if not env.ready():
                    building = ui.step(f"building {env.path} (once)", None)
                    peer_env.ensure(env)
                    building.done()
            prep = ui.step("PostgreSQL: cluster, database, migrations", None)
            with database(args.database_url, workdir) as db:
                prep.done()
                results, pg = asyncio.run(
                    run(profile, db, workdir, ui, wanted, args.synapse_variant)
                )
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta: dict[str, Any] = {
        "profile": profile.name,
        "date": started.isoformat(timespec="seconds"),
        "duration_seconds": round(
            (datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1
        ),
        "machine": machine_info() | {"load_average_at_start": load_at_start},
        "code": code_version(),
        "postgres": pg,
        "database": "existing server" if args.database_url else "private cluster",
        "sizes": asdict(profile),
    }
    report.print_report(stdout, results, meta)
    report.write_json(out / "latest.json", results, meta)
    report.write_plot(out / "latest.png", results, meta)
    print(f"\nwrote {out / 'latest.json'} and {out / 'latest.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
