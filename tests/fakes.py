"""Fakes for the process edges the project does not own: here, time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


class FakeClock:
    """A Clock that only moves when the test says so.

    ``sleep_until`` parks the caller on an ``asyncio.Event`` that ``advance`` or
    ``set`` fires once show time reaches its instant: a test steps through a
    four-hour show without a single real sleep.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._mono = 1000.0
        self._sleepers: list[tuple[datetime, asyncio.Event]] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep_until(self, when: datetime) -> None:
        if when <= self._now:
            return
        woken = asyncio.Event()
        sleeper = (when, woken)
        self._sleepers.append(sleeper)
        try:
            await woken.wait()
        finally:
            # Cancelled or woken, this sleeper is no longer waiting.
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    def advance(self, delta: timedelta | float) -> datetime:
        """Move time forward by ``delta`` (seconds or a timedelta); the new now."""
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        if delta < timedelta(0):
            raise ValueError("a clock never goes back")
        return self.set(self._now + delta)

    def set(self, when: datetime) -> datetime:
        """Move time forward to ``when``, waking every sleeper whose instant has come."""
        when = when.astimezone(UTC)
        if when < self._now:
            raise ValueError("a clock never goes back")
        self._mono += (when - self._now).total_seconds()
        self._now = when
        for at, woken in list(self._sleepers):
            if at <= when:
                woken.set()
        return when

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting for a later instant."""
        return len(self._sleepers)
