"""The benchmark runs end to end and reports a number for every figure.

Not a timed assertion: `--smoke` uses tiny sizes on whatever machine runs the suite; this only
checks that every scenario and baseline works and writes its figures.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import PROJECT

EXPECTED = {
    "ingest_msgs_per_s",
    "baseline_a_msgs_per_s",
    "baseline_b_msgs_per_s",
    "ingest_vs_baseline_a",
    "ingest_vs_baseline_b",
    "fanout_p50_ms",
    "fanout_p95_ms",
    "fanout_p99_ms",
    "fanout_deliveries_per_s",
    "connect_replay_median_ms",
    "resume_median_ms",
    "idle_kib_per_socket_deflate",
    "idle_kib_per_socket_plain",
    "history_10k_p50_ms",
    "history_10k_p99_ms",
    "room_list_p50_ms",
    "room_list_p99_ms",
    "room_list_naive_count_ms",
    "pg_round_trip_p50_ms",
    "send_crowd_p50_ms",
    "send_pair_p50_ms",
    "read_cursor_p50_ms",
    "read_cursor_p99_ms",
    "ping_p50_ms",
    "ingest_unindexed_msgs_per_s",
    "large_room_p50_ms",
    "large_room_p99_ms",
    "large_room_deliveries_per_s",
    "large_room_p99_vs_fanout",
    "resume_converged_100_p50_ms",
    "resume_converged_100_rest_load_p50_ms",
    "resume_converged_1050_p50_ms",
    "resume_converged_1050_rest_load_p50_ms",
}
EXPECTED |= {
    f"search_10k_{kind}_{q}_ms" for kind in ("rare", "common", "cjk2") for q in ("p50", "p99")
}
# Every WebSocket implementation and event loop the service can run on (bench/scenarios.py).
TRANSPORTS = [
    (ws, loop)
    for loop in ("uvloop", "asyncio")
    for ws in ("websockets-sansio", "websockets", "wsproto")
]
EXPECTED |= {
    f"transport_{ws}_{loop}_{figure}"
    for ws, loop in TRANSPORTS
    for figure in (
        "kib_per_socket",
        "cpu_us_per_delivery",
        "deliveries_per_s",
        "p50_ms",
        "p99_ms",
    )
}


@pytest.mark.timeout(600)
def test_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    # The suite's own server, when it has one, serves the benchmark too (its own database).
    if os.environ.get("CHAT_TEST_DATABASE_URL"):
        env["CHAT_BENCH_DATABASE_URL"] = os.environ["CHAT_TEST_DATABASE_URL"]
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "ingest" in result.stdout
    data = json.loads((tmp_path / "latest.json").read_text())
    figures = data["figures"]
    assert set(figures) >= EXPECTED, sorted(EXPECTED - set(figures))
    for name, value in figures.items():
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (name, value)
    assert data["machine"]["cores"] > 0 and data["postgres"]["version"]
    assert "pk_messages" in data["details"]["history"]["10k"]["node"]
    # The searcher reads the 50 rooms of this size and no others (counted from `members`).
    assert data["details"]["search"]["10k"]["member_rooms"] == 50
    # How each kind of search was found (the walk or the GIN index: service/search.py): the
    # smoke data's common words mostly by walking, the Chinese pairs by the index.
    ways = {kind: lines[0] for kind, lines in data["details"]["search"]["10k"]["plans"].items()}
    found = {}
    for kind, line in ways.items():
        counts = re.search(r"(\d+) queries: walk (\d+), index (\d+)", line)
        assert counts is not None, line
        total, walked, indexed = map(int, counts.groups())
        assert total > 0 and walked + indexed == total, line
        found[kind] = walked, indexed
    assert found["common"][0] > 0 and found["cjk2"][1] > 0, ways
    # And the slowest queries of each kind, each with how it was found.
    for kind, lines in data["details"]["search"]["10k"]["plans"].items():
        slowest = re.findall(
            r"'[^']+' (?:walk|index), [\d,]+ rows in \d+ rounds, [\d.]+ ms", lines[1]
        )
        assert lines[1].startswith("q=... slowest: ") and len(slowest) == 5, (kind, lines)
    transports = data["details"]["transports"]
    assert [(t["ws"], t["loop"]) for t in transports] == TRANSPORTS
    assert [t["missing"] for t in transports] == [0] * len(TRANSPORTS)
    assert data["details"]["large_room"]["ours"]["missing"] == 0
    # Every resume converged (checked in the run); 1,050 missed is past the resume limit.
    assert [r["truncated"] for r in data["details"]["resyncs"]] == [False, True]
    assert "WebSocket implementation and event loop" in result.stdout
    assert (tmp_path / "latest.png").stat().st_size > 0
    # The peers are measured only when asked for (--peers): they need venvs of their own.
    assert data["details"]["synapse"] is None and data["details"]["socketio"] is None


PEER_FIGURES = {
    "synapse_msgs_per_s",
    "synapse_server_cpu_us_per_msg",
    "synapse_p50_ms",
    "synapse_p99_ms",
    "synapse_history_p50_ms",
    "synapse_history_p99_ms",
    "peer_load_p50_ms",
    "peer_load_p99_ms",
    "ingest_vs_synapse_acked_messages_ratio",
    "send_receipt_p99_at_10_msg_s_vs_synapse_sync_ratio",
    "socketio_deliveries_per_s",
    "socketio_p99_ms",
    "socketio_deliveries_per_cpu_s",
    "fanout_deliveries_per_cpu_s",
    "deliveries_per_server_cpu_second_vs_socket_io_we_persist_it_does_not_ratio",
}


# Opt-in, deselected by default (pyproject's addopts): it builds Synapse's and
# python-socketio's venvs under bench/.peers/ from PyPI on first use (minutes), then takes
# about a minute. Run it with `pytest -m peers tests/test_bench_smoke.py`.
@pytest.mark.peers
@pytest.mark.timeout(1500)
def test_smoke_run_with_peers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    if os.environ.get("CHAT_TEST_DATABASE_URL"):
        env["CHAT_BENCH_DATABASE_URL"] = os.environ["CHAT_TEST_DATABASE_URL"]
    argv = ["--smoke", "--peers", "--only", "ingest,fanout,synapse,socketio"]
    result = subprocess.run(
        [sys.executable, "-m", "bench", *argv, "--out", str(tmp_path)],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1400,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    figures = data["figures"]
    assert set(figures) >= PEER_FIGURES, sorted(PEER_FIGURES - set(figures))
    for name, value in figures.items():
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (name, value)
    details = data["details"]
    assert details["synapse"]["latency"]["missing"] == 0
    assert details["synapse"]["ingest"]["errors"] == {}
    assert details["socketio"]["fanout"]["missing"] == 0
    assert any(p.startswith("matrix-synapse==") for p in details["synapse"]["packages"])
    assert "vs Synapse" in result.stdout and "vs socket.io" in result.stdout
