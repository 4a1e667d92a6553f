"""The video use cases: contributors publish, the director switches, viewers watch.

Media timing runs on the real monotonic clock (RTP is real time, even in a
sped-up rehearsal); the service's Clock only gives the slate its wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from aiortc import RTCPeerConnection

from server.clock import Clock
from server.settings import Settings
from tv.errors import SessionNotFound, TooManySessions, UnknownFeed, ViewersFull
from tv.events import FeedStateChanged
from tv.fanout import Delivery
from tv.ingest import FeedSource, IngestSession
from tv.lifetime import Lifetimes
from tv.model import FeedState, FeedStats, RecentlyEnded
from tv.programme import Channel
from tv.slate import Slate
from tv.webrtc import (
    WHIP,
    answer,
    link_headers,
    parse_offer,
    register_h264_profiles,
    restrict_host_addresses,
    rtc_configuration,
    screen_candidates,
    set_consent_timeout,
)
from tv.whep import Viewer

log = logging.getLogger("tv.service")

Publish = Callable[[object], Awaitable[None]]

PROGRAMME = "programme"
STATS_PERIOD_S = 1.0
STALL_S = 5.0
"""A connected publisher whose pictures stopped this long ago is offline."""
ENDED_MEMORY = 10_000
"""Ended sessions remembered, so that a late DELETE answers 200 (about 1 MB)."""


class TvService:
    def __init__(self, settings: Settings, clock: Clock, publish: Publish) -> None:
        self.settings = settings
        self.clock = clock
        self._emit = publish
        self.sources = {f.id: FeedSource(f.id) for f in settings.feeds}
        self._sessions: dict[str, IngestSession] = {}
        self._viewers: dict[str, Viewer] = {}
        self._delivered_before = Delivery()
        """What viewers who have left were sent (the totals stay monotonic)."""
        self._channels: dict[str, Channel] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._undo_ice: Callable[[], None] | None = None
        self._undo_consent: Callable[[], None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._ended_publishing = RecentlyEnded(ENDED_MEMORY)
        """Ended WHIP sessions and their feed."""
        self._ended_viewing = RecentlyEnded(ENDED_MEMORY)
        """Ended WHEP sessions and their channel."""
        self._lifetimes = Lifetimes(settings.webrtc.connect_timeout_s)

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the programme's clocks and encoders; offer only the configured addresses."""
        if self.settings.webrtc.host_addresses:
            self._undo_ice = restrict_host_addresses(self.settings.webrtc.host_addresses)
        self._undo_consent = set_consent_timeout(self.settings.webrtc.consent_timeout_s)
        register_h264_profiles()
        # One encoding thread for every channel: two channels may encode the
        # same source frame, and encoding stamps it; x264 has its own threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tv-encode")
        programme = self._channel(PROGRAMME)
        programme.start()
        self._stats_task = asyncio.create_task(self._watch_feeds(), name="tv-feed-stats")

    async def stop(self) -> None:
        """Close every peer connection, stop the clocks and the encoding thread."""
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        await asyncio.gather(*(self._end_viewer(v) for v in list(self._viewers.values())),
                             *(self._end_session(s) for s in list(self._sessions.values())))
        await self._lifetimes.stop()
        for channel in list(self._channels.values()):
            await channel.stop()
        self._channels.clear()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown)
            self._executor = None
        if self._undo_ice is not None:
            self._undo_ice()
            self._undo_ice = None
        if self._undo_consent is not None:
            self._undo_consent()
            self._undo_consent = None

    @property
    def running(self) -> bool:
        """The programme's clocks are ticking (for health checks)."""
        channel = self._channels.get(PROGRAMME)
        return channel is not None and channel.running

    # --- ingest (WHIP) -----------------------------------------------------------

    async def publish(self, feed: str, offer_sdp: str) -> tuple[str, str]:
        """Take a contributor's offer; return (answer SDP, session id).

        A second publisher on a live feed replaces the first: the programme
        keeps pointing at the feed and shows the newcomer's pictures.
        """
        source = self._source(feed)
        offer_sdp = self._screen(offer_sdp, {"feed": feed})
        kinds = parse_offer(offer_sdp, WHIP)
        pc = self._peer_connection()
        session = IngestSession(source, pc, self._set_state)
        self._lifetimes.follow(pc, session.id, {"feed": feed, "session": session.id},
                               ended=lambda: self._end_session(session))
        try:
            for kind in kinds:
                transceiver = pc.addTransceiver(kind, direction="recvonly")
                transceiver.setCodecPreferences(WHIP.codecs(kind))
            answer_sdp = await answer(pc, offer_sdp)
        except BaseException:
            self._lifetimes.forget(session.id)
            await pc.close()
            raise
        previous, source.session = source.session, session
        self._sessions[session.id] = session
        session.start()
        log.info("feed published", extra={"feed": feed, "session": session.id,
                                          "replaces": previous.id if previous else None})
        if previous is not None:
            await self._end_session(previous)
        return answer_sdp, session.id

    async def unpublish(self, feed: str, session_id: str) -> None:
        """End a publishing session (WHIP DELETE); one that has ended already is fine."""
        session = self._sessions.get(session_id)
        if session is None or session.source.id != feed:
            if self._ended_publishing.owner(session_id) == feed:
                return
            raise SessionNotFound(f"no publishing session {session_id} on {feed}")
        await self._end_session(session)

    async def end_feed(self, feed: str) -> None:
        """End whatever session publishes this feed (its token was rotated)."""
        session = self._source(feed).session
        if session is not None:
            await self._end_session(session)

    def feed_stats(self) -> list[FeedStats]:
        """Every source, in the configuration's order."""
        now = time.monotonic()
        return [self.sources[f.id].stats(now) for f in self.settings.feeds]

    def snapshot_jpeg(self, feed: str) -> bytes | None:
        """The feed's latest picture as JPEG; None while it is offline or has none."""
        source = self._source(feed)
        if source.state is not FeedState.LIVE:
            return None
        return source.jpeg(time.monotonic())

    # --- programme ---------------------------------------------------------------

    async def switch(self, source: str | None, segment_title: str) -> None:
        """Put ``source`` on air (None: the slate, as before and after the show)."""
        wanted = None if source is None else self._source(source)
        programme = self._channels[PROGRAMME]
        changed = wanted is not programme.source
        programme.set_source(wanted, segment_title)
        log.info("programme switched", extra={"source": source, "segment": segment_title})
        if changed and wanted is not None and wanted.session is not None:
            # The picture is decoded already; a keyframe just clears any damage.
            await wanted.session.request_keyframe()

    # --- viewers (WHEP) ----------------------------------------------------------

    async def watch(self, offer_sdp: str, feed: str | None = None,
                    origin: str | None = None) -> tuple[str, str]:
        """Take a viewer's offer; return (answer SDP, session id).

        ``feed`` None: the programme; a feed id: that source alone (staff), as
        its own channel, encoded once however many staff watch it. ``origin``:
        the anonymous viewer's address (an IPv6 one by its /64: server.http.client_ip), which
        may hold ``[video] viewers_per_address`` sessions at once.
        """
        key = PROGRAMME if feed is None else self._source(feed).id
        self._check_room(origin)
        offer_sdp = self._screen(offer_sdp, {"channel": key, "origin": origin})
        channel = self._channel(key)
        pc = self._peer_connection()
        viewer = Viewer(pc, key, channel.request_keyframe, channel.histories, origin)
        self._viewers[viewer.id] = viewer
        self._lifetimes.follow(pc, viewer.id, {"channel": key, "session": viewer.id,
                                               "origin": origin},
                               ended=lambda: self._end_viewer(viewer),
                               connected=lambda: channel.attach(viewer))
        try:
            answer_sdp = await viewer.negotiate(offer_sdp)
        except BaseException:
            await self._end_viewer(viewer)
            raise
        return answer_sdp, viewer.id

    async def stop_watching(self, session_id: str) -> None:
        """End a viewing session (WHEP DELETE); one that has ended already is fine."""
        viewer = self._viewers.get(session_id)
        if viewer is None:
            if self._ended_viewing.owner(session_id) is not None:
                return
            raise SessionNotFound(f"no viewing session {session_id}")
        await self._end_viewer(viewer)

    def ice_servers_link_headers(self) -> list[str]:
        """``Link`` header values announcing the configured STUN/TURN servers (RFC 9725)."""
        return link_headers(self.settings.webrtc.ice_servers)

    def delivery(self) -> Delivery:
        """Packets sent to viewers since start: sent, repaired after a NACK, dropped."""
        total = replace(self._delivered_before)
        for viewer in self._viewers.values():
            total.add(viewer.delivery())
        return total

    @property
    def viewer_count(self) -> int:
        """Viewers of the programme (staff watching single feeds are not counted)."""
        return sum(1 for v in self._viewers.values() if v.channel == PROGRAMME)

    # --- internals ---------------------------------------------------------------

    def _source(self, feed: str) -> FeedSource:
        source = self.sources.get(feed)
        if source is None:
            raise UnknownFeed(f"no feed {feed!r}")
        return source

    def _peer_connection(self) -> RTCPeerConnection:
        return RTCPeerConnection(rtc_configuration(self.settings.webrtc.ice_servers))

    def _check_room(self, origin: str | None) -> None:
        """ViewersFull when the process is full, TooManySessions when ``origin`` is."""
        limit = self.settings.video.max_viewers
        if limit and len(self._viewers) >= limit:
            raise ViewersFull(f"{len(self._viewers)} viewers already, the most this "
                              "process serves ([video] max_viewers)")
        per_address = self.settings.video.viewers_per_address
        if origin is not None and per_address and sum(
                1 for v in self._viewers.values() if v.origin == origin) >= per_address:
            raise TooManySessions(f"{origin} holds {per_address} viewing sessions already "
                                  "([video] viewers_per_address)")

    def _screen(self, offer_sdp: str, context: dict[str, Any]) -> str:
        """The offer with at most ``[webrtc] max_candidates`` usable candidates per section."""
        screened = screen_candidates(offer_sdp, self.settings.webrtc.max_candidates)
        if screened.dropped:
            # TCP or RTCP candidates are routine (browsers list them); the others are not.
            routine = set(screened.dropped) <= {"unpairable"}
            log.log(logging.INFO if routine else logging.WARNING,
                    "ICE candidates left out of an offer",
                    extra={**context, "kept": screened.kept, "dropped": dict(screened.dropped)})
        return screened.sdp

    def _channel(self, key: str) -> Channel:
        channel = self._channels.get(key)
        if channel is not None:
            return channel
        if self._executor is None:
            raise RuntimeError("TvService.start() has not been called")
        video, event = self.settings.video, self.settings.event
        slate = Slate(video.width, video.height, event.title, event.timezone)
        channel = Channel(key, video, slate, self.clock, self._executor)
        if key != PROGRAMME:
            feed = self.settings.feed(key)
            channel.set_source(self.sources[key], feed.name_fr if feed else key)
            channel.start()
        self._channels[key] = channel
        return channel

    async def _set_state(self, session: IngestSession, state: FeedState) -> None:
        if session.current:
            await self._announce(session.source, state)

    async def _announce(self, source: FeedSource, state: FeedState) -> None:
        if source.state is not state:
            source.state = state
            log.info("feed state", extra={"feed": source.id, "state": state.value})
            try:
                await self._emit(FeedStateChanged(source.id, state))
            except Exception:
                # Called from a track reader: it must go on reading whatever happens.
                log.exception("the feed state change could not be announced")

    async def _end_session(self, session: IngestSession) -> None:
        """Close a publisher's connection; the feed goes offline if it was the current one."""
        self._sessions.pop(session.id, None)
        self._ended_publishing.add(session.id, session.source.id)
        self._lifetimes.forget(session.id)
        if session.current:
            session.source.session = None  # first: its last frames must not revive the feed
            await self._announce(session.source, FeedState.OFFLINE)
        await session.close()

    async def _end_viewer(self, viewer: Viewer) -> None:
        if self._viewers.pop(viewer.id, None) is None:
            return  # ended already (closing the connection reports here again)
        self._ended_viewing.add(viewer.id, viewer.channel)
        self._lifetimes.forget(viewer.id)
        self._delivered_before.add(viewer.delivery())
        channel = self._channels.get(viewer.channel)
        if channel is not None:
            channel.detach(viewer)
        viewer.stop()
        await viewer.pc.close()
        if viewer.channel != PROGRAMME and channel is not None and not any(
                v.channel == viewer.channel for v in self._viewers.values()):
            self._channels.pop(viewer.channel, None)
            await channel.stop()

    async def _watch_feeds(self) -> None:
        """Once a second: statistics, stalled publishers, a keyframe for a silent source."""
        while True:
            await asyncio.sleep(STATS_PERIOD_S)
            now = time.monotonic()
            for session in list(self._sessions.values()):
                source = session.source
                try:
                    await session.poll_stats(now)
                    stalled = source.frame_at is None or now - source.frame_at > STALL_S
                    if source.state is FeedState.LIVE and stalled:
                        await self._set_state(session, FeedState.OFFLINE)
                    on_air = any(c.source is source for c in self._channels.values())
                    if on_air and not source.has_signal(now) and session.current:
                        await session.request_keyframe()
                except Exception:
                    log.exception("feed statistics failed", extra={"feed": source.id})
