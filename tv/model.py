"""Pure video-side logic: feed states, statistics, tally lights."""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any


class FeedState(enum.StrEnum):
    OFFLINE = "offline"
    LIVE = "live"


class Tally(enum.StrEnum):
    ON_AIR = "on_air"
    NEXT = "next"
    OFF = "off"


# A source with no new frame for this long has no signal: the slate goes up.
SIGNAL_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class FeedStats:
    """What the control room sees of one source (``GET /api/feeds``)."""

    feed: str
    state: FeedState
    width: int | None
    height: int | None
    fps: float | None
    kbps: float | None
    packet_loss: float | None
    """Fraction of RTP packets lost (0 to 1) over the last few seconds."""
    last_frame_age_ms: float | None

    def view(self) -> dict[str, Any]:
        return {"feed": self.feed, "state": self.state.value, "width": self.width,
                "height": self.height, "fps": self.fps, "kbps": self.kbps,
                "packet_loss": self.packet_loss, "last_frame_age_ms": self.last_frame_age_ms}


@dataclass
class RateMeter:
    """Frames and bytes over a sliding window, fed with monotonic timestamps.

    Until a whole window has passed since the first event (or the first after
    a silence as long as the window), the rates are over the time that has, at
    least MIN_SPAN_S (a burst of frames at the start is not a rate): a feed
    that has just come in shows its real frame rate at once, not a fraction.
    """

    window_s: float = 2.0
    _frames: deque[float] = field(default_factory=deque)
    _bytes: deque[tuple[float, int]] = field(default_factory=deque)
    _since: float | None = None

    MIN_SPAN_S = 1.0

    def frame(self, at: float) -> None:
        self._start(at)
        self._frames.append(at)

    def data(self, at: float, size: int) -> None:
        self._start(at)
        self._bytes.append((at, size))

    def _start(self, at: float) -> None:
        self._trim(at)
        if not self._frames and not self._bytes:
            self._since = at  # the first event, or the first after a silence

    def _span(self, now: float) -> float:
        if self._since is None:
            return self.window_s
        return min(self.window_s, max(now - self._since, self.MIN_SPAN_S))

    def _trim(self, now: float) -> None:
        while self._frames and self._frames[0] < now - self.window_s:
            self._frames.popleft()
        while self._bytes and self._bytes[0][0] < now - self.window_s:
            self._bytes.popleft()

    def fps(self, now: float) -> float:
        self._trim(now)
        return round(len(self._frames) / self._span(now), 1)

    def kbps(self, now: float) -> float:
        self._trim(now)
        return round(sum(size for _, size in self._bytes) * 8 / 1000 / self._span(now), 1)


def has_signal(last_frame_at: float | None, now: float) -> bool:
    return last_frame_at is not None and now - last_frame_at <= SIGNAL_TIMEOUT_S


def tally(feed: str, on_air_source: str | None, next_source: str | None) -> Tally:
    """The tally light of one site's contributor page."""
    if feed == on_air_source:
        return Tally.ON_AIR
    if feed == next_source:
        return Tally.NEXT
    return Tally.OFF


class RecentlyEnded:
    """The last ``size`` sessions that ended, each with its owner (a feed, a channel).

    A DELETE on a session that has ended answers as on a live one: a player
    whose connection the server closed still says goodbye, and must not be
    told that its session never existed.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._owners: OrderedDict[str, str] = OrderedDict()

    def add(self, session_id: str, owner: str) -> None:
        self._owners[session_id] = owner
        self._owners.move_to_end(session_id)
        while len(self._owners) > self._size:
            self._owners.popitem(last=False)

    def owner(self, session_id: str) -> str | None:
        return self._owners.get(session_id)
