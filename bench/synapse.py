"""Matrix Synapse, the peer that persists as we do: a homeserver from a venv of its own
(peer_env.py), on a database of its own in the benchmark's PostgreSQL, driven through the
Client-Server API with aiohttp (as the history measurement drives the chat over REST).

What is measured, each with the chat's counterpart in the report:
- ingest: concurrent senders, each one `PUT /rooms/{id}/send/m.room.message/{txnId}` at a
  time (a Matrix client sends a room's messages in order), acked sends/s and server CPU;
- latency: paced senders at a rate it sustains; receivers long-polling `/sync` take the
  send-to-receipt time of every message (the body carries `time.time_ns()`, as the chat's);
- history: `GET /rooms/{id}/messages?dir=b&limit=50` from random page tokens of one room.

The homeserver and its configuration are in synapse_server.py, the API calls in matrix.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import orjson

from . import clients, peer_env
from .cluster import Database
from .config import BODY_TEXT, Profile
from .figures import Fanout, Pages, Percentiles, SynapseResults, Throughput, median_run
from .matrix import CLIENT, MatrixError, call, create_room, join_room, register, send_text, session
from .synapse_server import VARIANTS, Homeserver, start, stop
from .system import CpuMeter, machine_quiet
from .ui import Ui

# Timelines as Element asks for them: members loaded lazily, no presence or account data.
_SYNC_FILTER = orjson.dumps(
    {
        "room": {"timeline": {"limit": 100}, "state": {"lazy_load_members": True}},
        "presence": {"types": []},
        "account_data": {"types": []},
    }
).decode()
_PAGE_FILTER = orjson.dumps({"lazy_load_members": True}).decode()


async def register_users(hs: Homeserver, count: int, ui: Ui) -> list[str]:
    step = ui.step(f"synapse: registering {count} users", count)
    run = uuid.uuid4().hex[:6]
    async with session(hs.server.url, 8) as http:
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
    async with session(hs.server.url, 8) as http:
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
        async with session(hs.server.url, senders) as http:
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
            (await call(http, "GET", f"{CLIENT}/sync", self.token, None, params))["next_batch"]
        )

    async def poll(self, http: aiohttp.ClientSession, until: float) -> None:
        while time.perf_counter() < until:
            params = {"filter": _SYNC_FILTER, "timeout": "5000", "since": self.since or ""}
            data = await call(http, "GET", f"{CLIENT}/sync", self.token, None, params)
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
        due = clients.staggered(start, 1 / interval, k, len(rooms))
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
        async with session(hs.server.url) as http:
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
    async with session(hs.server.url, 8) as http:
        todo = iter(range(count))

        async def fill(u: int) -> None:
            for k in todo:
                await send_text(http, tokens[u], room, f"history {k} {BODY_TEXT}")
                step.advance()

        await asyncio.gather(*(fill(u) for u in range(8)))
    load_seconds = time.perf_counter() - began
    path = f"{CLIENT}/rooms/{quote(room)}/messages"
    latencies: list[float] = []
    cpu: dict[str, float] = {}
    async with session(hs.server.url, 1) as http:
        step.update(description="synapse history: collecting page tokens", completed=0)
        page_tokens: list[str | None] = [None]
        params = {"dir": "b", "limit": "50", "filter": _PAGE_FILTER}
        for _ in range(count // 50 + 20):
            token = page_tokens[-1]
            page = await call(http, "GET", path, tokens[0], None, params | _from(token))
            if not page.get("chunk") or "end" not in page:
                break
            page_tokens.append(str(page["end"]))
        # The last tokens reach the room's creation: pages of 50 messages are wanted.
        usable = page_tokens[: max(count // 50, 1)]
        rng = random.Random(count)
        await machine_quiet()  # as the chat's pages wait (scenarios.quiet)
        step.update(description="synapse history: pages", total=p.synapse_history_requests)
        meter = _meter(hs, db)
        for i in range(20 + p.synapse_history_requests):
            token = rng.choice(usable)
            t0 = time.perf_counter()
            page = await call(http, "GET", path, tokens[0], None, params | _from(token))
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
