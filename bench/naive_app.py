"""Baseline B: the chat as the FastAPI documentation and broadcaster's README would write it.

One WebSocket per user and room. Each received message is stored with the SQLAlchemy ORM
(`session.add` + `commit`, one transaction per message), then published with
`broadcast.publish` on broadcaster's Postgres backend; every socket subscribed to the room's
channel forwards what it hears. Nothing is batched, nothing is locked, no seq is assigned.

Two small additions let the benchmark drive it like the real service: each stored message is
answered with `{"type": "ack", "ref": ...}`, and a failed publish (broadcaster shares one
connection between every publisher, FACTS.md) with `{"type": "error", "code": "publish"}`
instead of tearing the socket down, so that the failures are counted rather than hidden.

Run by the benchmark as `uvicorn bench.naive_app:app` with NAIVE_DATABASE_URL set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from broadcaster import Broadcast
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from sqlalchemy import BigInteger, DateTime, Text, func
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class NaiveMessage(Base):
    __tablename__ = "naive_messages"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    room: Mapped[str] = mapped_column(Text, index=True)
    author: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # id and created_at come back with the INSERT (RETURNING), not with a second query.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012


def sqlalchemy_url(url: str) -> str:
    return "postgresql+asyncpg://" + url.split("://", 1)[1]


async def create_schema(url: str) -> None:
    """Called by the benchmark once, before the app's processes start."""
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
    finally:
        await engine.dispose()


_URL = os.environ.get("NAIVE_DATABASE_URL", "postgresql://localhost/naive")
broadcast = Broadcast(_URL)
engine: AsyncEngine = create_async_engine(sqlalchemy_url(_URL))
Session = async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await broadcast.connect()
    try:
        yield
    finally:
        await broadcast.disconnect()
        await engine.dispose()


app = FastAPI(lifespan=lifespan)


def _dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _receive(websocket: WebSocket, room: str, user: str) -> None:
    channel = f"naive_{room}"
    async for text in websocket.iter_text():
        data: dict[str, Any] = json.loads(text)
        async with Session() as session:
            message = NaiveMessage(
                room=room, author=user, body=data["body"], client_id=data.get("client_id")
            )
            session.add(message)
            await session.commit()
        frame = {
            "type": "message",
            "room": room,
            "seq": message.id,
            "author": user,
            "body": message.body,
            "created_at": message.created_at.isoformat(),
            "client_id": message.client_id,
        }
        try:
            await broadcast.publish(channel=channel, message=_dumps(frame))
        except Exception as error:
            reply = {"type": "error", "code": "publish", "detail": str(error)}
            await websocket.send_text(_dumps({**reply, "ref": data.get("ref")}))
            continue
        await websocket.send_text(_dumps({"type": "ack", "ref": data.get("ref")}))


async def _forward(websocket: WebSocket, room: str) -> None:
    async with broadcast.subscribe(channel=f"naive_{room}") as subscriber:
        while True:  # until the subscription ends (Unsubscribed) or the socket closes
            event = await subscriber.get()
            await websocket.send_text(event.message)


@app.websocket("/ws")
async def chat(websocket: WebSocket, room: str, user: str) -> None:
    await websocket.accept()
    forward = asyncio.create_task(_forward(websocket, room))
    try:
        await _receive(websocket, room, user)
    except WebSocketDisconnect:
        pass
    finally:
        forward.cancel()
        with contextlib.suppress(BaseException):
            await forward
