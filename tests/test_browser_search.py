"""The browser page's search (v2, `GET /api/search`): the view, the matches highlighted as the
server matches them (any case or accent, the start of a word, a substring of Chinese or
Japanese, a quoted phrase as consecutive words), "More results", the 422 of a query with no
word, a result opening its room at a message far back in its history, or newer than what a
reader scrolled far back holds, and a third user who finds nothing of a private room. Real
`chat serve` processes and a real Chromium, as in test_browser.py, whose fixtures and
helpers these are. Every wait is bounded (Playwright's expect and actions time out after
WAIT_MS, loops have a deadline). axe-core audits the results view (no serious or critical
violation).
"""

# The fixtures of test_browser.py are imported by name, which is how pytest finds them; the
# tests then take them as arguments, which ruff reads as redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
import httpx
from playwright.async_api import Locator, Route, expect

from service.search_text import search_vector
from tests.support import PROJECT, Instance, User, new_user, unique
from tests.test_browser import (  # noqa: F401 (found by name)
    WAIT_MS,
    Tab,
    Tabs,
    browser,
    expect_in_room,
    for_readme,
    http,
    log_in,
    open_in_room,
    server,
    short,
    tabs,
)
from tests.test_browser_history import (
    STEP,
    check_window,
    fill_room,
    private_room,
    scroll_up_past_the_window,
    view_state,
)
from tests.test_browser_log import post, row_of
from tests.test_browser_v2 import audit, axe_source, expect_never_seen  # noqa: F401

README_SHOT_SEARCH = PROJECT / "docs" / "screenshot-search.png"
FILLERS = 300
PAGING = 25  # more than the page's 20 results a page


async def add_member(http: httpx.AsyncClient, owner: User, room: str, user: User) -> None:
    r = await http.put(f"/api/rooms/{room}/members/{user.name}", json={}, headers=owner.headers)
    assert r.status_code in (200, 201), r.text


async def post_many(http: httpx.AsyncClient, user: User, room: str, bodies: list[str]) -> None:
    """Post `bodies` (in any order among themselves), 20 at a time."""
    for start in range(0, len(bodies), 20):
        await asyncio.gather(*(post(http, user, room, b) for b in bodies[start : start + 20]))


async def search_for(tab: Tab, q: str) -> Locator:
    """Type `q` in the open search view; returns its results once the answer is shown."""
    await tab.by("search-q").fill(q)
    await expect(tab.by("search-status")).to_have_attribute("data-query", q)
    return tab.by("search-list").get_by_test_id("search-result")


def matches(results: Locator) -> Locator:
    return results.get_by_test_id("search-match")


async def test_search_highlights_pages_and_opens_a_result_far_back(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient, axe_source: str
) -> None:
    """Bob, by keyboard: "donnee" finds Alice's "Données" (the match marked), "都大" a
    substring of "京都大学", "a" is refused with the server's reason, "paging" shows 20 and
    "More results" the other 5; Enter on the "Données" result, 326 messages back in a room
    not yet open, opens the room at it: loaded around it, in view, focused and marked."""
    alice, bob = await new_user(http, short("alice_")), await new_user(http, short("bob_"))
    room = unique("found-")
    await private_room(http, alice, room)
    await add_member(http, alice, room, bob)
    before = await post(http, alice, room, "Here is the plan")
    old = await post(http, alice, room, "Les Données du projet sont prêtes")
    await post_many(http, alice, room, [f"filler {i}" for i in range(FILLERS)])
    await post(http, alice, room, "明日は京都大学に行きます")
    for i in range(PAGING):  # one after another: the results come newest first
        await post(http, alice, room, f"paging note {i}")

    tab = await tabs.open(server)
    await tab.goto()
    await log_in(tab, bob.name)
    await expect(tab.by("room-list").locator(f"[data-room='{room}']")).to_have_count(1)
    await tab.page.keyboard.press("Control+k")
    await expect(tab.by("search-dialog")).to_be_visible()
    await expect(tab.by("search-q")).to_be_focused()
    await expect(tab.by("search-q")).to_have_accessible_name("Words to find in your rooms")

    # Case and accents folded, a prefix: the match is marked, in the text as written.
    results = await search_for(tab, "donnee")
    await expect(results).to_have_count(1)
    await expect(results.get_by_test_id("search-room")).to_have_text(f"Private room {room}")
    await expect(results.get_by_test_id("search-author")).to_have_text(alice.name)
    await expect(results.get_by_test_id("search-body")).to_have_text(
        "Les Données du projet sont prêtes"
    )
    await expect(matches(results)).to_have_text(["Donnée"])
    await expect(tab.by("search-status")).to_have_text("1 message found.")
    await tab.shot("search-results.png")
    await audit(tab, axe_source, "search-results")

    # A substring of a run of Han characters.
    results = await search_for(tab, "都大")
    await expect(results.get_by_test_id("search-body")).to_have_text(["明日は京都大学に行きます"])
    await expect(matches(results)).to_have_text(["都大"])

    # A query with no word left: the server's 422, said in the view.
    await search_for(tab, "a")
    await expect(tab.by("search-error")).to_contain_text("no word to search for")
    await expect(tab.by("search-q")).to_have_attribute("aria-invalid", "true")
    await expect(tab.by("search-list").get_by_test_id("search-result")).to_have_count(0)

    # Paging: the newest 20, then "More results" (next_cursor) the 5 older, focused.
    results = await search_for(tab, "paging")
    await expect(tab.by("search-error")).to_be_hidden()
    await expect(results).to_have_count(20)
    await expect(results.first.get_by_test_id("search-body")).to_have_text(
        f"paging note {PAGING - 1}"
    )
    await expect(tab.by("search-status")).to_have_text("20 messages found (more below).")
    await tab.by("search-more").click()
    await expect(results).to_have_count(PAGING)
    await expect(tab.by("search-more")).to_be_hidden()
    await expect(tab.by("search-status")).to_have_text(f"{PAGING} messages found.")
    await expect(results.nth(20).get_by_test_id("search-result-open")).to_be_focused()
    bodies = await results.get_by_test_id("search-body").all_inner_texts()
    assert bodies == [f"paging note {i}" for i in reversed(range(PAGING))]
    await expect(matches(results)).to_have_text(["paging"] * PAGING)

    # Enter on the result, far back in a room this page has not opened yet.
    results = await search_for(tab, "donnee")
    await expect(results).to_have_count(1)
    await tab.page.keyboard.press("Tab")
    await expect(results.get_by_test_id("search-result-open")).to_be_focused()
    await tab.page.keyboard.press("Enter")
    await expect(tab.by("search-dialog")).to_be_hidden()
    await expect_in_room(tab, room, bob.name)
    target = row_of(tab, old["seq"])
    await expect(target).to_be_in_viewport()
    await expect(target).to_be_focused()
    await expect(target).to_have_class(re.compile(r"\bis-found\b"))
    await expect(target.get_by_test_id("message-body")).to_have_text(
        "Les Données du projet sont prêtes"
    )
    # Its context: the page around it, and the gap up to the newest messages.
    seqs = await tab.seqs()
    assert before["seq"] in seqs and old["seq"] + 1 in seqs
    await expect(tab.by("history-gap")).to_have_count(1)
    await tab.shot("search-opened.png")

    # Logging out forgets the search: the next user of the tab sees none of it.
    await tab.by("logout").click()
    await log_in(tab, alice.name)
    await tab.by("search-open").click()
    await expect(tab.by("search-q")).to_have_value("")
    await expect(tab.by("search-list").get_by_test_id("search-result")).to_have_count(0)
    await expect(tab.by("search-status")).to_have_text("")
    tab.watch.assert_clean(allow=(re.compile(r"status of 422 .*/api/search\?q=a&"),))


async def test_a_quoted_phrase_is_marked_as_consecutive_words(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """A quoted phrase is marked where its words follow one another, as one mark from its
    first word to its last (with the server's folding: case, accents, word starts, across
    scripts written without spaces), not where its words stand apart; a word outside the
    quotes is marked alone; an ignored one-character word keeps its place. The results of
    "release notes" are the README's picture of search."""
    alice, bob = await new_user(http, short("alice_")), await new_user(http, short("bob_"))
    room, design = short("release-"), short("design-")
    await private_room(http, alice, room)
    await add_member(http, alice, room, bob)
    for user, where, body in (
        (alice, room, "Release notes for 2.4 are in the planning doc."),
        (bob, design, "Dark theme mock-ups are up; notes from the review below."),
        (bob, room, "Notes about the release: the upgrade guide is next."),
        (bob, design, "Release notes draft for the theme switcher, ready for review."),
        (alice, design, "Les données prêtes pour la démo de vendredi"),
        (bob, design, "東京タワーの夜景 for the landing page"),
        (alice, room, "We plan a trip, and plan one trip more"),
        (alice, room, "Tagged 2.5. The release notes say what changed in the release."),
    ):
        await post(http, user, where, body)

    tab = await open_in_room(tabs, server, bob.name, room)
    await tab.by("search-open").click()
    # Where both words stand apart the phrase does not match (the server's rule), and where
    # it matches only the consecutive words are marked, not "release" or "notes" elsewhere.
    results = await search_for(tab, '"release notes"')
    await expect(results.get_by_test_id("search-body")).to_have_text(
        [
            "Tagged 2.5. The release notes say what changed in the release.",
            "Release notes draft for the theme switcher, ready for review.",
            "Release notes for 2.4 are in the planning doc.",
        ]
    )
    await expect(matches(results)).to_have_text(["release notes", "Release notes", "Release notes"])
    await expect(tab.by("search-status")).to_have_text("3 messages found.")
    await tab.page.mouse.move(1200, 780)  # no result hovered
    shot = await tab.shot("search-phrase.png")

    # A phrase and a word: each marked, the word alone.
    results = await search_for(tab, '"release notes" plan')
    await expect(results.get_by_test_id("search-body")).to_have_text(
        ["Release notes for 2.4 are in the planning doc."]
    )
    await expect(matches(results)).to_have_text(["Release notes", "plan"])
    # Case, accents and word starts, as for words alone.
    results = await search_for(tab, '"DONNEES pret"')
    await expect(matches(results)).to_have_text(["données prêt"])
    # Across scripts written without spaces: the Han word, then the start of the Katakana one.
    results = await search_for(tab, '"東京 タワ"')
    await expect(matches(results)).to_have_text(["東京タワ"])
    # "a" is ignored but holds its place: any one word between "plan" and "trip".
    results = await search_for(tab, '"plan a trip"')
    await expect(matches(results)).to_have_text(["plan a trip", "plan one trip"])
    tab.watch.assert_clean()
    for_readme(shot, README_SHOT_SEARCH)


async def test_the_page_bounds_a_query_by_the_servers_config(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """The longest query comes from GET /api/config (here answered with a bound of 20): one
    character more is refused under the field, in code points, without asking the server;
    the bound itself is searched."""
    bound = 20
    bob = await new_user(http, short("bob_"))
    tab = await tabs.open(server)

    async def shrink(route: Route) -> None:
        response = await route.fetch()
        config = await response.json()
        assert config["max_search_chars"] > bound
        await route.fulfill(response=response, json={**config, "max_search_chars": bound})

    await tab.page.route("**/api/config", shrink)
    asked: list[str] = []
    tab.page.on("request", lambda r: asked.append(r.url) if "/api/search?" in r.url else None)
    await tab.goto()
    await log_in(tab, bob.name)
    await tab.by("search-open").click()

    too_long = "é" * (bound + 1)  # two bytes each in UTF-8: the bound counts characters
    await search_for(tab, too_long)
    await expect(tab.by("search-error")).to_have_text(f"A search has at most {bound} characters.")
    await expect(tab.by("search-q")).to_have_attribute("aria-invalid", "true")
    await search_for(tab, too_long[:bound])
    await expect(tab.by("search-error")).to_be_hidden()
    await expect(tab.by("search-q")).not_to_have_attribute("aria-invalid", "true")
    await expect(tab.by("search-status")).to_have_text(
        f"No message in your rooms matches “{too_long[:bound]}”."
    )
    assert [httpx.URL(url).params["q"] for url in asked] == [too_long[:bound]]
    tab.watch.assert_clean()


async def test_a_third_user_finds_nothing_of_a_private_room(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """The same word in a private room of Alice and Bob and in a public room Carol is in:
    Bob finds both, Carol only the public one, and the private room appears nowhere in her
    page."""
    alice, bob = await new_user(http, short("alice_")), await new_user(http, short("bob_"))
    carol = await new_user(http, short("carol_"))
    secret, public = unique("hidden-"), unique("open-")
    await private_room(http, alice, secret)
    await add_member(http, alice, secret, bob)
    r = await http.post(
        "/api/rooms", json={"name": public, "kind": "public"}, headers=alice.headers
    )
    assert r.status_code == 201, r.text
    await post(http, alice, secret, "Données secrètes")
    await post(http, alice, public, "Données publiques")

    carol_tab = await open_in_room(tabs, server, carol.name, public)
    bob_tab = await open_in_room(tabs, server, bob.name, public)
    for tab in (carol_tab, bob_tab):
        await tab.by("search-open").click()
        await expect(tab.by("search-q")).to_be_focused()
    bob_results = await search_for(bob_tab, "DONNEES")
    await expect(bob_results.get_by_test_id("search-body")).to_have_text(
        ["Données publiques", "Données secrètes"]
    )
    carol_results = await search_for(carol_tab, "DONNEES")
    await expect(carol_results.get_by_test_id("search-body")).to_have_text(["Données publiques"])
    await expect(carol_results.get_by_test_id("search-room")).to_have_text(
        [f"Public room {public}"]
    )
    await expect(matches(carol_results)).to_have_text(["Données"])
    await expect_never_seen(carol_tab, secret)
    await search_for(carol_tab, "secretes")
    await expect(carol_tab.by("search-status")).to_have_text(
        "No message in your rooms matches “secretes”."
    )
    await expect_never_seen(carol_tab, secret)
    carol_tab.watch.assert_clean()
    bob_tab.watch.assert_clean()


async def open_result(tab: Tab, q: str, body: str) -> None:
    """Search for `q` from the sidebar and open the result whose body is `body`."""
    await tab.by("search-open").click()
    results = await search_for(tab, q)
    await results.filter(has_text=body).get_by_test_id("search-result-open").click()
    await expect(tab.by("search-dialog")).to_be_hidden()


async def expect_opened_at(tab: Tab, seq: int, body: str) -> list[int]:
    """Message `seq` is shown, in view, focused and marked, with no error said; returns the
    window's seqs (checked: one ascending run within the bound)."""
    target = row_of(tab, seq)
    await expect(target.get_by_test_id("message-body")).to_have_text(body)
    await expect(target).to_be_in_viewport()
    await expect(target).to_be_focused()
    await expect(target).to_have_class(re.compile(r"\bis-found\b"))
    await expect(tab.page.locator("#toast")).to_be_hidden()
    return check_window(await view_state(tab))


async def test_a_result_newer_than_the_window_of_a_reader_far_back_opens_at_it(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    """Alice scrolled far back in a long room, its newest messages dropped from the DOM: a
    result newer than everything loaded opens at it, the window moved around it (context on
    both sides, one bounded run), and scrolling down from there reaches the newest, each once
    and in order. Far back again, a result posted meanwhile (held out of the DOM) opens among
    the newest, and the view follows the room live again."""
    alice, bob = await new_user(http), await new_user(http)
    room = unique("ahead-")
    total, target, body = 1_500, 1_300, "The lighthouse keeper's log is scanned"
    await fill_room(pg, room, [alice.name, bob.name], total)
    await pg.execute(  # indexed as the writer indexes a body (fill_room indexes none)
        "UPDATE messages SET body = $3, search = CAST($4 AS tsvector) FROM rooms "
        "WHERE rooms.id = messages.room_id AND rooms.name = $1 AND messages.seq = $2",
        room,
        target,
        body,
        search_vector(body),
    )
    tab = await open_in_room(tabs, server, alice.name, room)
    await expect(tab.rows.last).to_have_attribute("data-seq", str(total))

    state = await scroll_up_past_the_window(tab, target)
    assert state["seqs"][-1] < target - 1
    await open_result(tab, "lighthouse", body)
    seqs = await expect_opened_at(tab, target, body)
    assert target - 1 in seqs and target + 1 in seqs, (seqs[0], seqs[-1])
    assert seqs[-1] < total  # the newest are still to load, below

    shown = seqs
    async with asyncio.timeout(60):
        while shown[-1] < total:
            step: dict[str, Any] | None = await tab.page.evaluate(STEP, ["bottom", WAIT_MS])
            assert step is not None, "scrolling down loaded nothing"
            newer = [s for s in check_window(step) if s > shown[-1]]
            assert newer, f"a step down brought nothing newer than {shown[-1]}"
            shown = shown + newer
    assert shown == list(range(seqs[0], total + 1)), "the way down skipped or repeated messages"

    await scroll_up_past_the_window(tab, total)
    news = await post(http, bob, room, "The lighthouse lamp is fixed")
    await expect(tab.by("new-messages")).to_be_visible()
    await expect(row_of(tab, news["seq"])).to_have_count(0)
    await open_result(tab, "lighthouse", "The lighthouse lamp is fixed")
    seqs = await expect_opened_at(tab, news["seq"], "The lighthouse lamp is fixed")
    assert seqs[-1] == news["seq"]
    live = await post(http, bob, room, "and the foghorn too")
    await expect(tab.rows.last).to_have_attribute("data-seq", str(live["seq"]))
    check_window(await view_state(tab))
    tab.watch.assert_clean()
