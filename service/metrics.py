"""Prometheus metrics. Process-wide, like the process they describe."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("chat_connections", "Open WebSocket connections")
JOINED_ROOMS = Gauge("chat_joined_rooms", "Room memberships of open connections")
LOCAL_ROOMS = Gauge("chat_local_rooms", "Rooms with at least one local member")
MESSAGES_IN = Counter("chat_messages_in_total", "Messages accepted for storage", ["via"])
MESSAGES_OUT = Counter("chat_messages_out_total", "Message frames queued to sockets")
ACKS = Counter("chat_acks_total", "Acks sent", ["duplicate"])
ERRORS = Counter("chat_errors_total", "Error frames sent, by code", ["code"])
CLOSES = Counter("chat_closes_total", "Sockets closed by the server, by close code", ["code"])
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
FANOUT_LAG_SECONDS = Histogram(
    "chat_fanout_lag_seconds",
    "From a message's commit to its frame being queued on this instance",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
GAP_FILLS = Counter("chat_gap_fills_total", "Messages read back from the database to fill gaps")
LISTENER_RECONNECTS = Counter("chat_listener_reconnects_total", "Fan-out listener rebuilds")
LISTENER_HEALTHY = Gauge("chat_listener_healthy", "1 while the fan-out listener hears itself")
SEND_QUEUE_DEPTH = Histogram(
    "chat_send_queue_depth",
    "Frames waiting for a socket when a frame is queued",
    buckets=(0, 1, 5, 10, 50, 100, 500, 1000),
)
