"""What a username, a password, a room name, a body and a client_id may be (PROTOCOL.md).

Shared by the REST routes and the socket, so both refuse the same things the same way.
"""

from __future__ import annotations

import re

USERNAME_RE = re.compile(r"[a-z0-9_][a-z0-9_.-]{2,31}")
ROOM_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
PASSWORD_MIN, PASSWORD_MAX = 8, 128
CLIENT_ID_MAX = 64


class InvalidInput(ValueError):
    """Input refused; `code` is the protocol's error code (`bad_request` or `too_large`)."""

    def __init__(self, detail: str, code: str = "bad_request") -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code


def normalize_username(value: str) -> str:
    name = value.lower()
    if not USERNAME_RE.fullmatch(name):
        raise InvalidInput(
            "username must be 3 to 32 characters of a-z, 0-9, '_', '.', '-', "
            "not starting with '.' or '-'"
        )
    return name


def check_password(value: str) -> str:
    if not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        raise InvalidInput(f"password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    return value


def check_room(value: object) -> str:
    if not isinstance(value, str) or not ROOM_RE.fullmatch(value):
        raise InvalidInput("room must match ^[a-z0-9][a-z0-9_-]{0,63}$")
    return value


def check_body(value: object, max_chars: int) -> str:
    """A body is 1..max_chars code points, not only whitespace, no NUL, valid Unicode."""
    if not isinstance(value, str):
        raise InvalidInput("body must be a string")
    if len(value) > max_chars:
        raise InvalidInput(f"body is longer than {max_chars} characters", code="too_large")
    if not value.strip():
        raise InvalidInput("body must not be empty or only whitespace")
    return _storable(value, "body")


def check_client_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= CLIENT_ID_MAX:
        raise InvalidInput(f"client_id must be a string of 1 to {CLIENT_ID_MAX} characters")
    return _storable(value, "client_id")


def _storable(value: str, what: str) -> str:
    """PostgreSQL text holds neither NUL nor unpaired surrogates (JSON can carry both)."""
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain U+0000")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} must not contain unpaired surrogates") from None
    return value
