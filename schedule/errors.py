"""What can go wrong when running the programme, in domain terms."""

from __future__ import annotations


class ProgrammeError(Exception):
    code = "programme_error"


class UnknownSegment(ProgrammeError):
    code = "unknown_segment"


class NotLive(ProgrammeError):
    """Hold or extend need a segment on air."""

    code = "programme_not_live"


class AlreadyStarted(ProgrammeError):
    code = "programme_already_started"


class AlreadyEnded(ProgrammeError):
    code = "programme_ended"


class InvalidSeconds(ProgrammeError):
    code = "invalid_seconds"


class ConcurrentChange(ProgrammeError):
    """Another process appended to the take log first."""

    code = "programme_changed"
