"""The feeds' rate meter: what the control room and the site read as fps and kbps."""

from __future__ import annotations

from tv.model import RateMeter


def feed(meter: RateMeter, start: float, seconds: float, fps: int) -> float:
    """Frames at ``fps`` from ``start`` for ``seconds``; the time after the last."""
    n = round(seconds * fps)
    for i in range(n):
        meter.frame(start + i / fps)
    return start + n / fps


def test_a_feed_that_just_came_in_shows_its_real_rate() -> None:
    meter = RateMeter(window_s=2.0)
    now = feed(meter, 100.0, 1.0, 30)  # one second in, of a two-second window
    assert 29 <= meter.fps(now) <= 31, "not half the rate because the window is not full"


def test_a_steady_feed_is_measured_over_the_whole_window() -> None:
    meter = RateMeter(window_s=2.0)
    now = feed(meter, 100.0, 5.0, 25)
    assert 24 <= meter.fps(now) <= 26
    meter.data(now, 250_000)  # bytes in the last second
    assert meter.kbps(now) == 250_000 * 8 / 1000 / 2.0


def test_a_feed_back_after_a_silence_starts_afresh() -> None:
    meter = RateMeter(window_s=2.0)
    end = feed(meter, 100.0, 3.0, 30)
    back = end + 10.0  # gone for ten seconds, then back at 15 fps
    now = feed(meter, back, 1.4, 15)
    assert 14 <= meter.fps(now) <= 16
    assert meter.fps(now + 60) == 0.0  # and nothing once it stops


def test_the_first_frames_do_not_make_a_spike() -> None:
    meter = RateMeter(window_s=2.0)
    meter.frame(100.0)
    meter.frame(100.01)
    assert meter.fps(100.02) <= 2.0  # two frames over at least a second
