"""A channel: one picture and one sound, encoded once, fanned out to every viewer.

The programme is a channel whose source follows the running order; a staff
member watching one feed gets a channel of that feed alone. Each channel runs
two fixed clocks (video at the configured rate, audio every 20 to 60 ms) on absolute
deadlines: late ticks are skipped, never accumulated, so the output never
drifts. At each video tick it takes the newest picture of its source (so a
source's frames are repeated or dropped to fit the clock), or the slate when
the source has no signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import av
from aiortc import clock as ntp_clock
from av.video.frame import PictureType

from server.clock import Clock
from server.settings import VideoSettings
from tv.fanout import Burst, History
from tv.h264 import packetize
from tv.ingest import SAMPLE_RATE, AudioSink, FeedSource
from tv.slate import STARTING_SOON, WAITING, Slate

log = logging.getLogger("tv.programme")

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_TIME_BASE = Fraction(1, SAMPLE_RATE)
AUDIO_BITRATE = 128_000
KEYFRAME_MIN_GAP_S = 0.5
"""At most one forced keyframe per this many seconds, however many viewers ask."""


FAN_OUT_SLICE = 64
"""Viewers served before the event loop gets a turn, within one burst."""


class Receiver(Protocol):
    """One viewer's end of a channel (tv.whep.Viewer)."""

    def send(self, burst: Burst, abs_send_time: int, ntp: int) -> None: ...


@dataclass(frozen=True)
class SlateText:
    segment_title: str
    message: str


class VideoEncoder:
    """H.264 constrained baseline, x264 tuned for live: no B-frames, no lookahead."""

    def __init__(self, video: VideoSettings) -> None:
        keyint = max(1, round(video.fps * video.keyframe_interval_s))
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height = video.width, video.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = VIDEO_TIME_BASE
        ctx.framerate = Fraction(video.fps, 1)
        ctx.bit_rate = video.bitrate_kbps * 1000
        ctx.gop_size = keyint
        ctx.max_b_frames = 0
        # One thread, hence one slice (one NAL unit) a picture: a viewer's share of
        # a frame then leaves in one segmented send. Measured at 720p: ~5 ms of
        # CPU a frame either way, and no slower to come out than with slice threads.
        ctx.thread_count = 1
        rate = video.bitrate_kbps
        ctx.options = {
            "preset": "ultrafast", "tune": "zerolatency", "profile": "baseline",
            "forced-idr": "1",
            # SPS/PPS before every keyframe: a viewer may start at any of them.
            "x264-params": (f"repeat-headers=1:keyint={keyint}:min-keyint={keyint}:"
                            f"scenecut=0:vbv-maxrate={rate}:vbv-bufsize={rate}"),
        }
        self.ctx = ctx
        self.size = (video.width, video.height)

    def encode(self, frame: av.VideoFrame, pts: int, keyframe: bool) -> list[av.Packet[Any]]:
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        frame.pict_type = PictureType.I if keyframe else PictureType.NONE
        return self.ctx.encode(frame)


class AudioEncoder:
    """Opus, stereo 48 kHz, one packet per ``frame_ms`` (20, 40 or 60 ms)."""

    def __init__(self, frame_ms: int) -> None:
        self.samples = SAMPLE_RATE * frame_ms // 1000
        self.silence = bytes(self.samples * 4)
        ctx = av.CodecContext.create("libopus", "w")
        ctx.bit_rate = AUDIO_BITRATE
        ctx.format = "s16"
        ctx.layout = "stereo"
        ctx.sample_rate = SAMPLE_RATE
        ctx.time_base = AUDIO_TIME_BASE
        ctx.options = {"frame_duration": str(frame_ms)}
        self.ctx = ctx

    def encode(self, pcm: bytes, pts: int) -> list[av.Packet[Any]]:
        frame = av.AudioFrame(format="s16", layout="stereo", samples=self.samples)
        frame.planes[0].update(pcm)
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, pts, AUDIO_TIME_BASE
        return self.ctx.encode(frame)


class Ticker:
    """Absolute deadlines ``start + n * period``; a late tick skips the missed ones."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.start = time.monotonic()
        self.n = 0

    async def next(self) -> int:
        """Wait for the next deadline; return its index (for timestamps)."""
        delay = self.start + self.n * self.period - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay > self.period:
            self.n = math.floor((time.monotonic() - self.start) / self.period)
        n, self.n = self.n, self.n + 1
        return n


class Channel:
    """One output, encoded once for all its receivers."""

    def __init__(self, name: str, video: VideoSettings, slate: Slate, clock: Clock,
                 executor: Executor) -> None:
        self.name = name
        self.video = video
        self.slate = slate
        self.clock = clock
        self.executor = executor
        self.source: FeedSource | None = None
        self.segment_title = ""
        self.receivers: set[Receiver] = set()
        self._sink = AudioSink()
        self._video_encoder = VideoEncoder(video)
        self._audio_encoder = AudioEncoder(video.audio_frame_ms)
        self._scaled: tuple[av.VideoFrame, av.VideoFrame] | None = None
        self._key_due: float | None = None
        self._key_asked_at = 0.0
        self._last_key = -math.inf
        self._tasks: list[asyncio.Task[None]] = []
        self.histories = {"video": History(), "audio": History()}
        """The packets sent lately, per kind, shared by every viewer for repairs (NACK)."""

    # --- control -----------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run_video(), name=f"{self.name}-video"),
                       asyncio.create_task(self._run_audio(), name=f"{self.name}-audio")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.source is not None:
            self.source.sinks.discard(self._sink)

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    def set_source(self, source: FeedSource | None, segment_title: str) -> None:
        """Show ``source`` (None: the slate) from the next tick on."""
        self.segment_title = segment_title
        if source is self.source:
            return
        if self.source is not None:
            self.source.sinks.discard(self._sink)
        self._sink.clear()
        self.source = source
        if source is not None:
            source.sinks.add(self._sink)

    def attach(self, receiver: Receiver) -> None:
        """Start sending to ``receiver``, beginning with a keyframe."""
        self.receivers.add(receiver)
        self.request_keyframe()

    def detach(self, receiver: Receiver) -> None:
        self.receivers.discard(receiver)

    def request_keyframe(self) -> None:
        """A keyframe soon: at once, or KEYFRAME_MIN_GAP_S after the last forced one."""
        now = time.monotonic()
        if self._key_due is None:
            self._key_asked_at = now
            self._key_due = max(now, self._last_key + KEYFRAME_MIN_GAP_S)

    # --- the clocks --------------------------------------------------------------

    async def _run_video(self) -> None:
        ticker = Ticker(1 / self.video.fps)
        loop = asyncio.get_running_loop()
        while True:
            n = await ticker.next()
            if not self.receivers:
                continue  # nobody watching: spare the encoder (a joiner asks a keyframe)
            now = time.monotonic()
            pick = self._pick(now)
            forced = self._key_due is not None and now >= self._key_due
            if forced:
                self._key_due, self._last_key = None, now
            pts = round(n * 90000 / self.video.fps)
            try:
                packets = await loop.run_in_executor(self.executor, self._encode_video,
                                                     pick, pts, forced)
            except Exception:
                # One bad frame must not stop the show: log it, go on with the next.
                log.exception("the %s picture could not be encoded", self.name)
                continue
            for packet in packets:
                if packet.is_keyframe and self._key_due is not None \
                        and self._key_asked_at <= now:
                    self._key_due = None  # that request is served by this keyframe
                # The encoder keeps the frames' 90 kHz time stamps, the RTP clock's.
                timestamp = packet.pts if packet.pts is not None else pts
                await self._fan_out(self.histories["video"].add(
                    "video", packetize(bytes(packet)), timestamp, packet.is_keyframe))

    async def _fan_out(self, burst: Burst) -> None:
        """Send one burst to every receiver, giving the event loop a turn every slice."""
        receivers = list(self.receivers)
        for start in range(0, len(receivers), FAN_OUT_SLICE):
            if start:
                await asyncio.sleep(0)
            ntp = ntp_clock.current_ntp_time()
            abs_send_time = (ntp >> 14) & 0xFFFFFF
            for receiver in receivers[start:start + FAN_OUT_SLICE]:
                try:
                    receiver.send(burst, abs_send_time, ntp)
                except Exception:
                    # One viewer's trouble must not cost the others their picture.
                    log.exception("a packet could not be sent to a viewer of %s", self.name)

    def _pick(self, now: float) -> av.VideoFrame | SlateText:
        source = self.source
        if source is not None and source.frame is not None and source.has_signal(now):
            return source.frame
        if source is not None:
            return SlateText(self.segment_title, WAITING)
        # Off air: before the show (no title yet), or the title given for the end.
        return SlateText(self.segment_title, "" if self.segment_title else STARTING_SOON)

    def _encode_video(self, pick: av.VideoFrame | SlateText, pts: int,
                      keyframe: bool) -> list[av.Packet[Any]]:
        # Runs in the encoding thread, one frame at a time for every channel: a
        # source frame may be shared by two channels, and encode() stamps it.
        if isinstance(pick, SlateText):
            frame = self.slate.frame(pick.segment_title, pick.message, self.clock.now())
        else:
            frame = self._scale(pick)
        return self._video_encoder.encode(frame, pts, keyframe)

    def _scale(self, frame: av.VideoFrame) -> av.VideoFrame:
        if self._scaled is not None and self._scaled[0] is frame:
            return self._scaled[1]
        scaled = frame.reformat(self.video.width, self.video.height, format="yuv420p")
        self._scaled = (frame, scaled)
        return scaled

    async def _run_audio(self) -> None:
        encoder = self._audio_encoder
        ticker = Ticker(encoder.samples / SAMPLE_RATE)
        while True:
            n = await ticker.next()
            source = self.source
            pcm = None
            if source is not None and source.has_signal(time.monotonic()):
                pcm = self._sink.read(encoder.samples)
            else:
                self._sink.clear()
            if not self.receivers:
                continue
            try:
                packets = encoder.encode(pcm or encoder.silence, n * encoder.samples)
            except Exception:
                log.exception("the %s sound could not be encoded", self.name)
                continue
            # Opus encodes 60 ms in a fraction of a millisecond: no thread needed.
            for packet in packets:
                timestamp = packet.pts if packet.pts is not None else n * encoder.samples
                await self._fan_out(self.histories["audio"].add(
                    "audio", [bytes(packet)], timestamp, True))
