"""kill -9 one of two instances during a send storm: its clients move to the other and
resume; nothing acked is lost, nothing is stored or delivered twice."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from tests.faults.conftest import MakeUsers
from tests.faults.harness import Receiver, Sender, Storm, check_log
from tests.support import Instance, unique

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_kill_9_during_a_send_storm(
    start_instances: Callable[..., Awaitable[list[Instance]]],
    users: MakeUsers,
    database_url: str,
) -> None:
    # A small resume limit: a client that missed more pages the rest back over REST.
    a, b = await start_instances(2, CHAT_RESUME_LIMIT=100)
    people = await users(8)
    room = unique("kill-")
    # Half the clients start on A (the victim), half on B; all may fail over to the other.
    # Unpaced, 32 in flight each: the kill finds sends committed but not yet acked.
    storm = Storm.across(database_url, people, room, a.url, b.url, count=900)
    senders, receivers = storm.senders, storm.receivers
    storm.start()
    await storm.joined()
    await storm.wait_acked(storm.total // 3)
    a.kill()
    killed_at = time.monotonic()
    last = await storm.finish()
    print(f"\nkill -9: {last[room]} messages, done {time.monotonic() - killed_at:.1f}s after")
    print(storm.summary())
    assert last[room] == storm.total
    on_a: list[Sender | Receiver] = [*senders[::2], *receivers[::2]]
    # The fault really hit: A's clients lost their sockets and came back through B.
    assert all(c.close_codes and c.connections >= 2 for c in on_a), storm.summary()
    for instance in (a, b):
        check_log(instance.log_path, senders)
