"""Viewers (WHEP): each gets the channel's packets, never an encoder of its own.

aiortc's sender packs an av.Packet returned by its track as it is, without
re-encoding; so every viewer's senders read one PacketTrack each, fed by the
channel's single encoder. A slow viewer loses packets, not the others' time:
its queue is bounded and, for video, restarts at the next keyframe.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from tv.webrtc import AUDIO, VIEWER_VIDEO, WHEP, answer, on_picture_loss, parse_offer, preferences

VIDEO_QUEUE_S = 1.0
AUDIO_QUEUE = 50
"""One second of 20 ms Opus frames."""


class PacketTrack(MediaStreamTrack):
    """Pre-encoded packets for one sender, from a bounded queue.

    A video track drops everything until a keyframe (at the start, and after
    an overflow), since a picture cannot be decoded from the middle of a GOP.
    """

    def __init__(self, kind: str, size: int, on_gap: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.kind = kind
        self._size = size
        self._on_gap = on_gap
        self._queue: deque[av.Packet[Any]] = deque()
        self._ready = asyncio.Event()
        self._want_keyframe = kind == "video"

    def put(self, packet: av.Packet[Any]) -> None:
        if self.readyState != "live":
            return
        if len(self._queue) >= self._size:
            if self.kind == "video":
                self._queue.clear()
                self._want_keyframe = True
                self._on_gap()
            else:
                self._queue.popleft()
        if self._want_keyframe:
            if not packet.is_keyframe:
                return
            self._want_keyframe = False
        self._queue.append(packet)
        self._ready.set()

    async def recv(self) -> av.Packet[Any]:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def stop(self) -> None:
        super().stop()
        self._ready.set()


class Viewer:
    """One WHEP session: a peer connection and its two packet tracks."""

    def __init__(self, pc: RTCPeerConnection, channel: str, fps: int,
                 request_keyframe: Callable[[], None]) -> None:
        self.id = uuid.uuid4().hex
        self.pc = pc
        self.channel = channel
        """The programme ("programme") or the feed id this viewer watches."""
        self.tracks = {
            "video": PacketTrack("video", max(8, round(fps * VIDEO_QUEUE_S)), request_keyframe),
            "audio": PacketTrack("audio", AUDIO_QUEUE),
        }
        self.request_keyframe = request_keyframe

    def put(self, kind: str, packet: av.Packet[Any]) -> None:
        self.tracks[kind].put(packet)

    async def negotiate(self, offer_sdp: str) -> str:
        """Answer the viewer's offer: H.264 video and Opus audio, sent only."""
        kinds = parse_offer(offer_sdp, WHEP)
        for kind in kinds:
            transceiver = self.pc.addTransceiver(self.tracks[kind], direction="sendonly")
            # Before the offer is applied: aiortc chooses codecs there.
            transceiver.setCodecPreferences(
                preferences(kind, VIEWER_VIDEO if kind == "video" else AUDIO))
            if kind == "video":
                on_picture_loss(transceiver.sender, self.request_keyframe)
        return await answer(self.pc, offer_sdp)

    def stop(self) -> None:
        for track in self.tracks.values():
            track.stop()
