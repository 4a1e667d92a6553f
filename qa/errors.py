"""What can go wrong with a question, in domain terms.

Each error has a stable machine ``code``; the HTTP edge turns it into a status
and a sentence in the caller's language.
"""

from __future__ import annotations

from typing import Any


class QaError(Exception):
    code = "qa_error"

    def __init__(self, detail: str = "", **params: Any) -> None:
        super().__init__(detail or self.code)
        self.detail = detail
        self.params = params


class InvalidQuestion(QaError):
    """The submitted fields break a rule; ``code`` says which."""

    def __init__(self, code: str, field: str, **params: Any) -> None:
        super().__init__(f"{field}: {code}", field=field, **params)
        self.code = code
        self.field = field


class QuestionNotFound(QaError):
    code = "question_not_found"


class StaleVersion(QaError):
    code = "stale_version"

    def __init__(self, current: Any) -> None:
        super().__init__("the question changed since that version was read")
        self.current = current


class CannotMerge(QaError):
    code = "cannot_merge"


class NotPublishable(QaError):
    """A rejected or merged question cannot go on air."""

    code = "not_publishable"


class RateLimited(QaError):
    code = "rate_limited"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"retry after {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class QuestionNotStored(QaError):
    """The database refused this one question (the others of its batch were stored)."""

    code = "question_not_stored"


class StorageUnavailable(QaError):
    """The database cannot take writes now (away, full, read-only, saturated)."""

    code = "storage_unavailable"
