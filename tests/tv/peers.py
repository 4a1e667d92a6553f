"""Real aiortc peers for the video tests: a contributor and a viewer.

The contributor sends a solid colour (one per site) and a tone; the viewer
decodes what it receives and names the colour it sees, so a test can assert
what a person watching would notice.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from PIL import Image

from tv import slate
from tv.service import TvService

COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 60, 220),
    "green": (30, 200, 60),
    "slate": slate.BACKGROUND,
}
TONE_HZ = 400
SAMPLE_RATE = 48000
AUDIO_SAMPLES = 960


def colour_name(pixel: object) -> str:
    """The named colour nearest to an RGB pixel, or "unknown" when none is close."""
    assert isinstance(pixel, tuple) and len(pixel) == 3, pixel
    rgb: tuple[int, int, int] = pixel
    name, distance = min(((n, math.dist(c, rgb)) for n, c in COLOURS.items()),
                         key=lambda item: item[1])
    return name if distance < 60 else "unknown"


class ColourTrack(MediaStreamTrack):
    """A camera that films a wall of one colour."""

    kind = "video"

    def __init__(self, colour: str, width: int = 320, height: int = 180, fps: int = 30) -> None:
        super().__init__()
        image = Image.new("RGB", (width, height), COLOURS[colour])
        rgb: av.VideoFrame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
        self._frame = rgb.reformat(format="yuv420p")
        self._fps = fps
        self._start: float | None = None
        self._n = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._n / self._fps - time.monotonic()))
        self._frame.pts = round(self._n * 90000 / self._fps)
        self._frame.time_base = Fraction(1, 90000)
        self._n += 1
        return self._frame


class HighProfileTrack(MediaStreamTrack):
    """A broadcast tool's H.264 High profile, with B-frames: encoded here, sent as it is.

    aiortc encodes only constrained baseline; a track that returns av.Packets
    is packetized without re-encoding, as OBS or GStreamer would send them.
    """

    kind = "video"

    def __init__(self, colour: str, width: int = 320, height: int = 180, fps: int = 30) -> None:
        super().__init__()
        self._camera = ColourTrack(colour, width, height, fps)
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base, ctx.framerate = Fraction(1, 90000), Fraction(fps, 1)
        ctx.bit_rate, ctx.gop_size, ctx.max_b_frames = 500_000, fps, 2
        ctx.options = {"preset": "veryfast", "profile": "high", "bf": "2"}
        self._encoder = ctx
        self._ready: list[av.Packet] = []

    async def recv(self) -> av.Packet:  # type: ignore[override]
        while not self._ready:
            frame = await self._camera.recv()
            self._ready += self._encoder.encode(frame)
        packet = self._ready.pop(0)
        packet.time_base = Fraction(1, 90000)
        return packet

    def stop(self) -> None:
        super().stop()
        self._camera.stop()


class ToneTrack(MediaStreamTrack):
    """A microphone hearing a steady tone, in 20 ms frames of s16 stereo at 48 kHz."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        samples = array.array("h")
        for i in range(AUDIO_SAMPLES):
            value = round(8000 * math.sin(2 * math.pi * TONE_HZ * i / SAMPLE_RATE))
            samples.extend((value, value))
        self._pcm = samples.tobytes()
        self._start: float | None = None
        self._n = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._n * 0.02 - time.monotonic()))
        frame = av.AudioFrame(format="s16", layout="stereo", samples=AUDIO_SAMPLES)
        frame.planes[0].update(self._pcm)
        frame.sample_rate = SAMPLE_RATE
        frame.pts, frame.time_base = self._n * AUDIO_SAMPLES, Fraction(1, SAMPLE_RATE)
        self._n += 1
        return frame


def _peer() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class Publisher:
    """A contributor's encoder publishing one feed over WHIP (straight to the service)."""

    def __init__(self, pc: RTCPeerConnection, feed: str, colour: str) -> None:
        self.pc = pc
        self.feed = feed
        self.colour = colour
        self.session_id = ""
        self.closed = asyncio.Event()
        """Set when the connection closes (whichever side closed it)."""

        @pc.on("connectionstatechange")
        def changed() -> None:
            if pc.connectionState == "closed":
                self.closed.set()

    @classmethod
    async def open(cls, tv: TvService, feed: str, colour: str,
                   codec: str = "video/H264", profile: str | None = None) -> Publisher:
        """``profile``: an H.264 profile-level-id to offer alone, sent from x264 as it is."""
        publisher = cls(_peer(), feed, colour)
        pc = publisher.pc
        camera = HighProfileTrack(colour) if profile else ColourTrack(colour)
        video = pc.addTransceiver(camera, direction="sendonly")
        video.setCodecPreferences([
            c for c in RTCRtpSender.getCapabilities("video").codecs
            if c.mimeType == codec and (profile is None
                                        or c.parameters.get("profile-level-id") == profile)])
        pc.addTransceiver(ToneTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        try:
            answer, publisher.session_id = await tv.publish(feed, pc.localDescription.sdp)
        except BaseException:
            await pc.close()
            raise
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return publisher

    def _video_sender(self) -> RTCRtpSender:
        return next(t.sender for t in self.pc.getTransceivers() if t.kind == "video")

    def freeze(self) -> None:
        """The camera stops sending pictures; the connection (and the sound) stay."""
        self._video_sender().replaceTrack(None)

    def resume(self) -> None:
        self._video_sender().replaceTrack(ColourTrack(self.colour))

    async def close(self) -> None:
        await self.pc.close()


class Watcher:
    """A viewer (WHEP) that decodes every frame and remembers what it saw."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.session_id = ""
        self.colour = "none"
        self.frames = 0
        self.keyframes = 0
        self.loud_s = 0.0
        """Seconds of sound heard above a whisper."""
        self.first_frame_at: float | None = None
        self.connected_at: float | None = None
        self.video_receiver: RTCRtpReceiver | None = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, tv: TvService, feed: str | None = None) -> Watcher:
        watcher = cls(_peer())
        pc = watcher.pc
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("connectionstatechange")
        def changed() -> None:
            if pc.connectionState == "connected":
                watcher.connected_at = time.monotonic()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            reader = watcher._read_video if track.kind == "video" else watcher._read_audio
            watcher._tasks.append(asyncio.create_task(reader(track)))

        await pc.setLocalDescription(await pc.createOffer())
        try:
            answer, watcher.session_id = await tv.watch(pc.localDescription.sdp, feed)
        except BaseException:
            await pc.close()
            raise
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        watcher.video_receiver = next(t.receiver for t in pc.getTransceivers()
                                      if t.kind == "video")
        return watcher

    async def _read_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)
                image = frame.to_image()  # type: ignore[no-untyped-call]
                self.colour = colour_name(image.getpixel((frame.width // 10,
                                                          frame.height // 10)))
                self.frames += 1
                self.keyframes += frame.key_frame
                if self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()
                self._changed.set()

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                pcm = array.array("h", bytes(frame.planes[0])[:frame.samples * 4])
                if max(map(abs, pcm), default=0) > 1000:
                    self.loud_s += frame.samples / frame.sample_rate

    async def until(self, check: Callable[[Watcher], Any], within: float) -> float:
        """Seconds until ``check(self)`` holds; TimeoutError after ``within``."""
        start = time.monotonic()
        async with asyncio.timeout(within):
            while not check(self):
                self._changed.clear()
                await self._changed.wait()
        return time.monotonic() - start

    async def sees(self, colour: str, within: float) -> float:
        return await self.until(lambda w: w.colour == colour, within)

    async def send_pli(self) -> None:
        """Report picture loss, as a browser does after losing packets."""
        assert self.video_receiver is not None
        for source in self.video_receiver.getSynchronizationSources():
            await self.video_receiver._send_rtcp_pli(source.source)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
