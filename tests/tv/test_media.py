"""The programme video with real WebRTC peers on loopback.

Contributors publish a wall of colour each (afrique red, studio blue); a
viewer decodes the programme and names the colour it sees. Real clock, real
aiortc, a small picture (320x180 at 15 fps) to keep the machine free.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket
from PIL import Image

from server.clock import SystemClock
from server.settings import Settings, VideoSettings
from tests.helpers import test_settings as settings_for
from tests.tv.peers import Publisher, Watcher, colour_name
from tv.errors import InvalidSdp, SessionNotFound, UnknownFeed, UnsupportedMedia
from tv.events import FeedStateChanged
from tv.model import FeedState
from tv.service import STALL_S, TvService

SMALL = VideoSettings(width=320, height=180, fps=15, bitrate_kbps=400, keyframe_interval_s=10.0)


class Room:
    """The service under test, its published events, and every peer to close."""

    def __init__(self, settings: Settings) -> None:
        self.events: list[object] = []
        self._event = asyncio.Event()
        self.tv = TvService(settings, SystemClock(), self._publish)
        self.peers: list[Publisher | Watcher] = []

    async def _publish(self, event: object) -> None:
        self.events.append(event)
        self._event.set()

    async def publisher(self, feed: str, colour: str, codec: str = "video/H264",
                        profile: str | None = None) -> Publisher:
        peer = await Publisher.open(self.tv, feed, colour, codec, profile)
        self.peers.append(peer)
        return peer

    async def watcher(self, feed: str | None = None) -> Watcher:
        peer = await Watcher.open(self.tv, feed)
        self.peers.append(peer)
        return peer

    async def on_air(self, feed: str, colour: str, title: str) -> Watcher:
        """``feed`` publishing ``colour``, put on air, and a viewer who sees it."""
        await self.publisher(feed, colour)
        await self.tv.switch(feed, title)
        viewer = await self.watcher()
        await viewer.sees(colour, within=3)
        return viewer

    def states(self, feed: str) -> list[FeedState]:
        return [e.state for e in self.events
                if isinstance(e, FeedStateChanged) and e.feed == feed]

    async def until_state(self, feed: str, state: FeedState, within: float) -> None:
        async with asyncio.timeout(within):
            while not self.states(feed) or self.states(feed)[-1] is not state:
                self._event.clear()
                await self._event.wait()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path).with_overrides(video=SMALL)


@pytest.fixture
async def room(settings: Settings) -> AsyncIterator[Room]:
    room = Room(settings)
    await room.tv.start()
    try:
        yield room
    finally:
        for peer in room.peers:
            await peer.close()
        await room.tv.stop()


async def test_the_viewer_follows_every_switch_and_loss_on_one_connection(room: Room) -> None:
    tv = room.tv
    await room.publisher("afrique", "red", "video/VP8")
    studio = await room.publisher("studio", "blue", "video/H264")
    viewer = await room.watcher()
    # Before the show: the slate.
    await viewer.sees("slate", within=3)
    assert tv.viewer_count == 1

    await tv.switch("afrique", "Duplex Afrique")
    await viewer.sees("red", within=2)
    await tv.switch("studio", "Plateau")
    took = await viewer.sees("blue", within=1)
    print(f"switch afrique -> studio seen after {took * 1000:.0f} ms")
    heard = viewer.loud_s
    await asyncio.sleep(0.5)
    assert viewer.loud_s > heard + 0.3, "the studio's tone reaches the viewer"

    # The studio's encoder goes away: the slate, on the same connection...
    await studio.close()
    took = await viewer.sees("slate", within=2.5)
    print(f"contributor gone, slate after {took * 1000:.0f} ms")
    await room.until_state("studio", FeedState.OFFLINE, within=2)
    # ...and the studio again when it comes back.
    await room.publisher("studio", "blue")
    took = await viewer.sees("blue", within=3)
    print(f"contributor back, on air after {took * 1000:.0f} ms")
    assert room.states("studio") == [FeedState.LIVE, FeedState.OFFLINE, FeedState.LIVE]
    assert viewer.pc.connectionState == "connected"

    await tv.switch(None, "")
    await viewer.sees("slate", within=1)
    await tv.stop_watching(viewer.session_id)
    assert tv.viewer_count == 0


async def test_a_broadcast_tool_sending_h264_high_profile_with_b_frames_is_taken(
        room: Room) -> None:
    """A tool whose encoder is set to High profile offers it (profile-level-id 64...)."""
    publisher = await room.publisher("afrique", "green", profile="640c1f")
    answer = publisher.pc.remoteDescription.sdp
    assert "profile-level-id=640c1f" in answer
    assert "42e01f" not in answer and "VP8" not in answer
    viewer = await room.watcher()
    await room.tv.switch("afrique", "Duplex Afrique")
    took = await viewer.sees("green", within=5)
    print(f"High profile contributor on air after {took * 1000:.0f} ms")
    await room.until_state("afrique", FeedState.LIVE, within=1)


async def test_a_second_publisher_replaces_the_first(room: Room) -> None:
    tv = room.tv
    first = await room.publisher("afrique", "red")
    viewer = await room.watcher()
    await tv.switch("afrique", "Duplex Afrique")
    await viewer.sees("red", within=3)

    await room.publisher("afrique", "green", "video/VP8")
    took = await viewer.sees("green", within=2)
    print(f"second publisher on air after {took * 1000:.0f} ms")
    async with asyncio.timeout(3):
        await first.closed.wait()  # the server hung up on the first one
    assert room.states("afrique") == [FeedState.LIVE], "replaced without going offline"

    await asyncio.sleep(2.1)  # a full rate window, two statistics rounds
    stats = {s.feed: s for s in tv.feed_stats()}
    assert list(stats) == [f.id for f in tv.settings.feeds]
    afrique = stats["afrique"]
    assert afrique.state is FeedState.LIVE
    assert (afrique.width, afrique.height) == (320, 180)
    assert afrique.fps and afrique.fps > 10
    assert afrique.kbps and afrique.kbps > 10
    assert afrique.packet_loss is not None and afrique.packet_loss < 0.05
    assert afrique.last_frame_age_ms is not None and afrique.last_frame_age_ms < 500
    assert stats["asie"].state is FeedState.OFFLINE and stats["asie"].width is None

    jpeg = tv.snapshot_jpeg("afrique")
    assert jpeg is not None
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    assert colour_name(image.getpixel((160, 90))) == "green"
    assert tv.snapshot_jpeg("asie") is None


async def test_a_joining_viewer_gets_a_picture_within_a_second(room: Room) -> None:
    """Keyframes come every 10 s on their own: joins and picture losses get one at once."""
    first = await room.on_air("studio", "blue", "Plateau")
    await asyncio.sleep(1.0)  # well into the group of pictures

    late = await room.watcher()
    await late.until(lambda w: w.frames > 0, within=3)
    assert late.connected_at is not None and late.first_frame_at is not None
    delay = late.first_frame_at - late.connected_at
    print(f"joining viewer: first picture {delay * 1000:.0f} ms after connecting")
    assert delay < 1.0
    assert late.colour == "blue"

    await asyncio.sleep(0.6)  # past the join's keyframe and the rate limit
    keyframes = first.keyframes
    await first.send_pli()
    took = await first.until(lambda w: w.keyframes > keyframes, within=1)
    print(f"picture loss reported: keyframe after {took * 1000:.0f} ms")
    assert took < 0.5


async def remote_reports(receiver: RTCRtpReceiver) -> tuple[int, int, int]:
    """(packets the server says it sent, packets received, packets lost), from getStats."""
    stats = list((await receiver.getStats()).values())
    sent = [s for s in stats if s.type == "remote-outbound-rtp"]
    received = [s for s in stats if s.type == "inbound-rtp"]
    assert sent and received, f"no sender report yet: {[s.type for s in stats]}"
    return sent[0].packetsSent, received[0].packetsReceived, received[0].packetsLost


async def test_lost_packets_are_sent_again_and_reports_match_what_was_sent(room: Room) -> None:
    """A viewer on a lossy network asks again for what it missed (NACK) and gets it over RTX."""
    tv = room.tv
    viewer = await room.on_air("afrique", "red", "Duplex Afrique")
    assert viewer.video_receiver is not None
    audio = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "audio")

    # No loss yet: the sender reports count what arrived, and nothing is missing.
    await asyncio.sleep(1.6)  # at least one report (every 0.5 to 1.5 s)
    for receiver, rate in ((viewer.video_receiver, 40), (audio, 17)):
        sent, received, lost = await remote_reports(receiver)
        assert 0 < sent <= received + 2 * rate, (sent, received)
        assert received - sent <= 2 * rate, (sent, received)
        assert lost == 0

    # The network now eats every fourth video packet on the way to the viewer.
    receiver = viewer.video_receiver
    original = receiver._handle_rtp_packet
    dropped: set[int] = set()
    repaired: set[int] = set()
    h264 = next(c.payloadType for c in receiver._RTCRtpReceiver__codecs.values()
                if c.mimeType == "video/H264")

    async def lossy(packet: RtpPacket, arrival_time_ms: int) -> None:
        if packet.payload_type == h264 and packet.sequence_number % 4 == 1 \
                and packet.sequence_number not in dropped:
            dropped.add(packet.sequence_number)
            return
        if packet.payload_type != h264:  # RTX: the original number comes first
            repaired.add(int.from_bytes(packet.payload[:2], "big"))
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = lossy  # type: ignore[method-assign]
    frames = viewer.frames
    await asyncio.sleep(3.0)
    receiver._handle_rtp_packet = original  # type: ignore[method-assign]
    await asyncio.sleep(0.3)

    decoded = viewer.frames - frames
    print(f"lossy network: {len(dropped)} packets lost, {len(dropped & repaired)} repaired, "
          f"{decoded} pictures in 3 s")
    assert len(dropped) >= 8
    assert len(dropped & repaired) >= len(dropped) - 1, "every loss but the newest is repaired"
    assert decoded >= 0.8 * 15 * 3, "the picture keeps flowing"
    assert viewer.colour == "red"
    assert tv.delivery().repaired >= len(dropped & repaired)
    assert tv.delivery().sent > 0 and tv.delivery().dropped == 0


async def test_a_frozen_picture_gives_the_slate_then_the_feed_goes_offline(room: Room) -> None:
    tv = room.tv
    studio = await room.publisher("studio", "blue")
    viewer = await room.watcher()
    await tv.switch("studio", "Plateau")
    await viewer.sees("blue", within=3)

    studio.freeze()  # still connected, no more pictures
    took = await viewer.sees("slate", within=2)
    print(f"picture frozen, slate after {took * 1000:.0f} ms")
    await room.until_state("studio", FeedState.OFFLINE, within=STALL_S + 2)
    studio.resume()
    await viewer.sees("blue", within=2)
    await room.until_state("studio", FeedState.LIVE, within=1)


async def test_staff_watch_one_feed_alone(room: Room) -> None:
    tv = room.tv
    await room.publisher("afrique", "red")
    programme = await room.watcher()
    staff = await room.watcher("afrique")
    await staff.sees("red", within=3)
    await programme.sees("slate", within=3)  # nothing on air
    assert tv.viewer_count == 1
    await tv.stop_watching(staff.session_id)
    assert "afrique" not in tv._channels  # its encoder stops with its last viewer


async def test_offers_and_sessions_that_cannot_be_used(room: Room, settings: Settings) -> None:
    tv = room.tv
    viewer_offer = await _offer("recvonly")
    publisher_offer = await _offer("sendonly")
    with pytest.raises(UnknownFeed):
        await tv.publish("atlantide", publisher_offer)
    with pytest.raises(InvalidSdp):
        await tv.publish("afrique", "hello")
    with pytest.raises(UnsupportedMedia):
        await tv.publish("afrique", viewer_offer)  # recvonly: not a publisher
    with pytest.raises(UnsupportedMedia):
        await tv.watch(publisher_offer)
    with pytest.raises(UnsupportedMedia):
        await tv.watch(await _offer("recvonly", video="video/VP8"))  # no H.264
    with pytest.raises(UnknownFeed):
        await tv.watch(viewer_offer, feed="atlantide")
    with pytest.raises(SessionNotFound):
        await tv.unpublish("afrique", "nope")
    with pytest.raises(SessionNotFound):
        await tv.stop_watching("nope")
    with pytest.raises(UnknownFeed):
        await tv.switch("atlantide", "?")
    with pytest.raises(UnknownFeed):
        tv.snapshot_jpeg("atlantide")
    assert tv.viewer_count == 0 and not tv._sessions

    assert tv.ice_servers_link_headers() == []
    turn = settings.webrtc.__class__(host_addresses=("127.0.0.1",), ice_servers=(
        {"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"},
        {"urls": "stun:stun.example.org"}))
    other = TvService(settings.with_overrides(webrtc=turn), SystemClock(), room._publish)
    assert other.ice_servers_link_headers() == [
        '<turn:turn.example.org:3478>; rel="ice-server"; username="u"; credential="p"; '
        'credential-type="password"',
        '<stun:stun.example.org>; rel="ice-server"']


async def _offer(direction: str, video: str = "video/H264") -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        transceiver = pc.addTransceiver("video", direction=direction)
        transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                         if c.mimeType == video])
        pc.addTransceiver("audio", direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()

