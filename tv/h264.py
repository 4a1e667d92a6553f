"""H.264 RTP payloads (RFC 6184, packetization mode 1), cut once for every viewer.

Like aiortc's packetizer (small NAL units gathered in STAP-A, large ones cut
in FU-A), except that a NAL unit's fragments all have the same size but the
last, which may be shorter: a run of same-size packets can then leave in one
segmented send (UDP GSO, see tv.fanout).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

PAYLOAD_MAX = 1300
"""Bytes of RTP payload at most, as aiortc: with SRTP and UDP/IP, under a 1,500-byte MTU."""
STAP_A = 24
FU_A = 28


def split_annexb(data: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex B byte stream (00 00 01 or 00 00 00 01 start codes)."""
    starts = []
    i = data.find(b"\x00\x00\x01")
    while i != -1:
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    for n, start in enumerate(starts):
        end = starts[n + 1] - 3 if n + 1 < len(starts) else len(data)
        # A four-byte start code leaves one zero at the end of the previous unit;
        # a NAL unit never ends with a zero byte (RBSP trailing bits).
        while end > start and data[end - 1] == 0:
            end -= 1
        if end > start:
            yield data[start:end]


def fragment(nal: bytes, limit: int = PAYLOAD_MAX) -> list[bytes]:
    """FU-A fragments of one NAL unit: equal sizes, the last one possibly shorter."""
    indicator = (nal[0] & 0xE0) | FU_A
    kind = nal[0] & 0x1F
    body = memoryview(nal)[1:]
    count = math.ceil(len(body) / (limit - 2))
    size = math.ceil(len(body) / count)
    out = []
    for k in range(count):
        header = kind | (0x80 if k == 0 else 0) | (0x40 if k == count - 1 else 0)
        out.append(bytes((indicator, header)) + body[k * size:(k + 1) * size])
    return out


def aggregate(nals: list[bytes]) -> bytes:
    """One STAP-A payload holding several small NAL units."""
    nri = max(n[0] & 0x60 for n in nals)
    forbidden = max(n[0] & 0x80 for n in nals)
    parts = [bytes((forbidden | nri | STAP_A,))]
    for nal in nals:
        parts += [len(nal).to_bytes(2, "big"), nal]
    return b"".join(parts)


def packetize(access_unit: bytes, limit: int = PAYLOAD_MAX) -> list[bytes]:
    """The RTP payloads of one encoded picture (Annex B), in order."""
    payloads: list[bytes] = []
    small: list[bytes] = []
    small_size = 1

    def flush() -> None:
        nonlocal small, small_size
        if small:
            payloads.append(small[0] if len(small) == 1 else aggregate(small))
        small, small_size = [], 1

    for nal in split_annexb(access_unit):
        if len(nal) > limit:
            flush()
            payloads += fragment(nal, limit)
            continue
        if small_size + 2 + len(nal) > limit:
            flush()
        small.append(nal)
        small_size += 2 + len(nal)
    flush()
    return payloads
