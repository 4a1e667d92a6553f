"""Persistence of questions and votes (SQLAlchemy 2, async)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from qa.errors import StorageUnavailable
from qa.model import Question, Status
from server.dbtypes import UtcDateTime, database_unavailable


class Base(DeclarativeBase):
    pass


class QuestionRow(Base):
    __tablename__ = "questions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    theme: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    author: Mapped[str | None] = mapped_column(String(200))
    segment_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    starred: Mapped[bool] = mapped_column(Boolean, default=False)
    queue_position: Mapped[int | None] = mapped_column(Integer)
    on_air: Mapped[bool] = mapped_column(Boolean, default=False)
    votes: Mapped[int] = mapped_column(Integer, default=0)
    merged_into: Mapped[int | None] = mapped_column(Integer)
    flags: Mapped[str] = mapped_column(Text, default="[]")
    note: Mapped[str | None] = mapped_column(Text)
    viewer_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        Index("ix_questions_status_theme", "status", "theme"),
        Index("ix_questions_viewer", "viewer_id"),
        # At most one question on air, enforced by the database itself so that
        # two moderators on two processes cannot both win.
        Index("ux_questions_on_air", "on_air", unique=True,
              sqlite_where=sql_text("on_air"), postgresql_where=sql_text("on_air")),
    )


class VoteRow(Base):
    __tablename__ = "votes"

    question_id: Mapped[int] = mapped_column(
        ForeignKey("questions.id", ondelete="CASCADE"), primary_key=True)
    viewer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


Q: Table = QuestionRow.__table__  # type: ignore[assignment]
V: Table = VoteRow.__table__  # type: ignore[assignment]


def _to_question(row: Any) -> Question:
    return Question(
        id=row.id,
        theme=row.theme,
        text=row.text,
        author=row.author,
        segment_id=row.segment_id,
        status=Status(row.status),
        starred=bool(row.starred),
        queue_position=row.queue_position,
        on_air=bool(row.on_air),
        votes=row.votes,
        merged_into=row.merged_into,
        flags=tuple(json.loads(row.flags or "[]")),
        note=row.note,
        viewer_id=row.viewer_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
    )


@dataclass(frozen=True)
class VoteChange:
    """One viewer adding (or withdrawing) a vote, waiting to be written."""

    question_id: int
    viewer_id: str
    add: bool


@dataclass(frozen=True)
class VoteOutcome:
    """What a ``VoteChange`` did: ``question`` None when it is not public (or gone)."""

    question: Question | None
    changed: bool


@dataclass(frozen=True)
class NewQuestion:
    theme: str
    text: str
    author: str | None
    segment_id: str | None
    viewer_id: str
    flags: tuple[str, ...]
    created_at: datetime


# Any constant works; it only has to be the same in every process of the show.
_QUEUE_LOCK = 72_090_510


async def _serialise(conn: AsyncConnection) -> None:
    """Queue this transaction behind others that read, then write, shared state.

    Placing a question in the starred queue and putting one on air both read
    the other rows before writing; two moderators (on one process or several)
    doing so at once must take turns, or both read the same queue and write
    the same position. Must be the transaction's first statement.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(sql_text("SELECT pg_advisory_xact_lock(:k)"), {"k": _QUEUE_LOCK})
    elif conn.dialect.name == "sqlite":
        # Take SQLite's write lock now, waiting for it (busy_timeout). Without
        # it the reads run outside any transaction, or, after a SAVEPOINT, in a
        # read snapshot whose later upgrade to a write fails at once with
        # "database is locked" when another writer committed in between.
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


async def _write_lock(conn: AsyncConnection) -> None:
    """On SQLite, take the write lock first: a transaction that reads and then
    writes would otherwise fail at once ("database is locked") when another
    writer committed in between, instead of waiting busy_timeout."""
    if conn.dialect.name == "sqlite":
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


def _insert_ignore(conn: AsyncConnection) -> Any:
    """INSERT into votes that skips a (question, viewer) pair already there
    (another process may have written it since this batch read)."""
    if conn.dialect.name == "postgresql":
        return pg_insert(V).on_conflict_do_nothing()
    return sqlite_insert(V).on_conflict_do_nothing()


_MAX_ID = 2**31 - 1
"""The largest id an INTEGER column holds on PostgreSQL."""


class _Rollback(Exception):
    """Undo a transaction whose optimistic check failed."""


class OnAirTaken(Exception):
    """Another question went on air at the same moment."""


class QuestionStore:
    """Queries on questions and votes. Every method is one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def insert_many(self, items: Sequence[NewQuestion]) -> list[Question]:
        """Insert a batch in one transaction (group commit); ids in input order."""
        rows = [{
            "theme": n.theme, "text": n.text, "author": n.author, "segment_id": n.segment_id,
            "status": Status.PENDING.value, "starred": False, "queue_position": None,
            "on_air": False, "votes": 0, "merged_into": None, "flags": json.dumps(list(n.flags)),
            "note": None, "viewer_id": n.viewer_id, "created_at": n.created_at,
            "updated_at": n.created_at, "version": 1,
        } for n in items]
        # One multi-row INSERT ... RETURNING: a single round trip for the
        # whole batch (executemany with ordered RETURNING goes row by row).
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(insert(Q).values(rows).returning(*Q.c))
                stored = [_to_question(r) for r in result]
        except DBAPIError as e:
            if not database_unavailable(e):
                raise
            # Not this batch's fault: the database is away, full, read-only or busy.
            raise StorageUnavailable(str(getattr(e, "orig", None) or e)[:200]) from e
        # RETURNING promises no order: put each row back in its input's place.
        places: dict[tuple[str, str, datetime], list[int]] = {}
        for i, n in enumerate(items):
            places.setdefault((n.viewer_id, n.text, n.created_at), []).append(i)
        ordered: list[Question | None] = [None] * len(items)
        for q in sorted(stored, key=lambda q: q.id):
            ordered[places[(q.viewer_id, q.text, q.created_at)].pop(0)] = q
        return [q for q in ordered if q is not None]

    async def set_flags(self, question_id: int, flags: tuple[str, ...]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(Q).where(Q.c.id == question_id)
                               .values(flags=json.dumps(list(flags))))

    async def get(self, question_id: int) -> Question | None:
        if not 0 < question_id <= _MAX_ID:
            return None  # no such row, and the driver would overflow on a huge id
        async with self.engine.connect() as conn:
            return await self._get(conn, question_id)

    @staticmethod
    async def _get(conn: AsyncConnection, question_id: int) -> Question | None:
        row = (await conn.execute(select(Q).where(Q.c.id == question_id))).first()
        return _to_question(row) if row else None

    async def query(self, *, theme: str | None = None, statuses: Sequence[Status] | None = None,
                   sort: str = "recent", viewer_id: str | None = None,
                   include_merged: bool = False, limit: int = 1000) -> list[Question]:
        stmt = select(Q)
        if theme:
            stmt = stmt.where(Q.c.theme == theme)
        if statuses is not None:
            stmt = stmt.where(Q.c.status.in_([s.value for s in statuses]))
        if viewer_id is not None:
            stmt = stmt.where(Q.c.viewer_id == viewer_id)
        if not include_merged:
            stmt = stmt.where(Q.c.merged_into.is_(None))
        order = ([Q.c.votes.desc(), Q.c.id.desc()] if sort == "popular" else [Q.c.id.desc()])
        stmt = stmt.order_by(*order).limit(limit)
        async with self.engine.connect() as conn:
            return [_to_question(r) for r in await conn.execute(stmt)]

    async def since(self, last_id: int) -> list[tuple[int, str, str, str, int | None]]:
        """(id, theme, text, status, merged_into) of questions after ``last_id``."""
        stmt = (select(Q.c.id, Q.c.theme, Q.c.text, Q.c.status, Q.c.merged_into)
                .where(Q.c.id > last_id).order_by(Q.c.id))
        async with self.engine.connect() as conn:
            return [(r.id, r.theme, r.text, r.status, r.merged_into)
                    for r in await conn.execute(stmt)]

    async def voted_ids(self, viewer_id: str, question_ids: Sequence[int]) -> set[int]:
        if not question_ids:
            return set()
        stmt = select(V.c.question_id).where(V.c.viewer_id == viewer_id,
                                             V.c.question_id.in_(list(question_ids)))
        async with self.engine.connect() as conn:
            return {r[0] for r in await conn.execute(stmt)}

    async def update(self, question_id: int, expected_version: int,
                     values: dict[str, Any], now: datetime) -> Question | None:
        """Optimistic update: None if the version moved on (or no such question)."""
        async with self.engine.begin() as conn:
            return await self._update(conn, question_id, expected_version, values, now)

    @staticmethod
    async def _update(conn: AsyncConnection, question_id: int, expected_version: int | None,
                      values: dict[str, Any], now: datetime) -> Question | None:
        if "flags" in values:
            values = {**values, "flags": json.dumps(list(values["flags"]))}
        stmt = update(Q).where(Q.c.id == question_id)
        if expected_version is not None:
            stmt = stmt.where(Q.c.version == expected_version)
        stmt = stmt.values(**values, updated_at=now, version=Q.c.version + 1).returning(*Q.c)
        row = (await conn.execute(stmt)).first()
        return _to_question(row) if row else None

    async def requeue(self, question_id: int, expected_version: int, values: dict[str, Any],
                      position: int | None, now: datetime) -> tuple[Question | None,
                                                                    list[Question]]:
        """Update a question and place it at ``position`` in the starred queue.

        ``position`` None takes it out of the queue. The other starred
        questions are renumbered 1..n; those whose position changed are
        returned so that consoles can follow.
        """
        try:
            async with self.engine.begin() as conn:
                await _serialise(conn)
                queue = list((await conn.execute(
                    select(Q.c.id, Q.c.queue_position)
                    .where(Q.c.queue_position.is_not(None), Q.c.id != question_id)
                    .order_by(Q.c.queue_position, Q.c.id))).all())
                order = [r.id for r in queue]
                if position is not None:
                    order.insert(min(position, len(order) + 1) - 1, question_id)
                old = {r.id: r.queue_position for r in queue}
                moved: list[Question] = []
                new_position = None
                for index, qid in enumerate(order, start=1):
                    if qid == question_id:
                        new_position = index
                    elif old[qid] != index:
                        other = await self._update(conn, qid, None, {"queue_position": index},
                                                   now)
                        if other is not None:
                            moved.append(other)
                changed = await self._update(conn, question_id, expected_version,
                                             {**values, "queue_position": new_position}, now)
                if changed is None:
                    raise _Rollback()
                return changed, moved
        except _Rollback:
            return None, []

    async def vote(self, question_id: int, viewer_id: str, now: datetime,
                   add: bool) -> tuple[int, bool]:
        """Add or withdraw a vote; returns (votes, changed)."""
        async with self.engine.begin() as conn:
            if add:
                try:
                    async with conn.begin_nested():
                        await conn.execute(insert(V).values(
                            question_id=question_id, viewer_id=viewer_id, created_at=now))
                    changed = True
                except IntegrityError:
                    changed = False
            else:
                result = await conn.execute(delete(V).where(
                    V.c.question_id == question_id, V.c.viewer_id == viewer_id))
                changed = result.rowcount > 0
            if changed:
                count = select(func.count()).select_from(V).where(
                    V.c.question_id == question_id).scalar_subquery()
                await conn.execute(update(Q).where(Q.c.id == question_id).values(votes=count))
            votes = (await conn.execute(select(Q.c.votes).where(Q.c.id == question_id))).scalar()
            return int(votes or 0), changed

    async def apply_votes(self, changes: Sequence[VoteChange],
                          now: datetime) -> list[VoteOutcome]:
        """Write a batch of votes in one transaction; an outcome per change, in order.

        Only public questions (approved or answered, not merged) take votes.
        Within the batch, changes apply in order (a vote then its withdrawal
        leaves nothing). Each touched question's count is recounted from the
        votes table, so counts stay exact whatever other processes write.
        """
        ids = sorted({c.question_id for c in changes if 0 < c.question_id <= _MAX_ID})
        viewers = sorted({c.viewer_id for c in changes})
        try:
            async with self.engine.begin() as conn:
                await _write_lock(conn)
                public = {r.id for r in await conn.execute(
                    select(Q.c.id).where(Q.c.id.in_(ids), Q.c.merged_into.is_(None),
                                         Q.c.status.in_([Status.APPROVED.value,
                                                         Status.ANSWERED.value])))}
                before = {(r.question_id, r.viewer_id) for r in await conn.execute(
                    select(V.c.question_id, V.c.viewer_id)
                    .where(V.c.question_id.in_(sorted(public)), V.c.viewer_id.in_(viewers)))}
                after = set(before)
                changed: list[bool] = []
                for c in changes:
                    pair = (c.question_id, c.viewer_id)
                    if c.question_id not in public:
                        changed.append(False)
                    elif c.add:
                        changed.append(pair not in after)
                        after.add(pair)
                    else:
                        changed.append(pair in after)
                        after.discard(pair)
                added, removed = sorted(after - before), sorted(before - after)
                if added:
                    await conn.execute(_insert_ignore(conn).values([
                        {"question_id": q, "viewer_id": v, "created_at": now}
                        for q, v in added]))
                for q, v in removed:
                    await conn.execute(delete(V).where(V.c.question_id == q,
                                                       V.c.viewer_id == v))
                touched = sorted({q for q, _v in (*added, *removed)})
                if touched:
                    count = select(func.count()).select_from(V).where(
                        V.c.question_id == Q.c.id).scalar_subquery()
                    await conn.execute(update(Q).where(Q.c.id.in_(touched)).values(votes=count))
                current = {r.id: _to_question(r) for r in await conn.execute(
                    select(Q).where(Q.c.id.in_(sorted(public))))}
        except (DBAPIError, PoolTimeout) as e:
            if not database_unavailable(e):
                raise
            raise StorageUnavailable(str(getattr(e, "orig", None) or e)[:200]) from e
        return [VoteOutcome(current.get(c.question_id), done)
                for c, done in zip(changes, changed, strict=True)]

    async def merge(self, dup_id: int, into_id: int, now: datetime) -> tuple[Question, Question]:
        """Merge ``dup_id`` into ``into_id``: its voters now vote for the other."""
        async with self.engine.begin() as conn:
            already = select(V.c.viewer_id).where(V.c.question_id == into_id)
            await conn.execute(update(V).where(V.c.question_id == dup_id,
                                               V.c.viewer_id.not_in(already))
                               .values(question_id=into_id))
            await conn.execute(delete(V).where(V.c.question_id == dup_id))
            count = select(func.count()).select_from(V).where(
                V.c.question_id == into_id).scalar_subquery()
            target = await self._update(conn, into_id, None, {"votes": count}, now)
            dup = await self._update(conn, dup_id, None, {
                "merged_into": into_id, "votes": 0, "on_air": False,
                "starred": False, "queue_position": None}, now)
            assert target is not None and dup is not None
            return dup, target

    async def set_on_air(self, question_id: int | None,
                         now: datetime) -> tuple[list[Question], Question | None]:
        """Make ``question_id`` the only question on air (None: nothing).

        Returns the questions taken off air and the one now on air.
        """
        async with self.engine.begin() as conn:
            await _serialise(conn)
            try:
                async with conn.begin_nested():
                    off_ids = [r[0] for r in await conn.execute(
                        select(Q.c.id).where(Q.c.on_air.is_(True)))]
                    off: list[Question] = []
                    for qid in off_ids:
                        if qid != question_id:
                            q = await self._update(conn, qid, None, {"on_air": False}, now)
                            if q is not None:
                                off.append(q)
                    on = None
                    if question_id is not None:
                        on = await self._get(conn, question_id)
                        if on is not None and not on.on_air:
                            values: dict[str, Any] = {"on_air": True}
                            if on.status == Status.PENDING:
                                values["status"] = Status.APPROVED.value
                            on = await self._update(conn, question_id, None, values, now)
            except IntegrityError as e:
                raise OnAirTaken() from e
            return off, on

    async def on_air(self) -> Question | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(Q).where(Q.c.on_air.is_(True)))).first()
            return _to_question(row) if row else None

    async def counts(self) -> list[tuple[str, str, int]]:
        """(theme, status, count) for metrics; merged questions left out."""
        stmt = (select(Q.c.theme, Q.c.status, func.count()).where(Q.c.merged_into.is_(None))
                .group_by(Q.c.theme, Q.c.status))
        async with self.engine.connect() as conn:
            return [(r[0], r[1], int(r[2])) for r in await conn.execute(stmt)]

    async def all_for_export(self) -> list[Question]:
        async with self.engine.connect() as conn:
            return [_to_question(r) for r in await conn.execute(select(Q).order_by(Q.c.id))]
