"""The running programme: director's commands, automatic takes, announcements.

Every take is appended to the log in the database before it is announced.
Several processes may run the engine on one shared log: at a deadline each
tries to append the same step and the database lets exactly one win.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from schedule import model
from schedule.errors import ConcurrentChange
from schedule.events import ProgrammeChanged, ProgrammeEnded, SegmentTaken
from schedule.model import Action, Entry, Plan, Snapshot
from schedule.store import TakeLog
from server.clock import Clock

log = logging.getLogger("tv.programme")

Publish = Callable[[object], Awaitable[None]]

# How often (in real seconds) the engine looks at the shared log for changes
# made by other processes; deadlines themselves are awaited exactly.
POLL_S = 1.0


class ProgrammeService:
    def __init__(self, store: TakeLog, plan: Plan, clock: Clock, publish: Publish,
                 auto_start: bool, speed: float = 1.0) -> None:
        self.store = store
        self.plan = plan
        self.clock = clock
        self.publish = publish
        self.auto_start = auto_start
        self.speed = speed
        self.entries: list[Entry] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.running = False

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Load the log, catch up with what happened while down, and run."""
        self.entries = await self.store.load()
        if self.entries:
            snap = self.snapshot()
            log.info("programme resumed from the take log", extra={
                "entries": len(self.entries), "state": snap.state.value, "on_air": snap.on_air})
        await self._catch_up()
        self._runner = asyncio.create_task(self._run(), name="programme-engine")
        self.running = True

    async def stop(self) -> None:
        self.running = False
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    # --- reading -----------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return model.snapshot(self.plan, self.entries, self.clock.now(), self.auto_start)

    # --- the director ----------------------------------------------------------

    async def command(self, action: Action, by: str, segment_id: str | None = None,
                      seconds: float | None = None) -> Snapshot:
        """Start, take, hold, extend or end, as ``by``; persisted, then announced."""
        async with self._lock:
            for attempt in range(3):
                await self._catch_up_locked()
                entry = model.command(self.plan, self.entries, self.clock.now(), action, by,
                                      segment_id, seconds)
                try:
                    await self.store.append([entry], self.clock.now())
                    break
                except ConcurrentChange:
                    if attempt == 2:
                        raise
                    await self._reload_locked()
            log.info("programme command", extra={
                "action": entry.action.value, "segment_id": entry.segment_id,
                "seconds": entry.seconds, "by": by})
            await self._adopt([entry], local=True)
        self._wake.set()
        return self.snapshot()

    # --- the engine ------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            due = model.next_due(self.plan, self.entries, self.auto_start)
            waits: set[asyncio.Task[object]] = {asyncio.create_task(self._wake.wait())}
            if due is not None:
                waits.add(asyncio.create_task(self.clock.sleep_until(due.at)))
            try:
                done, _ = await asyncio.wait(waits, timeout=POLL_S,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
            self._wake.clear()
            try:
                async with self._lock:
                    # At a deadline, go straight to the take: if another process
                    # logged it first, the append fails and the log is reloaded.
                    if not done and await self.store.length() != len(self.entries):
                        await self._reload_locked()
                    await self._catch_up_locked()
            except Exception:
                # The database may be away for a moment; the show goes on and
                # the next round retries (the deadlines are absolute).
                log.exception("the programme engine could not reach the take log")

    async def _catch_up(self) -> None:
        async with self._lock:
            await self._catch_up_locked()

    async def _catch_up_locked(self) -> None:
        for _attempt in range(3):
            owed = model.catch_up(self.plan, self.entries, self.clock.now(), self.auto_start)
            if not owed:
                return
            try:
                await self.store.append(owed, self.clock.now())
            except ConcurrentChange:
                await self._reload_locked()  # another process did it first
                continue
            for entry in owed:
                log.info("programme moved on by itself", extra={
                    "action": entry.action.value, "segment_id": entry.segment_id,
                    "due": entry.at.isoformat()})
            await self._adopt(owed, local=True)
            return

    async def _reload_locked(self) -> None:
        fresh = await self.store.load()
        new = fresh[len(self.entries):]
        if fresh[:len(self.entries)] != self.entries:
            self.entries = []
            new = fresh
        if new:
            await self._adopt(new, local=False, replace=fresh)

    async def _adopt(self, new: Sequence[Entry], local: bool,
                     replace: list[Entry] | None = None) -> None:
        """Take new entries in and tell the rest of the server."""
        self.entries = replace if replace is not None else [*self.entries, *new]
        # Only the last take matters to the picture: after a catch-up, switching
        # through every missed segment would only flash them on screen.
        last_take = next((e for e in reversed(new)
                          if e.action in (Action.START, Action.TAKE, Action.END)), None)
        if last_take is not None and last_take.action == Action.END:
            await self.publish(ProgrammeEnded(last_take.at, last_take.by, local))
        elif last_take is not None and last_take.segment_id is not None:
            segment = self.plan.get(last_take.segment_id)
            await self.publish(SegmentTaken(segment, segment.source, last_take.at,
                                            last_take.by, local))
        await self.publish(ProgrammeChanged(self.snapshot(), local))
