"""Observability: the Prometheus metrics an operator watches, queue depths read at scrape
time, and log lines that carry their request or connection id."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from starlette.types import Receive, Scope, Send

from service import logs, metrics
from service.app import create_app
from service.settings import Settings
from tests.support import PROJECT, Instance, app_client, new_user, unique, ws_connect

OPERATIONAL = {
    "chat_connections": "gauge",
    "chat_joined_rooms": "gauge",
    "chat_local_rooms": "gauge",
    "chat_messages_in_total": "counter",
    "chat_messages_out_total": "counter",
    "chat_acks_total": "counter",
    "chat_errors_total": "counter",
    "chat_closes_total": "counter",
    "chat_write_batch_size": "histogram",
    "chat_commit_seconds": "histogram",
    "chat_fanout_lag_seconds": "histogram",
    "chat_gap_fills_total": "counter",
    "chat_listener_reconnects_total": "counter",
    "chat_listener_healthy": "gauge",
    "chat_writer_queue_depth": "gauge",
    "chat_send_queue_frames": "gauge",
    "chat_send_queue_max_frames": "gauge",
    "chat_http_requests_total": "counter",
    "chat_http_request_seconds": "histogram",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return samples((await http.get("/metrics")).text)


# -- metrics --------------------------------------------------------------------------------


async def test_metrics_names_every_operational_metric(client: httpx.AsyncClient) -> None:
    """/metrics declares every metric the dashboard and docs/operations.md use, typed."""
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    declared = dict(re.findall(r"^# TYPE (\S+) (\S+)$", r.text, re.MULTILINE))
    for name, kind in OPERATIONAL.items():
        # A counter is declared without its _total suffix once it has samples.
        assert kind in (declared.get(name), declared.get(name.removesuffix("_total"))), name


async def test_metrics_token_is_required_when_set(settings: Settings) -> None:
    """With CHAT_METRICS_TOKEN, /metrics answers only `Authorization: Bearer <it>`: no
    header, another scheme, another token or a prefix of it are 401 with FastAPI's body."""
    token = "scrape-" + "s" * 40
    guarded = create_app(settings.model_copy(update={"metrics_token": SecretStr(token)}))
    async with app_client(guarded) as http:
        refused: list[dict[bytes, bytes]] = [
            {},
            {b"Authorization": token.encode()},
            {b"Authorization": f"Basic {token}".encode()},
            {b"Authorization": f"Bearer {token[:-1]}".encode()},
            {b"Authorization": f"Bearer {token}x".encode()},
            {b"Authorization": b"Bearer "},
            {b"Authorization": "Bearer été".encode()},  # not ASCII
        ]
        for headers in refused:
            r = await http.get("/metrics", headers=headers)
            assert r.status_code == 401, headers
            assert r.json() == {"detail": "not authenticated: /metrics needs its bearer token"}
            assert r.headers["www-authenticate"] == "Bearer"
            assert "chat_" not in r.text
        for scheme in ("Bearer", "bearer"):
            r = await http.get("/metrics", headers={"Authorization": f"{scheme} {token}"})
            assert r.status_code == 200
            assert "# TYPE chat_connections gauge" in r.text
        assert (await http.get("/healthz")).status_code == 200  # nothing else needs it


def test_watched_queues_are_read_at_each_scrape() -> None:
    """Queues registered with `watch` are reported (summed, and the longest socket queue)
    until the returned function is called."""
    before = samples(generate_latest().decode())
    depths = [3, 0, 5]
    stop = metrics.watch(lambda: 7, lambda: depths)
    try:
        during = samples(generate_latest().decode())
        depths.append(11)
        later = samples(generate_latest().decode())
    finally:
        stop()
    after = samples(generate_latest().decode())
    delta = {
        name: value(during, name) - value(before, name)
        for name in ("chat_writer_queue_depth", "chat_send_queue_frames")
    }
    assert delta == {"chat_writer_queue_depth": 7, "chat_send_queue_frames": 8}
    assert value(during, "chat_send_queue_max_frames") >= 5
    assert value(later, "chat_send_queue_frames") - value(before, "chat_send_queue_frames") == 19
    assert value(later, "chat_send_queue_max_frames") >= 11
    for name in ("chat_writer_queue_depth", "chat_send_queue_frames"):
        assert value(after, name) == value(before, name)


async def test_counters_follow_traffic(pair: tuple[Instance, Instance]) -> None:
    """Sends, acks, errors, joins and connections on an instance move its counters by
    exactly what happened; batches and commit latency are observed."""
    instance = pair[0]
    room = unique("metrics-")
    async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
        user = await new_user(http)
    before = await scrape(instance.url)
    async with ws_connect(instance.url, user.token) as ws:
        await ws.join(room)
        for n in range(3):
            await ws.send(type="send", room=room, body=f"m{n}", client_id=f"c{n}")
        await ws.send(type="send", room=room, body="m0", client_id="c0")  # a retry
        await ws.send(type="nonsense")
        frames: list[dict[str, object]] = []
        while sum(f["type"] in ("ack", "error") for f in frames) < 5:
            frames.append(await ws.recv())
        assert [f["duplicate"] for f in frames if f["type"] == "ack"] == [False] * 3 + [True]
        assert [f["code"] for f in frames if f["type"] == "error"] == ["bad_request"]
        during = await scrape(instance.url)
    delta = {
        key: value(during, *key[:1], **dict(key[1])) - value(before, *key[:1], **dict(key[1]))
        for key in [
            ("chat_connections", ()),
            ("chat_joined_rooms", ()),
            ("chat_messages_in_total", (("via", "ws"),)),
            ("chat_acks_total", (("duplicate", "false"),)),
            ("chat_acks_total", (("duplicate", "true"),)),
            ("chat_errors_total", (("code", "bad_request"),)),
            ("chat_messages_out_total", ()),
        ]
    }
    assert list(delta.values()) == [1, 1, 4, 3, 1, 1, 3], delta
    batches = value(during, "chat_write_batch_size_count") - value(
        before, "chat_write_batch_size_count"
    )
    assert 1 <= batches <= 4
    assert value(during, "chat_commit_seconds_count") > value(before, "chat_commit_seconds_count")
    assert (
        value(during, "chat_fanout_lag_seconds_count")
        - value(before, "chat_fanout_lag_seconds_count")
        == 3
    )


# -- log context -----------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines, through the context filter, to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger(unique("test.logs."))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_log_context_fields_reach_each_line(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    """Fields of the enclosing log_context blocks are on every record logged inside them;
    an `extra=` field keeps its own value; outside, none is added."""
    logger, stream = captured
    with logs.log_context(request_id="r1"):
        logger.info("outer")
        with logs.log_context(room="lobby"):
            logger.info("inner", extra={"request_id": "mine"})
        logger.info("outer again")
    logger.info("outside")
    got = [{k: e.get(k) for k in ("msg", "request_id", "room")} for e in lines(stream)]
    assert got == [
        {"msg": "outer", "request_id": "r1", "room": None},
        {"msg": "inner", "request_id": "mine", "room": "lobby"},
        {"msg": "outer again", "request_id": "r1", "room": None},
        {"msg": "outside", "request_id": None, "room": None},
    ]


async def test_tasks_started_in_a_context_keep_it(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    """A task created inside log_context logs with its fields, even after the block ends."""
    logger, stream = captured
    go = asyncio.Event()

    async def later() -> None:
        await go.wait()
        logger.info("from the task")

    with logs.log_context(conn_id="c1"):
        task = asyncio.create_task(later())
    go.set()
    async with asyncio.timeout(5):
        await task
    assert lines(stream)[0]["conn_id"] == "c1"


def test_text_lines_end_with_the_fields() -> None:
    """`chat dev`'s text lines carry the context's fields as key=value."""
    record = logging.makeLogRecord({"msg": "hello %s", "args": ("you",), "name": "chat"})
    with logs.log_context(request_id="abc"):
        logs.ContextFilter().filter(record)
    line = logs.TextFormatter().format(record)
    assert line.endswith("chat: hello you  request_id=abc")


# -- the request-context middleware ----------------------------------------------------------


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(logs.ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """Records what the app and the access log say."""
    handler = Recorder()
    loggers = [logging.getLogger("test.app"), logs.access_log]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


async def plain_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Logs a line, then answers 200; with ?own=1, sets an X-Request-ID itself."""
    logging.getLogger("test.app").info("handling")
    headers = [(b"content-type", b"text/plain")]
    if scope.get("query_string") == b"own=1":
        headers.append((b"x-request-id", b"set-by-app"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (None, False),
        ("abc-123.XYZ", True),
        ("has space", False),
        ("x" * 129, False),
        ('"},{"forged":1', False),
    ],
)
async def test_http_requests_get_an_id_and_echo_it(
    recorder: Recorder, sent: str | None, kept: bool
) -> None:
    """Each HTTP request gets a request_id: a sane incoming X-Request-ID, else a new one; it
    is on the app's log lines and the access line, and echoed in the response."""
    transport = httpx.ASGITransport(app=logs.RequestContext(plain_app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        headers = {"X-Request-ID": sent} if sent is not None else {}
        r = await http.get("/api/thing?token=secret", headers=headers)
    echoed = r.headers["x-request-id"]
    assert echoed == sent if kept else re.fullmatch(r"[0-9a-f]{16}", echoed)
    app_line, access_line = recorder.records
    assert (app_line.getMessage(), getattr(app_line, "request_id", None)) == ("handling", echoed)
    assert access_line.getMessage() == "GET /api/thing 200"  # never the query: it may hold a token
    assert getattr(access_line, "request_id", None) == echoed
    assert getattr(access_line, "status", None) == 200


async def test_an_apps_own_request_id_is_not_doubled(recorder: Recorder) -> None:
    """A response that already has X-Request-ID keeps it, once."""
    transport = httpx.ASGITransport(app=logs.RequestContext(plain_app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        r = await http.get("/", params={"own": "1"})
    assert r.headers.get_list("x-request-id") == ["set-by-app"]


async def test_probes_are_not_access_logged(recorder: Recorder) -> None:
    """/healthz, /readyz and /metrics are answered and counted, but not access-logged."""
    transport = httpx.ASGITransport(app=logs.RequestContext(plain_app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await http.get(path)).status_code == 200
    assert [r.getMessage() for r in recorder.records] == ["handling"] * 3


async def socket_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Refuses the socket on /refuse; else accepts, logs the first frame and closes with
    1012, unless the client left first."""
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/refuse":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    message = await receive()
    if message["type"] == "websocket.disconnect":
        return
    logging.getLogger("test.app").info("socket says %s", message["text"])
    await send({"type": "websocket.close", "code": 1012})


@pytest.mark.parametrize(
    ("path", "client_sends", "line", "closed"),
    [
        (
            "/ws",
            {"type": "websocket.receive", "text": "hi"},
            "websocket closed 1012",
            (1012, "server"),
        ),
        (
            "/ws",
            {"type": "websocket.disconnect", "code": 1001},
            "websocket closed 1001",
            (1001, "client"),
        ),
        ("/refuse", None, "websocket refused 1008", (1008, "server")),
    ],
)
async def test_websockets_get_a_conn_id(
    recorder: Recorder,
    path: str,
    client_sends: dict[str, object] | None,
    line: str,
    closed: tuple[int, str],
) -> None:
    """A WebSocket gets a conn_id, on the app's lines and on the access line that says how
    it ended; the balancer's X-Request-ID rides along as request_id."""
    incoming: list[dict[str, object]] = [{"type": "websocket.connect"}]
    if client_sends is not None:
        incoming.append(client_sends)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {"type": "websocket", "path": path, "headers": [(b"x-request-id", b"from-nginx")]}
    async with asyncio.timeout(5):
        await logs.RequestContext(socket_app)(scope, receive, send)
    assert sent[-1]["type"] == "websocket.close" or closed[1] == "client"
    *app_lines, access_line = recorder.records
    conn_id = getattr(access_line, "conn_id", None)
    assert isinstance(conn_id, str)
    assert re.fullmatch(r"[0-9a-f]{16}", conn_id)
    assert [(r.getMessage(), getattr(r, "conn_id", None)) for r in app_lines] == (
        [("socket says hi", conn_id)] if app_lines else []
    )
    assert getattr(access_line, "request_id", None) == "from-nginx"
    assert access_line.getMessage() == line
    assert (getattr(access_line, "close_code", None), getattr(access_line, "closed_by", None)) == (
        closed
    )


async def test_the_service_app_under_the_middleware(app: FastAPI) -> None:
    """The chat app wrapped in RequestContext answers as before and echoes request ids."""
    async with app_client(logs.RequestContext(app)) as http:
        r = await http.get("/healthz", headers={"X-Request-ID": "probe-1"})
        assert (r.status_code, r.headers["x-request-id"]) == (200, "probe-1")
        r = await http.get("/api/rooms")
        assert r.status_code == 401
        assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])
        assert r.headers["cache-control"] == "no-store"  # the app's own headers are kept


# -- the dashboard ---------------------------------------------------------------------------


def test_dashboard_queries_only_exposed_metrics() -> None:
    """docs/grafana-dashboard.json is valid JSON, templated on a Prometheus datasource; its
    queries name only metrics the service exposes, and every operational one."""
    dashboard = orjson.loads((PROJECT / "docs" / "grafana-dashboard.json").read_bytes())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    exposed = {
        s.name
        for family in text_string_to_metric_families(generate_latest().decode())
        for s in family.samples
    } | set(OPERATIONAL)
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"\bchat_[a-z_]+", target["expr"]))
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert bases <= exposed
    assert set(OPERATIONAL) <= bases, "every operational metric has a panel"
