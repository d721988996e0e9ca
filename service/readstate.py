"""Read state (PROTOCOL.md, Read cursor; guarantee 8): one cursor per membership, and the
unread and mention counts that follow from it, exact and cheap however many there are.

The counts, for member `u` of room `r` with read cursor `c`:

    unread   = messages of r with seq > c, not deleted, not by u
    mentions = those of them that mention u in their current text

Counting the rows above the cursor would cost a room with 10,000 unread messages 10,000
index entries, and a user in 200 such rooms two million. Instead each message carries its
ordinal `n` among its room's messages (1, 2, 3, ...; deleted and pruned ones keep theirs)
and the room carries `message_count`, the last ordinal given; both are written by the batch
writer under the room's lock (sql/post_messages.sql). The membership keeps, next to its
cursor, `last_read_n`: how many of the room's messages are at or below the cursor (the `n`
of the last of them), found with one probe of the primary key when the cursor moves, not
when it is counted. Then:

- messages above the cursor = message_count - last_read_n: arithmetic on two rows already
  read. A prune removes the oldest messages and records the highest `n` it removed
  (rooms.pruned_n): what it removed above an old cursor no longer counts either, so the
  subtrahend is greatest(last_read_n, pruned_n);
- minus the deleted ones above the cursor, counted in a partial index that holds deleted
  messages only (a correction as small as what was deleted);
- messages by `u` above the cursor: none, because posting moves the author's cursor to the
  message in the transaction that stores it (and migration 0007 moved every cursor past its
  member's messages).

Mentions are rows of `mentions` (room, seq, user), written when a message is posted or
edited (sql/mentioned.sql has the rule), removed when it is deleted or edited away, never
for the author. The membership keeps their count above its cursor, `unread_mentions`,
so the room list reads it instead of counting rows (counting a user's 80 unread mentions in
each of 200 rooms took more of the list's time than everything else together):

- the writer adds one for each mention it stores above the member's cursor and takes one
  away for each it removes there (an edit's, a delete's), in the transaction that changes
  the rows; posting moves the author's cursor and takes away the mentions it passes
  (sql/post_messages.sql); a prune takes away what it removes above a cursor (ops.py);
- moving the cursor recounts it: the rows above the new cursor, a range as long as the
  mentions still unread (sql/mark_read.sql, which also says why the count cannot miss a
  mention a writer stores meanwhile);
- a membership starts with none: it starts at the room's head (or at the member's own
  newest message), and rows are only written for members.

In a dm every message mentions the other member, so there the unread count is the mention
count and no rows are kept.

A message to a room of thousands of members therefore writes no per-member row, only the
rows of the members it mentions; setting a cursor is one small update of the membership's
row.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import reading
from .refusals import Forbidden, NotFound

# The counts of member `m` (a members row) in room `r` (its rooms row), as a LATERAL
# subquery: `LEFT JOIN LATERAL (COUNTS) AS rs ON true` gives rs.unread and rs.mentions (NULL
# when m is NULL: not a member).
COUNTS = """
    SELECT u.unread, CASE WHEN r.kind = 'dm' THEN u.unread ELSE m.unread_mentions END
               AS mentions
    FROM (SELECT r.message_count - greatest(m.last_read_n, r.pruned_n)
                 - (SELECT count(*) FROM messages d
                    WHERE d.room_id = r.id AND d.seq > m.last_read_seq AND d.deleted) AS unread
          ) AS u
    WHERE m.username IS NOT NULL
"""

# max(current, min(seq, the room's last seq)), with the counts the cursor keeps; `moved` is
# NULL when the cursor stayed (already there or beyond). One round trip (sql/mark_read.sql).
_MARK = text("SELECT room_id AS id, before, moved FROM chat_mark_read(:room, :username, :seq)")
_ROOM_KIND = text("SELECT kind FROM rooms WHERE name = :room")
_COUNTS_OF = text(
    "SELECT m.last_read_seq, rs.unread, rs.mentions FROM rooms r "
    "JOIN members m ON m.room_id = r.id AND m.username = :username "
    f"LEFT JOIN LATERAL ({COUNTS}) AS rs ON true WHERE r.id = :room_id"
)


@dataclass(frozen=True, slots=True)
class Marked:
    """A read cursor after `mark`: where it is, and whether this call moved it."""

    room_id: int
    room: str
    last_read_seq: int
    moved: bool


@dataclass(frozen=True, slots=True)
class Counts:
    last_read_seq: int
    unread: int
    mentions: int


class ReadState:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def mark(self, room: str, user: str, seq: int) -> Marked:
        """Move `user`'s cursor in `room` to `seq` (capped at the room's last seq; never
        back). NotFound for an unknown room, Forbidden when the user is not a member. One
        statement, in autocommit: its own transaction, and no BEGIN or COMMIT round trip."""
        async with reading(self.engine) as conn:
            row = (
                await conn.execute(_MARK, {"room": room, "username": user, "seq": seq})
            ).one_or_none()
            if row is None:
                known = (await conn.execute(_ROOM_KIND, {"room": room})).one_or_none()
                if known is None:
                    raise NotFound(f"room {room} does not exist")
                raise Forbidden(f"not a member of {room}")
        if row.moved is None:
            return Marked(int(row.id), room, int(row.before), False)
        return Marked(int(row.id), room, int(row.moved), True)

    async def counts(self, room_id: int, user: str) -> Counts:
        """`user`'s cursor and counts in a room they are a member of."""
        async with reading(self.engine) as conn:
            row = (
                await conn.execute(_COUNTS_OF, {"room_id": room_id, "username": user})
            ).one_or_none()
        if row is None:  # left meanwhile
            raise Forbidden("not a member of that room")
        return Counts(int(row.last_read_seq), int(row.unread), int(row.mentions))
