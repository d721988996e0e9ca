"""Resume to converged state (issue #18): a client that was away while N events happened in
a room (messages, edits, deletes, reactions added and removed, as several members make
them) reconnects with `since`, applies every frame by PROTOCOL.md's `version` rule
(service/static/message-state.js, in Python) and is converged when its copy of the room
equals a fresh REST load of it, field for field; that is checked after every run, not
assumed. The reference is the same run's time to load the room over REST alone.

When more events were missed than the join replays (`CHAT_RESUME_LIMIT`, `truncated` in
`joined`), the client keeps the replay, pages the gap before it from `GET
/api/rooms/{room}/events` (in seq order, as the rule needs) and then applies the replay.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import ClientConnection

from . import clients
from .cluster import username
from .config import BODY_TEXT
from .figures import Percentiles
from .scenarios import Bench

# What a message is, as REST and replays give it (PROTOCOL.md, Message); `room` aside.
FIELDS = (
    "seq",
    "author",
    "body",
    "created_at",
    "client_id",
    "reply_to",
    "edited_at",
    "deleted",
    "reactions",
    "version",
)
EMOJI = ("👍", "🎉", "❤️", "😂", "👀", "🚀")
# The mix of the events the members make: weights of message, edit, reaction, delete.
MIX = (("message", 50), ("edit", 20), ("reaction", 22), ("delete", 8))
ACTORS = 4  # members making the events, alternating instances
WINDOW = 16  # commands each keeps unanswered
EVENTS_PAGE = 1000  # GET /events' largest page
MESSAGES_PAGE = 200  # GET /messages' largest page
_TIMEOUT = 60.0

Message = dict[str, Any]
State = dict[int, Message]


@dataclass
class Resync:
    """Resumes of `clients` clients, each `events` events behind, to a state equal to a REST
    load; the REST load of the same room, as many times."""

    events: int  # the room's log head minus `since`
    kinds: dict[str, int]  # the missed events by type
    messages: int  # messages in the room at the end (tombstones included)
    messages_before: int  # messages the client held when it went away
    clients: int
    resume_limit: int  # CHAT_RESUME_LIMIT: events a join replays at most
    truncated: bool  # the replay was cut at the limit: the gap came from /events
    events_pages: int  # /events pages per resume
    converged_ms: Percentiles  # socket open to the copy applied (every frame, every page)
    handshake_ms: Percentiles  # of which: TCP connect and WebSocket upgrade
    joined_ms: Percentiles  # of which: join sent to `joined` (the replay received)
    rest_ms: Percentiles  # the whole room over GET /messages, every page
    rest_pages: int
    fields_compared: int  # per check: messages x fields (reactions as whole lists)
    generated_per_second: float  # events acked per second while the members made them
    errors: dict[str, int] = field(default_factory=dict)  # refused commands (races)


# -- the version rule -----------------------------------------------------------------------


def normalize(msg: Message) -> Message:
    """A message as the client keeps it: the FIELDS, reactions copied."""
    out = {k: msg.get(k) for k in FIELDS}
    out["reactions"] = [dict(r) for r in msg.get("reactions") or []]
    if out["version"] is None:
        out["version"] = out["seq"]
    return out


def apply(state: State, frame: Message, me: str) -> None:
    """One room frame into the client's copy (message-state.js: `newer`, `applyEvent`)."""
    kind = frame.get("type")
    if kind == "message":
        seq = int(frame["seq"])
        local = state.get(seq)
        incoming = normalize(frame)
        if local is not None and incoming["version"] <= local["version"]:
            return
        known = {r["emoji"]: r.get("me") for r in local["reactions"]} if local else {}
        for r in incoming["reactions"]:
            if not isinstance(r.get("me"), bool):  # live frames carry no `me`
                r["me"] = known.get(r["emoji"]) is True
        state[seq] = incoming
        return
    if kind not in ("edit", "delete", "reaction"):
        return
    local = state.get(int(frame["target"]))
    if local is None:
        raise RuntimeError(f"resume: an event for a message the client does not hold: {frame}")
    seq = int(frame["seq"])
    mine = kind == "reaction" and frame.get("user") == me
    if seq <= local["version"]:
        if mine:
            for r in local["reactions"]:
                if r["emoji"] == frame["emoji"]:
                    r["me"] = frame["op"] == "add"
        return
    local["version"] = seq
    if kind == "edit":
        if not local["deleted"]:
            local["body"] = frame.get("body") or ""
            local["edited_at"] = frame.get("edited_at") or local["edited_at"]
    elif kind == "delete":
        local.update(deleted=True, body="", reactions=[])
    elif not local["deleted"]:
        reactions = local["reactions"]
        at = next((i for i, r in enumerate(reactions) if r["emoji"] == frame["emoji"]), None)
        if frame["count"] > 0:
            if at is None:
                reactions.append({"emoji": frame["emoji"], "count": frame["count"], "me": mine})
            else:
                reactions[at]["count"] = frame["count"]
                if mine:
                    reactions[at]["me"] = frame["op"] == "add"
        elif at is not None:
            del reactions[at]  # added again, it goes last


def differences(local: State, fresh: State) -> list[str]:
    """Where the client's copy differs from a fresh load, field for field (empty: none)."""
    out = [f"seq {s}: only in the client" for s in sorted(local.keys() - fresh.keys())]
    out += [f"seq {s}: only in the REST load" for s in sorted(fresh.keys() - local.keys())]
    for seq in sorted(local.keys() & fresh.keys()):
        for name in FIELDS:
            if local[seq][name] != fresh[seq][name]:
                out.append(f"seq {seq} {name}: {local[seq][name]!r} != {fresh[seq][name]!r}")
    return out


# -- REST -----------------------------------------------------------------------------------


def _session(base: str, token: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=base,
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=_TIMEOUT),
    )


async def _get(http: aiohttp.ClientSession, path: str) -> dict[str, Any]:
    async with http.get(path) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    result: dict[str, Any] = orjson.loads(body)
    return result


async def rest_load(http: aiohttp.ClientSession, room: str) -> tuple[State, int]:
    """Every message of the room, newest page first: the state and the pages read."""
    state: State = {}
    before: int | None = None
    pages = 0
    while pages < 10_000:
        query = f"limit={MESSAGES_PAGE}" + (f"&before={before}" if before is not None else "")
        page = await _get(http, f"/api/rooms/{room}/messages?{query}")
        pages += 1
        for msg in page["messages"]:
            extra = msg.keys() - set(FIELDS) - {"room"}
            if extra:  # a field this check would not compare
                raise RuntimeError(f"resume: unexpected message fields {sorted(extra)}")
            state[int(msg["seq"])] = normalize(msg)
        if not page["has_more"] or not page["messages"]:
            return state, pages
        before = int(page["messages"][0]["seq"])
    raise RuntimeError(f"resume: {room} has more than {pages} pages")


# -- the members who make the events ---------------------------------------------------------


@dataclass
class _Budget:
    """Exactly `target` events, whatever the races refuse (a reaction to a message another
    member just deleted): a refused or duplicate command gives its place back."""

    target: int
    done: int = 0
    in_flight: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def take(self, most: int) -> int:
        n = max(min(most, self.target - self.done - self.in_flight), 0)
        self.in_flight += n
        return n


@dataclass
class _Room:
    name: str
    live: list[int] = field(default_factory=list)  # message seqs, deleted ones dropped lazily
    deleted: set[int] = field(default_factory=set)


async def _actor(
    ws: ClientConnection, room: _Room, budget: _Budget, rng: random.Random, tag: str
) -> None:
    """Send commands in batches of up to WINDOW until the budget is spent."""
    own: list[int] = []  # this member's messages, not deleted
    reacted: set[tuple[int, str]] = set()
    ref = 0
    while True:
        n = budget.take(WINDOW)
        if n == 0:
            return
        if budget.errors.total() > budget.target // 2 + 100:  # bounded: races refuse a few
            raise RuntimeError(f"resume: too many commands refused: {dict(budget.errors)}")
        sent: dict[int, dict[str, Any]] = {}
        for _ in range(n):
            ref += 1
            sent[ref] = command = _command(room, own, reacted, rng, f"{tag}-{ref}")
            await clients.send_json(ws, **command, ref=ref)
        async with asyncio.timeout(_TIMEOUT):
            while sent:
                frame = orjson.loads(await ws.recv())
                if frame.get("type") not in ("ack", "error") or frame.get("ref") not in sent:
                    continue
                command = sent.pop(frame["ref"])
                budget.in_flight -= 1
                if frame["type"] == "error" or frame.get("duplicate"):
                    budget.errors[frame.get("code") or "duplicate"] += 1
                    continue
                budget.done += 1
                if command["type"] == "send":
                    own.append(frame["seq"])
                    room.live.append(frame["seq"])
                elif command["type"] == "delete":
                    room.deleted.add(command["target"])


def _command(
    room: _Room, own: list[int], reacted: set[tuple[int, str]], rng: random.Random, cid: str
) -> dict[str, Any]:
    kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
    base = {"room": room.name}
    live = [s for s in room.live[-500:] if s not in room.deleted]
    if kind in ("edit", "delete") and own:
        target = own[rng.randrange(len(own))]
        if kind == "delete":
            own.remove(target)
            reacted.difference_update({(target, e) for e in EMOJI})
            return {**base, "type": "delete", "target": target}
        return {**base, "type": "edit", "target": target, "body": f"edited {cid} {BODY_TEXT}"}
    if kind == "reaction" and live:
        # Mostly the newer messages, as people react; sometimes an old one.
        target = live[-1 - min(int(rng.expovariate(0.05)), len(live) - 1)]
        emoji = rng.choice(EMOJI)
        op = "remove" if (target, emoji) in reacted else "add"
        reacted.symmetric_difference_update({(target, emoji)})
        return {**base, "type": "react", "target": target, "emoji": emoji, "op": op}
    frame: dict[str, Any] = {**base, "type": "send", "body": f"{cid} {BODY_TEXT}", "client_id": cid}
    if live and rng.random() < 0.1:
        frame["reply_to"] = rng.choice(live)
    return frame


async def _make_events(
    actors: list[ClientConnection], room: _Room, count: int, seed: int
) -> _Budget:
    budget = _Budget(count)
    await asyncio.gather(
        *(
            _actor(ws, room, budget, random.Random(seed * 100 + i), f"{room.name}-{seed}-{i}")
            for i, ws in enumerate(actors)
        )
    )
    return budget


# -- the resume ------------------------------------------------------------------------------


@dataclass
class _Resumed:
    state: State
    ms: float
    handshake_ms: float
    joined_ms: float
    truncated: bool
    pages: int
    kinds: Counter[str]


async def _resume(
    bench: Bench, user: int, instance: int, room: str, since: int, before: State
) -> _Resumed:
    """Reconnect with `since`, apply the replay (and, when it was cut, the gap from
    /events first) to a copy of `before`: the copy and the time it took."""
    state = copy.deepcopy(before)
    me = username(user)
    base = bench.instances[instance].url
    kinds: Counter[str] = Counter()
    pages = 0
    began = time.perf_counter()
    ws = await clients.open_socket(clients.chat_url(base, bench.tokens[user]))
    opened = time.perf_counter()
    try:
        await clients.send_json(ws, type="join", room=room, since=since)
        replay: list[Message] = []
        async with asyncio.timeout(_TIMEOUT):
            while True:
                frame = orjson.loads(await ws.recv())
                kind = frame.get("type")
                if kind == "joined":
                    break
                if kind == "error":
                    raise RuntimeError(f"resume: join refused: {frame}")
                if frame.get("room") == room and kind in ("message", "edit", "delete", "reaction"):
                    replay.append(frame)
        joined = time.perf_counter()
        truncated = bool(frame["truncated"])
        if truncated and replay:
            first = int(replay[0]["seq"])
            after = since
            async with _session(base, bench.tokens[user]) as http:
                while after < first - 1:
                    path = f"/api/rooms/{room}/events?after={after}&limit={EVENTS_PAGE}"
                    page = await _get(http, path)
                    pages += 1
                    for event in page["events"]:
                        if int(event["seq"]) >= first:
                            break
                        kinds[event["type"]] += 1
                        apply(state, event, me)
                    if not page["has_more"] or not page["events"]:
                        break
                    after = int(page["events"][-1]["seq"])
        for event in replay:
            kinds[event["type"]] += 1
            apply(state, event, me)
        elapsed = (time.perf_counter() - began) * 1000
    finally:
        await ws.close()
    handshake, joining = (opened - began) * 1000, (joined - opened) * 1000
    return _Resumed(state, elapsed, handshake, joining, truncated, pages, kinds)


async def _join_once(bench: Bench, user: int, room: str) -> None:
    """The client becomes a member of the room (and leaves the socket)."""
    ws = await bench.connect_joined(bench.instances[0], user, room)
    await ws.close()


async def resync(bench: Bench, missed: int) -> Resync:
    """A room with some history; the client's copy of it; `missed` events by several
    members; then `resync_clients` resumes, each followed by a fresh REST load (timed, the
    reference) that the resumed copy must equal."""
    p = bench.profile
    client = p.users_needed - 3  # never makes an event (read_state uses the last two)
    room = _Room(f"bench-resync-{missed}-{uuid.uuid4().hex[:6]}")
    step = bench.ui.step(f"resume {missed:,}: making events", p.resync_history + missed)
    actors: list[ClientConnection] = []
    try:
        await _join_once(bench, client, room.name)
        for i in range(ACTORS):
            actors.append(await bench.connect_joined(bench.instances[i % 2], i, room.name))
        made = await _make_events(actors, room, p.resync_history, seed=1)
        step.advance(p.resync_history)
        async with _session(bench.instances[0].url, bench.tokens[client]) as http:
            since = int((await _get(http, f"/api/rooms/{room.name}"))["last_seq"])
            before, _ = await rest_load(http, room.name)
        began_missed = time.perf_counter()
        budget = await _make_events(actors, room, missed, seed=2)
        generated = missed / (time.perf_counter() - began_missed)
        made.errors.update(budget.errors)
        step.advance(missed)
    finally:
        await clients.close_all(actors)
    async with _session(bench.instances[0].url, bench.tokens[client]) as http:
        head = int((await _get(http, f"/api/rooms/{room.name}"))["last_seq"])
        config = await _get(http, "/api/config")
    if head - since != missed:
        raise RuntimeError(f"resume: {head - since} events happened, {missed} intended")

    step.update(description=f"resume {missed:,}: resumes", completed=0, total=p.resync_clients)
    converged: list[float] = []
    handshakes: list[float] = []
    joins: list[float] = []
    rest: list[float] = []
    first: _Resumed | None = None
    fresh: State = {}
    rest_pages = 0
    for i in range(p.resync_clients):
        resumed = await _resume(bench, client, i % 2, room.name, since, before)
        first = first or resumed
        base = bench.instances[(i + 1) % 2].url
        async with _session(base, bench.tokens[client]) as http:
            began = time.perf_counter()
            fresh, rest_pages = await rest_load(http, room.name)
            rest.append((time.perf_counter() - began) * 1000)
        wrong = differences(resumed.state, fresh)
        if wrong:
            raise RuntimeError(
                f"resume {missed}: the client did not converge ({len(wrong)} differences): "
                + "; ".join(wrong[:5])
            )
        if sum(resumed.kinds.values()) != missed:
            raise RuntimeError(f"resume {missed}: {sum(resumed.kinds.values())} events applied")
        converged.append(resumed.ms)
        handshakes.append(resumed.handshake_ms)
        joins.append(resumed.joined_ms)
        step.advance()
    step.done()
    assert first is not None
    return Resync(
        events=missed,
        kinds=dict(first.kinds),
        messages=len(fresh),
        messages_before=len(before),
        clients=p.resync_clients,
        resume_limit=int(config["resume_limit"]),
        truncated=first.truncated,
        events_pages=first.pages,
        converged_ms=Percentiles.of(converged),
        handshake_ms=Percentiles.of(handshakes),
        joined_ms=Percentiles.of(joins),
        rest_ms=Percentiles.of(rest),
        rest_pages=rest_pages,
        fields_compared=len(fresh) * len(FIELDS),
        generated_per_second=round(generated, 1),
        errors=dict(made.errors),
    )


async def resyncs(bench: Bench) -> list[Resync]:
    return [await resync(bench, n) for n in bench.profile.resync_events]
