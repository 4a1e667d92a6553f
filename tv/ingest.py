"""Contributors' feeds (WHIP): every received track read, latest picture kept.

A FeedSource lives as long as the server and outlasts its publishers: a new
publisher takes it over, the programme keeps pointing at it. An unread aiortc
track keeps every decoded frame in memory, so both tracks of every session are
read from the first frame to the last, on air or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError

from tv.model import FeedState, FeedStats, RateMeter, has_signal

log = logging.getLogger("tv.ingest")

SAMPLE_RATE = 48000
BYTES_PER_SAMPLE = 4
"""s16 stereo."""
LOSS_WINDOW_S = 5.0
SNAPSHOT_MAX_AGE_S = 0.5


class AudioSink:
    """One consumer's buffer of a source's sound: s16 stereo 48 kHz, bounded.

    The output clock takes a fixed number of samples per tick; after running
    dry it waits for one tick's worth and ``prime_s`` more, so that network
    jitter makes one gap rather than many.
    """

    def __init__(self, max_s: float = 0.2, prime_s: float = 0.04) -> None:
        self._buffer = bytearray()
        self._max = int(SAMPLE_RATE * max_s) * BYTES_PER_SAMPLE
        self._prime = int(SAMPLE_RATE * prime_s) * BYTES_PER_SAMPLE
        self._primed = False

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > self._max:  # late reader: keep the newest sound
            del self._buffer[:len(self._buffer) - self._max]

    def read(self, samples: int) -> bytes | None:
        """``samples`` samples, or None when there are not enough yet."""
        size = samples * BYTES_PER_SAMPLE
        if not self._primed and len(self._buffer) < size + self._prime:
            return None
        if len(self._buffer) < size:
            self._primed = False
            return None
        self._primed = True
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def clear(self) -> None:
        self._buffer.clear()
        self._primed = False


class FeedSource:
    """One configured source: its latest picture, its sound, its statistics."""

    def __init__(self, feed_id: str) -> None:
        self.id = feed_id
        self.state = FeedState.OFFLINE
        self.session: IngestSession | None = None
        self.frame: av.VideoFrame | None = None
        self.frame_at: float | None = None
        """time.monotonic() when ``frame`` arrived."""
        self.sinks: set[AudioSink] = set()
        self.meter = RateMeter()
        self._loss: deque[tuple[float, int, int]] = deque()
        self._jpeg: tuple[float, bytes] | None = None

    def has_signal(self, now: float) -> bool:
        return has_signal(self.frame_at, now)

    def take_frame(self, frame: av.VideoFrame, at: float) -> None:
        self.frame, self.frame_at = frame, at
        self.meter.frame(at)

    def jpeg(self, now: float) -> bytes | None:
        """The latest picture as JPEG, reused for a moment (a control room polls)."""
        if self.frame is None:
            return None
        if self._jpeg is not None and now - self._jpeg[0] < SNAPSHOT_MAX_AGE_S:
            return self._jpeg[1]
        out = io.BytesIO()
        image = self.frame.to_image()  # type: ignore[no-untyped-call]
        image.save(out, format="JPEG", quality=80)
        self._jpeg = (now, out.getvalue())
        return self._jpeg[1]

    def take_sound(self, data: bytes) -> None:
        for sink in self.sinks:
            sink.write(data)

    def count_packets(self, at: float, received: int, lost: int) -> None:
        self._loss.append((at, received, lost))
        while self._loss and self._loss[0][0] < at - LOSS_WINDOW_S:
            self._loss.popleft()

    def packet_loss(self) -> float | None:
        received = sum(r for _, r, _ in self._loss)
        lost = sum(lost for _, _, lost in self._loss)
        return round(lost / (received + lost), 4) if received + lost else None

    def stats(self, now: float) -> FeedStats:
        age = None if self.frame_at is None else round((now - self.frame_at) * 1000, 1)
        if self.state is not FeedState.LIVE or self.frame is None:
            return FeedStats(self.id, self.state, None, None, None, None, None, age)
        return FeedStats(self.id, self.state, self.frame.width, self.frame.height,
                         self.meter.fps(now), self.meter.kbps(now), self.packet_loss(), age)


StateChange = Callable[["IngestSession", FeedState], Awaitable[None]]


class IngestSession:
    """One publisher's peer connection, read until it ends."""

    def __init__(self, source: FeedSource, pc: RTCPeerConnection,
                 on_state: StateChange) -> None:
        self.id = uuid.uuid4().hex
        self.source = source
        self.pc = pc
        self.on_state = on_state
        self.video_receiver: RTCRtpReceiver | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._bytes: int | None = None
        self._packets: dict[int, tuple[int, int]] = {}

    @property
    def current(self) -> bool:
        return self.source.session is self

    def start(self) -> None:
        """Read every track the offer brought (call once the answer is made)."""
        for transceiver in self.pc.getTransceivers():
            track = transceiver.receiver.track
            if track is None:
                continue
            if track.kind == "video":
                self.video_receiver = transceiver.receiver
                reader = self._read_video(track)
            else:
                reader = self._read_audio(track)
            self._tasks.append(asyncio.create_task(reader, name=f"whip-{track.kind}"))

    async def close(self) -> None:
        """Close the connection and wait for the readers."""
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _read_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not self.current or not isinstance(frame, av.VideoFrame):
                    continue
                self.source.take_frame(frame, time.monotonic())
                if self.source.state is FeedState.OFFLINE:
                    await self.on_state(self, FeedState.LIVE)

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not self.current or not self.source.sinks \
                        or not isinstance(frame, av.AudioFrame):
                    continue  # read all the same: unread frames pile up
                for chunk in resampler.resample(frame):
                    self.source.take_sound(
                        bytes(chunk.planes[0])[:chunk.samples * BYTES_PER_SAMPLE])

    async def poll_stats(self, now: float) -> None:
        """Feed the source's bit rate and packet loss from aiortc's statistics."""
        if self.video_receiver is None:
            return
        report = await self.video_receiver.getStats()
        for stats in report.values():
            if stats.type == "transport":
                # Audio and video share the bundled transport: the feed's total rate.
                if self._bytes is not None:
                    self.source.meter.data(now, max(0, stats.bytesReceived - self._bytes))
                self._bytes = stats.bytesReceived
            elif stats.type == "inbound-rtp":
                previous = self._packets.get(stats.ssrc)
                current = (stats.packetsReceived, stats.packetsLost)
                self._packets[stats.ssrc] = current
                if previous is not None:
                    self.source.count_packets(now, max(0, current[0] - previous[0]),
                                              max(0, current[1] - previous[1]))

    async def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (RTCP PLI on every video SSRC seen)."""
        receiver = self.video_receiver
        if receiver is None:
            return
        for source in receiver.getSynchronizationSources():
            # A PLI naming the RTX SSRC is ignored by the sender: harmless.
            await receiver._send_rtcp_pli(source.source)
