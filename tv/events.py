"""Domain events of the video part."""

from __future__ import annotations

from dataclasses import dataclass

from tv.model import FeedState


@dataclass(frozen=True)
class FeedStateChanged:
    feed: str
    state: FeedState
    """Live when a publisher's media flows, offline when it stops or leaves."""


@dataclass(frozen=True)
class FeedCued:
    feed: str
    text: str
    sent_at: str
    by: str
