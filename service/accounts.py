"""Accounts: registration and password checks. Passwords are argon2 hashes, never logged."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from .models import User
from .security import hash_password, verify_password
from .validation import InvalidInput, normalize_username


class UsernameTaken(Exception):
    pass


async def register(engine: AsyncEngine, username: str, password: str) -> None:
    """Create the account; raises UsernameTaken (names are already lower-cased)."""
    password_hash = await hash_password(password)
    async with engine.begin() as conn:
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
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        stored = await session.scalar(select(User.password_hash).where(User.username == name))
    return await verify_password(password, stored)
