"""WHIP and WHEP through the real app on a loopback port, with real aiortc peers.

Every status code and header a broadcast tool or a browser relies on, every
error case, and the promise that a bad request never disturbs a session
that is already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioice import stun
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from av import VideoFrame
from PIL import Image

from server import keys
from server.auth import Role
from server.settings import Settings
from tests.helpers import test_settings as settings_for

SDP = "application/sdp"
# A small programme picture keeps the encoder's work (and the tests) light.
SMALL_VIDEO = {"width": 320, "height": 180, "fps": 15}
GARBAGE = b"this is not an SDP offer\r\n"


# --- real peers ------------------------------------------------------------------

class ColourTrack(VideoStreamTrack):
    """A camera that films one solid colour, at 30 frames per second."""

    def __init__(self, rgb: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> None:
        super().__init__()
        self.image = Image.new("RGB", size, rgb)

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_image(self.image)
        frame.pts, frame.time_base = pts, time_base
        return frame


def _peer() -> RTCPeerConnection:
    # No STUN server: the server's settings keep ICE on 127.0.0.1.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def post_sdp(base: str, path: str, sdp: str | bytes, token: str | None = None,
                   headers: dict[str, str] | None = None,
                   content_type: str = SDP) -> tuple[int, str, aiohttp.ClientResponse]:
    sent = {"Content-Type": content_type, **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.post(
            base + path, data=sdp.encode() if isinstance(sdp, str) else sdp,
            headers=sent) as resp:
        return resp.status, await resp.text(), resp


async def send(base: str, method: str, path: str, token: str | None = None,
               **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.request(
            method, base + path, headers=headers, **kwargs) as resp:
        body: Any = await resp.json() if resp.content_type == "application/json" \
            else await resp.read()
        return resp.status, body, resp


@dataclass
class Publisher:
    """A contributor's encoder publishing one colour over WHIP."""

    pc: RTCPeerConnection
    location: str
    token: str

    @classmethod
    async def start(cls, base: str, feed: str, token: str,
                    rgb: tuple[int, int, int] = (0, 160, 0)) -> Publisher:
        pc = _peer()
        pc.addTransceiver(ColourTrack(rgb), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        status, answer, resp = await post_sdp(base, f"/whip/{feed}", pc.localDescription.sdp,
                                              token)
        assert status == 201, answer
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        return cls(pc, resp.headers["Location"], token)

    async def close(self) -> None:
        await self.pc.close()


@dataclass
class Viewer:
    """A WHEP player that decodes every frame it receives."""

    pc: RTCPeerConnection
    location: str
    frames: int = 0
    last: VideoFrame | None = None
    _readers: list[asyncio.Task[None]] = field(default_factory=list)
    _first: asyncio.Event = field(default_factory=asyncio.Event)
    _frame: asyncio.Condition = field(default_factory=asyncio.Condition)

    @classmethod
    async def start(cls, base: str, path: str = "/whep",
                    headers: dict[str, str] | None = None,
                    cookies: str = "") -> Viewer:
        pc = _peer()
        transceiver = pc.addTransceiver("video", direction="recvonly")
        h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType in ("video/H264", "video/rtx")]
        transceiver.setCodecPreferences(h264)
        viewer = cls(pc, "")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            viewer._readers.append(asyncio.create_task(viewer._read(track)))

        await pc.setLocalDescription(await pc.createOffer())
        sent = dict(headers or {})
        if cookies:
            sent["Cookie"] = cookies
        status, answer, resp = await post_sdp(base, path, pc.localDescription.sdp,
                                              headers=sent)
        assert status == 201, answer
        viewer.location = resp.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        return viewer

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(Exception):
            while True:
                self.last = await track.recv()
                self.frames += 1
                self._first.set()
                async with self._frame:
                    self._frame.notify_all()

    async def first_frame(self, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            await self._first.wait()

    async def more_frames(self, count: int = 5, within: float = 10.0) -> None:
        """Wait until ``count`` more frames have been decoded."""
        target = self.frames + count
        async with asyncio.timeout(within), self._frame:
            await self._frame.wait_for(lambda: self.frames >= target)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._readers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def closing(*peers: Publisher | Viewer) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for peer in peers:
            await peer.close()


async def offer(kind: str = "video", rgb: tuple[int, int, int] = (0, 0, 200)) -> str:
    """A real publisher's offer (the peer is closed again: only the text is wanted)."""
    pc = _peer()
    try:
        if kind == "video":
            pc.addTransceiver(ColourTrack(rgb), direction="sendonly")
        else:
            pc.createDataChannel("chat")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def without_usable_codecs(sdp: str) -> str:
    """The same offer with every video codec renamed to one nobody supports."""
    return re.sub(r"a=rtpmap:(\d+) (VP8|H264|rtx)/90000", r"a=rtpmap:\1 FOO/90000", sdp)


def json_error(body: Any, code: str | None = None) -> None:
    assert isinstance(body, dict) and set(body) >= {"error", "message"}, body
    assert isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["error"] == code, body


# --- fixtures -----------------------------------------------------------------------

@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path, video=SMALL_VIDEO)


@pytest.fixture
async def token(server: Any) -> str:
    value: str = await server.app[keys.FEED_TOKENS].get_or_create("afrique")
    return value


# --- WHIP -----------------------------------------------------------------------------

async def test_whip_publish_is_201_with_the_answer_and_delete_ends_it(server, base_url, token):
    pc = _peer()
    pc.addTransceiver(ColourTrack((0, 160, 0)), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        status, answer, resp = await post_sdp(base_url, "/whip/afrique",
                                              pc.localDescription.sdp, token)

        assert status == 201, answer
        assert resp.content_type == SDP
        assert answer.startswith("v=0")
        location = resp.headers["Location"]
        assert re.fullmatch(r"/whip/afrique/sessions/[A-Za-z0-9_-]+", location), location
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "Location" in resp.headers["Access-Control-Expose-Headers"]
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

        status, body, resp = await send(base_url, "DELETE", location)
        assert status == 401 and "Bearer" in resp.headers["WWW-Authenticate"]
        json_error(body, "invalid_token")
        status, body, _ = await send(base_url, "DELETE", location, "not-the-token")
        assert status == 401
        status, _, _ = await send(base_url, "DELETE", location, token)
        assert status == 200
        # Ended already: the same answer (CONTRACT.md); 404 only for an id never given.
        status, body, _ = await send(base_url, "DELETE", location, token)
        assert status == 200
        status, body, _ = await send(base_url, "DELETE", "/whip/afrique/sessions/" + "0" * 32,
                                     token)
        assert status == 404
        json_error(body, "session_not_found")
    finally:
        await pc.close()


async def test_every_whip_error_has_its_status_and_the_json_shape(server, base_url, token):
    good = await offer()
    too_big = good + "a=x-padding:" + "x" * (64 * 1024) + "\r\n"
    cases = [
        # (path, body, token, content type) -> (status, code)
        (("/whip/mars", good, token, SDP), (404, "unknown_feed")),
        # An unknown feed wins over the other mistakes: no token can exist for it.
        (("/whip/mars", good, None, "text/plain"), (404, "unknown_feed")),
        (("/whip/afrique", good, token, "text/plain"), (415, "sdp_required")),
        (("/whip/afrique", good, token, "application/json"), (415, "sdp_required")),
        (("/whip/afrique", good, None, SDP), (401, "invalid_token")),
        (("/whip/afrique", good, "a" * 43, SDP), (401, "invalid_token")),
        # Another feed's token does not open this one.
        (("/whip/europe", good, token, SDP), (401, "invalid_token")),
        (("/whip/afrique", GARBAGE, token, SDP), (400, "invalid_sdp")),
        (("/whip/afrique", b"\xff\xfe\x00", token, SDP), (400, "invalid_sdp")),
        (("/whip/afrique", b"", token, SDP), (400, "invalid_sdp")),
        (("/whip/afrique", await offer("data"), token, SDP), (422, "unsupported_media")),
        (("/whip/afrique", without_usable_codecs(good), token, SDP),
         (422, "unsupported_media")),
        (("/whip/afrique", too_big, token, SDP), (413, "request_too_large")),
    ]
    for (path, body, bearer, content_type), (status, code) in cases:
        got, text, resp = await post_sdp(base_url, path, body, bearer, content_type=content_type)
        assert (got, resp.content_type) == (status, "application/json"), (path, code, text)
        json_error(json.loads(text), code)
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    feeds = server.app[keys.TV].feed_stats()
    assert all(f.state.value == "offline" for f in feeds)


async def test_a_second_publisher_on_a_live_feed_replaces_the_first(server, base_url, token):
    first = await Publisher.start(base_url, "afrique", token, (200, 0, 0))
    async with closing(first):
        await state(first, "connected")
        second = await Publisher.start(base_url, "afrique", token, (0, 0, 200))
        async with closing(second):
            assert second.location != first.location
            await state(first, "closed")  # the server ended the first one's connection
            status, body, _ = await send(base_url, "DELETE", first.location, token)
            assert status == 200, body  # ended already: answered as on a live one
            status, _, _ = await send(base_url, "DELETE", second.location, token)
            assert status == 200


async def state(publisher: Publisher, wanted: str, within: float = 10.0) -> None:
    """Wait until the publisher's connection is in the ``wanted`` state."""
    for _ in range(int(within * 20)):
        if publisher.pc.connectionState == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{publisher.pc.connectionState}, not {wanted}, after {within} s")


async def test_patch_is_not_supported_and_says_so(server, base_url, token):
    publisher = await Publisher.start(base_url, "afrique", token)
    async with closing(publisher):
        for path in (publisher.location, "/whep/sessions/whatever"):
            status, body, resp = await send(
                base_url, "PATCH", path, token, data=b"a=ice-ufrag:abcd\r\n",
                headers={"Content-Type": "application/trickle-ice-sdpfrag"})
            assert status == 405
            assert "DELETE" in resp.headers["Allow"]
            json_error(body, "trickle_not_supported")
            assert "RFC 9725" in body["message"]
        # The session was not touched by the refused PATCH.
        status, _, _ = await send(base_url, "DELETE", publisher.location, token)
        assert status == 200


async def test_options_answers_cors_and_accept_post(server, base_url):
    for path in ("/whip/afrique", "/whep"):
        status, _, resp = await send(base_url, "OPTIONS", path, headers={
            "Origin": "https://encoder.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert status == 204, path
        assert resp.headers["Accept-Post"] == SDP
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        assert {"location", "link"} <= {h.strip().lower() for h in
                                        resp.headers["Access-Control-Expose-Headers"].split(",")}
    status, _, _ = await send(base_url, "OPTIONS", "/whip/mars")
    assert status == 404


class StunServer(asyncio.DatagramProtocol):
    """A loopback STUN server answering binding requests (RFC 5389), for ICE gathering."""

    transport: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        self.transport.sendto(bytes(response), addr)


@pytest.fixture
async def stun_url() -> AsyncIterator[str]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        StunServer, local_addr=("127.0.0.1", 0))
    host, port = transport.get_extra_info("sockname")[:2]
    yield f"stun:{host}:{port}"
    transport.close()


async def test_link_headers_carry_the_configured_ice_servers(start_server, tmp_path, stun_url):
    ice = [{"urls": [stun_url]}]
    server = await start_server(settings_for(tmp_path, webrtc={"ice_servers": ice},
                                             video=SMALL_VIDEO))
    base = str(server.make_url("")).rstrip("/")
    token = await server.app[keys.FEED_TOKENS].get_or_create("afrique")
    expected = [f'<{stun_url}>; rel="ice-server"']

    status, _, resp = await send(base, "OPTIONS", "/whip/afrique")
    assert status == 204
    assert resp.headers.getall("Link") == expected
    publisher = await Publisher.start(base, "afrique", token)
    async with closing(publisher):
        status, _, resp = await post_sdp(base, "/whip/afrique",
                                         publisher.pc.localDescription.sdp, token)
        assert status == 201 and resp.headers.getall("Link") == expected
    viewer = await Viewer.start(base)
    async with closing(viewer):
        status, _, resp = await send(base, "OPTIONS", "/whep")
        assert resp.headers.getall("Link") == expected
    # Without ice_servers configured there is no Link at all.
    plain = await start_server(settings_for(tmp_path / "plain", video=SMALL_VIDEO))
    status, _, resp = await send(str(plain.make_url("")).rstrip("/"), "OPTIONS", "/whip/afrique")
    assert status == 204 and "Link" not in resp.headers


# --- WHEP -----------------------------------------------------------------------------

async def test_whep_programme_is_201_and_delete_ends_it(server, base_url):
    viewer = await Viewer.start(base_url)
    async with closing(viewer):
        assert re.fullmatch(r"/whep/sessions/[A-Za-z0-9_-]+", viewer.location)
        await viewer.first_frame()
        assert server.app[keys.TV].viewer_count == 1
        status, _, resp = await send(base_url, "DELETE", viewer.location)
        assert status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        status, body, _ = await send(base_url, "DELETE", viewer.location)
        assert status == 200  # ended already: answered as on a live one (CONTRACT.md)
        status, body, _ = await send(base_url, "DELETE", "/whep/sessions/" + "0" * 32)
        assert status == 404
        json_error(body, "session_not_found")


async def test_a_full_process_turns_the_next_viewer_away_and_keeps_the_others(
        tmp_path, start_server):
    server = await start_server(settings_for(
        tmp_path, video={**SMALL_VIDEO, "max_viewers": 2}))
    base = str(server.make_url("")).rstrip("/")
    first, second = await Viewer.start(base), await Viewer.start(base)
    async with closing(first, second):
        await first.first_frame()
        too_many = await offer_to_watch()
        status, text, resp = await post_sdp(base, "/whep", too_many)
        body = json.loads(text)
        assert status == 503, text
        json_error(body, "viewers_full")
        assert resp.headers["Retry-After"] == "15" and body["retry_after_s"] == 15
        await first.more_frames(10)  # those watching go on as before
        await second.more_frames(10)
        assert server.app[keys.TV].viewer_count == 2

        status, _, _ = await send(base, "DELETE", second.location)
        assert status == 200
        third = await Viewer.start(base)  # a place came free
        async with closing(third):
            await third.first_frame()


async def offer_to_watch() -> str:
    """A viewer's offer whose peer is closed again: only the text is wanted."""
    pc = _peer()
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_whep_errors(server, base_url):
    good = await offer()  # a sendonly offer: a viewer must ask to receive
    for body, content_type, (status, code) in [
        (GARBAGE, "text/plain", (415, "sdp_required")),
        (GARBAGE, SDP, (400, "invalid_sdp")),
        (await offer("data"), SDP, (422, "unsupported_media")),
        (without_usable_codecs(good), SDP, (422, "unsupported_media")),
        (b"v=0\r\n" + b"x" * (65 * 1024), SDP, (413, "request_too_large")),
    ]:
        got, text, resp = await post_sdp(base_url, "/whep", body, content_type=content_type)
        assert (got, resp.content_type) == (status, "application/json"), (code, text)
        assert code in text


async def test_malformed_offers_leave_every_running_session_alone(server, base_url, token):
    publisher = await Publisher.start(base_url, "afrique", token)
    viewer = await Viewer.start(base_url)
    async with closing(viewer, publisher):
        await viewer.first_frame()
        await viewer.more_frames(5)
        for path, bearer in (("/whip/afrique", token), ("/whep", None)):
            for body in (GARBAGE, b"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF\r\n", await offer("data")):
                status, _, _ = await post_sdp(base_url, path, body, bearer)
                assert status in (400, 422)
        await viewer.more_frames(10)
        # The publisher's session survived too: it still ends cleanly.
        status, _, _ = await send(base_url, "DELETE", publisher.location, token)
        assert status == 200


async def test_watching_one_feed_is_for_signed_in_staff(server, base_url, staff):
    marie = await staff("marie", Role.MODERATOR)
    good = await offer()
    status, body, _ = await post_sdp(base_url, "/whep/afrique", good)
    assert status == 401
    # Signed in, but without the CSRF header.
    status, body, _ = await post_sdp(base_url, "/whep/afrique", good,
                                     headers={"Cookie": marie.cookie_header()})
    assert status == 403 and "csrf_failed" in body
    assert marie.csrf is not None
    staff_headers = {"X-CSRF-Token": marie.csrf}
    status, body, _ = await post_sdp(base_url, "/whep/mars", good, headers={
        **staff_headers, "Cookie": marie.cookie_header()})
    assert status == 404 and "unknown_feed" in body
    viewer = await Viewer.start(base_url, "/whep/afrique", headers=staff_headers,
                                cookies=marie.cookie_header())
    async with closing(viewer):
        assert viewer.location.startswith("/whep/sessions/")
        status, _, _ = await send(base_url, "DELETE", viewer.location)
        assert status == 200


async def test_public_watching_is_rate_limited_per_address(server, base_url):
    statuses = [(await post_sdp(base_url, "/whep", GARBAGE))[0] for _ in range(30)]
    assert set(statuses) == {400}
    status, text, resp = await post_sdp(base_url, "/whep", GARBAGE)
    assert status == 429, text
    assert int(resp.headers["Retry-After"]) >= 1
    assert "watch_rate_limited" in text
