"""The browser page, end to end: real `chat serve` processes, a real Chromium driven by Playwright.

Every wait is bounded (Playwright's expect with a timeout, or an explicit deadline). Each test
makes its own users and rooms on the shared test database. Screenshots of the main states go
to test-artifacts/screenshots/ (git-ignored); with UPDATE_README_SCREENSHOT=1 the two-user room
in light mode is also copied to docs/screenshot.png for the README, once its test has passed
(for_readme, which the other browser tests' README screenshots use too).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    Route,
    WebSocketRoute,
    async_playwright,
    expect,
)
from playwright.async_api import Error as PlaywrightError

from service.validation import check_room, normalize_username
from tests.support import (
    PASSWORD,
    PROJECT,
    ROOM_NAMES,
    USERNAMES,
    Instance,
    User,
    accepts,
    new_user,
    unique,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SHOTS = PROJECT / "test-artifacts" / "screenshots"
README_SHOT = PROJECT / "docs" / "screenshot.png"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 10_000  # default bound of every expect and every action
XSS_BODY = "<img src=x onerror=alert(1)>"
SHORT_LIMIT = 50  # CHAT_MAX_MESSAGE_CHARS of `short_server`, far below the default

# Reports CSP violations to Python as they happen (an exposed binding survives reloads,
# unlike a variable in the page). Init scripts run through the DevTools protocol, which the
# page's CSP does not govern.
CSP_LISTENER = """
document.addEventListener('securitypolicyviolation', (e) => {
  window.__reportCsp(`${e.violatedDirective} blocked ${e.blockedURI || '(inline)'}`
    + ` at ${e.sourceFile}:${e.lineNumber}`);
});
"""

# The page asks GET /api/rooms whether its HttpOnly session cookie is still good; logged out,
# the answer is 401, which Chromium logs as a console error. Allowed only before the log-in.
LOGGED_OUT_PROBE = re.compile(
    r"^Failed to load resource: the server responded with a status of 401 .*/api/rooms:"
)

# Logged by Chromium for each GET /api/config that a test makes fail on purpose.
CONFIG_REFUSED = re.compile(
    r"^Failed to load resource: the server responded with a status of 503 .*/api/config"
)

# What a browser logs on its own when the server it talks to is down: expected while the
# restart test has stopped the instance, an error anywhere else.
SERVER_DOWN_NOISE = (
    re.compile(r"^WebSocket connection to '.*' failed"),
    re.compile(r"^Failed to load resource: net::ERR_CONNECTION_REFUSED"),
)


# ------------------------------------------------------------------------------ watching a page


@dataclass
class Watch:
    """Everything a page must not do: throw, log errors, violate the CSP, open dialogs."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    # Console errors logged before this index may include the logged-out probe's 401.
    probe_until: int = 0

    def attach(self, page: Page) -> None:
        page.on("pageerror", self._on_page_error)
        page.on("console", self._on_console)
        page.on("dialog", self._on_dialog)

    def logged_out_probe_done(self) -> None:
        """The page has shown the login screen (or got past it): its probe has answered."""
        self.probe_until = len(self.console_errors)

    def on_csp_violation(self, report: str) -> None:
        self.csp_violations.append(report)

    def _on_page_error(self, error: PlaywrightError) -> None:
        self.page_errors.append(f"{error.name}: {error.message}")

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location
            self.console_errors.append(
                f"{message.text} ({where.get('url')}:{where.get('lineNumber')})"
            )

    async def _on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    def assert_clean(self, allow: tuple[re.Pattern[str], ...] = ()) -> None:
        console = [
            e
            for i, e in enumerate(self.console_errors)
            if not any(p.search(e) for p in allow)
            and not (i < self.probe_until and LOGGED_OUT_PROBE.search(e))
        ]
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        assert not self.csp_violations, f"CSP violations: {self.csp_violations}"
        assert not console, f"console errors: {console}"
        assert not self.dialogs, f"dialogs opened: {self.dialogs}"


@dataclass
class Tab:
    """One browser context (one user's cookie jar) with its page and its watch."""

    context: BrowserContext
    page: Page
    watch: Watch
    base_url: str

    async def goto(self, path: str = "/") -> None:
        response = await self.page.goto(self.base_url + path)
        # A change of the hash alone is a same-document navigation: no response then.
        assert response is not None or "#" in path
        assert response is None or response.status == 200, response.status

    def by(self, testid: str) -> Locator:
        return self.page.get_by_test_id(testid)

    @property
    def rows(self) -> Locator:
        return self.by("messages").get_by_test_id("message")

    def row_with(self, body: str) -> Locator:
        return self.rows.filter(
            has=self.page.get_by_test_id("message-body").filter(
                has_text=re.compile(f"^{re.escape(body)}$")
            )
        )

    async def seqs(self) -> list[int]:
        raw: list[str] = await self.rows.evaluate_all("rows => rows.map((r) => r.dataset.seq)")
        assert all(s.isdigit() for s in raw), f"rows without a seq: {raw}"
        return [int(s) for s in raw]

    async def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / name
        await self.page.screenshot(path=path, animations="disabled", caret="hide")
        return path


class Tabs:
    """Opens browser contexts for one test and closes them at its end."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []

    async def open(
        self,
        server: Instance,
        *,
        viewport: dict[str, int] | None = None,
        color_scheme: Literal["light", "dark"] = "light",
        phone: bool = False,
    ) -> Tab:
        size = viewport or (PHONE if phone else DESKTOP)
        context = await self.browser.new_context(
            viewport={"width": size["width"], "height": size["height"]},
            color_scheme=color_scheme,
            is_mobile=phone,
            has_touch=phone,
            device_scale_factor=2 if phone else 1,
            locale="en-GB",
            timezone_id="UTC",
        )
        self.contexts.append(context)
        context.set_default_timeout(WAIT_MS)
        watch = Watch()
        await context.expose_function("__reportCsp", watch.on_csp_violation)
        await context.add_init_script(CSP_LISTENER)
        page = await context.new_page()
        watch.attach(page)
        return Tab(context, page, watch, server.url)

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


class FrameGate:
    """Routes a page's WebSocket through Playwright and, while closed, holds every frame the
    server sends to the page (acks included), releasing them in order on open(). This makes
    the short "pending" state of a send observable without slowing the server down."""

    def __init__(self) -> None:
        self.closed = False
        self.held: list[str | bytes] = []
        self.client: WebSocketRoute | None = None

    async def install(self, page: Page) -> None:
        await page.route_web_socket(re.compile(r"/ws(\?.*)?$"), self._route)

    def _route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        self.client = ws

        def from_server(message: str | bytes) -> None:
            if self.closed:
                self.held.append(message)
            else:
                ws.send(message)

        server.on_message(from_server)

    def close(self) -> None:
        self.closed = True

    def open(self) -> None:
        assert self.client is not None, "the page never opened its WebSocket"
        self.closed = False
        held, self.held = self.held, []
        for message in held:
            self.client.send(message)


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    expect.set_options(timeout=WAIT_MS)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture(scope="module")
async def server(spawn: Callable[..., Instance]) -> Instance:
    """The instance the pages talk to (tests that stop an instance start their own). The
    scrollback test seeds its room over REST as fast as it stores: no write rate limit."""
    instance = spawn(CHAT_RATE_LIMIT_PER_SECOND=0)
    await instance.wait_ready()
    return instance


@pytest.fixture(scope="module")
async def short_server(spawn: Callable[..., Instance]) -> AsyncIterator[Instance]:
    """An instance whose limit on message length is SHORT_LIMIT, for the page to learn."""
    instance = spawn(CHAT_MAX_MESSAGE_CHARS=SHORT_LIMIT)
    try:
        await instance.wait_ready()
        yield instance
    finally:
        await asyncio.to_thread(instance.stop)


@pytest.fixture
async def tabs(browser: Browser) -> AsyncIterator[Tabs]:
    opened = Tabs(browser)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def http(server: Instance) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=15) as client:
        yield client


# ------------------------------------------------------------------------------------- helpers


def short(prefix: str) -> str:
    """A unique name short enough to look like a person's in a screenshot."""
    return unique(prefix)[: len(prefix) + 6]


def for_readme(shot: Path, target: Path) -> None:
    """With UPDATE_README_SCREENSHOT=1, `shot` becomes the README's `target` (docs/); call it
    at the end of its test, once everything it shows has been checked."""
    if os.environ.get("UPDATE_README_SCREENSHOT") == "1":
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


async def log_in(tab: Tab, name: str, *, register: bool = False) -> None:
    """Through the page's own form: "Create account" when `register`, else "Log in"."""
    await expect(tab.by("login-username")).to_be_visible()
    await tab.by("login-username").fill(name)
    await tab.by("login-password").fill(PASSWORD)
    await tab.by("register-submit" if register else "login-submit").click()
    await expect(tab.by("current-user")).to_have_text(name)
    await expect(tab.by("login-error")).to_be_hidden()
    tab.watch.logged_out_probe_done()


async def join_by_name(tab: Tab, room: str) -> None:
    await tab.by("room-input").fill(room)
    await tab.by("room-join").click()
    await expect_in_room(tab, room)


async def open_in_room(
    tabs: Tabs, server: Instance, name: str, room: str, *, tab: Tab | None = None
) -> Tab:
    """A new tab (or `tab`, opened and prepared by the caller), logged in as `name`, with
    `room` open (by its URL) and joined."""
    tab = tab or await tabs.open(server)
    await tab.goto()
    await log_in(tab, name)
    await tab.goto(f"/#/room/{room}")
    await expect_in_room(tab, room, name)
    return tab


async def expect_in_room(tab: Tab, room: str, me: str | None = None) -> None:
    """The room is shown, in the URL, and joined (the page lists its own user online)."""
    await expect(tab.by("room-title")).to_have_text(room)
    await expect(tab.page).to_have_url(re.compile(f"#/room/{re.escape(room)}$"))
    await expect(tab.by("conn-status")).to_have_attribute("data-state", "connected")
    me = me or await tab.by("current-user").inner_text()
    await expect(tab.by("online-user").filter(has_text=me)).to_have_count(1)


async def send_from_page(tab: Tab, body: str) -> Locator:
    """Type into the composer and press Enter; returns the row of that body."""
    composer = tab.by("composer")
    await composer.fill(body)
    await composer.press("Enter")
    await expect(composer).to_have_value("")
    return tab.row_with(body)


async def post(
    http: httpx.AsyncClient, user: User, room: str, body: str, client_id: str | None = None
) -> dict[str, Any]:
    payload = {"body": body} if client_id is None else {"body": body, "client_id": client_id}
    r = await http.post(f"/api/rooms/{room}/messages", json=payload, headers=user.headers)
    assert r.status_code == 201, r.text
    message: dict[str, Any] = r.json()
    return message


async def expect_confirmed(row: Locator) -> int:
    await expect(row).to_have_count(1)
    await expect(row).to_have_attribute("data-state", "confirmed")
    await expect(row).to_have_attribute("data-seq", re.compile(r"^[1-9][0-9]*$"))
    seq = await row.get_attribute("data-seq")
    assert seq is not None
    return int(seq)


# --------------------------------------------------------------------------------------- tests


async def test_two_users_chat_live(tabs: Tabs, server: Instance, http: httpx.AsyncClient) -> None:
    """A typed message is pending at once, reaches the other user, then confirms with that seq."""
    alice_name, bob_name = short("alice_"), short("bob_")
    await new_user(http, bob_name)
    room = short("general-")

    alice = await tabs.open(server)
    gate = FrameGate()
    await gate.install(alice.page)
    await alice.goto()
    await expect(alice.by("login-submit")).to_be_visible()
    await alice.shot("login.png")
    await log_in(alice, alice_name, register=True)
    await join_by_name(alice, room)

    bob = await tabs.open(server)
    await bob.goto()
    await log_in(bob, bob_name)
    await bob.goto(f"/#/room/{room}")
    await expect_in_room(bob, room, bob_name)
    await expect(alice.by("online-user").filter(has_text=bob_name)).to_have_count(1)
    await expect(bob.by("online-user")).to_have_count(2)

    # Alice's acks are held back: her row must show as pending while Bob already has it.
    gate.close()
    first = "Morning! Is the new build up on staging?"
    mine = await send_from_page(alice, first)
    await expect(mine).to_have_count(1)
    await expect(mine).to_have_attribute("data-state", "pending")
    await expect(mine).to_have_attribute("data-seq", "")
    client_id = await mine.get_attribute("data-client-id")
    assert client_id, "a pending row carries its client_id"
    seq_at_bob = await expect_confirmed(bob.row_with(first))
    await expect(bob.row_with(first)).to_have_attribute("data-author", alice_name)
    await expect(mine).to_have_attribute("data-state", "pending")
    gate.open()
    assert await expect_confirmed(mine) == seq_at_bob == 1
    await expect(mine).to_have_attribute("data-client-id", client_id)

    # Typing shows on the other side; then a short conversation, both ways.
    await bob.by("composer").fill("Yes")
    await expect(alice.by("typing")).to_have_text(f"{bob_name} is typing…")
    await bob.by("composer").press("Enter")
    conversation = [
        (bob, "Yes, deployed 10 minutes ago. Release notes: https://example.com/notes"),
        (alice, "Great, I'll run the smoke tests now."),
        (alice, "Anything I should look at first?"),
        (bob, "The reconnect banner. Try stopping the server while a message is on its way."),
    ]
    for tab, body in conversation:
        await expect_confirmed(await send_from_page(tab, body))
    bodies = [first, "Yes", *(body for _, body in conversation)]
    for tab in (alice, bob):
        for body in bodies:
            await expect_confirmed(tab.row_with(body))
        assert await tab.seqs() == list(range(1, len(bodies) + 1))
    await expect(alice.by("typing")).to_have_text("")
    await expect(alice.by("messages").locator("a[href='https://example.com/notes']")).to_have_count(
        1
    )

    await alice.by("composer").fill("")
    shot = await alice.shot("room-light.png")
    alice.watch.assert_clean()
    bob.watch.assert_clean()
    for_readme(shot, README_SHOT)


async def test_reload_restores_room_and_history(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """After a reload the room named in the URL opens again with its whole history."""
    user = await new_user(http)
    room = unique("reload-")
    tab = await tabs.open(server)
    await tab.goto()
    await log_in(tab, user.name)
    await join_by_name(tab, room)
    bodies = [f"before reload {i}" for i in range(1, 4)]
    for body in bodies:
        await expect_confirmed(await send_from_page(tab, body))

    await tab.page.reload()
    await expect_in_room(tab, room, user.name)
    await expect(tab.rows).to_have_count(len(bodies))
    for i, body in enumerate(bodies, start=1):
        assert await expect_confirmed(tab.row_with(body)) == i
    await expect(tab.page.locator(f"[data-testid='room-item'][data-room='{room}']")).to_have_count(
        1
    )
    await expect(tab.by("history-start")).to_be_visible()
    tab.watch.assert_clean()


async def test_scrollback_500(tabs: Tabs, server: Instance, http: httpx.AsyncClient) -> None:
    """Scrolling up through a room of 500 messages shows seqs 1..500 once each, in order."""
    user = await new_user(http)
    room = unique("history-")
    total = 500
    limit = asyncio.Semaphore(16)

    async def seed(i: int) -> int:
        async with limit:
            return int((await post(http, user, room, f"history message {i}"))["seq"])

    async with asyncio.timeout(60):
        stored = await asyncio.gather(*(seed(i) for i in range(total)))
    assert sorted(stored) == list(range(1, total + 1))

    tab = await open_in_room(tabs, server, user.name, room)
    await expect(tab.rows.last).to_have_attribute("data-seq", str(total))

    start = tab.by("history-start")
    scroller = tab.by("messages")
    for _ in range(40):  # 3 pages of 200 are needed; the bound only stops a runaway
        if await start.count():
            break
        before = await tab.rows.count()
        await scroller.evaluate("(el) => { el.scrollTop = 0; }")
        await tab.page.wait_for_function(
            """(before) => document.querySelector('[data-testid="history-start"]')
                || document.querySelectorAll('[data-testid="message"]').length > before""",
            arg=before,
            timeout=WAIT_MS,
        )
    await expect(start).to_be_visible()
    await expect(tab.rows).to_have_count(total)
    assert await tab.seqs() == list(range(1, total + 1))
    tab.watch.assert_clean()


async def test_restart_reconnects_without_loss(
    tabs: Tabs,
    server: Instance,
    http: httpx.AsyncClient,
    spawn: Callable[..., Instance],
) -> None:
    """Across a restart of its instance the page reconnects; all sent meanwhile shows once."""
    own = spawn()
    try:
        await own.wait_ready()
        alice, bob = await new_user(http), await new_user(http)
        room = unique("restart-")
        tab = await tabs.open(own)
        await tab.goto()
        await log_in(tab, alice.name)
        await join_by_name(tab, room)
        before = ["before the restart 1", "before the restart 2"]
        for body in before:
            await expect_confirmed(await send_from_page(tab, body))

        await asyncio.to_thread(own.stop)
        await expect(tab.by("conn-status")).to_have_attribute("data-state", "reconnecting")
        await tab.shot("reconnecting.png")
        meanwhile = [f"posted while the instance is down {i}" for i in range(1, 6)]
        for body in meanwhile:
            await post(http, bob, room, body)  # to `server`, the other instance
        queued = "typed while the instance is down"
        mine = await send_from_page(tab, queued)
        await expect(mine).to_have_attribute("data-state", "pending")

        own.start()
        await own.wait_ready()
        await expect(tab.by("conn-status")).to_have_attribute(
            "data-state", "connected", timeout=30_000
        )
        for body in [*before, *meanwhile, queued]:
            await expect_confirmed(tab.row_with(body))
        everything = len(before) + len(meanwhile) + 1
        await expect(tab.rows).to_have_count(everything)
        assert await tab.seqs() == list(range(1, everything + 1))
        assert await expect_confirmed(mine) == everything
        tab.watch.assert_clean(allow=SERVER_DOWN_NOISE)
    finally:
        await asyncio.to_thread(own.stop)


async def test_html_body_is_shown_as_text(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """A body of HTML is shown literally: same text, no element made from it, no dialog."""
    me, other = await new_user(http), await new_user(http)
    room = unique("xss-")
    tab = await tabs.open(server)
    await tab.goto()
    await log_in(tab, me.name)
    await join_by_name(tab, room)

    theirs = "<script>alert(2)</script><b>bold?</b>"
    await expect_confirmed(await send_from_page(tab, XSS_BODY))
    await post(http, other, room, theirs)
    for phase in ("live", "after a reload"):
        if phase == "after a reload":  # rendered again, from the join's replay
            await tab.page.reload()
            await expect_in_room(tab, room, me.name)
        for body in (XSS_BODY, theirs):
            row = tab.row_with(body)
            await expect_confirmed(row)
            text = await row.get_by_test_id("message-body").text_content()
            assert text == body, phase
        messages = tab.by("messages")
        for tag in ("img", "script", "b"):
            await expect(messages.locator(tag)).to_have_count(0)
    tab.watch.assert_clean()


async def test_csp_forbids_inline_script(
    tabs: Tabs, server: Instance, http: httpx.AsyncClient
) -> None:
    """The page is served with a CSP that forbids inline script, and the browser enforces it."""
    r = await http.get("/")
    assert r.status_code == 200
    csp = r.headers.get("content-security-policy")
    assert csp, "GET / has no Content-Security-Policy header"
    directives = {parts[0]: parts[1:] for parts in (d.split() for d in csp.split(";") if d.strip())}
    scripts = directives.get("script-src", directives.get("default-src"))
    assert scripts is not None, csp
    assert "'unsafe-inline'" not in scripts, csp
    assert "'unsafe-eval'" not in scripts, csp
    assert not any(s in ("*", "data:", "http:", "https:") for s in scripts), csp

    tab = await tabs.open(server)
    await tab.goto()
    await expect(tab.by("login-submit")).to_be_visible()
    ran = await tab.page.evaluate(
        """() => {
            const s = document.createElement('script');
            s.textContent = 'window.__inlineRan = true;';
            document.body.append(s);
            return window.__inlineRan === true;
        }"""
    )
    assert ran is False, "an inline script ran despite the CSP"
    async with asyncio.timeout(5):  # the report comes back through a binding, asynchronously
        while not tab.watch.csp_violations:
            await asyncio.sleep(0.05)
    assert all(v.startswith("script-src") for v in tab.watch.csp_violations), (
        tab.watch.csp_violations
    )
    tab.watch.csp_violations.clear()
    # Chromium also logs the refusal to the console; that one was ours.
    tab.watch.console_errors = [
        e for e in tab.watch.console_errors if "Content Security Policy" not in e
    ]
    tab.watch.logged_out_probe_done()
    tab.watch.assert_clean()


async def test_phone_layout(tabs: Tabs, server: Instance, http: httpx.AsyncClient) -> None:
    """On a 390x844 phone everything fits the screen, the room panel works, and sending works."""
    me, other = await new_user(http, short("erin_")), await new_user(http, short("frank_"))
    room = unique("phone-")
    await post(http, other, room, "Hello from a desktop! How does the chat look on your phone?")

    tab = await tabs.open(server, phone=True)
    await tab.goto()
    await log_in(tab, me.name)
    await tab.page.get_by_role("button", name="Rooms").tap()
    await expect(tab.by("room-input")).to_be_in_viewport()
    await tab.by("room-input").fill(room)
    await tab.by("room-join").tap()
    await expect_in_room(tab, room, me.name)
    await expect(tab.by("room-input")).not_to_be_in_viewport()

    await tab.shot("phone.png")  # before the checks: when one fails, this shows why
    # The whole main column must fit the screen: composer, send button and messages.
    composer, send = tab.by("composer"), tab.by("send")
    await expect(composer).to_be_in_viewport()
    await expect(send).to_be_in_viewport(ratio=1)
    for testid in ("messages", "composer", "send", "conn-status"):
        box = await tab.by(testid).bounding_box()
        assert box is not None, testid
        assert box["x"] >= 0, (testid, box)
        assert box["x"] + box["width"] <= PHONE["width"] + 0.5, (testid, box)
        assert box["y"] + box["height"] <= PHONE["height"] + 0.5, (testid, box)
    overflow = await tab.page.evaluate(
        """() => [document.documentElement, document.getElementById('chat'),
                  document.querySelector('.main')].map((el) => el.scrollWidth - el.clientWidth)"""
    )
    assert max(overflow) <= 0, f"content wider than the phone's screen by {overflow} px"

    await composer.fill("Looks fine here, and sending works.")
    await send.tap()
    await expect_confirmed(tab.row_with("Looks fine here, and sending works."))
    await expect_confirmed(
        tab.row_with("Hello from a desktop! How does the chat look on your phone?")
    )
    await expect(composer).to_be_in_viewport()
    await tab.shot("phone.png")
    tab.watch.assert_clean()


async def test_dark_mode(tabs: Tabs, server: Instance, http: httpx.AsyncClient) -> None:
    """With a dark colour scheme the page is dark (background darker than text)."""
    me, other = await new_user(http, short("erin_")), await new_user(http, short("frank_"))
    room = unique("dark-")
    for body in ("Anyone up for a late review?", "Dark mode keeps my eyes happy at this hour."):
        await post(http, other, room, body)
    tab = await tabs.open(server, color_scheme="dark")
    await tab.goto()
    await log_in(tab, me.name)
    await tab.goto(f"/#/room/{room}")
    await expect_in_room(tab, room, me.name)
    await expect_confirmed(await send_from_page(tab, "Sure, send me the link."))
    await expect(tab.rows).to_have_count(3)

    luminance = """(el) => {
        const [r, g, b] = getComputedStyle(el).backgroundColor.match(/\\d+/g).map(Number);
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    }"""
    text = """() => {
        const [r, g, b] = getComputedStyle(document.body).color.match(/\\d+/g).map(Number);
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    }"""
    background = await tab.page.locator("body").evaluate(luminance)
    foreground = await tab.page.evaluate(text)
    assert background < 60 < foreground, (background, foreground)
    await tab.shot("room-dark.png")
    tab.watch.assert_clean()


async def test_long_room_name_fits(tabs: Tabs, server: Instance, http: httpx.AsyncClient) -> None:
    """A 64-character room name is cut short instead of pushing the send button off screen."""
    user = await new_user(http)
    room = unique("a-room-with-the-longest-name-allowed-by-the-protocol-")[:64]
    assert len(room) == 64
    tab = await tabs.open(server, viewport={"width": 1000, "height": 800})
    await tab.goto()
    await log_in(tab, user.name)
    await join_by_name(tab, room)
    await expect(tab.by("send")).to_be_in_viewport(ratio=1)
    await expect(tab.by("conn-status")).to_be_in_viewport(ratio=1)
    boxes = await tab.page.evaluate(
        """(room) => {
            const right = (el) => el.getBoundingClientRect().right;
            const item = document.querySelector(`[data-testid="room-item"][data-room="${room}"]`);
            return {
                main: right(document.querySelector('.main')),
                composer: right(document.getElementById('composer-form')),
                sidebar: right(document.getElementById('sidebar')),
                item: right(item),
                window: innerWidth,
            };
        }""",
        room,
    )
    assert boxes["composer"] <= boxes["window"] + 0.5, boxes
    assert boxes["main"] <= boxes["window"] + 0.5, boxes
    assert boxes["item"] <= boxes["sidebar"] + 0.5, boxes
    await expect_confirmed(await send_from_page(tab, "Long names are cut with an ellipsis."))
    tab.watch.assert_clean()


async def test_page_takes_its_limits_from_the_server(
    tabs: Tabs, short_server: Instance, http: httpx.AsyncClient
) -> None:
    """The page checks with the server's config: its patterns, compiled by the page's
    JavaScript, accept exactly the names the server does and refuse a bad username (logged
    out) and a bad room name before any request; with CHAT_MAX_MESSAGE_CHARS=50 the composer
    flags and keeps 51 characters and sends 50."""
    async with httpx.AsyncClient(base_url=short_server.url, timeout=15) as own:
        config = (await own.get("/api/config")).json()
    assert config["max_message_chars"] == SHORT_LIMIT
    user = await new_user(http)
    tab = await tabs.open(short_server)
    posted: list[str] = []
    tab.page.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
    await tab.goto()
    await expect(tab.by("login-submit")).to_be_visible()

    in_page = "([pattern, names]) => names.map((n) => new RegExp(pattern).test(n))"
    rooms = await tab.page.evaluate(in_page, [config["room_pattern"], ROOM_NAMES])
    assert rooms == [accepts(check_room, n) for n in ROOM_NAMES]
    users = await tab.page.evaluate(in_page, [config["username_pattern"], USERNAMES])
    assert users == [accepts(normalize_username, n) for n in USERNAMES]

    await tab.by("login-username").fill("-" + short("x"))
    await tab.by("login-password").fill(PASSWORD)
    await tab.by("register-submit").click()
    await expect(tab.by("login-error")).to_have_text(
        f"Not a valid username: names must match {config['username_pattern']}"
    )
    assert not [url for url in posted if url.endswith("/api/users")], posted
    await log_in(tab, user.name)

    too_long = unique("a-room-one-character-too-long-").ljust(65, "x")
    await tab.by("room-input").fill(too_long)
    await tab.by("room-join").click()
    await expect(tab.page.locator("#room-error")).to_have_text(
        f"Not a valid room name: names must match {config['room_pattern']}"
    )
    await expect(tab.by("room-title")).to_have_text("")
    assert "#/room/" not in tab.page.url

    await join_by_name(tab, unique("limits-"))
    composer, counter = tab.by("composer"), tab.page.locator("#char-count")
    over = "y" * (SHORT_LIMIT + 1)
    await composer.fill(over)
    await expect(counter).to_have_text("1 characters too long")
    await expect(counter).to_have_class(re.compile(r"\bis-over\b"))
    await composer.press("Enter")
    await expect(tab.page.locator("#toast")).to_have_text(
        f"Messages can be at most {SHORT_LIMIT} characters."
    )
    await expect(composer).to_have_value(over)
    await expect(tab.rows).to_have_count(0)

    exact = "z" * SHORT_LIMIT
    await composer.fill(exact)
    await expect(counter).to_have_text("0 characters left")
    await expect(counter).not_to_have_class(re.compile(r"\bis-over\b"))
    assert await expect_confirmed(await send_from_page(tab, exact)) == 1
    await expect(tab.rows).to_have_count(1)
    tab.watch.assert_clean()


async def test_page_starts_without_its_config_and_picks_it_up(
    tabs: Tabs, short_server: Instance, http: httpx.AsyncClient
) -> None:
    """While GET /api/config fails the page still logs in and sends, and the server judges a
    message that is too long; once the config answers, the page applies the server's limit."""
    user = await new_user(http)
    tab = await tabs.open(short_server)
    refused: list[str] = []
    down = True

    async def config_route(route: Route) -> None:
        if down:
            refused.append(route.request.url)
            await route.fulfill(status=503, json={"detail": "refused by the test"})
        else:
            await route.continue_()

    await tab.page.route(re.compile(r"/api/config$"), config_route)
    await tab.goto()
    await log_in(tab, user.name)
    await join_by_name(tab, unique("degraded-"))
    composer, counter = tab.by("composer"), tab.page.locator("#char-count")
    over = "y" * (SHORT_LIMIT + 1)
    await composer.fill(over)
    await expect(counter).to_be_hidden()
    row = await send_from_page(tab, over)
    await expect(row).to_have_attribute("data-state", "failed")
    await expect(row.get_by_test_id("message-error")).to_have_text("Too long to send.")
    assert refused, "the page never asked for its config"

    down = False
    await composer.fill(over)
    # The page retries with a growing delay; this bound covers the delay reached by now.
    await expect(counter).to_have_text("1 characters too long", timeout=40_000)
    await composer.press("Enter")
    await expect(tab.page.locator("#toast")).to_have_text(
        f"Messages can be at most {SHORT_LIMIT} characters."
    )
    await expect(composer).to_have_value(over)
    await expect(tab.rows).to_have_count(1)
    tab.watch.assert_clean(allow=(CONFIG_REFUSED,))
