"""Domain events of the programme; tv switches the video on SegmentTaken."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schedule.model import Segment, Snapshot


@dataclass(frozen=True)
class SegmentTaken:
    segment: Segment
    source: str
    """The video source to show: the segment's feed, or "studio"."""
    at: datetime
    by: str
    local: bool
    """Taken by this process (False: learnt from the shared log)."""


@dataclass(frozen=True)
class ProgrammeEnded:
    at: datetime
    by: str
    local: bool


@dataclass(frozen=True)
class ProgrammeChanged:
    snapshot: Snapshot
    local: bool
    """Only the process that made the change tells the clients (Redis carries it)."""
