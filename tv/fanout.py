"""Packetize once, send to every viewer: per viewer, only a header and SRTP.

aiortc's RTCRtpSender packetizes each frame again for every viewer and sends
each packet through several layers of coroutines (sender, DTLS, ICE, asyncio);
measured on the programme, that came to ~30 µs of CPU per packet per viewer.
Here a channel packetizes each encoded frame once into a Burst; for each
viewer an RtpStream writes the RTP header and the header extensions that
viewer negotiated, protects the packet with the viewer's own SRTP session and
sends it on the viewer's ICE socket directly.

Most of what is left is the kernel's cost per datagram, so a frame's packets
of one size (tv.h264 cuts them so) leave in one segmented send (Linux UDP
GSO, UDP_SEGMENT): the kernel, or the network card, cuts the datagrams. Where
the kernel refuses it, each packet is sent on its own from then on.

aiortc keeps everything else: negotiation, ICE, DTLS, receiving RTCP (receiver
reports, PLI, NACK) and sending the sender reports, for which each stream keeps
its sender's counters up to date. Lost packets that a viewer reports (NACK) are
sent again from the channel's History, over RTX when the viewer negotiated it.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import is_rtx
from aiortc.rtp import pack_header_extensions

log = logging.getLogger("tv.fanout")

HEADER = struct.Struct("!BBHII")
NATIVE = sys.byteorder
RTX_SEQ = struct.Struct("!H")
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
UDP_SEGMENT = 103
"""linux/udp.h: the socket option (at SOL_UDP) for UDP generic segmentation offload."""
GSO_SEGMENTS_MAX = 64
GSO_BYTES_MAX = 60_000
"""Linux takes at most 64 segments and a 64 KiB datagram in one segmented send."""
HISTORY_PACKETS = 1024
"""About three seconds of the programme's video: older losses are not worth repairing."""


@dataclass(slots=True)
class Burst:
    """One encoded frame, cut into RTP payloads once for every viewer."""

    kind: str
    payloads: list[bytes]
    timestamp: int
    """In the RTP clock (90 kHz video, 48 kHz audio), from the channel's start."""
    keyframe: bool
    seq: int
    """The channel's sequence number of the first payload (counting on, unbounded)."""
    octets: int = 0
    """The payloads' total size."""
    extensions: dict[tuple[Any, int], bytes] = field(default_factory=dict)
    """Header extension blocks made for this burst, shared by viewers who negotiated alike."""


class History:
    """The last packets of one channel's stream, to repair what a viewer lost."""

    def __init__(self, size: int = HISTORY_PACKETS) -> None:
        self._size = size
        self._slots: list[tuple[int, bytes, bool, int] | None] = [None] * size
        self.next_seq = 0

    def add(self, kind: str, payloads: list[bytes], timestamp: int, keyframe: bool) -> Burst:
        burst = Burst(kind, payloads, timestamp, keyframe, self.next_seq,
                      sum(map(len, payloads)))
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            seq = self.next_seq + i
            self._slots[seq % self._size] = (seq, payload, i == last, timestamp)
        self.next_seq += len(payloads)
        return burst

    def find(self, seq16: int) -> tuple[int, bytes, bool, int] | None:
        """The newest packet whose sequence number is ``seq16`` modulo 2**16."""
        newest = self.next_seq - 1
        seq = newest - ((newest - seq16) & 0xFFFF)
        slot = self._slots[seq % self._size] if seq >= 0 else None
        return slot if slot is not None and slot[0] == seq else None


@dataclass
class Delivery:
    """Packets sent to viewers: in the stream, sent again after a NACK, lost at our socket."""

    sent: int = 0
    repaired: int = 0
    dropped: int = 0

    def add(self, other: Delivery) -> None:
        self.sent += other.sent
        self.repaired += other.repaired
        self.dropped += other.dropped


@dataclass(frozen=True)
class Negotiated:
    """What one viewer's media section settled on, read from aiortc after the answer."""

    payload_type: int
    rtx_payload_type: int | None
    mid: str | None
    mid_id: int | None
    abs_send_time_id: int | None

    @classmethod
    def of(cls, transceiver: RTCRtpTransceiver) -> Negotiated:
        codecs = transceiver._codecs
        primary = codecs[0]
        assert primary.payloadType is not None  # aiortc numbers every negotiated codec
        rtx = next((c.payloadType for c in codecs
                    if is_rtx(c) and c.parameters.get("apt") == primary.payloadType), None)
        ids = {ext.uri: ext.id for ext in transceiver._headerExtensions}
        return cls(primary.payloadType, rtx, transceiver.mid, ids.get(MID_URI),
                   ids.get(ABS_SEND_TIME_URI))


class RtpStream:
    """One viewer's copy of a channel's stream (video or audio), sent without aiortc's sender.

    Its sequence numbers are the channel's plus a random offset fixed at its
    first packet, so a NACKed number maps back to the channel's History. A
    video stream starts at a keyframe. A packet the socket cannot take is lost,
    as on a congested network: one slow viewer never delays the others.
    """

    def __init__(self, kind: str, sender: RTCRtpSender, negotiated: Negotiated,
                 history: History) -> None:
        self.kind = kind
        self.sender = sender
        self.history = history
        self.payload_type = negotiated.payload_type
        self.rtx_payload_type = negotiated.rtx_payload_type
        self._ssrc = sender._ssrc
        self._rtx_ssrc = sender._rtx_ssrc
        self._rtx_seq = random.randint(0, 0xFFFF)
        self._mid = None if negotiated.mid_id is None or negotiated.mid is None \
            else (negotiated.mid_id, negotiated.mid.encode())
        self._abs_id = negotiated.abs_send_time_id
        self._ext_sig = (self._mid, self._abs_id)
        self.started = False
        self._offset = 0
        self._origin = random.getrandbits(32)
        self._dtls = sender.transport
        self._nominated = self._dtls.transport._connection._nominated
        """aioice's chosen pair per component: the same dict for the connection's life."""
        self._pair: Any = None
        self._sock: socket.socket | None = None
        self._address: Any = None
        self.gso = True
        """Segmented sends, until the kernel refuses one."""
        self.packets = 0
        self.octets = 0
        self.retransmitted = 0
        self.dropped = 0

    # --- sending -------------------------------------------------------------------

    def _way(self) -> tuple[Any, Any] | None:
        """(protect, ICE pair) once DTLS-SRTP is up and ICE has chosen a pair; else None.

        Called per burst, so it reads aiortc's attributes directly (its
        ``state`` property formats a string). Keys exist from the end of the
        DTLS handshake; the nominated pair goes when the connection closes.
        """
        srtp = self._dtls._tx_srtp
        if srtp is None:
            return None
        pair = self._nominated.get(1)
        if pair is None:
            return None
        if pair is not self._pair:
            transport = pair.protocol.transport
            if transport is None:
                return None
            self._pair, self._address = pair, pair.remote_addr
            # The socket under aioice's asyncio transport: sendmsg (for GSO) is
            # not offered by the transport. Without it, the transport's sendto.
            raw = getattr(transport, "_sock", None)
            self._sock = raw if isinstance(raw, socket.socket) else None
        return srtp.protect, pair

    def _extensions(self, abs_send_time: int, made: dict[tuple[Any, int], bytes]) -> bytes:
        """The header extension block (empty if none was negotiated), with its profile."""
        key = (self._ext_sig, abs_send_time)
        ext = made.get(key)
        if ext is None:
            pairs = []
            if self._mid is not None:
                pairs.append(self._mid)
            if self._abs_id is not None:
                pairs.append((self._abs_id, abs_send_time.to_bytes(3, "big")))
            profile, value = pack_header_extensions(pairs)
            ext = (struct.pack("!HH", profile, len(value) >> 2) + value) if value else b""
            made[key] = ext
        return ext

    def send(self, burst: Burst, abs_send_time: int, ntp: int) -> None:
        """Send one burst; a stream not yet connected (or a video stream between
        keyframes, at its start) lets it pass."""
        way = self._way()
        if way is None:
            return
        first = not self.started
        if first:
            if self.kind == "video" and not burst.keyframe:
                return
            self.started = True
            self._offset = random.randint(0, 0xFFFF) - burst.seq
        protect, pair = way
        ext = self._extensions(abs_send_time, burst.extensions)
        b0 = 0x90 if ext else 0x80
        seq = burst.seq + self._offset
        ts = (self._origin + burst.timestamp) & 0xFFFFFFFF
        pt, ssrc = self.payload_type, self._ssrc
        payloads = burst.payloads
        # The marker ends a picture (video); for sound it starts a talkspurt,
        # here the stream's first packet (-1: no packet of this burst).
        marked = len(payloads) - 1 if self.kind == "video" else (0 if first else -1)
        packets = [protect(HEADER.pack(b0, pt | 0x80 if i == marked else pt,
                                       (seq + i) & 0xFFFF, ts, ssrc) + ext + payload)
                   for i, payload in enumerate(payloads)]
        self._send(packets, pair)
        self.packets += len(payloads)
        self.octets += burst.octets
        report_sent(self.sender, ntp, ts, self.packets, self.octets)

    def _send(self, packets: list[bytes], pair: Any) -> None:
        """Send datagrams; runs of one size go in one segmented send (GSO)."""
        address, sock = self._address, self._sock
        if sock is None:
            for packet in packets:
                pair.protocol.transport.sendto(packet, address)
            return
        n, i = len(packets), 0
        while i < n:
            size = len(packets[i])
            j = i + 1
            if self.gso:
                total = size
                while j < n and j - i < GSO_SEGMENTS_MAX:
                    length = len(packets[j])
                    if length > size or total + length > GSO_BYTES_MAX:
                        break
                    total += length
                    j += 1
                    if length < size:
                        break  # only the last segment may be shorter
            try:
                if j - i == 1:
                    sock.sendto(packets[i], address)
                else:
                    sock.sendmsg(packets[i:j], [(socket.SOL_UDP, UDP_SEGMENT,
                                                 size.to_bytes(2, NATIVE))], 0, address)
            except BlockingIOError:
                self.dropped += j - i  # the socket's buffer is full: lost, as on a network
            except OSError as e:
                if j - i == 1:
                    self.dropped += 1  # the viewer is unreachable; ICE will notice
                else:
                    log.warning("the kernel refused a segmented send (%s): this viewer's "
                                "packets now go one by one", e)
                    self.gso = False
                    continue  # the same packets again, one by one
            i = j

    def retransmit(self, lost: Sequence[int], abs_send_time: int) -> int:
        """Send again the packets a viewer reported lost; return how many were still known."""
        way = self._way() if self.started else None
        if way is None:
            return 0
        protect, pair = way
        ext = self._extensions(abs_send_time, {})
        b0 = 0x90 if ext else 0x80
        packets = []
        for seq16 in lost:
            found = self.history.find((seq16 - self._offset) & 0xFFFF)
            if found is None:
                continue
            _, payload, marker, timestamp = found
            ts = (self._origin + timestamp) & 0xFFFFFFFF
            marked = 0x80 if marker and self.kind == "video" else 0
            if self.rtx_payload_type is not None:
                header = HEADER.pack(b0, self.rtx_payload_type | marked, self._rtx_seq, ts,
                                     self._rtx_ssrc)
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
                packets.append(protect(header + ext + RTX_SEQ.pack(seq16) + payload))
            else:
                header = HEADER.pack(b0, self.payload_type | marked, seq16, ts, self._ssrc)
                packets.append(protect(header + ext + payload))
        self._send(packets, pair)
        self.retransmitted += len(packets)
        return len(packets)


def report_sent(sender: RTCRtpSender, ntp: int, rtp_timestamp: int, packets: int,
                octets: int) -> None:
    """Keep aiortc's sender counters, from which it writes its RTCP sender reports.

    The receiver maps RTP time to wall-clock time with them (lip sync) and
    counts losses against them; aiortc keeps them in private attributes that
    only its own send loop updates. aiortc is pinned (requirements.lock) and
    tests/tv check that viewers receive reports matching what was sent.
    """
    sender._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
    sender._RTCRtpSender__rtp_timestamp = rtp_timestamp  # type: ignore[attr-defined]
    sender._RTCRtpSender__packet_count = packets  # type: ignore[attr-defined]
    sender._RTCRtpSender__octet_count = octets  # type: ignore[attr-defined]
