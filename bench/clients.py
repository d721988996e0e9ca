"""WebSocket clients (the `websockets` library, asyncio) that drive the servers.

Frames are told apart by their first bytes: the service encodes frames with orjson, keys in
the order `type` first and no spaces, so an `ack` starts with `{"type":"ack"`; decoding every
message frame would cost the client more CPU than the server spends sending it. Only what a
measurement needs is decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .config import BODY_TEXT

ACK = '{"type":"ack"'
ERROR = '{"type":"error"'
MESSAGE = '{"type":"message"'
JOINED = '{"type":"joined"'


def chat_url(base: str, token: str) -> str:
    return base.replace("http", "ws", 1) + "/ws?" + urlencode({"token": token})


def naive_url(base: str, room: str, user: str) -> str:
    return base.replace("http", "ws", 1) + "/ws?" + urlencode({"room": room, "user": user})


async def open_socket(url: str, *, compression: bool = True) -> ClientConnection:
    """A client socket. `compression` offers permessage-deflate, as every browser does."""
    return await connect(
        url,
        open_timeout=15,
        close_timeout=3,
        max_size=2**22,
        max_queue=4096,
        compression="deflate" if compression else None,
    )


async def close_all(sockets: Sequence[ClientConnection], concurrency: int = 100) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def close(ws: ClientConnection) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await ws.close()

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await asyncio.gather(*(close(ws) for ws in sockets))


async def send_json(ws: ClientConnection, **frame: Any) -> None:
    await ws.send(orjson.dumps(frame).decode())


@dataclass(frozen=True)
class Joined:
    frame: dict[str, Any]
    replayed: int


async def join(
    ws: ClientConnection, room: str, since: int | None = None, timeout: float = 30.0
) -> Joined:
    """Send `join`; count the replayed messages until `joined`."""
    frame: dict[str, Any] = {"type": "join", "room": room}
    if since is not None:
        frame["since"] = since
    await send_json(ws, **frame)
    replayed = 0
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            assert isinstance(raw, str)
            if raw.startswith(MESSAGE):
                replayed += 1
            elif raw.startswith(JOINED):
                return Joined(orjson.loads(raw), replayed)
            elif raw.startswith(ERROR):
                raise RuntimeError(f"join {room} refused: {raw}")


async def gather_bounded(
    factories: Sequence[Callable[[], Awaitable[ClientConnection]]],
    concurrency: int,
    on_done: Callable[[], None] | None = None,
) -> list[ClientConnection]:
    """Open sockets, at most `concurrency` at a time; the first failure fails them all."""
    gate = asyncio.Semaphore(concurrency)

    async def one(make: Callable[[], Awaitable[ClientConnection]]) -> ClientConnection:
        async with gate:
            ws = await make()
        if on_done is not None:
            on_done()
        return ws

    return list(await asyncio.gather(*(one(f) for f in factories)))


# -- pipelined senders (ingest, baseline B) ------------------------------------------------


@dataclass
class SendTally:
    """What a group of pipelining senders saw inside the measurement window."""

    sent: int = 0
    acks: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    errors_in_window: Counter[str] = field(default_factory=Counter)
    deliveries: int = 0  # message frames received by the senders (their rooms' traffic)
    duplicates: int = 0  # acks with duplicate: true (a client_id seen before)
    ack_ms: list[float] = field(default_factory=list)
    unanswered: int = 0  # sends still without ack or error when the drain time ran out
    closed: Counter[str] = field(default_factory=Counter)


async def pipelined_sender(
    ws: ClientConnection,
    room: str,
    tag: str,
    *,
    window: int,
    start: float,
    measure_from: float,
    stop_at: float,
    tally: SendTally,
    drain_seconds: float = 10.0,
) -> None:
    """From `start` to `stop_at` (perf_counter), keep up to `window` sends without an answer;
    count the acks that arrive between `measure_from` and `stop_at`."""
    credit = asyncio.Semaphore(window)
    sent_at: dict[int, float] = {}

    async def read() -> None:
        try:
            async for raw in ws:
                assert isinstance(raw, str)
                now = time.perf_counter()
                inside = measure_from <= now <= stop_at
                if raw.startswith(MESSAGE):
                    tally.deliveries += inside
                    continue
                is_ack = raw.startswith(ACK)
                if not is_ack and not raw.startswith(ERROR):
                    continue
                frame = orjson.loads(raw)
                ref = frame.get("ref")
                at = sent_at.pop(ref, None) if isinstance(ref, int) else None
                if at is not None:
                    credit.release()
                if not is_ack:
                    tally.errors[str(frame.get("code"))] += 1
                    tally.errors_in_window[str(frame.get("code"))] += inside
                elif frame.get("duplicate"):
                    tally.duplicates += 1
                elif inside:
                    tally.acks += 1
                    if at is not None:
                        tally.ack_ms.append((now - at) * 1000)
        except ConnectionClosed as closed:
            tally.closed[str(closed.rcvd.code if closed.rcvd else "none")] += 1

    reader = asyncio.create_task(read())
    try:
        await asyncio.sleep(max(start - time.perf_counter(), 0))
        ref = 0
        while not reader.done():
            remaining = stop_at - time.perf_counter()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await credit.acquire()
            except TimeoutError:
                break
            ref += 1
            sent_at[ref] = time.perf_counter()
            frame = {"type": "send", "room": room, "body": f"{tag}-{ref} {BODY_TEXT}"}
            await send_json(ws, **frame, client_id=f"{tag}-{ref}", ref=ref)
            tally.sent += time.perf_counter() >= measure_from
        drain_until = time.perf_counter() + drain_seconds
        while sent_at and not reader.done() and time.perf_counter() < drain_until:
            await asyncio.sleep(0.01)
        tally.unanswered += len(sent_at)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


# -- paced senders and latency receivers (fan-out) ----------------------------------------


@dataclass
class FanoutTally:
    """Send-to-receipt latencies of messages sent inside the window, by where they went."""

    sent: int = 0
    acks: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ack_ms: list[float] = field(default_factory=list)  # send to ack, messages sent in window
    cross_ms: list[float] = field(default_factory=list)  # received on the other instance
    same_ms: list[float] = field(default_factory=list)  # received on the sender's instance
    closed: Counter[str] = field(default_factory=Counter)


def fanout_body(instance: int) -> str:
    return f"{instance} {time.time_ns()} {BODY_TEXT}"


async def paced_sender(
    ws: ClientConnection,
    room: str,
    instance: int,
    *,
    rate: float,
    start: float,
    measure_from: float,
    stop_at: float,
    tally: FanoutTally,
) -> int:
    """Send `rate` messages/s on a fixed schedule from `start` to `stop_at` (perf_counter);
    returns how many were sent. A late schedule catches up: the offered load holds."""

    sent_at: dict[int, float] = {}  # ref -> perf_counter, for sends inside the window

    async def read() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                assert isinstance(raw, str)
                if raw.startswith(ACK):
                    tally.acks += 1
                    at = sent_at.pop(orjson.loads(raw).get("ref"), None)
                    if at is not None:
                        tally.ack_ms.append((time.perf_counter() - at) * 1000)
                elif raw.startswith(ERROR):
                    tally.errors[str(orjson.loads(raw).get("code"))] += 1

    reader = asyncio.create_task(read())
    sent = 0
    try:
        interval = 1.0 / rate
        due = start
        while due < stop_at and not reader.done():
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent += 1
            if due >= measure_from:
                tally.sent += 1
                sent_at[sent] = time.perf_counter()
            await send_json(ws, type="send", room=room, body=fanout_body(instance), ref=sent)
            due += interval
        await asyncio.sleep(0.5)  # the last acks
        return sent
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def latency_receiver(
    ws: ClientConnection,
    instance: int,
    *,
    window_ns: tuple[int, int],
    tally: FanoutTally,
    counts: list[int],
    index: int,
) -> None:
    """Record the latency of each message sent inside `window_ns` (time.time_ns); counts[index]
    counts every message received, whenever it was sent."""
    first, last = window_ns
    try:
        async for raw in ws:
            assert isinstance(raw, str)
            if not raw.startswith(MESSAGE):
                continue
            now = time.time_ns()
            counts[index] += 1
            origin, sent_ns, _ = orjson.loads(raw)["body"].split(" ", 2)
            sent = int(sent_ns)
            if first <= sent <= last:
                latency = (now - sent) / 1e6
                (tally.same_ms if int(origin) == instance else tally.cross_ms).append(latency)
    except ConnectionClosed as closed:
        tally.closed[str(closed.rcvd.code if closed.rcvd else "none")] += 1
