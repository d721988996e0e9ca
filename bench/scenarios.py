"""One function per measurement of the service itself (the baselines are in baselines.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import orjson
from websockets.asyncio.client import ClientConnection

from service.settings import Settings

# The statement behind a history page (the caller's right to read the room and its page),
# its parameters room, user, before and limit.
from service.store import _READABLE_NEWEST as _PAGE_SQL

from . import clients
from .cluster import Database, Server, bulk_load, chat_instance, create_rooms
from .cluster import username as bench_username
from .config import Profile
from .figures import (
    Fanout,
    History,
    JoinTimes,
    Memory,
    Percentiles,
    Throughput,
    Transport,
    size_label,
)
from .system import CpuMeter, machine_quiet
from .ui import Ui

_OPEN_CONCURRENCY = 64


@dataclass
class Bench:
    """Everything a measurement needs: the sizes, the database, the running instances."""

    profile: Profile
    db: Database
    instances: list[Server]  # two `chat serve` processes
    tokens: list[str]  # tokens[i] is bench user i's
    ui: Ui
    workdir: Path
    secret: str  # the instances' signing key, which minted `tokens`

    def cpu_meter(self, extra: dict[str, int] | None = None) -> CpuMeter:
        pids = {f"instance {s.name[-1]}": s.pid for s in self.instances}
        pids |= {"bench client": os.getpid()} | (extra or {})
        data_dir = self.db.data_dir
        return CpuMeter(pids, {"postgres": data_dir} if data_dir is not None else {})

    async def connect_joined(
        self, instance: Server, user: int, room: str, *, compression: bool = True
    ) -> ClientConnection:
        ws = await clients.open_socket(
            clients.chat_url(instance.url, self.tokens[user]), compression=compression
        )
        try:
            await clients.join(ws, room)
        except BaseException:
            await ws.close()
            raise
        return ws


async def scrape(instances: list[Server]) -> dict[str, float]:
    """The instances' Prometheus metrics, summed over the instances ('name{labels}': value)."""
    totals: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for instance in instances:
            for line in (await http.get(f"{instance.url}/metrics")).text.splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def histogram_delta(
    before: dict[str, float], after: dict[str, float], name: str
) -> dict[str, float]:
    """Count, mean and estimated p50/p99 of a Prometheus histogram between two scrapes
    (linear interpolation inside a bucket, as PromQL's histogram_quantile)."""
    count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
    prefix = f'{name}_bucket{{le="'
    buckets = sorted(
        (float(key[len(prefix) : -2]), value - before.get(key, 0.0))
        for key, value in after.items()
        if key.startswith(prefix) and not key.endswith('+Inf"}')
    )
    out = {"count": count, "mean": total / count if count else 0.0}
    for q in (50, 99):
        rank, low, seen = count * q / 100, 0.0, 0.0
        estimate = buckets[-1][0] if buckets else 0.0
        for upper, cumulative in buckets:
            if cumulative >= rank and cumulative > seen:
                estimate = low + (upper - low) * (rank - seen) / (cumulative - seen)
                break
            low, seen = upper, cumulative
        out[f"p{q}"] = estimate
    return out


async def measured(
    meter_factory: Callable[[], CpuMeter], start: float, stop: float, into: dict[str, float]
) -> None:
    """CPU use between two perf_counter instants, written into `into`."""
    await asyncio.sleep(max(start - time.perf_counter(), 0))
    meter = meter_factory()
    await asyncio.sleep(max(stop - time.perf_counter(), 0))
    into.update(meter.stop())


async def quiet(
    bench: Bench, *, at_least: float = 0.5, at_most: float = 60.0, cores: float = 0.15
) -> None:
    """Wait at least `at_least` s, then until each instance uses under `cores` over a quarter
    of a second (the presence events of many joins, one per member per join, have gone out),
    then until the whole machine is quiet (system.machine_quiet), each at most `at_most` s."""
    await asyncio.sleep(at_least)
    until = time.perf_counter() + at_most
    while time.perf_counter() < until:
        before = [s.cpu_seconds() for s in bench.instances]
        await asyncio.sleep(0.25)
        used = [s.cpu_seconds() - b for s, b in zip(bench.instances, before, strict=True)]
        if max(used) < cores * 0.25:
            break
    await machine_quiet(at_most)


# -- ingest ---------------------------------------------------------------------------------


# Opens sender i: given its client_id prefix and the tally it reports to.
OpenSender = Callable[[int, str, clients.SendTally], Awaitable[clients.PipelinedSender]]


async def pipelined_run(
    bench: Bench,
    label: str,
    open_sender: OpenSender,
    *,
    setup: str,
    extra_pids: dict[str, int] | None = None,
) -> Throughput:
    """Open the senders, let them pipeline for the profile's duration, and count acks per
    second inside the window."""
    p = bench.profile
    step = bench.ui.step(f"{label}: connecting {p.ingest_senders} senders", p.ingest_senders)
    senders: list[clients.PipelinedSender] = []
    server: dict[str, float] = {}
    tally = clients.SendTally()
    run = uuid.uuid4().hex[:8]  # client_ids must not repeat an earlier run's
    try:
        for i in range(p.ingest_senders):
            senders.append(await open_sender(i, f"{run}-{i}", tally))
            step.advance()
        step.update(description=f"{label}: sending")
        before = await scrape(bench.instances)
        cpu: dict[str, float] = {}
        start = time.perf_counter() + 0.2
        measure_from = start + p.warmup_seconds
        stop_at = measure_from + p.ingest_seconds
        await asyncio.gather(
            step.tick(stop_at - time.perf_counter()),
            measured(lambda: bench.cpu_meter(extra_pids), measure_from, stop_at, cpu),
            clients.run_pipelined(senders, start=start, measure_from=measure_from, stop_at=stop_at),
        )
        after = await scrape(bench.instances)
        batches = histogram_delta(before, after, "chat_write_batch_size")
        commits = histogram_delta(before, after, "chat_commit_seconds")
        if batches["count"]:
            server = {
                "write_transactions": batches["count"],
                "messages_per_transaction_mean": round(batches["mean"], 1),
                "commit_ms_mean": round(commits["mean"] * 1000, 2),
                "commit_ms_p99_estimate": round(commits["p99"] * 1000, 2),
            }
    finally:
        await clients.close_joined(senders)
        step.done()
    notes = []
    if tally.duplicates:
        notes.append(f"{tally.duplicates} acks said duplicate (nothing stored)")
    if tally.unanswered:
        notes.append(f"{tally.unanswered} sends unanswered after the drain time")
    if tally.closed:
        notes.append(f"sockets closed by the server: {dict(tally.closed)}")
    return Throughput(
        label=label,
        per_second=round(tally.acks / p.ingest_seconds, 1),
        count=tally.acks,
        seconds=p.ingest_seconds,
        setup=setup,
        errors=dict(tally.errors),
        errors_in_window=dict(tally.errors_in_window),
        latency_ms=Percentiles.of(tally.ack_ms),
        deliveries_per_second=round(tally.deliveries / p.ingest_seconds, 1),
        cpu=cpu,
        server=server,
        notes=notes,
    )


async def ingest(bench: Bench) -> Throughput:
    """Senders on both instances pipeline sends into a few rooms; acked messages/s."""
    p = bench.profile
    rooms = [f"bench-ingest-{i}" for i in range(p.ingest_rooms)]

    span = p.ingest_rooms_span_instances

    async def open_sender(i: int, tag: str, tally: clients.SendTally) -> clients.PipelinedSender:
        # Sender i uses instance i % 2; with `span`, consecutive senders share a room.
        room = rooms[(i // 2 if span else i) % len(rooms)]
        url = clients.chat_url(bench.instances[i % 2].url, bench.tokens[i])
        return await clients.open_pipelined(url, room, tag, p.ingest_window, tally)

    per_room = p.ingest_senders // p.ingest_rooms
    where = "on both instances" if span else "all on one instance"
    setup = (
        f"{p.ingest_senders} sockets ({p.ingest_senders // 2} per instance), {p.ingest_rooms} "
        f"rooms ({per_room} senders each, {where}), up to {p.ingest_window} unacked "
        f"sends per socket, client_id on every send, {p.ingest_seconds:g} s"
    )
    return await pipelined_run(bench, "ingest", open_sender, setup=setup)


async def ingest_mixed(bench: Bench) -> Throughput:
    """As ingest, but of every four commands one is a message and three change the sender's
    newest message (an edit, a reaction added, the reaction taken back): events acked/s."""
    p = bench.profile
    rooms = [f"bench-mixed-{i}" for i in range(p.ingest_rooms)]

    async def open_sender(i: int, tag: str, tally: clients.SendTally) -> clients.PipelinedSender:
        room = rooms[(i // 2) % len(rooms)]
        url = clients.chat_url(bench.instances[i % 2].url, bench.tokens[i])
        return await clients.open_pipelined(url, room, tag, p.ingest_window, tally, mixed=True)

    setup = (
        f"as ingest ({p.ingest_senders} sockets, {p.ingest_rooms} rooms), each socket's "
        "commands in turn a message, an edit of its newest message, a reaction added to it and "
        f"that reaction removed; events acked per second, {p.ingest_seconds:g} s"
    )
    return await pipelined_run(bench, "ingest (mixed events)", open_sender, setup=setup)


# Reaction storm: this many times the ingest's senders, each with this share of its window,
# so as many commands are in flight as in ingest, from more users.
STORM_SENDERS = 4


async def reaction_storm(bench: Bench) -> Throughput:
    """Many users (four times the ingest's senders, over both instances) react to one
    message at once: each adds its emoji (one of 8) and takes it back, over and over, every
    command a change with its own seq in the room's log; events acked per second."""
    p = bench.profile
    room = f"bench-storm-{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {bench.tokens[0]}"}
    async with contextlib.AsyncExitStack() as stack:
        http = await http_sessions(stack, bench, headers)
        async with http[0].post(f"/api/rooms/{room}/messages", json={"body": "react!"}) as r:
            r.raise_for_status()
            target = int((await r.json())["seq"])
    senders = p.ingest_senders * STORM_SENDERS
    window = max(1, p.ingest_window // STORM_SENDERS)
    storm = replace(bench, profile=replace(p, ingest_senders=senders, ingest_window=window))

    async def open_sender(i: int, tag: str, tally: clients.SendTally) -> clients.PipelinedSender:
        url = clients.chat_url(bench.instances[i % 2].url, bench.tokens[1 + i])
        return await clients.open_pipelined(
            url, room, tag, window, tally, storm=(target, f"r{i % 8}")
        )

    setup = (
        f"{senders} users (half per instance) react to one message, each adding its emoji "
        f"(one of 8) and taking it back in turn, up to {window} unacked each; events acked "
        f"per second, {p.ingest_seconds:g} s"
    )
    return await pipelined_run(storm, "reaction storm on one message", open_sender, setup=setup)


# -- fan-out --------------------------------------------------------------------------------


async def fanout(bench: Bench) -> Fanout:
    """Paced senders (one per room, alternating instances) at a fixed total rate; receivers
    in every room on both instances measure send-to-receipt latency."""
    p = bench.profile
    # Fresh rooms for each run: a room used before would replay its last messages on join.
    run = uuid.uuid4().hex[:8]
    rooms = [f"bench-fanout-{run}-{i}" for i in range(p.fanout_rooms)]
    per_room = p.fanout_receivers // p.fanout_rooms
    step = bench.ui.step("fan-out: connecting receivers", per_room * len(rooms) + len(rooms))
    receivers: list[tuple[clients.Receiver, int]] = []  # socket, room index
    senders: list[ClientConnection] = []
    expected: list[int] = []  # messages each receiver should get
    server: dict[str, float] = {}
    try:
        plan = [(k, j % 2, k * per_room + j) for k in range(len(rooms)) for j in range(per_room)]

        def opener(k: int, inst: int, user: int) -> Callable[[], Awaitable[clients.Receiver]]:
            url = clients.chat_url(bench.instances[inst].url, bench.tokens[user])
            return lambda: clients.open_receiver(url, rooms[k], inst)

        opened = await clients.gather_bounded(
            [opener(k, inst, user) for k, inst, user in plan], _OPEN_CONCURRENCY, step.advance
        )
        receivers = [(r, k) for r, (k, _, _) in zip(opened, plan, strict=True)]
        first_sender_user = per_room * len(rooms)
        for k, room in enumerate(rooms):
            ws = await bench.connect_joined(bench.instances[k % 2], first_sender_user + k, room)
            senders.append(ws)
            step.advance()
        await quiet(bench)  # presence events of the joins settle

        step.update(description="fan-out: paced sends")
        tally = clients.FanoutTally()
        start = time.perf_counter() + 0.2
        measure_from = start + p.warmup_seconds
        stop_at = measure_from + p.fanout_seconds
        to_ns = time.time_ns() - time.perf_counter_ns()
        window = (int(measure_from * 1e9) + to_ns, int(stop_at * 1e9) + to_ns)
        for receiver, _ in receivers:
            receiver.measure(tally, window)
        cpu: dict[str, float] = {}
        rate = p.fanout_rate / len(rooms)
        before = await scrape(bench.instances)
        pacing = asyncio.gather(
            *(
                clients.paced_sender(
                    ws,
                    rooms[k],
                    k % 2,
                    rate=rate,
                    start=clients.staggered(start, rate, k, len(senders)),
                    measure_from=measure_from,
                    stop_at=stop_at,
                    tally=tally,
                )
                for k, ws in enumerate(senders)
            )
        )
        sent_per_room, _, _ = await asyncio.gather(
            pacing,
            step.tick(stop_at - time.perf_counter()),
            measured(bench.cpu_meter, measure_from, stop_at, cpu),
        )
        # Wait (bounded) until every receiver got every message of its room.
        expected = [sent_per_room[k] for _, k in receivers]
        grace = time.perf_counter() + 10
        while [r.count for r, _ in receivers] != expected and time.perf_counter() < grace:
            await asyncio.sleep(0.05)
        after = await scrape(bench.instances)
        lag = histogram_delta(before, after, "chat_fanout_lag_seconds")
        batches = histogram_delta(before, after, "chat_write_batch_size")
        commits = histogram_delta(before, after, "chat_commit_seconds")
        server = {
            "commit_ms_mean": round(commits["mean"] * 1000, 2),
            "commit_ms_p99_estimate": round(commits["p99"] * 1000, 2),
            "commit_to_queued_ms_mean": round(lag["mean"] * 1000, 2),
            "commit_to_queued_ms_p50_estimate": round(lag["p50"] * 1000, 2),
            "commit_to_queued_ms_p99_estimate": round(lag["p99"] * 1000, 2),
            "messages_per_transaction_mean": round(batches["mean"], 1),
        }
    finally:
        await clients.close_joined([r for r, _ in receivers])
        await clients.close_all(senders)
        step.done()
    in_window = len(tally.cross_ms) + len(tally.same_ms)
    expected_in_window = tally.sent * per_room
    counts = [r.count for r, _ in receivers]
    missing = sum(max(e - c, 0) for e, c in zip(expected, counts, strict=True))
    return Fanout(
        offered_per_second=p.fanout_rate,
        sent=tally.sent,
        receivers=len(receivers),
        rooms=len(rooms),
        seconds=p.fanout_seconds,
        cross_instance_ms=Percentiles.of(tally.cross_ms),
        same_instance_ms=Percentiles.of(tally.same_ms),
        ack_ms=Percentiles.of(tally.ack_ms),
        deliveries_per_second=round(in_window / p.fanout_seconds, 1),
        expected_deliveries_per_second=round(expected_in_window / p.fanout_seconds, 1),
        missing=missing,
        closed=dict(tally.closed),
        errors=dict(tally.errors),
        cpu=cpu,
        server=server,
        all_ms=Percentiles.of(tally.cross_ms + tally.same_ms),
    )


# -- joins ----------------------------------------------------------------------------------


async def _preload(bench: Bench, room: str, count: int) -> int:
    """A room holding `count` messages (loaded in SQL); returns its last seq."""
    conn = await asyncpg.connect(bench.db.url)
    try:
        room_id = (await create_rooms(conn, [room]))[room]
        await bulk_load(conn, room_id, count, authors=50)
        return int(await conn.fetchval("SELECT last_seq FROM rooms WHERE id = $1", room_id))
    finally:
        await conn.close()


async def _timed_joins(
    bench: Bench, what: str, room: str, count: int, since: int | None, expect: int
) -> JoinTimes:
    """`count` sequential connect + join, alternating instances, each by another user (so
    each join is that user's arrival in the room: presence is announced). The client is
    picows (clients.timed_join): on the `websockets` client, its own parsing of a resume's
    1,000 frames took ~5 ms of CPU, inside the figure."""
    # On a quiet service: the sockets of the scenario before (2,000 in the memory one) leave
    # their rooms a debounce after they close, each a presence write.
    await quiet(bench)
    step = bench.ui.step(f"{what}: {count} joins", count)
    total: list[float] = []
    handshake: list[float] = []
    joining: list[float] = []
    try:
        for i in range(count):
            instance = bench.instances[i % 2]
            url = clients.chat_url(instance.url, bench.tokens[i % len(bench.tokens)])
            timed = await clients.timed_join(url, room, since)
            if timed.replayed != expect:
                raise RuntimeError(f"{what}: replayed {timed.replayed}, expected {expect}")
            total.append((timed.handshake_s + timed.join_s) * 1000)
            handshake.append(timed.handshake_s * 1000)
            joining.append(timed.join_s * 1000)
            step.advance()
    finally:
        step.done()
    return JoinTimes(
        what=what,
        joins=count,
        replayed_per_join=expect,
        total_ms=Percentiles.of(total),
        handshake_ms=Percentiles.of(handshake),
        join_ms=Percentiles.of(joining),
    )


async def connect_replay(bench: Bench) -> JoinTimes:
    """Socket open to `joined`, with the default replay of the newest 50 messages."""
    p = bench.profile
    await _preload(bench, "bench-replay", p.replay_room_messages)
    replay = min(50, p.replay_room_messages)
    return await _timed_joins(bench, "connect + replay", "bench-replay", p.joins, None, replay)


async def resume(bench: Bench) -> JoinTimes:
    """Socket open to `joined` for a join with `since`, 1,000 messages missed."""
    p = bench.profile
    last = await _preload(bench, "bench-resume", 2 * p.resume_messages)
    since = last - p.resume_messages
    return await _timed_joins(bench, "resume", "bench-resume", p.resumes, since, p.resume_messages)


# -- idle memory ----------------------------------------------------------------------------


def _rss_settled(server: Server, seconds: float) -> Callable[[], Awaitable[int]]:
    async def read() -> int:
        await asyncio.sleep(seconds)
        return server.rss_kib()

    return read


async def idle_memory(bench: Bench, instance: Server, *, compression: bool) -> Memory:
    """RSS of one instance before and after opening many authenticated, joined sockets."""
    p = bench.profile
    kind = "deflate offered" if compression else "no deflate offered"
    return await socket_memory(
        bench,
        instance,
        count=p.idle_sockets,
        rooms=[f"bench-idle-{i}" for i in range(p.idle_rooms)],
        compression=compression,
        label=f"idle memory ({kind})",
    )


async def socket_memory(
    bench: Bench,
    instance: Server,
    *,
    count: int,
    rooms: list[str],
    compression: bool,
    label: str,
) -> Memory:
    """RSS of `instance` (settled) before and after opening `count` sockets, socket i by
    user i and joined to one of `rooms`; then they are closed."""
    step = bench.ui.step(f"{label}: {count} sockets", count)

    def opener(i: int) -> Callable[[], Awaitable[ClientConnection]]:
        room = rooms[i % len(rooms)]
        return lambda: bench.connect_joined(instance, i, room, compression=compression)

    # Warm up first (the pool's connections, code paths run once), then measure.
    warm = await clients.gather_bounded([opener(i) for i in range(20)], 20)
    await clients.close_all(warm)
    settle = bench.profile.rss_settle_seconds
    before = await _rss_settled(instance, settle)()
    sockets: list[ClientConnection] = []
    try:
        began = time.perf_counter()
        sockets = await clients.gather_bounded(
            [opener(i) for i in range(count)], _OPEN_CONCURRENCY, step.advance
        )
        connect_seconds = time.perf_counter() - began
        after = await _rss_settled(instance, settle)()
    finally:
        await clients.close_all(sockets)
        step.done()
    return Memory(
        sockets=count,
        compression=compression,
        before_kib=before,
        after_kib=after,
        per_socket_kib=round((after - before) / count, 2),
        connect_seconds=round(connect_seconds, 2),
    )


# -- WebSocket implementation and event loop -------------------------------------------------

# Every combination uvicorn offers the service (CHAT_WS_IMPLEMENTATION, CHAT_EVENT_LOOP).
TRANSPORTS = (
    ("websockets-sansio", "uvloop"),
    ("websockets", "uvloop"),
    ("wsproto", "uvloop"),
    ("websockets-sansio", "asyncio"),
    ("websockets", "asyncio"),
    ("wsproto", "asyncio"),
)


def default_transport() -> tuple[str, str]:
    """The implementation and loop `chat serve` uses when not configured."""
    fields = Settings.model_fields
    return str(fields["ws_implementation"].default), str(fields["event_loop"].default)


@dataclass
class _Deliveries:
    tally: clients.FanoutTally
    receivers: int
    missing: int  # of the messages sent, warm-up included: each receiver should get all
    instance_cpu_seconds: float  # inside the window, unrounded
    cpu: dict[str, float]  # cores inside the window, by process


async def _window_cpu(
    bench: Bench, instance: Server, start: float, stop: float, into: dict[str, float]
) -> float:
    """The instance's CPU seconds between two perf_counter instants; the cores of the
    instance, the bench client and PostgreSQL are written into `into`."""
    await asyncio.sleep(max(start - time.perf_counter(), 0))
    pids = {"instance": instance.pid, "bench client": os.getpid()}
    data_dir = bench.db.data_dir
    meter = CpuMeter(pids, {"postgres": data_dir} if data_dir is not None else {})
    began = instance.cpu_seconds()
    await asyncio.sleep(max(stop - time.perf_counter(), 0))
    used = instance.cpu_seconds() - began
    into.update(meter.stop())
    return used


async def _deliveries(bench: Bench, instance: Server, room: str, label: str) -> _Deliveries:
    """Picows receivers in `room` and one paced sender, all on `instance` (users after the
    idle sockets'): what the receivers got of the messages sent inside the window, and the
    CPU used meanwhile."""
    p = bench.profile
    step = bench.ui.step(f"{label}: connecting receivers", p.transport_receivers + 1)
    first_user = p.transport_sockets
    receivers: list[clients.Receiver] = []
    sender: ClientConnection | None = None
    tally = clients.FanoutTally()
    cpu: dict[str, float] = {}
    try:

        def opener(user: int) -> Callable[[], Awaitable[clients.Receiver]]:
            url = clients.chat_url(instance.url, bench.tokens[user])
            return lambda: clients.open_receiver(url, room, 0)

        receivers = await clients.gather_bounded(
            [opener(first_user + j) for j in range(p.transport_receivers)],
            _OPEN_CONCURRENCY,
            step.advance,
        )
        sender_user = first_user + p.transport_receivers
        sender = await bench.connect_joined(instance, sender_user, room, compression=False)
        step.advance()
        await asyncio.sleep(0.5)  # presence events of the joins settle

        step.update(description=f"{label}: paced sends")
        start = time.perf_counter() + 0.2
        measure_from = start + p.warmup_seconds
        stop_at = measure_from + p.transport_seconds
        to_ns = time.time_ns() - time.perf_counter_ns()
        window = (int(measure_from * 1e9) + to_ns, int(stop_at * 1e9) + to_ns)
        for receiver in receivers:
            receiver.measure(tally, window)
        async with asyncio.timeout(stop_at - time.perf_counter() + 30):
            sent, _, used = await asyncio.gather(
                clients.paced_sender(
                    sender,
                    room,
                    0,
                    rate=p.transport_rate,
                    start=start,
                    measure_from=measure_from,
                    stop_at=stop_at,
                    tally=tally,
                ),
                step.tick(stop_at - time.perf_counter()),
                _window_cpu(bench, instance, measure_from, stop_at, cpu),
            )
        # Wait (bounded) until every receiver got every message.
        grace = time.perf_counter() + 10
        while any(r.count < sent for r in receivers) and time.perf_counter() < grace:
            await asyncio.sleep(0.05)
    finally:
        await clients.close_joined(receivers)
        await clients.close_all([sender] if sender is not None else [])
        step.done()
    missing = sum(max(sent - r.count, 0) for r in receivers)
    return _Deliveries(tally, len(receivers), missing, used, cpu)


async def _start_transport(bench: Bench, ws: str, loop: str) -> Server:
    """A fresh instance of its own on `ws` and `loop`, ready."""
    extra_env = {"CHAT_WS_IMPLEMENTATION": ws, "CHAT_EVENT_LOOP": loop}
    logs = bench.workdir / "logs"
    instance = chat_instance(f"chat-{ws}-{loop}", bench.db, bench.secret, logs, extra_env)
    starting = bench.ui.step(f"{ws} + {loop}: starting an instance", None)
    try:
        instance.start()
        await instance.wait_ready()
    finally:
        starting.done()
    return instance


def _transport(
    ws: str, loop: str, memory: Memory, runs: list[_Deliveries], p: Profile
) -> Transport:
    """One combination's figures: CPU per delivery is the median of its runs; latencies and
    deliveries pool the receipts of every run."""
    per_run = [
        round(run.instance_cpu_seconds / len(run.tally.same_ms) * 1e6, 2)
        if run.tally.same_ms
        else 0.0
        for run in runs
    ]
    median = sorted(range(len(runs)), key=per_run.__getitem__)[len(runs) // 2]
    pooled = [ms for run in runs for ms in run.tally.same_ms]
    closed: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for run in runs:
        closed.update(run.tally.closed)
        errors.update(run.tally.errors)
    return Transport(
        ws=ws,
        loop=loop,
        chosen=(ws, loop) == default_transport(),
        sockets=memory.sockets,
        before_kib=memory.before_kib,
        after_kib=memory.after_kib,
        per_socket_kib=memory.per_socket_kib,
        receivers=runs[median].receivers,
        offered_per_second=p.transport_rate,
        seconds=p.transport_seconds,
        runs=len(runs),
        deliveries_per_second=round(len(pooled) / (p.transport_seconds * len(runs)), 1),
        cpu_us_per_delivery=per_run[median],
        cpu_us_per_delivery_runs=per_run,
        latency_ms=Percentiles.of(pooled),
        p99_ms_runs=[Percentiles.of(run.tally.same_ms).p99 for run in runs],
        missing=sum(run.missing for run in runs),
        cpu=runs[median].cpu,
        closed=dict(closed),
        errors=dict(errors),
    )


async def transports(bench: Bench) -> list[Transport]:
    """Each WebSocket implementation and event loop on an instance of its own (the two main
    instances stay idle). Idle memory per socket first, on each fresh instance in turn; then
    the delivery cost in `repeats` rounds, each through every combination in a rotated order,
    so that neither a slow moment of the machine nor a place in the order falls on one
    combination alone."""
    p = bench.profile
    instances: dict[tuple[str, str], Server] = {}
    memory: dict[tuple[str, str], Memory] = {}
    runs: dict[tuple[str, str], list[_Deliveries]] = {combo: [] for combo in TRANSPORTS}
    try:
        for ws, loop in TRANSPORTS:
            instance = instances[ws, loop] = await _start_transport(bench, ws, loop)
            memory[ws, loop] = await socket_memory(
                bench,
                instance,
                count=p.transport_sockets,
                rooms=[f"bench-transport-idle-{i}" for i in range(p.idle_rooms)],
                compression=False,
                label=f"{ws} + {loop}: idle memory",
            )
        for round_ in range(p.repeats):
            shift = round_ * len(TRANSPORTS) // p.repeats
            for ws, loop in TRANSPORTS[shift:] + TRANSPORTS[:shift]:
                # A room of its own: a used one would replay its last messages to receivers.
                room = f"bench-transport-{ws}-{loop}-{round_}"
                label = f"{ws} + {loop} ({round_ + 1}/{p.repeats})"
                runs[ws, loop].append(await _deliveries(bench, instances[ws, loop], room, label))
    except BaseException:
        for instance in instances.values():
            bench.ui.log(f"--- {instance.name} log ---\n{instance.log_tail()}")
        raise
    finally:
        await asyncio.gather(*(asyncio.to_thread(i.stop) for i in instances.values()))
    return [_transport(ws, loop, memory[ws, loop], runs[ws, loop], p) for ws, loop in TRANSPORTS]


# -- history at scale -----------------------------------------------------------------------

# The instances' own request timing (from the request to the end of the answer): what the
# client measures, minus the client's own overhead.
_HTTP_METRIC = "chat_http_request_seconds"


def _node_path(plan: dict[str, Any]) -> str:
    """The scans of an EXPLAIN (FORMAT JSON) plan, depth first: 'Index Scan using
    uq_rooms_name on rooms, Index Scan Backward using pk_messages on messages, ...'."""
    scans: list[str] = []

    def visit(node: dict[str, Any]) -> None:
        if "Relation Name" in node:
            name = node["Node Type"]
            if node.get("Scan Direction") == "Backward":
                name += " Backward"
            if "Index Name" in node:
                name += f" using {node['Index Name']}"
            scans.append(f"{name} on {node['Relation Name']}")
        for child in node.get("Plans") or []:
            visit(child)

    visit(plan)
    return ", ".join(scans)


async def http_sessions(
    stack: contextlib.AsyncExitStack, bench: Bench, headers: dict[str, str]
) -> list[aiohttp.ClientSession]:
    """One HTTP session per instance, one request at a time each, closed with `stack`.
    aiohttp (its HTTP parser is C): httpx spent ~1.5 ms of its own on each request."""
    return [
        await stack.enter_async_context(
            aiohttp.ClientSession(
                base_url=s.url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=30),
                connector=aiohttp.TCPConnector(limit=1),
            )
        )
        for s in bench.instances
    ]


async def history(bench: Bench, rows: int) -> History:
    """Load `rows` messages into one room (and a tenth as many into other rooms), then page
    back at random points through the REST API and EXPLAIN the query behind it."""
    p = bench.profile
    label = size_label(rows)
    room = f"bench-history-{label.lower()}"
    others = [f"{room}-other-{i}" for i in range(10)]
    other_rows = max(rows // 10 // len(others), 1)
    total = rows + other_rows * len(others)
    step = bench.ui.step(f"history {label}: loading {total:,} rows", total)
    conn = await asyncpg.connect(bench.db.url, command_timeout=1800)
    try:
        began = time.perf_counter()
        ids = await create_rooms(conn, [room, *others])
        chunk = max(min(rows // 20, 500_000), 10_000)
        await bulk_load(conn, ids[room], rows, authors=50, chunk=chunk, on_chunk=step.advance)
        for other in others:
            await bulk_load(conn, ids[other], other_rows, authors=50, on_chunk=step.advance)
        step.update(description=f"history {label}: VACUUM ANALYZE")
        await conn.execute("VACUUM (ANALYZE) messages")
        await conn.execute("VACUUM (ANALYZE) reactions")
        await conn.execute("ANALYZE rooms")
        # Write the loaded pages out now, so the checkpointer does not flush them meanwhile.
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
        load_seconds = time.perf_counter() - began

        await quiet(bench)
        step.update(description=f"history {label}: {p.history_requests} pages", completed=0)
        step.update(total=p.history_requests)
        rng = random.Random(rows)
        latencies: list[float] = []
        headers = {"Authorization": f"Bearer {bench.tokens[0]}"}
        metrics_before = await scrape(bench.instances)
        meter = bench.cpu_meter()
        async with contextlib.AsyncExitStack() as stack:
            http = await http_sessions(stack, bench, headers)
            for i in range(20 + p.history_requests):
                before = rng.randint(2, rows + 1)
                path = f"/api/rooms/{room}/messages?before={before}&limit=50"
                began = time.perf_counter()
                async with http[i % 2].get(path) as response:
                    body = await response.read()
                elapsed = (time.perf_counter() - began) * 1000
                response.raise_for_status()
                page = orjson.loads(body)["messages"]
                if len(page) != min(50, before - 1) or page[-1]["seq"] != before - 1:
                    raise RuntimeError(f"history page before {before} is wrong")
                # One message in ten has reactions (cluster.bulk_load), each with `me`.
                reacted = [m["reactions"] for m in page if m["reactions"]]
                if len(page) >= 10 and (not reacted or "me" not in reacted[0][0]):
                    raise RuntimeError(f"history page before {before} lacks reactions")
                if i >= 20:  # the first 20 warm the connections up
                    latencies.append(elapsed)
                    step.advance()
        cpu = meter.stop()
        served = histogram_delta(metrics_before, await scrape(bench.instances), _HTTP_METRIC)

        before = rng.randint(2, rows + 1)
        args = (room, bench_username(0), before, 51)
        text_plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {_PAGE_SQL}", *args)
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {_PAGE_SQL}", *args)
        plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]
        await conn.execute(f"PREPARE bench_page(text, text, bigint, int) AS {_PAGE_SQL}")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        execute = "EXECUTE bench_page('{}', '{}', {}, {})".format(*args)
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {execute}")
        generic = (json.loads(raw) if isinstance(raw, str) else raw)[0]
        await conn.execute("DEALLOCATE bench_page")
        await conn.execute("RESET plan_cache_mode")
    finally:
        await conn.close()
        step.done()
    return History(
        rows=rows,
        other_rows=other_rows * len(others),
        load_seconds=round(load_seconds, 1),
        requests=len(latencies),
        latency_ms=Percentiles.of(latencies),
        plan=[r[0] for r in text_plan],
        node=_node_path(plan["Plan"]),
        generic_node=_node_path(generic["Plan"]),
        sql_ms=round(float(plan["Execution Time"]), 3),
        server_ms={k: round(v * 1000, 2) for k, v in served.items() if k != "count"},
        cpu=cpu,
    )
