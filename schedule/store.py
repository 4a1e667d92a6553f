"""The append-only take log (SQLAlchemy 2, async)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Float, Integer, String, Table, UniqueConstraint, delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schedule.errors import ConcurrentChange
from schedule.model import Action, Entry
from server.db import NO_GATE, WriteGate
from server.dbtypes import UtcDateTime


class Base(DeclarativeBase):
    pass


class LogRow(Base):
    __tablename__ = "programme_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    show: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    action: Mapped[str] = mapped_column(String(16))
    segment_id: Mapped[str | None] = mapped_column(String(64))
    seconds: Mapped[float | None] = mapped_column(Float)
    by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (UniqueConstraint("show", "seq", name="uq_programme_log_show_seq"),)


L: Table = LogRow.__table__  # type: ignore[assignment]


class TakeLog:
    """One show's log: entries are only ever appended, in sequence."""

    def __init__(self, engine: AsyncEngine, show: str, gate: WriteGate = NO_GATE) -> None:
        self.engine = engine
        self.show = show
        self.gate = gate

    async def load(self) -> list[Entry]:
        stmt = select(L).where(L.c.show == self.show).order_by(L.c.seq)
        async with self.engine.connect() as conn:
            return [Entry(r.seq, r.at, Action(r.action), r.segment_id, r.seconds, r.by)
                    for r in await conn.execute(stmt)]

    async def length(self) -> int:
        stmt = select(func.coalesce(func.max(L.c.seq), 0)).where(L.c.show == self.show)
        async with self.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def append(self, entries: Sequence[Entry], now: datetime) -> None:
        """Persist entries; ConcurrentChange if another process took those places."""
        if not entries:
            return
        rows = [{"show": self.show, "seq": e.seq, "at": e.at, "action": e.action.value,
                 "segment_id": e.segment_id, "seconds": e.seconds, "by": e.by,
                 "created_at": now} for e in entries]
        try:
            async with self.gate.programme(), self.engine.begin() as conn:
                await conn.execute(insert(L), rows)
        except IntegrityError as e:
            raise ConcurrentChange() from e

    async def clear(self) -> None:
        """Forget this show's log (a new rehearsal starts from scratch)."""
        async with self.gate.programme(), self.engine.begin() as conn:
            await conn.execute(delete(L).where(L.c.show == self.show))
