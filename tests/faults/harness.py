"""The client's side of the protocol under faults, and the checks every scenario ends with.

A `Sender` pipelines sends with client_ids. When its socket closes (an instance died, drained,
or refused it) it reconnects, to the next instance of its list, and sends again everything not
yet acked, with the same client_ids; a send refused with `unavailable` is sent again a moment
later. A `Receiver` records every seq it is sent and, on any close, rejoins with `since` its
last seq (paging back over REST when the join says `truncated`).

`Storm.finish` then asserts the promise: every acked message is stored exactly once, with its
body, at the seq its ack named; every receiver saw 1..N once each, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException

from service.security import issue_token
from tests.support import User, unique

# Errors after which the same send is simply tried again: nothing was stored.
RETRYABLE = frozenset({"unavailable", "rate_limited"})
RETRY_DELAY = 0.2
RECONNECT_DELAY = 0.2
CONNECT_ERRORS = (OSError, TimeoutError, WebSocketException)


def dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def loads(raw: str | bytes) -> dict[str, Any]:
    frame = orjson.loads(raw)
    assert isinstance(frame, dict), frame
    return frame


async def make_users(database_url: str, secret: str, n: int, prefix: str = "f") -> list[User]:
    """`n` users inserted straight into the database, with tokens signed by `secret`.

    Faster than registering (argon2) and enough here: the fault suite is not about login."""
    names = [unique(f"{prefix}_") for _ in range(n)]
    sessions = [uuid.uuid4() for _ in names]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "INSERT INTO users (username, password_hash) VALUES ($1, 'not-a-hash')",
            [(name,) for name in names],
        )
        await conn.executemany(
            "INSERT INTO sessions (id, username) VALUES ($1, $2)",
            list(zip(sessions, names, strict=True)),
        )
    finally:
        await conn.close()
    return [
        User(name, issue_token(name, secret, 3600, sid))
        for name, sid in zip(names, sessions, strict=True)
    ]


async def connect(url: str, token: str, **kwargs: Any) -> ClientConnection:
    """A socket to the instance at `url` (http://host:port); raises CONNECT_ERRORS."""
    ws_url = url.replace("http", "ws", 1) + f"/ws?token={token}"
    options: dict[str, Any] = {
        "open_timeout": 5,
        "close_timeout": 2,
        "max_size": 2**22,
        "ping_interval": None,
    }
    options.update(kwargs)
    async with asyncio.timeout(10):
        return await websockets.connect(ws_url, **options)


def close_code(ws: ClientConnection) -> int:
    """The close code the server sent, 1006 when the connection just dropped."""
    rcvd = ws.protocol.close_rcvd
    return rcvd.code if rcvd is not None else 1006


async def join(
    ws: ClientConnection, room: str, since: int | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Join `room`, trying again while the database is away; returns `joined` and the
    replayed messages. Frames of other kinds received meanwhile are dropped."""
    while True:
        frame: dict[str, Any] = {"type": "join", "room": room, "ref": "join"}
        if since is not None:
            frame["since"] = since
        await ws.send(dumps(frame))
        replay: list[dict[str, Any]] = []
        while True:
            got = loads(await ws.recv())
            if got["type"] == "message" and got["room"] == room:
                replay.append(got)
            elif got["type"] == "joined" and got["room"] == room:
                return got, replay
            elif got["type"] == "error" and got.get("ref") == "join":
                assert got["code"] == "unavailable", got
                break
        await asyncio.sleep(RETRY_DELAY)


class Urls:
    """The instances a client may use, in order; it moves to the next one after a failure."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self.index = 0

    @property
    def current(self) -> str:
        return self.urls[self.index % len(self.urls)]

    def advance(self) -> None:
        self.index += 1

    async def connect(self, token: str, **kwargs: Any) -> ClientConnection:
        """Connect to the current instance, moving on until one accepts (the caller bounds
        the time)."""
        while True:
            try:
                return await connect(self.current, token, **kwargs)
            except CONNECT_ERRORS:
                self.advance()
                await asyncio.sleep(RECONNECT_DELAY)


@dataclass
class Record:
    """One message a sender means to store, and what the service answered."""

    client_id: str
    body: str
    seq: int | None = None
    acks: int = 0
    attempts: int = 0
    acked_at: float = 0.0  # time.monotonic() of the first ack
    # It was answered `unavailable` (nothing stored); and whether a copy of it was ever in
    # flight on a connection that was lost (that copy may have been stored).
    refused: bool = False
    lost_in_flight: bool = False


@dataclass
class Sender:
    """Sends `count` messages to `room`, each with its own client_id, until every one is acked."""

    user: User
    room: str
    urls: Urls
    count: int
    tag: str
    window: int = 16  # sends in flight without an answer
    rate: float | None = None  # messages per second, None for as fast as acked
    body: Callable[[str, int], str] = lambda tag, i: f"{tag} message {i}"
    records: list[Record] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    close_codes: list[int] = field(default_factory=list)
    # Per lost connection, how many of its sends got neither an ack nor an error.
    unanswered: list[int] = field(default_factory=list)
    # Acks with duplicate: true: the original was stored, but its ack never reached us.
    duplicate_acks: list[str] = field(default_factory=list)
    # Sends answered `unavailable` (nothing stored) whose resend then came back duplicate:
    # they had been stored after all. The service must never do this.
    false_refusals: list[str] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.records = [
            Record(f"{self.tag}-{i}", self.body(self.tag, i)) for i in range(self.count)
        ]
        self._by_id = {r.client_id: r for r in self.records}
        self._todo: deque[Record] = deque(self.records)
        self._wake = asyncio.Event()
        self._next_at = 0.0
        self._acked = 0

    @property
    def acked(self) -> int:
        return self._acked

    @property
    def done(self) -> bool:
        return self.acked == self.count

    async def run(self) -> None:
        while not self.done:
            ws = await self.urls.connect(self.user.token)
            self.connections += 1
            outstanding: dict[str, Record] = {}
            try:
                await self._session(ws, outstanding)
            except ConnectionClosed:
                self.close_codes.append(close_code(ws))
                self.unanswered.append(len(outstanding))
                self.urls.advance()
            finally:
                # Whatever this connection left unanswered is sent again on the next one; its
                # outcome is unknown, so a later duplicate ack proves nothing.
                for record in sorted(outstanding.values(), key=self.records.index, reverse=True):
                    record.lost_in_flight = True
                    self._todo.appendleft(record)
                await ws.close()
            if not self.done:
                await asyncio.sleep(RECONNECT_DELAY)

    async def _session(self, ws: ClientConnection, outstanding: dict[str, Record]) -> None:
        await join(ws, self.room, None)
        self._wake = asyncio.Event()
        pump = asyncio.create_task(self._pump(ws, outstanding))
        try:
            await self._listen(ws, outstanding)
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def _pump(self, ws: ClientConnection, outstanding: dict[str, Record]) -> None:
        while True:
            if not self._todo or len(outstanding) >= self.window:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._pace()  # before taking a record: a cancelled pump must not lose it
            if not self._todo:
                continue
            record = self._todo.popleft()
            if record.seq is not None:
                continue
            outstanding[record.client_id] = record
            record.attempts += 1
            frame = {"type": "send", "room": self.room, "body": record.body}
            await ws.send(dumps({**frame, "client_id": record.client_id}))

    async def _pace(self) -> None:
        if self.rate is None:
            return
        now = time.monotonic()
        self._next_at = max(self._next_at + 1 / self.rate, now)
        await asyncio.sleep(self._next_at - now)

    async def _listen(self, ws: ClientConnection, outstanding: dict[str, Record]) -> None:
        while not self.done:
            frame = loads(await ws.recv())
            kind = frame["type"]
            if kind == "ack":
                record = self._by_id[frame["client_id"]]
                assert outstanding.pop(record.client_id, None) is record, f"unasked ack {frame}"
                # One client_id, one message: a second ack must name the same seq.
                assert record.seq in (None, frame["seq"]), f"{record} acked again as {frame}"
                self._acked += record.seq is None
                record.seq = frame["seq"]
                record.acks += 1
                record.acked_at = record.acked_at or time.monotonic()
                if frame["duplicate"]:
                    self.duplicate_acks.append(record.client_id)
                    if record.refused and not record.lost_in_flight:
                        self.false_refusals.append(record.client_id)
                self._wake.set()
            elif kind == "error":
                self.errors[frame["code"]] += 1
                client_id = frame.get("client_id")
                assert frame["code"] in RETRYABLE and client_id is not None, frame
                record = outstanding.pop(client_id)
                record.refused = record.refused or frame["code"] == "unavailable"
                asyncio.get_running_loop().call_later(RETRY_DELAY, self._retry, record)

    def _retry(self, record: Record) -> None:
        self._todo.append(record)
        self._wake.set()


@dataclass
class Receiver:
    """Records every seq of `room` it is sent; on any close, resumes with `since`."""

    user: User
    room: str
    urls: Urls
    seqs: list[int] = field(default_factory=list)
    arrived: dict[int, float] = field(default_factory=dict)  # seq: time.monotonic()
    close_codes: list[int] = field(default_factory=list)
    connections: int = 0
    refilled: int = 0  # seqs read over REST after a truncated resume
    target: int | None = None

    def __post_init__(self) -> None:
        self.reached = asyncio.Event()

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    def finish(self, target: int) -> None:
        """The room's final seq is `target`: `reached` is set once it has been received."""
        self.target = target
        self._check()

    def _check(self) -> None:
        if self.target is not None and self.last >= self.target:
            self.reached.set()

    async def run(self) -> None:
        while True:
            ws = await self.urls.connect(self.user.token)
            self.connections += 1
            try:
                await self._session(ws)
            except ConnectionClosed:
                self.close_codes.append(close_code(ws))
                self.urls.advance()
            finally:
                await ws.close()
            await asyncio.sleep(RECONNECT_DELAY)

    async def _session(self, ws: ClientConnection) -> None:
        joined, replay = await join(ws, self.room, self.last)
        if joined["truncated"] and replay:
            await self._refill(replay[0]["seq"])
        for message in replay:
            self._record(message)
        while True:
            frame = loads(await ws.recv())
            if frame["type"] == "message" and frame["room"] == self.room:
                self._record(frame)

    def _record(self, message: dict[str, Any]) -> None:
        self.seqs.append(message["seq"])
        self.arrived.setdefault(message["seq"], time.monotonic())
        self._check()

    async def _refill(self, first_replayed: int) -> None:
        """The resume was cut to the newest messages: page the rest over REST."""
        async with httpx.AsyncClient(base_url=self.urls.current, timeout=10) as http:
            while self.last < first_replayed - 1:
                r = await http.get(
                    f"/api/rooms/{self.room}/messages",
                    params={"after": self.last, "limit": 200},
                    headers=self.user.headers,
                )
                r.raise_for_status()
                for message in r.json()["messages"]:
                    if message["seq"] < first_replayed:
                        self.refilled += 1
                        self._record(message)


@dataclass
class Storm:
    """Senders and receivers running together; `finish` waits for them and checks it all."""

    database_url: str
    senders: list[Sender]
    receivers: list[Receiver]
    started_at: float = 0.0

    def __post_init__(self) -> None:
        self._sending: list[asyncio.Task[None]] = []
        self._receiving: list[asyncio.Task[None]] = []

    @classmethod
    def across(
        cls,
        database_url: str,
        people: Sequence[User],
        room: str,
        first: str,
        second: str,
        count: int,
    ) -> Storm:
        """Four unpaced senders (32 sends in flight each, `count` sends apiece) and four
        receivers from `people` (eight), half starting on `first`, half on `second`; each
        may fail over to the other. Clients 0, 2, ... start on `first`."""
        routes = [[first, second], [second, first]]
        senders = [
            Sender(people[i], room, Urls(routes[i % 2]), count=count, tag=f"s{i}", window=32)
            for i in range(4)
        ]
        receivers = [Receiver(people[4 + i], room, Urls(routes[i % 2])) for i in range(4)]
        return cls(database_url, senders, receivers)

    @property
    def acked(self) -> int:
        return sum(s.acked for s in self.senders)

    @property
    def clients(self) -> list[Sender | Receiver]:
        return [*self.senders, *self.receivers]

    @property
    def total(self) -> int:
        return sum(s.count for s in self.senders)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._receiving = [asyncio.create_task(r.run()) for r in self.receivers]
        self._sending = [asyncio.create_task(s.run()) for s in self.senders]

    async def joined(self, timeout: float = 30) -> None:
        """Wait until every receiver holds a socket joined to its room."""
        async with asyncio.timeout(timeout):
            while any(r.connections == 0 for r in self.receivers):
                self._raise_failures()
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the join frames are answered

    async def wait_acked(self, n: int, timeout: float = 60) -> None:
        """Wait until `n` sends have been acked in all."""
        async with asyncio.timeout(timeout):
            while self.acked < n:
                self._raise_failures()
                await asyncio.sleep(0.02)

    def _raise_failures(self) -> None:
        for task in (*self._sending, *self._receiving):
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError("a storm client failed") from task.exception()

    async def cancel(self) -> None:
        tasks = [*self._sending, *self._receiving]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def finish(self, timeout: float = 60) -> dict[str, int]:
        """Wait until everything is acked and received; assert the guarantees; return the
        final seq of each room."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*self._sending)
            last = await check_stored(self.database_url, self.senders)
            for receiver in self.receivers:
                receiver.finish(last[receiver.room])
            async with asyncio.timeout(timeout):
                for receiver in self.receivers:
                    waiter = asyncio.create_task(receiver.reached.wait())
                    await asyncio.wait(
                        {waiter, *self._receiving}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if not waiter.done():
                        waiter.cancel()
                        self._raise_failures()
        except TimeoutError:
            raise AssertionError(
                f"storm did not finish in {timeout}s: {self.summary()}\n{self._stacks()}"
            ) from None
        finally:
            await self.cancel()
        for receiver in self.receivers:
            check_received(receiver, last[receiver.room])
        lies = [c for s in self.senders for c in s.false_refusals]
        assert not lies, f"answered unavailable, yet stored: {lies[:10]}"
        return last

    def _stacks(self) -> str:
        """Where the unfinished clients wait, to tell a hang from a slow run."""
        out = io.StringIO()
        for task in (*self._sending, *self._receiving):
            if not task.done():
                task.print_stack(limit=6, file=out)
        return out.getvalue()

    def summary(self) -> str:
        sent = ", ".join(
            f"{s.tag}: {s.acked}/{s.count} acked, {s.connections} sockets, "
            f"closes {dict(Counter(s.close_codes))}, errors {dict(s.errors)}, "
            f"unanswered at close {s.unanswered}, {len(s.duplicate_acks)} duplicate acks"
            for s in self.senders
        )
        got = ", ".join(
            f"{r.user.name}@{r.room}: {len(r.seqs)} (last {r.last}, target {r.target}), "
            f"{r.connections} sockets, closes {dict(Counter(r.close_codes))}, "
            f"{r.refilled} read over REST after a truncated resume"
            for r in self.receivers
        )
        return f"senders [{sent}]; receivers [{got}]"


async def check_stored(database_url: str, senders: Sequence[Sender]) -> dict[str, int]:
    """Every acked message is stored exactly once, with its body and author, at the seq its
    ack named; each room's seqs are 1..N with nothing stored that was not sent. Returns N
    per room."""
    by_room: dict[str, list[Sender]] = {}
    for sender in senders:
        by_room.setdefault(sender.room, []).append(sender)
    last: dict[str, int] = {}
    conn = await asyncpg.connect(database_url)
    try:
        for room, group in by_room.items():
            rows = await conn.fetch(
                "SELECT m.seq, m.author, m.body, m.client_id FROM messages m "
                "JOIN rooms r ON r.id = m.room_id WHERE r.name = $1 ORDER BY m.seq",
                room,
            )
            last_seq = await conn.fetchval("SELECT last_seq FROM rooms WHERE name = $1", room)
            seqs = [row["seq"] for row in rows]
            assert seqs == list(range(1, len(rows) + 1)), f"{room}: seqs have gaps"
            assert last_seq == len(rows), f"{room}: last_seq {last_seq}, {len(rows)} rows"
            keys = Counter((row["author"], row["client_id"]) for row in rows)
            repeated = [key for key, n in keys.items() if n > 1]
            assert not repeated, f"{room}: stored more than once: {repeated[:5]}"
            by_seq = {row["seq"]: row for row in rows}
            for sender in group:
                for record in sender.records:
                    assert record.seq is not None, f"{record} never acked"
                    row = by_seq.get(record.seq)
                    assert row is not None, f"{room}: acked {record} is not stored"
                    stored = (row["author"], row["client_id"], row["body"])
                    assert stored == (sender.user.name, record.client_id, record.body), (
                        f"{room}: seq {record.seq} holds {stored}, acked for {record}"
                    )
            assert len(rows) == sum(s.count for s in group), f"{room}: stored what nobody sent"
            last[room] = len(rows)
    finally:
        await conn.close()
    return last


def check_received(receiver: Receiver, last: int) -> None:
    """The receiver saw 1..last once each, in order, across all its reconnections."""
    seqs = receiver.seqs
    expected = list(range(1, last + 1))
    if seqs != expected:
        dupes = [s for s, n in Counter(seqs).items() if n > 1]
        missing = sorted(set(expected) - set(seqs))
        disorder = next((i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1]), None)
        raise AssertionError(
            f"{receiver.user.name} in {receiver.room}: {len(seqs)} frames for 1..{last}; "
            f"missing {missing[:10]}, duplicated {dupes[:10]}, first disorder at index "
            f"{disorder}, close codes {receiver.close_codes}"
        )


def delivery_lag(receiver: Receiver, senders: Sequence[Sender]) -> float:
    """The longest a message took to reach `receiver` after its sender had the ack."""
    acked = {r.seq: r.acked_at for s in senders if s.room == receiver.room for r in s.records}
    return max(
        (at - acked[seq] for seq, at in receiver.arrived.items() if seq in acked), default=0.0
    )


def check_log(log_path: Path, senders: Sequence[Sender] = ()) -> None:
    """The instance logged no traceback and no error, and no message body: bodies are
    user data, and operators need none of it."""
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log and " ERROR " not in log, log[-4000:]
    leaked = [r.body for s in senders for r in s.records if r.body in log]
    assert not leaked, f"message bodies in the log: {leaked[:3]}"


def rss_kib(pid: int) -> int:
    """The process's resident set size (VmRSS) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def metric(url: str, name: str, default: float | None = None) -> float:
    """The value of a sample of the instance's /metrics, e.g. `chat_connections` or
    `chat_closes_total{code="1013"}`; `default` when absent (else an error)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    if default is not None:
        return default
    raise AssertionError(f"metric {name} not exposed")


async def ready(url: str) -> int:
    """The status code of /readyz, 0 when the instance does not answer."""
    async with httpx.AsyncClient(base_url=url, timeout=3) as http:
        with contextlib.suppress(httpx.HTTPError):
            return (await http.get("/readyz")).status_code
    return 0
