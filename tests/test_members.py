"""Membership against PostgreSQL (service/members.py): room creation, dms, the rules for
adding, removing, leaving and roles, the `member` events of private rooms, and the lists."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db
from service.members import Change, Members, dm_name
from service.ratelimit import RateLimited
from service.refusals import Conflict, Forbidden, Invalid, NotFound
from service.rooms import RoomDirectory
from service.settings import Settings
from service.validation import ROOM_RE
from tests.support import unique


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = db.create_engine(Settings(database_url=database_url))
    try:
        yield made
    finally:
        await made.dispose()


@pytest.fixture
def members(engine: AsyncEngine) -> Members:
    return Members(engine)


async def users(pg: asyncpg.Connection, n: int, prefix: str = "m_") -> list[str]:
    """`n` fresh users, straight into the table (no password work)."""
    names = [unique(prefix) for _ in range(n)]
    await pg.executemany(
        "INSERT INTO users (username, password_hash) VALUES ($1, 'x')", [(u,) for u in names]
    )
    return names


async def admin(pg: asyncpg.Connection) -> str:
    (name,) = await users(pg, 1, "adm_")
    await pg.execute("UPDATE users SET admin = true WHERE username = $1", name)
    return name


async def private_room(members: Members, owner: str) -> str:
    room = unique("priv-")
    await members.create_room(room, "private", owner)
    return room


async def events(pg: asyncpg.Connection, room: str) -> list[dict[str, Any]]:
    rows = await pg.fetch(
        "SELECT e.seq, e.kind, e.actor, e.subject, e.op, e.role FROM events e "
        "JOIN rooms r ON r.id = e.room_id WHERE r.name = $1 ORDER BY e.seq",
        room,
    )
    return [dict(r) for r in rows]


async def roles(pg: asyncpg.Connection, room: str) -> dict[str, str]:
    rows = await pg.fetch(
        "SELECT m.username, m.role FROM members m JOIN rooms r ON r.id = m.room_id "
        "WHERE r.name = $1",
        room,
    )
    return {r["username"]: r["role"] for r in rows}


async def last_seq(pg: asyncpg.Connection, room: str) -> int:
    seq: int = await pg.fetchval("SELECT last_seq FROM rooms WHERE name = $1", room)
    return seq


# -- creating rooms --------------------------------------------------------------------------


async def test_created_room_has_its_creator_as_owner_and_no_event(
    members: Members, pg: asyncpg.Connection
) -> None:
    (alice,) = await users(pg, 1)
    for kind in ("public", "private"):
        room = unique(f"{kind}-")
        change = await members.create_room(room, kind, alice)
        assert (change.room, change.kind, change.seq) == (room, kind, None)
        assert change.streams == [(alice, "added")]
        assert await roles(pg, room) == {alice: "owner"}
        assert await events(pg, room) == []
        assert await last_seq(pg, room) == 0


async def test_creating_refuses_taken_reserved_and_invalid(
    members: Members, pg: asyncpg.Connection
) -> None:
    alice, bob = await users(pg, 2)
    room = unique("taken-")
    await members.create_room(room, "public", alice)
    with pytest.raises(Conflict):
        await members.create_room(room, "private", bob)
    assert await roles(pg, room) == {alice: "owner"}
    with pytest.raises(Forbidden):
        await members.create_room(unique("dm-"), "private", alice)
    with pytest.raises(Invalid):
        await members.create_room(unique("x-"), "dm", alice)
    with pytest.raises(Invalid):
        await members.create_room("Not A Name", "public", alice)


async def test_room_creation_shares_the_directory_budget(
    engine: AsyncEngine, pg: asyncpg.Connection
) -> None:
    """Rooms made by POST /api/rooms and by a first join draw on one budget; a refused or
    taken name costs nothing."""
    (alice,) = await users(pg, 1)
    directory = RoomDirectory(engine, created_per_hour=2)
    members = Members(engine, creations=directory.creations)
    taken = unique("taken-")
    await members.create_room(taken, "public", alice)
    with pytest.raises(Conflict):
        await members.create_room(taken, "public", alice)
    await directory.ensure(unique("joined-"), alice)
    with pytest.raises(RateLimited):
        await members.create_room(unique("third-"), "private", alice)


async def test_a_room_made_by_first_use_is_owned_by_its_creator(
    engine: AsyncEngine, pg: asyncpg.Connection
) -> None:
    """A public room made by a first join gets that joiner as owner, in the statement that
    enrols them; later joiners are members."""
    alice, bob = await users(pg, 2)
    directory = RoomDirectory(engine)
    room = unique("first-")
    room_id = await directory.ensure(room, alice)
    assert await roles(pg, room) == {}
    first = await directory.standing(room_id, alice, enrol=True)
    assert (first.role, first.added) == ("owner", True)
    again = await directory.standing(room_id, alice, enrol=True)
    assert (again.role, again.added) == ("owner", False)
    await directory.ensure(room, bob)
    later = await directory.standing(room_id, bob, enrol=True)
    assert (later.role, later.added) == ("member", True)
    assert await roles(pg, room) == {alice: "owner", bob: "member"}


# -- dms -------------------------------------------------------------------------------------


async def test_dm_is_one_room_per_pair_whoever_opens_it(
    members: Members, pg: asyncpg.Connection
) -> None:
    alice, bob, carol = await users(pg, 3)
    first, created = await members.open_dm(alice, bob)
    assert created and first.kind == "dm" and first.seq is None
    assert sorted(first.streams) == sorted([(alice, "added"), (bob, "added")])
    again, created_again = await members.open_dm(bob, alice.upper())
    assert not created_again and again.room == first.room and again.streams == []
    assert first.room == dm_name(alice, bob) == dm_name(bob, alice)
    assert ROOM_RE.fullmatch(first.room) and re.fullmatch(r"dm-[a-z0-9]+", first.room)
    other, _ = await members.open_dm(alice, carol)
    assert other.room != first.room
    assert await roles(pg, first.room) == {alice: "member", bob: "member"}
    assert await events(pg, first.room) == []


async def test_dm_refusals(members: Members, pg: asyncpg.Connection) -> None:
    alice, banned = await users(pg, 2)
    await pg.execute("UPDATE users SET banned_at = now() WHERE username = $1", banned)
    with pytest.raises(Invalid):
        await members.open_dm(alice, alice)
    with pytest.raises(NotFound):
        await members.open_dm(alice, unique("nobody_"))
    with pytest.raises(Forbidden):
        await members.open_dm(alice, banned)


async def test_dm_membership_never_changes(members: Members, pg: asyncpg.Connection) -> None:
    alice, bob, carol = await users(pg, 3)
    boss = await admin(pg)
    dm = (await members.open_dm(alice, bob))[0].room
    for by, who, role in [(alice, carol, None), (alice, bob, "owner"), (boss, "me", None)]:
        with pytest.raises(Forbidden):
            await members.set_member(dm, by, who, role)
    for by, who in [(alice, "me"), (alice, bob), (boss, alice)]:
        with pytest.raises(Forbidden):
            await members.remove(dm, by, who)
    for reader in (carol, boss):
        with pytest.raises(Forbidden):
            await members.access(dm, reader)
        with pytest.raises(Forbidden):
            await members.room_info(dm, reader)
        with pytest.raises(Forbidden):
            await members.members(dm, reader, 10)
    assert await roles(pg, dm) == {alice: "member", bob: "member"}


async def test_new_dms_are_limited_per_user(engine: AsyncEngine, pg: asyncpg.Connection) -> None:
    """Two new dms an hour: the third new one is refused; reopening costs nothing."""
    members = Members(engine, dms_per_hour=2)
    alice, b, c, d = await users(pg, 4)
    await members.open_dm(alice, b)
    await members.open_dm(alice, c)
    await members.open_dm(alice, b)
    with pytest.raises(RateLimited):
        await members.open_dm(alice, d)
    assert (await members.open_dm(d, alice))[1] is True  # d's own budget


# -- member events ---------------------------------------------------------------------------


async def test_private_changes_write_member_events_in_log_order(
    members: Members, pg: asyncpg.Connection
) -> None:
    owner, bob, carol = await users(pg, 3)
    room = await private_room(members, owner)
    added = await members.set_member(room, owner, bob)
    assert (added.username, added.role) == (bob, "member")
    assert added.change is not None and added.change.seq == 1
    assert added.change.streams == [(bob, "added")]
    promoted = await members.set_member(room, owner, bob, "moderator")
    assert promoted.change is not None and promoted.change.streams == [(bob, "updated")]
    await members.set_member(room, bob, carol)
    left = await members.remove(room, carol, "me")
    assert left is not None and left.streams == [(carol, "removed")]
    removed = await members.remove(room, owner, bob)
    assert removed is not None and removed.seq == 5
    assert removed.event is not None and removed.event.event == "removed"
    assert await events(pg, room) == [
        {"seq": 1, "kind": "member", "actor": owner, "subject": bob, "op": "added",
         "role": "member"},
        {"seq": 2, "kind": "member", "actor": owner, "subject": bob, "op": "role",
         "role": "moderator"},
        {"seq": 3, "kind": "member", "actor": bob, "subject": carol, "op": "added",
         "role": "member"},
        {"seq": 4, "kind": "member", "actor": carol, "subject": carol, "op": "left",
         "role": "member"},
        {"seq": 5, "kind": "member", "actor": owner, "subject": bob, "op": "removed",
         "role": "moderator"},
    ]  # fmt: skip
    assert await last_seq(pg, room) == 5
    assert await roles(pg, room) == {owner: "owner"}


async def test_a_new_members_read_cursor_starts_at_the_head(
    members: Members, pg: asyncpg.Connection
) -> None:
    owner, bob = await users(pg, 2)
    room = await private_room(members, owner)
    await members.set_member(room, owner, bob)
    info = await members.room_info(room, bob)
    assert (info["last_seq"], info["last_read_seq"], info["unread"]) == (1, 1, 0)


async def test_asking_for_what_is_so_changes_nothing(
    members: Members, pg: asyncpg.Connection
) -> None:
    owner, bob = await users(pg, 2)
    room = await private_room(members, owner)
    await members.set_member(room, owner, bob)
    again = await members.set_member(room, owner, bob)
    same = await members.set_member(room, owner, bob, "member")
    assert again.change is None and same.change is None and same.role == "member"
    assert await last_seq(pg, room) == 1


async def test_public_rooms_write_no_events(members: Members, pg: asyncpg.Connection) -> None:
    owner, bob, carol = await users(pg, 3)
    room = unique("pub-")
    await members.create_room(room, "public", owner)
    joined = await members.set_member(room, bob, "me")
    assert (joined.role, joined.change and joined.change.seq) == ("member", None)
    assert joined.change is not None and joined.change.streams == [(bob, "added")]
    promoted = await members.set_member(room, owner, bob, "moderator")
    assert promoted.change is not None and promoted.change.seq is None
    left = await members.remove(room, bob, "me")
    assert left is not None and left.seq is None and left.streams == [(bob, "removed")]
    assert await members.remove(room, carol, "me") is None  # not in it: nothing to do
    assert await events(pg, room) == []
    assert await last_seq(pg, room) == 0


async def test_public_room_rules(members: Members, pg: asyncpg.Connection) -> None:
    """Others cannot be added to or removed from a public room; joining asks for no role."""
    owner, bob, carol = await users(pg, 3)
    room = unique("pub-")
    await members.create_room(room, "public", owner)
    with pytest.raises(Forbidden):
        await members.set_member(room, owner, bob)
    with pytest.raises(Forbidden):
        await members.set_member(room, bob, "me", "moderator")
    await members.set_member(room, bob, "me")
    with pytest.raises(Forbidden):
        await members.remove(room, owner, bob)
    with pytest.raises(Forbidden):  # a member sets no roles
        await members.set_member(room, bob, owner, "member")
    with pytest.raises(Forbidden):  # nor does a non-member
        await members.set_member(room, carol, bob, "moderator")


async def test_first_member_of_an_ownerless_public_room_owns_it(
    members: Members, pg: asyncpg.Connection
) -> None:
    bob, carol = await users(pg, 2)
    room = unique("ownerless-")
    await pg.execute("INSERT INTO rooms (name) VALUES ($1)", room)
    assert (await members.set_member(room, bob, "me")).role == "owner"
    assert (await members.set_member(room, carol, "me")).role == "member"


# -- rules -----------------------------------------------------------------------------------


async def test_the_last_owner_stays(members: Members, pg: asyncpg.Connection) -> None:
    owner, other = await users(pg, 2)
    boss = await admin(pg)
    for kind in ("private", "public"):
        room = unique(f"{kind}-")
        await members.create_room(room, kind, owner)
        with pytest.raises(Conflict):
            await members.remove(room, owner, "me")
        with pytest.raises(Conflict):
            await members.set_member(room, owner, "me", "moderator")
    room = await private_room(members, owner)
    await members.set_member(room, boss, "me")
    with pytest.raises(Conflict):  # an admin has owner rights, not more
        await members.remove(room, boss, owner)
    await members.set_member(room, owner, other, "owner")
    # Two owners: either may step down or leave, then the other is the last.
    await members.set_member(room, owner, "me", "member")
    with pytest.raises(Conflict):
        await members.remove(room, other, "me")
    await members.remove(room, owner, "me")
    assert await roles(pg, room) == {other: "owner", boss: "member"}


async def test_moderators_manage_members_only(members: Members, pg: asyncpg.Connection) -> None:
    owner, mod, mod2, alice, bob, carol = await users(pg, 6)
    room = await private_room(members, owner)
    await members.set_member(room, owner, mod, "moderator")
    await members.set_member(room, owner, mod2, "moderator")
    assert (await members.set_member(room, mod, alice)).role == "member"
    assert (await members.set_member(room, mod, bob, "moderator")).role == "moderator"
    with pytest.raises(Forbidden):
        await members.set_member(room, mod, carol, "owner")
    assert (await members.set_member(room, mod, alice, "moderator")).role == "moderator"
    await members.set_member(room, owner, alice, "member")
    with pytest.raises(Forbidden):  # demote a moderator
        await members.set_member(room, mod, mod2, "member")
    with pytest.raises(Forbidden):
        await members.set_member(room, mod, owner, "moderator")
    with pytest.raises(Forbidden):
        await members.remove(room, mod, mod2)
    with pytest.raises(Forbidden):
        await members.remove(room, mod, owner)
    assert await members.remove(room, mod, alice) is not None
    # A member manages nothing.
    await members.set_member(room, owner, carol)
    with pytest.raises(Forbidden):
        await members.set_member(room, carol, alice)
    with pytest.raises(Forbidden):
        await members.remove(room, carol, bob)
    with pytest.raises(Forbidden):
        await members.set_member(room, carol, "me", "moderator")


async def test_owners_add_with_any_role_and_remove_owners(
    members: Members, pg: asyncpg.Connection
) -> None:
    owner, second, mod = await users(pg, 3)
    room = await private_room(members, owner)
    assert (await members.set_member(room, owner, second, "owner")).role == "owner"
    assert (await members.set_member(room, owner, mod, "moderator")).role == "moderator"
    await members.remove(room, owner, second)
    await members.set_member(room, owner, mod, "member")
    assert await roles(pg, room) == {owner: "owner", mod: "member"}


async def test_refusals_for_unknown_and_outsiders(members: Members, pg: asyncpg.Connection) -> None:
    owner, outsider, bob = await users(pg, 3)
    room = await private_room(members, owner)
    nowhere = unique("nowhere-")
    with pytest.raises(NotFound):
        await members.set_member(nowhere, owner, bob)
    with pytest.raises(NotFound):
        await members.remove(nowhere, owner, "me")
    with pytest.raises(NotFound):
        await members.access(nowhere, owner)
    with pytest.raises(NotFound):
        await members.set_member(room, owner, unique("ghost_"))
    with pytest.raises(NotFound):
        await members.remove(room, owner, unique("ghost_"))
    with pytest.raises(NotFound):  # a user, not a member
        await members.remove(room, owner, bob)
    with pytest.raises(Forbidden):
        await members.set_member(room, outsider, "me")
    with pytest.raises(Forbidden):
        await members.set_member(room, outsider, bob)
    with pytest.raises(Forbidden):
        await members.remove(room, outsider, "me")
    with pytest.raises(Forbidden):
        await members.access(room, outsider)
    with pytest.raises(Invalid):
        await members.set_member(room, owner, bob, "king")
    assert await events(pg, room) == []


async def test_a_banned_user_is_not_added(members: Members, pg: asyncpg.Connection) -> None:
    owner, banned = await users(pg, 2)
    await pg.execute("UPDATE users SET banned_at = now() WHERE username = $1", banned)
    room = await private_room(members, owner)
    with pytest.raises(Forbidden):
        await members.set_member(room, owner, banned)
    public = unique("pub-")
    await members.create_room(public, "public", owner)
    with pytest.raises(Forbidden):
        await members.set_member(public, banned, "me")


async def test_rooms_are_capped(engine: AsyncEngine, pg: asyncpg.Connection) -> None:
    members = Members(engine, max_members_per_room=2)
    owner, bob, carol = await users(pg, 3)
    room = await private_room(members, owner)
    await members.set_member(room, owner, bob)
    with pytest.raises(Conflict):
        await members.set_member(room, owner, carol)
    public = unique("pub-")
    await members.create_room(public, "public", owner)
    await members.set_member(public, bob, "me")
    with pytest.raises(Conflict):
        await members.set_member(public, carol, "me")


async def test_admins(members: Members, pg: asyncpg.Connection) -> None:
    """An admin adds themselves to any private room (a visible event by themselves), then has
    owner rights there; a role they are given changes nothing of that."""
    owner, bob, mod = await users(pg, 3)
    boss = await admin(pg)
    room = await private_room(members, owner)
    await members.set_member(room, owner, mod, "moderator")
    with pytest.raises(Forbidden):
        await members.access(room, boss)
    with pytest.raises(Forbidden):  # an admin adds only themselves
        await members.set_member(room, boss, bob)
    joined = await members.set_member(room, boss, "me")
    assert joined.role == "member" and joined.change is not None
    assert (await events(pg, room))[-1] == {
        "seq": 2, "kind": "member", "actor": boss, "subject": boss, "op": "added",
        "role": "member",
    }  # fmt: skip
    assert (await members.access(room, boss)).role == "member"
    await members.set_member(room, boss, bob, "owner")
    await members.set_member(room, boss, mod, "member")
    await members.remove(room, boss, owner)
    assert await roles(pg, room) == {boss: "member", bob: "owner", mod: "member"}


# -- reading ---------------------------------------------------------------------------------


async def test_room_form(members: Members, pg: asyncpg.Connection) -> None:
    owner, bob, outsider = await users(pg, 3)
    room = await private_room(members, owner)
    await members.set_member(room, owner, bob)
    info = await members.room_info(room, owner)
    assert set(info) == {
        "name", "kind", "role", "last_seq", "last_message_seq", "created_at",
        "last_message_at", "last_read_seq", "unread", "mentions", "peer",
    }  # fmt: skip
    assert info["kind"] == "private" and info["role"] == "owner" and info["peer"] is None
    assert info["created_at"].endswith("+00:00") and info["last_message_at"] is None
    public = unique("pub-")
    await members.create_room(public, "public", owner)
    seen = await members.room_info(public, outsider)
    assert seen["role"] is seen["last_read_seq"] is seen["unread"] is seen["mentions"] is None
    dm = (await members.open_dm(owner, bob))[0].room
    assert (await members.room_info(dm, owner))["peer"] == bob
    assert (await members.room_info(dm, bob))["peer"] == owner


async def test_my_rooms_pages_by_activity(members: Members, pg: asyncpg.Connection) -> None:
    (owner,) = await users(pg, 1)
    made = [await private_room(members, owner) for _ in range(5)]
    # The newest room first (no messages: by created_at), ties impossible here.
    expected = list(reversed(made))
    for limit in (1, 2, 5, 7):
        seen: list[str] = []
        cursor = None
        while True:
            page = await members.my_rooms(owner, limit, cursor)
            assert len(page.items) <= limit
            seen += [r["name"] for r in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == expected, limit
    # A message makes a room the most recent.
    room_id = await pg.fetchval("SELECT id FROM rooms WHERE name = $1", made[0])
    await pg.execute(
        "UPDATE rooms SET last_message_at = now() + interval '1 second' WHERE id = $1", room_id
    )
    assert (await members.my_rooms(owner, 1)).items[0]["name"] == made[0]


async def test_public_rooms_by_name_with_prefix(members: Members, pg: asyncpg.Connection) -> None:
    owner, joiner = await users(pg, 2)
    prefix = unique("lst") + "-"
    names = sorted(prefix + s for s in ("a", "b_x", "c", "d"))
    for name in names:
        await members.create_room(name, "public", owner)
    await members.create_room(prefix + "secret", "private", owner)
    await members.set_member(names[0], joiner, "me")
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await members.public_rooms(prefix, 3, cursor)
        seen += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [r["name"] for r in seen] == names
    assert [r["members"] for r in seen] == [2, 1, 1, 1]
    assert set(seen[0]) == {"name", "created_at", "last_message_at", "members"}
    assert [r["name"] for r in (await members.public_rooms(prefix + "b_", 10)).items] == [
        prefix + "b_x"
    ]


async def test_members_pages_by_name(members: Members, pg: asyncpg.Connection) -> None:
    owner, *others = await users(pg, 6)
    room = await private_room(members, owner)
    for other in others:
        await members.set_member(room, owner, other)
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await members.members(room, others[0], 4, cursor)
        seen += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(
        [{"username": owner, "role": "owner"}]
        + [{"username": o, "role": "member"} for o in others],
        key=lambda m: m["username"],
    )


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "bm90IGpzb24",  # not json
        "WzFd",  # [1]
        "WyJwdWJsaWMiLCAxXQ",  # ["public", 1]
        "WyJtaW5lIiwgIngiLCAxXQ",  # ["mine", "x", 1]
        "e30",  # {}
        "WyJwdWJsaWMiLCJcdTAwMDAiXQ",  # ["public", "\u0000"]
        "WyJtZW1iZXJzIiwiXHUwMDAwIl0",  # ["members", "\u0000"]
    ],
)
async def test_bad_cursors_are_invalid(
    members: Members, pg: asyncpg.Connection, cursor: str
) -> None:
    """Not base64, not JSON, the wrong list's cursor, the wrong types: Invalid, never a crash."""
    (owner,) = await users(pg, 1)
    room = await private_room(members, owner)
    with pytest.raises(Invalid):
        await members.my_rooms(owner, 10, cursor)
    with pytest.raises(Invalid):
        await members.members(room, owner, 10, cursor)
    with pytest.raises(Invalid):
        await members.public_rooms("", 10, cursor)


async def test_concurrent_changes_keep_the_log_gapless(
    members: Members, pg: asyncpg.Connection
) -> None:
    """Many adds, removes and role changes of one private room at once: every change that
    committed took one seq, and the seqs are exactly 1..last_seq."""
    owner, *others = await users(pg, 12)
    room = await private_room(members, owner)

    async def churn(user: str) -> int:
        done = 0
        for _ in range(3):
            for step in (
                members.set_member(room, owner, user),
                members.set_member(room, owner, user, "moderator"),
                members.remove(room, owner, user),
            ):
                change: Any = await step
                done += change is not None
        return done

    async with asyncio.timeout(60):
        counts = await asyncio.gather(*(churn(u) for u in others))
    seqs = [e["seq"] for e in await events(pg, room)]
    assert seqs == list(range(1, sum(counts) + 1)) == list(range(1, await last_seq(pg, room) + 1))


def test_change_seq_follows_its_event() -> None:
    assert Change(1, "r", "public", None).seq is None
