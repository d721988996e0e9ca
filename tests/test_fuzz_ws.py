"""Hostile frames against a running instance (hypothesis): wrong types in every field, deep
nesting, huge numbers, NaN and Infinity, lone surrogates, control characters, hostile room
names, binary frames, invalid UTF-8, oversized frames.

Each frame gets exactly one direct answer (an `error`, or the reply a valid frame earns) or a
defined close code (1007 for invalid UTF-8, 1009 for oversize); the socket keeps serving, a
bystander socket's ping is answered, the instance never logs a traceback, and nothing that
breaks the validation rules is stored.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from service import migrate
from service.settings import Settings
from service.validation import ROOM_RE, InvalidInput, check_body, check_client_id
from tests.faults.harness import close_code, connect, make_users
from tests.support import Instance, User

pytestmark = pytest.mark.timeout(600)

MAX_FRAME_BYTES = 8192
MAX_CHARS = 200
EXAMPLES = 200
TYPES = ["join", "leave", "send", "edit", "delete", "react", "read", "typing", "ping"]
# Commands answered after a commit: the answer may come after the sentinel's pong.
COMMITTED = {"send", "edit", "delete", "react"}
# Direct answers: exactly one per client frame (none for a valid `typing`).
DIRECT = {"joined", "left", "ack", "pong", "error"}
# Frames the server may send on its own (replays, live messages, presence, typing).
UNSOLICITED = {
    "message", "edit", "delete", "reaction", "member", "presence", "typing",
    "rooms", "read", "notification", "activity",
}  # fmt: skip
ERROR_CODES = {
    "bad_request",
    "too_large",
    "not_joined",
    "conflict",
    "too_many_rooms",
    "rate_limited",
    "unavailable",
    "forbidden",
    "not_found",
    "limit_reached",
}
ROOMS = ["fuzz", "fuzz-2", "f_3"]  # valid names, few, so joins, leaves and conflicts recur
HOSTILE_ROOMS = [
    "../x",
    "..",
    "/etc/passwd",
    "a/../../b",
    "x'; DROP TABLE messages; --",
    "' OR '1'='1",
    'a"b',
    "Upper",
    "a" * 65,
    "",
    " ",
    "-lead",
    "tab\there",
    "nul\x00",
    "é",
    "%2e%2e",
    "a\u202eb",
]
HOSTILE_TEXT = [
    "'; DROP TABLE messages; --",
    "\x00",
    "\x01\x02\x1b[31m",
    "\ud800",
    "\udfff tail",
    "\ufeff",
    "\u200b",
    " \n\t ",
    "x" * (MAX_CHARS + 1),
    "😀" * MAX_CHARS,
    "<script>alert(1)</script>",
    "${jndi:ldap://x}",
    "{{7*7}}",
]

junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
# Any code point, surrogates and controls included (json.dumps escapes them as \\uXXXX).
any_text = st.text(st.characters(exclude_categories=()), max_size=MAX_CHARS + 20)
rooms = st.sampled_from(ROOMS) | st.sampled_from(HOSTILE_ROOMS) | any_text | junk
bodies = st.sampled_from(HOSTILE_TEXT) | st.text(min_size=1, max_size=80) | any_text | junk
refs = st.none() | st.integers() | st.text(max_size=140) | junk
valid_rooms = st.sampled_from(ROOMS)
targets = st.integers(1, 60)  # seqs that often name a message of a fuzzed room
emojis = (
    st.sampled_from(["👍", "🎉", "👨\u200d👩\u200d👧", "a/b", "", " ", "\u200b", "x" * 33])
    | any_text
)
valid_refs = st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=128)
# Well-formed frames, so the paths that store and deliver are exercised too.
valid_frames = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("join"), "room": valid_rooms},
        optional={"since": st.integers(0, 50), "ref": valid_refs},
    ),
    st.fixed_dictionaries(
        {"type": st.just("send"), "room": valid_rooms, "body": bodies},
        optional={
            "client_id": st.text(min_size=1, max_size=64),
            "ref": valid_refs,
            "reply_to": st.integers(1, 60),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("edit"), "room": valid_rooms, "target": targets, "body": bodies},
        optional={"ref": valid_refs},
    ),
    st.fixed_dictionaries(
        {"type": st.just("delete"), "room": valid_rooms, "target": targets},
        optional={"ref": valid_refs},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("react"),
            "room": valid_rooms,
            "target": targets,
            "emoji": emojis,
            "op": st.sampled_from(["add", "remove"]),
        },
        optional={"ref": valid_refs},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["leave", "typing"]), "room": valid_rooms}),
    st.fixed_dictionaries({"type": st.just("ping")}, optional={"ref": valid_refs}),
)
# ... and the same with one field replaced by anything at all.
mutated_frames = st.tuples(
    valid_frames,
    st.sampled_from(
        ["type", "room", "body", "since", "client_id", "ref", "target", "emoji", "op", "reply_to"]
    ),
    junk,
).map(lambda t: {**t[0], t[1]: t[2]})
random_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | junk},
    optional={
        "room": rooms,
        "body": bodies,
        "since": st.integers(min_value=-5, max_value=2**70) | junk,
        "client_id": st.none() | st.text(max_size=70) | st.sampled_from(HOSTILE_TEXT) | junk,
        "ref": refs,
        "target": st.integers(min_value=-5, max_value=2**70) | junk,
        "reply_to": st.integers(min_value=-5, max_value=2**70) | junk,
        "emoji": emojis | junk,
        "op": st.sampled_from(["add", "remove", "toggle"]) | junk,
        "extra": junk,
        "__proto__": junk,
    },
)
frames = valid_frames | mutated_frames | random_frames
nesting = st.integers(min_value=1, max_value=2000)  # past orjson's depth limit of 1024
raw_texts = (
    st.sampled_from(
        [
            "",
            "null",
            "NaN",
            "Infinity",
            "-Infinity",
            "[NaN]",
            "1e999",
            "-1e999",
            "123456789012345678901234567890",
            '{"type": "ping", "ref": 1e400}',
            '{"type": "ping", "ref": 123456789012345678901234567890}',
            '{"type": "join", "room": "fuzz", "since": 1e400}',
            '{"type": "send", "room": "fuzz", "body": "\\ud800"}',
            '{"type": "send", "room": "fuzz", "body": "\\udc00x"}',
            '{"type": "send", "room": "fuzz", "body": "a\\u0000b"}',
            '{"type": "ping", "type": "send"}',
            '{"type": "ping"} trailing',
            '{"type": "ping",}',
            "\ufeff{}",
            "{'type': 'ping'}",
        ]
    )
    | nesting.map(lambda n: "[" * n + "]" * n)
    | nesting.map(lambda n: '{"a":' * n + "1" + "}" * n)
    | nesting.map(lambda n: "[" * n)
    | st.text(max_size=500)
)


def _expected_type(frame: object) -> str | None:
    """The frame's type when it is one the protocol knows, else None (bad_request)."""
    if isinstance(frame, dict) and frame.get("type") in TYPES:
        return str(frame["type"])
    return None


@dataclass
class Probe:
    """The instance under attack, one socket reused across examples and a bystander."""

    runner: asyncio.Runner
    instance: Instance
    database_url: str
    user: User
    ws: ClientConnection
    bystander: ClientConnection
    sentinels: Iterator[int]
    reconnects: int = 0
    answers: Counter[str] = field(default_factory=Counter)

    def run(self, coroutine: Any) -> Any:
        return self.runner.run(coroutine)

    async def reconnect(self) -> None:
        await self.ws.close()
        self.ws = await connect(self.instance.url, self.user.token)
        self.reconnects += 1

    async def exchange(self, raw: str | bytes, text: bool) -> tuple[list[dict[str, Any]], int]:
        """Send one frame, then a ping; every frame up to its pong, and the close code (0 if
        the socket stayed open)."""
        sentinel = f"sentinel-{uuid.uuid4().hex}-{next(self.sentinels)}"
        got: list[dict[str, Any]] = []
        try:
            await self.ws.send(raw, text=text)
            await self.ws.send(json.dumps({"type": "ping", "ref": sentinel}))
            async with asyncio.timeout(10):
                while True:
                    frame = json.loads(await self.ws.recv())
                    assert isinstance(frame, dict), frame
                    if frame == {"type": "pong", "ref": sentinel}:
                        break
                    got.append(frame)
        except ConnectionClosed:
            code = close_code(self.ws)
            await self.reconnect()
            return got, code
        return got, 0

    async def more(self, timeout: float = 10) -> dict[str, Any]:
        """The next direct answer (an ack after commit comes after the sentinel's pong)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = json.loads(await self.ws.recv())
                if frame.get("type") in DIRECT:
                    return dict(frame)

    async def bystander_served(self) -> None:
        ref = f"by-{next(self.sentinels)}"
        await self.bystander.send(json.dumps({"type": "ping", "ref": ref}))
        async with asyncio.timeout(10):
            while json.loads(await self.bystander.recv()) != {"type": "pong", "ref": ref}:
                pass


@pytest.fixture(scope="module")
def fuzz_database(new_database: Any) -> str:
    url = str(new_database())
    migrate.upgrade(Settings(database_url=url))
    return url


@pytest.fixture(scope="module")
def probe(spawn: Any, fuzz_database: str, secret_key: str) -> Iterator[Probe]:
    """A runner of its own (hypothesis drives sync tests), and the sockets it keeps."""
    instance: Instance = spawn(
        fuzz_database,
        CHAT_RATE_LIMIT_PER_SECOND=0,
        CHAT_MAX_FRAME_BYTES=MAX_FRAME_BYTES,
        CHAT_MAX_MESSAGE_CHARS=MAX_CHARS,
    )
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(instance.wait_ready())
        user, other = runner.run(make_users(fuzz_database, secret_key, 2, "fz"))
        ws = runner.run(connect(instance.url, user.token))
        bystander = runner.run(connect(instance.url, other.token))
        found = Probe(runner, instance, fuzz_database, user, ws, bystander, itertools.count())
        try:
            yield found
        finally:
            runner.run(found.ws.close())
            runner.run(found.bystander.close())
        instance.stop()


def _check_answer(
    probe: Probe, raw: str | bytes, sent: object, got: list[dict[str, Any]], code: int
) -> None:
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > MAX_FRAME_BYTES:
        assert code == 1009, f"a frame of {size} bytes got {got}, close {code}"
        probe.run(probe.bystander_served())
        return
    assert code == 0, f"closed with {code} after {sent!r}"
    kinds = [f.get("type") for f in got]
    assert set(kinds) <= DIRECT | UNSOLICITED, got
    direct = [f for f in got if f["type"] in DIRECT]
    expected = _expected_type(sent)
    if expected in COMMITTED and not direct:
        direct = [probe.run(probe.more())]
    if expected == "typing":
        assert len(direct) <= 1, got
    else:
        assert len(direct) == 1, f"{sent!r} got {got}"
    for answer in direct:
        probe.answers[answer.get("code", answer["type"])] += 1
        if answer["type"] == "error":
            assert answer["code"] in ERROR_CODES and isinstance(answer["detail"], str), answer
            if expected is None:
                assert answer["code"] == "bad_request", answer
            assert answer["code"] not in ("unavailable", "rate_limited"), answer
        else:
            assert expected is not None, f"{sent!r} was accepted: {answer}"
            assert answer["type"] == {
                "join": "joined",
                "leave": "left",
                "send": "ack",
                "edit": "ack",
                "delete": "ack",
                "react": "ack",
                "ping": "pong",
            }.get(expected), answer
    probe.run(probe.bystander_served())


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _as_server_reads(raw: str) -> object:
    """The frame as the server parses it, None when it is not JSON to the server: strict
    RFC 8259 (no NaN or Infinity, no number beyond a double, no lone surrogate escape)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


@FUZZ_SETTINGS
@given(frame=frames)
def test_structured_frames(probe: Probe, frame: dict[str, Any]) -> None:
    """JSON objects with any type and wrongly typed, hostile or unknown fields."""
    raw = json.dumps(frame)  # NaN, Infinity, big ints and \\ud800 escapes pass through
    got, code = probe.run(probe.exchange(raw, text=True))
    _check_answer(probe, raw, _as_server_reads(raw), got, code)


@FUZZ_SETTINGS
@given(raw=raw_texts)
def test_raw_text_frames(probe: Probe, raw: str) -> None:
    """Text that is not JSON, not an object, nested thousands deep, NaN, 1e999..."""
    got, code = probe.run(probe.exchange(raw, text=True))
    _check_answer(probe, raw, _as_server_reads(raw), got, code)


@FUZZ_SETTINGS
@given(data=st.binary(max_size=300) | st.text(max_size=100).map(str.encode))
def test_binary_frames(probe: Probe, data: bytes) -> None:
    """Binary frames are refused with bad_request, whatever they hold, valid JSON included."""
    got, code = probe.run(probe.exchange(data, text=False))
    _check_answer(probe, data, None, got, code)


@settings(max_examples=20, deadline=None, database=None)
@given(data=st.binary(min_size=1, max_size=50))
def test_invalid_utf8_text_frames_close_with_1007(probe: Probe, data: bytes) -> None:
    """A text frame that is not UTF-8 breaks the WebSocket protocol: close 1007."""
    try:
        data.decode()
    except UnicodeDecodeError:
        _, code = probe.run(probe.exchange(data, text=True))
        assert code == 1007
    probe.run(probe.bystander_served())


def test_oversized_frames_close_with_1009(probe: Probe) -> None:
    for raw in ("x" * (MAX_FRAME_BYTES + 1), json.dumps({"type": "ping", "pad": "é" * 5000})):
        _, code = probe.run(probe.exchange(raw, text=True))
        assert code == 1009
        probe.run(probe.bystander_served())


def test_nothing_invalid_stored_and_no_traceback(probe: Probe) -> None:
    """Runs after the fuzzing above: the database holds only valid messages and rooms, and
    the instance logged no traceback or error."""
    probe.run(probe.bystander_served())

    async def rows() -> tuple[list[Any], list[Any]]:
        conn = await asyncpg.connect(probe.database_url)
        try:
            # A deleted message's tombstone has an empty body by design.
            messages = await conn.fetch("SELECT body, client_id FROM messages WHERE NOT deleted")
            names = await conn.fetch("SELECT name FROM rooms")
        finally:
            await conn.close()
        return list(messages), list(names)

    messages, names = probe.run(rows())
    for row in messages:
        try:
            check_body(row["body"], MAX_CHARS)
            check_client_id(row["client_id"])
        except InvalidInput as error:
            raise AssertionError(f"stored garbage: {row!r}: {error}") from None
    assert all(ROOM_RE.fullmatch(row["name"]) for row in names), names
    log = probe.instance.log_path.read_text(errors="replace")
    assert "Traceback" not in log and " ERROR " not in log, probe.instance.log_tail(60)
    leaked = [row["body"] for row in messages if len(row["body"]) >= 8 and row["body"] in log]
    assert not leaked, f"message bodies in the log: {leaked[:3]}"
    print(
        f"\nfuzz: {len(messages)} valid messages stored in {len(names)} rooms, "
        f"{probe.reconnects} reconnects after defined closes; answers {dict(probe.answers)}"
    )
