"""Staff sockets end with their session, in every process.

A sign-out, a password or role reset (``run.py adduser``, maybe in another
process) and expiry only change the database. Each process therefore keeps,
for every staff socket it holds, the session the socket came in with, and
checks them all against the database about once a second in one query. A
socket whose session is gone, expired, or whose role no longer allows its
namespace is told why (``signed_out``) and disconnected. The process that
ends a session checks at once, before its HTTP answer leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass

import socketio

from server.auth import Role, SessionEnd, SessionsChanged, SessionsSnapshot, StaffSession
from server.clock import Clock
from server.events import EventBus

log = logging.getLogger("tv.staffsockets")

Snapshot = Callable[[Collection[tuple[str, int]]], Awaitable[SessionsSnapshot]]

CHECK_INTERVAL_S = 1.0
"""How long a socket may outlive a session ended in another process."""


@dataclass(frozen=True)
class _Held:
    session: StaffSession
    needed: Role
    """The role the socket's namespace asks for."""


class StaffSockets:
    """The staff sockets of this process, each with the session it came in with."""

    def __init__(self, sio: socketio.AsyncServer, clock: Clock, snapshot: Snapshot,
                 interval_s: float = CHECK_INTERVAL_S) -> None:
        self.sio = sio
        self.clock = clock
        self.snapshot = snapshot
        self.interval_s = interval_s
        self._held: dict[tuple[str, str], _Held] = {}
        # One check at a time: a check asked for by a sign-out must not be
        # answered by one that read the database before the session ended.
        self._lock = asyncio.Lock()

    def subscribe(self, bus: EventBus) -> None:
        bus.subscribe(SessionsChanged, self._on_changed)

    def add(self, namespace: str, sid: str, session: StaffSession, needed: Role) -> None:
        self._held[(namespace, sid)] = _Held(session, needed)

    def remove(self, namespace: str, sid: str) -> None:
        self._held.pop((namespace, sid), None)

    async def _on_changed(self, event: SessionsChanged) -> None:
        await self.check()

    async def check(self) -> None:
        """Close every held socket whose session no longer allows it."""
        async with self._lock:
            if not self._held:
                return
            held = list(self._held.items())
            snapshot = await self.snapshot(
                {(h.session.token_hash, h.session.staff.id) for _, h in held})
            now = self.clock.now()
            for (namespace, sid), h in held:
                reason = snapshot.end(h.session, h.needed, now)
                if reason is not None and (namespace, sid) in self._held:
                    await self._close(namespace, sid, h.session, reason)

    async def _close(self, namespace: str, sid: str, session: StaffSession,
                     reason: SessionEnd) -> None:
        self._held.pop((namespace, sid), None)
        log.info("staff connection closed: its session ended",
                 extra={"username": session.staff.username, "namespace": namespace,
                        "reason": reason.value})
        # Local only (ignore_queue): this process holds the socket, and the
        # event must leave before the disconnect, not after a trip through Redis.
        await self.sio.emit("signed_out", {"reason": reason.value}, to=sid,
                            namespace=namespace, ignore_queue=True)
        await self.sio.disconnect(sid, namespace=namespace, ignore_queue=True)

    async def _watch(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:
                # The database away for a moment: keep the sockets, retry each
                # second, and say so once, not every second.
                if not failing:
                    log.exception("checking staff sessions failed; retrying every second")
                failing = True
            else:
                if failing:
                    log.info("checking staff sessions works again")
                failing = False

    async def run(self) -> AsyncIterator[None]:
        """Cleanup context: the once-a-second check while the app runs."""
        task = asyncio.create_task(self._watch(), name="staff-sessions")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
