"""The browser page and the room log (v2): edits, deletes, reactions and replies, live between
two browser contexts, after a page missed them offline, and in any order the `version` rule
sorts out. Real `chat serve` processes and a real Chromium, as in test_browser.py, whose
fixtures and helpers these are. Every wait is bounded (Playwright's expect and actions time
out after WAIT_MS). Screenshots go to test-artifacts/screenshots/; axe-core audits the room
with reactions, a reply, an edit and a tombstone (no serious or critical violation).
"""

# The fixtures of test_browser.py and test_browser_v2.py are imported by name, which is how
# pytest finds them; the tests then take them as arguments, which ruff reads as redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx
from playwright.async_api import Locator, expect

from tests.support import Instance, User, new_user, unique
from tests.test_browser import (  # noqa: F401 (fixtures are found by name)
    WAIT_MS,
    Tab,
    Tabs,
    browser,
    expect_confirmed,
    expect_in_room,
    http,
    log_in,
    send_from_page,
    server,
    short,
    tabs,
)
from tests.test_browser_v2 import audit, axe_source  # noqa: F401

TOMBSTONE = "This message was deleted"


# ------------------------------------------------------------------------------------- helpers


async def post(
    http: httpx.AsyncClient, user: User, room: str, body: str, reply_to: int | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {"body": body}
    if reply_to is not None:
        payload["reply_to"] = reply_to
    r = await http.post(f"/api/rooms/{room}/messages", json=payload, headers=user.headers)
    assert r.status_code == 201, r.text
    message: dict[str, Any] = r.json()
    return message


async def edit(http: httpx.AsyncClient, user: User, room: str, seq: int, body: str) -> None:
    r = await http.patch(
        f"/api/rooms/{room}/messages/{seq}", json={"body": body}, headers=user.headers
    )
    assert r.status_code == 200, r.text


async def react(http: httpx.AsyncClient, user: User, room: str, seq: int, emoji: str) -> None:
    path = f"/api/rooms/{room}/messages/{seq}/reactions/{quote(emoji, safe='')}"
    r = await http.put(path, headers=user.headers)
    assert r.status_code == 200, r.text


def row_of(tab: Tab, seq: int) -> Locator:
    return tab.by("messages").locator(f"[data-testid='message'][data-seq='{seq}']")


def body_of(tab: Tab, seq: int) -> Locator:
    return row_of(tab, seq).get_by_test_id("message-body")


def reaction(tab: Tab, seq: int, emoji: str) -> Locator:
    return row_of(tab, seq).locator(f"[data-testid='reaction'][data-emoji='{emoji}']")


async def open_menu(tab: Tab, seq: int) -> Locator:
    """The message's "More actions" menu, by keyboard: focus its button, Enter."""
    row = row_of(tab, seq)
    await row.hover()
    await row.get_by_test_id("message-menu").focus()
    await tab.page.keyboard.press("Enter")
    menu = row.get_by_role("menu")
    await expect(menu).to_be_visible()
    await expect(menu.get_by_role("menuitem").first).to_be_focused()
    return menu


async def two_in_a_room(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> tuple[Tab, Tab, User, User, str]:
    """Alice (the room's owner: she joins first) and Bob, both in a new public room."""
    alice_name, bob_name = short("alice_"), short("bob_")
    alice_user, bob_user = await new_user(http, alice_name), await new_user(http, bob_name)
    room = unique("log-")
    alice, bob = await tabs.open(server), await tabs.open(server)
    for tab, name in ((alice, alice_name), (bob, bob_name)):
        await tab.goto()
        await log_in(tab, name)
        await tab.goto(f"/#/room/{room}")
        await expect_in_room(tab, room, name)
    return alice, bob, alice_user, bob_user, room


# --------------------------------------------------------------------------------------- tests


async def test_edit_from_the_menu_and_with_arrow_up(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """Alice edits a message from its menu and her last one with ↑ in the empty composer;
    Bob sees both live, marked edited; Escape cancels an edit and gives the composer back."""
    alice, bob, _, _, _ = await two_in_a_room(tabs, server, http)
    first = await expect_confirmed(await send_from_page(alice, "The meeting is at 3"))
    last = await expect_confirmed(await send_from_page(alice, "In room B"))
    await expect_confirmed(bob.row_with("In room B"))

    # From the menu: Edit, a new text, Enter.
    menu = await open_menu(alice, first)
    await expect(menu.get_by_role("menuitem")).to_have_text(["Reply", "Edit", "Delete…"])
    await alice.page.keyboard.press("ArrowDown")
    await expect(menu.get_by_test_id("menu-edit")).to_be_focused()
    await alice.page.keyboard.press("Enter")
    box = row_of(alice, first).get_by_test_id("edit-box")
    await expect(box).to_be_focused()
    await expect(box).to_have_value("The meeting is at 3")
    await box.fill("The meeting is at 4")
    await box.press("Enter")
    await expect(box).to_have_count(0)
    for tab in (alice, bob):
        await expect(body_of(tab, first)).to_have_text("The meeting is at 4")
        await expect(row_of(tab, first).get_by_test_id("message-edited")).to_be_visible()
        await expect(row_of(tab, first)).to_have_attribute("data-edited", "true")
    await expect(alice.by("announcer")).to_have_text("Message edited.")

    # ↑ in the empty composer edits the last one; Escape first cancels, then a real edit.
    composer = alice.by("composer")
    await composer.focus()
    await composer.press("ArrowUp")
    box = row_of(alice, last).get_by_test_id("edit-box")
    await expect(box).to_be_focused()
    await box.press("Escape")
    await expect(box).to_have_count(0)
    await expect(composer).to_be_focused()
    await expect(body_of(alice, last)).to_have_text("In room B")
    await composer.press("ArrowUp")
    await expect(box).to_be_focused()
    await box.fill("In room C (B is taken)")
    await alice.shot("log-editing.png")
    await box.press("Enter")
    await expect(composer).to_be_focused()
    await expect(body_of(bob, last)).to_have_text("In room C (B is taken)")
    await expect(row_of(bob, last).get_by_test_id("message-edited")).to_be_visible()
    # ↑ with text in the composer is just a cursor key.
    await composer.fill("draft")
    await composer.press("ArrowUp")
    await expect(alice.by("messages").get_by_test_id("edit-box")).to_have_count(0)

    # Bob's menu on Alice's message offers no Edit, and no Delete (he is a plain member).
    menu = await open_menu(bob, first)
    await expect(menu.get_by_role("menuitem")).to_have_text(["Reply"])
    await bob.page.keyboard.press("Escape")
    await expect(menu).to_have_count(0)
    await expect(row_of(bob, first).get_by_test_id("message-menu")).to_be_focused()
    await bob.shot("log-edited.png")
    alice.watch.assert_clean()
    bob.watch.assert_clean()


async def test_delete_with_confirmation_leaves_a_tombstone(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """Bob deletes his own message after confirming; Alice, the room's owner, deletes one of
    Bob's; both see tombstones. Cancelling deletes nothing."""
    alice, bob, _, _, _ = await two_in_a_room(tabs, server, http)
    mine = await expect_confirmed(await send_from_page(bob, "Oops, wrong room"))
    other = await expect_confirmed(await send_from_page(bob, "Something the owner removes"))
    await expect_confirmed(alice.row_with("Something the owner removes"))

    menu = await open_menu(bob, mine)
    await menu.get_by_test_id("menu-delete").click()
    dialog = bob.by("delete-dialog")
    await expect(dialog).to_be_visible()
    await expect(bob.by("delete-quote")).to_have_text("Oops, wrong room")
    await expect(bob.by("delete-confirm")).to_be_focused()
    await bob.shot("log-delete-confirm.png")
    await bob.by("delete-cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(body_of(bob, mine)).to_have_text("Oops, wrong room")

    menu = await open_menu(bob, mine)
    await menu.get_by_test_id("menu-delete").click()
    await bob.by("delete-confirm").click()
    await expect(dialog).to_be_hidden()
    for tab in (alice, bob):
        await expect(body_of(tab, mine)).to_have_text(TOMBSTONE)
        await expect(row_of(tab, mine)).to_have_attribute("data-deleted", "true")
        await expect(row_of(tab, mine).get_by_test_id("message-menu")).to_have_count(0)
    await expect(bob.by("announcer")).to_have_text("Message deleted.")

    # The owner may delete others' messages.
    menu = await open_menu(alice, other)
    await expect(menu.get_by_role("menuitem")).to_have_text(["Reply", "Delete…"])
    await menu.get_by_test_id("menu-delete").click()
    await expect(alice.page.locator("#delete-title")).to_have_text(re.compile("message\\?$"))
    await alice.page.keyboard.press("Enter")  # the focused Delete
    for tab in (alice, bob):
        await expect(body_of(tab, other)).to_have_text(TOMBSTONE)
    await alice.shot("log-tombstones.png")
    alice.watch.assert_clean()
    bob.watch.assert_clean()


async def test_reactions_toggle_with_counts_and_me(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """Reactions from the picker's quick row and typed, counted across two users, each one's
    own highlighted (aria-pressed), toggled by a click; the 21st emoji's limit_reached shown."""
    alice, bob, alice_user, _, room = await two_in_a_room(tabs, server, http)
    seq = await expect_confirmed(await send_from_page(alice, "Lunch at noon?"))
    await expect_confirmed(bob.row_with("Lunch at noon?"))

    # Alice: the picker by keyboard, the first quick emoji.
    await row_of(alice, seq).hover()
    await row_of(alice, seq).get_by_test_id("message-react").click()
    picker = alice.by("emoji-picker")
    await expect(picker).to_be_visible()
    await expect(picker.get_by_test_id("picker-emoji").first).to_be_focused()
    await alice.shot("log-picker.png")
    await alice.page.keyboard.press("Enter")
    await expect(picker).to_have_count(0)
    thumbs = "👍"
    await expect(reaction(alice, seq, thumbs)).to_have_attribute("aria-pressed", "true")
    await expect(reaction(alice, seq, thumbs)).to_have_attribute("data-count", "1")
    await expect(reaction(bob, seq, thumbs)).to_have_attribute("data-count", "1")
    await expect(reaction(bob, seq, thumbs)).to_have_attribute("aria-pressed", "false")

    # Bob adds his by clicking the same reaction; then a typed one.
    await reaction(bob, seq, thumbs).click()
    for tab in (alice, bob):
        await expect(reaction(tab, seq, thumbs)).to_have_attribute("data-count", "2")
        await expect(reaction(tab, seq, thumbs)).to_have_attribute("aria-pressed", "true")
    await row_of(bob, seq).get_by_test_id("reaction-add").click()
    await bob.by("picker-input").fill("🦄")
    await bob.by("picker-input").press("Enter")
    await expect(reaction(alice, seq, "🦄")).to_have_attribute("data-count", "1")
    await expect(reaction(alice, seq, "🦄")).to_have_attribute("aria-pressed", "false")
    await expect(reaction(bob, seq, "🦄")).to_have_attribute("aria-pressed", "true")
    order = (
        await row_of(alice, seq)
        .get_by_test_id("reaction")
        .evaluate_all("(els) => els.map((e) => e.dataset.emoji)")
    )
    assert order == [thumbs, "🦄"]

    # Alice takes hers back: the count falls, her highlight goes, Bob's stays.
    await reaction(alice, seq, thumbs).click()
    await expect(reaction(alice, seq, thumbs)).to_have_attribute("data-count", "1")
    await expect(reaction(alice, seq, thumbs)).to_have_attribute("aria-pressed", "false")
    await expect(reaction(bob, seq, thumbs)).to_have_attribute("data-count", "1")
    await expect(reaction(bob, seq, thumbs)).to_have_attribute("aria-pressed", "true")
    await bob.shot("log-reactions.png")

    # 20 kinds of emoji is the most: the 21st is refused, and the page says why.
    full = (await post(http, alice_user, room, "React to me"))["seq"]
    for i in range(20):
        await react(http, alice_user, room, full, chr(0x1F600 + i))
    await expect(row_of(bob, full).get_by_test_id("reaction")).to_have_count(20)
    await row_of(bob, full).get_by_test_id("reaction-add").click()
    await bob.by("picker-input").fill("🦊")
    await bob.by("picker-input").press("Enter")
    await expect(bob.page.locator("#toast")).to_contain_text("at most 20 different emoji")
    await expect(reaction(bob, full, "🦊")).to_have_count(0)
    alice.watch.assert_clean()
    bob.watch.assert_clean()


async def test_reply_quotes_and_jumps_to_an_original_far_back(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """A reply from the page carries reply_to and shows its quote on both sides; a reply to
    a message 300 back shows its quote at once and, clicked, loads the history around it."""
    alice, bob, alice_user, _, room = await two_in_a_room(tabs, server, http)
    original = await post(http, alice_user, room, "Who has the key to the server room?")
    for i in range(300):
        await post(http, alice_user, room, f"filler {i}")
    reply = await post(http, alice_user, room, "Me, still", reply_to=original["seq"])

    # Bob opens the room afresh: the newest 50 messages, the original far above them.
    await bob.page.reload()
    await expect_in_room(bob, room)
    await expect_confirmed(bob.row_with("Me, still"))
    quote_ = row_of(bob, reply["seq"]).get_by_test_id("reply-quote")
    await expect(quote_).to_have_text(
        f"In reply to {alice_user.name}: Who has the key to the server room?"
    )
    await expect(row_of(bob, original["seq"])).to_have_count(0)
    await quote_.click()
    target = row_of(bob, original["seq"])
    await expect(target).to_be_in_viewport()
    await expect(target).to_be_focused()
    await expect(target).to_have_class(re.compile(r"\bis-target\b"))
    await expect(bob.by("history-gap")).to_have_count(1)
    await bob.shot("log-jumped.png")
    # Back down: the gap fills (a page of 200 at a time) and the run is whole again.
    for _ in range(5):
        if await bob.by("history-gap").count() == 0:
            break
        await bob.by("history-gap-load").click(timeout=WAIT_MS)
        busy = bob.page.locator("[data-testid='history-gap'][aria-busy='true']")
        await expect(busy).to_have_count(0)
    await expect(bob.by("history-gap")).to_have_count(0)
    assert await bob.seqs() == list(range(1, reply["seq"] + 1))

    # A reply from the page: the composer shows the quote; Escape drops it, the button too.
    await row_of(bob, reply["seq"]).hover()
    await row_of(bob, reply["seq"]).get_by_test_id("message-reply").click()
    await expect(bob.by("reply-bar")).to_be_visible()
    await expect(bob.by("reply-bar-text")).to_contain_text("Me, still")
    await expect(bob.by("composer")).to_be_focused()
    await bob.by("composer").press("Escape")
    await expect(bob.by("reply-bar")).to_be_hidden()
    await row_of(bob, reply["seq"]).hover()
    await row_of(bob, reply["seq"]).get_by_test_id("message-reply").click()
    await bob.shot("log-replying.png")
    mine = await expect_confirmed(await send_from_page(bob, "Thanks, I'll come by"))
    await expect(bob.by("reply-bar")).to_be_hidden()
    for tab in (alice, bob):
        row = row_of(tab, mine)
        await expect(row).to_have_attribute("data-reply-to", str(reply["seq"]))
        await expect(row.get_by_test_id("reply-quote")).to_contain_text("Me, still")
    r = await http.get(f"/api/rooms/{room}/messages?around={mine}&limit=1")
    assert r.json()["messages"][0]["reply_to"] == reply["seq"]
    alice.watch.assert_clean()
    bob.watch.assert_clean()


async def test_offline_page_shows_what_it_missed_after_resuming(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """Bob's page goes offline; Alice edits, deletes and reacts meanwhile; when Bob's page is
    back online it resumes with `since` and shows every change once."""
    alice, bob, alice_user, _, room = await two_in_a_room(tabs, server, http)
    seqs = [await expect_confirmed(await send_from_page(alice, f"note {i}")) for i in range(3)]
    for seq in seqs:
        await expect_confirmed(row_of(bob, seq))

    await bob.context.set_offline(True)
    await expect(bob.by("conn-status")).to_have_attribute("data-state", "offline")
    await edit(http, alice_user, room, seqs[0], "note 0, edited")
    gone = await http.delete(f"/api/rooms/{room}/messages/{seqs[1]}", headers=alice_user.headers)
    assert gone.status_code == 200, gone.text
    await react(http, alice_user, room, seqs[2], "🎉")
    await expect(body_of(alice, seqs[1])).to_have_text(TOMBSTONE)
    await expect(body_of(bob, seqs[0])).to_have_text("note 0")  # nothing reached Bob

    await bob.context.set_offline(False)
    await expect(bob.by("conn-status")).to_have_attribute("data-state", "connected")
    await expect(body_of(bob, seqs[0])).to_have_text("note 0, edited")
    await expect(row_of(bob, seqs[0]).get_by_test_id("message-edited")).to_be_visible()
    await expect(body_of(bob, seqs[1])).to_have_text(TOMBSTONE)
    await expect(reaction(bob, seqs[2], "🎉")).to_have_attribute("data-count", "1")
    await expect(reaction(bob, seqs[2], "🎉")).to_have_attribute("aria-pressed", "false")
    await expect(bob.rows).to_have_count(3)
    await bob.shot("log-resumed.png")
    alice.watch.assert_clean()
    bob.watch.assert_clean(
        allow=(
            re.compile(r"^WebSocket connection to '.*' failed"),
            re.compile(r"^Failed to load resource: net::ERR_INTERNET_DISCONNECTED"),
        )
    )


async def test_room_with_reactions_reply_edit_and_tombstone_passes_axe(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient, axe_source: str
) -> None:
    alice, bob, alice_user, bob_user, room = await two_in_a_room(tabs, server, http)
    first = await post(http, alice_user, room, "Release 2.4 is out: https://example.com/2.4")
    await post(http, bob_user, room, "Congrats!", reply_to=first["seq"])
    typo = await post(http, alice_user, room, "Thnaks all")
    await edit(http, alice_user, room, typo["seq"], "Thanks all")
    doomed = await post(http, bob_user, room, "(wrong window)")
    r = await http.delete(f"/api/rooms/{room}/messages/{doomed['seq']}", headers=bob_user.headers)
    assert r.status_code == 200, r.text
    await react(http, bob_user, room, first["seq"], "🎉")
    await react(http, alice_user, room, first["seq"], "🎉")
    await react(http, alice_user, room, first["seq"], "❤️")

    await expect(body_of(alice, doomed["seq"])).to_have_text(TOMBSTONE)
    await expect(reaction(alice, first["seq"], "🎉")).to_have_attribute("data-count", "2")
    await expect(reaction(alice, first["seq"], "🎉")).to_have_attribute("aria-pressed", "true")
    await expect(row_of(alice, typo["seq"]).get_by_test_id("message-edited")).to_be_visible()
    await alice.shot("log-room.png")
    await audit(alice, axe_source, "log-room")
    await row_of(alice, first["seq"]).hover()
    await row_of(alice, first["seq"]).get_by_test_id("message-react").click()
    await expect(alice.by("emoji-picker")).to_be_visible()
    await audit(alice, axe_source, "log-picker")
    await alice.page.keyboard.press("Escape")
    await expect(alice.by("emoji-picker")).to_have_count(0)
    await open_menu(alice, typo["seq"])
    await audit(alice, axe_source, "log-menu")

    dark = await tabs.open(server, color_scheme="dark")
    await dark.goto()
    await log_in(dark, bob_user.name)
    await dark.goto(f"/#/room/{room}")
    await expect_in_room(dark, room, bob_user.name)
    await expect(reaction(dark, first["seq"], "🎉")).to_have_attribute("aria-pressed", "true")
    await dark.shot("log-room-dark.png")
    await audit(dark, axe_source, "log-room-dark")
    for tab in (alice, bob, dark):
        tab.watch.assert_clean()


async def test_version_rule_converges_in_any_order(tabs: Tabs, server: Instance) -> None:
    """The page's message-state.js, in the browser: four events in their seq order (as a
    connection receives them) and two copies of the message read at other times (a REST page
    with `me`, a live read-back without it), interleaved in all 30 ways, end in one state:
    the state after the newest event."""
    tab = await tabs.open(server)
    await tab.goto()
    await expect(tab.by("login-submit")).to_be_visible()
    tab.watch.logged_out_probe_done()
    states: list[Any] = await tab.page.evaluate(
        """async () => {
            const { applyEvent, newer, normalize } = await import('/static/message-state.js');
            const base = normalize({seq: 5, author: 'ann', body: 'v1', created_at: null});
            const events = [
                {type: 'edit', seq: 6, target: 5, body: 'v2', edited_at: 't6'},
                {type: 'reaction', seq: 7, target: 5, user: 'me', emoji: '👍', op: 'add', count: 1},
                {type: 'reaction', seq: 8, target: 5, user: 'bo', emoji: '👍', op: 'add', count: 2},
                {type: 'edit', seq: 9, target: 5, body: 'v3', edited_at: 't9'},
            ];
            const copies = [
                {...base, body: 'v2', edited_at: 't6', version: 8,
                    reactions: [{emoji: '👍', count: 2, me: true}]},
                {...base, body: 'v2', edited_at: 't6', version: 7,
                    reactions: [{emoji: '👍', count: 1}]},
            ];
            const results = [];
            // Every interleaving: the two copies at positions i < j or j < i among six.
            for (let i = 0; i < 6; i += 1) {
                for (let j = 0; j < 6; j += 1) {
                    if (i === j) continue;
                    const order = [];
                    let e = 0;
                    for (let k = 0; k < 6; k += 1) {
                        if (k === i) order.push({copy: copies[0]});
                        else if (k === j) order.push({copy: copies[1]});
                        else order.push(events[e++]);
                    }
                    let msg = base;
                    for (const x of order) {
                        const next = x.copy ? newer(msg, x.copy) : applyEvent(msg, x, 'me');
                        msg = next ?? msg;
                    }
                    const { meSeq, ...state } = msg; // bookkeeping, not the message
                    results.push(state);
                }
            }
            return results;
        }"""
    )
    assert len(states) == 30
    final = states[0]
    differ = [state for state in states if state != final]
    assert not differ, [
        {k: (final.get(k), d.get(k)) for k in final.keys() | d.keys() if final.get(k) != d.get(k)}
        for d in differ[:3]
    ]
    assert (final["body"], final["version"], final["edited_at"]) == ("v3", 9, "t9")
    assert final["reactions"] == [{"emoji": "👍", "count": 2, "me": True}]
    tab.watch.assert_clean()
