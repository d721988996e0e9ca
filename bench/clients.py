"""WebSocket clients that drive the servers: the `websockets` library (asyncio) where a
client's own cost does not enter a figure, picows (frames parsed in C) where it would: the
fan-out's receivers, the pipelining senders, and the timed joins and resumes.

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
from typing import Any, TypeVar, cast
from urllib.parse import urlencode

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .config import BODY_TEXT

ACK = '{"type":"ack"'
ERROR = '{"type":"error"'
MESSAGE = '{"type":"message"'
# The frames of a room's log that a joined socket receives (the deliveries counted).
EVENTS = (MESSAGE, '{"type":"reaction"', '{"type":"edit"', '{"type":"delete"')
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


_Opened = TypeVar("_Opened")


async def gather_bounded(
    factories: Sequence[Callable[[], Awaitable[_Opened]]],
    concurrency: int,
    on_done: Callable[[], None] | None = None,
) -> list[_Opened]:
    """Open sockets, at most `concurrency` at a time; the first failure fails them all."""
    gate = asyncio.Semaphore(concurrency)

    async def one(make: Callable[[], Awaitable[_Opened]]) -> _Opened:
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
    deliveries: int = 0  # event frames received by the senders (their rooms' traffic)
    duplicates: int = 0  # acks with duplicate: true (a client_id seen before)
    ack_ms: list[float] = field(default_factory=list)
    unanswered: int = 0  # sends still without ack or error when the drain time ran out
    closed: Counter[str] = field(default_factory=Counter)


class JoiningListener(WSListener):
    """What the picows clients share: the transport, the `joined` future settled by the
    join's answer, and the close handshake (a close the server starts is counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: WSTransport | None = None
        self.joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if not self.joined.done():
            self.joined.set_exception(ConnectionError("closed before joined"))

    def _settle_join(self, raw: str) -> None:
        """Before `joined`: a `joined` or `error` frame answers the join."""
        if raw.startswith(JOINED):
            self.joined.set_result(None)
        elif raw.startswith(ERROR):
            self.joined.set_exception(RuntimeError(f"join refused: {raw}"))

    def _answer_close(
        self, transport: WSTransport, frame: WSFrame, closes: Counter[str] | None
    ) -> None:
        self.closed = True
        if not transport.is_close_frame_sent:  # the server closed us: worth reporting
            if closes is not None:
                closes[str(frame.get_close_code())] += 1
            transport.send_close(frame.get_close_code())
        transport.disconnect()


_Listener = TypeVar("_Listener", bound=JoiningListener)


async def open_joined(
    make: Callable[[], _Listener], url: str, room: str | None, timeout: float = 30.0
) -> _Listener:
    """A picows socket to `url` (ws://...), joined to `room` (None: the URL subscribes)."""
    transport, connected = await ws_connect(
        make, url, websocket_handshake_timeout=15, max_frame_size=2**22
    )
    listener = cast(_Listener, connected)
    try:
        if room is None:
            listener.joined.set_result(None)
        else:
            transport.send(WSMsgType.TEXT, orjson.dumps({"type": "join", "room": room}))
            async with asyncio.timeout(timeout):
                await listener.joined
    except BaseException:
        transport.disconnect()
        raise
    return listener


async def close_joined(listeners: Sequence[JoiningListener]) -> None:
    """Close handshake on every socket, bounded."""
    for listener in listeners:
        if listener.transport is not None and not listener.transport.is_close_frame_sent:
            listener.transport.send_close(WSCloseCode.OK)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await asyncio.gather(
                *(x.transport.wait_disconnected() for x in listeners if x.transport is not None)
            )
    for listener in listeners:
        if listener.transport is not None:
            listener.transport.disconnect()


class Replayed(JoiningListener):
    """A picows socket that counts the messages replayed before `joined` (a join's or a
    resume's), parsed in C up to the payload, which is looked at only for its first bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.replayed = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            if self.joined.done():
                return
            raw = frame.get_payload_as_utf8_text()
            if raw.startswith(MESSAGE):
                self.replayed += 1
            else:
                self._settle_join(raw)
        elif kind == WSMsgType.CLOSE:
            self._answer_close(transport, frame, None)


@dataclass
class TimedJoin:
    handshake_s: float  # connect to the socket open
    join_s: float  # the join sent to `joined` received
    replayed: int


async def timed_join(url: str, room: str, since: int | None, timeout: float = 30.0) -> TimedJoin:
    """Open a picows socket to `url` (ws://...), join `room` (from `since`), and time both;
    the socket is closed before returning."""
    began = time.perf_counter()
    transport, connected = await ws_connect(
        Replayed, url, websocket_handshake_timeout=15, max_frame_size=2**22
    )
    listener = cast(Replayed, connected)
    opened = time.perf_counter()
    try:
        frame: dict[str, Any] = {"type": "join", "room": room}
        if since is not None:
            frame["since"] = since
        transport.send(WSMsgType.TEXT, orjson.dumps(frame))
        async with asyncio.timeout(timeout):
            await listener.joined
        ended = time.perf_counter()
    finally:
        await close_joined([listener])
    return TimedJoin(opened - began, ended - opened, listener.replayed)


class PipelinedSender(JoiningListener):
    """A pipelining sender on picows: keeps up to `window` sends unanswered, and sends the
    next one from the callback that reads an answer (no task, no queue per frame). With 32
    such sockets also receiving their rooms' traffic (~40k frames/s in all), the `websockets`
    client took ~0.6 of the machine's 2 cores away from the servers under test."""

    def __init__(
        self,
        room: str,
        tag: str,
        window: int,
        tally: SendTally,
        *,
        mixed: bool = False,
        storm: tuple[int, str] | None = None,
    ) -> None:
        super().__init__()
        self.room, self.tag, self.window, self.tally = room, tag, window, tally
        self.sent_at: dict[int, float] = {}
        self.measure_from = self.stop_at = 0.0
        self._ref = 0
        # Mixed events (PROTOCOL v2's room log): of every four commands one is a message, one
        # an edit of the sender's newest message, one a reaction added to it and one that
        # reaction taken back; until a first message is acked, messages only.
        self.mixed = mixed
        self._sends: set[int] = set()  # refs of the sends in flight
        self._newest = 0  # seq of the sender's newest acked message
        self._reacted: tuple[int, str] | None = None
        # A reaction storm: every command reacts to message `storm[0]` with `storm[1]`, in
        # turn added and taken back (each a change, in the socket's order).
        self.storm = storm

    def begin(self, measure_from: float, stop_at: float) -> None:
        """Fill the window now; each answer then makes room for one more until `stop_at`."""
        self.measure_from, self.stop_at = measure_from, stop_at
        for _ in range(self.window):
            self._send_next()

    def _send_next(self) -> None:
        now = time.perf_counter()
        if self.closed or self.transport is None or now >= self.stop_at:
            return
        self._ref += 1
        ref = self._ref
        self.sent_at[ref] = now
        cid = f"{self.tag}-{ref}"
        change = self._change(ref) if self.mixed else self._storm(ref) if self.storm else None
        if change is not None:
            self.transport.send(WSMsgType.TEXT, orjson.dumps({**change, "ref": ref}))
        else:
            self._sends.add(ref)
            frame = {"type": "send", "room": self.room, "body": f"{cid} {BODY_TEXT}"}
            self.transport.send(
                WSMsgType.TEXT, orjson.dumps({**frame, "client_id": cid, "ref": ref})
            )
        self.tally.sent += now >= self.measure_from

    def _storm(self, ref: int) -> dict[str, object]:
        """The reaction storm's next command: the emoji added, then taken back."""
        assert self.storm is not None
        target, emoji = self.storm
        return {"type": "react", "room": self.room, "target": target, "emoji": emoji,
                "op": "add" if ref % 2 else "remove"}  # fmt: skip

    def _change(self, ref: int) -> dict[str, object] | None:
        """The mixed run's next command when it is not a message."""
        step, target = ref % 4, self._newest
        if step == 0 or not target:
            return None
        base: dict[str, object] = {"room": self.room, "target": target}
        if step == 1:
            return {**base, "type": "edit", "body": f"{self.tag} edit {ref} {BODY_TEXT}"}
        if step == 2:
            self._reacted = (target, f"e{ref % 8}")
            return {**base, "type": "react", "emoji": self._reacted[1], "op": "add"}
        if self._reacted is None:
            return None
        reacted, self._reacted = self._reacted, None
        return {"room": self.room, "target": reacted[0], "type": "react", "emoji": reacted[1],
                "op": "remove"}  # fmt: skip

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.CLOSE:
            self._answer_close(transport, frame, self.tally.closed)
            return
        if kind != WSMsgType.TEXT:
            return
        raw = frame.get_payload_as_utf8_text()
        now = time.perf_counter()
        inside = self.measure_from <= now <= self.stop_at
        if raw.startswith(EVENTS):
            self.tally.deliveries += inside
            return
        if not self.joined.done():
            self._settle_join(raw)
            return
        is_ack = raw.startswith(ACK)
        if not is_ack and not raw.startswith(ERROR):
            return
        answer = orjson.loads(raw)
        ref = answer.get("ref")
        at = self.sent_at.pop(ref, None) if isinstance(ref, int) else None
        if ref in self._sends:
            self._sends.discard(ref)
            seq = answer.get("seq")
            if is_ack and isinstance(seq, int):
                self._newest = max(self._newest, seq)
        if not is_ack:
            self.tally.errors[str(answer.get("code"))] += 1
            self.tally.errors_in_window[str(answer.get("code"))] += inside
        elif answer.get("duplicate"):
            self.tally.duplicates += 1
        elif inside:
            self.tally.acks += 1
            if at is not None:
                self.tally.ack_ms.append((now - at) * 1000)
        if at is not None:
            self._send_next()


async def open_pipelined(
    url: str,
    room: str,
    tag: str,
    window: int,
    tally: SendTally,
    *,
    join_room: bool = True,
    mixed: bool = False,
    storm: tuple[int, str] | None = None,
) -> PipelinedSender:
    """A picows sender on `url` (ws://...); joined to `room` first unless `join_room` is
    False (the naive app subscribes by URL); `mixed` sends edits and reactions too; `storm`
    (message, emoji) sends only reactions to that message."""
    return await open_joined(
        lambda: PipelinedSender(room, tag, window, tally, mixed=mixed, storm=storm),
        url,
        room if join_room else None,
    )


async def run_pipelined(
    senders: Sequence[PipelinedSender],
    *,
    start: float,
    measure_from: float,
    stop_at: float,
    drain_seconds: float = 10.0,
) -> None:
    """Start every sender at `start` (perf_counter), stop sending at `stop_at`, then wait
    (bounded) for the answers still due; those still missing count as unanswered."""
    await asyncio.sleep(max(start - time.perf_counter(), 0))
    for sender in senders:
        sender.begin(measure_from, stop_at)
    await asyncio.sleep(max(stop_at - time.perf_counter(), 0))
    drain_until = time.perf_counter() + drain_seconds
    while time.perf_counter() < drain_until and any(s.sent_at and not s.closed for s in senders):
        await asyncio.sleep(0.01)
    for sender in senders:
        sender.tally.unanswered += len(sender.sent_at)


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


def staggered(start: float, rate: float, k: int, senders: int) -> float:
    """When sender `k` of `senders`, each at `rate` messages/s, first sends: spread evenly
    over one interval, so the total offered load arrives at an even pace (as Synapse's
    latency senders do) rather than in bursts of one message per sender."""
    return start + k / (rate * senders)


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


class Receiver(JoiningListener):
    """A joined fan-out receiver on picows: each frame is handled in the read callback
    (parsed in C up to the payload; no task, no queue), so that 200 receivers cost the
    client little and the receipt time is taken as the frame arrives. On the `websockets`
    client they took ~0.6 of the machine's 2 cores, away from the service under test.

    `count` counts every message received; once `measure` is called, messages sent inside
    the window (time.time_ns) have their send-to-receipt latency recorded in the tally."""

    def __init__(self, instance: int) -> None:
        super().__init__()
        self.instance = instance
        self.count = 0
        self._tally: FanoutTally | None = None
        self._window = (0, 0)

    def measure(self, tally: FanoutTally, window_ns: tuple[int, int]) -> None:
        self._tally, self._window = tally, window_ns

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            raw = frame.get_payload_as_utf8_text()
            if raw.startswith(MESSAGE):
                if not self.joined.done():
                    return  # replayed on join, before `joined`: not part of the measurement
                now = time.time_ns()
                self.count += 1
                tally = self._tally
                if tally is None:
                    return
                origin, sent_ns, _ = orjson.loads(raw)["body"].split(" ", 2)
                sent = int(sent_ns)
                if self._window[0] <= sent <= self._window[1]:
                    latency = (now - sent) / 1e6
                    same = int(origin) == self.instance
                    (tally.same_ms if same else tally.cross_ms).append(latency)
            elif not self.joined.done():
                self._settle_join(raw)
        elif kind == WSMsgType.CLOSE:
            self._answer_close(transport, frame, self._tally.closed if self._tally else None)


async def open_receiver(url: str, room: str, instance: int) -> Receiver:
    """A picows socket to `url` (ws://...), joined to `room`."""
    return await open_joined(lambda: Receiver(instance), url, room)
