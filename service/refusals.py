"""Why the domain refused a request; nothing changed. The adapters answer each with its
own status or error code (REST: 404, 403, 409, 422; the socket: `not_found`, `forbidden`,
`limit_reached`, `bad_request`)."""

from __future__ import annotations


class Refused(Exception):
    """A membership request refused; nothing changed."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(Refused):
    """No such room, user or member."""


class Forbidden(Refused):
    """Not allowed: a private room or dm of others, a reserved name, a role too low."""


class Conflict(Refused):
    """The room's state forbids it: the name exists, the last owner, the room is full."""


class Invalid(Refused):
    """The request itself is wrong: a bad cursor, a dm with yourself, an unknown kind."""


class LimitReached(Refused):
    """One more than a limit allows on a message (emoji: PROTOCOL.md, `limit_reached`)."""
