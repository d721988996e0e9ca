"""Initial schema: users, rooms, messages, and the presence registry.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
# Check constraint names are given whole, in op.f(): env.py hands Alembic the models' naming
# convention, which would otherwise prefix "ck_<table>_" a second time.


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("username", name="pk_users"),
    )
    op.create_table(
        "rooms",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("last_message_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rooms"),
        sa.UniqueConstraint("name", name="uq_rooms_name"),
        sa.CheckConstraint("last_seq >= 0", name=op.f("ck_rooms_last_seq_nonnegative")),
    )
    # Every commit of messages updates its rooms' counters: keep those updates HOT (no
    # index on the columns they change, and free space in the page for the new version).
    op.execute("ALTER TABLE rooms SET (fillfactor = 50)")
    op.create_table(
        "messages",
        sa.Column("room_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        # (room_id, seq) is the identity and the only index history pages and resumes need:
        # every page is a range scan of it, newest-first or oldest-first.
        sa.PrimaryKeyConstraint("room_id", "seq", name="pk_messages"),
        sa.ForeignKeyConstraint(["room_id"], ["rooms.id"], name="fk_messages_room_id_rooms"),
        sa.ForeignKeyConstraint(["author"], ["users.username"], name="fk_messages_author_users"),
        sa.CheckConstraint("seq > 0", name=op.f("ck_messages_seq_positive")),
        sa.CheckConstraint(
            "client_id IS NULL OR char_length(client_id) BETWEEN 1 AND 64",
            name=op.f("ck_messages_client_id_length"),
        ),
    )
    op.create_index(
        "uq_messages_room_author_client_id",
        "messages",
        ["room_id", "author", "client_id"],
        unique=True,
        postgresql_where=sa.text("client_id IS NOT NULL"),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("started_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("heartbeat_at", TS, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_instances"),
    )
    op.create_table(
        "presence",
        sa.Column("room_id", sa.BigInteger(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("instance_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "username", "instance_id", name="pk_presence"),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name="fk_presence_room_id_rooms", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name="fk_presence_instance_id_instances",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_presence_instance_id", "presence", ["instance_id"])


def downgrade() -> None:
    op.drop_index("ix_presence_instance_id", table_name="presence")
    op.drop_table("presence")
    op.drop_table("instances")
    op.drop_index("uq_messages_room_author_client_id", table_name="messages")
    op.drop_table("messages")
    op.drop_table("rooms")
    op.drop_table("users")
