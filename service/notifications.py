"""What instances tell each other over the fan-out channel, and how it fits in a NOTIFY.

Every notification is a JSON object whose `k` names its kind:
- `m`: committed messages. `m` lists `[room_id, seq, author, body, client_id, created_at]`
  for messages small enough to travel inline; `r` lists `[room_id, seq]` for the others,
  which receivers read back from the database. Either way a notification is a wake-up: the
  database stays the truth, and a receiver that sees a gap reads it back. These are built
  by the database itself, in the writer's transaction (chat_post_messages, migration 0002):
  payloads stay under 7900 bytes (PostgreSQL refuses 8000), and an entry over 6000 bytes
  travels as a reference.
- `p`: presence, `{"r": room_id, "n": room, "u": user, "e": "join" | "leave"}`.
- `t`: typing, `{"r": room_id, "n": room, "u": user}`.
- `c`: the listener's canary, `{"i": instance_id, "n": counter}`.
"""

from __future__ import annotations

from typing import Any

import orjson


def decode(payload: str) -> dict[str, Any] | None:
    """The notification as a dict, or None when it is not one of ours."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("k"), str) else None


def encode(kind: str, **fields: Any) -> str:
    return orjson.dumps({"k": kind, **fields}).decode()
