"""Logging: JSON lines in production (`chat serve`), plain text in `chat dev`.

Every line logged while a request or a socket is being served carries its id: `RequestContext`
(a pure ASGI middleware) puts `request_id` (HTTP) or `conn_id` (WebSocket) into a context
variable, and `ContextFilter` copies the variable's fields onto each record. Tasks started
while serving inherit the context, as asyncio tasks copy it when they are created.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics

# Attributes every record has; the others (`extra=`, the context) are the record's fields.
# uvicorn adds `color_message`, the same message with terminal colours: never worth a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
_TOKEN = re.compile(r"((?:token|access_token)=)[^&\s\"']+")

_context: ContextVar[Mapping[str, object]] = ContextVar(
    "chat_log_context", default=MappingProxyType({})
)


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Within the block, and in tasks started in it, every log record carries `fields`
    (added to those of an enclosing block)."""
    token = _context.set(MappingProxyType({**_context.get(), **fields}))
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Adds the fields of the current `log_context` to each record; a field passed with
    `extra=` keeps its own value."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


class RedactTokens(logging.Filter):
    """uvicorn logs a WebSocket's URL, and a query token is a credential: never log it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = _TOKEN.sub(r"\1[redacted]", message), ()
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Fields passed with `extra=` and those of the log context become top-level keys.
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """One line for a person: the message, then the record's fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = _fields(record)
        if fields:
            line += "  " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def configure(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactTokens())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log names every request; keep it, but in the same format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


# -- request and connection ids ------------------------------------------------------------

access_log = logging.getLogger("chat.access")

# An incoming X-Request-ID is kept only when it cannot forge log lines or flood them.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
# Probes and scrapes: frequent, and their outcome is in their own answer.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def new_id() -> str:
    return secrets.token_hex(8)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.fullmatch(text) else None
    return None


class RequestContext:
    """Pure ASGI middleware: a `request_id` for each HTTP request (the client's or nginx's
    X-Request-ID when it is sane, else a new one), echoed in the response's X-Request-ID; a
    `conn_id` for each WebSocket. Logs one access line per request or socket."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = _incoming_request_id(scope) or new_id()
        header = (b"x-request-id", request_id.encode("latin-1"))
        status = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                method = scope["method"] if scope["method"] in _METHODS else "OTHER"
                metrics.HTTP_REQUESTS.labels(method, str(status)).inc()
                metrics.HTTP_SECONDS.observe(elapsed)
                path = scope["path"]
                if path not in _QUIET_PATHS:
                    # The path only: a query string may hold a credential.
                    access_log.info(
                        "%s %s %d",
                        method,
                        path,
                        status,
                        extra={"status": status, "duration_ms": round(elapsed * 1000, 2)},
                    )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        fields: dict[str, object] = {"conn_id": new_id()}
        request_id = _incoming_request_id(scope)
        if request_id is not None:
            fields["request_id"] = request_id  # nginx's, to match its access log
        accepted = False
        code: int | None = None
        closed_by = ""
        started = time.perf_counter()

        async def watch_send(message: Message) -> None:
            nonlocal accepted, code, closed_by
            kind = message["type"]
            if kind == "websocket.accept":
                accepted = True
            elif kind == "websocket.close" and code is None:
                code, closed_by = message.get("code", 1000), "server"
            await send(message)

        async def watch_receive() -> Message:
            nonlocal code, closed_by
            message = await receive()
            if message["type"] == "websocket.disconnect" and code is None:
                code, closed_by = message.get("code", 1005), "client"
            return message

        with log_context(**fields):
            try:
                await self.app(scope, watch_receive, watch_send)
            finally:
                elapsed = time.perf_counter() - started
                access_log.info(
                    "websocket %s %s",
                    "closed" if accepted else "refused",
                    code,
                    extra={
                        "close_code": code,
                        "closed_by": closed_by or None,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
