"""Accounts: registration and login, with their limits. Passwords are argon2 hashes, never
logged."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import reading, writing
from .models import User
from .ratelimit import KeyedLimiter
from .security import hash_password, verify_password
from .settings import Settings
from .validation import InvalidInput, normalize_username


class UsernameTaken(Exception):
    pass


class RateLimited(Exception):
    """Too many attempts; try again after `retry_after_ms`."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(f"retry after {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


async def register(engine: AsyncEngine, username: str, password: str) -> None:
    """Create the account; raises UsernameTaken (names are already lower-cased)."""
    password_hash = await hash_password(password)
    async with writing(engine) as conn:
        created = await conn.execute(
            insert(User)
            .values(username=username, password_hash=password_hash)
            .on_conflict_do_nothing(index_elements=[User.username])
            .returning(User.username)
        )
        if created.scalar_one_or_none() is None:
            raise UsernameTaken(username)


async def authenticate(engine: AsyncEngine, username: str, password: str) -> bool:
    """True when the password is right; as slow for unknown users as for wrong passwords."""
    try:
        name = normalize_username(username)
    except InvalidInput:
        # No such account can exist; and a NUL would make PostgreSQL refuse the query.
        return await verify_password(password, None)
    async with reading(engine) as conn:
        stored = await conn.scalar(select(User.password_hash).where(User.username == name))
    return await verify_password(password, stored)


class Accounts:
    """Registration and login as the REST routes offer them, each limited per client."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        # Failed logins are counted per name and per client address (a client may try many
        # names, so its budget is larger); a success costs nothing.
        self._login_by_name = KeyedLimiter(settings.login_attempts_per_minute)
        self._login_by_client = KeyedLimiter(settings.login_attempts_per_minute * 5)
        # Each registration costs an argon2 hash and a row.
        self._register_by_client = KeyedLimiter(settings.registrations_per_minute)

    async def register(self, username: str, password: str, client: str) -> None:
        """Create the account; raises RateLimited or UsernameTaken."""
        wait_ms = self._register_by_client.take(f"ip:{client}")
        if wait_ms:
            raise RateLimited(wait_ms)
        await register(self._engine, username, password)

    async def login(self, username: str, password: str, client: str) -> bool:
        """True when the password is right; raises RateLimited past the failures' budget."""
        limits = ((self._login_by_name, f"u:{username}"), (self._login_by_client, f"ip:{client}"))
        wait_ms = max(limiter.wait_ms(key) for limiter, key in limits)
        if wait_ms:
            raise RateLimited(wait_ms)
        if await authenticate(self._engine, username, password):
            return True
        for limiter, key in limits:
            limiter.take(key)
        return False
