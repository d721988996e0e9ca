"""What instances tell each other over the fan-out channel, and how it fits in a NOTIFY.

Every notification is a JSON object whose `k` names its kind:
- `m`: committed messages. `m` lists `[room_id, seq, author, body, client_id, created_at]`
  for messages small enough to travel inline; `r` lists `[room_id, seq]` for the others,
  which receivers read back from the database. Either way a notification is a wake-up: the
  database stays the truth, and a receiver that sees a gap reads it back.
- `p`: presence, `{"r": room_id, "n": room, "u": user, "e": "join" | "leave"}`.
- `t`: typing, `{"r": room_id, "n": room, "u": user}`.
- `c`: the listener's canary, `{"i": instance_id, "n": counter}`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from .history import StoredMessage

# PostgreSQL refuses payloads of 8000 bytes or more; leave room for the envelope.
PAYLOAD_LIMIT = 7900
_INLINE_LIMIT = 6000
_ENVELOPE = len(b'{"k":"m","m":[],"r":[]}')


def encode_messages(messages: Iterable[tuple[int, StoredMessage]]) -> list[str]:
    """Pack committed messages into as few notifications as fit under PAYLOAD_LIMIT."""
    payloads: list[str] = []
    inline: list[bytes] = []
    refs: list[bytes] = []
    size = _ENVELOPE

    def flush() -> None:
        nonlocal inline, refs, size
        if inline or refs:
            payloads.append(
                '{"k":"m","m":['
                + b",".join(inline).decode()
                + '],"r":['
                + b",".join(refs).decode()
                + "]}"
            )
        inline, refs, size = [], [], _ENVELOPE

    for room_id, m in messages:
        entry = orjson.dumps(
            [room_id, m.seq, m.author, m.body, m.client_id, m.created_at.isoformat()]
        )
        is_ref = len(entry) > _INLINE_LIMIT
        if is_ref:
            entry = orjson.dumps([room_id, m.seq])
        if size + len(entry) + 1 > PAYLOAD_LIMIT:
            flush()
        (refs if is_ref else inline).append(entry)
        size += len(entry) + 1
    flush()
    return payloads


def decode(payload: str) -> dict[str, Any] | None:
    """The notification as a dict, or None when it is not one of ours."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("k"), str) else None


def encode(kind: str, **fields: Any) -> str:
    return orjson.dumps({"k": kind, **fields}).decode()
