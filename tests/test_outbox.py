"""The outbox's accounting (service/outbox.py), in memory."""

from __future__ import annotations

from service.outbox import FRAME_OVERHEAD, Outbox


def test_live_frames_are_bounded_by_count_and_answers_do_not_count() -> None:
    box = Outbox(live_limit=3, max_bytes=1_000_000)
    assert all(box.push_live(f"live {i}") for i in range(3))
    assert box.push_live("one too many") is False
    assert box.live == 3 and len(box) == 3
    # A resume longer than the live limit still goes out in full.
    assert all(box.push_answer(f"replay {i}") for i in range(50))
    assert box.answers == 50 and box.live == 3
    assert box.push_live("still too many") is False


def test_popping_frees_the_live_budget_in_order() -> None:
    box = Outbox(live_limit=2, max_bytes=1_000_000)
    box.push_live("a")
    box.push_answer("b")
    box.push_live("c")
    assert box.push_live("d") is False
    assert [box.pop(), box.pop()] == ["a", "b"]
    assert box.live == 1 and box.answers == 0
    assert box.push_live("d") is True
    assert [box.pop(), box.pop()] == ["c", "d"]
    assert len(box) == 0 and box.bytes == 0


def test_every_frame_counts_toward_the_size_bound() -> None:
    frame = "x" * 900
    cost = len(frame) + FRAME_OVERHEAD
    box = Outbox(live_limit=1000, max_bytes=cost * 4)
    assert box.push_answer(frame) and box.push_live(frame) and box.push_answer(frame)
    assert box.push_live(frame)
    assert box.bytes == cost * 4
    # Full: neither kind fits, and nothing was queued by the refusals.
    assert box.push_answer("y") is False
    assert box.push_live("y") is False
    assert len(box) == 4 and box.bytes == cost * 4
    box.pop()
    assert box.bytes == cost * 3
    assert box.push_answer(frame) is True


def test_a_tiny_frame_flood_is_bounded_by_its_overhead() -> None:
    """Pongs are a few characters each; what they cost in memory is mostly per frame."""
    box = Outbox(live_limit=10, max_bytes=FRAME_OVERHEAD * 1000)
    accepted = 0
    while box.push_answer('{"type":"pong"}'):
        accepted += 1
    assert 0 < accepted < 1000
    assert box.bytes <= FRAME_OVERHEAD * 1000


def test_a_closed_outbox_drops_everything_without_calling_it_overflow() -> None:
    box = Outbox(live_limit=1, max_bytes=10_000)
    box.push_live("a")
    box.close()
    assert len(box) == 0 and box.bytes == 0 and box.live == 0
    assert box.push_live("b") is True and box.push_answer("c") is True
    assert len(box) == 0
