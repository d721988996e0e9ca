"""The browser page's read state, end to end: unread and mention badges from the server's
counts, kept current by the user's own stream (`activity`, `read`, `notification`) in every
tab of the user; the "New messages" line at the read cursor; the count in the title; mentions
highlighted; a system notification for a mention while the page is hidden. Real `chat serve`
processes and a real Chromium, as in test_browser.py, whose fixtures and helpers these are.
Every wait is bounded (Playwright's expect and actions time out after WAIT_MS).
"""

# The fixtures of test_browser.py are imported by name, which is how pytest finds them; the
# tests then take them as arguments, which ruff reads as redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
from playwright.async_api import Locator, WebSocket, expect

from tests.support import Instance, User, new_user
from tests.test_browser import (  # noqa: F401 (found by name)
    WAIT_MS,
    Tab,
    Tabs,
    browser,
    expect_confirmed,
    http,
    open_in_room,
    send_from_page,
    server,
    short,
    tabs,
)
from tests.test_browser_history import private_room
from tests.test_browser_log import post
from tests.test_browser_v2 import (  # noqa: F401
    audit,
    axe_source,
    expect_never_seen,
    room_item,
)

# Init scripts run in the page before its own scripts (through the DevTools protocol, which
# the page's CSP does not govern). HIDDEN: the page believes it is hidden, as in a background
# tab. NOTIFICATIONS: every Notification the page constructs is recorded in window.__notes.
HIDDEN = """
Object.defineProperty(Document.prototype, 'visibilityState', {get: () => 'hidden'});
Object.defineProperty(Document.prototype, 'hidden', {get: () => true});
"""
NOTIFICATIONS = """
window.__notes = [];
const Real = window.Notification;
window.Notification = class {
  static get permission() { return Real.permission; }
  static requestPermission() { return Real.requestPermission(); }
  constructor(title, options = {}) { window.__notes.push({title, body: options.body ?? null}); }
  addEventListener() {}
  close() {}
};
"""


def badge(tab: Tab, room: str, which: str) -> Locator:
    """A room's `unread` or `mentions` badge in the sidebar."""
    return room_item(tab, room).get_by_test_id(f"room-{which}")


async def expect_badges(tab: Tab, room: str, unread: int, mentions: int) -> None:
    for which, count in (("unread", unread), ("mentions", mentions)):
        shown = badge(tab, room, which)
        await expect(shown).to_have_attribute("data-count", str(count))
        if count:
            await expect(shown).to_be_visible()
        else:
            await expect(shown).to_be_hidden()


def record_reads(tab: Tab) -> list[dict[str, Any]]:
    """Every `read` command the page writes to its sockets, from now on."""
    reads: list[dict[str, Any]] = []

    def on_socket(ws: WebSocket) -> None:
        def on_frame(payload: str | bytes) -> None:
            frame = json.loads(payload)
            if frame.get("type") == "read":
                reads.append(frame)

        ws.on("framesent", on_frame)

    tab.page.on("websocket", on_socket)
    return reads


async def expect_counts(
    http: httpx.AsyncClient, user: User, room: str, unread: int, mentions: int
) -> None:
    """The server's counts for `user` in `room` become these (the page's `read` is sent a
    moment after the newest messages are seen), within WAIT_MS."""
    info: dict[str, Any] = {}
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        r = await http.get(f"/api/rooms/{room}", headers=user.headers)
        assert r.status_code == 200, r.text
        info = r.json()
        if (info["unread"], info["mentions"]) == (unread, mentions):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {unread} unread, {mentions} mentions: {info}")


async def test_badges_title_and_the_new_line_follow_reading_in_every_tab(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient, axe_source: str
) -> None:
    """Bob's messages in a private room raise Alice's badges (mentions apart, highlighted) and
    title count in both her tabs; opening the room in one shows the "New messages" line and
    clears the badges in the other; Carol, in the public room with them, sees none of it."""
    alice, bob, carol = [await new_user(http, short(p)) for p in ("alice_", "bob_", "carol_")]
    secret, lobby = short("secret-"), short("lobby-")
    await private_room(http, alice, secret)
    r = await http.put(f"/api/rooms/{secret}/members/{bob.name}", json={}, headers=alice.headers)
    assert r.status_code == 200, r.text
    read = await post(http, alice, secret, "Plans for the launch go here.")
    await post(http, alice, lobby, "Morning all")

    first, second = [await open_in_room(tabs, server, alice.name, lobby) for _ in range(2)]
    third = await open_in_room(tabs, server, carol.name, lobby)
    for tab in (first, second):
        await expect_badges(tab, secret, 0, 0)

    bodies = [
        "The venue confirmed for Friday.",
        f"@{alice.name.upper()}, can you check the budget?",
        f"Not a mention: bob@{alice.name} nor @{alice.name}x",
    ]
    for body in bodies:
        await post(http, bob, secret, body)
    for tab in (first, second):
        await expect_badges(tab, secret, 3, 1)
        await expect(room_item(tab, secret)).to_have_accessible_name(
            re.compile(rf"^Private room: {secret}\s*, 3 unread messages\s*, 1 mention\b")
        )
        await expect(tab.page).to_have_title(f"(3) #{lobby} · Chat")
    await expect(third.page).to_have_title(f"#{lobby} · Chat")

    # The first tab opens the room: the line sits above Bob's first message, the mention is
    # marked, the cursor moves to the newest, and the second tab's badges go.
    await room_item(first, secret).click()
    line = first.by("new-line")
    await expect(line).to_have_count(1)
    await expect(first.row_with(bodies[0]).get_by_test_id("new-line")).to_have_count(1)
    await expect(line).to_have_accessible_name("New messages")
    await expect(first.by("announcer")).to_contain_text("3 new messages")
    mention = first.row_with(bodies[1])
    await expect(mention).to_have_class(re.compile(r"\bis-mention\b"))
    await expect(mention.get_by_test_id("mention")).to_have_text(f"@{alice.name.upper()}")
    for body in (read["body"], bodies[0], bodies[2]):
        await expect(first.row_with(body)).not_to_have_class(re.compile(r"\bis-mention\b"))
    await expect(first.by("messages").get_by_test_id("mention")).to_have_count(1)
    for tab in (first, second):
        await expect_badges(tab, secret, 0, 0)
    await expect(second.page).to_have_title(f"#{lobby} · Chat")
    await expect(first.page).to_have_title(f"#{secret} · Chat")
    await expect_counts(http, alice, secret, 0, 0)

    # News elsewhere while the room with its line is on screen: the audit sees both.
    await post(http, bob, lobby, f"@{alice.name} coffee?")
    await expect_badges(first, lobby, 1, 1)
    await expect(first.page).to_have_title(f"(1) #{secret} · Chat")
    await first.shot("read-state.png")
    await audit(first, axe_source, "read-state")

    await expect_never_seen(third, secret)
    await expect(third.page).to_have_title(f"#{lobby} · Chat")
    for tab in (first, second, third):
        tab.watch.assert_clean()


async def test_the_new_line_moves_to_the_cursor_when_coming_back(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """A room left and come back to shows the line above what came meanwhile (not above what
    was read before); sending a message takes the line away."""
    alice, bob = await new_user(http, short("alice_")), await new_user(http, short("bob_"))
    room, other = short("team-"), short("other-")
    await post(http, alice, other, "Elsewhere")
    await post(http, bob, room, "Seen before")
    tab = await tabs.open(server)
    reads = record_reads(tab)
    await open_in_room(tabs, server, alice.name, room, tab=tab)
    await expect(tab.by("new-line")).to_have_count(0)  # joining made her a member: all read
    await expect(tab.row_with("Seen before")).to_have_count(1)

    await room_item(tab, other).click()
    await expect(tab.by("room-title")).to_have_text(other)
    for body in ("Came while away", "And another"):
        await post(http, bob, room, body)
    await expect_badges(tab, room, 2, 0)
    await room_item(tab, room).click()
    await expect(tab.row_with("Came while away").get_by_test_id("new-line")).to_have_count(1)
    await expect(tab.by("new-line")).to_have_count(1)
    await expect_badges(tab, room, 0, 0)
    await expect_counts(http, alice, room, 0, 0)

    await send_from_page(tab, "Thanks, caught up")
    await expect(tab.by("new-line")).to_have_count(0)
    await expect_confirmed(tab.row_with("Thanks, caught up"))
    await post(http, bob, room, "Welcome back")
    await expect(tab.row_with("Welcome back")).to_have_count(1)
    await expect_counts(http, alice, room, 0, 0)
    # Each `read` the page sent moved the cursor: none repeats or trails one before it, and
    # none was sent for her own message (posting moved the cursor already).
    seqs = [r["seq"] for r in reads if r["room"] == room]
    assert seqs == sorted(set(seqs)), reads
    own = await expect_confirmed(tab.row_with("Thanks, caught up"))
    assert own not in seqs, reads
    assert len(seqs) == 2, reads  # back in the room, and after "Welcome back"
    tab.watch.assert_clean()


async def test_a_mention_while_hidden_shows_a_notification(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """With the permission granted and the page hidden, a mention (not another message)
    constructs a Notification; the button turns them off; a hidden page moves no cursor."""
    alice, bob = await new_user(http, short("alice_")), await new_user(http, short("bob_"))
    room = short("ops-")
    await private_room(http, alice, room)
    r = await http.put(f"/api/rooms/{room}/members/{bob.name}", json={}, headers=alice.headers)
    assert r.status_code == 200, r.text
    await post(http, alice, room, "On call this week: me")
    r = await http.post("/api/dms", json={"username": alice.name}, headers=bob.headers)
    assert r.status_code == 201, r.text
    dm = r.json()["name"]

    tab = await tabs.open(server)
    await tab.context.grant_permissions(["notifications"], origin=server.url)
    await tab.page.add_init_script(HIDDEN + NOTIFICATIONS)
    await open_in_room(tabs, server, alice.name, room, tab=tab)
    toggle = tab.by("notify-toggle")
    await expect(toggle).to_have_attribute("aria-pressed", "true")

    await post(http, bob, room, "Deploy finished")
    await post(http, bob, room, f"@{alice.name} the disk alert fired again")
    await expect_badges(tab, room, 2, 1)  # hidden: the open room counts, and is not read
    await post(http, bob, dm, "Are you around?")  # every dm message is a mention
    await expect_badges(tab, dm, 0, 1)  # a dm's one badge
    notes = await tab.page.evaluate("() => window.__notes")
    assert notes == [
        {"title": f"{bob.name} in #{room}", "body": f"@{alice.name} the disk alert fired again"},
        {"title": bob.name, "body": "Are you around?"},
    ], notes

    await toggle.click()
    await expect(toggle).to_have_attribute("aria-pressed", "false")
    await post(http, bob, room, f"@{alice.name} never mind, fixed")
    await expect_badges(tab, room, 3, 2)
    assert len(await tab.page.evaluate("() => window.__notes")) == 2
    await expect_counts(http, alice, room, 3, 2)
    tab.watch.assert_clean()
