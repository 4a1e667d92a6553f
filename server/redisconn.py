"""Redis clients that fail fast, and what counts as "Redis cannot be reached".

redis-py's defaults suit a batch job, not a live show: a 5 s socket timeout
and ten retries with backoff make one command against a stopped Redis take
seconds, and every request waiting on it waits that long. Here a command
fails within about ``timeout_s`` (see ``deadline``), and the callers fall
back (rate limits per process, pushes held) instead of waiting.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

UNREACHABLE: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
"""What a Redis call raises when Redis is stopped, unreachable, too slow or unusable."""


def fast_client(url: str, timeout_s: float, retries: int = 1) -> Redis:
    """A client whose commands fail within about ``timeout_s`` per attempt.

    One immediate retry (the default) reconnects a pooled connection that a
    Redis restart closed, so the first command after a restart does not fail;
    ``retries=0`` lets every lost connection surface (the push subscription
    must know it lost messages).
    """
    return Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                          retry=Retry(NoBackoff(), retries))


def deadline(timeout_s: float) -> float:
    """How long to let a command of ``fast_client(url, timeout_s)`` run, all in all.

    About one attempt: the retry is for a connection that a restart closed,
    which fails at once; against a Redis that does not answer, a second
    attempt would only double the wait.
    """
    return timeout_s + 0.1
