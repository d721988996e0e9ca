"""Accounts: registration and login, with their limits. Passwords are argon2 hashes, never
logged."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import Unavailable, reading, writing
from .models import User
from .ratelimit import KeyedLimiter, RateLimited, give_back_all, take_all
from .security import Passwords, PasswordsBusy
from .settings import Settings
from .validation import InvalidInput, normalize_username

# A name longer than any username can belong to no account: its first characters are key
# enough, and a megabyte-long name does not become a megabyte-long key.
_NAME_KEY_CHARS = 64


class UsernameTaken(Exception):
    pass


async def register(engine: AsyncEngine, passwords: Passwords, username: str, password: str) -> None:
    """Create the account; raises UsernameTaken (names are already lower-cased), or
    PasswordsBusy."""
    password_hash = await passwords.hash(password)
    async with writing(engine) as conn:
        created = await conn.execute(
            insert(User)
            .values(username=username, password_hash=password_hash)
            .on_conflict_do_nothing(index_elements=[User.username])
            .returning(User.username)
        )
        if created.scalar_one_or_none() is None:
            raise UsernameTaken(username)


async def authenticate(
    engine: AsyncEngine, passwords: Passwords, username: str, password: str
) -> bool:
    """True when the password is right; as slow for unknown users as for wrong passwords."""
    try:
        name = normalize_username(username)
    except InvalidInput:
        # No such account can exist; and a NUL would make PostgreSQL refuse the query.
        return await passwords.verify(password, None)
    async with reading(engine) as conn:
        stored = await conn.scalar(select(User.password_hash).where(User.username == name))
    return await passwords.verify(password, stored)


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

    async def login(self, username: str, password: str, client: str) -> bool:
        """True when the password is right; raises RateLimited past a budget, PasswordsBusy.

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
            authenticated = await authenticate(self._engine, self._passwords, username, password)
        except (PasswordsBusy, Unavailable):
            # Verified nothing. (A cancelled request keeps its tokens: its verification may
            # be running still.)
            give_back_all([*success, *failure])
            raise
        give_back_all(failure if authenticated else success)
        return authenticated
