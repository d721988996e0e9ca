"""GET /api/search (PROTOCOL.md) against the real PostgreSQL: multilingual matching (prefixes,
accents, Chinese, Japanese and Thai substrings), phrases, paging, bounds, privacy (a third
user, a removed member), edits and deletes (the index follows them; a deleted message's
lexemes are gone), and the plan (the indexes, never a scan of the whole messages table).

Every test tags its messages with a word of its own and searches for it too, so tests that
share the database cannot find each other's messages."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

import service.search as search_module
from service import migrate
from service.app import create_app
from service.db import create_engine
from service.search import _FIND, _FIRST, _WINDOWS, LexemeShares, Search
from service.search_text import parse_query, search_vector
from service.settings import Settings
from tests.support import User, app_client, new_user, unique
from tests.test_api_rooms import create, delete_member, every, post, put_member


async def search(
    client: httpx.AsyncClient, user: User, q: str, expect: int = 200, **params: Any
) -> dict[str, Any]:
    r = await client.get("/api/search", params={"q": q, **params}, headers=user.headers)
    assert r.status_code == expect, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def bodies(client: httpx.AsyncClient, user: User, q: str, **params: Any) -> list[str]:
    return [m["body"] for m in (await search(client, user, q, **params))["results"]]


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> User:
    return await new_user(client)


@pytest.mark.parametrize(
    ("body", "query"),
    [
        ("qwen3.6 is out", "qwen"),
        ("QWEN3.6 is out", "Qwen3"),
        ("Données publiques", "donnee"),
        ("donnees publiques", "Données"),
        ("Straße und Café", "strasse cafe"),
        ("我们明天在北京见面", "北京"),  # a two-character substring
        ("我们明天在北京见面", "在北京见"),
        ("東京タワーに行きました", "タワー"),
        ("東京タワーに行きました", "東京タ"),  # split where the script changes: 東京 and タ
        ("東京タワーに行きました", "行きました"),
        ("ｶﾀｶﾅで書く", "カタカナ"),  # half-width katakana, folded
        ("ภาษาไทยง่ายนิดเดียว", "ไทย"),
        ("ภาษาไทยง่ายนิดเดียว", "ง่าย"),
        ("ภาษาไทยง่ายนิดเดียว", "ษา"),
    ],
)
async def test_matches(client: httpx.AsyncClient, alice: User, body: str, query: str) -> None:
    room = await create(client, alice, "public")
    tag = unique("t")
    await post(client, alice, room, f"{body} {tag}")
    await post(client, alice, room, f"something else entirely {tag}")
    assert await bodies(client, alice, f"{tag} {query}") == [f"{body} {tag}"]


@pytest.mark.parametrize(
    ("body", "query"),
    [
        ("qwen3.6 is out", "wen"),  # a prefix, not any substring, outside spaceless scripts
        ("我们明天在北京见面", "京北"),
        ("我们明天在北京见面", "北京在"),
        ("東京 京都", "東京都"),  # two words: not contiguous
        ("東京タワー", "京タ"),  # 京 and タ, each one character: a prefix of no word
        ("ภาษาไทย", "ไทยง"),
        ("données", "donneesx"),
    ],
)
async def test_does_not_match(
    client: httpx.AsyncClient, alice: User, body: str, query: str
) -> None:
    room = await create(client, alice, "public")
    tag = unique("t")
    await post(client, alice, room, f"{body} {tag}")
    assert await bodies(client, alice, f"{tag} {query}") == []
    assert await bodies(client, alice, tag) == [f"{body} {tag}"]


async def test_phrases(client: httpx.AsyncClient, alice: User) -> None:
    room = await create(client, alice, "public")
    tag = unique("t")
    one = f"the quick brown fox {tag}"
    other = f"brown and quick foxes {tag}"
    for body in (one, other):
        await post(client, alice, room, body)
    assert await bodies(client, alice, f'{tag} "quick brown"') == [one]
    assert await bodies(client, alice, f'{tag} "brown fo"') == [one]  # the last word a prefix
    assert set(await bodies(client, alice, f"{tag} quick brown")) == {one, other}
    assert await bodies(client, alice, f'{tag} "brown quick"') == []
    # A word of one character keeps its place in a phrase.
    third = f"take a break {tag}"
    await post(client, alice, room, third)
    assert await bodies(client, alice, f'{tag} "take a break"') == [third]
    assert await bodies(client, alice, f'{tag} "take break"') == []


async def test_paging_newest_first(client: httpx.AsyncClient, alice: User) -> None:
    rooms = [await create(client, alice, "private") for _ in range(2)]
    tag = unique("t")
    posted = [await post(client, alice, rooms[i % 2], f"hit {i} {tag}") for i in range(7)]
    found = await every(client, alice, "/api/search", "results", q=tag, limit=3)
    assert [(m["room"], m["seq"]) for m in found] == [
        (m["room"], m["seq"]) for m in reversed(posted)
    ]
    page = await search(client, alice, tag, limit=3)
    assert len(page["results"]) == 3 and page["next_cursor"] is not None
    last = await search(client, alice, tag, limit=7)
    assert len(last["results"]) == 7 and last["next_cursor"] is None
    assert set(last["results"][0]) >= {"room", "seq", "author", "body", "reactions", "version"}


@pytest.mark.parametrize(
    "params",
    [
        {"q": ""},
        {"q": "a"},  # one character outside the spaceless scripts: ignored
        {"q": 'a " b'},
        {"q": "!!! ..."},
        {"q": "x" * 257},
        {"q": " ".join(f"w{i}" for i in range(17))},
        {"q": "hello", "limit": 0},
        {"q": "hello", "limit": 101},
        {"q": "hello", "cursor": "not-a-cursor"},
        {"q": "hello", "cursor": "WyJtaW5lIiwiMjAyNi0wMS0wMSIsMV0"},  # another list's cursor
        {"q": "hello", "cursor": "WyJzZWFyY2giLCJ4IiwxLDJd"},  # ["search","x",1,2]
        # ["search", "2026-01-01T00:00:00+00:00", 1, 10**20]: past a bigint
        {
            "q": "hello",
            "cursor": "WyJzZWFyY2giLCAiMjAyNi0wMS0wMVQwMDowMDowMCswMDowMCIsIDEsIDEw"
            "MDAwMDAwMDAwMDAwMDAwMDAwMF0",
        },
        {"q": "hello", "room": "Not A Room"},
    ],
)
async def test_refused(client: httpx.AsyncClient, alice: User, params: dict[str, Any]) -> None:
    r = await client.get("/api/search", params=params, headers=alice.headers)
    assert r.status_code == 422, r.text


async def test_needs_a_session(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/search", params={"q": "hello"})
    assert r.status_code == 401


async def test_limit_bound(client: httpx.AsyncClient, alice: User) -> None:
    room = await create(client, alice, "public")
    tag = unique("t")
    for i in range(3):
        await post(client, alice, room, f"{tag} n{i}")
    assert len((await search(client, alice, tag, limit=100))["results"]) == 3
    assert len((await search(client, alice, tag))["results"]) == 3
    assert len((await search(client, alice, tag, limit=1))["results"]) == 1


async def test_privacy(client: httpx.AsyncClient, alice: User) -> None:
    bob, carol = await new_user(client), await new_user(client)
    private = await create(client, alice, "private")
    public = await create(client, alice, "public")
    assert (await put_member(client, alice, private, bob.name)).status_code == 200
    tag = unique("t")
    secret = await post(client, alice, private, f"secret plans {tag}")
    await post(client, alice, public, f"open plans {tag}")

    assert len(await bodies(client, alice, tag)) == 2
    assert await bodies(client, bob, tag) == [f"secret plans {tag}"]
    # A third user: neither room is theirs; the private one is not readable at all.
    assert await bodies(client, carol, tag) == []
    await search(client, carol, tag, expect=403, room=private)
    await search(client, carol, tag, expect=404, room=unique("nowhere-"))
    # room=: any readable room, a public one without being a member.
    assert await bodies(client, carol, tag, room=public) == [f"open plans {tag}"]
    assert await bodies(client, alice, tag, room=private) == [f"secret plans {tag}"]

    # A page taken as a member, followed after removal, finds nothing more.
    await post(client, alice, private, f"more secret plans {tag}")
    first = await search(client, bob, tag, limit=1)
    assert first["results"][0]["seq"] > secret["seq"] and first["next_cursor"]
    assert (await delete_member(client, alice, private, bob.name)).status_code == 204
    assert await bodies(client, bob, tag) == []
    assert await bodies(client, bob, tag, cursor=first["next_cursor"]) == []
    await search(client, bob, tag, expect=403, room=private)


async def test_edit_and_delete(
    client: httpx.AsyncClient, alice: User, pg: asyncpg.Connection
) -> None:
    room = await create(client, alice, "private")
    tag = unique("t")
    message = await post(client, alice, room, f"original wording {tag}")
    seq = message["seq"]
    path = f"/api/rooms/{room}/messages/{seq}"
    r = await client.patch(path, json={"body": f"revised text {tag}"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert await bodies(client, alice, f"{tag} original") == []
    assert await bodies(client, alice, f"{tag} revised") == [f"revised text {tag}"]

    r = await client.delete(path, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert await bodies(client, alice, tag) == []
    assert await bodies(client, alice, f"{tag} revised") == []
    row = await pg.fetchrow(
        "SELECT m.body, m.search FROM messages m JOIN rooms r ON r.id = m.room_id"
        " WHERE r.name = $1 AND m.seq = $2",
        room,
        seq,
    )
    assert row is not None and row["body"] == "" and row["search"] is None


async def test_plan_uses_the_indexes(settings: Settings, own_database: str) -> None:
    """Among five rooms of 20,000 messages each (a word in all, one of its own in each), the
    statement behind a search finds a rare word through the GIN index and a word of every
    message through each room's primary key, newest first; never by reading the whole
    messages table. The same answers through the API, whichever way they were found. In a
    database of its own: the plans follow the table's statistics, which other tests' rows
    would move."""
    async with (
        bounded_app(settings, database_url=own_database) as application,
        app_client(application) as client,
    ):
        pg = await asyncpg.connect(own_database, timeout=10)
        try:
            await _plans_and_answers(client, await new_user(client), pg)
        finally:
            await pg.close(timeout=5)


async def _plans_and_answers(
    client: httpx.AsyncClient, alice: User, pg: asyncpg.Connection
) -> None:
    rooms = [await create(client, alice, "public") for _ in range(5)]
    tag, common = unique("t"), unique("c")
    ids = [await pg.fetchval("SELECT id FROM rooms WHERE name = $1", r) for r in rooms]
    for room_id in ids:
        await pg.execute(
            "INSERT INTO messages (room_id, seq, author, body, search)"
            " SELECT $1, g, $2, $3 || ' w' || g, CAST($4 || ' w' || g || ':3' AS tsvector)"
            " FROM generate_series(1, 20000) AS g",
            room_id,
            alice.name,
            f"{common} filler",
            search_vector(f"{common} filler"),
        )
        await pg.execute("UPDATE rooms SET last_seq = 20000 WHERE id = $1", room_id)
    room_id = ids[0]
    await post(client, alice, rooms[0], f"{common} {tag} 北京")
    await pg.execute("ANALYZE messages")
    names = ["rooms", "q", "at", "room_id", "seq", "limit"]
    sql = re.sub(r":(\w+)", lambda m: f"${names.index(m[1]) + 1}", _FIND.text)
    for q, index in [(tag, "ix_messages_search"), (f'"{tag} 北京"', "ix_messages_search"),
                     (common, "pk_messages")]:  # fmt: skip
        args = [room_id], parse_query(q), *_FIRST, 21
        plan = "\n".join(r[0] for r in await pg.fetch(f"EXPLAIN {sql}", *args))
        assert "Seq Scan on messages" not in plan, plan
        assert index in plan, plan
    # The walk's round: each room's window by its primary key, never the whole table.
    windows = re.sub(
        r":(\w+)", lambda m: f"${['rooms', 'lo', 'hi', 'q'].index(m[1]) + 1}", _WINDOWS.text
    )
    await pg.execute("SET enable_bitmapscan = off")  # as the service sets it for the walk
    plan = "\n".join(
        r[0]
        for r in await pg.fetch(
            f"EXPLAIN {windows}", ids, [19000] * 5, [20000] * 5, parse_query(common)
        )
    )
    await pg.execute("RESET enable_bitmapscan")
    assert "Seq Scan on messages" not in plan and "Index Scan using pk_messages" in plan, plan

    # Through the API: the common word is every message of the five rooms (each room walked
    # back), the rare one a single message (the GIN index); the same order and paging.
    newest = [(rooms[0], 20001)] + [(rooms[4], seq) for seq in range(20000, 19995, -1)]
    first = await search(client, alice, common, limit=3)
    second = await search(client, alice, common, limit=3, cursor=first["next_cursor"])
    found = [(m["room"], m["seq"]) for m in first["results"] + second["results"]]
    assert found == newest
    assert [m["seq"] for m in (await search(client, alice, tag))["results"]] == [20001]


@contextlib.asynccontextmanager
async def bounded_app(settings: Settings, **bounds: Any) -> AsyncIterator[Any]:
    """An app of its own with other search bounds, lifespan running."""
    application = create_app(settings.model_copy(update=bounds))
    async with application.router.lifespan_context(application):
        yield application


async def test_a_search_flood_is_held_to_the_users_bucket(settings: Settings) -> None:
    """One user's searches past their bucket answer 429 with Retry-After and run nothing;
    another user searches at once."""
    rate, burst, tries = 5, 10, 40
    async with (
        bounded_app(settings, search_rate_per_second=rate, search_rate_burst=burst) as application,
        app_client(application) as http,
    ):
        flooder, other = await new_user(http), await new_user(http)
        codes: Counter[int] = Counter()
        retry_after = []
        started = time.monotonic()
        for _ in range(tries):
            r = await http.get("/api/search", params={"q": "flood"}, headers=flooder.headers)
            codes[r.status_code] += 1
            if r.status_code == 429:
                retry_after.append(int(r.headers["retry-after"]))
        elapsed = time.monotonic() - started
        r = await http.get("/api/search", params={"q": "flood"}, headers=other.headers)
        assert r.status_code == 200, r.text
    assert set(codes) == {200, 429}, codes
    assert burst <= codes[200] <= burst + rate * elapsed + 1, (codes, elapsed)
    assert len(retry_after) == codes[429] and min(retry_after) >= 1


async def test_searches_past_the_instances_cap_wait_then_503(settings: Settings) -> None:
    """With every search slot taken, a search waits for one: it answers 503 with
    Retry-After when none frees in time, and runs when one does."""
    async with (
        bounded_app(settings, max_concurrent_searches=1, search_wait_seconds=0.3) as application,
        app_client(application) as http,
    ):
        user = await new_user(http)
        async with application.state.search_gate.admit("someone else"):
            r = await http.get("/api/search", params={"q": "busy"}, headers=user.headers)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
    # A wait far longer than the test, so that only the slot freeing lets it run.
    async with (
        bounded_app(settings, max_concurrent_searches=1, search_wait_seconds=60) as application,
        app_client(application) as http,
    ):
        user = await new_user(http)
        async with application.state.search_gate.admit("someone else"):
            waiting = asyncio.create_task(
                http.get("/api/search", params={"q": "busy"}, headers=user.headers)
            )
            await asyncio.sleep(0.2)
            assert not waiting.done()
        r = await asyncio.wait_for(waiting, 30)
        assert r.status_code == 200, r.text


async def test_upgrade_fills_earlier_messages(own_database: str) -> None:
    """Messages stored before search existed are found after the upgrade; deleted ones keep
    no lexemes."""
    settings = Settings(database_url=own_database)
    await asyncio.to_thread(migrate.downgrade, settings, "0006")
    conn = await asyncpg.connect(own_database, timeout=10)
    try:
        await conn.execute("INSERT INTO users (username, password_hash) VALUES ('old', '!')")
        room_id = await conn.fetchval("INSERT INTO rooms (name) VALUES ('old') RETURNING id")
        await conn.execute(
            "INSERT INTO messages (room_id, seq, author, body, deleted) VALUES"
            " ($1, 1, 'old', 'Données d''avant 北京', false), ($1, 2, 'old', '', true)",
            room_id,
        )
        await asyncio.to_thread(migrate.upgrade, settings)
        rows = await conn.fetch(
            "SELECT seq, search::text AS search FROM messages WHERE room_id = $1 ORDER BY seq",
            room_id,
        )
        expected = await conn.fetchval(
            "SELECT CAST($1 AS tsvector)::text", search_vector("Données d'avant 北京")
        )
        assert [(r["seq"], r["search"]) for r in rows] == [(1, expected), (2, None)]
        found = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE search @@ CAST($1 AS tsquery)",
            parse_query("donnee 北京"),
        )
        assert found == 1
    finally:
        await conn.close(timeout=5)


def _always(answer: bool) -> Callable[..., bool]:
    def decide(*_: object) -> bool:
        return answer

    return decide


async def test_walk_and_index_agree_with_every_match(
    settings: Settings, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rooms of very different pace (a busy one, a slow one whose messages fall between the
    busy one's, an old one, an empty one, one whose seqs are shared with other events, one
    whose messages all have one time), with equal times across rooms and within a batch:
    for words in every message down to one message, every page through the walk alone,
    through the index alone and through the service's own choice equals the brute-force
    list of all matches, newest first."""
    tag, user = unique("wk"), unique("walker")
    await pg.execute("INSERT INTO users (username, password_hash) VALUES ($1, 'x')", user)
    names = [unique(f"walk{i}-") for i in range(6)]
    ids = [
        await pg.fetchval("INSERT INTO rooms (name) VALUES ($1) RETURNING id", name)
        for name in names
    ]
    await pg.execute(
        "INSERT INTO members (room_id, username, role) SELECT unnest($1::bigint[]), $2, 'member'",
        ids,
        user,
    )
    base = await pg.fetchval("SELECT now() - interval '30 days'")
    # (room, seqs, seconds after base of each): created_at follows seq within a room.
    layout: list[tuple[int, range, Callable[[int], int]]] = [
        (ids[0], range(1, 2401), lambda s: 100_000 + s // 3),  # busy; batches of three
        (ids[1], range(1, 121), lambda s: 100_000 + s * 20),  # slow, between the busy's
        (ids[2], range(1, 41), lambda s: s * 60),  # old
        (ids[4], range(1, 601, 3), lambda s: 100_000 + s // 3),  # every third seq a message
        (ids[5], range(1, 41), lambda s: 100_500),  # one time for all
    ]
    for room_id, seqs, seconds in layout:
        rows = []
        for seq in seqs:
            words = [tag, "every"]
            words += [w for w, n in (("tenth", 10), ("hundredth", 100)) if seq % n == 0]
            if room_id == ids[2]:
                words.append("oldonly")
            if room_id == ids[5]:
                words.append("tied")
            if (room_id, seq) == (ids[1], 7):
                words.append("once")
            body = " ".join(words)
            rows.append((room_id, seq, user, body, seconds(seq), search_vector(body)))
        await pg.executemany(
            "INSERT INTO messages (room_id, seq, author, body, created_at, search)"
            " VALUES ($1, $2, $3, $4, $5::timestamptz + $6 * interval '1 second',"
            " CAST($7 AS tsvector))",
            [(r, s, a, b, base, t, v) for r, s, a, b, t, v in rows],
        )
        await pg.execute("UPDATE rooms SET last_seq = $2 WHERE id = $1", room_id, max(seqs))
    engine = create_engine(settings)
    try:
        for word in ["every", "tenth", "hundredth", "oldonly", "tied", "once", "nowhere"]:
            q = f"{tag} {word}"
            expected = [
                (r["room_id"], r["seq"])
                for r in await pg.fetch(
                    "SELECT room_id, seq FROM messages WHERE room_id = ANY($1::bigint[])"
                    " AND search @@ CAST($2 AS tsquery)"
                    " ORDER BY created_at DESC, room_id DESC, seq DESC",
                    ids,
                    parse_query(q),
                )
            ]
            by_name = dict(zip(names, ids, strict=True))
            for way in ("walk", "index", "chosen"):
                if way != "chosen":
                    monkeypatch.setattr(search_module, "index_is_cheaper", _always(way == "index"))
                else:
                    monkeypatch.undo()
                for limit in [n for n in (1, 7, 50, 100) if len(expected) // n <= 60]:
                    got: list[tuple[int, int]] = []
                    cursor = None
                    for _ in range(len(expected) // limit + 2):
                        page = await Search(engine).find(user, q, cursor=cursor, limit=limit)
                        got += [(by_name[m.room], m.seq) for m in page.messages]
                        cursor = page.next_cursor
                        if cursor is None:
                            break
                    assert got == expected, (word, way, limit)
    finally:
        await engine.dispose()


def test_lexeme_shares_bound_a_query_by_its_rarest_lexeme() -> None:
    """The statistics' shares (pg_stats' most_common_elems and their frequencies, then the
    least and the greatest) say at most what share of the messages a query can match: a
    prefix sums its listed lexemes, a lexeme not listed has the least share, and a query
    whose lexemes are all required is bounded by its rarest."""
    shares = LexemeShares.of(["qwen", "abc", "abd", "~北京"], [0.3, 0.2, 0.05, 0.01, 0.01, 0.3])
    assert shares.least == 0.01
    assert shares.share(parse_query("ab")) == pytest.approx(0.25)  # abc and abd
    assert shares.share(parse_query("abd")) == pytest.approx(0.05)
    assert shares.share(parse_query("qwen")) == pytest.approx(0.3)
    assert shares.share(parse_query("zzz")) == pytest.approx(0.01)  # not listed: the least
    assert shares.share(parse_query("qwen ab")) == pytest.approx(0.25)
    assert shares.share(parse_query("北京")) == pytest.approx(0.01)  # '~北京', exact
    assert shares.share(parse_query("北京市")) == pytest.approx(0.01)  # '~京市' not listed
    assert shares.share(parse_query('"qwen abd"')) == pytest.approx(0.05)
    # Before ANALYZE (or on a server that keeps none): no statistics, no share.
    assert LexemeShares.of(None, None).share(parse_query("qwen")) is None
    assert LexemeShares.of(["qwen"], [0.3]).share(parse_query("qwen")) is None


def test_density_starts_at_the_statistics_share_and_follows_the_walk() -> None:
    assert search_module.density(0, 0, 0.02) == pytest.approx(0.02)
    assert search_module.density(0, 800) == pytest.approx(1 / 800)  # no share: one more
    # Walked rows outweigh the share as they grow.
    assert search_module.density(100, 100_000, 0.5) == pytest.approx(101 / 100_002)
    # At 10M messages: a word of one message in 100,000 goes to the index at once, a word
    # of one in twenty is walked, and without statistics nothing is decided before a walk.
    assert search_module.index_is_cheaper(0, 0, 21, 10e6, 1e-5)
    assert not search_module.index_is_cheaper(0, 0, 21, 10e6, 0.05)


async def test_statistics_decide_before_the_first_round(own_database: str, secret_key: str) -> None:
    """On a database of its own: after ANALYZE, Search reads the lexemes' shares from
    pg_stats; a word they call rare goes to the GIN index without a round of the walk, a
    word in most messages is walked; both find the same messages a brute-force query does."""
    settings = Settings(database_url=own_database, secret_key=secret_key, log_format="text")
    pg = await asyncpg.connect(own_database)
    engine = create_engine(settings)
    try:
        await pg.execute("INSERT INTO users (username, password_hash) VALUES ('stats', 'x')")
        room = await pg.fetchval("INSERT INTO rooms (name) VALUES ('stats') RETURNING id")
        await pg.execute(
            "INSERT INTO members (room_id, username, role) VALUES ($1, 'stats', 'member')", room
        )
        rows = [
            (room, seq, f"usual {'seldom' if seq == 7 else 'filler'} w{seq % 50}")
            for seq in range(1, 3001)
        ]
        await pg.executemany(
            "INSERT INTO messages (room_id, seq, author, body, search)"
            " VALUES ($1, $2, 'stats', $3, CAST($4 AS tsvector))",
            [(r, s, b, search_vector(b)) for r, s, b in rows],
        )
        await pg.execute("UPDATE rooms SET last_seq = 3000 WHERE id = $1", room)
        await pg.execute("ANALYZE messages")
        searcher = Search(engine)
        async with engine.connect() as conn:
            shares = await searcher._lexeme_shares(conn)
        assert shares.share(parse_query("usual")) == pytest.approx(1.0)
        assert shares.share(parse_query("seldom")) == pytest.approx(shares.least)
        assert shares.least < 0.05
        # The model's table is 10M messages (its fixed cost is a walk of thousands of rows);
        # a table this small would always walk, so the count is set as a large one's.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(search_module, "_INDEX_FIXED", 0.0)
            rare = await searcher.find("stats", "seldom")
            usual = await searcher.find("stats", "usual", limit=5)
        assert (rare.by_index, rare.rounds, [m.seq for m in rare.messages]) == (True, 0, [7])
        assert not usual.by_index and usual.rounds >= 1
        assert [m.seq for m in usual.messages] == [3000, 2999, 2998, 2997, 2996]
    finally:
        await engine.dispose()
        await pg.close(timeout=5)
