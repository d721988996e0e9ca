"""Passwords (argon2), on threads of their own, and access tokens (HS256 JWT)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from . import metrics

ALGORITHM = "HS256"  # pinned: a token naming any other algorithm is refused

_hasher = PasswordHasher()
# Verified against when the user does not exist, so that both failures cost the same.
_DUMMY_HASH = _hasher.hash("not-a-real-password-0123456789")

T = TypeVar("T")


class PasswordsBusy(Exception):
    """Every password thread is busy and as many hashes wait as may: nothing was done; try
    again shortly."""


def default_password_threads() -> int:
    """Half the CPUs this process may run on, at least one: the rest stays for the event
    loop (and, on a small machine, PostgreSQL)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


class Passwords:
    """argon2 hashing and verification (deliberately slow, and 64 MiB each while it runs with
    argon2-cffi's defaults) on a small pool of threads of its own, with a bound on how many
    may wait.

    Not asyncio's default executor: asyncpg resolves host names there (getaddrinfo), so a
    login flood queued in it would stall new database connections; and an unbounded queue
    would let a flood hold any number of requests and passwords. Past the bound a hash is
    refused at once with PasswordsBusy. `close()` when the app stops."""

    def __init__(
        self, threads: int, queue_limit: int, hasher: PasswordHasher | None = None
    ) -> None:
        self._threads = threads
        self.queue_limit = queue_limit
        self._hasher = hasher or _hasher
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="argon2")
        # Submitted and not finished: running (at most `threads`) plus waiting. Changed from
        # the loop and from the worker threads (a job's end), hence the lock.
        self._lock = threading.Lock()
        self._jobs = 0
        self.peak_waiting = 0

    def refuse_if_full(self) -> None:
        """Raise PasswordsBusy now if a check submitted now would be: lets a caller refuse
        before it does anything else for the check (the check itself may still be)."""
        with self._lock:
            self._refuse_if_full_locked()

    def _refuse_if_full_locked(self) -> None:
        if self._jobs >= self._threads + self.queue_limit:
            metrics.PASSWORD_BUSY.inc()
            raise PasswordsBusy("too many password checks waiting")

    @property
    def waiting(self) -> int:
        """Checks submitted that no thread has taken yet."""
        with self._lock:
            return max(0, self._jobs - self._threads)

    async def hash(self, password: str) -> str:
        """The argon2 hash of `password`; raises PasswordsBusy."""

        def run() -> str:
            metrics.PASSWORD_HASHES.inc()
            return self._hasher.hash(password)

        return await self._run(run)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """True when `password` matches; takes as long when there is no such user (hash
        None). Raises PasswordsBusy."""

        def run() -> bool:
            metrics.PASSWORD_VERIFICATIONS.inc()
            try:
                return self._hasher.verify(password_hash or _DUMMY_HASH, password) and bool(
                    password_hash
                )
            except (VerificationError, InvalidHashError):
                return False

        return await self._run(run)

    def _run(self, job: Callable[[], T]) -> asyncio.Future[T]:
        with self._lock:
            self._refuse_if_full_locked()
            self._jobs += 1
            if self._jobs > self._threads:
                metrics.PASSWORD_QUEUE.inc()
                self.peak_waiting = max(self.peak_waiting, self._jobs - self._threads)
                metrics.PASSWORD_QUEUE_PEAK.set(self.peak_waiting)
        try:
            future = self._executor.submit(job)
        except RuntimeError:  # closed: the app is stopping
            self._finished(None)
            raise PasswordsBusy("the instance is shutting down") from None
        # Runs when the job ends, or at once if it is cancelled before it started (a
        # cancelled request): either way its place is free again.
        future.add_done_callback(self._finished)
        return asyncio.wrap_future(future)

    def _finished(self, _: Future[Any] | None) -> None:
        with self._lock:
            if self._jobs > self._threads:
                metrics.PASSWORD_QUEUE.dec()
            self._jobs -= 1

    def close(self) -> None:
        """Stop: waiting hashes are cancelled; the running ones end on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class Claims(NamedTuple):
    """What a valid token says: who, until when (Unix time), and the session it belongs to."""

    username: str
    expires_at: float
    session_id: uuid.UUID


def issue_token(username: str, secret: str, ttl_seconds: int, session_id: uuid.UUID | None) -> str:
    """A signed token for `username` in session `session_id` (PROTOCOL.md, Sessions). Without
    a session id it is a v1 token, which `read_token_claims` refuses: only tests make those."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": username, "iat": now, "exp": now + ttl_seconds}
    if session_id is not None:
        claims["sid"] = str(session_id)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# Tokens already verified: (token, secret) -> claims. Checking a signature costs a visible
# share of a history page; a token's claims never change, and expiry is checked on every
# use (whether its session is still live is sessions.py's question). Bounded; the oldest
# entries go first.
_VERIFIED: dict[tuple[str, str], Claims] = {}
_VERIFIED_MAX = 10_000


def read_token_claims(token: str, secret: str) -> Claims | None:
    """The claims of a validly signed, unexpired token that names a session, else None."""
    key = (token, secret)
    known = _VERIFIED.get(key)
    if known is not None:
        if known.expires_at > time.time():
            return known
        del _VERIFIED[key]
        return None
    claims = _verify(token, secret)
    if claims is not None:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            del _VERIFIED[next(iter(_VERIFIED))]
        _VERIFIED[key] = claims
    return claims


def _verify(token: str, secret: str) -> Claims | None:
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp", "iat"]}
        )
    except jwt.PyJWTError:
        return None
    sub, exp, sid = claims.get("sub"), claims.get("exp"), claims.get("sid")
    if not isinstance(sub, str) or not isinstance(exp, (int, float)) or not isinstance(sid, str):
        return None  # no session: a v1 token, refused since v2 (PROTOCOL.md, v2 changes)
    try:
        session_id = uuid.UUID(sid)
    except ValueError:
        return None
    return Claims(sub, float(exp), session_id)
