"""The database half of `/readyz`: the answer to a ping, asked at most once per interval.

Probes may come in floods (every balancer, every orchestrator, anyone who finds the URL); a
round trip to PostgreSQL per probe would let them load the database. So the result of the
last ping is kept with the time it was started; a probe within `interval` of that start gets
it, and probes that arrive while a ping is in flight wait for that same ping instead of
starting their own. At most one ping starts per interval, and the answer is never older than
the interval plus one ping's timeout.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable


class DatabaseCheck:
    def __init__(
        self,
        ping: Callable[[], Awaitable[bool]],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping
        self._interval = interval
        self._clock = clock
        self._started_at = -math.inf
        self._ok = False
        self._pinging: asyncio.Task[bool] | None = None

    async def ok(self) -> bool:
        """Whether the database answered the latest ping (starting one if the last started
        `interval` ago or more)."""
        if self._pinging is None and self._clock() - self._started_at >= self._interval:
            self._started_at = self._clock()
            self._pinging = asyncio.create_task(self._refresh())
        if self._pinging is not None:
            # Shielded: a probe whose client went away must not cancel the others' ping.
            return await asyncio.shield(self._pinging)
        return self._ok

    async def _refresh(self) -> bool:
        try:
            self._ok = await self._ping()
        except Exception:
            self._ok = False  # a check that fails is a database that did not answer
        finally:
            self._pinging = None
        return self._ok
