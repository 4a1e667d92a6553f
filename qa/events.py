"""Domain events the question service publishes; the realtime edge maps them to rooms."""

from __future__ import annotations

from dataclasses import dataclass

from qa.model import Question


@dataclass(frozen=True)
class QuestionSubmitted:
    question: Question


@dataclass(frozen=True)
class QuestionChanged:
    question: Question
    was_public: bool
    """Whether viewers could see the question before this change."""
    status_changed: bool


@dataclass(frozen=True)
class QuestionRemoved:
    """A question left the lists (merged into another)."""

    question: Question
    was_public: bool


@dataclass(frozen=True)
class OnAirChanged:
    question: Question | None
