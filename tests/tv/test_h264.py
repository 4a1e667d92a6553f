"""The programme's H.264 payloads: what a viewer's depacketizer rebuilds is what x264 made."""

from __future__ import annotations

from fractions import Fraction

import av
import pytest
from aiortc.codecs.h264 import H264Decoder, h264_depayload
from aiortc.jitterbuffer import JitterFrame

from server.settings import VideoSettings
from tv.h264 import FU_A, PAYLOAD_MAX, STAP_A, packetize, split_annexb
from tv.programme import VideoEncoder


def nal(kind: int, size: int, fill: int = 0x55) -> bytes:
    return bytes((0x60 | kind,)) + bytes((fill,)) * (size - 1)


def annexb(*nals: bytes) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


def rebuilt(payloads: list[bytes]) -> list[bytes]:
    """The NAL units a receiver gets back, through aiortc's own depacketizer."""
    return list(split_annexb(b"".join(h264_depayload(p) for p in payloads)))


def test_small_units_travel_together_and_large_ones_in_equal_fragments() -> None:
    sps, pps, slice_ = nal(7, 20), nal(8, 6), nal(5, 5000, 0x77)
    payloads = packetize(annexb(sps, pps, slice_))

    assert payloads[0][0] & 0x1F == STAP_A, "SPS and PPS share one packet"
    fragments = payloads[1:]
    assert all(p[0] & 0x1F == FU_A for p in fragments)
    sizes = [len(p) for p in fragments]
    assert max(sizes) <= PAYLOAD_MAX
    assert len(set(sizes[:-1])) == 1 and sizes[-1] <= sizes[0], \
        f"every fragment but the last has one size, for segmented sends: {sizes}"
    assert len(fragments) == 4  # 4,999 bytes in at most 1,298 each
    assert rebuilt(payloads) == [sps, pps, slice_]


@pytest.mark.parametrize("size", [PAYLOAD_MAX - 3, PAYLOAD_MAX, PAYLOAD_MAX + 1, 3 * 1298 + 1])
def test_sizes_at_the_edges_stay_under_the_limit_and_come_back_whole(size: int) -> None:
    unit = nal(1, size, 0x33)
    payloads = packetize(annexb(nal(9, 2), unit))
    assert all(len(p) <= PAYLOAD_MAX for p in payloads)
    assert rebuilt(payloads) == [nal(9, 2), unit]


def test_three_and_four_byte_start_codes_both_split() -> None:
    a, b, c = nal(7, 10), nal(8, 4), nal(1, 40)
    stream = b"\x00\x00\x00\x01" + a + b"\x00\x00\x01" + b + b"\x00\x00\x00\x01" + c
    assert list(split_annexb(stream)) == [a, b, c]


def test_real_pictures_decode_from_the_payloads() -> None:
    """x264's own output (several slices, SPS/PPS before the keyframe) decodes after the trip."""
    video = VideoSettings(width=320, height=180, fps=15, bitrate_kbps=800)
    encoder = VideoEncoder(video)
    decoder = H264Decoder()
    decoded = 0
    for n in range(10):
        frame = av.VideoFrame(320, 180, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(n * 20 + i) % 256 for i in range(plane.buffer_size)]))
        for packet in encoder.encode(frame, n * 6000, keyframe=n == 0):
            payloads = packetize(bytes(packet))
            assert all(len(p) <= PAYLOAD_MAX for p in payloads)
            data = b"".join(h264_depayload(p) for p in payloads)
            pictures = decoder.decode(JitterFrame(data=data, timestamp=n * 6000))
            decoded += len(pictures)
            for picture in pictures:
                assert (picture.width, picture.height) == (320, 180)
    assert decoded == 10
    assert Fraction(1, 90000) == encoder.ctx.time_base
