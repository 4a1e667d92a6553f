"""Viewers (WHEP): each gets the channel's packets, never an encoder of its own.

aiortc negotiates each viewer's connection and runs its ICE, DTLS and RTCP;
its senders are given tracks that never yield a frame, and the channel's
packets, encoded and packetized once, reach the viewer through one
tv.fanout.RtpStream per media section.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable, Sequence
from typing import NoReturn

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpTransceiver, clock
from aiortc.mediastreams import MediaStreamError

from tv.fanout import Burst, Delivery, History, Negotiated, RtpStream
from tv.webrtc import WHEP, answer, on_feedback, parse_offer


class IdleTrack(MediaStreamTrack):
    """The track an aiortc sender is given: it waits, without a frame, until stopped.

    The sender's send loop then costs nothing; the packets go out through
    the viewer's RtpStream instead.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._ended = asyncio.Event()

    async def recv(self) -> NoReturn:
        await self._ended.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._ended.set()


class Viewer:
    """One WHEP session: a peer connection and one RtpStream per media section."""

    def __init__(self, pc: RTCPeerConnection, channel: str, request_keyframe: Callable[[], None],
                 histories: dict[str, History], origin: str | None = None) -> None:
        self.id = uuid.uuid4().hex
        self.pc = pc
        self.channel = channel
        """The programme ("programme") or the feed id this viewer watches."""
        self.origin = origin
        """The anonymous viewer's address group; None for staff."""
        self.request_keyframe = request_keyframe
        self.histories = histories
        self.streams: dict[str, RtpStream] = {}
        self._tracks: list[IdleTrack] = []

    def send(self, burst: Burst, abs_send_time: int, ntp: int) -> None:
        stream = self.streams.get(burst.kind)
        if stream is not None:
            stream.send(burst, abs_send_time, ntp)

    def delivery(self) -> Delivery:
        total = Delivery()
        for stream in self.streams.values():
            total.add(Delivery(stream.packets, stream.retransmitted, stream.dropped))
        return total

    def _lost(self, kind: str, lost: Sequence[int]) -> None:
        stream = self.streams.get(kind)
        if stream is not None:
            stream.retransmit(lost, (clock.current_ntp_time() >> 14) & 0xFFFFFF)

    async def negotiate(self, offer_sdp: str) -> str:
        """Answer the viewer's offer: H.264 video and Opus audio, sent only."""
        kinds = parse_offer(offer_sdp, WHEP)
        transceivers: dict[str, RTCRtpTransceiver] = {}
        for kind in kinds:
            track = IdleTrack(kind)
            self._tracks.append(track)
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            # Before the offer is applied: aiortc chooses codecs there.
            transceiver.setCodecPreferences(WHEP.codecs(kind))
            transceivers[kind] = transceiver
        answer_sdp = await answer(self.pc, offer_sdp)
        for kind, transceiver in transceivers.items():
            self.streams[kind] = RtpStream(kind, transceiver.sender, Negotiated.of(transceiver),
                                           self.histories[kind])
            on_feedback(transceiver.sender,
                        picture_loss=self.request_keyframe if kind == "video" else None,
                        lost=functools.partial(self._lost, kind))
        return answer_sdp

    def stop(self) -> None:
        for track in self._tracks:
            track.stop()
