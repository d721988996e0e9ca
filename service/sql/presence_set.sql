-- chat_presence_set(): makes instance p_me's presence row for (p_room, p_user) say p_online,
-- in one round trip (service/presence.py calls it in autocommit: the call is the
-- transaction). Returns whether the row changed and whether the change is the room's (no
-- other live instance has the user there): then, when p_payload is given, the signed
-- `presence` notification goes out on p_channel in the same transaction; without one, the
-- caller publishes it after the commit (a fan-out other than PostgreSQL's).
--
-- The advisory lock on the (room, user) key comes first, in its own statement, so that two
-- instances changing the same user's rows one after the other each see the other's commit
-- (a VOLATILE function's statements each take a snapshot after the one before): one of
-- them announces a join or a leave, never both, never neither. The reaper takes the same
-- lock (service/presence.py).
--
-- This file is the source; each migration that (re)defines the function embeds a frozen
-- copy of it, and tests/test_sql_sources.py fails when the newest copy and this file differ.
CREATE OR REPLACE FUNCTION chat_presence_set(
    p_room bigint, p_user text, p_me text, p_ttl double precision, p_online boolean,
    p_channel text, p_payload text,
    OUT changed boolean, OUT announce boolean
) LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_room::text || '/' || p_user, 0));
    IF p_online THEN
        INSERT INTO presence (room_id, username, instance_id) VALUES (p_room, p_user, p_me)
        ON CONFLICT DO NOTHING;
    ELSE
        DELETE FROM presence
        WHERE room_id = p_room AND username = p_user AND instance_id = p_me;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := n > 0;
    announce := changed AND NOT EXISTS (
        SELECT 1 FROM presence p JOIN instances i ON i.id = p.instance_id
        WHERE p.room_id = p_room AND p.username = p_user AND p.instance_id <> p_me
          AND i.heartbeat_at > now() - make_interval(secs => p_ttl));
    IF announce AND p_payload IS NOT NULL THEN
        PERFORM pg_notify(p_channel, p_payload);
    END IF;
END
$fn$;
