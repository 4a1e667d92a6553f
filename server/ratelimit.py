"""Sliding-window rate limits, in process or shared through Redis."""

from __future__ import annotations

import contextlib
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from server.clock import Clock
from server.settings import RateLimit


@dataclass(frozen=True)
class Claim:
    """One action counted by ``claim``: refused (``wait_s`` set), or counted until released."""

    key: str
    wait_s: float | None
    """None: allowed and counted; else the seconds before the next one would be."""
    member: str = ""
    """Which entry of the window is this action's, so that ``release`` removes only it."""


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: RateLimit) -> float | None:
        """Count one action; None if allowed, else the seconds to wait."""

    async def peek(self, key: str, limit: RateLimit) -> float | None:
        """Like hit, without counting: would the next action be refused?"""

    async def claim(self, key: str, limit: RateLimit) -> Claim:
        """Like hit, in one atomic step, remembering which entry was counted."""

    async def release(self, claim: Claim) -> None:
        """Uncount an allowed claim (an action that turned out not to count)."""


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
        return (await self.claim(key, limit)).wait_s

    async def claim(self, key: str, limit: RateLimit) -> Claim:
        # No await between the count and the append: atomic within the process.
        hits = self._window(key, limit)
        now = self.clock.monotonic()
        if len(hits) >= limit.count:
            return Claim(key, max(0.001, hits[0] + limit.window_s - now))
        hits.append(now)
        return Claim(key, None, repr(now))

    async def release(self, claim: Claim) -> None:
        hits = self._hits.get(claim.key)
        if claim.wait_s is None and hits is not None:
            with contextlib.suppress(ValueError):  # already out of the window
                hits.remove(float(claim.member))


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

    async def _run(self, key: str, limit: RateLimit, member: str) -> float | None:
        # Wall time, because processes on several machines share the window.
        now = self.clock.now().timestamp()
        result = await self._script(keys=[f"{self.prefix}:rl:{key}"],
                                    args=[now, limit.window_s, limit.count, member])
        text = result.decode() if isinstance(result, bytes) else str(result)
        return max(0.001, float(text)) if text else None

    async def hit(self, key: str, limit: RateLimit) -> float | None:
        return await self._run(key, limit, uuid.uuid4().hex)

    async def peek(self, key: str, limit: RateLimit) -> float | None:
        return await self._run(key, limit, "")

    async def claim(self, key: str, limit: RateLimit) -> Claim:
        member = uuid.uuid4().hex
        wait = await self._run(key, limit, member)
        return Claim(key, wait, member if wait is None else "")

    async def release(self, claim: Claim) -> None:
        if claim.wait_s is None:
            await self.redis.zrem(f"{self.prefix}:rl:{claim.key}", claim.member)
