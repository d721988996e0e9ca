"""The schema, as SQLAlchemy models. Alembic revisions create it; nothing calls create_all."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Text,
    Uuid,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    username: Mapped[str] = mapped_column(Text, primary_key=True)
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    admin: Mapped[bool] = mapped_column(Boolean, server_default=false())
    banned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Room(Base):
    """A room and its log's counter: `last_seq` is the seq of the newest event of its log (0
    when empty), `last_message_seq` that of its newest message.

    Writers lock this row to assign seqs, which is what makes seqs gapless and in commit order.
    """

    __tablename__ = "rooms"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_message_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(Text, server_default=text("'public'"))
    last_message_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Messages ever posted (deleted and pruned ones included): the last message's `n`.
    message_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # The highest `n` a prune removed: messages at or below it are gone for every count.
    pruned_n: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    __table_args__ = (
        CheckConstraint("last_seq >= 0", name="last_seq_nonnegative"),
        CheckConstraint("kind IN ('public', 'private', 'dm')", name="kind_known"),
    )


class Member(Base):
    """A durable membership: `role`, and the user's read cursor in the room's log."""

    __tablename__ = "members"

    room_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("rooms.id", ondelete="CASCADE"), primary_key=True
    )
    username: Mapped[str] = mapped_column(
        Text, ForeignKey("users.username", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(Text, server_default=text("'member'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_read_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # The messages at or below the cursor (the `n` of the last of them): unread counts are
    # arithmetic on it (readstate.py).
    last_read_n: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # The mentions of the member above the cursor (readstate.py keeps it).
    unread_mentions: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    __table_args__ = (
        Index("ix_members_username", "username", "room_id"),
        CheckConstraint("role IN ('owner', 'moderator', 'member')", name="role_known"),
    )


class Event(Base):
    """An event of a room's log other than a message (a message's event is its row in
    `messages`): the log is both tables by (room_id, seq), gapless across them."""

    __tablename__ = "events"

    room_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("rooms.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text)
    target: Mapped[int | None] = mapped_column(BigInteger)
    subject: Mapped[str | None] = mapped_column(Text)
    op: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str | None] = mapped_column(Text)
    emoji: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    count: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("seq > 0", name="seq_positive"),
        CheckConstraint("kind IN ('edit', 'delete', 'reaction', 'member')", name="kind_known"),
        # A delete erases the bodies of its target's edits.
        Index(
            "ix_events_room_id_target", "room_id", "target", postgresql_where=text("kind = 'edit'")
        ),
    )


class Session(Base):
    """A login: every token names one, and is refused once it has ended."""

    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    username: Mapped[str] = mapped_column(
        Text, ForeignKey("users.username", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    user_agent: Mapped[str | None] = mapped_column(Text)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_sessions_ended_at", "ended_at", postgresql_where=text("ended_at IS NOT NULL")),
    )


class Message(Base):
    """A message; `(room_id, seq)` is its identity and the only order that matters."""

    __tablename__ = "messages"

    room_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("rooms.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    author: Mapped[str] = mapped_column(Text, ForeignKey("users.username"))
    body: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    reply_to: Mapped[int | None] = mapped_column(BigInteger)
    edited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # The seq of the latest event that changed it; 0 stands for its own seq.
    version: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # [{"emoji", "count"}] in order of first use; NULL when there are none.
    reactions: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    # Its ordinal among its room's messages (1, 2, ...), for unread counts (readstate.py);
    # NULL only for rows written around the service (a bench's fill).
    n: Mapped[int | None] = mapped_column(BigInteger)
    # The current body's words for search (service/search.py); NULL once deleted.
    search: Mapped[str | None] = mapped_column(TSVECTOR)

    __table_args__ = (
        # Deleted messages above a read cursor: the correction to an unread count.
        Index("ix_messages_deleted", "room_id", "seq", postgresql_where=text("deleted")),
        Index("ix_messages_search", "search", postgresql_using="gin"),
        # Idempotency: a retried send finds its original through this index.
        Index(
            "uq_messages_room_author_client_id",
            "room_id",
            "author",
            "client_id",
            unique=True,
            postgresql_where=text("client_id IS NOT NULL"),
        ),
        CheckConstraint("seq > 0", name="seq_positive"),
        CheckConstraint(
            "client_id IS NULL OR char_length(client_id) BETWEEN 1 AND 64",
            name="client_id_length",
        ),
    )


class Reaction(Base):
    """`username` reacted to message `seq` with `emoji`."""

    __tablename__ = "reactions"

    room_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    emoji: Mapped[str] = mapped_column(Text, primary_key=True)
    username: Mapped[str] = mapped_column(Text, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Mention(Base):
    """Message `seq` of a room (not a dm) mentions member `username` in its current text
    (sql/mentioned.sql); a delete removes the row, an edit rewrites the message's rows."""

    __tablename__ = "mentions"

    room_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    username: Mapped[str] = mapped_column(Text, primary_key=True)

    # Counting a user's mentions above a read cursor.
    __table_args__ = (Index("ix_mentions_username", "username", "room_id", "seq"),)


class WriteBatch(Base):
    """What one writer batch stored (service/sql/post_messages.sql), kept for a few minutes
    so a writer whose reply was lost can read the outcome back."""

    __tablename__ = "write_batches"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    seqs: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    repeated: Mapped[list[bool]] = mapped_column(ARRAY(Boolean))
    codes: Mapped[list[str | None]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Instance(Base):
    """A running service instance; its heartbeat keeps its presence rows alive."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Presence(Base):
    """User `username` has at least one connection on `instance_id` joined to `room_id`."""

    __tablename__ = "presence"

    room_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("rooms.id", ondelete="CASCADE"), primary_key=True
    )
    username: Mapped[str] = mapped_column(Text, primary_key=True)
    instance_id: Mapped[str] = mapped_column(
        Text, ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    __table_args__ = (Index("ix_presence_instance_id", "instance_id"),)
