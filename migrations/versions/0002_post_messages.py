"""chat_post_messages(): a batch of messages stored, numbered and announced in one statement.

The writer used to spend six round trips on a batch (BEGIN, lock the rooms, look up repeated
client_ids, insert, NOTIFY, COMMIT). On a busy instance every round trip waits its turn on
the event loop, so a batch took ~10 ms at 1,000 messages/s and a message waited for two of
them. One call in autocommit is one round trip and one implicit transaction: the
notifications are sent if and only if the rows commit, as before.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The notification format is described in service/notifications.py; its limits: PostgreSQL
# refuses payloads of 8000 bytes or more, so payloads stay under 7900, and a message whose
# entry passes 6000 bytes travels as a reference [room_id, seq] that receivers read back.
FUNCTION = r"""
CREATE FUNCTION chat_post_messages(
    p_rooms bigint[], p_authors text[], p_bodies text[], p_client_ids text[],
    p_channel text,
    OUT seqs bigint[], OUT created timestamptz[], OUT repeated boolean[],
    OUT stored_bodies text[], OUT payloads text[]
) LANGUAGE plpgsql AS $fn$
DECLARE
    stamp timestamptz;
    entries text[];
    is_ref boolean[];
    inline_part text := '';
    refs_part text := '';
    envelope constant int := 23;  -- octet_length('{"k":"m","m":[],"r":[]}')
    size int := envelope;
    n int;
BEGIN
    -- Locked in id order, so writers on other instances queue here instead of deadlocking.
    PERFORM 1 FROM rooms WHERE id = ANY (p_rooms) ORDER BY id FOR UPDATE;
    -- Read under the locks, so created_at follows seq order within a room.
    stamp := clock_timestamp();

    WITH input AS (
        SELECT t.ord, t.r, t.a, t.b, t.c
        FROM unnest(p_rooms, p_authors, p_bodies, p_client_ids) WITH ORDINALITY
            AS t (r, a, b, c, ord)
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
        UPDATE rooms SET last_seq = top.seq, last_message_at = stamp
        FROM (SELECT f.r, max(f.seq) AS seq FROM fresh f GROUP BY f.r) AS top
        WHERE rooms.id = top.r
    )
    SELECT array_agg(coalesce(e.seq, f.seq) ORDER BY i.ord),
           array_agg(coalesce(e.created_at, stamp) ORDER BY i.ord),
           array_agg(e.ord IS NOT NULL ORDER BY i.ord),
           array_agg(e.body ORDER BY i.ord),
           array_agg(CASE WHEN octet_length(j.entry) > 6000
                          THEN json_build_array(f.r, f.seq)::text ELSE j.entry END
                     ORDER BY i.ord) FILTER (WHERE f.ord IS NOT NULL),
           array_agg(octet_length(j.entry) > 6000 ORDER BY i.ord) FILTER (WHERE f.ord IS NOT NULL)
    INTO seqs, created, repeated, stored_bodies, entries, is_ref
    FROM input i
    LEFT JOIN earlier e ON e.ord = i.ord
    LEFT JOIN fresh f ON f.ord = i.ord
    LEFT JOIN LATERAL (SELECT json_build_array(f.r, f.seq, f.a, f.b, f.c, stamp)::text AS entry)
        AS j ON f.ord IS NOT NULL;

    -- Pack the new messages, in order, into as few payloads as fit.
    payloads := '{}';
    n := coalesce(array_length(entries, 1), 0);
    FOR k IN 1 .. n LOOP
        IF size > envelope AND size + octet_length(entries[k]) + 1 > 7900 THEN
            payloads := payloads || ('{"k":"m","m":[' || inline_part || '],"r":[' || refs_part || ']}');
            inline_part := '';
            refs_part := '';
            size := envelope;
        END IF;
        IF is_ref[k] THEN
            refs_part := refs_part || CASE WHEN refs_part = '' THEN '' ELSE ',' END || entries[k];
        ELSE
            inline_part := inline_part || CASE WHEN inline_part = '' THEN '' ELSE ',' END || entries[k];
        END IF;
        size := size + octet_length(entries[k]) + 1;
    END LOOP;
    IF size > envelope THEN
        payloads := payloads || ('{"k":"m","m":[' || inline_part || '],"r":[' || refs_part || ']}');
    END IF;

    -- With the Postgres fan-out the notifications ride this transaction; otherwise the
    -- caller publishes the payloads after the commit.
    IF p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, p) FROM unnest(payloads) AS p;
        payloads := '{}';
    END IF;
END
$fn$
"""


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION chat_post_messages(bigint[], text[], text[], text[], text)")
