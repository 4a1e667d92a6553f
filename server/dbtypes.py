"""Column types shared by the packages' stores."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, TypeDecorator, exc
from sqlalchemy.engine import Dialect


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# PostgreSQL's codes for "not now": statement or lock timeout, too many
# connections, shutting down.
_UNAVAILABLE_STATES = frozenset({"57014", "55P03", "53300", "57P01", "57P03"})


def database_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot serve now (away, full,
    read-only, busy past our wait), as opposed to a refused statement."""
    if isinstance(error, (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)):
        return True
    if isinstance(error, exc.DBAPIError):
        orig = error.orig
        state = getattr(orig, "sqlstate", None) or getattr(
            getattr(orig, "__cause__", None), "sqlstate", None)
        return state in _UNAVAILABLE_STATES
    return False
