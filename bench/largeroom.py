"""A large room (issue #18): one room of `large_room_receivers` receivers, half on each
instance, fed by one paced sender; next to the same run's fan-out (many small rooms, the
same machinery) and, with the peers on, python-socketio + Redis in the same large room."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace

from . import socketio_peer
from .config import Profile
from .figures import Fanout
from .scenarios import Bench, fanout


@dataclass
class LargeRoom:
    """The chat's large room and, when measured, socket.io's with the same shape."""

    ours: Fanout
    socketio: Fanout | None = None
    # the whole scenario, wall clock: the receivers' joins (each announced to every member
    # already there: presence frames grow with the square of the room), the wait until the
    # instances are quiet again, then warm-up, sends and drain
    seconds: float = 0.0


def _shape(p: Profile) -> Profile:
    """The profile with the fan-out's sizes set to the large room's."""
    return replace(
        p,
        fanout_rooms=1,
        fanout_receivers=p.large_room_receivers,
        fanout_rate=p.large_room_rate,
        fanout_seconds=p.large_room_seconds,
    )


async def large_room(bench: Bench, sio: socketio_peer.SocketIoRun | None = None) -> LargeRoom:
    """scenarios.fanout with one room of many receivers (sockets on both instances, the
    sender on instance a; cross-instance latency is the half on instance b), then the same
    on socket.io when it runs."""
    began = time.perf_counter()
    ours = await fanout(replace(bench, profile=_shape(bench.profile)))
    seconds = round(time.perf_counter() - began, 1)
    theirs = None
    if sio is not None:
        theirs = await socketio_peer.fanout(replace(sio, profile=_shape(sio.profile)))
    return LargeRoom(ours, theirs, seconds)


async def measure(bench: Bench, *, with_socketio: bool) -> LargeRoom:
    """The large room, and socket.io's (on instances of its own, started for it) when its
    peer is on."""
    async with contextlib.AsyncExitStack() as stack:
        sio = None
        if with_socketio:
            sio = await stack.enter_async_context(
                socketio_peer.running(bench.profile, bench.ui, bench.workdir)
            )
        return await large_room(bench, sio)
