"""The browser page's v2 views, end to end: private rooms and their members, dms, the public
rooms list, leaving a room, sessions; real `chat serve` processes, a real Chromium driven by
Playwright, several users in several browser contexts.

The fixtures and helpers are test_browser.py's. Every wait is bounded (Playwright's expect and
actions time out after WAIT_MS). Screenshots of each view go to test-artifacts/screenshots/
(with UPDATE_README_SCREENSHOT=1 the login, members, public rooms and sessions views also
to docs/, for the README);
axe-core (pinned in tests/axe/package-lock.json, installed with `npm ci` on first use) audits
the login, room, members, dm, public rooms and sessions views in the same Chromium: no
violation of impact serious or critical is allowed.
"""

# The fixtures of test_browser.py are imported by name, which is how pytest finds them; the
# tests then take them as arguments, which ruff reads as redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import httpx
import pytest
from playwright.async_api import Locator, Route, expect

from tests.support import PROJECT, Instance, new_user, unique
from tests.test_browser import (  # noqa: F401 (fixtures are found by name)
    WAIT_MS,
    Tab,
    Tabs,
    browser,
    expect_confirmed,
    expect_in_room,
    for_readme,
    http,
    log_in,
    open_in_room,
    post,
    send_from_page,
    server,
    short,
    tabs,
)

AXE_DIR = PROJECT / "tests" / "axe"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
AXE_REPORTS = PROJECT / "test-artifacts" / "axe"
README_SHOT_SESSIONS = PROJECT / "docs" / "screenshot-sessions.png"
README_SHOT_LOGIN = PROJECT / "docs" / "screenshot-login.png"
README_SHOT_MEMBERS = PROJECT / "docs" / "screenshot-members.png"
README_SHOT_PUBLIC_ROOMS = PROJECT / "docs" / "screenshot-public-rooms.png"
BLOCKING = ("serious", "critical")

# Chromium logs every refused fetch as a console error. These are the refusals a test causes
# on purpose, and the page handles: a `rooms` frame about a room the user just lost is
# answered by GET /api/rooms/{room} with 403; leaving as the last owner is 409.
LOST_ROOM = re.compile(
    r"^Failed to load resource: the server responded with a status of 403 .*/api/rooms/"
)
LAST_OWNER = re.compile(r"^Failed to load resource: the server responded with a status of 409 ")
# After its session ended, a page's requests in flight are refused before it shows the login.
ENDED = re.compile(r"^Failed to load resource: the server responded with a status of 401 ")


# ------------------------------------------------------------------------------------ axe-core


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core's browser build, installed from tests/axe's lock file when missing."""
    if not AXE_JS.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to install axe-core (scripts/install-system-deps)")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(AXE_DIR)],
            check=True,
            timeout=180,
            capture_output=True,
        )
    return AXE_JS.read_text(encoding="utf-8")


async def audit(tab: Tab, axe_source: str, name: str) -> None:
    """Run axe-core on the page as it is; fail on any serious or critical violation. The full
    report goes to test-artifacts/axe/<name>.json."""
    page = tab.page
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        # Through the DevTools protocol, which the page's CSP does not govern (as init scripts).
        await page.evaluate(axe_source)
    result: dict[str, Any] = await page.evaluate(
        """async () => {
            const r = await window.axe.run(document, {resultTypes: ['violations']});
            return {violations: r.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map((n) => ({target: n.target, summary: n.failureSummary})),
            }))};
        }"""
    )
    AXE_REPORTS.mkdir(parents=True, exist_ok=True)
    (AXE_REPORTS / f"{name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    blocking = [v for v in result["violations"] if v["impact"] in BLOCKING]
    assert not blocking, f"axe ({name}): " + json.dumps(blocking, indent=2)


# ------------------------------------------------------------------------------------- helpers


def room_item(tab: Tab, room: str) -> Locator:
    return tab.page.locator(f"[data-testid='room-item'][data-room='{room}']")


def dm_label(user: str) -> str:
    """The accessible name of a username that opens the dm with `user`."""
    return f"{user}: send a message"


def system_line(tab: Tab, text: str) -> Locator:
    return (
        tab.by("messages")
        .get_by_test_id("system-line")
        .filter(
            has=tab.page.get_by_test_id("system-text").filter(
                has_text=re.compile(f"^{re.escape(text)}$")
            )
        )
    )


async def create_room(tab: Tab, name: str, kind: str) -> None:
    """Through the "New room" dialog, by keyboard from the name field on."""
    await tab.by("new-room-open").click()
    dialog = tab.by("new-room-dialog")
    await expect(dialog).to_be_visible()
    await expect(tab.by("new-room-name")).to_be_focused()
    await tab.by("new-room-name").fill(name)
    await tab.by(f"new-room-{kind}").check()
    await tab.by("new-room-name").press("Enter")
    await expect(dialog).to_be_hidden()
    await expect_in_room(tab, name)
    await expect(tab.by("room-kind")).to_have_attribute("data-kind", kind)


async def pick_user(tab: Tab, field: str, name: str) -> None:
    """Type the start of `name` in a username field, take it from the suggestions with the
    arrow keys and Enter (the ARIA combobox)."""
    box = tab.by(field)
    await box.fill(name[:-1])
    suggestion = tab.page.locator(
        f"[data-testid='user-suggestion'][data-username='{name}']:visible"
    )
    await expect(suggestion).to_have_count(1)
    options = tab.page.locator("[data-testid='user-suggestion']:visible")
    index = await options.evaluate_all(
        f"(els) => els.findIndex((e) => e.dataset.username === {name!r})"
    )
    for _ in range(index + 1):
        await box.press("ArrowDown")
    await expect(suggestion).to_have_attribute("aria-selected", "true")
    await box.press("Enter")
    await expect(box).to_have_value(name)
    await expect(suggestion).to_have_count(0)


async def tab_to(
    tab: Tab, testid: str, *, back: bool = False, steps: int = 60, label: str | None = None
) -> None:
    """Press Tab (Shift+Tab with `back`) until the element of `testid` (and of aria-label
    `label`, if given) has the focus: it is reachable by keyboard, in the tab order."""
    key = "Shift+Tab" if back else "Tab"
    for _ in range(steps):
        focused = await tab.page.evaluate(
            "() => [document.activeElement?.dataset?.testid ?? '',"
            " document.activeElement?.getAttribute('aria-label')]"
        )
        if focused[0] == testid and label in (None, focused[1]):
            return
        await tab.page.keyboard.press(key)
    raise AssertionError(f"{testid} never took the focus in {steps} presses of {key}")


async def expect_never_seen(tab: Tab, room: str) -> None:
    """Nothing in the page (text, attributes, the URL, storage) names `room`."""
    await expect(room_item(tab, room)).to_have_count(0)
    html = await tab.page.content()
    assert room not in html, f"{room} appears in the page"
    storage: str = await tab.page.evaluate(
        "() => JSON.stringify({...localStorage}) + JSON.stringify({...sessionStorage})"
    )
    assert room not in storage
    assert room not in tab.page.url


async def search_public(tab: Tab, prefix: str) -> Locator:
    """Open "Browse public rooms" and search `prefix`; returns the result list's rooms."""
    await tab.by("browse-open").click()
    await expect(tab.by("browse-dialog")).to_be_visible()
    await expect(tab.by("browse-q")).to_be_focused()
    await tab.by("browse-q").fill(prefix)
    await expect(tab.by("browse-status")).to_contain_text(prefix)
    return tab.by("browse-list").get_by_test_id("public-room")


# --------------------------------------------------------------------------------------- tests


async def test_login_view_passes_axe(tabs: Tabs, server: Instance, axe_source: str) -> None:
    tab = await tabs.open(server)
    await tab.goto()
    await expect(tab.by("login-submit")).to_be_visible()
    await expect(tab.page.locator("#login-hint")).to_contain_text("passwords")  # the config's
    tab.watch.logged_out_probe_done()
    shot = await tab.shot("login.png")
    await audit(tab, axe_source, "login")
    tab.watch.assert_clean()
    for_readme(shot, README_SHOT_LOGIN)


async def test_private_room_members_live(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient, axe_source: str
) -> None:
    """Alice creates a private room and adds Bob, who sees it appear in his sidebar at once;
    they talk; roles change; Alice removes Bob, whose view closes with a notice and whose
    sidebar loses it. Carol, logged in all along, never sees the room anywhere, also after a
    reload and in the public list."""
    alice_name, bob_name, carol_name = short("alice_"), short("bob_"), short("carol_")
    for name in (alice_name, bob_name, carol_name):
        await new_user(http, name)
    room = unique("secret-")
    alice, bob, carol = await tabs.open(server), await tabs.open(server), await tabs.open(server)
    for tab, name in ((alice, alice_name), (bob, bob_name), (carol, carol_name)):
        await tab.goto()
        await log_in(tab, name)

    await create_room(alice, room, "private")
    await expect(room_item(alice, room)).to_have_attribute("data-kind", "private")
    await alice.shot("private-room.png")
    await audit(alice, axe_source, "private-room")

    # The members view: Alice is the owner and may add; by keyboard, from the title on.
    await alice.by("members-open").focus()
    await alice.page.keyboard.press("Enter")
    dialog = alice.by("members-dialog")
    await expect(dialog).to_be_visible()
    await expect(alice.page.locator("#members-title")).to_have_text(f"Members of #{room}")
    members = alice.by("members-list").get_by_test_id("member")
    await expect(members).to_have_count(1)
    await expect(members.first).to_have_attribute("data-role", "owner")
    await expect(alice.by("add-member-form")).to_be_visible()
    await pick_user(alice, "add-member-user", bob_name)
    await alice.by("add-member-user").press("Enter")
    await expect(members).to_have_count(2)
    bob_row = members.filter(has_text=bob_name)
    await expect(bob_row).to_have_attribute("data-role", "member")
    await expect(alice.by("announcer")).to_have_text(
        f"{bob_name} added to {room} as a member.", timeout=WAIT_MS
    )
    members_shot = await alice.shot("members.png")
    await audit(alice, axe_source, "members")

    # Bob: the room appears in his sidebar live, marked private.
    await expect(room_item(bob, room)).to_have_count(1)
    await expect(room_item(bob, room)).to_have_attribute("data-kind", "private")
    await expect(bob.by("announcer")).to_have_text(f"You were added to private room {room}.")
    await room_item(bob, room).click()
    await expect_in_room(bob, room, bob_name)

    await alice.page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(alice.by("members-open")).to_be_focused()
    await expect(system_line(alice, f"{alice_name} added {bob_name}")).to_have_count(1)

    await expect_confirmed(await send_from_page(alice, "Only the two of us can read this."))
    await expect_confirmed(bob.row_with("Only the two of us can read this."))
    await expect_confirmed(await send_from_page(bob, "Good, nobody else is here."))
    await expect_confirmed(alice.row_with("Good, nobody else is here."))

    # A role change: a system line for both, and Bob's members view follows it.
    await alice.by("members-open").click()
    await (
        alice.by("members-list")
        .get_by_test_id("member")
        .filter(has_text=bob_name)
        .get_by_test_id("member-role")
        .select_option("moderator")
    )
    await expect(system_line(alice, f"{bob_name} is now a moderator")).to_have_count(1)
    await expect(system_line(bob, f"{bob_name} is now a moderator")).to_have_count(1)
    await expect(bob_row).to_have_attribute("data-role", "moderator")

    # Bob's own view: a moderator may add members, not remove an owner or change their role.
    await bob.by("members-open").click()
    await expect(bob.by("members-dialog")).to_be_visible()
    await expect(bob.by("add-member-form")).to_be_visible()
    bob_members = bob.by("members-list").get_by_test_id("member")
    await expect(bob_members).to_have_count(2)
    alice_row = bob_members.filter(has_text=alice_name)
    await expect(alice_row.get_by_test_id("member-remove")).to_have_count(0)
    await expect(alice_row.get_by_test_id("member-role")).to_have_count(0)
    await expect(alice_row.get_by_test_id("member-role-text")).to_have_text("Owner")
    await bob.page.keyboard.press("Escape")

    # Carol has seen nothing of it so far.
    await expect_never_seen(carol, room)

    # Alice removes Bob: his view closes with a notice, the room leaves his sidebar.
    await bob_row.get_by_test_id("member-remove").click()
    await expect(members).to_have_count(1)
    await expect(bob.by("room-notice")).to_have_text(f"You are no longer a member of #{room}.")
    await expect(bob.by("room-notice")).to_be_visible()
    await expect(bob.by("room-title")).to_have_text("")
    await expect(room_item(bob, room)).to_have_count(0)
    assert "#/room/" not in bob.page.url
    await expect(bob.by("messages")).to_be_hidden()
    await bob.shot("removed.png")
    await alice.page.keyboard.press("Escape")
    await expect(system_line(alice, f"{alice_name} removed {bob_name}")).to_have_count(1)
    await expect(alice.by("online-user").filter(has_text=bob_name)).to_have_count(0)
    await alice.shot("private-room-events.png")

    # After a reload Bob still cannot see it; Carol never could, in any view.
    await bob.page.reload()
    await expect(bob.by("current-user")).to_have_text(bob_name)
    await expect(room_item(bob, room)).to_have_count(0)
    for phase in ("before", "after"):
        if phase == "after":
            await carol.page.reload()
            await expect(carol.by("current-user")).to_have_text(carol_name)
            await expect(carol.by("conn-status")).to_have_attribute("data-state", "connected")
        await expect_never_seen(carol, room)
        found = await search_public(carol, room[:10])
        await expect(found.filter(has_text=room)).to_have_count(0)
        await expect_never_seen(carol, room)
        await carol.page.keyboard.press("Escape")
        await expect(carol.by("browse-dialog")).to_be_hidden()

    alice.watch.assert_clean()
    bob.watch.assert_clean(allow=(LOST_ROOM,))
    carol.watch.assert_clean()
    for_readme(members_shot, README_SHOT_MEMBERS)


async def test_join_of_a_private_room_is_refused_with_a_notice(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """Opening a private room one is not a member of (its URL) shows the refusal; nothing of
    the room is shown and it does not stay in the sidebar."""
    owner, outsider = await new_user(http), await new_user(http)
    room = unique("closed-")
    r = await http.post("/api/rooms", json={"name": room, "kind": "private"}, headers=owner.headers)
    assert r.status_code == 201, r.text
    tab = await tabs.open(server)
    await tab.goto()
    await log_in(tab, outsider.name)
    await tab.goto(f"/#/room/{room}")
    await expect(tab.by("room-notice")).to_have_text(
        f"You cannot open #{room}: it is private, and you are not a member."
    )
    await expect(tab.by("room-title")).to_have_text("")
    await expect(room_item(tab, room)).to_have_count(0)
    assert "#/room/" not in tab.page.url
    tab.watch.assert_clean()


async def test_dm_from_a_username(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient, axe_source: str
) -> None:
    """Alice opens a dm by picking Bob's name from the suggestions; it shows by Bob's name for
    her and by hers for him (live, under Direct messages), and they talk."""
    alice_name, bob_name = short("alice_"), short("bob_")
    for name in (alice_name, bob_name):
        await new_user(http, name)
    alice, bob = await tabs.open(server), await tabs.open(server)
    for tab, name in ((alice, alice_name), (bob, bob_name)):
        await tab.goto()
        await log_in(tab, name)

    await alice.by("new-dm-open").click()
    await expect(alice.by("new-dm-dialog")).to_be_visible()
    await expect(alice.by("new-dm-user")).to_be_focused()
    await pick_user(alice, "new-dm-user", bob_name)
    await alice.shot("dm-dialog.png")
    await audit(alice, axe_source, "dm-dialog")
    await alice.by("new-dm-user").press("Enter")
    await expect(alice.by("new-dm-dialog")).to_be_hidden()
    await expect(alice.by("room-title")).to_have_text(bob_name)
    await expect(alice.by("room-kind")).to_have_attribute("data-kind", "dm")
    await expect(alice.page).to_have_url(re.compile(r"#/room/dm-[a-z0-9]+$"))
    dm = alice.page.url.rsplit("/", 1)[1]
    mine = alice.by("dm-list").get_by_test_id("room-item")
    await expect(mine).to_have_count(1)
    await expect(mine).to_have_attribute("data-room", dm)
    await expect(mine).to_contain_text(bob_name)
    await expect(alice.by("conn-status")).to_have_attribute("data-state", "connected")
    await expect_confirmed(await send_from_page(alice, "Hi Bob, a word in private?"))

    theirs = bob.by("dm-list").get_by_test_id("room-item")
    await expect(theirs).to_have_count(1)
    await expect(theirs).to_have_attribute("data-room", dm)
    await expect(theirs).to_contain_text(alice_name)
    await theirs.click()
    await expect(bob.by("room-title")).to_have_text(alice_name)
    await expect_confirmed(bob.row_with("Hi Bob, a word in private?"))
    await expect_confirmed(await send_from_page(bob, "Sure, go ahead."))
    await expect_confirmed(alice.row_with("Sure, go ahead."))
    await alice.shot("dm.png")

    # A dm has no members to manage and cannot be left.
    await alice.by("members-open").click()
    await expect(alice.page.locator("#members-title")).to_have_text(f"Conversation with {bob_name}")
    await expect(alice.by("members-list").get_by_test_id("member")).to_have_count(2)
    await expect(alice.by("add-member-form")).to_be_hidden()
    await expect(alice.by("room-leave")).to_be_hidden()
    await expect(alice.by("member-remove")).to_have_count(0)

    # The same pair gets the same dm again; a name nobody has is refused clearly.
    await alice.page.keyboard.press("Escape")
    await alice.by("new-dm-open").click()
    await alice.by("new-dm-user").fill(unique("nobody_")[:20])
    await alice.by("new-dm-submit").click()
    await expect(alice.by("new-dm-error")).to_contain_text("There is no user named")
    await alice.by("new-dm-user").fill(bob_name.upper())
    await alice.by("new-dm-user").press("Enter")
    await expect(alice.by("new-dm-dialog")).to_be_hidden()
    await expect(alice.page).to_have_url(re.compile(f"#/room/{dm}$"))
    await expect(alice.by("dm-list").get_by_test_id("room-item")).to_have_count(1)
    alice.watch.assert_clean(allow=(re.compile(r"^Failed to load resource: .* 404 .*/api/dms"),))
    bob.watch.assert_clean()


async def test_dm_from_any_username(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient, axe_source: str
) -> None:
    """A username shown as a message's author, in the online list or in the members view opens
    the dm with that person, by click or by keyboard; one's own name does not. Bob's click
    creates the dm, the other names open the same one; Carol, in the same room, sees nothing
    of it."""
    alice_name, bob_name, carol_name = short("alice_"), short("bob_"), short("carol_")
    for name in (alice_name, bob_name, carol_name):
        await new_user(http, name)
    room = unique("lobby-")
    r = await http.post(
        "/api/rooms", json={"name": room, "kind": "public"}, headers=(await new_user(http)).headers
    )
    assert r.status_code == 201, r.text
    alice = await open_in_room(tabs, server, alice_name, room)
    bob = await open_in_room(tabs, server, bob_name, room)
    carol = await open_in_room(tabs, server, carol_name, room)
    await expect_confirmed(await send_from_page(alice, "Anyone around?"))
    row = bob.row_with("Anyone around?")
    await expect_confirmed(row)

    # One's own name is text: no dm with oneself.
    own = alice.row_with("Anyone around?")
    await expect(own.get_by_test_id("user-dm")).to_have_count(0)
    await expect(
        alice.by("online").get_by_role("button", name=dm_label(alice_name), exact=True)
    ).to_have_count(0)

    # Bob, by the author's name: the dm is created and opens.
    await row.get_by_role("button", name=dm_label(alice_name), exact=True).click()
    await expect(bob.by("room-title")).to_have_text(alice_name)
    await expect(bob.by("room-kind")).to_have_attribute("data-kind", "dm")
    await expect(bob.page).to_have_url(re.compile(r"#/room/dm-[a-z0-9]+$"))
    dm = bob.page.url.rsplit("/", 1)[1]
    await expect(bob.by("dm-list").get_by_test_id("room-item")).to_have_attribute("data-room", dm)
    await expect(bob.by("conn-status")).to_have_attribute("data-state", "connected")
    await expect_confirmed(await send_from_page(bob, "Here, privately."))
    await expect(alice.by("dm-list").get_by_test_id("room-item")).to_have_attribute("data-room", dm)

    # Alice, by keyboard alone: Tab to Bob's name in the online list, Enter: the same dm.
    await expect(
        alice.by("online").get_by_role("button", name=dm_label(bob_name), exact=True)
    ).to_have_count(1)
    await alice.by("composer").focus()
    await tab_to(alice, "user-dm", label=dm_label(bob_name))
    await alice.page.keyboard.press("Enter")
    await expect(alice.page).to_have_url(re.compile(f"#/room/{dm}$"))
    await expect(alice.by("room-title")).to_have_text(bob_name)
    await expect_confirmed(alice.row_with("Here, privately."))
    await expect(alice.by("dm-list").get_by_test_id("room-item")).to_have_count(1)

    # Alice, from the room's members view: the dialog closes on the same dm.
    await room_item(alice, room).click()
    await expect_in_room(alice, room, alice_name)
    await alice.by("members-open").click()
    members = alice.by("members-list")
    await expect(members.get_by_test_id("member")).to_have_count(4)
    await expect(
        members.get_by_role("button", name=dm_label(alice_name), exact=True)
    ).to_have_count(0)
    await alice.shot("members-names.png")
    await audit(alice, axe_source, "members-names")
    await members.get_by_role("button", name=dm_label(bob_name), exact=True).focus()
    await alice.page.keyboard.press("Space")
    await expect(alice.by("members-dialog")).to_be_hidden()
    await expect(alice.page).to_have_url(re.compile(f"#/room/{dm}$"))
    await expect(alice.by("composer")).to_be_focused()
    await expect(alice.by("dm-list").get_by_test_id("room-item")).to_have_count(1)

    # Carol, in the room all along, has no dm and nothing of theirs in her page.
    await expect(carol.by("dm-list").get_by_test_id("room-item")).to_have_count(0)
    await expect_never_seen(carol, dm)
    assert "Here, privately." not in await carol.page.content()
    for tab in (alice, bob, carol):
        tab.watch.assert_clean()


async def test_public_rooms_join_and_leave(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient, axe_source: str
) -> None:
    """Bob finds Alice's public room by a prefix in the public list, joins it, and leaves it
    for good; Alice, its only owner, is told why she cannot leave."""
    alice_name, bob_name = short("alice_"), short("bob_")
    for name in (alice_name, bob_name):
        await new_user(http, name)
    prefix = unique("plaza")
    room = f"{prefix}-main"
    alice, bob = await tabs.open(server), await tabs.open(server)
    for tab, name in ((alice, alice_name), (bob, bob_name)):
        await tab.goto()
        await log_in(tab, name)
    await create_room(alice, room, "public")
    for i in range(3):  # more rooms with the prefix, so the list has something to narrow
        r = await http.post(
            "/api/rooms",
            json={"name": f"{prefix}-{i}", "kind": "public"},
            headers=(await new_user(http)).headers,
        )
        assert r.status_code == 201, r.text

    found = await search_public(bob, prefix)
    await expect(found).to_have_count(4)
    await expect(bob.by("browse-status")).to_have_text(f"4 public rooms starting with “{prefix}”.")
    public_shot = await bob.shot("public-rooms.png")
    await audit(bob, axe_source, "public-rooms")
    await bob.by("browse-q").fill(room)
    await expect(found).to_have_count(1)
    await expect(found).to_contain_text("1 member")
    await found.get_by_test_id("public-room-open").click()
    await expect(bob.by("browse-dialog")).to_be_hidden()
    await expect_in_room(bob, room, bob_name)
    await expect_confirmed(await send_from_page(bob, "Found this room in the list."))
    await expect(room_item(bob, room)).to_have_count(1)

    # Bob leaves for good: the view closes with a notice, the sidebar drops the room.
    await bob.by("members-open").click()
    await bob.by("room-leave").click()
    await expect(bob.by("leave-question")).to_contain_text(f"Leave #{room}?")
    await bob.by("room-leave-confirm").click()
    await expect(bob.by("members-dialog")).to_be_hidden()
    await expect(bob.by("room-notice")).to_have_text(f"You left #{room}.")
    await expect(room_item(bob, room)).to_have_count(0)
    await bob.page.reload()
    await expect(bob.by("current-user")).to_have_text(bob_name)
    await expect(room_item(bob, room)).to_have_count(0)

    # Alice is its only owner: the server's 409 is explained.
    await alice.by("members-open").click()
    await alice.by("room-leave").click()
    await alice.by("room-leave-confirm").click()
    await expect(alice.by("members-error")).to_contain_text(
        f"You are the last owner of #{room}, so you cannot leave it yet"
    )
    await expect(alice.by("members-dialog")).to_be_visible()
    await expect(room_item(alice, room)).to_have_count(1)
    alice.watch.assert_clean(allow=(LAST_OWNER,))
    bob.watch.assert_clean(allow=(LOST_ROOM,))
    for_readme(public_shot, README_SHOT_PUBLIC_ROOMS)


async def test_sessions_view_and_logout_everywhere(
    tabs: Tabs, server: Instance, axe_source: str
) -> None:
    """One user in two browsers: the sessions view lists both, this device marked; ending the
    other one sends it to the login view; "log out everywhere" sends both there."""
    name = short("dave_")
    here, there = await tabs.open(server), await tabs.open(server)
    await here.goto()
    await log_in(here, name, register=True)
    await there.goto()
    await log_in(there, name)
    await expect(there.by("conn-status")).to_have_attribute("data-state", "connected")

    async def open_sessions() -> Locator:
        await here.by("sessions-open").click()
        await expect(here.by("sessions-dialog")).to_be_visible()
        return here.by("sessions-list").get_by_test_id("session")

    sessions = await open_sessions()
    await expect(sessions).to_have_count(2)
    current = sessions.filter(has=here.by("this-device"))
    await expect(current).to_have_count(1)
    await expect(current).to_have_attribute("data-current", "true")
    await expect(current).to_contain_text("Chrome on Linux")
    shot = await here.shot("sessions.png")
    await audit(here, axe_source, "sessions")

    # End the other session: the other browser is sent to the login view.
    other = sessions.filter(has_not=here.by("this-device"))
    await other.get_by_test_id("session-end").click()
    await expect(sessions).to_have_count(1)
    await expect(there.by("login-username")).to_be_visible()
    await expect(there.by("login-error")).to_contain_text("Your session has ended")
    await here.page.keyboard.press("Escape")

    await log_in(there, name)
    await expect(there.by("conn-status")).to_have_attribute("data-state", "connected")
    sessions = await open_sessions()
    await expect(sessions).to_have_count(2)
    await here.by("logout-everywhere").click()
    await here.by("logout-everywhere-confirm").click()
    for tab in (here, there):
        await expect(tab.by("login-username")).to_be_visible()
    await expect(here.by("login-error")).to_have_text("You are logged out on every device.")
    await expect(there.by("login-error")).to_contain_text("Your session has ended")
    await there.shot("logged-out-everywhere.png")
    # Nothing of the session is left in either browser.
    for tab in (here, there):
        await tab.page.reload()
        await expect(tab.by("login-username")).to_be_visible()
    here.watch.logged_out_probe_done()
    there.watch.logged_out_probe_done()
    here.watch.assert_clean(allow=(ENDED,))
    there.watch.assert_clean(allow=(ENDED,))
    for_readme(shot, README_SHOT_SESSIONS)


async def test_phone_layout_of_the_new_views(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """On a phone the sidebar's new buttons and a dialog fit the screen."""
    user = await new_user(http)
    tab = await tabs.open(server, phone=True)
    await tab.goto()
    await log_in(tab, user.name)
    await tab.page.get_by_role("button", name="Rooms").tap()
    await expect(tab.by("new-room-open")).to_be_in_viewport()
    await tab.by("new-room-open").tap()
    dialog = tab.by("new-room-dialog")
    await expect(dialog).to_be_visible()
    box = await dialog.bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 390.5, box
    await tab.shot("phone-new-room.png")
    tab.watch.assert_clean()


async def test_new_views_by_keyboard_alone(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient, axe_source: str
) -> None:
    """Create a private room, add a member with the suggestions, look at the sessions, each
    with the keyboard only: Tab to the control, Enter or Space, type, Escape back. In dark
    mode, where axe audits the members and sessions views again."""
    me, friend = await new_user(http, short("kim_")), await new_user(http, short("lee_"))
    room = unique("keys-")
    tab = await tabs.open(server, color_scheme="dark")
    await tab.goto()
    await log_in(tab, me.name)
    keyboard = tab.page.keyboard

    await tab_to(tab, "new-room-open")
    await keyboard.press("Enter")
    await expect(tab.by("new-room-name")).to_be_focused()
    await keyboard.type(room)
    await tab_to(tab, "new-room-private")
    await keyboard.press("Space")
    await expect(tab.by("new-room-private")).to_be_checked()
    await tab_to(tab, "new-room-submit")
    await keyboard.press("Enter")
    await expect_in_room(tab, room, me.name)

    await tab_to(tab, "members-open", back=True)
    await keyboard.press("Enter")
    await expect(tab.by("members-dialog")).to_be_visible()
    await tab_to(tab, "add-member-user")
    await keyboard.type(friend.name[:-1])
    await expect(tab.page.locator("[data-testid='user-suggestion']:visible")).to_have_count(1)
    await keyboard.press("ArrowDown")
    await keyboard.press("Enter")
    await expect(tab.by("add-member-user")).to_have_value(friend.name)
    await keyboard.press("Enter")
    added = tab.by("members-list").get_by_test_id("member").filter(has_text=friend.name)
    await expect(added).to_have_attribute("data-role", "member")
    await tab_to(tab, "member-role")  # the first role control: mine, as the owner
    await tab.shot("members-dark.png")
    await audit(tab, axe_source, "members-dark")
    await keyboard.press("Escape")
    await expect(tab.by("members-dialog")).to_be_hidden()
    await expect(tab.by("members-open")).to_be_focused()
    await expect(system_line(tab, f"{me.name} added {friend.name}")).to_have_count(1)

    await tab_to(tab, "sessions-open")
    await keyboard.press("Enter")
    await expect(tab.by("sessions-dialog")).to_be_visible()
    await expect(tab.by("sessions-list").get_by_test_id("session")).to_have_count(2)
    await tab_to(tab, "logout-everywhere")
    await keyboard.press("Enter")
    await expect(tab.by("logout-everywhere-confirm")).to_be_visible()
    await tab.shot("sessions-dark.png")
    await audit(tab, axe_source, "sessions-dark")
    await keyboard.press("Escape")
    await expect(tab.by("sessions-dialog")).to_be_hidden()
    await expect(tab.by("sessions-open")).to_be_focused()
    tab.watch.assert_clean()


async def test_the_page_takes_its_lengths_from_the_server(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """The lengths of room names, usernames, passwords and reactions are GET /api/config's
    (answered here with larger ones than this server's): the fields' maxlength and the hints
    follow, a room name longer than the usual 64 is typed whole, and the page judges a
    password and a reaction by the config's bounds."""
    ivy = await new_user(http, short("ivy_"))
    room = unique("long-")
    tab = await tabs.open(server)

    async def stretch(route: Route) -> None:
        response = await route.fetch()
        config = await response.json()
        rooms = config["room_pattern"].replace("{0,63}", "{0,79}")
        users = config["username_pattern"].replace("{2,31}", "{3,39}")
        assert rooms != config["room_pattern"] and users != config["username_pattern"]
        assert (config["min_password_chars"], config["max_password_chars"]) < (10, 200)
        assert config["max_emoji_chars"] < 40
        await route.fulfill(
            response=response,
            json={
                **config,
                "room_pattern": rooms,
                "username_pattern": users,
                "min_password_chars": 10,
                "max_password_chars": 200,
                "max_emoji_chars": 40,
            },
        )

    await tab.page.route("**/api/config", stretch)
    await tab.goto()
    await expect(tab.by("login-username")).to_have_attribute("maxlength", "40")
    # In UTF-16 units, two per code point at most: no password of 200 characters is cut.
    await expect(tab.by("login-password")).to_have_attribute("maxlength", "400")
    await expect(tab.page.locator("#login-hint")).to_have_text(
        "New here? Usernames have 4–40 letters, digits, “_”, “.” or “-”; "
        "passwords 10–200 characters."
    )
    await tab.by("login-username").fill(short("newcomer_"))
    await tab.by("login-password").fill("nine-char")
    await tab.by("register-submit").click()
    await expect(tab.by("login-error")).to_have_text("Passwords need at least 10 characters.")

    await log_in(tab, ivy.name)
    await tab.by("new-room-open").click()
    name = tab.by("new-room-name")
    await expect(name).to_have_attribute("maxlength", "80")
    await expect(tab.page.locator("#new-room-hint")).to_have_text(
        "Lower-case letters, digits, “-” and “_”; up to 80."
    )
    await name.press_sequentially("r" * 85)
    await expect(name).to_have_value("r" * 80)
    await tab.page.keyboard.press("Escape")
    for field in ("new-dm-user", "add-member-user"):
        await expect(tab.by(field)).to_have_attribute("maxlength", "40")
    await expect(tab.by("browse-q")).to_have_attribute("maxlength", "80")

    await tab.goto(f"/#/room/{room}")
    await expect_in_room(tab, room, ivy.name)
    row = await send_from_page(tab, "React to this.")
    await expect_confirmed(row)
    await row.hover()
    await row.get_by_test_id("message-react").click()
    emoji = tab.by("picker-input")
    await expect(emoji).to_have_attribute("maxlength", "80")
    await emoji.fill("a" * 41)
    await emoji.press("Enter")
    await expect(tab.by("emoji-picker")).to_contain_text("A reaction has at most 40 characters.")
    tab.watch.assert_clean()


async def test_new_messages_from_others_are_said_politely(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """A polite log region says each message Bob sends while Alice has the room open; the
    room's history, loaded as she opens it, is not read out (the message list is silent), nor
    are her own messages."""
    alice, bob = await new_user(http, short("alice_")), await new_user(http, short("bob_"))
    room = unique("heard-")
    r = await http.post("/api/rooms", json={"name": room, "kind": "public"}, headers=alice.headers)
    assert r.status_code == 201, r.text
    for i in range(5):
        await post(http, bob, room, f"Old news {i}")
    alice_tab = await open_in_room(tabs, server, alice.name, room)
    await expect(alice_tab.rows).to_have_count(5)

    said = alice_tab.page.get_by_role("log", name="New messages")
    await expect(said).to_have_attribute("aria-live", "polite")
    await expect(said).not_to_have_attribute("aria-atomic", "true")
    await expect(said).not_to_have_attribute("aria-hidden", "true")
    await expect(alice_tab.by("messages")).to_have_attribute("aria-live", "off")
    await expect(said.locator("p")).to_have_count(0)

    bob_tab = await open_in_room(tabs, server, bob.name, room)
    await expect_confirmed(await send_from_page(bob_tab, "Are you there, Alice?"))
    await expect(said.locator("p")).to_have_text([f"{bob.name}: Are you there, Alice?"])
    await expect_confirmed(await send_from_page(alice_tab, "I am."))
    await expect_confirmed(bob_tab.row_with("I am."))
    await expect_confirmed(await send_from_page(bob_tab, "Good."))
    await expect(said.locator("p")).to_have_text(
        [f"{bob.name}: Are you there, Alice?", f"{bob.name}: Good."]
    )
    alice_tab.watch.assert_clean()
    bob_tab.watch.assert_clean()
