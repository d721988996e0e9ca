"""The first realtime checks: one instance, one socket."""

from __future__ import annotations

import httpx

from tests.support import Instance, new_user, unique, ws_connect


async def test_send_is_acked_and_echoed(pair: tuple[Instance, Instance]) -> None:
    """A send is acknowledged after commit and comes back as a message frame."""
    a, _ = pair
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        user = await new_user(http)
    room = unique("r-")
    async with ws_connect(a.url, user.token) as ws:
        joined, replay = await ws.join(room)
        assert joined["last_seq"] == 0 and replay == []
        await ws.send(type="send", room=room, body="hello", client_id="c1", ref=7)
        ack, _ = await ws.expect("ack")
        assert ack["seq"] == 1 and ack["ref"] == 7 and ack["duplicate"] is False
