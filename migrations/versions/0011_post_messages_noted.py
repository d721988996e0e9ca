"""The batch write builds each new message's notification entry once.

- chat_post_messages() (service/sql/post_messages.sql): its `noted` CTE is MATERIALIZED.
  Referenced once, PostgreSQL inlined it into the statement's final join, whose nested loop
  then built every entry (json_build_object and its length, twice) once per row of the
  batch: n² for a batch of n. A 100-message batch took 127 ms, 15 ms with this.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of service/sql/post_messages.sql.
FROZEN_SQL = {
    "post_messages.sql": r"""-- chat_post_messages(): a batch of the room log's events (new messages, and edits, deletes
-- and reactions of earlier ones) stored, numbered and announced in one statement, one
-- implicit transaction and one round trip (the writer calls it in autocommit).
--
-- Locks the rooms involved (in id order, so writers on other instances queue instead of
-- deadlocking), then:
--
-- Messages, set-based: refuses sends whose author may not post there (checked here, in the
-- transaction that gives the message its seq: a member removed or banned a moment before
-- the commit stores nothing; code 'forbidden') or whose reply_to names no message of the
-- room ('not_found'); makes the authors of sends to a public room members of it (`joined`
-- says who became one; the first of a room without an owner, its owner); finds sends that
-- repeat a committed (room, author, client_id); numbers the others after each room's last
-- seq (the head of its whole log) and counts them (`n`, a message's ordinal among its
-- room's messages, and rooms.message_count: the arithmetic behind exact unread counts, see
-- service/readstate.py); inserts them, with their search lexemes (p_searches: the tsvector
-- literals service/search.py makes), advances the rooms, and moves each author's read
-- cursor to their newest message there (PROTOCOL.md, Read cursor). Records who each one
-- mentions (the `mentions` table; not in a dm, where every message mentions the peer and
-- the unread count is the mention count), keeps each member's count of unread mentions
-- (members.unread_mentions, service/readstate.py) and tells them: a `notification` frame on
-- the users' own stream (a `user` notification, in the same payloads as the messages).
--
-- Changes, one by one in the order given (each reads what the one before it wrote; a
-- reaction's new counts are kept in memory and written to its message once per batch, so a
-- storm of reactions on one message rewrites the row once, not once per reaction): checks
-- the rules of PROTOCOL.md in its order (the actor may act in the room: 'forbidden'; the
-- target is a message of the room: 'not_found'; the actor may edit or delete it:
-- 'forbidden'; an edit or reaction of a deleted message: 'not_found'; one emoji more than
-- p_max_emoji: 'limit_reached'; a change that would change nothing: duplicate, with the
-- target's current version as its seq), then appends
-- the event with the room's next seq and applies it to the message's current state:
--   edit: the body, its search lexemes (p_c_searches), edited_at and version, and the
--     mentions of the new text (no new notification);
--   delete: erases the body, its search lexemes, every earlier version of it (the bodies of
--     its edit events), its reactions and its mentions, keeping the tombstone (seq, author,
--     created_at, client_id, reply_to, version);
--   reaction: the reactions table (who reacted) and the message's counts (in order of
--     first use; an emoji whose count falls to 0 disappears).
--
-- Every new event is packed into `messages` notifications (service/protocol.py defines the
-- keys; an entry without a `kind` is a message; the writer passes the size limits), each
-- signed with HMAC-SHA256 from the padded keys the writer passes (service/protocol.py,
-- FanoutKey). The batch's outcome (seqs, duplicates, refusal codes: messages first, then
-- changes) is recorded under p_batch in write_batches, in the same transaction: a writer
-- that loses the reply reads it back to learn whether, and as what, the batch committed.
-- With p_channel set, the notifications are sent with pg_notify in this transaction, so
-- they exist if and only if the events commit; with p_channel NULL (another fan-out
-- backend) they are returned for the caller to publish after the commit.
--
-- This file is the source; each migration that (re)defines the function embeds a frozen
-- copy of it, and tests/test_sql_sources.py fails when the newest copy and this file differ.
CREATE OR REPLACE FUNCTION chat_post_messages(
    p_rooms bigint[], p_authors text[], p_bodies text[], p_client_ids text[],
    p_reply_tos bigint[],
    p_searches text[],
    p_c_rooms bigint[], p_c_actors text[], p_c_kinds text[], p_c_targets bigint[],
    p_c_bodies text[], p_c_emojis text[], p_c_ops text[], p_max_emoji integer,
    p_c_searches text[],
    p_channel text, p_payload_max integer, p_inline_max integer, p_batch uuid,
    p_key_inner bytea, p_key_outer bytea,
    OUT seqs bigint[], OUT created timestamptz[], OUT repeated boolean[],
    OUT stored_bodies text[], OUT payloads text[], OUT joined boolean[], OUT codes text[],
    OUT c_seqs bigint[], OUT c_codes text[], OUT c_counts integer[], OUT stamp timestamptz
) LANGUAGE plpgsql AS $fn$
DECLARE
    entries json[];
    sizes integer[];
    is_ref boolean[];
    inline_part json[] := '{}';
    refs_part json[] := '{}';
    notes text[];
    envelope constant integer := octet_length(json_build_object(
        'kind', 'messages', 'messages', '[]'::json, 'refs', '[]'::json)::text);
    size integer := envelope;
    -- the changes' loop
    heads jsonb;
    v_room bigint;
    v_actor text;
    v_target bigint;
    v_kind text;
    v_emoji text;
    v_op text;
    v_room_kind text;
    v_role text;
    v_admin boolean;
    v_banned boolean;
    v_author text;
    v_body text;
    v_deleted boolean;
    v_reactions jsonb;
    v_version bigint;
    v_found boolean;
    v_key text;
    v_rows integer;
    -- Reactions of this batch not yet written to their message ("room:seq" -> the message's
    -- reactions and version): a storm on one message rewrites its row once per batch.
    pending jsonb := '{}';
    v_author_role text;
    v_unnamed text[];  -- whom an edited text mentioned, and whom the new one mentions
    v_named text[];
    v_seq bigint;
    v_count integer;
    v_code text;
    v_entry json;
BEGIN
    PERFORM 1 FROM rooms WHERE id = ANY (p_rooms || p_c_rooms) ORDER BY id FOR UPDATE;
    -- Read under the locks, so created_at follows seq order within a room.
    stamp := clock_timestamp();

    WITH given AS (
        SELECT t.ord, t.r, t.a, t.b, t.c, t.reply
        FROM unnest(p_rooms, p_authors, p_bodies, p_client_ids, p_reply_tos) WITH ORDINALITY
            AS t (r, a, b, c, reply, ord)
    ), checked AS (  -- who may post: a member not banned, or anyone not banned in a public room
        SELECT g.*, rm.last_seq AS head, rm.message_count AS count,
               rm.kind = 'public' AND mb.username IS NULL AS joins,
               CASE WHEN u.banned_at IS NOT NULL
                         OR (mb.username IS NULL AND rm.kind <> 'public') THEN 'forbidden'
                    WHEN g.reply IS NOT NULL AND NOT EXISTS (
                         SELECT 1 FROM messages rt WHERE rt.room_id = g.r AND rt.seq = g.reply)
                         THEN 'not_found'
               END AS code
        FROM given g
        JOIN rooms rm ON rm.id = g.r
        LEFT JOIN users u ON u.username = g.a
        LEFT JOIN members mb ON mb.room_id = g.r AND mb.username = g.a
    ), input AS (
        SELECT c.ord, c.r, c.a, c.b, c.c, c.reply FROM checked c WHERE c.code IS NULL
    ), earlier AS (  -- sends that repeat a committed (room, author, client_id)
        SELECT i.ord, m.seq, m.created_at, m.body
        FROM input i
        JOIN messages m ON m.room_id = i.r AND m.author = i.a AND m.client_id = i.c
        WHERE m.client_id IS NOT NULL
    ), fresh AS (
        SELECT i.ord, i.r, i.a, i.b, i.c, i.reply, rm.kind, rm.name,
               rm.last_seq + row_number() OVER (PARTITION BY i.r ORDER BY i.ord) AS seq,
               rm.message_count + row_number() OVER (PARTITION BY i.r ORDER BY i.ord) AS n
        FROM input i
        JOIN rooms rm ON rm.id = i.r
        WHERE NOT EXISTS (SELECT 1 FROM earlier e WHERE e.ord = i.ord)
    ), enrol AS (  -- posting to a public room makes the author a member (PROTOCOL.md, Member);
                   -- the first of a room without an owner (a room this post creates) its owner
        INSERT INTO members (room_id, username, role, created_at, last_read_seq, last_read_n)
        SELECT j.r, j.a, CASE WHEN j.n = 1 AND NOT EXISTS (
                   SELECT 1 FROM members o WHERE o.room_id = j.r AND o.role = 'owner')
               THEN 'owner' ELSE 'member' END, stamp,
               -- their newest message here is read (the `seen` update cannot see this row)
               coalesce((SELECT max(f.seq) FROM fresh f WHERE f.r = j.r AND f.a = j.a), j.head),
               coalesce((SELECT max(f.n) FROM fresh f WHERE f.r = j.r AND f.a = j.a), j.count)
        FROM (SELECT c.r, c.a, min(c.head) AS head, min(c.count) AS count,
                     row_number() OVER (PARTITION BY c.r ORDER BY min(c.ord)) AS n
              FROM checked c WHERE c.code IS NULL AND c.joins GROUP BY c.r, c.a) AS j
        ON CONFLICT DO NOTHING
    ), ins AS (
        INSERT INTO messages (room_id, seq, author, body, client_id, created_at, reply_to, n,
                              search)
        SELECT f.r, f.seq, f.a, f.b, f.c, stamp, f.reply, f.n, p_searches[f.ord]::tsvector
        FROM fresh f
    ), adv AS (
        UPDATE rooms SET last_seq = top.seq, last_message_seq = top.seq, last_message_at = stamp,
                         message_count = top.n
        FROM (SELECT f.r, max(f.seq) AS seq, max(f.n) AS n FROM fresh f GROUP BY f.r) AS top
        WHERE rooms.id = top.r
    ), named AS (  -- who each new message mentions: members named by @name, the dm's peer
        SELECT f.ord, f.r, f.seq, f.kind, x.username
        FROM fresh f
        CROSS JOIN LATERAL chat_mentioned(f.r, f.kind, f.a, f.b) AS x (username)
        WHERE f.kind = 'dm' OR strpos(f.b, '@') > 0  -- most messages name nobody
    ), noted_mentions AS (
        INSERT INTO mentions (room_id, seq, username)
        SELECT nm.r, nm.seq, nm.username FROM named nm WHERE nm.kind <> 'dm'
    ), touched AS (  -- each member this batch reads for (an author: up to their newest
                     -- message) or mentions (outside dms), once: one update of each row
        SELECT t.r, t.u, max(t.seq) AS seq, max(t.n) AS n
        FROM (SELECT f.r, f.a AS u, f.seq, f.n FROM fresh f
              UNION ALL
              SELECT nm.r, nm.username, NULL, NULL FROM named nm WHERE nm.kind <> 'dm') AS t
        GROUP BY t.r, t.u
    ), seen AS (  -- posting moves the author's read cursor to their newest message; the
                  -- count of unread mentions (readstate.py) loses the mentions that move
                  -- passes (rows stored before this statement) and gains this batch's
                  -- mentions above the cursor
        UPDATE members SET
            last_read_seq = greatest(members.last_read_seq, coalesce(t.seq, 0)),
            last_read_n = CASE WHEN t.seq > members.last_read_seq THEN t.n
                               ELSE members.last_read_n END,
            unread_mentions = members.unread_mentions
                - CASE WHEN t.seq > members.last_read_seq THEN (
                      SELECT count(*) FROM mentions x
                      WHERE x.username = t.u AND x.room_id = t.r
                            AND x.seq > members.last_read_seq AND x.seq <= t.seq)
                  ELSE 0 END
                + (SELECT count(*) FROM named nm
                   WHERE nm.r = t.r AND nm.username = t.u AND nm.kind <> 'dm'
                         AND nm.seq > greatest(members.last_read_seq, coalesce(t.seq, 0)))
        FROM touched t
        WHERE members.room_id = t.r AND members.username = t.u
    ), told AS (  -- a `notification` for each of them (up to 100 users a notification; the
                  -- excerpt is the first 140 characters, PROTOCOL.md)
        SELECT min(t.ord) AS ord, json_build_object(
                   'kind', 'user', 'users', json_agg(t.username ORDER BY t.username),
                   'frame', json_build_object(
                       'type', 'notification', 'room', min(f.name), 'seq', t.seq,
                       'author', min(f.a), 'excerpt', left(min(f.b), 140))) AS note
        FROM (SELECT nm.ord, nm.r, nm.seq, nm.username,
                     (row_number() OVER (PARTITION BY nm.ord ORDER BY nm.username) - 1) / 100
                         AS chunk
              FROM named nm) AS t
        JOIN fresh f ON f.ord = t.ord
        GROUP BY t.ord, t.seq, t.chunk
    ), noted AS MATERIALIZED (  -- each new message as its notification entry: inline, or a
          -- ref if large. Materialized: referenced once, PostgreSQL would inline it into the
          -- final join below, whose nested loop then built every entry once per row of the
          -- batch (n² json_build_object calls: 95 of a 100-message batch's 99 ms).
        SELECT f.ord, octet_length(j.entry::text) > p_inline_max AS is_ref,
               CASE WHEN octet_length(j.entry::text) > p_inline_max
                    THEN json_build_object('room_id', f.r, 'seq', f.seq)
                    ELSE j.entry END AS entry
        FROM fresh f
        CROSS JOIN LATERAL (SELECT json_build_object(
            'room_id', f.r, 'seq', f.seq, 'author', f.a, 'body', f.b,
            'client_id', f.c, 'created_at', stamp, 'reply_to', f.reply) AS entry) AS j
    )
    SELECT array_agg(CASE WHEN c.code IS NOT NULL THEN 0 ELSE coalesce(e.seq, f.seq) END
                     ORDER BY c.ord),
           array_agg(coalesce(e.created_at, stamp) ORDER BY c.ord),
           array_agg(e.ord IS NOT NULL ORDER BY c.ord),
           array_agg(e.body ORDER BY c.ord),
           array_agg(n.entry ORDER BY c.ord) FILTER (WHERE n.ord IS NOT NULL),
           array_agg(octet_length(n.entry::text) ORDER BY c.ord) FILTER (WHERE n.ord IS NOT NULL),
           array_agg(n.is_ref ORDER BY c.ord) FILTER (WHERE n.ord IS NOT NULL),
           array_agg(c.code IS NULL AND c.joins ORDER BY c.ord),
           array_agg(c.code ORDER BY c.ord),
           (SELECT coalesce(array_agg(t.note::text ORDER BY t.ord), '{}') FROM told t)
    INTO seqs, created, repeated, stored_bodies, entries, sizes, is_ref, joined, codes, notes
    FROM checked c
    LEFT JOIN earlier e ON e.ord = c.ord
    LEFT JOIN fresh f ON f.ord = c.ord
    LEFT JOIN noted n ON n.ord = c.ord;
    seqs := coalesce(seqs, '{}');
    created := coalesce(created, '{}');
    repeated := coalesce(repeated, '{}');
    stored_bodies := coalesce(stored_bodies, '{}');
    entries := coalesce(entries, '{}');
    sizes := coalesce(sizes, '{}');
    is_ref := coalesce(is_ref, '{}');
    joined := coalesce(joined, '{}');
    codes := coalesce(codes, '{}');

    -- The changes, in order. Each room's head is kept here and written once at the end: a
    -- storm of reactions to one message updates its room's row once per batch, not once
    -- per reaction.
    c_seqs := '{}';
    c_codes := '{}';
    c_counts := '{}';
    SELECT coalesce(jsonb_object_agg(id::text, last_seq), '{}') INTO heads
    FROM rooms WHERE id = ANY (p_c_rooms);
    FOR k IN 1 .. coalesce(array_length(p_c_rooms, 1), 0) LOOP
        v_room := p_c_rooms[k];
        v_actor := p_c_actors[k];
        v_target := p_c_targets[k];
        v_kind := p_c_kinds[k];
        v_emoji := p_c_emojis[k];
        v_op := p_c_ops[k];
        v_code := NULL;
        v_seq := 0;
        v_count := NULL;
        SELECT rm.kind, mb.role, coalesce(u.admin, false), u.banned_at IS NOT NULL,
               mm.author, mm.body, mm.deleted, mm.reactions,
               CASE WHEN mm.version = 0 THEN mm.seq ELSE mm.version END, mm.seq IS NOT NULL
        INTO v_room_kind, v_role, v_admin, v_banned,
             v_author, v_body, v_deleted, v_reactions, v_version, v_found
        FROM rooms rm
        LEFT JOIN members mb ON mb.room_id = rm.id AND mb.username = v_actor
        LEFT JOIN users u ON u.username = v_actor
        LEFT JOIN messages mm ON mm.room_id = rm.id AND mm.seq = v_target
        WHERE rm.id = v_room;
        v_found := coalesce(v_found, false);
        v_key := v_room || ':' || v_target;
        IF pending ? v_key THEN
            v_reactions := nullif(pending -> v_key -> 'reactions', 'null'::jsonb);
            v_version := (pending -> v_key ->> 'version')::bigint;
        END IF;
        IF v_banned OR (v_role IS NULL AND v_room_kind <> 'public') THEN
            v_code := 'forbidden';
        ELSIF NOT v_found THEN
            v_code := 'not_found';
        ELSIF v_kind = 'edit' AND v_author <> v_actor THEN
            v_code := 'forbidden';
        ELSIF v_kind = 'delete' AND v_author <> v_actor AND coalesce(v_role, '') <> 'owner'
              AND NOT (v_admin AND v_role IS NOT NULL) THEN
            SELECT o.role INTO v_author_role
            FROM members o WHERE o.room_id = v_room AND o.username = v_author;
            IF NOT (coalesce(v_role, '') = 'moderator' AND coalesce(v_author_role, '') <> 'owner')
            THEN
                v_code := 'forbidden';
            END IF;
        END IF;
        IF v_code IS NULL AND v_kind <> 'delete' AND v_deleted THEN
            v_code := 'not_found';
        END IF;
        IF v_code IS NULL AND v_kind = 'reaction' AND v_op = 'add'
           AND jsonb_array_length(coalesce(v_reactions, '[]')) >= p_max_emoji
           AND NOT jsonb_path_exists(v_reactions, '$[*] ? (@.emoji == $e)',
                                     jsonb_build_object('e', v_emoji)) THEN
            v_code := 'limit_reached';
        END IF;
        IF v_code IS NOT NULL THEN
            c_seqs := c_seqs || 0::bigint;
            c_codes := c_codes || v_code;
            c_counts := c_counts || NULL::integer;
            CONTINUE;
        END IF;
        -- What would change nothing is acknowledged as a duplicate, with the current version.
        -- A reaction's row is written first: a row already there (or already gone) is one.
        v_rows := 1;
        IF v_kind = 'reaction' AND v_op = 'add' THEN
            INSERT INTO reactions (room_id, seq, emoji, username, created_at)
            VALUES (v_room, v_target, v_emoji, v_actor, stamp) ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS v_rows = ROW_COUNT;
        ELSIF v_kind = 'reaction' THEN
            DELETE FROM reactions
            WHERE room_id = v_room AND seq = v_target AND emoji = v_emoji AND username = v_actor;
            GET DIAGNOSTICS v_rows = ROW_COUNT;
        END IF;
        IF (v_kind = 'edit' AND v_body = p_c_bodies[k])
           OR (v_kind = 'delete' AND v_deleted)
           OR v_rows = 0
        THEN
            c_seqs := c_seqs || v_version;
            c_codes := c_codes || 'duplicate'::text;
            c_counts := c_counts || NULL::integer;
            CONTINUE;
        END IF;
        IF v_role IS NULL THEN  -- acting in a public room makes the actor a member
            INSERT INTO members (room_id, username, role, created_at, last_read_seq, last_read_n)
            SELECT v_room, v_actor, 'member', stamp, (heads ->> v_room::text)::bigint,
                   rm.message_count
            FROM rooms rm WHERE rm.id = v_room
            ON CONFLICT DO NOTHING;
        END IF;
        v_seq := (heads ->> v_room::text)::bigint + 1;
        heads := jsonb_set(heads, ARRAY[v_room::text], to_jsonb(v_seq));
        IF v_kind = 'edit' THEN
            INSERT INTO events (room_id, seq, kind, actor, target, body, created_at)
            VALUES (v_room, v_seq, 'edit', v_actor, v_target, p_c_bodies[k], stamp);
            UPDATE messages SET body = p_c_bodies[k], edited_at = stamp, version = v_seq,
                                reactions = v_reactions, search = p_c_searches[k]::tsvector
            WHERE room_id = v_room AND seq = v_target;
            pending := pending - v_key;
            -- Mentions follow the current text (a text without `@` names nobody), and so
            -- do the unread mention counts of the members whose cursor is below it.
            IF v_room_kind <> 'dm'
               AND (strpos(v_body, '@') > 0 OR strpos(p_c_bodies[k], '@') > 0) THEN
                WITH gone AS (
                    DELETE FROM mentions WHERE room_id = v_room AND seq = v_target
                    RETURNING username)
                SELECT coalesce(array_agg(username), '{}') INTO v_unnamed FROM gone;
                WITH added AS (
                    INSERT INTO mentions (room_id, seq, username)
                    SELECT v_room, v_target, x.username
                    FROM chat_mentioned(v_room, v_room_kind, v_actor, p_c_bodies[k])
                         AS x (username)
                    WHERE strpos(p_c_bodies[k], '@') > 0
                    RETURNING username)
                SELECT coalesce(array_agg(username), '{}') INTO v_named FROM added;
                UPDATE members SET unread_mentions = members.unread_mentions + d.delta
                FROM (SELECT z.u, sum(z.delta) AS delta
                      FROM (SELECT unnest(v_unnamed) AS u, -1 AS delta
                            UNION ALL SELECT unnest(v_named), 1) AS z
                      GROUP BY z.u HAVING sum(z.delta) <> 0) AS d
                WHERE members.room_id = v_room AND members.username = d.u
                      AND members.last_read_seq < v_target;
            END IF;
            v_entry := json_build_object('room_id', v_room, 'seq', v_seq, 'kind', 'edit',
                'target', v_target, 'author', v_actor, 'body', p_c_bodies[k], 'edited_at', stamp);
        ELSIF v_kind = 'delete' THEN
            INSERT INTO events (room_id, seq, kind, actor, target, created_at)
            VALUES (v_room, v_seq, 'delete', v_actor, v_target, stamp);
            UPDATE messages SET body = '', deleted = true, reactions = NULL, version = v_seq,
                search = NULL
            WHERE room_id = v_room AND seq = v_target;
            pending := pending - v_key;
            -- Every earlier version of the text goes with it.
            UPDATE events SET body = ''
            WHERE room_id = v_room AND target = v_target AND kind = 'edit';
            DELETE FROM reactions WHERE room_id = v_room AND seq = v_target;
            WITH gone AS (
                DELETE FROM mentions WHERE room_id = v_room AND seq = v_target
                RETURNING username)
            UPDATE members SET unread_mentions = members.unread_mentions - 1
            FROM gone
            WHERE members.room_id = v_room AND members.username = gone.username
                  AND members.last_read_seq < v_target;
            v_entry := json_build_object('room_id', v_room, 'seq', v_seq, 'kind', 'delete',
                'target', v_target, 'by', v_actor);
        ELSE
            -- The row of who reacted is written (above); the counts, in order of first use,
            -- are kept in `pending` until the end of the batch.
            v_count := coalesce(jsonb_path_query_first(v_reactions,
                                    '$[*] ? (@.emoji == $e).count',
                                    jsonb_build_object('e', v_emoji))::integer, 0)
                       + CASE WHEN v_op = 'add' THEN 1 ELSE -1 END;
            SELECT CASE WHEN count(*) = 0 THEN NULL ELSE jsonb_agg(x.e ORDER BY x.i) END
            INTO v_reactions
            FROM (SELECT CASE WHEN o.e ->> 'emoji' = v_emoji
                              THEN jsonb_build_object('emoji', v_emoji, 'count', v_count)
                              ELSE o.e END AS e, o.i
                  FROM jsonb_array_elements(coalesce(v_reactions, '[]'))
                       WITH ORDINALITY AS o (e, i)
                  UNION ALL
                  SELECT jsonb_build_object('emoji', v_emoji, 'count', v_count),
                         1000000000::bigint
                  WHERE v_count > 0 AND NOT jsonb_path_exists(coalesce(v_reactions, '[]'),
                      '$[*] ? (@.emoji == $e)', jsonb_build_object('e', v_emoji))) AS x
            WHERE (x.e ->> 'count')::integer > 0;
            pending := pending || jsonb_build_object(v_key, jsonb_build_object(
                'r', v_room, 's', v_target, 'reactions', v_reactions, 'version', v_seq));
            INSERT INTO events (room_id, seq, kind, actor, target, emoji, op, count, created_at)
            VALUES (v_room, v_seq, 'reaction', v_actor, v_target, v_emoji, v_op, v_count, stamp);
            v_entry := json_build_object('room_id', v_room, 'seq', v_seq, 'kind', 'reaction',
                'target', v_target, 'user', v_actor, 'emoji', v_emoji, 'op', v_op,
                'count', v_count);
        END IF;
        c_seqs := c_seqs || v_seq;
        c_codes := c_codes || NULL::text;
        c_counts := c_counts || v_count;
        IF octet_length(v_entry::text) > p_inline_max THEN
            v_entry := json_build_object('room_id', v_room, 'seq', v_seq);
            is_ref := is_ref || true;
        ELSE
            is_ref := is_ref || false;
        END IF;
        entries := entries || v_entry;
        sizes := sizes || octet_length(v_entry::text);
    END LOOP;
    UPDATE messages SET reactions = nullif(x.value -> 'reactions', 'null'::jsonb),
                        version = (x.value ->> 'version')::bigint
    FROM jsonb_each(pending) AS x
    WHERE messages.room_id = (x.value ->> 'r')::bigint AND messages.seq = (x.value ->> 's')::bigint;
    UPDATE rooms SET last_seq = (heads ->> id::text)::bigint
    WHERE id = ANY (p_c_rooms) AND last_seq < (heads ->> id::text)::bigint;

    INSERT INTO write_batches (id, seqs, repeated, codes, created_at)
    VALUES (p_batch, seqs || c_seqs, repeated || array_fill(false, ARRAY[cardinality(c_seqs)]),
            codes || c_codes, stamp);

    -- Pack the new events, in order, into as few payloads as fit under p_payload_max; the
    -- notifications follow them.
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

    payloads := payloads || notes;

    SELECT coalesce(array_agg(encode(sha256(p_key_outer || sha256(
               p_key_inner || convert_to(x.p, 'UTF8'))), 'hex') || '.' || x.p ORDER BY x.n), '{}')
    INTO payloads FROM unnest(payloads) WITH ORDINALITY AS x (p, n);

    IF p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, x.p) FROM unnest(payloads) AS x (p);
        payloads := '{}';
    END IF;
END
$fn$;
""",
}


def upgrade() -> None:
    op.execute(FROZEN_SQL["post_messages.sql"])


def _sibling(name: str) -> Any:
    """An earlier revision's module (revision files are not importable by name)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    op.execute(_sibling("0009_unread_mentions").FROZEN_SQL["post_messages.sql"])
