"""v2's schema: room kinds, durable members with roles, the room log's non-message events,
server-side sessions, admins and bans.

- rooms.kind: public, private or dm. rooms.last_seq is now the head of the room's whole log
  (messages and every other event); rooms.last_message_seq the seq of its newest message.
- members: one row per user and room, with a role and the user's read cursor.
- events: the room log's events other than messages (edit, delete, reaction, member); a
  message's event is its row in messages, so the log of a room is the union of both tables
  by (room_id, seq), and its seqs stay gapless across the two.
- sessions: every token names one; logout ends it (ended_at).
- users.admin, users.banned_at.

v1 data: each existing room stays public; its members are the users who posted in it, its
owner the first of them (by seq), each with the read cursor at their own newest message.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("admin", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("users", sa.Column("banned_at", TS, nullable=True))

    op.add_column(
        "rooms", sa.Column("kind", sa.Text(), server_default=sa.text("'public'"), nullable=False)
    )
    op.add_column(
        "rooms",
        sa.Column("last_message_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_rooms_kind_known"), "rooms", "kind IN ('public', 'private', 'dm')"
    )
    op.execute("UPDATE rooms SET last_message_seq = last_seq")

    op.create_table(
        "members",
        sa.Column("room_id", sa.BigInteger(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), server_default=sa.text("'member'"), nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("last_read_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "username", name="pk_members"),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name="fk_members_room_id_rooms", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["username"], ["users.username"], name="fk_members_username_users", ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "role IN ('owner', 'moderator', 'member')", name=op.f("ck_members_role_known")
        ),
    )
    # A user's rooms: GET /api/rooms, the user's stream, search's room set.
    op.create_index("ix_members_username", "members", ["username", "room_id"])

    op.create_table(
        "events",
        sa.Column("room_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        # Who did it: an edit's author, a delete's `by`, a reaction's `user`, a member
        # event's `by`.
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("target", sa.BigInteger(), nullable=True),  # the message changed
        sa.Column("subject", sa.Text(), nullable=True),  # a member event's `user`
        sa.Column("op", sa.Text(), nullable=True),  # a member event's `event`, a reaction's op
        sa.Column("role", sa.Text(), nullable=True),
        sa.Column("emoji", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "seq", name="pk_events"),
        sa.ForeignKeyConstraint(["room_id"], ["rooms.id"], name="fk_events_room_id_rooms"),
        sa.CheckConstraint("seq > 0", name=op.f("ck_events_seq_positive")),
        sa.CheckConstraint(
            "kind IN ('edit', 'delete', 'reaction', 'member')", name=op.f("ck_events_kind_known")
        ),
    )

    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("last_seen_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("ended_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.ForeignKeyConstraint(
            ["username"], ["users.username"], name="fk_sessions_username_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_sessions_username", "sessions", ["username"])
    # Every instance polls for sessions ended since its last look.
    op.create_index(
        "ix_sessions_ended_at",
        "sessions",
        ["ended_at"],
        postgresql_where=sa.text("ended_at IS NOT NULL"),
    )

    # v1 rooms: their posters become members, the first poster the owner; each poster's
    # read cursor at their own newest message.
    op.execute(
        """
        INSERT INTO members (room_id, username, role, created_at, last_read_seq)
        SELECT m.room_id, m.author,
               CASE WHEN min(m.seq) = first.seq THEN 'owner' ELSE 'member' END,
               min(m.created_at), max(m.seq)
        FROM messages m
        JOIN (SELECT room_id, min(seq) AS seq FROM messages GROUP BY room_id) AS first
          ON first.room_id = m.room_id
        GROUP BY m.room_id, m.author, first.seq
        """
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_ended_at", table_name="sessions")
    op.drop_index("ix_sessions_username", table_name="sessions")
    op.drop_table("sessions")
    op.drop_table("events")
    op.drop_index("ix_members_username", table_name="members")
    op.drop_table("members")
    op.drop_constraint(op.f("ck_rooms_kind_known"), "rooms", type_="check")
    op.drop_column("rooms", "last_message_seq")
    op.drop_column("rooms", "kind")
    op.drop_column("users", "banned_at")
    op.drop_column("users", "admin")
