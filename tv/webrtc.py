"""What WHIP and WHEP share: ICE settings, offer checks, answering as DTLS server.

aiortc does most of the work; this module holds the few places where its
defaults do not suit a broadcast server (see each function's comment).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import aioice.stun
from aioice.mdns import is_mdns_hostname
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiosdp
from aiortc.codecs import CODECS
from aiortc.exceptions import OperationError
from aiortc.rtcpeerconnection import filter_preferred_codecs, find_common_codecs
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
)

from tv.errors import InvalidSdp, UnsupportedMedia

# What a contributor may send: H.264 or VP8, and Opus.
INGEST_VIDEO = ("video/H264", "video/VP8")
# What a viewer gets: the programme's constrained-baseline H.264 (42e01f); a
# plain-baseline decoder (42001f) decodes it as well.
VIEWER_VIDEO = ("video/H264",)
H264_PROFILES = ("42e01f", "42001f")
# A contributor's H.264 is decoded by FFmpeg, which reads any of these: a
# broadcast tool whose encoder is set to Main or High is taken too. aiortc
# matches offers on the profile; the level may differ.
INGEST_H264_PROFILES = (*H264_PROFILES, "4d001f", "640c1f", "64001f")
AUDIO = ("audio/opus",)


# --- ICE -------------------------------------------------------------------------

def restrict_host_addresses(addresses: Sequence[str]) -> Callable[[], None]:
    """Offer exactly ``addresses`` as ICE host candidates; return the undo.

    aioice asks ``get_host_addresses`` for the machine's interfaces and always
    leaves loopback out, so ``host_addresses = ["127.0.0.1"]`` could not be
    honoured through aiortc's API. The function is replaced in aioice's module:
    that is process-wide, which matches the setting (one server per process).
    """
    original = aioice.ice.get_host_addresses
    v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
    v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]

    def configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return (v4 if use_ipv4 else []) + (v6 if use_ipv6 else [])

    aioice.ice.get_host_addresses = configured

    def undo() -> None:
        if aioice.ice.get_host_addresses is configured:
            aioice.ice.get_host_addresses = original

    return undo


def set_consent_timeout(seconds: float) -> Callable[[], None]:
    """Drop a connected peer that has answered no ICE consent check for about
    ``seconds`` (RFC 7675 says 30); return the undo.

    aioice already checks consent freshness: every ``CONSENT_INTERVAL`` s
    (5, give or take 20 %) it sends a check on the chosen pair, waits
    ``stun.RETRY_RTO`` (0.5 s) for the answer, and closes the connection
    after ``CONSENT_FAILURES`` (6) unanswered checks in a row, which aiortc
    reports as a failed connection: about 33 s. Only the module constant
    sets the pace, so it is replaced, process-wide like the setting.
    """
    for name in ("CONSENT_INTERVAL", "CONSENT_FAILURES"):
        if not isinstance(getattr(aioice.ice, name, None), int | float):
            raise RuntimeError(f"aioice.ice.{name} is gone: check consent freshness in aioice")
    original = aioice.ice.CONSENT_INTERVAL
    interval = max(0.1, seconds / aioice.ice.CONSENT_FAILURES - aioice.stun.RETRY_RTO)
    aioice.ice.CONSENT_INTERVAL = interval  # type: ignore[assignment]

    def undo() -> None:
        if interval == aioice.ice.CONSENT_INTERVAL:
            aioice.ice.CONSENT_INTERVAL = original

    return undo


def _urls(server: dict[str, Any]) -> list[str]:
    urls = server.get("urls", server.get("url", []))
    return [urls] if isinstance(urls, str) else [str(u) for u in urls]


def rtc_configuration(ice_servers: Sequence[dict[str, Any]]) -> RTCConfiguration:
    """The peer connections' configuration; no servers means none at all.

    An empty list is passed explicitly: left unset, aiortc falls back to a
    public STUN server, which a loopback-only or offline server must not try.
    """
    servers = [RTCIceServer(urls=_urls(s), username=s.get("username"),
                            credential=s.get("credential")) for s in ice_servers]
    return RTCConfiguration(iceServers=servers)


def _quoted(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def link_headers(ice_servers: Sequence[dict[str, Any]]) -> list[str]:
    """One ``Link`` header value per STUN/TURN URL (RFC 9725 section 4.6)."""
    headers = []
    for server in ice_servers:
        params = ""
        if server.get("username") is not None:
            params += f"; username={_quoted(server['username'])}"
        if server.get("credential") is not None:
            params += (f"; credential={_quoted(server['credential'])}"
                       '; credential-type="password"')
        headers += [f'<{url}>; rel="ice-server"{params}' for url in _urls(server)]
    return headers


def register_h264_profiles() -> None:
    """Make aiortc know H.264 Main and High, so that an ingest offer of them can match.

    aiortc lists the codecs it negotiates in a module-level table with only the
    two baseline profiles, and has no API to add one: the table is extended,
    process-wide and once, with the same feedback (NACK, PLI, REMB) and RTX.
    """
    table = CODECS["video"]
    known = {c.parameters.get("profile-level-id") for c in table if c.mimeType == "video/H264"}
    payload_type = max(c.payloadType or 0 for c in table) + 1
    template = next(c for c in table if c.mimeType == "video/H264")
    for profile in INGEST_H264_PROFILES:
        if profile in known:
            continue
        table.append(RTCRtpCodecParameters(
            mimeType="video/H264", clockRate=90000, payloadType=payload_type,
            rtcpFeedback=list(template.rtcpFeedback),
            parameters={**template.parameters, "profile-level-id": profile}))
        table.append(RTCRtpCodecParameters(
            mimeType="video/rtx", clockRate=90000, payloadType=payload_type + 1,
            parameters={"apt": payload_type}))
        payload_type += 2


# --- offers ----------------------------------------------------------------------

@dataclass(frozen=True)
class Screened:
    """An offer with only the ICE candidates the server will send checks to."""

    sdp: str
    kept: int
    dropped: Counter[str] = field(default_factory=Counter)
    """How many candidates were left out, by reason."""


def _unusable(value: str) -> str | None:
    """Why the server must not send to this ``a=candidate:`` value; None if it may."""
    # foundation component transport priority address port "typ" type ...
    # (RFC 8839); aiortc's own parser asserts, so it is read here first.
    bits = value.split()
    try:
        if len(bits) < 8 or bits[6] != "typ":
            raise ValueError(value)
        component, _priority, port = int(bits[1]), int(bits[3]), int(bits[5])
    except ValueError:
        return "malformed"
    # aiortc gathers UDP candidates for one component (RTP and RTCP muxed):
    # anything else can never be paired, so it would only use up a place.
    if bits[2].lower() != "udp" or component != 1:
        return "unpairable"
    if not 1 <= port <= 65535:
        return "bad_port"
    if is_mdns_hostname(bits[4]):
        return None  # a browser hiding its address: resolved on the local network
    try:
        address = ipaddress.ip_address(bits[4])
    except ValueError:
        return "not_an_address"  # a host name: resolving it would block the server
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast \
            or address == ipaddress.IPv4Address("255.255.255.255"):
        return "unroutable"
    return None


def screen_candidates(offer_sdp: str, per_section: int) -> Screened:
    """Keep the first ``per_section`` usable ICE candidates of each media section;
    InvalidSdp if one cannot be read at all.

    The server sends connectivity checks, each retransmitted, to every
    candidate an offer lists: an anonymous offer must not point them at
    hundreds of other hosts. A few per section are plenty, and candidates
    are only hints: the server's own address is reachable, so the peer's
    checks reach it and ICE learns the peer's address from them (peer
    reflexive candidates) even when its listed ones were left out.
    """
    lines, dropped = [], Counter[str]()
    kept = in_section = 0
    for line in offer_sdp.splitlines(keepends=True):
        if line.startswith("m="):
            in_section = 0
        elif line.startswith("a=candidate:"):
            reason = _unusable(line[len("a=candidate:"):].strip())
            if reason == "malformed":  # refused, as aiortc's own parser would refuse it
                raise InvalidSdp(f"an ICE candidate cannot be read: {line.strip()[:200]!r}")
            if reason is None and in_section >= per_section:
                reason = "over_limit"
            if reason is not None:
                dropped[reason] += 1
                continue
            kept += 1
            in_section += 1
        lines.append(line)
    return Screened("".join(lines), kept, dropped)


@dataclass(frozen=True)
class Wanted:
    """What one side accepts in an offer."""

    direction: str
    """The offerer's direction for every media section: sendonly (WHIP), recvonly (WHEP).

    sendrecv is taken as well and answered one way (RFC 3264): RFC 9725 says a
    client SHOULD offer one way, and GStreamer's webrtcbin offers sendrecv
    unless told otherwise.
    """
    video: tuple[str, ...]
    audio: tuple[str, ...] = AUDIO
    h264_profiles: tuple[str, ...] = H264_PROFILES

    def codecs(self, kind: str) -> list[RTCRtpCodecCapability]:
        """The codec preferences for a ``kind`` section, best first (with RTX)."""
        return preferences(kind, self.video if kind == "video" else self.audio,
                           self.h264_profiles)


WHIP = Wanted("sendonly", INGEST_VIDEO, h264_profiles=INGEST_H264_PROFILES)
WHEP = Wanted("recvonly", VIEWER_VIDEO)


def preferences(kind: str, mime_types: Sequence[str],
                h264_profiles: Sequence[str] = H264_PROFILES) -> list[RTCRtpCodecCapability]:
    """aiortc capabilities of these types (H.264 of these profiles, packetization
    mode 1), with RTX."""
    chosen = []
    for codec in RTCRtpSender.getCapabilities(kind).codecs:
        if codec.mimeType == "video/H264" and (
                codec.parameters.get("profile-level-id") not in h264_profiles
                or codec.parameters.get("packetization-mode") != "1"):
            continue
        if codec.mimeType in mime_types or codec.mimeType == "video/rtx":
            chosen.append(codec)
    # Keep the order asked for: the first one is what a viewer is sent.
    order = [*mime_types, "video/rtx"]

    def rank(codec: RTCRtpCodecCapability) -> tuple[int, int]:
        profile = str(codec.parameters.get("profile-level-id", ""))
        return order.index(codec.mimeType), list(h264_profiles).index(profile) if profile else 0

    return sorted(chosen, key=rank)


def parse_offer(offer_sdp: str, wanted: Wanted) -> list[str]:
    """Check an offer; return the kinds of its media sections, in order.

    InvalidSdp when it cannot be read; UnsupportedMedia when it asks for
    something else than one video section (and at most one audio section)
    in ``wanted.direction`` with a codec of ``wanted``.
    """
    if not offer_sdp.lstrip().startswith("v="):
        raise InvalidSdp("the body is not an SDP offer (it must start with v=)")
    try:
        description = aiosdp.SessionDescription.parse(offer_sdp)
    except Exception as e:  # aiortc's parser raises whatever it trips on
        raise InvalidSdp(f"the SDP offer cannot be parsed: {e!r}") from e
    kinds = [m.kind for m in description.media]
    if kinds.count("video") != 1 or kinds.count("audio") > 1 or len(kinds) > 2:
        raise UnsupportedMedia("the offer must have one video section and at most one audio "
                               f"section (it has: {', '.join(kinds) or 'none'})")
    for media in description.media:
        if not media.ice or not media.ice.usernameFragment or not media.ice.password:
            raise InvalidSdp(f"the {media.kind} section has no ICE credentials")
        if not media.dtls or not media.dtls.fingerprints:
            raise InvalidSdp(f"the {media.kind} section has no DTLS fingerprint")
        if media.direction not in (wanted.direction, "sendrecv"):
            raise UnsupportedMedia(f"the {media.kind} section must be {wanted.direction}")
        mimes = wanted.video if media.kind == "video" else wanted.audio
        common = filter_preferred_codecs(find_common_codecs(CODECS[media.kind], media.rtp.codecs),
                                         wanted.codecs(media.kind))
        if not common:
            raise UnsupportedMedia(f"the {media.kind} section offers none of "
                                   f"{', '.join(m.split('/')[1] for m in mimes)}")
    return kinds


async def answer(pc: RTCPeerConnection, offer_sdp: str) -> str:
    """Apply the offer, answer as DTLS server, gather every candidate first (no trickle).

    The transceivers, with their codec preferences, must exist already: aiortc
    picks the codecs in setRemoteDescription, from the transceiver it finds.
    """
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    except OperationError as e:  # no codec in common, after all
        raise UnsupportedMedia(f"the offer's media cannot be used: {e}") from e
    except ValueError as e:
        raise InvalidSdp(f"the SDP offer was refused: {e}") from e
    for transceiver in pc.getTransceivers():
        # GStreamer's webrtcbin signs DTLS with an RSA certificate, and aiortc
        # as DTLS client offers only ECDSA cipher suites: be the server
        # (a=setup:passive), unless the offerer insists on being it.
        transport = transceiver.receiver.transport
        if transport._role == "auto":
            transport._set_role("server")
    # setLocalDescription waits for ICE gathering to complete, so the answer
    # carries every candidate.
    await pc.setLocalDescription(await pc.createAnswer())
    return str(pc.localDescription.sdp)


# --- keyframe requests -----------------------------------------------------------

def on_feedback(sender: RTCRtpSender, picture_loss: Callable[[], None] | None,
                lost: Callable[[list[int]], None]) -> None:
    """Pass a viewer's keyframe requests and loss reports on, for a sender aiortc does not feed.

    aiortc honours PLI and FIR only on its own encoder, and answers a NACK
    only from its own send history: a sender whose packets are encoded and
    packetized once for every viewer (tv.fanout) needs the request passed to
    the one shared encoder, and the loss to the channel's history.
    """
    original: Callable[[Any], Awaitable[None]] = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            if picture_loss is not None:
                picture_loss()
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            lost(packet.lost)
            return  # aiortc's own history is empty: it has nothing to send again
        await original(packet)

    # An instance attribute: the DTLS transport looks the method up per packet.
    setattr(sender, "_handle_rtcp_packet", handle)  # noqa: B010
