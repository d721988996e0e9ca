"""Prometheus metrics. Process-wide, like the process they describe.

Counters and histograms are updated where things happen. Queue depths are read at scrape
time instead (`watch`), so the hot paths pay nothing for them: the app registers, at start,
two functions that read its writer's queue and its sockets' outgoing queues.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONNECTIONS = Gauge("chat_connections", "Open WebSocket connections")
JOINED_ROOMS = Gauge("chat_joined_rooms", "Room memberships of open connections")
LOCAL_ROOMS = Gauge("chat_local_rooms", "Rooms with at least one local member")
MESSAGES_IN = Counter("chat_messages_in_total", "Messages accepted for storage", ["via"])
MESSAGES_OUT = Counter("chat_messages_out_total", "Message frames queued to sockets")
ACKS = Counter("chat_acks_total", "Acks sent", ["duplicate"])
ERRORS = Counter("chat_errors_total", "Error frames sent, by code", ["code"])
CLOSES = Counter("chat_closes_total", "Sockets closed by the server, by close code", ["code"])
# Label children resolved once: `.labels()` per message was a visible share of an instance's
# CPU in profiles.
MESSAGES_IN_WS = MESSAGES_IN.labels("ws")
MESSAGES_IN_REST = MESSAGES_IN.labels("rest")
ACKS_FRESH = ACKS.labels("false")
ACKS_DUPLICATE = ACKS.labels("true")
WRITE_BATCH_SIZE = Histogram(
    "chat_write_batch_size",
    "Messages per write transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
COMMIT_SECONDS = Histogram(
    "chat_commit_seconds",
    "Write transaction latency",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
WRITE_OUTCOMES_UNKNOWN = Counter(
    "chat_write_outcomes_unknown",
    "Write batches whose reply was lost, recovered from their recorded outcome",
)
NOTIFICATIONS_REFUSED = Counter(
    "chat_notifications_refused",
    "Fan-out notifications dropped: not signed with this deployment's key, or malformed",
)
FANOUT_LAG_SECONDS = Histogram(
    "chat_fanout_lag_seconds",
    "From a message's commit to its frame being queued on this instance",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
GAP_FILLS = Counter("chat_gap_fills_total", "Messages read back from the database to fill gaps")
LISTENER_RECONNECTS = Counter("chat_listener_reconnects_total", "Fan-out listener rebuilds")
LISTENER_HEALTHY = Gauge("chat_listener_healthy", "1 while the fan-out listener hears itself")
PASSWORD_CHECKS = Counter(
    "chat_password_checks_total", "argon2 hashes and verifications run, by operation", ["op"]
)
PASSWORD_HASHES = PASSWORD_CHECKS.labels("hash")
PASSWORD_VERIFICATIONS = PASSWORD_CHECKS.labels("verify")
PASSWORD_BUSY = Counter(
    "chat_password_busy_total",
    "Password checks refused at once (503): every password thread busy and the queue full",
)
PASSWORD_QUEUE = Gauge("chat_password_queue_depth", "Password checks waiting for a password thread")
PASSWORD_QUEUE_PEAK = Gauge(
    "chat_password_queue_peak",
    "The most password checks that waited at once since the start (at most "
    "CHAT_PASSWORD_QUEUE_LIMIT)",
)
HTTP_REQUESTS = Counter(
    "chat_http_requests_total", "HTTP requests answered, by method and status", ["method", "status"]
)
HTTP_SECONDS = Histogram(
    "chat_http_request_seconds",
    "HTTP request latency, from the request to the end of the answer",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


# -- queue depths, read at scrape time ------------------------------------------------------

WriterDepth = Callable[[], int]
SendQueueDepths = Callable[[], Iterable[int]]


class _Queues(Collector):
    """The depths of the watched queues. Usually one app per process; tests run several,
    whose queues add up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # scrapes may come from another thread
        self._watched: dict[int, tuple[WriterDepth, SendQueueDepths]] = {}
        self._next = 0

    def add(self, writer: WriterDepth, sockets: SendQueueDepths) -> int:
        with self._lock:
            self._next += 1
            self._watched[self._next] = (writer, sockets)
            return self._next

    def remove(self, key: int) -> None:
        with self._lock:
            self._watched.pop(key, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            watched = list(self._watched.values())
        writer_depth = 0
        frames = 0
        longest = 0
        for writer, sockets in watched:
            writer_depth += writer()
            for depth in sockets():
                frames += depth
                longest = max(longest, depth)
        yield GaugeMetricFamily(
            "chat_writer_queue_depth",
            "Sends waiting for the batch writer (senders wait when it is full)",
            value=writer_depth,
        )
        yield GaugeMetricFamily(
            "chat_send_queue_frames",
            "Frames waiting in all sockets' outgoing queues",
            value=frames,
        )
        yield GaugeMetricFamily(
            "chat_send_queue_max_frames",
            "The longest socket outgoing queue, replies and replays included (a socket is "
            "closed with 1013 when its live frames pass CHAT_SEND_QUEUE_LIMIT)",
            value=longest,
        )


_QUEUES = _Queues()
REGISTRY.register(_QUEUES)


def watch(writer_depth: WriterDepth, send_queue_depths: SendQueueDepths) -> Callable[[], None]:
    """Report these queues at every scrape until the returned function is called.

    `writer_depth` returns the writer's queue length; `send_queue_depths` the length of each
    open socket's outgoing queue. Both run in the scrape, so they must be cheap and must not
    block."""
    key = _QUEUES.add(writer_depth, send_queue_depths)
    return lambda: _QUEUES.remove(key)
