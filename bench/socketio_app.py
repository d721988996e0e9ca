"""The python-socketio peer: a chat relay as its documentation writes it, fanned out across
instances by `AsyncRedisManager`; it stores nothing and guarantees nothing (a message emitted
while Redis or a socket hiccups is gone).

Run by the benchmark with the peer's own interpreter (bench/.peers/socketio-*/, see
peer_env.py), as a script: `python bench/socketio_app.py PORT REDIS_URL`. Events:
`join` (a room name; ack "joined"), `send` ({"room", "body"}; emitted to the room as
`message`, the sender included, as the chat service does; ack true).
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import socketio  # type: ignore[import-not-found,unused-ignore]
import uvicorn


def build(redis_url: str) -> Any:
    manager = socketio.AsyncRedisManager(redis_url)
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)

    @sio.event  # type: ignore[untyped-decorator,unused-ignore]
    async def join(sid: str, room: str) -> str:
        entered = sio.enter_room(sid, room)
        if inspect.isawaitable(entered):  # a coroutine in some 5.x releases
            await entered
        return "joined"

    @sio.event  # type: ignore[untyped-decorator,unused-ignore]
    async def send(sid: str, data: dict[str, Any]) -> bool:
        await sio.emit("message", data, room=data["room"])
        return True

    return socketio.ASGIApp(sio)


if __name__ == "__main__":
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    # The transport and loop the chat service runs on by default.
    uvicorn.run(
        build(redis_url),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        ws="websockets-sansio",
        loop="uvloop",
    )
