"""The browser page over long histories: a 20,000-message room scrolled from its newest
message to its first and back with a bounded DOM; a private room's member lines read back
from its log while scrolling; and the README's screenshot of the v2 features. Real `chat
serve` processes and a real Chromium, as in test_browser.py, whose fixtures and helpers these
are. Every wait is bounded (Playwright's expect and actions time out after WAIT_MS, loops
have a deadline). With UPDATE_README_SCREENSHOT=1, the v2 room is copied to docs/ for the
README once its test has passed.
"""

# The fixtures of test_browser.py are imported by name, which is how pytest finds them; the
# tests then take them as arguments, which ruff reads as redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
from playwright.async_api import expect

from tests.support import PROJECT, Instance, User, new_user, unique
from tests.test_browser import (  # noqa: F401 (found by name)
    WAIT_MS,
    Tab,
    Tabs,
    browser,
    expect_confirmed,
    for_readme,
    http,
    open_in_room,
    send_from_page,
    server,
    short,
    tabs,
)
from tests.test_browser_log import edit, post, react, reaction, row_of
from tests.test_browser_v2 import audit, axe_source, system_line  # noqa: F401

WINDOW = 500  # room-view.js: rows of messages and member events kept in the DOM at most
TOTAL = 20_000
README_SHOT_V2 = PROJECT / "docs" / "screenshot-v2.png"

# What the page shows, read in one go: the seqs of its message rows in DOM order, its member
# lines' seqs, the number of elements in the document, and whether it shows the room's start.
VIEW_STATE = """() => {
    const list = document.querySelector('[data-testid="messages"]');
    const seqs = (id) => [...list.querySelectorAll(`[data-testid="${id}"]`)]
        .map((r) => Number(r.dataset.seq));
    return {
        seqs: seqs('message'),
        lines: seqs('system-line'),
        elements: document.getElementsByTagName('*').length,
        start: list.querySelector('[data-testid="history-start"]') !== null,
    };
}"""

# One step of scrolling, in the page (one round trip): to the top (or the bottom), then wait
# until no page is loading and an older message is first (a newer one last), or the room's
# start shows; the view's state then, or null after `wait` ms.
STEP = f"""async ([to, wait]) => {{
    const viewState = {VIEW_STATE};
    const scroller = document.querySelector('[data-testid="messages"]');
    const ends = () => {{
        const rows = scroller.querySelectorAll('[data-testid="message"]');
        return [Number(rows[0]?.dataset.seq), Number(rows[rows.length - 1]?.dataset.seq)];
    }};
    const [first, last] = ends();
    scroller.scrollTop = to === 'top' ? 0 : scroller.scrollHeight;
    const started = performance.now();
    while (performance.now() - started < wait) {{
        await new Promise((resolve) => setTimeout(resolve, 5));
        if (scroller.querySelector('.history-loading')) continue;
        const [a, b] = ends();
        const start = scroller.querySelector('[data-testid="history-start"]') !== null;
        if (to === 'top' ? a < first || start : b > last) return viewState();
    }}
    return null;
}}"""


async def view_state(tab: Tab) -> dict[str, Any]:
    state: dict[str, Any] = await tab.page.evaluate(VIEW_STATE)
    return state


async def fill_room(pg: asyncpg.Connection, room: str, authors: list[str], total: int) -> None:
    """A public room with messages 1..total, straight into the tables (as the writer stores
    them: seqs gapless, created_at ascending), authors taking turns three messages each."""
    async with pg.transaction():
        room_id = await pg.fetchval(
            "INSERT INTO rooms (name, last_seq, last_message_seq, last_message_at) "
            "VALUES ($1, $2::bigint, $2::bigint, now()) RETURNING id",
            room,
            total,
        )
        await pg.execute(
            "INSERT INTO messages (room_id, seq, author, body, created_at) "
            "SELECT $1, g, ($2::text[])[1 + (g / 3) % cardinality($2::text[])], "
            "'message ' || g, now() - make_interval(secs => ($3 - g) * 2) "
            "FROM generate_series(1, $3) AS g",
            room_id,
            authors,
            total,
        )


def check_window(state: dict[str, Any]) -> list[int]:
    """The rows are one run of consecutive seqs, ascending, within the bound."""
    seqs: list[int] = state["seqs"]
    assert 0 < len(seqs) <= WINDOW, f"{len(seqs)} message rows in the DOM"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (
        f"not one ascending run: {seqs[:3]}..{seqs[-3:]}, {len(seqs)} rows"
    )
    return seqs


async def heap_bytes(tab: Tab) -> int:
    """V8's used heap after a full garbage collection."""
    cdp = await tab.context.new_cdp_session(tab.page)
    try:
        await cdp.send("HeapProfiler.collectGarbage")
        usage = await cdp.send("Runtime.getHeapUsage")
    finally:
        await cdp.detach()
    return int(usage["usedSize"])


async def private_room(http: httpx.AsyncClient, owner: User, room: str) -> None:
    r = await http.post("/api/rooms", json={"name": room, "kind": "private"}, headers=owner.headers)
    assert r.status_code == 201, r.text


# --------------------------------------------------------------------------------------- tests


async def test_20000_messages_scrolled_to_the_first_and_back_stay_bounded(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    """From the newest message of a 20,000-message room to its first and back: at every step
    the DOM holds one ascending run of at most WINDOW messages; each message appears once on
    the way up and once on the way down, in order; the document and the JS heap stay flat; a
    message posted while the page is far back shows on the way down, and one posted at the
    bottom arrives live; no task of the page runs long enough to freeze it."""
    alice, bob = await new_user(http), await new_user(http)
    room = unique("long-")
    await fill_room(pg, room, [alice.name, bob.name], TOTAL)

    tab = await open_in_room(tabs, server, alice.name, room)
    await expect(tab.rows.last).to_have_attribute("data-seq", str(TOTAL))
    scroller = tab.by("messages")
    await watch_long_tasks(tab)
    tasks: list[float] = []  # the page's long tasks, but those of the heap measurements

    async def step(to: str) -> dict[str, Any]:
        """Scroll to the top or the bottom, wait until the page has loaded what that asks for,
        and check the window."""
        state: dict[str, Any] | None = await tab.page.evaluate(STEP, [to, WAIT_MS])
        assert state is not None, f"scrolled to the {to}: nothing loaded in {WAIT_MS} ms"
        check_window(state)
        return state

    # Up: each step brings older messages on top and drops the newest beyond the bound.
    shown_up = check_window(await view_state(tab))[::-1]
    elements: list[int] = []  # of the document, after each step
    full: list[int] = []  # elements and heap when the window is first full
    async with asyncio.timeout(120):
        while True:
            state = await step("top")
            older = [s for s in reversed(state["seqs"]) if s < shown_up[-1]]
            shown_up.extend(older)
            elements.append(state["elements"])
            if not full and len(state["seqs"]) == WINDOW:
                full = [state["elements"], await heap_bytes_aside(tab, tasks)]
            if state["start"] and state["seqs"][0] == 1:
                break
            assert older, f"a step up brought nothing older than {shown_up[-1]}"
    assert shown_up == list(range(TOTAL, 0, -1)), "the way up skipped or repeated messages"
    await scroller.evaluate("(el) => { el.scrollTop = 0; }")
    await expect(tab.by("history-start")).to_be_in_viewport()
    heap = [await heap_bytes_aside(tab, tasks)]

    # Posted while the page is far back: it raises the "new messages" pill, stays out of the
    # DOM, and shows on the way down.
    while_away = await post(http, bob, room, "posted while you were far back")
    assert while_away["seq"] == TOTAL + 1
    await expect(tab.by("new-messages")).to_be_visible()
    await expect(tab.row_with("posted while you were far back")).to_have_count(0)

    # Down: newer messages below, the oldest dropped, until the newest (the tail) is back.
    shown_down = check_window(await view_state(tab))
    async with asyncio.timeout(120):
        while shown_down[-1] < TOTAL + 1:
            state = await step("bottom")
            newer = [s for s in state["seqs"] if s > shown_down[-1]]
            assert newer, f"a step down brought nothing newer than {shown_down[-1]}"
            shown_down.extend(newer)
            elements.append(state["elements"])
    assert shown_down == list(range(1, TOTAL + 2)), "the way down skipped or repeated messages"
    await expect(tab.by("history-newer-retry")).to_have_count(0)
    heap.append(await heap_bytes_aside(tab, tasks))

    # At the bottom again, a new message arrives live, and the window stays bounded.
    await scroller.evaluate("(el) => { el.scrollTop = el.scrollHeight; }")
    live = await post(http, bob, room, "live at the bottom")
    assert await expect_confirmed(tab.row_with("live at the bottom")) == live["seq"]
    await expect(tab.rows.last).to_have_attribute("data-seq", str(live["seq"]))
    await expect(tab.row_with("live at the bottom")).to_be_in_viewport()
    check_window(await view_state(tab))

    # Flat: the document never grew past a quarter over its first full window, and the heap
    # after 40,000 rows shown is within a small margin of the heap with the first 500.
    assert full, "the window never filled"
    assert max(elements) <= full[0] * 1.25, (full, max(elements))
    assert max(heap) <= full[1] * 1.5 + 4_000_000, (full, heap)
    # Never frozen: the longest task the page ran over the whole trip (printed; a freeze is
    # seconds, a step's work tens of ms).
    tasks += await drained_long_tasks(tab)
    print(f"\nlong tasks over the trip: {len(tasks)}, the longest {max(tasks, default=0):.0f} ms")
    assert max(tasks, default=0) < FROZEN_MS, tasks
    tab.watch.assert_clean()


# A main-thread task this long is a frozen page (Chromium counts tasks over 50 ms as long).
FROZEN_MS = 2000


async def watch_long_tasks(tab: Tab) -> None:
    """Record the page's long tasks (PerformanceObserver, `longtask`) in window.__longTasks,
    after checking that the observer sees one: a 120 ms task, then the list is emptied."""
    await tab.page.evaluate(
        """() => {
            window.__longTasks = [];
            new PerformanceObserver((list) => {
                for (const e of list.getEntries()) window.__longTasks.push(e.duration);
            }).observe({type: "longtask"});
            setTimeout(() => {
                const end = performance.now() + 120;
                while (performance.now() < end);
            });
        }"""
    )
    await tab.page.wait_for_function(
        "() => window.__longTasks.some((d) => d >= 100)", timeout=10_000
    )
    await tab.page.evaluate("() => { window.__longTasks.length = 0; }")


async def drained_long_tasks(tab: Tab) -> list[float]:
    """The long tasks recorded since the last call (watch_long_tasks), and the list emptied."""
    tasks: list[float] = await tab.page.evaluate(
        "() => window.__longTasks.splice(0, window.__longTasks.length)"
    )
    return tasks


async def heap_bytes_aside(tab: Tab, tasks: list[float]) -> int:
    """heap_bytes, whose full garbage collection is a long task of the test's making: the
    page's own long tasks before it are kept in `tasks`, the collection's dropped."""
    tasks += await drained_long_tasks(tab)
    used = await heap_bytes(tab)
    await drained_long_tasks(tab)
    return used


async def scroll_up_past_the_window(tab: Tab, newest: int) -> dict[str, Any]:
    """Scroll up until the page has dropped its newest messages; returns the view's state."""
    async with asyncio.timeout(30):
        while True:
            state: dict[str, Any] | None = await tab.page.evaluate(STEP, ["top", WAIT_MS])
            assert state is not None, "scrolling up loaded nothing"
            check_window(state)
            if state["seqs"][-1] < newest:
                return state


async def test_the_pill_and_a_send_from_far_back_go_to_the_newest(
    tabs: Tabs,
    server: Instance,
    http: httpx.AsyncClient,
    pg: asyncpg.Connection,
    axe_source: str,
) -> None:
    """Far back in a long room (its newest messages dropped; axe finds nothing serious
    there), a new message raises the pill;
    the pill shows the newest messages with it; a message sent from far back is shown, and
    confirmed, among the newest too."""
    alice, bob = await new_user(http), await new_user(http)
    room = unique("back-")
    total = 1_500
    await fill_room(pg, room, [alice.name, bob.name], total)
    tab = await open_in_room(tabs, server, alice.name, room)
    await expect(tab.rows.last).to_have_attribute("data-seq", str(total))

    await scroll_up_past_the_window(tab, total)
    await audit(tab, axe_source, "room-far-back")
    news = await post(http, bob, room, "news while you read the archive")
    await expect(tab.by("new-messages")).to_be_visible()
    await expect(tab.row_with("news while you read the archive")).to_have_count(0)
    await tab.by("new-messages").click()
    await expect(tab.rows.last).to_have_attribute("data-seq", str(news["seq"]))
    await expect(tab.row_with("news while you read the archive")).to_be_in_viewport()
    await expect(tab.by("new-messages")).to_be_hidden()
    check_window(await view_state(tab))

    await scroll_up_past_the_window(tab, news["seq"])
    mine = await expect_confirmed(await send_from_page(tab, "sent from far back"))
    assert mine == news["seq"] + 1
    await expect(tab.rows.last).to_have_attribute("data-seq", str(mine))
    await expect(tab.row_with("sent from far back")).to_be_in_viewport()
    seqs = check_window(await view_state(tab))
    assert seqs[-2:] == [news["seq"], mine]
    tab.watch.assert_clean()


async def test_member_lines_are_read_back_while_scrolling(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """A private room whose member events lie far back among its messages: opened afresh
    (its join replays messages only), the page shows the member lines among the newest
    messages, then the older ones as it scrolls up to the start, each once at its seq; after
    the window dropped them on the way up, they are back in place on the way down."""
    alice, bob, carol = await new_user(http), await new_user(http), await new_user(http)
    room = unique("priv-")
    await private_room(http, alice, room)
    limit = asyncio.Semaphore(16)

    async def member(method: str, user: User, role: str | None = None) -> None:
        path = f"/api/rooms/{room}/members/{user.name}"
        body = {"role": role} if role else {}
        answer = await http.request(method, path, json=body, headers=alice.headers)
        assert answer.status_code in (200, 204), answer.text

    async def messages(n: int, label: str) -> None:
        async def one(i: int) -> None:
            async with limit:
                await post(http, (alice, bob)[i % 2], room, f"{label} {i}")

        await asyncio.gather(*(one(i) for i in range(n)))

    lines = {
        1: f"{alice.name} added {bob.name}",
        262: f"{alice.name} added {carol.name}",
        523: f"{bob.name} is now a moderator",
        524: f"{alice.name} removed {carol.name}",
    }
    async with asyncio.timeout(90):
        await member("PUT", bob)
        await messages(260, "early")
        await member("PUT", carol)
        await messages(260, "middle")
        await member("PUT", bob, "moderator")
        await member("DELETE", carol)
        await messages(30, "late")
    log = await http.get(f"/api/rooms/{room}/events?after=0&limit=1000", headers=bob.headers)
    members = {e["seq"]: e["event"] for e in log.json()["events"] if e["type"] == "member"}
    assert members == {1: "added", 262: "added", 523: "role", 524: "removed"}
    last = 554

    tab = await open_in_room(tabs, server, bob.name, room)
    await expect(tab.rows.last).to_have_attribute("data-seq", str(last))

    async def expect_lines(state: dict[str, Any]) -> None:
        """The member lines between the first and last message shown (and before the first,
        at the start), each once, at its seq among the messages."""
        low = 0 if state["start"] else state["seqs"][0]
        high = state["seqs"][-1]
        wanted = {seq: text for seq, text in lines.items() if low < seq < high}
        for text in wanted.values():
            await expect(system_line(tab, text)).to_have_count(1)
        order: list[int] = await tab.by("messages").evaluate(
            "(el) => [...el.querySelectorAll('li[data-seq]')].map((r) => Number(r.dataset.seq))"
        )
        assert order == sorted(set(order)), "rows out of seq order, or repeated"
        shown = (await view_state(tab))["lines"]
        assert shown == sorted(wanted), (shown, sorted(wanted))

    state = await view_state(tab)
    await expect_lines(state)  # the role and the removal, among the newest 50
    async with asyncio.timeout(60):
        while not state["start"]:
            state = await tab.page.evaluate(STEP, ["top", WAIT_MS])
            assert state is not None, "scrolling up loaded nothing"
            await expect_lines(state)
        while state["seqs"][-1] < last:
            state = await tab.page.evaluate(STEP, ["bottom", WAIT_MS])
            assert state is not None, "scrolling down loaded nothing"
            await expect_lines(state)
    assert (await view_state(tab))["lines"] == [262, 523, 524]  # the window dropped seq 1
    await tab.shot("member-lines.png")
    tab.watch.assert_clean()


async def test_private_room_with_the_room_log_for_the_readme(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """The README's picture of v2: a private room with a member line, a reply, an edited
    message and reactions (the viewer's own highlighted), both members online; the "New
    messages" line above a message that mentions the viewer; another room's badges."""
    alice, bob = await new_user(http, short("alice_")), await new_user(http, short("bob_"))
    room = short("release-")
    await private_room(http, alice, room)
    r = await http.put(f"/api/rooms/{room}/members/{bob.name}", json={}, headers=alice.headers)
    assert r.status_code == 200, r.text
    news = await post(http, alice, room, "Release 2.4 is out: https://example.com/2.4")
    await post(http, bob, room, "Congrats! The reconnect fix alone was worth it.", news["seq"])
    typo = await post(http, alice, room, "Thnaks all. Notes for 2.5 go in the planning doc.")
    await edit(http, alice, room, typo["seq"], "Thanks all. Notes for 2.5 go in the planning doc.")
    other = short("design-")
    await post(http, alice, other, "Mock-ups for the settings page are up.")
    await post(http, bob, other, "Looks good. One question on the dark theme.")
    await post(http, bob, other, f"@{alice.name} can we go over it after lunch?")
    question = await post(http, bob, room, f"@{alice.name} shall I tag the docs site too?")
    for user, seq, emoji in (
        (bob, news["seq"], "🎉"),
        (alice, news["seq"], "🎉"),
        (bob, news["seq"], "🚀"),
        (alice, question["seq"], "👍"),
    ):
        await react(http, user, room, seq, emoji)

    await open_in_room(tabs, server, bob.name, room)
    tab = await open_in_room(tabs, server, alice.name, room)
    await expect(tab.by("online-user")).to_have_count(2)
    await expect(system_line(tab, f"{alice.name} added {bob.name}")).to_have_count(1)
    await expect(reaction(tab, news["seq"], "🎉")).to_have_attribute("data-count", "2")
    await expect(reaction(tab, news["seq"], "🎉")).to_have_attribute("aria-pressed", "true")
    await expect(reaction(tab, news["seq"], "🚀")).to_have_attribute("aria-pressed", "false")
    await expect(row_of(tab, typo["seq"]).get_by_test_id("message-edited")).to_be_visible()
    quote = row_of(tab, news["seq"] + 1).get_by_test_id("reply-quote")
    await expect(quote).to_contain_text("Release 2.4 is out")
    await expect(tab.by("room-kind")).to_have_attribute("data-kind", "private")
    await expect(row_of(tab, question["seq"]).get_by_test_id("new-line")).to_have_count(1)
    await expect(row_of(tab, question["seq"]).get_by_test_id("mention")).to_have_count(1)
    other_item = tab.page.locator(f"[data-testid='room-item'][data-room='{other}']")
    await expect(other_item.get_by_test_id("room-unread")).to_have_attribute("data-count", "2")
    await expect(other_item.get_by_test_id("room-mentions")).to_have_attribute("data-count", "1")
    await tab.page.mouse.move(1200, 400)  # over the online list: no message is hovered
    shot = await tab.shot("readme-v2.png")
    tab.watch.assert_clean()
    for_readme(shot, README_SHOT_V2)
