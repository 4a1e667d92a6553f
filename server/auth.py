"""Staff accounts, sign-in sessions, role checks and CSRF tokens."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Column, Integer, MetaData, String, Table, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from server.clock import Clock
from server.dbtypes import UtcDateTime
from server.ratelimit import RateLimiter
from server.settings import RateLimit

log = logging.getLogger("tv.auth")

SESSION_COOKIE = "tv_session"


class Role(enum.StrEnum):
    MODERATOR = "moderator"
    DIRECTOR = "director"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return {"moderator": 1, "director": 2, "admin": 3}[self.value]

    def allows(self, needed: Role) -> bool:
        """A director may do all a moderator may; an admin all a director may."""
        return self.rank >= needed.rank


@dataclass(frozen=True)
class Staff:
    id: int
    username: str
    role: Role
    csrf_token: str
    """The CSRF token of the session this staff member came in with."""


class BadCredentials(Exception):
    pass


class TooManyAttempts(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__("too many failed sign-ins")
        self.retry_after_s = retry_after_s


class AccountError(ValueError):
    pass


_meta = MetaData()
staff_table = Table(
    "staff", _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)
sessions_table = Table(
    "staff_sessions", _meta,
    Column("token_hash", String(64), primary_key=True),
    Column("staff_id", Integer, nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_ok(expected: str, given: str | None) -> bool:
    """Constant-time comparison of the CSRF token."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


class AuthService:
    def __init__(self, engine: AsyncEngine, clock: Clock, limiter: RateLimiter,
                 session_hours: float, login_failures: RateLimit) -> None:
        self.engine = engine
        self.clock = clock
        self.limiter = limiter
        self.session_ttl = timedelta(hours=session_hours)
        self.login_failures = login_failures
        self.hasher = PasswordHasher()
        # Verified when the user name is unknown, so that timing does not tell;
        # made on first need, since hashing blocks for a noticeable moment.
        self._dummy_hash: str | None = None

    async def add_user(self, username: str, password: str, role: Role) -> bool:
        """Create an account, or reset its password and role. True if created."""
        username = username.strip()
        if not username or len(username) > 64 or not username.isprintable():
            raise AccountError("the user name must be 1 to 64 printable characters")
        if len(password) < 10:
            raise AccountError("the password must have at least 10 characters")
        hashed = await asyncio.to_thread(self.hasher.hash, password)
        async with self.engine.begin() as conn:
            try:
                async with conn.begin_nested():
                    await conn.execute(insert(staff_table).values(
                        username=username, password_hash=hashed, role=role.value,
                        created_at=self.clock.now()))
                return True
            except IntegrityError:
                await conn.execute(staff_table.update()
                                   .where(staff_table.c.username == username)
                                   .values(password_hash=hashed, role=role.value))
                row = (await conn.execute(select(staff_table.c.id).where(
                    staff_table.c.username == username))).one()
                await conn.execute(delete(sessions_table).where(
                    sessions_table.c.staff_id == row.id))
                return False

    async def sign_in(self, username: str, password: str, ip: str) -> tuple[str, Staff]:
        """Check credentials; return a new session token and the staff member."""
        key = f"login:{username.casefold()}:{ip}"
        wait = await self.limiter.peek(key, self.login_failures)
        if wait is not None:
            raise TooManyAttempts(wait)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(staff_table).where(
                staff_table.c.username == username))).first()
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(self.hasher.hash, secrets.token_hex(8))
        if not await asyncio.to_thread(self._verify, row.password_hash if row else None,
                                       password) or row is None:
            await self.limiter.hit(key, self.login_failures)
            log.warning("failed sign-in", extra={"username": username, "ip": ip})
            raise BadCredentials()
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = self.clock.now()
        async with self.engine.begin() as conn:
            await conn.execute(insert(sessions_table).values(
                token_hash=_hash_token(token), staff_id=row.id, csrf_token=csrf,
                created_at=now, expires_at=now + self.session_ttl))
            await conn.execute(delete(sessions_table).where(sessions_table.c.expires_at < now))
        log.info("staff signed in", extra={"username": username, "role": row.role})
        return token, Staff(row.id, row.username, Role(row.role), csrf)

    def _verify(self, hashed: str | None, password: str) -> bool:
        try:
            target = hashed or self._dummy_hash
            return target is not None and self.hasher.verify(target, password) \
                and hashed is not None
        except (VerificationError, InvalidHashError):
            return False

    async def staff_for_token(self, token: str | None) -> Staff | None:
        if not token:
            return None
        stmt = (select(staff_table.c.id, staff_table.c.username, staff_table.c.role,
                       sessions_table.c.csrf_token)
                .join(staff_table, staff_table.c.id == sessions_table.c.staff_id)
                .where(sessions_table.c.token_hash == _hash_token(token),
                       sessions_table.c.expires_at > self.clock.now()))
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        return Staff(row.id, row.username, Role(row.role), row.csrf_token) if row else None

    async def sign_out(self, token: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(sessions_table).where(
                sessions_table.c.token_hash == _hash_token(token)))
