"""Sliding-window rate limits, in process or shared through Redis."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from server.clock import Clock
from server.redisconn import UNREACHABLE
from server.settings import RateLimit

log = logging.getLogger("tv.ratelimit")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Claim:
    """One action counted by ``claim``: refused (``wait_s`` set), or counted until released."""

    key: str
    wait_s: float | None
    """None: allowed and counted; else the seconds before the next one would be."""
    member: str = ""
    """Which entry of the window is this action's, so that ``release`` removes only it."""
    local: bool = False
    """Counted by this process while Redis was away (FallbackRateLimiter)."""


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: RateLimit) -> float | None:
        """Count one action; None if allowed, else the seconds to wait."""

    async def peek(self, key: str, limit: RateLimit) -> float | None:
        """Like hit, without counting: would the next action be refused?"""

    async def claim(self, key: str, limit: RateLimit) -> Claim:
        """Like hit, in one atomic step, remembering which entry was counted."""

    async def release(self, claim: Claim) -> None:
        """Uncount an allowed claim (an action that turned out not to count)."""

    async def hit_all(self, checks: Sequence[tuple[str, RateLimit]]) -> float | None:
        """Count one action against every limit, or against none, in one atomic
        step: None if every limit allows it, else the longest wait."""


class MemoryRateLimiter:
    """Per-process sliding log; the embedded default.

    Memory follows the keys active within their window, not every key ever
    seen: each window length keeps its keys in least-recently-used order,
    and each count first drops up to two keys at the old end whose last hit
    has left the window (amortised constant time, faster than new keys
    come). ``max_keys`` bounds what is left even when a crowd of fresh keys
    arrives within one window: the oldest go first.
    """

    def __init__(self, clock: Clock, max_keys: int = 200_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        # Lists, not deques: most keys hold one or two hits, and a deque
        # costs about 600 bytes even then (measured: 5 MB a minute of them
        # under the show's stream of new viewers).
        self._by_window: dict[float, OrderedDict[str, list[float]]] = {}

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._by_window.values())

    def _window(self, key: str, limit: RateLimit) -> list[float]:
        now = self.clock.monotonic()
        keys = self._by_window.setdefault(limit.window_s, OrderedDict())
        hits = keys.get(key)
        if hits is None:
            hits = keys[key] = []
        else:
            keys.move_to_end(key)
        if hits and hits[0] <= now - limit.window_s:
            del hits[:bisect.bisect_right(hits, now - limit.window_s)]
        return hits

    def _forget_stale(self) -> None:
        """Called before each count, never between a window's fetch and its use."""
        now = self.clock.monotonic()
        for window_s, keys in self._by_window.items():
            for _ in range(2):
                if not keys:
                    break
                oldest, hits = next(iter(keys.items()))
                if hits and hits[-1] > now - window_s and len(self) <= self.max_keys:
                    break
                del keys[oldest]

    async def peek(self, key: str, limit: RateLimit) -> float | None:
        self._forget_stale()
        hits = self._window(key, limit)
        if len(hits) >= limit.count:
            return max(0.001, hits[0] + limit.window_s - self.clock.monotonic())
        return None

    async def hit(self, key: str, limit: RateLimit) -> float | None:
        return (await self.claim(key, limit)).wait_s

    async def claim(self, key: str, limit: RateLimit) -> Claim:
        # No await between the count and the append: atomic within the process.
        self._forget_stale()
        hits = self._window(key, limit)
        now = self.clock.monotonic()
        if len(hits) >= limit.count:
            return Claim(key, max(0.001, hits[0] + limit.window_s - now))
        hits.append(now)
        return Claim(key, None, repr(now))

    async def hit_all(self, checks: Sequence[tuple[str, RateLimit]]) -> float | None:
        # No await between the counts and the appends: atomic within the process.
        self._forget_stale()
        windows = [(self._window(key, limit), limit) for key, limit in checks]
        now = self.clock.monotonic()
        waits = [hits[0] + limit.window_s - now for hits, limit in windows
                 if len(hits) >= limit.count]
        if waits:
            return max(0.001, max(waits))
        for hits, _limit in windows:
            hits.append(now)
        return None

    async def release(self, claim: Claim) -> None:
        hits = next((keys[claim.key] for keys in self._by_window.values()
                     if claim.key in keys), None)
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


# The same for several limits at once: all counted, or none (one round trip).
_LUA_ALL = """
local now, member = tonumber(ARGV[1]), ARGV[2]
local worst = nil
for i, key in ipairs(KEYS) do
  local window, count = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= count then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local wait = tonumber(oldest[2]) + window - now
    if worst == nil or wait > worst then worst = wait end
  end
end
if worst ~= nil then return tostring(worst) end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[1 + 2 * i]) * 1000))
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
        self._script_all = redis.register_script(_LUA_ALL)

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

    async def hit_all(self, checks: Sequence[tuple[str, RateLimit]]) -> float | None:
        args: list[Any] = [self.clock.now().timestamp(), uuid.uuid4().hex]
        for _key, limit in checks:
            args += [limit.window_s, limit.count]
        result = await self._script_all(keys=[f"{self.prefix}:rl:{k}" for k, _ in checks],
                                        args=args)
        text = result.decode() if isinstance(result, bytes) else str(result)
        return max(0.001, float(text)) if text else None

    async def release(self, claim: Claim) -> None:
        if claim.wait_s is None:
            await self.redis.zrem(f"{self.prefix}:rl:{claim.key}", claim.member)



class FallbackRateLimiter:
    """Redis's show-wide limits while Redis answers; this process's own meanwhile.

    A limit that cannot be checked must not turn a question, a vote or a
    sign-in into an error: while Redis is away each process counts by itself
    (with N processes a viewer may get up to N times the limit, for as long
    as the outage lasts). A circuit breaker: after a failure no request asks
    Redis again; a background probe does, every ``retry_s``, so that only the
    request that met the failure waited for it.
    """

    def __init__(self, shared: RateLimiter, local: RateLimiter, clock: Clock,
                 deadline_s: float, retry_s: float) -> None:
        self.shared = shared
        self.local = local
        self.clock = clock
        self.deadline_s = deadline_s
        self.retry_s = retry_s
        self._down_since: float | None = None
        self._prober: asyncio.Task[None] | None = None

    async def hit(self, key: str, limit: RateLimit) -> float | None:
        return await self._either(lambda limiter: limiter.hit(key, limit))

    async def peek(self, key: str, limit: RateLimit) -> float | None:
        return await self._either(lambda limiter: limiter.peek(key, limit))

    async def hit_all(self, checks: Sequence[tuple[str, RateLimit]]) -> float | None:
        return await self._either(lambda limiter: limiter.hit_all(checks))

    async def claim(self, key: str, limit: RateLimit) -> Claim:
        async def counted(limiter: RateLimiter) -> Claim:
            return replace(await limiter.claim(key, limit), local=limiter is self.local)

        return await self._either(counted)

    async def release(self, claim: Claim) -> None:
        """Give the claim back where it was counted (Redis may have come or gone since)."""
        if claim.local:
            await self.local.release(claim)
            return
        with contextlib.suppress(*UNREACHABLE):  # the entry ages out of the window anyway
            async with asyncio.timeout(self.deadline_s):
                await self.shared.release(claim)

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober

    async def _either(self, use: Callable[[RateLimiter], Awaitable[_T]]) -> _T:
        """``use`` on Redis while it answers, else on this process."""
        if self._down_since is None:
            try:
                async with asyncio.timeout(self.deadline_s):
                    return await use(self.shared)
            except UNREACHABLE as e:
                self._went_down(e)
        return await use(self.local)

    def _went_down(self, error: BaseException) -> None:
        if self._down_since is not None:
            return
        self._down_since = self.clock.monotonic()
        log.warning("Redis cannot be reached: each process counts the rate limits "
                    "(questions, votes, sign-ins, viewers) by itself until it is back",
                    extra={"error": str(error) or type(error).__name__, "retry_s": self.retry_s})
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe(), name="rate-limit-redis-probe")

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            try:
                async with asyncio.timeout(self.deadline_s):
                    await self.shared.peek("probe", _PROBE)
            except UNREACHABLE:
                continue
            break
        down_s = self.clock.monotonic() - (self._down_since or 0.0)
        self._down_since = None
        log.info("Redis is back: the rate limits are shared by every process again",
                 extra={"down_s": round(down_s, 1)})


_PROBE = RateLimit(1, 1)
