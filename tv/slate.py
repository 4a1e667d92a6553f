"""The slate: what the programme shows when its source has no signal.

Event title, segment title, a line of status and the event's wall clock.
The still part is drawn once per text; the clock is redrawn once a second.
"""

from __future__ import annotations

import functools
import unicodedata
from datetime import datetime
from zoneinfo import ZoneInfo

import av
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (18, 30, 62)
"""Dark blue; tests recognise the slate by it, in the top-left corner."""
TEXT = (255, 255, 255)
ACCENT = (255, 196, 0)

WAITING = "signal en attente"
STARTING_SOON = "L'émission commence bientôt"


# Any of these, found under the system's font folders (fonts-dejavu-core on
# Debian), draws French accents; Pillow's built-in font has ASCII only.
SYSTEM_FONTS = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "FreeSans.ttf",
                "NotoSans-Regular.ttf")

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.cache
def _font_file() -> str | None:
    for name in SYSTEM_FONTS:
        try:
            font = ImageFont.truetype(name, 10)  # searches the font folders: once
        except OSError:
            continue
        return str(font.path)
    return None


def _font(size: int) -> Font:
    name = _font_file()
    return ImageFont.truetype(name, size) if name else ImageFont.load_default(size=size)


def _printable(text: str) -> str:
    """Without a system font, "Équitable" is drawn "Equitable" rather than with a box."""
    if _font_file() is not None:
        return text
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _wrap(text: str, font: Font, width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


class Slate:
    """Slate pictures of one size, as yuv420p video frames."""

    def __init__(self, width: int, height: int, event_title: str, timezone: str) -> None:
        self.width = width
        self.height = height
        self.event_title = event_title
        self.zone = ZoneInfo(timezone)
        self._title_size = max(10, height // 14)
        self._text_size = max(8, height // 20)
        self._title_font = _font(self._title_size)
        self._text_font = _font(self._text_size)
        self._clock_font = _font(max(10, height // 9))
        self._still: tuple[tuple[str, str], Image.Image] | None = None
        self._last: tuple[tuple[str, str, str], av.VideoFrame] | None = None

    def frame(self, segment_title: str, message: str, now: datetime) -> av.VideoFrame:
        """The slate for this segment and status line at ``now`` (an aware datetime)."""
        clock = now.astimezone(self.zone).strftime("%H:%M:%S")
        key = (segment_title, message, clock)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        image = self._still_image(segment_title, message).copy()
        draw = ImageDraw.Draw(image)
        draw.text((self.width / 2, self.height * 0.82), clock, font=self._clock_font,
                  fill=TEXT, anchor="mm")
        rgb: av.VideoFrame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
        frame = rgb.reformat(format="yuv420p")
        self._last = (key, frame)
        return frame

    def _still_image(self, segment_title: str, message: str) -> Image.Image:
        if self._still is not None and self._still[0] == (segment_title, message):
            return self._still[1]
        image = Image.new("RGB", (self.width, self.height), BACKGROUND)
        draw = ImageDraw.Draw(image)
        margin = self.width * 0.08
        y = self.height * 0.12
        for text, font, size, colour in (
                (self.event_title, self._title_font, self._title_size, TEXT),
                (segment_title, self._text_font, self._text_size, TEXT),
                (message, self._text_font, self._text_size, ACCENT)):
            for line in _wrap(_printable(text), font, self.width - 2 * margin):
                draw.text((self.width / 2, y), line, font=font, fill=colour, anchor="ma")
                y += size * 1.25
            y += size * 0.6
        self._still = ((segment_title, message), image)
        return image
