"""Sliding-window rate limits, in process or shared through Redis."""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any, Protocol

from server.clock import Clock
from server.settings import RateLimit


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: RateLimit) -> float | None:
        """Count one action; None if allowed, else the seconds to wait."""

    async def peek(self, key: str, limit: RateLimit) -> float | None:
        """Like hit, without counting: would the next action be refused?"""


class MemoryRateLimiter:
    """Per-process sliding log; the embedded default."""

    def __init__(self, clock: Clock, max_keys: int = 200_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def _window(self, key: str, limit: RateLimit) -> deque[float]:
        now = self.clock.monotonic()
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._evict(now, limit.window_s)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - limit.window_s:
            hits.popleft()
        return hits

    def _evict(self, now: float, window_s: float) -> None:
        stale = [k for k, v in self._hits.items() if not v or v[-1] <= now - window_s]
        for k in stale:
            del self._hits[k]

    async def peek(self, key: str, limit: RateLimit) -> float | None:
        hits = self._window(key, limit)
        if len(hits) >= limit.count:
            return max(0.001, hits[0] + limit.window_s - self.clock.monotonic())
        return None

    async def hit(self, key: str, limit: RateLimit) -> float | None:
        wait = await self.peek(key, limit)
        if wait is None:
            self._hits[key].append(self.clock.monotonic())
        return wait


# Atomic sliding log in a sorted set: drop old hits, count, add if allowed.
_LUA = """
local key, now, window, count, member = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]),
    tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local n = redis.call('ZCARD', key)
if n >= count then
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return tostring(tonumber(oldest[2]) + window - now)
end
if member ~= '' then
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, math.ceil(window * 1000))
end
return ''
"""


class RedisRateLimiter:
    """Shared by every process using the same Redis, so limits hold show-wide."""

    def __init__(self, redis: Any, prefix: str, clock: Clock) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        self._script = redis.register_script(_LUA)

    async def _run(self, key: str, limit: RateLimit, count: bool) -> float | None:
        # Wall time, because processes on several machines share the window.
        now = self.clock.now().timestamp()
        member = uuid.uuid4().hex if count else ""
        result = await self._script(keys=[f"{self.prefix}:rl:{key}"],
                                    args=[now, limit.window_s, limit.count, member])
        text = result.decode() if isinstance(result, bytes) else str(result)
        return max(0.001, float(text)) if text else None

    async def hit(self, key: str, limit: RateLimit) -> float | None:
        return await self._run(key, limit, count=True)

    async def peek(self, key: str, limit: RateLimit) -> float | None:
        return await self._run(key, limit, count=False)
