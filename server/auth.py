"""Staff accounts, sign-in sessions, role checks and CSRF tokens."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Column, Integer, MetaData, String, Table, and_, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from server.clock import Clock
from server.db import NO_GATE, WriteGate
from server.dbtypes import UtcDateTime
from server.ratelimit import Claim, RateLimiter
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


@dataclass(frozen=True)
class StaffSession:
    """A signed-in staff member and the session they came in with."""

    staff: Staff
    token_hash: str
    """Never the token itself: what the server may keep and log."""
    expires_at: datetime


class SessionEnd(enum.StrEnum):
    """Why a staff member's live connections are closed."""

    SIGNED_OUT = "signed_out"
    EXPIRED = "expired"
    ROLE_CHANGED = "role_changed"


@dataclass(frozen=True)
class SessionsChanged:
    """Sessions were ended (sign-out, password or role reset): check live sockets now."""


@dataclass(frozen=True)
class SessionsSnapshot:
    """What the database says now about some sessions and their staff members."""

    roles: dict[int, Role]
    """Role of each staff member asked about who still exists."""
    expiry: dict[str, datetime]
    """Expiry of each session asked about that still exists (by token hash)."""

    def end(self, session: StaffSession, needed: Role, now: datetime) -> SessionEnd | None:
        """Why ``session`` may no longer use what needs ``needed``; None if it still may."""
        role = self.roles.get(session.staff.id)
        if role is None:
            return SessionEnd.SIGNED_OUT
        if not role.allows(needed):
            return SessionEnd.ROLE_CHANGED
        expires_at = self.expiry.get(session.token_hash)
        if expires_at is None:
            # Expired sessions are swept at the next sign-in, so a missing row
            # past its time ended by expiry; adduser deletes the rows it resets.
            if session.expires_at <= now:
                return SessionEnd.EXPIRED
            return SessionEnd.ROLE_CHANGED if role != session.staff.role \
                else SessionEnd.SIGNED_OUT
        return SessionEnd.EXPIRED if expires_at <= now else None


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


# What secrets.token_urlsafe(32) makes, with room to spare. Anything else in the
# cookie (non-UTF-8 bytes, lone surrogates, megabytes) is simply "not signed in".
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{20,128}")


def _valid_token(token: str | None) -> str | None:
    return token if token is not None and _TOKEN_RE.fullmatch(token) else None


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _usable(text: str, max_len: int) -> bool:
    """Whether a user name or password given at sign-in could match a stored one."""
    if not text or len(text) > max_len:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: add_user could never have stored them
        return False
    return True


def csrf_ok(expected: str, given: str | None) -> bool:
    """Constant-time comparison of the CSRF token."""
    if given is None:
        return False
    try:
        given_bytes = given.encode()
    except UnicodeEncodeError:  # a header with non-UTF-8 bytes: not the token
        return False
    return hmac.compare_digest(expected.encode(), given_bytes)


Publish = Callable[[object], Awaitable[None]]

KNOWN_ADDRESS = RateLimit(1, 30 * 24 * 3600)
SESSION_CACHE_S = 2.0
"""How long a session checked in the database is trusted from memory. Signing
out or resetting an account in this process forgets them all at once; done
from another process (or ``run.py adduser``), it holds here at most this long.
The sessions of open staff consoles are checked again every second
(StaffSockets), which keeps them in memory as long as they stay valid: a
director's take, a minute after the last, does not wait on the database."""
SESSION_CACHE_MAX = 1000
"""How long an address stays known for an account after a sign-in from it."""


async def _no_publish(event: object) -> None:
    return None


class AuthService:
    def __init__(self, engine: AsyncEngine, clock: Clock, limiter: RateLimiter,
                 session_hours: float, login_failures: RateLimit,
                 user_failures: RateLimit | None = None, publish: Publish = _no_publish,
                 gate: WriteGate = NO_GATE) -> None:
        self.engine = engine
        self.gate = gate
        self.clock = clock
        self.limiter = limiter
        self.session_ttl = timedelta(hours=session_hours)
        self.login_failures = login_failures
        self.user_failures = user_failures
        self.publish = publish
        self.hasher = PasswordHasher()
        # Verified when the user name is unknown, so that timing does not tell;
        # made on first need, since hashing blocks for a noticeable moment.
        self._dummy_hash: str | None = None
        # Staff requests (a take, an approval) check their session: a few
        # seconds of memory spare each one a database round trip (30 to 170 ms
        # measured under the show's load on SQLite) on the busy path.
        self._sessions: dict[str, tuple[float, StaffSession]] = {}

    async def add_user(self, username: str, password: str, role: Role) -> bool:
        """Create an account, or reset its password and role. True if created.

        A reset ends the account's sessions; its open sockets follow within a
        second in every process (``server.staffsockets``).
        """
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
        log.info("staff account reset; its sessions ended",
                 extra={"username": username, "role": role.value})
        self._sessions.clear()
        await self.publish(SessionsChanged())
        return False

    async def sign_in(self, username: str, password: str, ip: str) -> tuple[str, Staff]:
        """Check credentials; return a new session token and the staff member.

        Each attempt is counted before its password is checked, so that
        concurrent guesses cannot outrun the limit; a success is uncounted.
        ``ip`` is ``server.http.client_ip``'s bucket (an address, or "unknown").
        """
        if not _usable(username, 64) or not _usable(password, 1024):
            raise BadCredentials()
        claims = await self._claim(username, ip)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(staff_table).where(
                staff_table.c.username == username))).first()
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(self.hasher.hash, secrets.token_hex(8))
        if not await asyncio.to_thread(self._verify, row.password_hash if row else None,
                                       password) or row is None:
            log.warning("failed sign-in", extra={"username": username, "ip": ip})
            raise BadCredentials()
        for claim in claims:
            await self.limiter.release(claim)
        await self.limiter.hit(self._known_key(username, ip), KNOWN_ADDRESS)
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = self.clock.now()
        async with self.gate.programme(), self.engine.begin() as conn:
            await conn.execute(insert(sessions_table).values(
                token_hash=_hash_token(token), staff_id=row.id, csrf_token=csrf,
                created_at=now, expires_at=now + self.session_ttl))
            await conn.execute(delete(sessions_table).where(sessions_table.c.expires_at < now))
        log.info("staff signed in", extra={"username": username, "role": row.role})
        return token, Staff(row.id, row.username, Role(row.role), csrf)

    async def _claim(self, username: str, ip: str) -> list[Claim]:
        """Count one attempt per limit, or refuse it (TooManyAttempts) counting none."""
        name = username.casefold()
        limits = [(f"login:{name}:{ip}", self.login_failures)]
        if self.user_failures is not None and not await self._known(username, ip):
            limits.append((f"login-user:{name}", self.user_failures))
        claims: list[Claim] = []
        for key, limit in limits:
            claim = await self.limiter.claim(key, limit)
            if claim.wait_s is not None:
                for held in claims:
                    await self.limiter.release(held)
                log.warning("sign-in refused: too many failures",
                            extra={"username": username, "ip": ip, "limit": key.split(":")[0]})
                raise TooManyAttempts(claim.wait_s)
            claims.append(claim)
        return claims

    # An address this account signed in from lately is spared the per-user
    # limit: a stranger who keeps that limit full (anyone can) must not keep
    # the director, back at the usual desk, from signing in. The per-address
    # limit still holds there. The limiter keeps the mark: "refused" by a
    # count of one means "there was a sign-in from here within the window".
    def _known_key(self, username: str, ip: str) -> str:
        return f"login-ok:{username.casefold()}:{ip}"

    async def _known(self, username: str, ip: str) -> bool:
        return await self.limiter.peek(self._known_key(username, ip), KNOWN_ADDRESS) is not None

    def _verify(self, hashed: str | None, password: str) -> bool:
        try:
            target = hashed or self._dummy_hash
            return target is not None and self.hasher.verify(target, password) \
                and hashed is not None
        except (VerificationError, InvalidHashError):
            return False

    async def session_for_token(self, token: str | None) -> StaffSession | None:
        """The live session of this cookie value, or None (also for any malformed value)."""
        token = _valid_token(token)
        if token is None:
            return None
        token_hash = _hash_token(token)
        now = self.clock.monotonic()
        cached = self._sessions.get(token_hash)
        if cached is not None and cached[0] > now and cached[1].expires_at > self.clock.now():
            return cached[1]
        stmt = (select(staff_table.c.id, staff_table.c.username, staff_table.c.role,
                       sessions_table.c.csrf_token, sessions_table.c.expires_at)
                .join(staff_table, staff_table.c.id == sessions_table.c.staff_id)
                .where(sessions_table.c.token_hash == token_hash,
                       sessions_table.c.expires_at > self.clock.now()))
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        staff = Staff(row.id, row.username, Role(row.role), row.csrf_token)
        session = StaffSession(staff, token_hash, row.expires_at)
        if len(self._sessions) >= SESSION_CACHE_MAX:
            self._sessions.clear()
        self._sessions[token_hash] = (now + SESSION_CACHE_S, session)
        return session

    async def staff_for_token(self, token: str | None) -> Staff | None:
        session = await self.session_for_token(token)
        return session.staff if session else None

    async def snapshot(self, sessions: Collection[tuple[str, int]]) -> SessionsSnapshot:
        """Roles and expiries now of these (token hash, staff id) sessions: one query per 500."""
        roles: dict[int, Role] = {}
        expiry: dict[str, datetime] = {}
        pairs = list(sessions)
        async with self.engine.connect() as conn:
            for start in range(0, len(pairs), 500):
                chunk = pairs[start:start + 500]
                joined = staff_table.outerjoin(sessions_table, and_(
                    sessions_table.c.staff_id == staff_table.c.id,
                    sessions_table.c.token_hash.in_([h for h, _ in chunk])))
                rows = await conn.execute(
                    select(staff_table.c.id, staff_table.c.role, sessions_table.c.token_hash,
                           sessions_table.c.expires_at)
                    .select_from(joined).where(staff_table.c.id.in_({i for _, i in chunk})))
                for row in rows:
                    roles[row.id] = Role(row.role)
                    if row.token_hash is not None:
                        expiry[row.token_hash] = row.expires_at
        fresh = self.clock.monotonic() + SESSION_CACHE_S
        for token_hash, staff_id in pairs:
            cached = self._sessions.pop(token_hash, None)
            if cached is not None and roles.get(staff_id) == cached[1].staff.role \
                    and expiry.get(token_hash) == cached[1].expires_at:
                self._sessions[token_hash] = (fresh, cached[1])  # still valid as it was
        return SessionsSnapshot(roles, expiry)

    async def sign_out(self, token: str | None) -> None:
        """End this cookie's session (nothing for a malformed or unknown value)."""
        token = _valid_token(token)
        if token is None:
            return
        self._sessions.clear()
        async with self.gate.programme(), self.engine.begin() as conn:
            await conn.execute(delete(sessions_table).where(
                sessions_table.c.token_hash == _hash_token(token)))
        await self.publish(SessionsChanged())
