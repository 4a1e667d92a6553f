"""The feeds' bearer tokens (SQLAlchemy 2, async).

A token is a bearer secret, as good as a password for publishing its feed.
It is stored in clear, not hashed, because the operator must be able to
print it again (``run.py feed-token FEED``) to send it to the site: guard
the database and its backups accordingly, and rotate a token that leaked.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from server.clock import Clock
from server.db import NO_GATE, WriteGate
from server.dbtypes import UtcDateTime

TOKEN_BYTES = 32


class Base(DeclarativeBase):
    pass


class FeedTokenRow(Base):
    __tablename__ = "feed_tokens"

    feed: Mapped[str] = mapped_column(String(64), primary_key=True)
    token: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    rotated_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


T: Table = FeedTokenRow.__table__  # type: ignore[assignment]


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


# What a bearer token may look like (RFC 6750 b64token); ours are URL-safe base64.
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]{1,512}=*")


def well_formed_token(value: object) -> bool:
    """Whether ``value`` could be a feed's token at all: a short ASCII string.

    Anything else from outside (lone surrogates from bytes that were not
    UTF-8, control characters, megabytes) is refused before it is compared
    or goes near the database.
    """
    return isinstance(value, str) and _TOKEN_RE.fullmatch(value) is not None


def same_token(expected: str, given: str) -> bool:
    """Constant-time comparison (bytes, so that any text given is accepted).

    ``surrogatepass``: a lone surrogate must compare unequal, not raise.
    """
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"),
                               given.encode("utf-8", "surrogatepass"))


class FeedTokenStore:
    """One bearer token per feed, made on first use, replaced on rotation."""

    def __init__(self, engine: AsyncEngine, clock: Clock, gate: WriteGate = NO_GATE) -> None:
        self.gate = gate
        self.engine = engine
        self.clock = clock
        # Compared against when a feed has no token yet, so that the time a
        # check takes does not tell whether the feed has one.
        self._dummy = new_token()

    async def current(self, feed: str) -> str | None:
        """The feed's token, or None if none was ever made."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(T.c.token).where(T.c.feed == feed))).first()
        return row.token if row else None

    async def current_all(self, feeds: Collection[str]) -> dict[str, str]:
        """The tokens of ``feeds`` that have one, in one query."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(T.c.feed, T.c.token).where(T.c.feed.in_(feeds)))
            return {row.feed: row.token for row in rows}

    async def get_or_create(self, feed: str) -> str:
        """The feed's token, made and stored on first use."""
        existing = await self.current(feed)
        if existing is not None:
            return existing
        token = new_token()
        try:
            async with self.gate.programme(), self.engine.begin() as conn:
                await conn.execute(insert(T).values(feed=feed, token=token,
                                                    created_at=self.clock.now()))
        except IntegrityError:
            pass  # made by another process at the same moment: theirs wins
        stored = await self.current(feed)
        assert stored is not None
        return stored

    async def rotate(self, feed: str) -> str:
        """Replace the feed's token (making one if it had none); the new token."""
        token, now = new_token(), self.clock.now()
        async with self.gate.programme(), self.engine.begin() as conn:
            changed = await conn.execute(update(T).where(T.c.feed == feed)
                                         .values(token=token, rotated_at=now))
            if changed.rowcount == 0:
                await conn.execute(insert(T).values(feed=feed, token=token, created_at=now))
        return token

    async def verify(self, feed: str, token: str | None) -> bool:
        """Whether ``token`` is the feed's current token (constant-time)."""
        expected = await self.current(feed)
        ok = same_token(expected if expected is not None else self._dummy, token or "")
        return ok and expected is not None and bool(token)

    async def feed_for(self, token: str | None, feeds: Collection[str]) -> str | None:
        """The feed among ``feeds`` whose token this is, comparing with every one."""
        found = None
        for feed, expected in (await self.current_all(feeds)).items():
            if same_token(expected, token or "") and token:
                found = feed
        return found
