"""Video: server CPU per extra viewer (encode once vs one encoder per viewer), first frame, switch.

    .venv/bin/python -m tests.benchmarks.bench_video \
        [--viewers 0,1,30,60,90,120 --baseline-viewers 0,1,2 --window 10 --runs 1] \
        [--first-frames 20 --switches 10 --content textured --py-spy DIR]

Everything runs on 127.0.0.1, every WebRTC packet included, in these processes:

- ``run.py --config <tmp>``, the server under test: [video] 1280x720 at 30 fps,
  2,500 kbps; host_addresses ["127.0.0.1"]; trust_forwarded on, so that each
  viewer's own X-Forwarded-For keeps it under the per-address WHEP limit;
- ``--role baseline``, aiortc's usual way: the same WHIP publisher's picture,
  scaled to 1280x720 once, and for each WHEP viewer ``MediaRelay.subscribe(track,
  buffered=False)`` of the picture and of the sound, so that every viewer's
  sender runs its own H.264 (libx264 with aiortc's settings) and Opus encoder;
- ``--role publisher``: aiortc contributors over WHIP, afrique red, studio blue,
  640x360 at 30 fps in VP8 (``--publish-size``, ``--publish-codec``), a 400 Hz tone;
- ``--role viewers`` × ``--viewer-procs``: cheap WHEP viewers (below);
- ``--role watcher``: one WHEP viewer at a time that decodes every frame (aiortc)
  and names the colour of its centre pixel.

**CPU per viewer.** For each N of ``--viewers`` (``--baseline-viewers`` for the
baseline), viewers are added up to N, and after ``--settle`` s the server
process's CPU (utime + stime of every thread, from /proc) is read over
``--window`` s. The cost per viewer is the least-squares slope of CPU against N
over the points where the shared work does not change: N >= 1 for the server
under test, which encodes nothing while nobody watches (the step from N = 0 to 1
is its one encoder, ``encoder_cpu_pct``, not a viewer's), every N for the
baseline, whose shared work (decoding, scaling) runs for N = 0 as well. 100 =
one core. ``viewers_per_core`` = 100 / our slope; ``ratio`` = baseline slope /
our slope. ``sys_cpu_pct_per_viewer`` is the kernel's part of the slope: on
loopback, sending a UDP packet also delivers it to the receiving socket, so the
kernel's share is larger than it would be on a network card.
``cpu_us_per_packet`` divides the slope by the packets a viewer receives.

A point is left out of the fit (``fit.excluded``) when the server did less work
than its N asks: the machine above 180 % (``saturated``), the server's main
thread, which runs its event loop and every viewer's senders, above 90 %
(``loop_cpu_pct``), or the viewers' median frame rate 3 % under the programme's
(``starved``: ticks skipped). ``loop_full_at_viewers`` extrapolates the main
thread's own slope to 100 %: how many viewers one process can serve, whatever
the number of cores.

**Cheap viewers.** A decoding aiortc client costs more than the server's share of
it; 50 of them would take both cores. So these viewers negotiate, connect (ICE,
DTLS-SRTP) and receive like any other, but their RTP is counted and dropped where
it arrives (aioice's ``StunProtocol.datagram_received``): no SRTP decryption, no
jitter buffer, no decoding; no NACK or PLI either, since nothing is lost on
loopback (the server still gets its ICE consent checks answered). As Chrome
does, each sends the server a receiver report and a REMB once a second. The RTP
header is clear text, so each viewer counts its video frames (marker bit),
packets and bytes: ``fps_min`` shows that every viewer got the whole stream
during each window, ``kbps_median`` at what rate. For each point the CPU of the clients
(``clients_cpu_pct``), of the publishers, of this process, of the whole machine
(``machine_cpu_pct``, 200 = both cores) and of everything else
(``others_cpu_pct``: other jobs on the machine, ±5 since the kernel counts the
machine and the processes differently) is given; a point where the machine was
nearly saturated is flagged, since a starved server does less work (its viewers'
fps drops).

**Content.** A viewer costs the server per frame and per packet sent, so its cost
grows with the bit rate; a solid colour encodes to almost nothing. With
``--content textured`` (the default) each publisher's picture has its colour in
the middle and moving noise in the top and bottom quarters, so the programme fills
its 2,500 kbps; ``--content solid`` is a flat colour. The baseline's encoders get
the same pictures (aiortc's H.264 encoder aims at 1 Mbps and no REMB comes back
from these viewers to raise it).

**First frame.** ``--first-frames`` fresh decoding viewers, one after the other
(``--background`` cheap viewers keep the programme running, as during a show):
from just before the WHEP POST is sent (the offer is ready) to the first decoded
frame, with the POST's answer time and the ICE+DTLS connection time beside it.

**Switch.** One decoding viewer stays; the director takes ``duplex-afrique`` (red)
and ``ouverture`` (the studio, blue) in turn, ``--switches`` times: from just
before the take's POST is sent to the first decoded frame whose centre is the new
colour. Times come from ``time.monotonic()`` in two processes: CLOCK_MONOTONIC,
one clock for the machine. p95 is nearest-rank.

Progress goes to stderr, one JSON object to stdout; with ``--runs`` > 1 the
headline figures are medians of the runs, each run in ``runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import av
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiosdp
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    pack_remb_fci,
)
from PIL import Image

from server.settings import load_settings
from tests.benchmarks.fleet import reply, serve_commands
from tests.benchmarks.procs import (
    Child,
    bench_config,
    cpu_s,
    free_port,
    nearest_rank,
    raise_nofile,
    run_bench,
    say,
)
from tests.benchmarks.procs import start_server as start_run_py
from tests.helpers import PASSWORD, ROOT, Http
from tests.tv.peers import COLOURS, ColourTrack, ToneTrack, colour_name
from tv.webrtc import answer, preferences, restrict_host_addresses

MODULE = "tests.benchmarks.bench_video"
LOOPBACK = ["127.0.0.1"]
DIRECTOR = "bench-director"
# (segment to take, its source, the colour that source publishes)
RED = ("duplex-afrique", "afrique", "red")
BLUE = ("ouverture", "studio", "blue")
AIM = {"ratio_min": 50, "viewers_per_core_min": 300, "first_frame_ms_p95_max": 1000,
       "switch_ms_p95_max": 300}
SATURATED_PCT = 180
"""Machine CPU (200 = both cores) above which a point's figures are suspect."""
LOOP_SATURATED_PCT = 90
"""A server's main thread (its event loop) busier than this is falling behind."""
_TICKS = os.sysconf("SC_CLK_TCK")


# --- small helpers ---------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    value = nearest_rank(values, q)
    return None if value is None else round(value, 1)


def summary(values: list[float]) -> dict[str, Any]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": percentile(values, 100), "n": len(values)}


def fit(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least squares y = slope * x + intercept, with r²."""
    if len(points) < 2:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    intercept = my - slope * mx
    ss = sum((y - my) ** 2 for y in ys)
    res = sum((y - slope * x - intercept) ** 2 for x, y in points)
    return {"slope": round(slope, 4), "intercept": round(intercept, 2),
            "r2": round(1 - res / ss, 4) if ss else 1.0}


def thread_cpu_s(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread (the main thread runs the event loop)."""
    with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def sys_s(pid: int) -> float:
    """System (kernel) CPU seconds of a process: on loopback, sending a packet also receives it."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return int(f.read().rsplit(")", 1)[1].split()[12]) / _TICKS


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every core) since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


def peer() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def video_pts(sdp: str) -> set[int]:
    """The payload types of the video section (the answer uses the offer's numbers)."""
    media = aiosdp.SessionDescription.parse(sdp).media
    return {c.payloadType for m in media if m.kind == "video" for c in m.rtp.codecs
            if c.payloadType is not None}


async def connected(pc: RTCPeerConnection, within: float) -> None:
    async with asyncio.timeout(within):
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"the connection {pc.connectionState}")
            await asyncio.sleep(0.005)


@dataclass
class WhepSession:
    """A viewer's peer connection and where to DELETE its session."""

    pc: RTCPeerConnection
    url: str
    location: str = ""

    async def post(self, http: aiohttp.ClientSession, ip: str, offer: str) -> None:
        headers = {"Content-Type": "application/sdp", "X-Forwarded-For": ip}
        async with http.post(self.url, data=offer, headers=headers,
                             timeout=aiohttp.ClientTimeout(total=20)) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"WHEP POST answered {resp.status}: {body[:200]}")
            self.location = resp.headers["Location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    async def close(self, http: aiohttp.ClientSession) -> None:
        if self.location:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                base = self.url.split("/whep")[0]
                async with http.delete(base + self.location,
                                       timeout=aiohttp.ClientTimeout(total=5)):
                    pass
        await self.pc.close()


def recvonly_offer_pc() -> RTCPeerConnection:
    pc = peer()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    return pc


# --- publisher process -------------------------------------------------------------------


class PatternTrack(ColourTrack):
    """peers.ColourTrack with moving noise in the top and bottom quarters (``textured``).

    The middle stays the source's colour for the watcher; the noise changes every
    frame (30 precomputed pictures in turn), so encoders spend their whole budget.
    """

    def __init__(self, colour: str, width: int, height: int, fps: int, textured: bool) -> None:
        super().__init__(colour, width, height, fps)
        self._frames = [self._frame]
        if textured:
            rng = random.Random(colour)
            band = height // 4
            self._frames = []
            for _ in range(30):
                image = Image.new("RGB", (width, height), COLOURS[colour])
                # 2x2-pixel grains: busy for an encoder, cheaper to make than full noise.
                noise = Image.frombytes("L", (width // 2, band // 2),
                                        rng.randbytes(width // 2 * (band // 2)))
                noise = noise.resize((width, band), Image.Resampling.NEAREST).convert("RGB")
                image.paste(noise, (0, 0))
                image.paste(noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                            (0, height - band))
                rgb: av.VideoFrame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
                self._frames.append(rgb.reformat(format="yuv420p"))

    async def recv(self) -> av.VideoFrame:
        self._frame = self._frames[self._n % len(self._frames)]
        return await super().recv()


async def publisher_role() -> None:
    """Publish over WHIP on command: {"publish": url, "token", "colour", ...}; {"close": true};
    {"state": true}: each publisher's connection state."""
    restrict_host_addresses(LOOPBACK)
    pcs: list[RTCPeerConnection] = []
    http = aiohttp.ClientSession()

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd.get("close"):
            await asyncio.gather(*(pc.close() for pc in pcs))
            pcs.clear()
            return {"closed": True}
        if cmd.get("state"):
            return {"states": [pc.connectionState for pc in pcs]}
        pc = peer()
        pcs.append(pc)
        track = PatternTrack(cmd["colour"], cmd["width"], cmd["height"], cmd["fps"],
                             cmd["textured"])
        video = pc.addTransceiver(track, direction="sendonly")
        video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                   if c.mimeType == cmd["codec"]])
        pc.addTransceiver(ToneTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {cmd['token']}"}
        async with http.post(cmd["publish"], data=pc.localDescription.sdp, headers=headers,
                             timeout=aiohttp.ClientTimeout(total=20)) as resp:
            body = await resp.text()
            if resp.status != 201:
                return {"error": f"WHIP POST answered {resp.status}: {body[:200]}"}
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        await connected(pc, 20)
        return {"published": cmd["publish"]}

    reply({"ready": True})
    try:
        await serve_commands(handle)
    finally:
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
        await http.close()


# --- cheap viewers process ----------------------------------------------------------------


@dataclass
class Meter:
    """What one cheap viewer received: RTP packets, bytes, video frames (marker bits)."""

    video: set[int] = field(default_factory=set)
    packets: int = 0
    bytes: int = 0
    frames: int = 0
    highest: dict[int, int] = field(default_factory=dict)
    """Each stream's (SSRC's) latest sequence number, for the receiver reports."""
    video_ssrcs: set[int] = field(default_factory=set)
    window_start: float = field(default_factory=time.monotonic)
    """Since when ``window_frames`` and ``max_gap_s`` count (bench_show reads them)."""
    window_frames: int = 0
    last_frame_at: float | None = None
    max_gap_s: float = 0.0
    """The longest time between two frames' last packets in the window."""

    def window(self, now: float) -> dict[str, float]:
        """Frame rate and longest gap since the last call; the next window starts now."""
        span = now - self.window_start
        out = {"fps": self.window_frames / span if span > 0 else 0.0, "span_s": span,
               "max_gap_ms": self.max_gap_s * 1000}
        self.window_start, self.window_frames, self.max_gap_s = now, 0, 0.0
        return out


METERS: dict[Any, Meter] = {}
"""aioice Connection -> its viewer's meter."""


def count_and_drop_rtp() -> None:
    """Count each metered connection's RTP as its socket delivers it, and drop it.

    Before aioice tries to parse it as STUN: the cheapest place in Python. STUN
    (consent checks), DTLS and RTCP (second byte 192..208, RFC 5761) go on as usual.
    """
    original = aioice.ice.StunProtocol.datagram_received

    def datagram_received(self: aioice.ice.StunProtocol, data: bytes | str,
                          addr: tuple[Any, ...]) -> None:
        if isinstance(data, bytes) and len(data) >= 12 and 127 < data[0] < 192 \
                and not 192 <= data[1] <= 208:
            meter = METERS.get(self.receiver)
            if meter is not None:
                meter.packets += 1
                meter.bytes += len(data)
                ssrc = int.from_bytes(data[8:12], "big")
                meter.highest[ssrc] = int.from_bytes(data[2:4], "big")
                if data[1] & 0x7F in meter.video:
                    meter.video_ssrcs.add(ssrc)
                    if data[1] & 0x80:
                        meter.frames += 1
                        meter.window_frames += 1
                        now = time.monotonic()
                        if meter.last_frame_at is not None:
                            meter.max_gap_s = max(meter.max_gap_s, now - meter.last_frame_at)
                        meter.last_frame_at = now
                return
        original(self, data, addr)

    aioice.ice.StunProtocol.datagram_received = datagram_received  # type: ignore[method-assign]


async def viewers_role(proc: int) -> None:
    """{"open": n, "url"} adds n viewers; {"stats": true}; {"close": true} ends them all.

    {"leave": n} ends the n oldest; {"window": true}: each viewer's frame rate and
    longest gap between frames since the last such command.
    """
    restrict_host_addresses(LOOPBACK)
    count_and_drop_rtp()
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20))
    sessions: list[tuple[WhepSession, Meter]] = []
    opened = 0

    async def open_one(url: str, index: int, gate: asyncio.Semaphore) -> bool:
        async with gate:
            session = WhepSession(recvonly_offer_pc(), url)
            try:
                await session.pc.setLocalDescription(await session.pc.createOffer())
                meter = Meter(video_pts(session.pc.localDescription.sdp))
                gatherer = session.pc.getTransceivers()[0].receiver.transport.transport
                METERS[gatherer.iceGatherer._connection] = meter
                await session.post(http, f"10.{proc + 1}.{index // 250}.{index % 250 + 1}",
                                   session.pc.localDescription.sdp)
                await connected(session.pc, 20)
            except Exception as e:
                say(f"viewers {proc}: viewer {index} failed: {e!r}")
                await session.close(http)
                return False
            sessions.append((session, meter))
            return True

    async def close(ended: list[tuple[WhepSession, Meter]]) -> None:
        await asyncio.gather(*(s.close(http) for s, _ in ended), return_exceptions=True)
        for s, _ in ended:
            METERS.pop(s.pc.getTransceivers()[0].receiver.transport.transport
                       .iceGatherer._connection, None)

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        nonlocal opened
        if "leave" in cmd:
            ended, sessions[:] = sessions[:cmd["leave"]], sessions[cmd["leave"]:]
            await close(ended)
            return {"viewers": len(sessions), "left": len(ended)}
        if cmd.get("window"):
            now = time.monotonic()
            return {"viewers": [m.window(now) for _, m in sessions]}
        if "open" in cmd:
            gate = asyncio.Semaphore(8)
            start = time.monotonic()
            ok = await asyncio.gather(*(open_one(cmd["url"], opened + i, gate)
                                        for i in range(cmd["open"])))
            opened += len(ok)
            return {"viewers": len(sessions), "failed": ok.count(False),
                    "open_s": round(time.monotonic() - start, 2)}
        if cmd.get("close"):
            ended, sessions[:] = list(sessions), []
            await close(ended)
            return {"closed": len(ended)}
        return {"t": time.monotonic(), "frames": [m.frames for _, m in sessions],
                "bytes": [m.bytes for _, m in sessions],
                "packets": [m.packets for _, m in sessions]}

    async def report() -> None:
        """Once a second per viewer, what Chrome sends back: a receiver report and a REMB."""
        while True:
            await asyncio.sleep(1.0)
            for session, meter in list(sessions):
                dtls = session.pc.getTransceivers()[0].receiver.transport
                if dtls.state != "connected" or not meter.highest:
                    continue
                own = session.pc.getTransceivers()[0].sender._ssrc
                blocks = [RtcpReceiverInfo(ssrc=ssrc, fraction_lost=0, packets_lost=0,
                                           highest_sequence=seq, jitter=0, lsr=0, dlsr=0)
                          for ssrc, seq in meter.highest.items()]
                compound = [RtcpRrPacket(ssrc=own, reports=blocks),
                            RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=own, media_ssrc=0,
                                           fci=pack_remb_fci(3_000_000,
                                                             sorted(meter.video_ssrcs)))]
                with contextlib.suppress(ConnectionError):
                    await dtls._send_rtp(b"".join(bytes(p) for p in compound))

    reporter = asyncio.create_task(report())
    reply({"ready": True})
    try:
        await serve_commands(handle)
    finally:
        reporter.cancel()
        await asyncio.gather(*(s.close(http) for s, _ in sessions), return_exceptions=True)
        await http.close()


# --- decoding watcher process --------------------------------------------------------------


def centre_colour(frame: av.VideoFrame) -> str:
    """The named colour of the picture's centre pixel, read from the YUV planes (BT.601)."""
    x, y = frame.width // 2, frame.height // 2
    luma = memoryview(frame.planes[0])[y * frame.planes[0].line_size + x]
    u = memoryview(frame.planes[1])[y // 2 * frame.planes[1].line_size + x // 2] - 128
    v = memoryview(frame.planes[2])[y // 2 * frame.planes[2].line_size + x // 2] - 128
    c = 1.164 * (luma - 16)
    rgb = tuple(max(0, min(255, round(val))) for val in
                (c + 1.596 * v, c - 0.392 * u - 0.813 * v, c + 2.017 * u))
    return colour_name(rgb)


class Decoding:
    """One decoding WHEP viewer: when its first frame came, when each colour began."""

    def __init__(self, url: str) -> None:
        self.session = WhepSession(recvonly_offer_pc(), url)
        self.first_frame_at: float | None = None
        self.changes: list[tuple[float, str]] = []
        self.changed = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

        @self.session.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.VideoFrame):
                    continue  # the sound: read, so that it does not pile up
                now = time.monotonic()
                if self.first_frame_at is None:
                    self.first_frame_at = now
                colour = centre_colour(frame)
                if not self.changes or self.changes[-1][1] != colour:
                    self.changes.append((now, colour))
                self.changed.set()

    async def until(self, check: Callable[[], float | None], within: float) -> float | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while (found := check()) is None:
                    self.changed.clear()
                    await self.changed.wait()
                return found
        return None

    async def close(self, http: aiohttp.ClientSession) -> None:
        await self.session.close(http)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def first_frame_trial(http: aiohttp.ClientSession, url: str, index: int) -> dict[str, Any]:
    viewer = Decoding(url)
    pc = viewer.session.pc
    try:
        await pc.setLocalDescription(await pc.createOffer())
        start = time.monotonic()
        await viewer.session.post(http, f"10.200.{index // 250}.{index % 250 + 1}",
                                  pc.localDescription.sdp)
        answered = time.monotonic()
        await connected(pc, 10)
        joined = time.monotonic()
        first = await viewer.until(lambda: viewer.first_frame_at, 10)
        if first is None:
            return {"error": "no frame within 10 s"}
        return {"answer_ms": round((answered - start) * 1000, 1),
                "connected_ms": round((joined - start) * 1000, 1),
                "first_frame_ms": round((first - start) * 1000, 1)}
    except Exception as e:
        return {"error": repr(e)}
    finally:
        await viewer.close(http)


async def watcher_role() -> None:
    """{"first_frames": n, "url", "gap_s"}; {"watch": url}; {"colour", "after", "within"}."""
    restrict_host_addresses(LOOPBACK)
    http = aiohttp.ClientSession()
    watching: Decoding | None = None
    trials = 0

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        nonlocal watching, trials
        if "first_frames" in cmd:
            results = []
            # One untimed viewer first: this process's first decoder, first DTLS
            # handshake and first imports are the client's cost, not the server's.
            for i in range(cmd["first_frames"] + 1):
                result = await first_frame_trial(http, cmd["url"], trials)
                trials += 1
                if i:
                    results.append(result)
                await asyncio.sleep(cmd["gap_s"] * random.uniform(0.75, 1.25))
            return {"trials": results}
        if "watch" in cmd:
            watching = Decoding(cmd["watch"])
            pc = watching.session.pc
            await pc.setLocalDescription(await pc.createOffer())
            await watching.session.post(http, "10.201.0.1", pc.localDescription.sdp)
            await connected(pc, 10)
            seen = watching
            await seen.until(lambda: seen.changes[-1][0] if seen.changes else None, 10)
            return {"colour": seen.changes[-1][1] if seen.changes else None}
        assert watching is not None
        seen = watching

        def found() -> float | None:
            return next((t for t, c in seen.changes if t >= cmd["after"]
                         and c == cmd["colour"]), None)

        return {"t": await seen.until(found, cmd["within"]),
                "now": seen.changes[-1][1] if seen.changes else None}

    reply({"ready": True})
    try:
        await serve_commands(handle)
    finally:
        if watching is not None:
            await watching.close(http)
        await http.close()


# --- baseline server process: aiortc's usual way ------------------------------------------


class Scaled(MediaStreamTrack):
    """The contributor's picture at the programme's size, once for every viewer."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack, width: int, height: int) -> None:
        super().__init__()
        self.source, self.size = source, (width, height)

    async def recv(self) -> av.VideoFrame:
        frame = await self.source.recv()
        assert isinstance(frame, av.VideoFrame)
        out = frame.reformat(*self.size, format="yuv420p")
        out.pts, out.time_base = frame.pts, frame.time_base
        return out


async def baseline_role(port: int, width: int, height: int) -> None:
    """WHIP in, WHEP out, with a MediaRelay subscription (and so an encoder) per viewer."""
    restrict_host_addresses(LOOPBACK)
    relay = MediaRelay()
    tracks: dict[str, MediaStreamTrack] = {}
    pcs: dict[str, RTCPeerConnection] = {}
    holes: list[MediaBlackhole] = []

    async def whip(request: web.Request) -> web.Response:
        pc = peer()
        pcs[uuid.uuid4().hex] = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            source = Scaled(track, width, height) if track.kind == "video" else track
            tracks[track.kind] = source
            # Read even while nobody watches, as the server under test does.
            hole = MediaBlackhole()
            hole.addTrack(relay.subscribe(source, buffered=False))
            holes.append(hole)
            asyncio.get_running_loop().create_task(hole.start())

        for kind in ("video", "audio"):
            pc.addTransceiver(kind, direction="recvonly")
        sdp = await answer(pc, await request.text())
        return web.Response(status=201, text=sdp, content_type="application/sdp",
                            headers={"Location": "/whip/session"})

    async def whep(request: web.Request) -> web.Response:
        pc = peer()
        key = uuid.uuid4().hex
        pcs[key] = pc
        for kind in ("video", "audio"):
            transceiver = pc.addTransceiver(relay.subscribe(tracks[kind], buffered=False),
                                            direction="sendonly")
            if kind == "video":
                transceiver.setCodecPreferences(preferences("video", ("video/H264",)))
        sdp = await answer(pc, await request.text())
        return web.Response(status=201, text=sdp, content_type="application/sdp",
                            headers={"Location": f"/whep/sessions/{key}"})

    async def whep_delete(request: web.Request) -> web.Response:
        pc = pcs.pop(request.match_info["key"], None)
        if pc is not None:
            await pc.close()
        return web.json_response({"status": "ended"})

    app = web.Application()
    app.router.add_post("/whip/{feed}", whip)
    app.router.add_post("/whep", whep)
    app.router.add_delete("/whep/sessions/{key}", whep_delete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        reply({"ready": True})
        await serve_commands()
    finally:
        for hole in holes:
            await hole.stop()
        await asyncio.gather(*(pc.close() for pc in pcs.values()), return_exceptions=True)
        await runner.cleanup()


# --- the benchmark: processes ------------------------------------------------------------


async def child(name: str, *args: str) -> Child:
    proc = await Child.start(name, sys.executable, "-m", MODULE, *args)
    ready = await proc.read(within=60)
    assert ready.get("ready"), ready
    return proc


async def run_py(config: Path, *args: str) -> str:
    """``run.py --config CONFIG ARGS`` to completion; its stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "--config", str(config), *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, errors = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        sys.stderr.write(errors.decode(errors="replace"))
        raise RuntimeError(f"run.py {args[0]} failed with status {proc.returncode}")
    return out.decode()


def video_config(tmp: Path, run: int) -> Path:
    path = bench_config(tmp, tmp / f"video{run}.sqlite3")
    text = path.read_text("utf-8")
    # Every cheap viewer comes from 127.0.0.1; a X-Forwarded-For each keeps them
    # under the per-address WHEP limit (30 a minute), as separate homes would be.
    assert "trust_forwarded = false" in text
    path.write_text(text.replace("trust_forwarded = false", "trust_forwarded = true"), "utf-8")
    settings = load_settings(path)
    assert settings.http.trust_forwarded and list(settings.webrtc.host_addresses) == LOOPBACK
    return path


async def publish(publisher: Child, url: str, token: str, colour: str, size: tuple[int, int],
                  fps: int, textured: bool, codec: str) -> None:
    """Have the ``--role publisher`` process publish a test pattern and a tone over WHIP."""
    got = await publisher.ask({"publish": url, "token": token, "colour": colour,
                               "width": size[0], "height": size[1], "fps": fps,
                               "textured": textured, "codec": f"video/{codec}"}, within=60)
    if "error" in got:
        raise RuntimeError(got["error"])


@dataclass
class Stage:
    """The client processes, shared by both servers of a run."""

    publisher: Child
    viewers: list[Child]
    watcher: Child
    args: argparse.Namespace
    fps: int = 30
    """The rate every viewer should receive (the programme's, the publishers')."""

    @property
    def clients(self) -> list[Child]:
        return [*self.viewers, self.watcher]

    async def publish(self, url: str, token: str, colour: str) -> None:
        a = self.args
        await publish(self.publisher, url, token, colour, (a.publish_width, a.publish_height),
                      self.fps, a.content == "textured", a.publish_codec)

    async def grow(self, url: str, have: int, want: int) -> int:
        """Open cheap viewers, spread over the processes, up to ``want``."""
        if want <= have:
            return have
        per = [(want - have) // len(self.viewers)] * len(self.viewers)
        for i in range((want - have) % len(self.viewers)):
            per[i] += 1
        answers = await asyncio.gather(*(v.ask({"open": n, "url": url}, within=60 + 2 * n)
                                         for v, n in zip(self.viewers, per, strict=True) if n))
        failed = sum(a["failed"] for a in answers)
        if failed:
            say(f"{failed} viewers failed to connect")
        return sum(a["viewers"] for a in await self.stats()) if failed else want

    async def stats(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(v.ask({"stats": True}, 30) for v in self.viewers)))

    async def close_viewers(self) -> None:
        await asyncio.gather(*(v.ask({"close": True}, 60) for v in self.viewers))


async def measure(stage: Stage, server: Child, n: int, window: float) -> dict[str, Any]:
    """One point: every process's CPU over ``window`` s, and what each viewer received."""
    def cpu() -> tuple[float, ...]:
        return (server.cpu_s(), sys_s(server.pid), thread_cpu_s(server.pid, server.pid),
                sum(c.cpu_s() for c in stage.clients), stage.publisher.cpu_s(), cpu_s(),
                machine_busy_s())

    before = await stage.stats()
    start = cpu()
    t0 = time.monotonic()
    await asyncio.sleep(window)
    after = await stage.stats()
    end = cpu()
    dt = time.monotonic() - t0
    server_pct, sys_pct, loop_pct, clients_pct, publisher_pct, bench_pct, machine_pct = (
        (b - a) / dt * 100 for a, b in zip(start, end, strict=True))
    fps, kbps, pps = [], [], []
    for b, a in zip(before, after, strict=True):
        span = a["t"] - b["t"]
        fps += [(y - x) / span for x, y in zip(b["frames"], a["frames"], strict=False)]
        kbps += [(y - x) * 8 / 1000 / span for x, y in zip(b["bytes"], a["bytes"], strict=False)]
        pps += [(y - x) / span for x, y in zip(b["packets"], a["packets"], strict=False)]
    point: dict[str, Any] = {
        "viewers": n, "server_cpu_pct": round(server_pct, 2),
        "server_sys_cpu_pct": round(sys_pct, 2), "loop_cpu_pct": round(loop_pct, 1),
        "clients_cpu_pct": round(clients_pct, 1), "publisher_cpu_pct": round(publisher_pct, 1),
        "bench_cpu_pct": round(bench_pct, 1), "machine_cpu_pct": round(machine_pct, 1),
        # Whatever else ran on the machine meanwhile (other users' jobs, the kernel).
        "others_cpu_pct": round(machine_pct - server_pct - clients_pct - publisher_pct
                                - bench_pct, 1),
        "fps_median": round(statistics.median(fps), 1) if fps else None,
        "fps_min": round(min(fps), 1) if fps else None,
        "kbps_median": round(statistics.median(kbps)) if kbps else None,
        "packets_per_s_median": round(statistics.median(pps)) if pps else None}
    point["saturated"] = machine_pct > SATURATED_PCT or loop_pct > LOOP_SATURATED_PCT
    # Frames the server skipped are work it did not do: such a point looks cheap.
    point["starved"] = bool(fps) and statistics.median(fps) < 0.97 * stage.fps
    say(f"  N={n}: server {point['server_cpu_pct']}% cpu (event loop {point['loop_cpu_pct']}%), "
        f"clients {point['clients_cpu_pct']}%, "
        f"publisher {point['publisher_cpu_pct']}%, others {point['others_cpu_pct']}%, "
        f"machine {point['machine_cpu_pct']}%; "
        f"fps median {point['fps_median']} min {point['fps_min']}, "
        f"{point['kbps_median']} kbps each")
    return point


async def sweep(stage: Stage, server: Child, url: str, counts: list[int], from_n: int,
                spy_dir: Path | None, label: str) -> dict[str, Any]:
    """CPU against the number of viewers; the slope over N >= ``from_n``."""
    points, have = [], 0
    for n in counts:
        have = await stage.grow(url, have, n)
        await asyncio.sleep(stage.args.settle)
        spy = None
        if spy_dir is not None and n == counts[-1]:
            spy = await py_spy(server.pid, spy_dir / f"{label}-n{n}.txt")
        points.append(await measure(stage, server, have, stage.args.window))
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            await asyncio.wait_for(spy.wait(), 30)
    await stage.close_viewers()
    by_n = {p["viewers"]: p["server_cpu_pct"] for p in points}
    # A saturated or starved point did less work than its N asks: left out of the fit.
    excluded = [p["viewers"] for p in points if p["saturated"] or p["starved"]]
    used = [p for p in points if p["viewers"] >= from_n and p["viewers"] not in excluded]
    if excluded:
        say(f"  left out of the fit (saturated or behind): N = {excluded}")
    line = fit([(p["viewers"], p["server_cpu_pct"]) for p in used])
    kernel = fit([(p["viewers"], p["server_sys_cpu_pct"]) for p in used])
    loop = fit([(p["viewers"], p["loop_cpu_pct"]) for p in used])
    per_viewer = line["slope"] if line else None
    pps = used[-1]["packets_per_s_median"] if used else None
    return {
        "cpu_pct_per_viewer": per_viewer,
        "cpu_ms_per_viewer_per_s": round(per_viewer * 10, 3) if per_viewer else None,
        "sys_cpu_pct_per_viewer": kernel["slope"] if kernel else None,
        "packets_per_viewer_per_s": pps,
        "cpu_us_per_packet": round(per_viewer * 1e4 / pps, 1) if per_viewer and pps else None,
        "encoder_cpu_pct": round(by_n[1] - by_n[0], 2) if 0 in by_n and 1 in by_n else None,
        "loop_cpu_pct_per_viewer": loop["slope"] if loop else None,
        # One process serves at most this many: its event loop would then be full.
        "loop_full_at_viewers": round((100 - loop["intercept"]) / loop["slope"])
        if loop and loop["slope"] > 0 else None,
        "fit": {**line, "from_n": from_n, "excluded": excluded} if line else None,
        "points": [[p["viewers"], p["server_cpu_pct"]] for p in points],
        "detail": points,
    }


async def py_spy(pid: int, output: Path) -> asyncio.subprocess.Process | None:
    exe = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if exe is None:
        say("py-spy not found: .venv/bin/pip install py-spy")
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--threads",
        "--format", "raw", "--output", str(output), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)


# --- the benchmark: phases ---------------------------------------------------------------


async def take(director: Http, segment: str) -> None:
    status, body, _ = await director.request("POST", f"/api/programme/take/{segment}")
    if status != 200:
        raise RuntimeError(f"take {segment} answered {status}: {body}")


async def until_live(director: Http, feeds: list[str], within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            _, body, _ = await director.request("GET", "/api/feeds")
            if all(f["state"] == "live" for f in body if f["feed"] in feeds):
                return
            await asyncio.sleep(0.2)


async def switches(stage: Stage, director: Http, url: str, count: int) -> dict[str, Any]:
    """Take red and blue in turn; take POST -> first decoded frame of the new colour."""
    await take(director, RED[0])
    got = await stage.watcher.ask({"watch": url}, 30)
    assert got["colour"] is not None, "the watcher saw no frame"
    first = await stage.watcher.ask({"colour": RED[2], "after": 0, "within": 10}, 15)
    assert first["t"] is not None, f"the watcher does not see red: {first}"
    delays, posts, missed = [], [], 0
    for i in range(count):
        segment, _, colour = BLUE if i % 2 == 0 else RED
        await asyncio.sleep(random.uniform(1.0, 1.5))  # any phase of the 33 ms clock
        start = time.monotonic()
        await take(director, segment)
        posts.append((time.monotonic() - start) * 1000)
        seen = await stage.watcher.ask({"colour": colour, "after": start, "within": 5}, 10)
        if seen["t"] is None:
            missed += 1
            say(f"  switch {i + 1}: {colour} not seen within 5 s (sees {seen['now']})")
            continue
        delays.append((seen["t"] - start) * 1000)
        say(f"  switch {i + 1} to {colour}: {delays[-1]:.0f} ms (POST {posts[-1]:.0f} ms)")
    return {**summary(delays), "missed": missed, "take_post_ms": summary(posts),
            "samples": [round(d, 1) for d in delays]}


async def first_frames(stage: Stage, url: str, count: int) -> dict[str, Any]:
    got = await stage.watcher.ask({"first_frames": count, "url": url,
                                   "gap_s": stage.args.first_frame_gap}, within=30 * count)
    trials = got["trials"]
    ok = [t for t in trials if "error" not in t]
    for t in trials:
        if "error" in t:
            say(f"  first frame failed: {t['error']}")
    result = {**summary([t["first_frame_ms"] for t in ok]), "failed": len(trials) - len(ok),
              "answer_ms": summary([t["answer_ms"] for t in ok]),
              "connected_ms": summary([t["connected_ms"] for t in ok]),
              # The server's part once the connection is up: a keyframe, sent, decoded.
              "connected_to_frame_ms": summary([t["first_frame_ms"] - t["connected_ms"]
                                                for t in ok]),
              "samples": [t["first_frame_ms"] for t in ok]}
    say(f"  first frame p50 {result['p50']} ms, p95 {result['p95']} ms "
        f"(answer p50 {result['answer_ms']['p50']} ms, connected p50 "
        f"{result['connected_ms']['p50']} ms)")
    return result


async def ours(stage: Stage, tmp: Path, run: int) -> dict[str, Any]:
    args = stage.args
    config = video_config(tmp, run)
    video = load_settings(config).video
    stage.fps = video.fps
    password = tmp / "password"
    password.write_text(PASSWORD + "\n", "utf-8")
    await run_py(config, "adduser", DIRECTOR, "--role", "director",
                 "--password-file", str(password))
    tokens = {feed: (await run_py(config, "feed-token", feed)).strip().splitlines()[-1]
              for feed in (RED[1], BLUE[1])}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with contextlib.AsyncExitStack() as stack:
        server = await start_run_py(config, port)
        stack.push_async_callback(server.stop, 10)
        stack.push_async_callback(stage.publisher.ask, {"close": True}, 30)
        for _, feed, colour in (RED, BLUE):
            await stage.publish(f"{base}/whip/{feed}", tokens[feed], colour)
        director = await Http.open(base)
        stack.push_async_callback(director.close)
        await director.sign_in(DIRECTOR)
        await until_live(director, [RED[1], BLUE[1]], 30)
        await take(director, RED[0])
        say(f"run {run}: encode once, {video.width}x{video.height} at {video.fps} fps, "
            f"{video.bitrate_kbps} kbps; viewers {args.viewers}")
        cpu = await sweep(stage, server, f"{base}/whep", args.viewers, 1, args.py_spy,
                          f"ours-run{run}")
        await stage.grow(f"{base}/whep", 0, args.background)
        # Their keyframes are forced: let KEYFRAME_MIN_GAP_S pass, or the first
        # newcomer would wait for it (a crowd joining at once; not measured here).
        await asyncio.sleep(args.settle)
        say(f"run {run}: first frame, {args.first_frames} viewers one after the other, "
            f"{args.background} others watching")
        first = await first_frames(stage, f"{base}/whep", args.first_frames)
        say(f"run {run}: switch, {args.switches} takes")
        switch = await switches(stage, director, f"{base}/whep", args.switches)
        await stage.close_viewers()
    return {"cpu": cpu, "first_frame_ms": first, "switch_ms": switch,
            "video": {"width": video.width, "height": video.height, "fps": video.fps,
                      "bitrate_kbps": video.bitrate_kbps}}


async def baseline(stage: Stage, run: int, width: int, height: int) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with contextlib.AsyncExitStack() as stack:
        server = await child("baseline", "--role", "baseline", "--port", str(port),
                             "--size", f"{width}x{height}")
        stack.push_async_callback(server.stop)
        stack.push_async_callback(stage.publisher.ask, {"close": True}, 30)
        await stage.publish(f"{base}/whip/{RED[1]}", "-", RED[2])
        await asyncio.sleep(2)  # the first pictures reach the relay
        say(f"run {run}: baseline, a MediaRelay subscription and an encoder per viewer; "
            f"viewers {stage.args.baseline_viewers}")
        return await sweep(stage, server, f"{base}/whep", stage.args.baseline_viewers, 0,
                           stage.args.py_spy, f"baseline-run{run}")


def verdict(ours_run: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    mine, theirs = ours_run["cpu"]["cpu_pct_per_viewer"], base["cpu_pct_per_viewer"]
    ratio = round(theirs / mine, 1) if mine and theirs and mine > 0 else None
    per_core = round(100 / mine) if mine and mine > 0 else None
    return {"ratio": ratio, "viewers_per_core": per_core}


async def one_run(stage: Stage, tmp: Path, run: int) -> dict[str, Any]:
    mine = await ours(stage, tmp, run)
    theirs = await baseline(stage, run, mine["video"]["width"], mine["video"]["height"])
    result = {"encode_once": mine["cpu"], "baseline": theirs, **verdict(mine, theirs),
              "first_frame_ms": mine["first_frame_ms"], "switch_ms": mine["switch_ms"],
              "video": mine["video"]}
    say(f"run {run}: {result['encode_once']['cpu_pct_per_viewer']}% per viewer (baseline "
        f"{theirs['cpu_pct_per_viewer']}%), ratio {result['ratio']}, "
        f"{result['viewers_per_core']} viewers per core")
    return result


@contextlib.asynccontextmanager
async def staged(args: argparse.Namespace) -> AsyncIterator[Stage]:
    async with contextlib.AsyncExitStack() as stack:
        async def start(name: str, *role: str) -> Child:
            proc = await child(name, *role)
            stack.push_async_callback(proc.stop)
            return proc

        publisher = await start("publisher", "--role", "publisher")
        viewers = [await start(f"viewers{i}", "--role", "viewers", "--proc", str(i))
                   for i in range(args.viewer_procs)]
        watcher = await start("watcher", "--role", "watcher")
        yield Stage(publisher, viewers, watcher, args)


def med(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return None
        values.append(float(value))
    return round(statistics.median(values), 3)


CPU_KEYS = ("cpu_pct_per_viewer", "cpu_ms_per_viewer_per_s", "sys_cpu_pct_per_viewer",
            "packets_per_viewer_per_s", "cpu_us_per_packet", "encoder_cpu_pct",
            "loop_cpu_pct_per_viewer", "loop_full_at_viewers")


def headline(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    last = runs[-1]
    out: dict[str, Any] = {
        **{k: {**{key: med(runs, k, key) for key in CPU_KEYS},
               "points": [r[k]["points"] for r in runs]}
           for k in ("encode_once", "baseline")},
        "ratio": med(runs, "ratio"), "viewers_per_core": med(runs, "viewers_per_core"),
        "first_frame_ms": {"p50": med(runs, "first_frame_ms", "p50"),
                           "p95": med(runs, "first_frame_ms", "p95")},
        "switch_ms": {"p50": med(runs, "switch_ms", "p50"),
                      "p95": med(runs, "switch_ms", "p95")},
    }
    if len(runs) == 1:
        out = {**last}
    details = [p for r in runs for k in ("encode_once", "baseline") for p in r[k]["detail"]]
    clients = fit([(p["viewers"], p["clients_cpu_pct"]) for r in runs
                   for p in r["encode_once"]["detail"]])
    out["clients"] = {
        "viewer_kind": "cheap: RTP counted and dropped at aioice, no SRTP, no decoding",
        "viewer_procs": args.viewer_procs,
        "clients_cpu_pct_per_viewer": clients["slope"] if clients else None,
        "clients_cpu_pct_max": max(p["clients_cpu_pct"] for p in details),
        "publisher_cpu_pct_max": max(p["publisher_cpu_pct"] for p in details),
        "others_cpu_pct_max": max(p["others_cpu_pct"] for p in details),
        "machine_cpu_pct_max": max(p["machine_cpu_pct"] for p in details),
        # [run, server, N] of the points left out of the fits.
        "suspect_points": [[i, k, p["viewers"]] for i, r in enumerate(runs, 1)
                           for k in ("encode_once", "baseline") for p in r[k]["detail"]
                           if p["saturated"] or p["starved"]],
    }
    out["publishers"] = {"width": args.publish_width, "height": args.publish_height,
                         "fps": runs[-1]["video"]["fps"],
                         "codec": args.publish_codec, "content": args.content}
    out["aim"] = AIM
    ff, sw = out["first_frame_ms"]["p95"], out["switch_ms"]["p95"]
    out["meets_aim"] = {
        "ratio": out["ratio"] is not None and out["ratio"] >= AIM["ratio_min"],
        "viewers_per_core": out["viewers_per_core"] is not None
        and out["viewers_per_core"] >= AIM["viewers_per_core_min"],
        "first_frame": ff is not None and ff < AIM["first_frame_ms_p95_max"],
        "switch": sw is not None and sw < AIM["switch_ms_p95_max"],
    }
    if len(runs) > 1:
        out["runs"] = runs
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        async with staged(args) as stage:
            for run in range(1, args.runs + 1):
                runs.append(await one_run(stage, Path(tmp), run))
    return headline(runs, args)


# --- entry point ----------------------------------------------------------------------------


def counts(text: str) -> list[int]:
    values = sorted({int(x) for x in text.split(",") if x.strip()})
    if not values or values[0] < 0 or values[-1] < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of viewer counts")
    return values


def size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--viewers", type=counts, default=counts("0,1,30,60,90,120"),
                        help="viewer counts for encode once (0 and 1 give the encoder's cost)")
    parser.add_argument("--baseline-viewers", type=counts, default=counts("0,1,2"),
                        help="viewer counts for the baseline (an encoder each)")
    parser.add_argument("--window", type=float, default=10.0, help="CPU window per point, s")
    parser.add_argument("--settle", type=float, default=3.0, help="wait after adding viewers, s")
    parser.add_argument("--viewer-procs", type=int, default=2)
    parser.add_argument("--first-frames", type=int, default=20)
    parser.add_argument("--first-frame-gap", type=float, default=1.0,
                        help="mean pause between first-frame viewers, s")
    parser.add_argument("--background", type=int, default=10,
                        help="cheap viewers watching during first-frame and switch phases")
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--content", choices=("textured", "solid"), default="textured")
    parser.add_argument("--publish-size", type=size, default=(640, 360))
    parser.add_argument("--publish-codec", choices=("VP8", "H264"), default="VP8")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="record py-spy profiles of each server at its largest N")
    parser.add_argument("--role", choices=("publisher", "viewers", "watcher", "baseline"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--proc", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=size, default=(1280, 720), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.publish_width, args.publish_height = args.publish_size
    if min(args.runs, args.viewer_procs, args.first_frames, args.switches) < 1 \
            or args.window <= 0 or args.background < 0:
        parser.error("--runs, --viewer-procs, --first-frames, --switches >= 1, --window > 0")
    return args


def run_role(args: argparse.Namespace) -> None:
    raise_nofile()
    logging.basicConfig(level=logging.ERROR)
    roles: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
        "publisher": publisher_role,
        "viewers": lambda: viewers_role(args.proc),
        "watcher": watcher_role,
        "baseline": lambda: baseline_role(args.port, *args.size),
    }
    asyncio.run(roles[args.role]())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        run_role(args)
        return 0
    return run_bench(bench, args)


if __name__ == "__main__":
    sys.exit(main())
