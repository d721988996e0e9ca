-- chat_mark_read(): moves p_user's read cursor in room p_room to p_seq (capped at the
-- room's last seq; never back), with the ordinal at the cursor (members.last_read_n) and the
-- count of unread mentions (members.unread_mentions) recomputed for the new cursor
-- (service/readstate.py explains both). Returns the room's id, the cursor before, and the
-- cursor after, or NULL when it did not move; no row for an unknown room or a non-member.
--
-- Two statements, in this order, so that the count cannot miss a mention: the first locks
-- the membership's row, which waits for a writer that has changed it (a writer changes the
-- row of every member it stores a mention of, in the transaction that stores the mention);
-- the second, with a snapshot taken after that lock was granted (a VOLATILE function's
-- statements each take one), counts the mention rows above the new cursor. A writer that
-- comes after the lock waits for this transaction, then adjusts the count against the new
-- cursor.
--
-- This file is the source; each migration that (re)defines the function embeds a frozen
-- copy of it, and tests/test_sql_sources.py fails when the newest copy and this file differ.
CREATE OR REPLACE FUNCTION chat_mark_read(
    p_room text, p_user text, p_seq bigint,
    OUT room_id bigint, OUT before bigint, OUT moved bigint
) RETURNS SETOF record LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
BEGIN
    SELECT r.id, m.last_read_seq INTO room_id, before
    FROM rooms r JOIN members m ON m.room_id = r.id AND m.username = p_user
    WHERE r.name = p_room
    FOR UPDATE OF m;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE members SET
        last_read_seq = cur.target,
        last_read_n = coalesce((
            SELECT x.n - 1 FROM messages x WHERE x.room_id = cur.id AND x.seq > cur.target
            ORDER BY x.seq LIMIT 1), cur.message_count),
        unread_mentions = (
            SELECT count(*) FROM mentions mt
            WHERE mt.username = p_user AND mt.room_id = cur.id AND mt.seq > cur.target)
    FROM (SELECT r.id, r.message_count, least(p_seq, r.last_seq) AS target
          FROM rooms r WHERE r.id = chat_mark_read.room_id) AS cur
    WHERE members.room_id = cur.id AND members.username = p_user
          AND members.last_read_seq < cur.target
    RETURNING members.last_read_seq INTO moved;  -- NULL when it stayed
    RETURN NEXT;
END
$fn$;
