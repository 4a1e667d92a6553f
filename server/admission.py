"""Bounded audience work: admitted, waited for a bounded time, or refused at once.

The programme comes first. Audience requests (questions, votes, lists) share
the process with the take log and the picture's fan-out, so every kind of
audience work goes through one of these:

- ``WriteQueue``: a bounded queue drained in batches by one writer. A request
  is refused at once (``Overloaded``) when the queue is full, or when what is
  already queued would take longer than ``max_wait_s`` to write at the rate
  the writer has been going.
- ``Lane``: at most ``concurrency`` operations at once (audience reads), at
  most ``queue`` waiting, none waiting longer than ``max_wait_s``.
- ``LoopMonitor``: how late the event loop runs. While it stays late (the
  picture's packets leave late too), new audience work is refused.

Each keeps counts for ``/healthz`` and ``/metrics`` that are read without any
I/O, so that health answers at once whatever the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger("tv.admission")

T = TypeVar("T")

_SAMPLES = 512
"""Recent durations kept for percentiles (a ring: memory stays flat)."""


class Overloaded(Exception):
    """Refused at once: this process has as much audience work as it can take."""

    def __init__(self, what: str, reason: str, retry_after_s: float) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason
        self.retry_after_s = retry_after_s


def _retry_after(base_s: float) -> float:
    """Spread retries over 1, 2 or 3 times the base, in whole seconds (what
    Retry-After can say): a whole audience refused at once must not come back
    at the same instant. (A fraction would be rounded up to the same 2 s.)"""
    return float(max(1, math.floor(base_s * (1.0 + 3.0 * random.random()))))


class Durations:
    """The last few hundred durations, for p50/p99 without unbounded memory."""

    def __init__(self) -> None:
        self._ring: deque[float] = deque(maxlen=_SAMPLES)

    def add(self, seconds: float) -> None:
        self._ring.append(seconds)

    def summary_ms(self) -> dict[str, float | None]:
        values = sorted(self._ring)
        if not values:
            return {"p50": None, "p99": None, "max": None}

        def rank(p: float) -> float:
            return round(values[max(0, math.ceil(p * len(values)) - 1)] * 1000, 1)

        return {"p50": rank(0.5), "p99": rank(0.99), "max": round(values[-1] * 1000, 1)}


class LoopMonitor:
    """Measures how late the event loop wakes a sleeper (its lag), continually.

    A single slow callback is a blip; ``overloaded`` is true only while the
    median lag of the last second stays above the threshold, so that a short
    spike does not refuse anyone.
    """

    INTERVAL_S = 0.025

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self._recent: deque[float] = deque(maxlen=round(1.0 / self.INTERVAL_S))
        self.worst_s = 0.0
        """The largest lag seen in the last second."""

    @property
    def lag_s(self) -> float:
        """The median lag over the last second."""
        if not self._recent:
            return 0.0
        values = sorted(self._recent)
        return values[len(values) // 2]

    @property
    def overloaded(self) -> bool:
        return self.lag_s > self.threshold_s

    def check(self, what: str) -> None:
        if self.overloaded:
            raise Overloaded(what, "event_loop_late", _retry_after(1.0))

    async def run(self) -> None:
        was_overloaded = False
        while True:
            start = time.monotonic()
            await asyncio.sleep(self.INTERVAL_S)
            self._recent.append(max(0.0, time.monotonic() - start - self.INTERVAL_S))
            self.worst_s = max(self._recent)
            if self.overloaded != was_overloaded:
                was_overloaded = self.overloaded
                if was_overloaded:
                    log.warning("the server is saturated: new audience requests are refused "
                                "until it catches up (the programme keeps priority)",
                                extra={"loop_lag_ms": round(self.lag_s * 1000, 1)})
                else:
                    log.info("the server caught up: audience requests are accepted again")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run(), name="loop-monitor")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stats(self) -> dict[str, Any]:
        return {"lag_ms": round(self.lag_s * 1000, 1), "worst_ms": round(self.worst_s * 1000, 1),
                "threshold_ms": round(self.threshold_s * 1000, 1),
                "overloaded": self.overloaded}


@dataclass
class _Counts:
    admitted: int = 0
    shed: int = 0


class WriteQueue(Generic[T]):
    """A bounded queue that one writer drains in batches of up to ``batch_max``."""

    def __init__(self, name: str, capacity: int, max_wait_s: float, batch_max: int,
                 loop: LoopMonitor | None = None) -> None:
        self.name = name
        self.capacity = capacity
        self.max_wait_s = max_wait_s
        self.batch_max = batch_max
        self.loop = loop
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize=capacity)
        self._rate: float | None = None
        """Items written per second while writing (an exponential average)."""
        self.counts = _Counts()
        self.writing = 0
        """Items taken by the writer and not yet written."""
        self.write_times = Durations()
        self._shed_logged_at = float("-inf")

    def __len__(self) -> int:
        return self._queue.qsize()

    def check(self) -> None:
        """Raise ``Overloaded`` now if an item would be refused; never waits."""
        try:
            if self.loop is not None:
                self.loop.check(self.name)
            queued = self._queue.qsize()
            if queued >= self.capacity:
                raise Overloaded(self.name, "queue_full", _retry_after(1.0))
            if self._rate is not None and queued >= self.batch_max \
                    and queued / self._rate > self.max_wait_s:
                raise Overloaded(self.name, "writer_behind", _retry_after(1.0))
        except Overloaded as e:
            self._shed(e)
            raise

    def put(self, item: T) -> None:
        """Queue ``item`` or raise ``Overloaded`` at once; never waits."""
        self.check()
        self._queue.put_nowait(item)  # check() saw room, and nothing awaited since
        self.counts.admitted += 1

    def _shed(self, error: Overloaded) -> None:
        self.counts.shed += 1
        now = time.monotonic()
        if now - self._shed_logged_at >= 10.0:  # one line per burst, not per request
            self._shed_logged_at = now
            log.warning("refusing %s for now (503 with Retry-After): %s", self.name, error.reason,
                        extra={"queue": self.name, "queued": self._queue.qsize(),
                               "capacity": self.capacity, "shed_total": self.counts.shed})

    async def batch(self) -> list[T]:
        """Wait for at least one item; take what is queued, up to ``batch_max``."""
        items = [await self._queue.get()]
        while len(items) < self.batch_max and not self._queue.empty():
            items.append(self._queue.get_nowait())
        self.writing = len(items)
        return items

    def drain(self) -> list[T]:
        items: list[T] = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    def wrote(self, count: int, seconds: float) -> None:
        """Tell the queue how long a batch took, to predict the next waits."""
        self.writing = 0
        self.write_times.add(seconds)
        rate = count / max(seconds, 1e-4)
        self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate

    def stats(self) -> dict[str, Any]:
        return {"queued": self._queue.qsize(), "writing": self.writing,
                "capacity": self.capacity,
                "admitted": self.counts.admitted, "shed": self.counts.shed,
                "write_ms": self.write_times.summary_ms()}


class Lane:
    """At most ``concurrency`` operations at once, ``queue`` waiting, each for at
    most ``max_wait_s``; beyond that, ``Overloaded`` at once."""

    def __init__(self, name: str, concurrency: int, queue: int, max_wait_s: float,
                 loop: LoopMonitor | None = None) -> None:
        self.name = name
        self.concurrency = concurrency
        self.queue = queue
        self.max_wait_s = max_wait_s
        self.loop = loop
        self._slots = asyncio.Semaphore(concurrency)
        self.waiting = 0
        self.running = 0
        self.counts = _Counts()
        self.waits = Durations()
        self.times = Durations()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.loop is not None and self.loop.overloaded:
            self.counts.shed += 1
            raise Overloaded(self.name, "event_loop_late", _retry_after(1.0))
        if self._slots.locked() and self.waiting >= self.queue:
            self.counts.shed += 1
            raise Overloaded(self.name, "queue_full", _retry_after(1.0))
        start = time.monotonic()
        self.waiting += 1
        try:
            async with asyncio.timeout(self.max_wait_s):
                await self._slots.acquire()
        except TimeoutError:
            self.counts.shed += 1
            raise Overloaded(self.name, "waited_too_long", _retry_after(1.0)) from None
        finally:
            self.waiting -= 1
        began = time.monotonic()
        self.waits.add(began - start)
        self.counts.admitted += 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
            self.times.add(time.monotonic() - began)

    def stats(self) -> dict[str, Any]:
        return {"running": self.running, "waiting": self.waiting,
                "concurrency": self.concurrency, "queue": self.queue,
                "admitted": self.counts.admitted, "shed": self.counts.shed,
                "wait_ms": self.waits.summary_ms(), "db_ms": self.times.summary_ms()}
