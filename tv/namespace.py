"""Socket.IO adapters for the video: the contributors' ``/contribute``, the feeds in ``/control``.

A contributor connects with its feed's token (``auth: {"token", "feed"}``;
the feed may be left out, the token says which it is) and joins its feed's
room, where it hears its tally light, the director's cues and, every
second, whether the server receives its picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import socketio
from aiohttp import web

from schedule.events import ProgrammeChanged
from schedule.model import Plan, Snapshot
from server import keys
from server.events import EventBus
from tv.events import FeedCued, FeedStateChanged
from tv.model import FeedStats, Tally, tally
from tv.store import well_formed_token

log = logging.getLogger("tv.video")

CONTRIBUTE = "/contribute"
CONTROL = "/control"
STATUS_EVERY_S = 1.0


def feed_room(feed: str) -> str:
    return f"feed:{feed}"


def tallies(plan: Plan, snap: Snapshot, feeds: list[str]) -> dict[str, Tally]:
    """Every feed's tally light: its source on air, next, or neither."""
    on_air = plan.get(snap.on_air).source if snap.on_air else None
    upcoming = plan.get(snap.next).source if snap.next else None
    return {feed: tally(feed, on_air, upcoming) for feed in feeds}


def feed_status(stats: FeedStats) -> dict[str, Any]:
    """What a contributor sees of its own feed: does the server receive it?"""
    return {"feed": stats.feed, "state": stats.state.value, "width": stats.width,
            "height": stats.height, "fps": stats.fps}


class VideoPushes:
    """Pushes of the video part: tallies, cues, feed status, the control room's feeds."""

    def __init__(self, sio: socketio.AsyncServer, app: web.Application) -> None:
        self.sio = sio
        self.app = app
        self.local: Counter[str] = Counter()
        """Contributor sockets connected to this process, per feed."""
        self._tallies: dict[str, Tally] = {}

    @property
    def feeds(self) -> list[str]:
        return [f.id for f in self.app[keys.SETTINGS].feeds]

    def subscribe(self, bus: EventBus) -> None:
        bus.subscribe(ProgrammeChanged, self.on_programme)
        bus.subscribe(FeedCued, self.on_cue)
        bus.subscribe(FeedStateChanged, self.on_feed_state)

    def current_tally(self, feed: str) -> Tally:
        programme = self.app[keys.PROGRAMME]
        return tallies(programme.plan, programme.snapshot(), [feed])[feed]

    async def on_programme(self, event: ProgrammeChanged) -> None:
        plan = self.app[keys.PROGRAMME].plan
        now = tallies(plan, event.snapshot, self.feeds)
        changed = {feed: t for feed, t in now.items() if self._tallies.get(feed) != t}
        # Every process follows the log, so that the one making the next
        # change knows what its contributors last heard.
        self._tallies.update(now)
        if not event.local:
            return  # the process that made the change tells everyone (Redis)
        for feed, light in changed.items():
            await self.sio.emit("tally", {"feed": feed, "state": light.value},
                                namespace=CONTRIBUTE, room=feed_room(feed))

    async def on_cue(self, event: FeedCued) -> None:
        await self.sio.emit("cue", {"feed": event.feed, "text": event.text,
                                    "sent_at": event.sent_at},
                            namespace=CONTRIBUTE, room=feed_room(event.feed))

    async def on_feed_state(self, event: FeedStateChanged) -> None:
        # At once, rather than at the next tick: "the server receives you".
        await self.push_status()

    async def push_status(self) -> None:
        """The feeds to the control rooms, each feed's status to its contributors.

        Only the process that has the video pushes; with Redis the pushes reach
        the clients of every process, so contributors connected elsewhere
        count too (``self.local`` only knows this process's).
        """
        tv = self.app.get(keys.TV)
        if tv is None:
            return
        stats = tv.feed_stats()
        await self.sio.emit("feeds", [s.view() for s in stats], namespace=CONTROL)
        shared = bool(self.app[keys.SETTINGS].redis_url)
        for s in stats:
            if shared or self.local[s.feed] > 0:
                await self.sio.emit("feed_status", feed_status(s), namespace=CONTRIBUTE,
                                    room=feed_room(s.feed))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            try:
                await self.push_status()
            except Exception:
                log.exception("pushing the feeds' status failed")

    async def run(self, _app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: the one-second status pushes."""
        # What contributors would be told now, so the first change tells only
        # those whose light it moves.
        programme = self.app[keys.PROGRAMME]
        self._tallies = tallies(programme.plan, programme.snapshot(), self.feeds)
        task = asyncio.create_task(self._tick(), name="video-status")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class ContributeNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """Contributors: one feed each, recognised by its bearer token."""

    def __init__(self, app: web.Application, pushes: VideoPushes) -> None:
        super().__init__(CONTRIBUTE)
        self.app = app
        self.pushes = pushes
        self._feed_of: dict[str, str] = {}

    async def _authorised_feed(self, auth: Any) -> str | None:
        # A token that cannot be one (a lone surrogate, a megabyte) is refused
        # here: comparing it would raise, and the client gets the error object.
        if not isinstance(auth, dict) or not well_formed_token(auth.get("token")):
            return None
        token, feed = auth["token"], auth.get("feed")
        tokens, settings = self.app[keys.FEED_TOKENS], self.app[keys.SETTINGS]
        if feed is None:
            return await tokens.feed_for(token, [f.id for f in settings.feeds])
        if not isinstance(feed, str) or settings.feed(feed) is None:
            return None
        return feed if await tokens.verify(feed, token) else None

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        feed = await self._authorised_feed(auth)
        if feed is None:
            # Socket.IO's refusal is {"message", "data"}: the sentence, and the
            # contract's error object as its data (a lone dict would be sent as
            # its Python repr in "message").
            sentence = "connect with your feed's token: auth {token, feed}"
            raise socketio.exceptions.ConnectionRefusedError(
                sentence, {"error": "not_authenticated", "message": sentence})
        self._feed_of[sid] = feed
        self.app[keys.PUBLISHERS].socket_joined(sid, feed, auth["token"])
        self.pushes.local[feed] += 1
        self.app[keys.METRICS].sockets.labels(CONTRIBUTE).inc()
        await self.enter_room(sid, feed_room(feed))
        await self.emit("programme", self.app[keys.PROGRAMME_VIEW](), to=sid)
        await self.emit("tally", {"feed": feed, "state": self.pushes.current_tally(feed).value},
                        to=sid)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        feed = self._feed_of.pop(sid, None)
        if feed is None:
            return
        self.app[keys.PUBLISHERS].socket_left(sid)
        self.pushes.local[feed] -= 1
        if self.pushes.local[feed] <= 0:
            del self.pushes.local[feed]
        self.app[keys.METRICS].sockets.labels(CONTRIBUTE).dec()
