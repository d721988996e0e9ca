-- chat_mentioned(): whom a message by p_author in room p_room (of kind p_kind) mentions, by
-- PROTOCOL.md's rule: in a dm, the other member; elsewhere each `@name` that follows the
-- start of the body or a character that cannot be in a username, where name is the longest
-- run of username characters, lower-cased, and a member of the room, or else, with its
-- trailing `.` and `-` dropped ("thanks @bob."), a member. Never the author.
--
-- This file is the source; each migration that (re)defines the function embeds a frozen
-- copy of it, and tests/test_sql_sources.py fails when the newest copy and this file differ.
CREATE OR REPLACE FUNCTION chat_mentioned(
    p_room bigint, p_kind text, p_author text, p_body text
) RETURNS SETOF text LANGUAGE sql STABLE AS $fn$
    SELECT p.username FROM members p
    WHERE p_kind = 'dm' AND p.room_id = p_room AND p.username <> p_author
    UNION
    SELECT coalesce(whole.username, short.username)
    FROM (SELECT DISTINCT lower((x.m)[2]) AS name
          FROM regexp_matches(p_body, '(^|[^A-Za-z0-9_.-])@([A-Za-z0-9_.-]+)', 'g') AS x (m)
          WHERE p_kind <> 'dm') AS t
    LEFT JOIN members whole ON whole.room_id = p_room AND whole.username = t.name
    LEFT JOIN members short ON short.room_id = p_room AND short.username = rtrim(t.name, '.-')
    WHERE coalesce(whole.username, short.username) <> p_author
$fn$;
