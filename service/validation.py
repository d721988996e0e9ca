"""What a username, a password, a room name, a body and a client_id may be (PROTOCOL.md).

Shared by the REST routes and the socket, so both refuse the same things the same way.
"""

from __future__ import annotations

import re
import unicodedata

# The one definition of each name rule. GET /api/config hands these strings to the page, so
# they keep their anchors (RegExp.test searches) and stay in the subset that Python's re,
# JavaScript's RegExp and pydantic's regex engine read alike. Match with fullmatch: Python's
# `$` also matches before a final newline.
USERNAME_PATTERN = r"^[a-z0-9_][a-z0-9_.-]{2,31}$"
ROOM_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
USERNAME_RE = re.compile(USERNAME_PATTERN)
ROOM_RE = re.compile(ROOM_PATTERN)
USERNAME_INVALID = f"username must match {USERNAME_PATTERN} after lower-casing"
ROOM_INVALID = f"room must match {ROOM_PATTERN}"
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
        raise InvalidInput(USERNAME_INVALID)
    return name


def check_password(value: str) -> str:
    if not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        raise InvalidInput(f"password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    return value


def check_room(value: object) -> str:
    if not isinstance(value, str) or not ROOM_RE.fullmatch(value):
        raise InvalidInput(ROOM_INVALID)
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


EMOJI_MAX = 32
# Not in an emoji: controls, surrogates, spaces and separators, and format characters other
# than the zero-width joiner that binds emoji sequences (PROTOCOL.md, Emoji).
_EMOJI_REFUSED = frozenset({"Cc", "Cs", "Zs", "Zl", "Zp", "Cf"})
_ZWJ = "\u200d"


def check_emoji(value: object) -> str:
    """A reaction key: 1 to 32 code points, compared code point for code point (no
    normalisation), none of them a control, separator, surrogate, `/`, or a format
    character other than U+200D."""
    if not isinstance(value, str) or not 1 <= len(value) <= EMOJI_MAX:
        raise InvalidInput(f"emoji must be a string of 1 to {EMOJI_MAX} characters")
    for char in value:
        if char == "/" or (char != _ZWJ and unicodedata.category(char) in _EMOJI_REFUSED):
            raise InvalidInput(f"emoji must not contain U+{ord(char):04X}")
    return value


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
