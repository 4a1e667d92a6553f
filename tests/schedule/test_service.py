"""The running engine on the real take log (SQLite and PostgreSQL), with a fake clock.

A "process" here is a ProgrammeService with an engine of its own on the shared
database: stopping it and starting another on the same database is a server
restart; two at once are two server processes sharing one show.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from schedule import model
from schedule.events import ProgrammeChanged, ProgrammeEnded, SegmentTaken
from schedule.model import Action, Entry, Plan, State
from schedule.service import ProgrammeService
from schedule.store import TakeLog
from server import db
from tests.fakes import FakeClock
from tests.helpers import test_settings as settings_for

PARIS = ZoneInfo("Europe/Paris")


def paris(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2027, 5, 9, hh, mm, ss, tzinfo=PARIS).astimezone(UTC)


@dataclass
class Heard:
    """Everything the services published, and a way to wait for what comes next."""

    events: list[tuple[str, object]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def publisher(self, name: str) -> Callable[[object], Awaitable[None]]:
        async def publish(event: object) -> None:
            self.events.append((name, event))
            self._changed.set()
        return publish

    async def until(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        """Wait (on the services' own announcements, not on real time) for ``condition``."""
        async with asyncio.timeout(within):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    def taken(self, name: str | None = None, local: bool | None = None) -> list[str]:
        """Segments announced as taken (by process ``name``; locally or not)."""
        return [e.segment.id for who, e in self.events
                if isinstance(e, SegmentTaken) and name in (None, who)
                and local in (None, e.local)]


@dataclass
class Show:
    plan: Plan
    clock: FakeClock
    url: str
    heard: Heard
    engines: list[AsyncEngine] = field(default_factory=list)
    services: list[ProgrammeService] = field(default_factory=list)

    async def process(self, name: str = "a") -> ProgrammeService:
        """A new server process: its own engine on the shared database, engine started."""
        engine = db.make_engine(self.url)
        self.engines.append(engine)
        await db.migrate(engine)
        service = ProgrammeService(TakeLog(engine, "show"), self.plan, self.clock,
                                   self.heard.publisher(name), auto_start=True)
        self.services.append(service)
        await service.start()
        return service

    async def log(self) -> list[Entry]:
        return await TakeLog(self.engines[0], "show").load()

    async def move_to(self, when: datetime, *running: ProgrammeService) -> None:
        """Set the clock to ``when``; wait until every running engine owes nothing."""
        self.clock.set(when)
        owed = [model.next_due(self.plan, s.entries, s.auto_start) for s in running]
        if not any(due is not None and due.at <= when for due in owed):
            return
        await self.heard.until(lambda: all(
            (due := model.next_due(self.plan, s.entries, s.auto_start)) is None
            or due.at > when for s in running))


@pytest.fixture
async def show(database_url: str, tmp_path: Path) -> AsyncIterator[Show]:
    settings = settings_for(tmp_path, database_url)
    show = Show(settings.plan, FakeClock(paris(13, 59)), settings.database_url, Heard())
    yield show
    for service in show.services:
        await service.stop()
    for engine in show.engines:
        await engine.dispose()


def reference(plan: Plan, until: datetime,
              commands: tuple[tuple[datetime, Action, float | None], ...] = ()) -> list[Entry]:
    """The log of the same show run without a single interruption (the pure model)."""
    log: list[Entry] = []
    for when, action, seconds in commands:
        log += model.catch_up(plan, log, when, auto_start=True)
        log.append(model.command(plan, log, when, action, "paul", seconds=seconds))
    return log + model.catch_up(plan, log, until, auto_start=True)


def takes(log: list[Entry]) -> list[tuple[str | None, datetime]]:
    return [(e.segment_id, e.at) for e in log
            if e.action in (Action.START, Action.TAKE, Action.END)]


EXTEND_AT_1415 = ((paris(14, 15), Action.EXTEND, 120.0),)


async def test_a_restart_in_the_middle_of_a_segment_resumes_it(show: Show):
    first = await show.process()
    assert first.snapshot().state == State.BEFORE
    await show.move_to(paris(14, 0), first)
    await show.move_to(paris(14, 15), first)
    assert first.snapshot().on_air == "debat-cooperatives"
    await first.command(Action.EXTEND, "paul", seconds=120)  # ends at 14:32, not 14:30
    before = await show.log()
    await first.stop()

    show.clock.set(paris(14, 20))  # the server comes back ten minutes into the debate
    second = await show.process()

    expected = reference(show.plan, paris(14, 20), EXTEND_AT_1415)
    assert await show.log() == before == expected  # nothing appended by the restart
    snap = second.snapshot()
    assert snap == model.snapshot(show.plan, expected, paris(14, 20), auto_start=True)
    assert (snap.state, snap.on_air, snap.over_under_s) == (State.LIVE, "debat-cooperatives", 120)
    assert snap.on_air_ends == paris(14, 32)

    await show.move_to(paris(14, 31, 59), second)
    assert second.snapshot().on_air == "debat-cooperatives"
    await show.move_to(paris(14, 32), second)
    assert takes(await show.log()) == [("ouverture", paris(14, 0)),
                                       ("debat-cooperatives", paris(14, 10)),
                                       ("duplex-afrique", paris(14, 32))]


async def test_a_restart_across_segment_boundaries_logs_them_when_they_were_due(show: Show):
    first = await show.process("first")
    for when in (paris(14, 0), paris(14, 15)):
        await show.move_to(when, first)
    await first.command(Action.EXTEND, "paul", seconds=120)
    await show.move_to(paris(14, 40), first)
    await first.stop()

    # Down from 14:40 to 15:25: asie (14:52) and croissance (15:12) came due meanwhile.
    show.clock.set(paris(15, 25))
    second = await show.process("second")

    log = await show.log()
    assert log == reference(show.plan, paris(15, 25), EXTEND_AT_1415)
    assert takes(log)[-2:] == [("duplex-asie", paris(14, 52)),
                               ("debat-croissance", paris(15, 12))]  # not at 15:25
    assert all(e.by == "auto" for e in log[-2:])
    snap = second.snapshot()
    assert (snap.on_air, snap.next) == ("debat-croissance", "duplex-europe")
    assert snap.over_under_s == 120
    # The picture goes straight to what is on air, without flashing the missed segment.
    assert show.heard.taken("second") == ["debat-croissance"]

    await show.move_to(paris(15, 40), second)
    await second.stop()

    # Down again over the Ecuador link: it was cut in at 15:50 sharp all the same.
    show.clock.set(paris(16, 30))
    third = await show.process("third")
    assert takes(await show.log())[-3:] == [("duplex-europe", paris(15, 32)),
                                            ("duplex-equateur", paris(15, 50)),
                                            ("duplex-amerique-du-nord", paris(16, 20))]
    assert third.snapshot().on_air == "duplex-amerique-du-nord"
    assert third.snapshot().over_under_s == 0

    await show.move_to(paris(18, 30), third)
    log = await show.log()
    assert log == reference(show.plan, paris(18, 30), EXTEND_AT_1415)
    taken = [sid for sid, _ in takes(log)]
    assert taken == [s.id for s in show.plan.segments] + [None]  # each once, in order
    assert third.snapshot().state == State.ENDED


async def test_a_restart_after_the_end_changes_nothing(show: Show):
    first = await show.process()
    await show.move_to(paris(14, 0), first)
    await first.command(Action.END, "paul")
    await first.stop()
    before = await show.log()

    show.clock.set(paris(17, 0))
    second = await show.process()

    assert await show.log() == before
    assert second.snapshot().state == State.ENDED
    assert show.heard.taken() == ["ouverture"]  # the picture is not switched again


async def test_two_processes_at_the_same_deadline_append_each_step_once(show: Show):
    a, b = await show.process("a"), await show.process("b")
    steps = [s.planned_start for s in show.plan.segments] + [show.plan.planned_end]

    for n, when in enumerate(steps, start=1):
        show.clock.set(when)  # both engines wake for the same deadline
        await show.heard.until(lambda n=n: len(a.entries) == len(b.entries) == n)

    log = await show.log()
    assert [e.seq for e in log] == list(range(1, len(steps) + 1))
    assert takes(log) == [*((s.id, s.planned_start) for s in show.plan.segments),
                          (None, show.plan.planned_end)]
    assert a.entries == b.entries == log
    assert a.snapshot() == b.snapshot()
    assert a.snapshot().state == State.ENDED
    # Exactly one of the two took each step itself (and so told the clients).
    local = sorted(show.heard.taken(local=True))
    assert local == sorted(s.id for s in show.plan.segments)
    ended = [e for _, e in show.heard.events if isinstance(e, ProgrammeEnded) and e.local]
    assert len(ended) == 1
    assert sum(1 for _, e in show.heard.events
               if isinstance(e, ProgrammeChanged) and e.local) == len(steps)


async def test_a_command_on_one_process_reaches_the_other(show: Show):
    a, b = await show.process("a"), await show.process("b")
    await show.move_to(paris(14, 2), a, b)

    await a.command(Action.TAKE, "paul", "duplex-asie")

    await show.heard.until(lambda: b.snapshot().on_air == "duplex-asie", within=5)
    # B learnt it from the shared log: it switches its picture but leaves telling to A.
    assert show.heard.taken("b", local=False)[-1] == "duplex-asie"
    assert "duplex-asie" not in show.heard.taken("b", local=True)
    await show.move_to(paris(14, 22), a, b)
    log = await show.log()
    assert takes(log) == [("ouverture", paris(14, 0)), ("duplex-asie", paris(14, 2)),
                          ("debat-croissance", paris(14, 22))]
    assert a.entries == b.entries == log
