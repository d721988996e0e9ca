"""Passwords (argon2) and access tokens (HS256 JWT)."""

from __future__ import annotations

import asyncio
import time

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ALGORITHM = "HS256"  # pinned: a token naming any other algorithm is refused

_hasher = PasswordHasher()
# Verified against when the user does not exist, so that both failures cost the same.
_DUMMY_HASH = _hasher.hash("not-a-real-password-0123456789")


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow; keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password: str, password_hash: str | None) -> bool:
    """True when `password` matches; takes as long when there is no such user (hash None)."""

    def verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


def issue_token(username: str, secret: str, ttl_seconds: int) -> str:
    now = int(time.time())
    claims = {"sub": username, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# Tokens already verified: (token, secret) -> (username, expiry). Checking a signature costs
# a visible share of a history page; a token's claims never change, and expiry is checked on
# every use. Bounded; the oldest entries go first.
_VERIFIED: dict[tuple[str, str], tuple[str, float]] = {}
_VERIFIED_MAX = 10_000


def read_token_claims(token: str, secret: str) -> tuple[str, float] | None:
    """(username, expiry as a Unix time) of a valid, unexpired token, else None."""
    key = (token, secret)
    known = _VERIFIED.get(key)
    if known is not None:
        if known[1] > time.time():
            return known
        del _VERIFIED[key]
        return None
    claims = _verify(token, secret)
    if claims is not None:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            del _VERIFIED[next(iter(_VERIFIED))]
        _VERIFIED[key] = claims
    return claims


def _verify(token: str, secret: str) -> tuple[str, float] | None:
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp", "iat"]}
        )
    except jwt.PyJWTError:
        return None
    sub, exp = claims.get("sub"), claims.get("exp")
    if not isinstance(sub, str) or not isinstance(exp, (int, float)):
        return None
    return sub, float(exp)


def read_token(token: str, secret: str) -> str | None:
    """The username a valid, unexpired token names, else None."""
    claims = read_token_claims(token, secret)
    return claims[0] if claims else None
