"""Accounts: registration and login, with their limits. Passwords are argon2 hashes, never
logged."""

from __future__ import annotations

import re
import uuid
from typing import Literal

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import Unavailable, reading, writing
from .models import User
from .ratelimit import KeyedLimiter, RateLimited, give_back_all, take_all
from .security import Passwords, PasswordsBusy
from .sessions import end_all_of, lock_user
from .settings import Settings
from .validation import InvalidInput, normalize_username

# A name longer than any username can belong to no account: its first characters are key
# enough, and a megabyte-long name does not become a megabyte-long key.
_NAME_KEY_CHARS = 64


class UsernameTaken(Exception):
    pass


# What a login with a name and a password comes to: a banned user with the right password
# is told so (403), a wrong password never learns whether the user is banned.
Outcome = Literal["ok", "wrong", "banned"]
# GET /api/users answers at most this many names.
USERS_LISTED_MAX = 50
# What a username (so a prefix of one) may hold: validation.USERNAME_PATTERN's characters.
_NAME_CHARS = re.compile(r"[a-z0-9_.-]+")


async def register(
    engine: AsyncEngine, passwords: Passwords, username: str, password: str, admin: bool = False
) -> None:
    """Create the account; raises UsernameTaken (names are already lower-cased), or
    PasswordsBusy."""
    password_hash = await passwords.hash(password)
    async with writing(engine) as conn:
        created = await conn.execute(
            insert(User)
            .values(username=username, password_hash=password_hash, admin=admin)
            .on_conflict_do_nothing(index_elements=[User.username])
            .returning(User.username)
        )
        if created.scalar_one_or_none() is None:
            raise UsernameTaken(username)


async def authenticate(
    engine: AsyncEngine, passwords: Passwords, username: str, password: str
) -> Outcome:
    """Whether the password is right and the user not banned; as slow for unknown users as
    for wrong passwords, and for banned users as for the others."""
    try:
        name = normalize_username(username)
    except InvalidInput:
        # No such account can exist; and a NUL would make PostgreSQL refuse the query.
        await passwords.verify(password, None)
        return "wrong"
    async with reading(engine) as conn:
        row = (
            await conn.execute(
                select(User.password_hash, User.banned_at).where(User.username == name)
            )
        ).first()
    if not await passwords.verify(password, row[0] if row else None):
        return "wrong"
    return "banned" if row is not None and row[1] is not None else "ok"


async def ban(engine: AsyncEngine, username: str) -> list[uuid.UUID] | None:
    """Ban the user (again: the first ban's time stays) and end every session of theirs, in
    one transaction; the sessions ended, or None for an unknown user. The caller tells its
    Sessions (`ended`, `settle`); other instances learn it from their poll."""
    async with writing(engine) as conn:
        if await lock_user(conn, username) is None:
            return None
        await conn.execute(
            text("UPDATE users SET banned_at = coalesce(banned_at, now()) WHERE username = :u"),
            {"u": username},
        )
        return await end_all_of(conn, username)


async def unban(engine: AsyncEngine, username: str) -> bool:
    """Lift the ban (logins work again; ended sessions stay ended); False: no such user."""
    async with writing(engine) as conn:
        done = await conn.scalar(
            text("UPDATE users SET banned_at = NULL WHERE username = :u RETURNING username"),
            {"u": username},
        )
    return done is not None


async def set_admin(engine: AsyncEngine, username: str, admin: bool = True) -> bool:
    """Make the user a site admin (or not); False: no such user."""
    async with writing(engine) as conn:
        done = await conn.scalar(
            text("UPDATE users SET admin = :a WHERE username = :u RETURNING username"),
            {"u": username, "a": admin},
        )
    return done is not None


async def is_admin(engine: AsyncEngine, username: str) -> bool:
    async with reading(engine) as conn:
        return bool(await conn.scalar(select(User.admin).where(User.username == username)))


async def find_users(engine: AsyncEngine, prefix: str, limit: int) -> list[str]:
    """Usernames starting with `prefix`, by name, at most `limit`; banned users included.

    The range on the primary key is what an index scan can use (in the database's collation,
    as the index is; exact for C and ICU collations, whose order keeps a prefix's names
    together); LIKE, its wildcards escaped, keeps exactly the names with the prefix."""
    if not _NAME_CHARS.fullmatch(prefix):
        return []  # no name has such a prefix (and a NUL would make PostgreSQL refuse it)
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    async with reading(engine) as conn:
        result = await conn.execute(
            text(
                "SELECT username FROM users WHERE username >= :lo AND username < :hi "
                "AND username LIKE :pattern ESCAPE '\\' ORDER BY username LIMIT :limit"
            ),
            {"lo": prefix, "hi": prefix + "\U0010ffff", "pattern": pattern, "limit": limit},
        )
        return [row[0] for row in result]


class Accounts:
    """Registration and login as the REST routes offer them, each limited per client."""

    def __init__(self, engine: AsyncEngine, settings: Settings, passwords: Passwords) -> None:
        self._engine = engine
        self._passwords = passwords
        per_minute = settings.login_attempts_per_minute
        # Failed logins are counted per name and per client address (a client may try many
        # names, so its budget is larger); successful ones per client address.
        self._failures_by_name = KeyedLimiter.per(per_minute, 60)
        self._failures_by_client = KeyedLimiter.per(per_minute * 5, 60)
        self._logins_by_client = KeyedLimiter.per(settings.logins_per_minute, 60)
        # Each registration costs an argon2 hash and a row.
        self._register_by_client = KeyedLimiter.per(settings.registrations_per_minute, 60)

    async def register(self, username: str, password: str, client: str) -> None:
        """Create the account; raises RateLimited, PasswordsBusy or UsernameTaken."""
        self._passwords.refuse_if_full()
        limits = [(self._register_by_client, client)]
        wait_ms = take_all(limits)
        if wait_ms:
            raise RateLimited(wait_ms, "too many registrations from this address; try again later")
        try:
            await register(self._engine, self._passwords, username, password)
        except (PasswordsBusy, Unavailable):
            give_back_all(limits)  # nothing was hashed, or nothing stored
            raise

    async def login(self, username: str, password: str, client: str) -> Outcome:
        """Whether the password is right (and the user not banned); raises RateLimited past a
        budget, PasswordsBusy.

        Every attempt holds a token of each budget while its password is verified: a
        failure keeps the failure tokens, a success keeps the success token, and the others
        go back. So N concurrent guesses cost N tokens before any of them is verified, and
        at most the budget get verified."""
        # Before any budget is touched or the name looked up: a flood's refusals stay cheap.
        self._passwords.refuse_if_full()
        success = [(self._logins_by_client, client)]
        failure = [
            (self._failures_by_client, client),
            (self._failures_by_name, username[:_NAME_KEY_CHARS]),
        ]
        wait_ms = take_all([*success, *failure])
        if wait_ms:
            raise RateLimited(wait_ms, "too many login attempts; try again later")
        try:
            outcome = await authenticate(self._engine, self._passwords, username, password)
        except (PasswordsBusy, Unavailable):
            # Verified nothing. (A cancelled request keeps its tokens: its verification may
            # be running still.)
            give_back_all([*success, *failure])
            raise
        # A banned user's right password is no guess: it costs what a success costs.
        give_back_all(success if outcome == "wrong" else failure)
        return outcome
