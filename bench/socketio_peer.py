"""The python-socketio peer (socketio_app.py, two instances and a private Redis), driven at
the same offered load, with the same topology and the same picows receivers as the chat's
fan-out: what a relay that stores and guarantees nothing costs per delivery.

The client speaks Engine.IO 4 / Socket.IO 5 over WebSocket directly (no polling, no
upgrade): `0{...}` opens, `40` connects the namespace, `42["event",...]` is an event,
`42<id>[...]` one that wants an ack, answered by `43<id>[...]`; the server pings (`2`),
the client answers (`3`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from picows import WSFrame, WSMsgType, WSTransport, ws_connect

from . import clients, peer_env
from .cluster import PROJECT, Server, free_port
from .config import Profile
from .figures import Fanout, Percentiles
from .system import CpuMeter
from .ui import Ui

SETUP = (
    "python-socketio AsyncServer (ASGI, defaults) with AsyncRedisManager, two instances under "
    "uvicorn (websockets-sansio, uvloop, as the chat), a private redis-server (no "
    "persistence); `send` emits to the room (sender included) and acks; nothing stored"
)
_EVENT = "42"
_MESSAGE = '42["message"'
_OPEN_CONCURRENCY = 64


def sio_url(base: str) -> str:
    return base.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"


class _Protocol(clients.Receiver):
    """The Socket.IO handshake, ping answers, the join (ack id 0) and, as a receiver, the
    send-to-receipt latency of `message` events (as clients.Receiver does for the chat)."""

    def __init__(self, instance: int, room: str) -> None:
        super().__init__(instance)
        self.room = room

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self._answer_close(transport, frame, self._tally.closed if self._tally else None)
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        raw = frame.get_payload_as_utf8_text()
        if raw.startswith(_MESSAGE):
            self._on_message(raw)
        elif raw == "2":
            transport.send(WSMsgType.TEXT, b"3")
        elif raw.startswith("43"):
            self._on_ack(raw)
        elif raw.startswith("0{"):
            transport.send(WSMsgType.TEXT, b"40")
        elif raw.startswith("40"):
            join = b'420["join",' + orjson.dumps(self.room) + b"]"
            transport.send(WSMsgType.TEXT, join)
        elif raw.startswith("44") and not self.joined.done():
            self.joined.set_exception(RuntimeError(f"socket.io connect refused: {raw}"))

    def _on_ack(self, raw: str) -> None:
        if raw.startswith("430[") and not self.joined.done():
            self.joined.set_result(None)

    def _on_message(self, raw: str) -> None:
        if not self.joined.done():
            return
        now = time.time_ns()
        self.count += 1
        tally = self._tally
        if tally is None:
            return
        origin, sent_ns, _ = orjson.loads(raw[2:])[1]["body"].split(" ", 2)
        sent = int(sent_ns)
        if self._window[0] <= sent <= self._window[1]:
            latency = (now - sent) / 1e6
            (tally.same_ms if int(origin) == self.instance else tally.cross_ms).append(latency)


class _Sender(_Protocol):
    """A paced sender: sends with ack ids from 1; the ack's delay is recorded for sends
    inside the window. It is in the room, and gets its messages, as the chat's senders do."""

    def __init__(self, instance: int, room: str, tally: clients.FanoutTally) -> None:
        super().__init__(instance, room)
        self.sent_at: dict[int, float] = {}
        self.tally = tally

    def send(self, ack_id: int, body: str, timed: bool) -> None:
        assert self.transport is not None
        if timed:
            self.sent_at[ack_id] = time.perf_counter()
        data = orjson.dumps(["send", {"room": self.room, "body": body}])
        self.transport.send(WSMsgType.TEXT, f"{_EVENT}{ack_id}".encode() + data)

    def _on_ack(self, raw: str) -> None:
        if raw.startswith("430["):
            super()._on_ack(raw)
            return
        self.tally.acks += 1
        ack_id = int(raw[2 : raw.index("[")])
        at = self.sent_at.pop(ack_id, None)
        if at is not None:
            self.tally.ack_ms.append((time.perf_counter() - at) * 1000)

    def _on_message(self, raw: str) -> None:
        self.count += 1


async def _open(make: Callable[[], _Protocol], url: str, timeout: float = 30.0) -> _Protocol:
    transport, listener = await ws_connect(
        make, url, websocket_handshake_timeout=15, max_frame_size=2**22
    )
    assert isinstance(listener, _Protocol)
    try:
        async with asyncio.timeout(timeout):
            await listener.joined
    except BaseException:
        transport.disconnect()
        raise
    return listener


async def _paced(
    sender: _Sender, *, rate: float, start: float, measure_from: float, stop_at: float
) -> int:
    """Send `rate` messages/s on a fixed schedule (a late one catches up), as
    clients.paced_sender does for the chat; returns how many were sent."""
    sent = 0
    due = start
    interval = 1.0 / rate
    while due < stop_at and not sender.closed:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent += 1
        timed = due >= measure_from
        sender.tally.sent += timed
        sender.send(sent, clients.fanout_body(sender.instance), timed)
        due += interval
    await asyncio.sleep(0.5)  # the last acks
    return sent


def instance(name: str, python: Path, redis_url: str, logs: Path) -> Server:
    port = free_port()
    argv = [str(python), str(PROJECT / "bench" / "socketio_app.py"), str(port), redis_url]
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    return Server(
        name, argv, env, port, logs / f"{name}.log", "/socket.io/?EIO=4&transport=polling"
    )


@dataclass
class SocketIoRun:
    profile: Profile
    ui: Ui
    servers: list[Server]
    redis_pid: int
    packages: list[str]  # pip freeze of the venv


async def fanout(run: SocketIoRun) -> Fanout:
    """The chat's fan-out (scenarios.fanout) on the two socket.io instances."""
    p = run.profile
    tag = uuid.uuid4().hex[:8]
    rooms = [f"sio-{tag}-{i}" for i in range(p.fanout_rooms)]
    per_room = p.fanout_receivers // p.fanout_rooms
    step = run.ui.step("socket.io: connecting receivers", per_room * len(rooms) + len(rooms))
    urls = [sio_url(s.url) for s in run.servers]
    tally = clients.FanoutTally()
    receivers: list[tuple[_Protocol, int]] = []
    senders: list[_Sender] = []
    try:
        plan = [(k, j % 2) for k in range(len(rooms)) for j in range(per_room)]

        def opener(k: int, inst: int) -> Callable[[], Awaitable[_Protocol]]:
            return lambda: _open(lambda: _Protocol(inst, rooms[k]), urls[inst])

        opened = await clients.gather_bounded(
            [opener(k, inst) for k, inst in plan], _OPEN_CONCURRENCY, step.advance
        )
        receivers = [(r, k) for r, (k, _) in zip(opened, plan, strict=True)]
        for k, room in enumerate(rooms):
            sender = await _open(functools.partial(_Sender, k % 2, room, tally), urls[k % 2])
            assert isinstance(sender, _Sender)
            senders.append(sender)
            step.advance()
        await asyncio.sleep(0.5)

        step.update(description="socket.io: paced sends")
        start = time.perf_counter() + 0.2
        measure_from = start + p.warmup_seconds
        stop_at = measure_from + p.fanout_seconds
        to_ns = time.time_ns() - time.perf_counter_ns()
        window = (int(measure_from * 1e9) + to_ns, int(stop_at * 1e9) + to_ns)
        for receiver, _ in receivers:
            receiver.measure(tally, window)
        pids = {f"socketio {s.name[-1]}": s.pid for s in run.servers}
        pids |= {"redis": run.redis_pid, "bench client": os.getpid()}
        cpu: dict[str, float] = {}

        async def meter() -> None:
            await asyncio.sleep(max(measure_from - time.perf_counter(), 0))
            m = CpuMeter(pids, {})
            await asyncio.sleep(max(stop_at - time.perf_counter(), 0))
            cpu.update(m.stop())

        rate = p.fanout_rate / len(rooms)
        async with asyncio.timeout(stop_at - time.perf_counter() + 30):
            sent_per_room, _, _ = await asyncio.gather(
                asyncio.gather(
                    *(
                        _paced(
                            s,
                            rate=rate,
                            start=clients.staggered(start, rate, k, len(senders)),
                            measure_from=measure_from,
                            stop_at=stop_at,
                        )
                        for k, s in enumerate(senders)
                    )
                ),
                step.tick(stop_at - time.perf_counter()),
                meter(),
            )
        expected = [sent_per_room[k] for _, k in receivers]
        grace = time.perf_counter() + 10
        while [r.count for r, _ in receivers] != expected and time.perf_counter() < grace:
            await asyncio.sleep(0.05)
    finally:
        await clients.close_joined([r for r, _ in receivers] + list(senders))
        step.done()
    in_window = len(tally.cross_ms) + len(tally.same_ms)
    counts = [r.count for r, _ in receivers]
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
        expected_deliveries_per_second=round(tally.sent * per_room / p.fanout_seconds, 1),
        missing=sum(max(e - c, 0) for e, c in zip(expected, counts, strict=True)),
        closed=dict(tally.closed),
        errors=dict(tally.errors),
        cpu=cpu,
        all_ms=Percentiles.of(tally.cross_ms + tally.same_ms),
    )


@contextlib.asynccontextmanager
async def running(profile: Profile, ui: Ui, workdir: Path) -> AsyncIterator[SocketIoRun]:
    """The peer's venv (built if missing), a private Redis and two instances, ready; stopped
    at the end."""
    step = ui.step(f"socket.io: venv {peer_env.SOCKETIO.path.name}, Redis, 2 instances", None)
    python = await asyncio.to_thread(peer_env.ensure, peer_env.SOCKETIO)
    packages = await asyncio.to_thread(peer_env.freeze, peer_env.SOCKETIO)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    with peer_env.redis_server(workdir / "redis") as redis:
        servers = [instance(f"socketio-{x}", python, redis.url, logs) for x in ("a", "b")]
        try:
            for server in servers:
                server.start()
            await asyncio.gather(*(s.wait_ready() for s in servers))
            step.done()
            yield SocketIoRun(profile, ui, servers, redis.pid, packages)
        except BaseException:
            for server in servers:
                ui.log(f"--- {server.name} log ---\n{server.log_tail()}")
            raise
        finally:
            with contextlib.suppress(Exception):
                await asyncio.gather(*(asyncio.to_thread(s.stop) for s in servers))
