"""The frames waiting for one socket, with explicit accounting.

Two kinds of frames wait: live traffic (room events fanned out to every member) and answers
to the client's own requests (a join's replay, `joined`, acks, errors, pongs). Both are
bounded, differently, because they fail differently:

- live frames by count (CHAT_SEND_QUEUE_LIMIT): more waiting means the client reads slower
  than its rooms talk, and it is better off reconnecting with `since` (close 1013) than
  falling further behind;
- answers are never cut off by live traffic queued behind them (a resume longer than the
  live limit is still delivered), and so are bounded by size instead: every frame, live or
  answer, counts toward CHAT_SEND_QUEUE_MAX_BYTES, estimated as its characters plus a fixed
  overhead per frame (a Python str holds 1 to 4 bytes per character).

A push that would pass a bound is refused; the connection then closes with 1013.
"""

from __future__ import annotations

from collections import deque

# What a queued frame costs beyond its characters: the str object and the queue's tuple.
FRAME_OVERHEAD = 100


class Outbox:
    __slots__ = ("_frames", "_live", "_live_limit", "_max_bytes", "bytes", "closed")

    def __init__(self, live_limit: int, max_bytes: int) -> None:
        # (frame, is_live); None while nothing waits (most sockets, most of the time: an
        # empty deque holds 0.8 KiB)
        self._frames: deque[tuple[str, bool]] | None = None
        self._live = 0
        self._live_limit = live_limit
        self._max_bytes = max_bytes
        self.bytes = 0
        self.closed = False

    def __len__(self) -> int:
        return 0 if self._frames is None else len(self._frames)

    @property
    def live(self) -> int:
        """Live frames waiting."""
        return self._live

    @property
    def answers(self) -> int:
        """Answers waiting."""
        return len(self) - self._live

    def push_live(self, frame: str) -> bool:
        """Queue a live frame; False (nothing queued) when a bound would be passed. Once
        closed, frames are dropped (True: not an overflow)."""
        if self.closed:
            return True
        if self._live >= self._live_limit or not self._add(frame, True):
            return False
        self._live += 1
        return True

    def push_answer(self, frame: str) -> bool:
        """Queue an answer; False (nothing queued) when the size bound would be passed.
        Once closed, frames are dropped (True: not an overflow)."""
        return self.closed or self._add(frame, False)

    def _add(self, frame: str, live: bool) -> bool:
        cost = len(frame) + FRAME_OVERHEAD
        if self.bytes + cost > self._max_bytes:
            return False
        if self._frames is None:
            self._frames = deque()
        self._frames.append((frame, live))
        self.bytes += cost
        return True

    def pop(self) -> str:
        """The oldest frame; raises IndexError when empty."""
        frames = self._frames
        if frames is None:
            raise IndexError("pop from an empty outbox")
        frame, live = frames.popleft()
        if not frames:
            self._frames = None
        self.bytes -= len(frame) + FRAME_OVERHEAD
        if live:
            self._live -= 1
        return frame

    def close(self) -> None:
        """Drop what waits; later pushes are dropped too."""
        self.closed = True
        self._frames = None
        self._live = 0
        self.bytes = 0
