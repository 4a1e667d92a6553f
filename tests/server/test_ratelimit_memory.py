"""The in-process rate limiter holds the keys of its windows, not every key ever seen."""

from __future__ import annotations

from datetime import UTC, datetime

from server.ratelimit import MemoryRateLimiter
from server.settings import RateLimit
from tests.fakes import FakeClock

ASK = RateLimit(count=5, window_s=600)
PER_QUESTION = RateLimit(count=40, window_s=3600)


async def test_a_stream_of_new_viewers_keeps_memory_flat_and_every_limit_holds() -> None:
    clock = FakeClock(datetime(2027, 5, 9, 18, 0, tzinfo=UTC))
    limiter = MemoryRateLimiter(clock)
    # One address votes on one question all evening: a long window.
    for _ in range(PER_QUESTION.count):
        assert await limiter.hit("vote:ip:10.0.0.1:q7", PER_QUESTION) is None
    held = []
    # Two hours of show, a new viewer asking every second, four times each.
    for second in range(7200):
        viewer = f"ask:viewer:{second}"
        for _ in range(4):
            assert await limiter.hit(viewer, ASK) is None
        held.append(len(limiter))
        clock.advance(1)
        if second == 100:
            # A viewer who asked four times may ask once more, then waits.
            assert await limiter.hit("ask:viewer:95", ASK) is None
            assert await limiter.hit("ask:viewer:95", ASK) is not None
    # What is kept follows the window (600 s of viewers), not the 7,200 seen.
    assert max(held[1200:]) <= ASK.window_s + 2, max(held)
    assert max(held[1200:]) - min(held[1200:]) <= 4
    # Two hours later, that address's hour has passed: it may vote again.
    assert await limiter.hit("vote:ip:10.0.0.1:q7", PER_QUESTION) is None


async def test_a_long_window_key_survives_while_shorter_ones_come_and_go() -> None:
    clock = FakeClock(datetime(2027, 5, 9, 18, 0, tzinfo=UTC))
    limiter = MemoryRateLimiter(clock)
    for _ in range(PER_QUESTION.count):
        assert await limiter.hit("vote:ip:10.0.0.1:q7", PER_QUESTION) is None
    for second in range(3000):  # 50 minutes of other viewers, none idle
        assert await limiter.hit(f"ask:viewer:{second}", ASK) is None
        clock.advance(1)
    wait = await limiter.hit("vote:ip:10.0.0.1:q7", PER_QUESTION)
    assert wait is not None and 590 <= wait <= 600, wait
    assert len(limiter) <= ASK.window_s + 3
