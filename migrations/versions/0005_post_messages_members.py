"""chat_post_messages() checks, in the transaction that numbers a message, that its author
may post there: a member of a private room or dm, anyone not banned in a public room (and
posting makes them a member). It numbers messages after the head of the room's whole log
and keeps rooms.last_message_seq. Refused sends store nothing and come back with seq 0;
`joined` says which sends made their author a member.

The OUT parameters change, so the earlier overloads are dropped: v2 refuses the tokens of
v1 (PROTOCOL.md), so no instance of the previous release keeps posting through an upgrade.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_V2_ARGS = "bigint[], text[], text[], text[], text, integer, integer, uuid, bytea, bytea"
_V1_ARGS = "bigint[], text[], text[], text[], text"

# Frozen copy of service/sql/post_messages.sql.
FROZEN_SQL = {
    "post_messages.sql": r"""-- chat_post_messages(): a batch of messages stored, numbered and announced in one statement,
-- one implicit transaction and one round trip (the writer calls it in autocommit).
--
-- Locks the rooms involved, refuses sends whose author may not post there (checked here, in
-- the transaction that gives the message its seq: a member removed or banned a moment before
-- the commit stores nothing; seq 0 in `seqs` says refused), makes the authors of sends to a
-- public room members of it (`joined` says who became one), finds sends that repeat a
-- committed (room, author, client_id), numbers the others after each room's last seq (the
-- head of its whole log: messages and other events), inserts them, advances the rooms, and packs
-- the new messages into `messages` notifications (service/protocol.py defines the keys; the
-- writer passes the size limits), each signed with HMAC-SHA256 from the padded keys the
-- writer passes (service/protocol.py, FanoutKey). It also records the batch's outcome under p_batch in
-- write_batches, in the same transaction: a writer that loses the reply (the connection
-- died after the call was sent, a timeout fired) reads it back to learn whether, and as
-- what, the batch committed, instead of guessing. With p_channel set, the notifications are sent with
-- pg_notify in this transaction, so they exist if and only if the rows commit; with
-- p_channel NULL (another fan-out backend) they are returned for the caller to publish
-- after the commit.
--
-- This file is the source; each migration that (re)defines the function embeds a frozen
-- copy of it, and tests/test_sql_sources.py fails when the newest copy and this file differ.
CREATE OR REPLACE FUNCTION chat_post_messages(
    p_rooms bigint[], p_authors text[], p_bodies text[], p_client_ids text[],
    p_channel text, p_payload_max integer, p_inline_max integer, p_batch uuid,
    p_key_inner bytea, p_key_outer bytea,
    OUT seqs bigint[], OUT created timestamptz[], OUT repeated boolean[],
    OUT stored_bodies text[], OUT payloads text[], OUT joined boolean[]
) LANGUAGE plpgsql AS $fn$
DECLARE
    stamp timestamptz;
    entries json[];
    sizes integer[];
    is_ref boolean[];
    inline_part json[] := '{}';
    refs_part json[] := '{}';
    envelope constant integer := octet_length(json_build_object(
        'kind', 'messages', 'messages', '[]'::json, 'refs', '[]'::json)::text);
    size integer := envelope;
BEGIN
    -- Locked in id order, so writers on other instances queue here instead of deadlocking.
    PERFORM 1 FROM rooms WHERE id = ANY (p_rooms) ORDER BY id FOR UPDATE;
    -- Read under the locks, so created_at follows seq order within a room.
    stamp := clock_timestamp();

    WITH given AS (
        SELECT t.ord, t.r, t.a, t.b, t.c
        FROM unnest(p_rooms, p_authors, p_bodies, p_client_ids) WITH ORDINALITY
            AS t (r, a, b, c, ord)
    ), checked AS (  -- who may post: a member not banned, or anyone not banned in a public room
        SELECT g.*, rm.last_seq AS head, rm.kind = 'public' AND mb.username IS NULL AS joins,
               u.banned_at IS NULL AND (mb.username IS NOT NULL OR rm.kind = 'public') AS ok
        FROM given g
        JOIN rooms rm ON rm.id = g.r
        LEFT JOIN users u ON u.username = g.a
        LEFT JOIN members mb ON mb.room_id = g.r AND mb.username = g.a
    ), input AS (
        SELECT c.ord, c.r, c.a, c.b, c.c FROM checked c WHERE c.ok
    ), enrol AS (  -- posting to a public room makes the author a member (PROTOCOL.md, Member);
                   -- the first of a room without an owner (a room this post creates) its owner
        INSERT INTO members (room_id, username, role, created_at, last_read_seq)
        SELECT j.r, j.a, CASE WHEN j.n = 1 AND NOT EXISTS (
                   SELECT 1 FROM members o WHERE o.room_id = j.r AND o.role = 'owner')
               THEN 'owner' ELSE 'member' END, stamp, j.head
        FROM (SELECT c.r, c.a, min(c.head) AS head,
                     row_number() OVER (PARTITION BY c.r ORDER BY min(c.ord)) AS n
              FROM checked c WHERE c.ok AND c.joins GROUP BY c.r, c.a) AS j
        ON CONFLICT DO NOTHING
    ), earlier AS (  -- sends that repeat a committed (room, author, client_id)
        SELECT i.ord, m.seq, m.created_at, m.body
        FROM input i
        JOIN messages m ON m.room_id = i.r AND m.author = i.a AND m.client_id = i.c
        WHERE m.client_id IS NOT NULL
    ), fresh AS (
        SELECT i.ord, i.r, i.a, i.b, i.c,
               rm.last_seq + row_number() OVER (PARTITION BY i.r ORDER BY i.ord) AS seq
        FROM input i
        JOIN rooms rm ON rm.id = i.r
        WHERE NOT EXISTS (SELECT 1 FROM earlier e WHERE e.ord = i.ord)
    ), ins AS (
        INSERT INTO messages (room_id, seq, author, body, client_id, created_at)
        SELECT f.r, f.seq, f.a, f.b, f.c, stamp FROM fresh f
    ), adv AS (
        UPDATE rooms SET last_seq = top.seq, last_message_seq = top.seq, last_message_at = stamp
        FROM (SELECT f.r, max(f.seq) AS seq FROM fresh f GROUP BY f.r) AS top
        WHERE rooms.id = top.r
    ), noted AS (  -- each new message as its notification entry: inline, or a ref if large
        SELECT f.ord, octet_length(j.entry::text) > p_inline_max AS is_ref,
               CASE WHEN octet_length(j.entry::text) > p_inline_max
                    THEN json_build_object('room_id', f.r, 'seq', f.seq)
                    ELSE j.entry END AS entry
        FROM fresh f
        CROSS JOIN LATERAL (SELECT json_build_object(
            'room_id', f.r, 'seq', f.seq, 'author', f.a, 'body', f.b,
            'client_id', f.c, 'created_at', stamp) AS entry) AS j
    )
    SELECT array_agg(CASE WHEN NOT c.ok THEN 0 ELSE coalesce(e.seq, f.seq) END ORDER BY c.ord),
           array_agg(coalesce(e.created_at, stamp) ORDER BY c.ord),
           array_agg(e.ord IS NOT NULL ORDER BY c.ord),
           array_agg(e.body ORDER BY c.ord),
           array_agg(n.entry ORDER BY c.ord) FILTER (WHERE n.ord IS NOT NULL),
           array_agg(octet_length(n.entry::text) ORDER BY c.ord) FILTER (WHERE n.ord IS NOT NULL),
           array_agg(n.is_ref ORDER BY c.ord) FILTER (WHERE n.ord IS NOT NULL),
           array_agg(c.ok AND c.joins ORDER BY c.ord)
    INTO seqs, created, repeated, stored_bodies, entries, sizes, is_ref, joined
    FROM checked c
    LEFT JOIN earlier e ON e.ord = c.ord
    LEFT JOIN fresh f ON f.ord = c.ord
    LEFT JOIN noted n ON n.ord = c.ord;

    INSERT INTO write_batches (id, seqs, repeated, created_at)
    VALUES (p_batch, seqs, repeated, stamp);

    -- Pack the new messages, in order, into as few payloads as fit under p_payload_max.
    payloads := '{}';
    FOR k IN 1 .. coalesce(array_length(entries, 1), 0) LOOP
        IF size > envelope AND size + sizes[k] + 1 > p_payload_max THEN
            payloads := payloads || json_build_object('kind', 'messages',
                'messages', array_to_json(inline_part), 'refs', array_to_json(refs_part))::text;
            inline_part := '{}';
            refs_part := '{}';
            size := envelope;
        END IF;
        IF is_ref[k] THEN
            refs_part := refs_part || entries[k];
        ELSE
            inline_part := inline_part || entries[k];
        END IF;
        size := size + sizes[k] + 1;
    END LOOP;
    IF size > envelope THEN
        payloads := payloads || json_build_object('kind', 'messages',
            'messages', array_to_json(inline_part), 'refs', array_to_json(refs_part))::text;
    END IF;

    SELECT coalesce(array_agg(encode(sha256(p_key_outer || sha256(
               p_key_inner || convert_to(t.p, 'UTF8'))), 'hex') || '.' || t.p ORDER BY t.n), '{}')
    INTO payloads FROM unnest(payloads) WITH ORDINALITY AS t (p, n);

    IF p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, p) FROM unnest(payloads) AS p;
        payloads := '{}';
    END IF;
END
$fn$;
""",
}


def upgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS chat_post_messages({_V1_ARGS})")
    op.execute(f"DROP FUNCTION IF EXISTS chat_post_messages({_V2_ARGS})")
    op.execute(FROZEN_SQL["post_messages.sql"])


def _sibling(name: str) -> Any:
    """An earlier revision's module (revision files are not importable by name)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    # Back to what 0002 and 0003 installed, which their own downgrades drop.
    op.execute(f"DROP FUNCTION IF EXISTS chat_post_messages({_V2_ARGS})")
    op.execute(_sibling("0002_post_messages").FUNCTION)
    op.execute(_sibling("0003_post_messages_source").FROZEN_SQL["post_messages.sql"])
