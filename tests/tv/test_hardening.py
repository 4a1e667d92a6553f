"""No anonymous visitor holds the video's places, aims its ICE checks, or makes it fail.

Real app on a loopback port, real aiortc peers, short timeouts in the test
settings so that what takes 15 or 30 seconds in the show takes two or three.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio
from aioice import stun
from aiortc import MediaStreamTrack, RTCRtpSender, RTCSessionDescription

from server import keys
from server.auth import Role
from server.settings import ConfigError, Settings, load_settings
from tests.helpers import ROOT, raw_http
from tests.helpers import test_settings as settings_for
from tests.tv.test_edges import Contributor, eventually
from tests.tv.test_protocol import (
    SMALL_VIDEO,
    Viewer,
    _peer,
    closing,
    json_error,
    offer,
    offer_to_watch,
    post_sdp,
    send,
)

CONNECT_TIMEOUT_S = 2.0
CONSENT_TIMEOUT_S = 3.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path, video=SMALL_VIDEO)


def without_candidates(sdp: str) -> str:
    """The offer with no ICE candidate and no end-of-candidates: it can never connect."""
    return "".join(line for line in sdp.splitlines(keepends=True)
                   if not line.startswith(("a=candidate:", "a=end-of-candidates")))


async def admitted(base: str, within: float) -> Viewer:
    """A real viewer that asks to watch until it is let in (a player retrying after 503)."""
    pc = _peer()
    transceiver = pc.addTransceiver("video", direction="recvonly")
    transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                     if c.mimeType in ("video/H264", "video/rtx")])
    viewer = Viewer(pc, "")

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        viewer._readers.append(asyncio.create_task(viewer._read(track)))

    await pc.setLocalDescription(await pc.createOffer())
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while True:
        status, answer, resp = await post_sdp(base, "/whep", pc.localDescription.sdp)
        if status != 503 or loop.time() > give_up:
            break
        await asyncio.sleep(0.5)  # a player's retry (within the 30 offers a minute)
    if status != 201:
        await pc.close()
        raise AssertionError(f"still not let in after {within} s: {status} {answer}")
    viewer.location = resp.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return viewer


def never_connected(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("a peer never connected")]


# --- places: sessions that never connect, peers that vanish, one address's share -----

async def test_offers_that_never_connect_give_their_places_back(tmp_path, start_server, http,
                                                                caplog):
    caplog.set_level(logging.WARNING, logger="tv.service")
    server = await start_server(settings_for(
        tmp_path, video={**SMALL_VIDEO, "max_viewers": 3},
        webrtc={"connect_timeout_s": CONNECT_TIMEOUT_S}))
    base = str(server.make_url("")).rstrip("/")
    hollow = without_candidates(await offer_to_watch())
    held = []
    for _ in range(3):
        status, text, resp = await post_sdp(base, "/whep", hollow)
        assert status == 201, text
        held.append(resp.headers["Location"])
    status, text, _ = await post_sdp(base, "/whep", await offer_to_watch())
    assert status == 503, text  # the attacker's three offers fill the process

    viewer = await admitted(base, within=CONNECT_TIMEOUT_S + 8)
    async with closing(viewer):
        await viewer.first_frame()
    # The player whose session the server closed may still say goodbye.
    for location in held:
        status, _, _ = await send(base, "DELETE", location)
        assert status == 200, location
    status, body, _ = await send(base, "DELETE", "/whep/sessions/" + "0" * 32)
    assert status == 404
    json_error(body, "session_not_found")
    assert len(never_connected(caplog)) == 3  # the operator reads why


async def test_publishers_and_staff_viewers_that_never_connect_are_closed(
        tmp_path, start_server, http, caplog):
    caplog.set_level(logging.WARNING, logger="tv.service")
    server = await start_server(settings_for(
        tmp_path, video=SMALL_VIDEO, webrtc={"connect_timeout_s": CONNECT_TIMEOUT_S}))
    base = str(server.make_url("")).rstrip("/")
    token = await server.app[keys.FEED_TOKENS].get_or_create("afrique")
    await server.app[keys.AUTH].add_user("marie", "correct horse battery staple",
                                         Role.MODERATOR)
    marie = await http(base)
    await marie.sign_in("marie")
    assert marie.csrf is not None

    status, text, resp = await post_sdp(base, "/whip/afrique", without_candidates(await offer()),
                                        token)
    assert status == 201, text
    publishing = resp.headers["Location"]
    status, text, _ = await post_sdp(base, "/whep/afrique",
                                     without_candidates(await offer_to_watch()),
                                     headers={"Cookie": marie.cookie_header(),
                                              "X-CSRF-Token": marie.csrf})
    assert status == 201, text

    async def both_closed() -> bool:
        return len(never_connected(caplog)) >= 2

    await eventually(both_closed, within=CONNECT_TIMEOUT_S + 8)
    seen = {(getattr(r, "feed", None), getattr(r, "channel", None))
            for r in never_connected(caplog)}
    assert seen == {("afrique", None), (None, "afrique")}
    status, _, _ = await send(base, "DELETE", publishing, token)
    assert status == 200  # ended by the server: the contributor's DELETE still succeeds


def blackhole(viewer: Viewer) -> None:
    """The viewer's network vanishes: nothing it is sent is read or answered any more.

    No DTLS alert, no DELETE: what a phone leaving the Wi-Fi looks like to the server.
    """
    for transceiver in viewer.pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for protocol in connection._protocols:
            protocol.datagram_received = lambda data, addr: None


async def test_a_viewer_whose_peer_vanishes_is_dropped_after_the_consent_timeout(
        tmp_path, start_server, caplog):
    caplog.set_level(logging.INFO, logger="tv.service")
    server = await start_server(settings_for(
        tmp_path, video={**SMALL_VIDEO, "max_viewers": 1},
        webrtc={"consent_timeout_s": CONSENT_TIMEOUT_S}))
    base = str(server.make_url("")).rstrip("/")
    gone = await Viewer.start(base)
    async with closing(gone):
        await gone.first_frame()
        await gone.more_frames(5)  # connected for longer than a consent check
        blackhole(gone)
        status, text, _ = await post_sdp(base, "/whep", await offer_to_watch())
        assert status == 503, text  # its place is still held

        loop = asyncio.get_running_loop()
        start = loop.time()
        viewer = await admitted(base, within=CONSENT_TIMEOUT_S + 8)
        async with closing(viewer):
            await viewer.first_frame()
        assert loop.time() - start >= CONSENT_TIMEOUT_S / 2  # consent, not something sooner
        assert any(r.getMessage().startswith("a peer's connection closed without a DELETE")
                   and getattr(r, "session", None) == gone.location.rsplit("/", 1)[1]
                   for r in caplog.records)
        status, _, _ = await send(base, "DELETE", gone.location)
        assert status == 200


@pytest.fixture
async def capped(tmp_path, start_server) -> Any:
    return await start_server(settings_for(
        tmp_path, http={"trust_forwarded": True},
        video={**SMALL_VIDEO, "viewers_per_address": 2}))


async def test_one_address_holds_at_most_its_share_of_viewing_sessions(capped):
    base = str(capped.make_url("")).rstrip("/")
    hollow = without_candidates(await offer_to_watch())

    async def watch(address: str) -> tuple[int, str, Any]:
        return await post_sdp(base, "/whep", hollow, headers={"X-Forwarded-For": address})

    first = [await watch("203.0.113.7") for _ in range(2)]
    assert [status for status, _, _ in first] == [201, 201]
    status, text, resp = await watch("203.0.113.7")
    assert status == 429, text
    json_error(json.loads(text), "too_many_sessions")
    assert resp.headers["Retry-After"] == "15" and json.loads(text)["retry_after_s"] == 15
    assert (await watch("198.51.100.9"))[0] == 201  # someone else is let in

    # An IPv6 host may use any address of its /64: they count as one.
    assert (await watch("2001:db8:1:2::1"))[0] == 201
    assert (await watch("2001:db8:1:2::ffff"))[0] == 201
    assert (await watch("2001:db8:1:2:abcd::5"))[0] == 429
    assert (await watch("2001:db8:1:3::1"))[0] == 201

    # A session that ends gives its place back to that address.
    status, _, _ = await send(base, "DELETE", first[0][2].headers["Location"])
    assert status == 200
    assert (await watch("203.0.113.7"))[0] == 201


# --- where the server sends ICE checks ------------------------------------------------

LISTENERS = 200


@contextlib.contextmanager
def udp_listeners(count: int) -> Iterator[list[socket.socket]]:
    """``count`` UDP sockets on 127.0.0.2, 127.0.0.3, ... (all loopback on Linux)."""
    sockets = []
    try:
        for i in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setblocking(False)
            sock.bind((f"127.0.{(i + 2) // 256}.{(i + 2) % 256}", 0))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def received_stun(sock: socket.socket) -> bool:
    """Whether a STUN binding request is waiting on ``sock`` (read without blocking)."""
    found = False
    with contextlib.suppress(BlockingIOError):
        while True:
            data = sock.recv(2048)
            with contextlib.suppress(ValueError):
                found |= stun.parse_message(data).message_method == stun.Method.BINDING
    return found


def with_candidates(sdp: str, candidates: list[str]) -> str:
    """The offer with ``candidates`` in its first media section, and only them."""
    lines = without_candidates(sdp).splitlines(keepends=True)
    first_media = next(i for i, line in enumerate(lines) if line.startswith("m="))
    at = next((i for i in range(first_media + 1, len(lines)) if lines[i].startswith("m=")),
              len(lines))
    return "".join(lines[:at] + [f"a=candidate:{c}\r\n" for c in candidates] + lines[at:])


async def test_an_offer_aims_the_servers_checks_at_a_few_addresses_only(server, base_url):
    limit = 8  # [webrtc] max_candidates, by default
    with udp_listeners(LISTENERS) as listeners:
        # Never sent to, and not counted among the few kept.
        junk = ["1 1 udp 3000 0.0.0.0 40000 typ host", "2 1 udp 3000 224.0.0.1 40000 typ host",
                "3 1 udp 3000 255.255.255.255 40000 typ host",
                "4 1 udp 3000 127.0.0.1 0 typ host",
                "5 1 tcp 3000 127.0.0.1 40000 typ host tcptype passive",
                "6 2 udp 3000 127.0.0.1 40000 typ host"]
        # The first listed get the lowest priority: were the others kept, the
        # server would check them first, so they would have their STUN by the
        # time the first ones have theirs.
        aimed = [f"{100 + i} 1 udp {1000 + i} {s.getsockname()[0]} {s.getsockname()[1]} typ host"
                 for i, s in enumerate(listeners)]
        sdp = with_candidates(await offer_to_watch(), junk + aimed)
        status, text, resp = await post_sdp(base_url, "/whep", sdp)
        assert status == 201, text
        try:
            reached: set[int] = set()
            async with asyncio.timeout(10):
                while not set(range(limit)) <= reached:
                    reached |= {i for i, s in enumerate(listeners) if received_stun(s)}
                    await asyncio.sleep(0.05)
            reached |= {i for i, s in enumerate(listeners) if received_stun(s)}
            assert reached == set(range(limit)), sorted(reached)
        finally:
            await send(base_url, "DELETE", resp.headers["Location"])


async def test_offers_with_unreadable_or_named_candidates(server, base_url):
    plain = await offer_to_watch()
    status, text, _ = await post_sdp(base_url, "/whep",
                                     with_candidates(plain, ["8 1 udp nonsense"]))
    assert status == 400, text
    json_error(json.loads(text), "invalid_sdp")
    # A host name is left out (resolving it would block the server), the rest is used.
    status, text, resp = await post_sdp(base_url, "/whep", with_candidates(
        plain, ["9 1 udp 3000 example.invalid 40000 typ host",
                "10 1 udp 3000 127.0.0.1 40000 typ host"]))
    assert status == 201, text
    status, _, _ = await send(base_url, "DELETE", resp.headers["Location"])
    assert status == 200


# --- malformed tokens and ids -----------------------------------------------------------

async def raw_request(base: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte: (status, body)."""
    host, port = re.fullmatch(r"http://([^:/]+):(\d+)", base).groups()  # type: ignore[union-attr]
    status, _, answer = await raw_http(int(port), head + b"Host: " + host.encode()
                                       + b"\r\nConnection: close\r\nContent-Length: "
                                       + str(len(body)).encode() + b"\r\n\r\n" + body)
    return status, answer


async def test_a_token_that_is_not_utf8_is_refused_as_invalid(server, base_url):
    sdp = (await offer()).encode()
    for token in (b"\xff\xfe\xfd", b"\xed\xa0\x80", b"abc\x80def"):
        for head, body in (
                (b"POST /whip/afrique HTTP/1.1\r\nContent-Type: application/sdp\r\n", sdp),
                (b"DELETE /whip/afrique/sessions/abc HTTP/1.1\r\n", b"")):
            status, answer = await raw_request(
                base_url, head + b"Authorization: Bearer " + token + b"\r\n", body)
            assert status == 401, (head, token, answer)
            json_error(json.loads(answer), "invalid_token")


async def test_session_ids_and_page_tokens_from_outside_never_fail(server, base_url, http):
    token = await server.app[keys.FEED_TOKENS].get_or_create("afrique")
    for path in ("/whep/sessions/%ED%A0%80", "/whep/sessions/%FF%FE", "/whep/sessions/"
                 + "x" * 4000):
        status, body, _ = await send(base_url, "DELETE", path)
        assert status == 404, path
        json_error(body, "session_not_found")
    for path in ("/whip/afrique/sessions/%ED%A0%80", "/whip/afrique/sessions/%FF"):
        status, body, _ = await send(base_url, "DELETE", path, token)
        assert status == 404, path
        json_error(body, "session_not_found")
    browser = await http(base_url)
    for query in ("%ED%A0%80", "%FF", "%00", "x" * 5000):
        status, _, resp = await browser.request("GET", f"/contribute/afrique?token={query}")
        assert (status, resp.content_type) == (401, "text/html"), query


async def test_a_contributor_socket_with_a_lone_surrogate_is_refused_cleanly(
        server, base_url, caplog):
    caplog.set_level(logging.WARNING)
    token = await server.app[keys.FEED_TOKENS].get_or_create("afrique")
    for auth in ({"token": "\ud800"}, {"feed": "afrique", "token": "\ud800"},
                 {"feed": "afrique", "token": token + "\udcff"},
                 {"feed": "\ud800", "token": token}, {"token": "x" * 2000}):
        refusals: asyncio.Queue[Any] = asyncio.Queue()
        client = socketio.AsyncClient(reconnection=False)
        client.on("connect_error", refusals.put_nowait, namespace="/contribute")
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(base_url, namespaces=["/contribute"],
                                 transports=["websocket"], auth=auth, wait_timeout=5)
        refusal = await asyncio.wait_for(refusals.get(), 5)
        # Socket.IO's refusal: a sentence, and the error object as its data.
        assert refusal["data"]["error"] == "not_authenticated", (repr(auth)[:80], refusal)
        assert refusal["message"] == refusal["data"]["message"]
        await client.disconnect()
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    # The right token still lets the contributor in.
    contributor = await Contributor.join(base_url, {"feed": "afrique", "token": token})
    try:
        assert (await contributor.next("tally"))["feed"] == "afrique"
    finally:
        await contributor.close()


# --- the settings ------------------------------------------------------------------------

@pytest.mark.parametrize(("section", "values", "key"), [
    ("webrtc", {"connect_timeout_s": 0}, "webrtc.connect_timeout_s"),
    ("webrtc", {"consent_timeout_s": 1}, "webrtc.consent_timeout_s"),
    ("webrtc", {"max_candidates": 0}, "webrtc.max_candidates"),
    ("video", {"viewers_per_address": -1}, "video.viewers_per_address"),
    ("video", {"whep_rate": {"count": 0, "window_s": 60}}, "video.whep_rate"),
])
def test_the_new_limits_are_checked_and_the_error_names_the_key(tmp_path, section, values,
                                                                  key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        settings_for(tmp_path, **{section: values})


def test_the_shows_configuration_sets_the_limits(tmp_path):
    settings = load_settings(ROOT / "config.toml")
    assert (settings.webrtc.connect_timeout_s, settings.webrtc.consent_timeout_s,
            settings.webrtc.max_candidates) == (15, 30, 8)
    assert settings.video.viewers_per_address == 20
    assert (settings.video.whep_rate.count, settings.video.whep_rate.window_s) == (30, 60)
