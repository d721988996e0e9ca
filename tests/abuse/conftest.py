"""Fixtures of the abuse suite: real `chat serve` processes on loopback, driven the way a
hostile client would, each scenario bounded in time and asserting the bound it is about.

Every instance a scenario starts is checked at the end for what must never appear in its
log: a traceback, an ERROR line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.faults.harness import check_log
from tests.support import Instance


@pytest.fixture
def hostile_instances(
    spawn: Callable[..., Instance],
) -> Iterator[Callable[..., Awaitable[list[Instance]]]]:
    """`await hostile_instances(n, database=None, **env)`: n fresh instances of this test's
    own, ready; at the end each is stopped and its log checked (no traceback, no ERROR)."""
    started: list[Instance] = []

    async def start(n: int, database: str | None = None, **env: Any) -> list[Instance]:
        instances = [spawn(database, **env) for _ in range(n)]
        started.extend(instances)
        for instance in instances:
            await instance.wait_ready()
        return instances

    yield start
    for instance in started:
        instance.stop()
    for instance in started:
        check_log(instance.log_path)
