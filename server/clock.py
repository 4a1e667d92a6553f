"""Time as a parameter: services ask a Clock, tests hand them a fake one."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for rate windows)."""

    async def sleep_until(self, when: datetime) -> None:
        """Return at ``when`` (at once if it has passed)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, when: datetime) -> None:
        delay = (when - self.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


class SpeedClock:
    """Show time for a rehearsal: starts at the real now and runs ``speed`` times faster."""

    def __init__(self, speed: float, base: Clock | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self.base = base or SystemClock()
        self._origin = self.base.now()
        self._origin_mono = self.base.monotonic()

    def now(self) -> datetime:
        elapsed = self.base.monotonic() - self._origin_mono
        return self._origin + (elapsed * self.speed) * _SECOND

    def monotonic(self) -> float:
        return self.base.monotonic() * self.speed

    async def sleep_until(self, when: datetime) -> None:
        delay = (when - self.now()).total_seconds() / self.speed
        if delay > 0:
            await asyncio.sleep(delay)


_SECOND = datetime.resolution * 1_000_000
