"""Database engine as a cleanup context, and Alembic migrations at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Column, Integer, MetaData, Table, delete, event, insert, text
from sqlalchemy.engine import Connection, ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from server.dbtypes import UtcDateTime
from server.settings import DatabasePool

log = logging.getLogger("tv.db")

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every process of the show.
_MIGRATION_LOCK = 72_090_509


def make_engine(url: str, pool_size: int | None = None, max_overflow: int | None = None,
                wait_s: float = 30.0, statement_timeout: bool = False) -> AsyncEngine:
    """An engine for SQLite (file made on demand) or PostgreSQL.

    ``pool_size`` and ``max_overflow`` default to SQLAlchemy's 5 + 10 on
    SQLite, and 10 + 20 on PostgreSQL. ``wait_s`` bounds how long a query
    waits for a connection from the pool and, on SQLite, for the file's write
    lock: past it the query fails (503 at the HTTP edge) instead of queueing.
    On PostgreSQL, ``statement_timeout`` bounds lock waits by ``wait_s`` too,
    and each statement by five times that.
    """
    pool: dict[str, Any] = {"pool_timeout": wait_s}
    if pool_size is not None:
        pool["pool_size"] = pool_size
    if max_overflow is not None:
        pool["max_overflow"] = max_overflow
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": wait_s}, **pool)
        busy_ms = max(1, round(wait_s * 1000))

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers run beside the writer; FULL makes a commit
            # survive a power cut, which "durable once 201 is answered" means.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.close()

        return engine
    args: dict[str, Any] = {}
    if statement_timeout:
        # PostgreSQL has no busy_timeout: a statement stuck behind a lock would
        # wait for ever. Bound the lock wait and the statement itself.
        ms = str(max(1, round(wait_s * 1000)))
        args["connect_args"] = {"server_settings": {"lock_timeout": ms,
                                                    "statement_timeout": str(int(ms) * 5)}}
    return create_async_engine(url, **{"pool_size": 10, "max_overflow": 20, **pool},
                               pool_pre_ping=True, **args)


def audience_engine(url: str, pool: DatabasePool, wait_s: float) -> AsyncEngine:
    """Questions, votes and lists: no query waits longer than ``wait_s`` for the database."""
    return make_engine(url, pool.size or None, None if pool.overflow < 0 else pool.overflow,
                       wait_s=wait_s, statement_timeout=True)


class WriteGate:
    """This process's writers to one SQLite file take turns, the programme's first.

    SQLite has one write lock for the whole file. Left to it, a take polls for
    the lock (busy_timeout: sleeps of 1 to 100 ms) while the audience's batch
    writers, always ready with the next batch, take it again between its
    polls: a take then waited hundreds of milliseconds. Here writers queue in
    memory instead: an audience transaction starts only when no programme
    write (take, feed token, sign-in) is waiting, and a programme write waits
    at most for the one audience transaction under way, and no longer than
    PROGRAMME_WAIT_S: an audience writer may hold its turn while it waits
    for a connection (the audience's pool exhausted), and then the programme
    goes ahead and takes its chance with SQLite's lock, as without the gate.
    On PostgreSQL, rows are locked, not the database: the gate lets
    everything through.
    """

    PROGRAMME_WAIT_S = 0.1

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._busy = False
        self._programme_waiting = 0
        self._changed: asyncio.Condition | None = None

    @classmethod
    def for_url(cls, url: str) -> WriteGate:
        return cls(make_url(url).get_backend_name() == "sqlite")

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    @contextlib.asynccontextmanager
    async def audience(self) -> AsyncIterator[None]:
        if not self.enabled:
            yield
            return
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: not self._busy and not self._programme_waiting)
            self._busy = True
        try:
            yield
        finally:
            async with changed:
                self._busy = False
                changed.notify_all()

    @contextlib.asynccontextmanager
    async def programme(self) -> AsyncIterator[None]:
        if not self.enabled:
            yield
            return
        changed = self._condition()
        async with changed:
            self._programme_waiting += 1
            try:
                async with asyncio.timeout(self.PROGRAMME_WAIT_S):
                    await changed.wait_for(lambda: not self._busy)
                turn = True
            except TimeoutError:
                turn = False  # the audience writer is stuck elsewhere: go ahead
            finally:
                self._programme_waiting -= 1
            if turn:
                self._busy = True
            else:
                changed.notify_all()  # audience writers may go on taking turns
        try:
            yield
        finally:
            if turn:
                async with changed:
                    self._busy = False
                    changed.notify_all()


NO_GATE = WriteGate(enabled=False)


CONTROL_WAIT_S = 5.0
"""How long a take or a sign-in may wait for SQLite's write lock. Audience
transactions are short (one batch each), so in practice it waits milliseconds;
this is the bound when the disk itself stalls."""


def control_engine(url: str) -> AsyncEngine:
    """The programme's own path to the database: the take log, feed tokens, staff sign-in.

    A few connections that audience traffic (questions, votes, lists) never
    holds, so that a take is written at once however busy the audience pool is.
    """
    return make_engine(url, pool_size=2, max_overflow=3, wait_s=CONTROL_WAIT_S)


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several processes may start together; one migrates, the others wait.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
    elif connection.dialect.name == "sqlite":
        # The same for SQLite: take the write lock first (the others wait,
        # busy_timeout), which also keeps the DDL in one transaction instead
        # of the driver committing each CREATE on its own.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    command.upgrade(_alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the latest migration."""
    path = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not path or path == ":memory:":
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade)
        return
    # Processes opening a new SQLite file together can deadlock while one
    # switches it to WAL and the others read; a lock file makes them take turns.
    lock = await asyncio.to_thread(_lock_file, Path(path + ".migrate-lock"))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade)
    finally:
        lock.close()
    log.info("database schema is up to date", extra={"database": engine.url.render_as_string()})


def _lock_file(path: Path) -> IO[bytes]:
    handle = path.open("ab")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


_probe = Table("health_probe", MetaData(),
               Column("id", Integer, primary_key=True, autoincrement=False),
               Column("written_at", UtcDateTime, nullable=False))


class WriteHealth:
    """Whether the database takes writes: a full disk or a read-only file fails
    every write while reads, and so a plain ping, still succeed.

    A failed write marks it failing; a commit clears it. While it fails,
    ``probe`` tries one tiny write, at most every ``PROBE_EVERY_S``, so that a
    health check sees the disk freed even when no other write comes.
    """

    PROBE_EVERY_S = 5.0

    def __init__(self, engine: AsyncEngine, *others: AsyncEngine) -> None:
        self.engine = engine
        """Where the probe writes: the programme's own engine, which audience load never holds."""
        self.failure: str | None = None
        """Why the last write failed, or None when the last one went through."""
        self._probed_at = float("-inf")
        for watched in (engine, *others):
            event.listen(watched.sync_engine, "handle_error", self._on_error)
            event.listen(watched.sync_engine, "commit", self._on_commit)

    def _on_error(self, context: ExceptionContext) -> None:
        statement = (context.statement or "").lstrip().upper()
        if statement.startswith("SELECT") or not isinstance(
                context.sqlalchemy_exception, OperationalError):
            return
        if self.failure is None:
            log.error("the database refuses writes", extra={
                "reason": str(context.original_exception)[:200]})
        self.failure = str(context.original_exception)[:200]

    def _on_commit(self, _conn: Connection) -> None:
        if self.failure is not None:
            log.warning("the database takes writes again")
        self.failure = None

    async def probe(self, now: datetime) -> None:
        """While writes fail, try one (rewriting the probe row), now and then."""
        if self.failure is None or time.monotonic() - self._probed_at < self.PROBE_EVERY_S:
            return
        self._probed_at = time.monotonic()
        with contextlib.suppress(Exception):  # still failing: the flag stays, with its reason
            async with self.engine.begin() as conn:
                await conn.execute(delete(_probe))
                await conn.execute(insert(_probe).values(id=1, written_at=now))


async def ping(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:  # any driver error means "not reachable" to a health check
        return False


async def engine_context(url: str, pool: DatabasePool | None = None,
                         wait_s: float = 30.0) -> AsyncIterator[AsyncEngine]:
    # Migrations may take long on a large database: on an engine of their own,
    # without the audience's timeouts.
    migrator = make_engine(url)
    try:
        await migrate(migrator)
    finally:
        await migrator.dispose()
    engine = audience_engine(url, pool or DatabasePool(), wait_s)
    try:
        yield engine
    finally:
        await engine.dispose()
