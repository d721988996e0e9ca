"""Token checks with the cache of verified tokens in front of them: expiry still applies on
every use, and a cached token is worth nothing under another secret or once altered."""

from __future__ import annotations

import time

import pytest

from service import security

SECRET = "s" * 48


def test_a_cached_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    token = security.issue_token("alice", SECRET, 60)
    claims = security.read_token_claims(token, SECRET)
    assert claims is not None and claims[0] == "alice"
    assert (token, SECRET) in security._VERIFIED  # the second use is a lookup
    assert security.read_token_claims(token, SECRET) == claims
    later = claims[1] + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert security.read_token_claims(token, SECRET) is None
    assert (token, SECRET) not in security._VERIFIED


def test_a_cached_token_is_refused_under_another_secret_or_altered() -> None:
    token = security.issue_token("bob", SECRET, 60)
    assert security.read_token(token, SECRET) == "bob"
    assert security.read_token(token, "t" * 48) is None
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[::-1]}"
    assert security.read_token(forged, SECRET) is None
    assert security.read_token(token + "x", SECRET) is None


def test_refused_tokens_are_not_cached() -> None:
    expired = security.issue_token("carol", SECRET, -10)
    assert security.read_token(expired, SECRET) is None
    assert (expired, SECRET) not in security._VERIFIED
    assert security.read_token("not a token", SECRET) is None
    assert ("not a token", SECRET) not in security._VERIFIED


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "_VERIFIED_MAX", 5)
    monkeypatch.setattr(security, "_VERIFIED", {})
    now = int(time.time())
    tokens = [security.issue_token(f"user{i}", SECRET, 60 + i) for i in range(12)]
    for token in tokens:
        assert security.read_token(token, SECRET) is not None
    assert len(security._VERIFIED) == 5
    assert list(security._VERIFIED) == [(t, SECRET) for t in tokens[-5:]]
    assert all(exp >= now + 60 for _, exp in security._VERIFIED.values())
