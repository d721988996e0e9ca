"""SIGTERM one of two instances during a send storm: it stops taking sockets, answers every
send it has read (an ack once committed, or an error), closes its sockets with 1012 and exits
in bounded time; its clients resume on the other instance with nothing lost or doubled."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from tests.faults.conftest import MakeUsers
from tests.faults.harness import Receiver, Sender, Storm, check_log
from tests.support import Instance, unique

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

EXIT_WITHIN = 15.0


async def _exit_code(instance: Instance, timeout: float) -> int:
    assert instance.proc is not None
    async with asyncio.timeout(timeout):
        while (code := instance.proc.poll()) is None:
            await asyncio.sleep(0.05)
    return code


async def test_sigterm_during_a_send_storm(
    start_instances: Callable[..., Awaitable[list[Instance]]],
    users: MakeUsers,
    database_url: str,
) -> None:
    a, b = await start_instances(2)
    people = await users(8)
    room = unique("term-")
    # Unpaced, 32 in flight each: SIGTERM finds sends queued, committing and unacked.
    storm = Storm.across(database_url, people, room, a.url, b.url, count=800)
    senders, receivers = storm.senders, storm.receivers
    storm.start()
    await storm.joined()
    await storm.wait_acked(storm.total // 3)
    a.signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        code = await _exit_code(a, EXIT_WITHIN)
    finally:
        exited_in = time.monotonic() - signalled
        print(f"\nSIGTERM: exited in {exited_in:.1f}s; log tail:\n{a.log_tail(15)}")
    last = await storm.finish()
    print(f"SIGTERM: {last[room]} messages, exit code {code}")
    print(storm.summary())
    assert code == 0, a.log_tail()
    assert last[room] == storm.total
    on_a: list[Sender | Receiver] = [*senders[::2], *receivers[::2]]
    on_b: list[Sender | Receiver] = [*senders[1::2], *receivers[1::2]]
    for client in on_a:
        assert Counter(client.close_codes) == {1012: 1}, storm.summary()
    assert all(not c.close_codes for c in on_b), storm.summary()
    # A send stored but not acked before the close would come back `duplicate` on retry:
    # none did, so every send A took was answered on its own connection.
    assert all(not s.duplicate_acks for s in senders), storm.summary()
    for instance in (a, b):
        check_log(instance.log_path, senders)
