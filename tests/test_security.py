"""Token checks with the cache of verified tokens in front of them: expiry still applies on
every use, and a cached token is worth nothing under another secret or once altered. And
password checks on their own bounded threads."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Literal

import jwt
import pytest
from argon2 import PasswordHasher
from prometheus_client import REGISTRY

from service import security
from service.security import Passwords, PasswordsBusy

SECRET = "s" * 48
SID = uuid.uuid4()


def username(token: str, secret: str = SECRET) -> str | None:
    claims = security.read_token_claims(token, secret)
    return claims.username if claims else None


def test_a_cached_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    token = security.issue_token("alice", SECRET, 60, SID)
    claims = security.read_token_claims(token, SECRET)
    assert claims is not None and claims.username == "alice" and claims.session_id == SID
    assert (token, SECRET) in security._VERIFIED  # the second use is a lookup
    assert security.read_token_claims(token, SECRET) == claims
    later = claims.expires_at + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert security.read_token_claims(token, SECRET) is None
    assert (token, SECRET) not in security._VERIFIED


def test_a_cached_token_is_refused_under_another_secret_or_altered() -> None:
    token = security.issue_token("bob", SECRET, 60, SID)
    assert username(token) == "bob"
    assert username(token, "t" * 48) is None
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[::-1]}"
    assert username(forged) is None
    assert username(token + "x") is None


def test_refused_tokens_are_not_cached() -> None:
    expired = security.issue_token("carol", SECRET, -10, SID)
    assert username(expired) is None
    assert (expired, SECRET) not in security._VERIFIED
    assert username("not a token") is None
    assert ("not a token", SECRET) not in security._VERIFIED


def test_a_token_without_a_session_is_refused() -> None:
    """v1 tokens named no session: refused since v2, however well signed."""
    v1 = security.issue_token("dave", SECRET, 60, None)
    assert username(v1) is None
    now = int(time.time())
    claims = {"sub": "dave", "iat": now, "exp": now + 60, "sid": "not-a-uuid"}
    assert username(jwt.encode(claims, SECRET, algorithm="HS256")) is None


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "_VERIFIED_MAX", 5)
    monkeypatch.setattr(security, "_VERIFIED", {})
    now = int(time.time())
    tokens = [security.issue_token(f"user{i}", SECRET, 60 + i, SID) for i in range(12)]
    for token in tokens:
        assert username(token) is not None
    assert len(security._VERIFIED) == 5
    assert list(security._VERIFIED) == [(t, SECRET) for t in tokens[-5:]]
    assert all(c.expires_at >= now + 60 for c in security._VERIFIED.values())


# -- passwords ---------------------------------------------------------------------------


class HeldHasher(PasswordHasher):
    """A cheap argon2 whose verifications wait until `release` is set."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.release = threading.Event()
        self.started = threading.Semaphore(0)

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.started.release()
        assert self.release.wait(10), "never released"
        return super().verify(hash, password)


def checks(op: str) -> float:
    return REGISTRY.get_sample_value("chat_password_checks_total", {"op": op}) or 0.0


async def test_hash_then_verify() -> None:
    """A hash verifies its password and no other; an unknown user (None) never verifies."""
    passwords = Passwords(1, 0, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    try:
        async with asyncio.timeout(30):
            stored = await passwords.hash("correct horse")
            assert await passwords.verify("correct horse", stored)
            assert not await passwords.verify("wrong horse", stored)
            assert not await passwords.verify("correct horse", "not a hash")
    finally:
        passwords.close()


async def test_past_the_threads_and_the_queue_a_check_is_refused_at_once() -> None:
    """One thread and a queue of one: a third check at once raises PasswordsBusy without
    running (and so does asking beforehand); the queue is reported, and once the two finish
    a check runs again."""
    hasher = HeldHasher()
    passwords = Passwords(1, 1, hasher)
    stored = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pw")
    before = checks("verify")
    try:
        async with asyncio.timeout(30):
            held = [asyncio.create_task(passwords.verify("pw", stored)) for _ in range(2)]
            await asyncio.to_thread(hasher.started.acquire)  # the first is running
            assert passwords.waiting == 1
            with pytest.raises(PasswordsBusy):
                await passwords.verify("pw", stored)
            with pytest.raises(PasswordsBusy):
                passwords.refuse_if_full()
            assert REGISTRY.get_sample_value("chat_password_queue_depth") == 1
            hasher.release.set()
            assert await asyncio.gather(*held) == [True, True]
            assert passwords.waiting == 0 and passwords.peak_waiting == 1
            assert REGISTRY.get_sample_value("chat_password_queue_depth") == 0
            passwords.refuse_if_full()  # room again
            assert await passwords.verify("pw", stored)
        assert checks("verify") - before == 3  # the refused one never ran
    finally:
        hasher.release.set()
        passwords.close()


async def test_close_cancels_the_waiting_checks() -> None:
    """Closing cancels what waits for a thread; the running check ends on its own."""
    hasher = HeldHasher()
    passwords = Passwords(1, 4, hasher)
    stored = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pw")
    try:
        async with asyncio.timeout(30):
            running = asyncio.create_task(passwords.verify("pw", stored))
            await asyncio.to_thread(hasher.started.acquire)
            waiting = asyncio.create_task(passwords.verify("pw", stored))
            await asyncio.sleep(0)
            passwords.close()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            hasher.release.set()
            assert await running
            assert passwords.waiting == 0
    finally:
        hasher.release.set()
