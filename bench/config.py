"""How big each measurement is, per profile (`--smoke`, default, `--full`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

# About 60 characters, like the bodies FACTS.md measured with.
BODY_TEXT = "lorem ipsum dolor sit amet, consectetur adipiscing elit"


@dataclass(frozen=True)
class Profile:
    name: str
    # ingest and the two baselines: senders pipelining into a few rooms
    ingest_senders: int = 32  # sockets, half on each instance
    ingest_rooms: int = 8
    # True: every room has senders on both instances (their writers contend for the room's
    # row lock); False: each room's senders are all on one instance (needs an even count)
    ingest_rooms_span_instances: bool = True
    ingest_window: int = 64  # unacknowledged sends per socket
    ingest_seconds: float = 10.0
    warmup_seconds: float = 1.0
    baseline_connections: int = 16
    # fan-out: paced senders, receivers on both instances
    fanout_rate: float = 1000.0  # offered messages/s, all rooms together
    fanout_receivers: int = 200
    fanout_rooms: int = 10
    fanout_seconds: float = 10.0
    # joins
    joins: int = 200
    replay_room_messages: int = 200
    resumes: int = 20
    resume_messages: int = 1000
    # memory
    idle_sockets: int = 2000
    idle_rooms: int = 20
    rss_settle_seconds: float = 2.0  # before each RSS reading (the joins' work finishes)
    # transports: every WebSocket implementation and event loop, each on an instance of its
    # own: idle sockets (RSS), then picows receivers in one room fed by one paced sender
    transport_sockets: int = 1000
    transport_receivers: int = 100
    transport_rate: float = 200.0  # messages/s, each delivered to every receiver
    transport_seconds: float = 5.0
    # history
    history_sizes: tuple[int, ...] = (1_000_000,)
    history_requests: int = 2000  # a p99 of 500 samples is the 5th worst: too noisy
    # read state: a user in `unread_rooms` rooms of `unread_messages` unread each; a send
    # to a room of `crowd_members`; `read_state_samples` sends and cursor writes
    unread_rooms: int = 200
    unread_messages: int = 10_000
    unread_requests: int = 1000
    crowd_members: int = 5000
    read_state_samples: int = 500
    # a large room (bench/largeroom.py): one room, receivers half on each instance, one
    # paced sender (the 2,000 receivers at 10 msg/s)
    large_room_receivers: int = 2000
    large_room_rate: float = 10.0
    large_room_seconds: float = 10.0
    # resume to converged state (bench/resync.py): a room of `resync_history` events, then
    # each count of missed events; `resync_clients` resumes (and REST loads) after each
    resync_history: int = 500
    resync_events: tuple[int, ...] = (1000, 10_000)
    resync_clients: int = 10
    # the peers (python -m bench --peers; on by default, off with --smoke)
    peers: bool = True
    # Synapse: senders (one send in flight each) over rooms. 64 gave it the most here: 32
    # acked ~15 % fewer (it persists a room's queued events together), 128 no more than 64
    # with twice the latency
    synapse_senders: int = 64
    synapse_rooms: int = 8
    synapse_ingest_seconds: float = 10.0
    # one room this long, paged back from random tokens (the chat's history is measured at
    # the same size too, for the ratio)
    synapse_history_messages: int = 1000
    synapse_history_requests: int = 500
    # send-to-receipt at a load Synapse sustains (it saturates at a few dozen messages/s
    # here), for the chat and Synapse alike: paced senders, one per room, receivers per room
    peer_latency_rate: float = 10.0
    peer_latency_rooms: int = 5
    peer_latency_receivers: int = 20
    peer_latency_seconds: float = 20.0
    # ingest, baseline A and the fan-out run this many times, interleaved, and so does each
    # transport's delivery window; the figure is the median run (a shared or noisy machine
    # disturbs single runs)
    repeats: int = 3
    # the whole run stops by itself after this
    budget_seconds: float = 1200.0

    @property
    def users_needed(self) -> int:
        transports = self.transport_sockets + self.transport_receivers + 1
        fanout = self.fanout_receivers + self.fanout_rooms
        large = self.large_room_receivers + 1
        return max(self.idle_sockets, fanout, self.joins, transports, large) + 64


DEFAULT = Profile(name="default")
FULL = replace(DEFAULT, name="full", history_sizes=(1_000_000, 10_000_000), budget_seconds=5400)
SMOKE = Profile(
    name="smoke",
    ingest_senders=8,
    ingest_rooms=4,
    ingest_window=16,
    ingest_seconds=2.0,
    warmup_seconds=0.5,
    baseline_connections=4,
    fanout_rate=200.0,
    fanout_receivers=20,
    fanout_rooms=4,
    fanout_seconds=2.0,
    joins=20,
    replay_room_messages=100,
    resumes=3,
    resume_messages=1000,
    idle_sockets=200,
    idle_rooms=4,
    rss_settle_seconds=0.5,
    transport_sockets=30,
    transport_receivers=10,
    transport_rate=50.0,
    transport_seconds=1.0,
    history_sizes=(10_000,),
    history_requests=50,
    unread_rooms=10,
    unread_messages=1000,
    unread_requests=30,
    crowd_members=200,
    read_state_samples=30,
    large_room_receivers=20,
    large_room_seconds=1.0,
    resync_history=50,
    resync_events=(100, 1050),  # past CHAT_RESUME_LIMIT (1,000): the truncated path
    resync_clients=2,
    peers=False,
    synapse_senders=8,
    synapse_rooms=2,
    synapse_ingest_seconds=2.0,
    synapse_history_messages=100,
    synapse_history_requests=20,
    peer_latency_rooms=2,
    peer_latency_receivers=4,
    peer_latency_seconds=2.0,
    repeats=1,
    budget_seconds=450,  # every scenario, tiny; room for a loaded machine
)
