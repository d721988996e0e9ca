"""The database commits a batch and the connection dies before the reply arrives: the
sender must be acked (the message is stored), never told `unavailable`.

The instance reaches PostgreSQL through a proxy of the test's own that cuts the connection
carrying the first chat_post_messages call at the first reply to its execution. PostgreSQL
flushes that reply only at the end of the implicit transaction, after the commit, so the
batch is committed and its reply lost: exactly the case the writer must read back."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from tests.support import Instance, metric, new_user, unique, ws_connect

# The reply to the call's execution: a DataRow of the writer's eleven columns (seqs,
# created, repeated, stored_bodies, payloads, joined, codes, c_seqs, c_codes, c_counts,
# stamp), then CommandComplete for one row. Replies to preparing it, and to the driver's own
# queries on the same connection, look otherwise.
_CALL_DONE = re.compile(rb"D.{4}\x00\x0b.*C\x00\x00\x00\x0dSELECT 1\x00", re.DOTALL)


class CuttingProxy:
    """TCP to PostgreSQL; the connection that first sends chat_post_messages is cut at
    the first reply to that call's execution."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.armed = True
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        watching = False

        async def to_server() -> None:
            nonlocal watching
            while data := await reader.read(65536):
                if self.armed and b"chat_post_messages" in data:
                    self.armed, watching = False, True
                up_writer.write(data)
                await up_writer.drain()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                if watching and _CALL_DONE.search(data):
                    self.cuts += 1
                    writer.transport.abort()
                    up_writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(to_server(), to_client())
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.transport.abort()


async def test_a_committed_batch_whose_reply_is_lost_is_acked(
    hostile_instances: Callable[..., Awaitable[list[Instance]]],
    database_url: str,
) -> None:
    parts = urlsplit(database_url)
    assert parts.port is not None
    proxy = CuttingProxy(parts.port)
    port = await proxy.start()
    try:
        credentials = parts.netloc.rpartition("@")[0]
        through_proxy = urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))
        (instance,) = await hostile_instances(1, database=through_proxy)
        room = unique("lost-")
        async with httpx.AsyncClient(base_url=instance.url, timeout=10) as http:
            user = await new_user(http)
        async with ws_connect(instance.url, user.token) as ws:
            await ws.join(room)
            await ws.send(type="send", room=room, body="committed", client_id="c1")
            answer = await ws.recv(timeout=30)
            while answer["type"] not in ("ack", "error"):
                answer = await ws.recv(timeout=30)
            assert answer["type"] == "ack", f"a stored message was answered {answer}"
            assert answer["client_id"] == "c1" and not answer["duplicate"], answer
            # Sent again, it is the same message: it was stored exactly once.
            await ws.send(type="send", room=room, body="committed", client_id="c1")
            again, _ = await ws.expect("ack", timeout=30)
            assert again["duplicate"] and again["seq"] == answer["seq"]
        assert proxy.cuts == 1
        assert await metric(instance, "chat_write_outcomes_unknown_total") == 1
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            stored = await conn.fetch(
                "SELECT m.seq, m.body FROM messages m JOIN rooms r ON r.id = m.room_id"
                " WHERE r.name = $1",
                room,
            )
        finally:
            await conn.close(timeout=5)
        assert [(r["seq"], r["body"]) for r in stored] == [(answer["seq"], "committed")]
    finally:
        await proxy.stop()
