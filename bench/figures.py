"""What each measurement produces, and percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .largeroom import LargeRoom
    from .resync import Resync


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks; 0 for no
    values (the count, n, tells)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def size_label(rows: int) -> str:
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows >= 1000 and rows % 1000 == 0:
        return f"{rows // 1000}k"
    return str(rows)


@dataclass(frozen=True)
class Percentiles:
    n: int
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        ordered = sorted(values)
        return cls(
            n=len(ordered),
            p50=round(percentile(ordered, 50), 3),
            p90=round(percentile(ordered, 90), 3),
            p95=round(percentile(ordered, 95), 3),
            p99=round(percentile(ordered, 99), 3),
            max=round(ordered[-1], 3) if ordered else 0.0,
        )


@dataclass
class Throughput:
    """Messages stored (and acknowledged) per second by one write path."""

    label: str
    per_second: float
    count: int
    seconds: float
    setup: str
    errors: dict[str, int] = field(default_factory=dict)
    errors_in_window: dict[str, int] = field(default_factory=dict)
    latency_ms: Percentiles | None = None  # send to ack (or commit, for raw asyncpg)
    deliveries_per_second: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    server: dict[str, float] = field(default_factory=dict)  # from the instances' /metrics
    notes: list[str] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)  # per_second of every repeat
    # the `cpu` entries that are the system under test; empty: the instances or the naive
    # app, and PostgreSQL
    servers: tuple[str, ...] = ()

    @property
    def server_cpu_us_per_message(self) -> float:
        """CPU time the servers (instances or naive app, and PostgreSQL) spent per message
        stored: less disturbed by a shared machine than the rate itself."""
        if self.servers:
            servers = sum(self.cpu.get(k, 0.0) for k in self.servers)
        else:
            servers = sum(v for k, v in self.cpu.items() if k.startswith(("instance", "naive-")))
            servers += self.cpu.get("postgres", 0.0)
        return round(servers / self.per_second * 1e6, 1) if self.per_second and servers else 0.0


@dataclass
class Fanout:
    offered_per_second: float
    sent: int
    receivers: int
    rooms: int
    seconds: float
    cross_instance_ms: Percentiles
    same_instance_ms: Percentiles
    ack_ms: Percentiles  # the senders' send to ack
    deliveries_per_second: float
    expected_deliveries_per_second: float
    missing: int  # receptions expected but not seen within the grace time
    closed: dict[str, int]
    errors: dict[str, int]
    cpu: dict[str, float] = field(default_factory=dict)
    server: dict[str, float] = field(default_factory=dict)  # from the instances' /metrics
    # every repeat's cross-instance p99 (median_fanout), or every receipt's (median_latency)
    runs: list[float] = field(default_factory=list)
    all_ms: Percentiles | None = None  # every receipt, either instance

    @property
    def server_cores(self) -> float:
        """Cores the servers used while measuring: every process measured by name but the
        load generator (the instances and PostgreSQL; a peer's processes and Redis)."""
        return sum(v for k, v in self.cpu.items() if k not in _NOT_SERVERS)

    @property
    def deliveries_per_cpu_second(self) -> float:
        cores = self.server_cores
        return round(self.deliveries_per_second / cores, 1) if cores > 0 else 0.0

    @property
    def cpu_us_per_delivery(self) -> float:
        per = self.deliveries_per_cpu_second
        return round(1e6 / per, 2) if per > 0 else 0.0


_NOT_SERVERS = {"bench client", "interrupts", "rest of the machine", "machine"}


def median_run(runs: list[Throughput]) -> Throughput:
    """The run with the median rate (the lower middle one for an even count), with every
    run's rate in `runs`."""
    ordered = sorted(runs, key=lambda t: t.per_second)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.runs = [t.per_second for t in runs]
    return chosen


def median_fanout(runs: list[Fanout]) -> Fanout:
    """The run with the median cross-instance p99, with every run's p99 in `runs`."""
    ordered = sorted(runs, key=lambda f: f.cross_instance_ms.p99)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.runs = [f.cross_instance_ms.p99 for f in runs]
    return chosen


def median_latency(runs: list[Fanout]) -> Fanout:
    """The run with the median p99 over every receipt (`all_ms`), with every run's in
    `runs`."""

    def p99(f: Fanout) -> float:
        return f.all_ms.p99 if f.all_ms is not None else 0.0

    ordered = sorted(runs, key=p99)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.runs = [p99(f) for f in runs]
    return chosen


@dataclass
class JoinTimes:
    """Socket open to `joined`, sequential joins alternating between the instances."""

    what: str
    joins: int
    replayed_per_join: int
    total_ms: Percentiles
    handshake_ms: Percentiles  # TCP connect + WebSocket upgrade
    join_ms: Percentiles  # join frame to joined, replay included


@dataclass
class Memory:
    sockets: int
    compression: bool
    before_kib: int
    after_kib: int
    per_socket_kib: float
    connect_seconds: float


@dataclass
class Transport:
    """One WebSocket implementation and event loop of uvicorn, on an instance of its own: idle
    memory once, delivery cost over several runs."""

    ws: str  # CHAT_WS_IMPLEMENTATION
    loop: str  # CHAT_EVENT_LOOP
    chosen: bool  # the service's default
    sockets: int  # idle, authenticated and joined, no deflate
    before_kib: int
    after_kib: int
    per_socket_kib: float
    receivers: int  # picows, one room, on the sender's instance
    offered_per_second: float  # messages sent/s, each to every receiver
    seconds: float  # per run
    runs: int  # delivery windows, interleaved with the other combinations'
    deliveries_per_second: float  # receipts of messages sent inside the windows
    cpu_us_per_delivery: float  # the instance's CPU time per receipt, median run
    cpu_us_per_delivery_runs: list[float]  # each run's, in the order they ran
    latency_ms: Percentiles  # send to receipt, every run's receipts pooled
    p99_ms_runs: list[float]  # each run's p99
    missing: int  # receipts expected but not seen within the grace time, all runs
    cpu: dict[str, float] = field(default_factory=dict)  # cores, the median run
    closed: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class History:
    rows: int
    other_rows: int
    load_seconds: float
    requests: int
    latency_ms: Percentiles
    plan: list[str]  # EXPLAIN (ANALYZE, BUFFERS) text
    node: str  # e.g. "Limit > Index Scan Backward using pk_messages"
    generic_node: str  # the same query as a generic prepared plan
    sql_ms: float  # execution time EXPLAIN ANALYZE reported
    # mean and p50/p99 estimated from the instances' request-duration histogram (coarse
    # buckets), without the client's overhead; empty when the instances do not export it
    server_ms: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # while the pages were requested


@dataclass
class SearchFigures:
    """GET /api/search over `rows` messages in `rooms` rooms, for a user in `member_rooms` of
    them (bench/search.py)."""

    rows: int
    rooms: int
    member_rooms: int
    member_messages: int
    load_seconds: float
    index_seconds: float
    index_mb: float
    latency_ms: dict[str, Percentiles]  # by kind of query: rare, common, cjk2
    plans: dict[str, list[str]] = field(default_factory=dict)  # how each kind was found
    sql_ms: dict[str, float] = field(default_factory=dict)  # p99 of Search.find in process


@dataclass
class Pages:
    """A peer's history pages: one room of `messages`, pages of 50 from random tokens."""

    messages: int
    load_seconds: float
    requests: int
    latency_ms: Percentiles
    cpu: dict[str, float] = field(default_factory=dict)


@dataclass
class SynapseResults:
    version: str
    variant: str  # bench/synapse.py VARIANTS
    configuration: list[str]  # what the variant sets, in words
    ingest: Throughput
    latency: Fanout  # every receipt in same_instance_ms and all_ms (one process)
    history: Pages
    packages: list[str]  # pip freeze of its venv


@dataclass
class SocketIoResults:
    version: str
    setup: str
    fanout: Fanout
    packages: list[str]


@dataclass
class ReadStateResults:
    """The room list of a user in `rooms` rooms, each with `unread_per_room` unread; sends
    to a room of `crowd_members` and to a room of two; the read cursor's write."""

    rooms: int
    unread_per_room: int
    mentions_per_room: int
    room_list_ms: Percentiles
    naive_count_ms: float  # the same unread counts by COUNT(*), in SQL alone (median of 3)
    round_trip_ms: Percentiles  # SELECT 1, the same run
    crowd_members: int
    send_crowd_ms: Percentiles  # send to ack
    send_pair_ms: Percentiles
    read_ms: Percentiles  # read to ack, the cursor moving each time
    ping_ms: Percentiles  # ping to pong on the same socket


@dataclass
class Results:
    ingest: Throughput | None = None
    ingest_mixed: Throughput | None = None
    reaction_storm: Throughput | None = None
    baseline_a: Throughput | None = None
    baseline_b: Throughput | None = None
    fanout: Fanout | None = None
    connect_replay: JoinTimes | None = None
    resume: JoinTimes | None = None
    resyncs: list[Resync] = field(default_factory=list)  # resume to converged, by events missed
    large_room: LargeRoom | None = None
    memory: list[Memory] = field(default_factory=list)
    transports: list[Transport] = field(default_factory=list)
    history: dict[str, History] = field(default_factory=dict)  # by size label, e.g. "1M"
    read_state: ReadStateResults | None = None
    search: dict[str, SearchFigures] = field(default_factory=dict)  # by size label
    ingest_unindexed: Throughput | None = None  # ingest with the search index dropped
    # the chat at the load the latency comparison with Synapse uses
    latency_peer_load: Fanout | None = None
    synapse: SynapseResults | None = None
    socketio: SocketIoResults | None = None
