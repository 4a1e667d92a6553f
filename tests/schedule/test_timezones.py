"""The running order's wall-clock times, read in the event's zone, across DST changes.

Each plan is parsed the way the server parses config.toml (``parse_settings``),
then run by the engine: every segment must be taken at the right UTC instant.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schedule import model
from schedule.model import Action, Plan
from server.settings import ConfigError, Settings, parse_settings
from tests.helpers import ROOT

CONFIG = tomllib.loads((ROOT / "config.toml").read_text("utf-8"))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def segment(sid: str, start: str, minutes: int, **extra: Any) -> dict[str, Any]:
    return {"id": sid, "start": start, "minutes": minutes, "kind": "studio",
            "title_fr": f"Séquence {sid}", **extra}


def settings_for(start: str, segments: list[dict[str, Any]], tmp_path: Path,
                 timezone: str = "Europe/Paris") -> Settings:
    """config.toml with another [event] and [[segments]], parsed as the server does."""
    raw = {**CONFIG,
           "event": {**CONFIG["event"], "start": start, "timezone": timezone},
           "segments": segments,
           "database": {"url": f"sqlite:///{tmp_path / 'tv.sqlite3'}"}}
    return parse_settings(raw, base_dir=tmp_path)


def starts(plan: Plan) -> list[datetime]:
    return [s.planned_start for s in plan.segments]


def run_whole_show(plan: Plan) -> list[tuple[str | None, datetime]]:
    """The engine left alone from well before to well after the show."""
    log = model.catch_up(plan, [], plan.planned_end.replace(year=plan.planned_end.year + 1),
                         auto_start=True)
    return [(e.segment_id if e.action != Action.END else None, e.at) for e in log]


def test_the_real_show_is_planned_in_utc(tmp_path):
    plan = settings_for(CONFIG["event"]["start"], CONFIG["segments"], tmp_path).plan

    assert starts(plan)[0] == utc(2027, 5, 9, 12, 0)  # 14:00 in Paris, summer time
    assert plan.get("duplex-equateur").planned_start == utc(2027, 5, 9, 13, 50)
    assert plan.planned_end == utc(2027, 5, 9, 16, 0)
    assert run_whole_show(plan)[6] == ("duplex-equateur", utc(2027, 5, 9, 13, 50))


def test_spring_forward_the_hour_that_does_not_exist_is_not_counted(tmp_path):
    # 28 March 2027: at 02:00 Paris clocks jump to 03:00. The first hour ends at
    # 02:00 CET, which is 03:00 CEST: the second segment follows it at once.
    plan = settings_for("2027-03-28T01:00", [segment("nuit-1", "01:00", 60),
                                             segment("nuit-2", "03:00", 60)], tmp_path).plan

    assert starts(plan) == [utc(2027, 3, 28, 0, 0), utc(2027, 3, 28, 1, 0)]
    assert plan.planned_end == utc(2027, 3, 28, 2, 0)  # 04:00 CEST
    assert run_whole_show(plan) == [("nuit-1", utc(2027, 3, 28, 0, 0)),
                                    ("nuit-2", utc(2027, 3, 28, 1, 0)),
                                    (None, utc(2027, 3, 28, 2, 0))]


def test_spring_forward_with_short_segments(tmp_path):
    plan = settings_for("2027-03-28T01:00", [
        segment("a", "01:00", 30), segment("b", "01:30", 30),
        segment("c", "03:00", 30), segment("d", "03:30", 30),
        segment("lien", "04:30", 20, hard=True),  # a link at a fixed time, after a gap
    ], tmp_path).plan

    assert starts(plan) == [utc(2027, 3, 28, 0, 0), utc(2027, 3, 28, 0, 30),
                            utc(2027, 3, 28, 1, 0), utc(2027, 3, 28, 1, 30),
                            utc(2027, 3, 28, 2, 30)]
    assert run_whole_show(plan) == [("a", utc(2027, 3, 28, 0, 0)), ("b", utc(2027, 3, 28, 0, 30)),
                                    ("c", utc(2027, 3, 28, 1, 0)), ("d", utc(2027, 3, 28, 1, 30)),
                                    ("lien", utc(2027, 3, 28, 2, 30)),  # d runs on until it
                                    (None, utc(2027, 3, 28, 2, 50))]


def test_fall_back_a_segment_spanning_the_repeated_hour(tmp_path):
    # 31 October 2027: at 03:00 CEST clocks go back to 02:00 CET. A two-hour
    # segment from 02:00 CEST ends at 03:00 CET.
    plan = settings_for("2027-10-31T01:00", [segment("a", "01:00", 60),
                                             segment("b", "02:00", 120),
                                             segment("c", "03:00", 60)], tmp_path).plan

    assert starts(plan) == [utc(2027, 10, 30, 23, 0), utc(2027, 10, 31, 0, 0),
                            utc(2027, 10, 31, 2, 0)]
    assert run_whole_show(plan)[-2:] == [("c", utc(2027, 10, 31, 2, 0)),
                                         (None, utc(2027, 10, 31, 3, 0))]


def test_fall_back_the_repeated_hour_is_written_twice(tmp_path):
    # Half-hour segments through the change: after 02:30 CEST comes 02:00 CET,
    # and the wall clock shows 02:00 and 02:30 a second time.
    plan = settings_for("2027-10-31T01:30", [
        segment("a", "01:30", 30), segment("b", "02:00", 30), segment("c", "02:30", 30),
        segment("d", "02:00", 30), segment("e", "02:30", 30), segment("f", "03:00", 30),
    ], tmp_path).plan

    assert starts(plan) == [utc(2027, 10, 30, 23, 30), utc(2027, 10, 31, 0, 0),
                            utc(2027, 10, 31, 0, 30), utc(2027, 10, 31, 1, 0),
                            utc(2027, 10, 31, 1, 30), utc(2027, 10, 31, 2, 0)]
    taken = run_whole_show(plan)
    assert taken == [*((s.id, s.planned_start) for s in plan.segments),
                     (None, utc(2027, 10, 31, 2, 30))]


def test_past_midnight_the_running_order_goes_on_the_next_day(tmp_path):
    plan = settings_for("2027-05-09T23:00", [segment("soir", "23:00", 60),
                                             segment("nuit", "00:00", 30)], tmp_path).plan

    assert starts(plan) == [utc(2027, 5, 9, 21, 0), utc(2027, 5, 9, 22, 0)]


def test_past_midnight_into_the_spring_change(tmp_path):
    # A night show from Saturday 23:00 CET over the change: 23:00 + 3 h is 03:00 CEST.
    plan = settings_for("2027-03-27T23:00", [segment("soir", "23:00", 180),
                                             segment("nuit", "03:00", 30)], tmp_path).plan

    assert starts(plan) == [utc(2027, 3, 27, 22, 0), utc(2027, 3, 28, 1, 0)]
    assert run_whole_show(plan)[1] == ("nuit", utc(2027, 3, 28, 1, 0))


def test_a_show_in_another_zone(tmp_path):
    plan = settings_for("2027-05-09T09:00", [segment("matin", "09:00", 30),
                                             segment("suite", "09:30", 30)], tmp_path,
                        timezone="America/Guayaquil").plan

    assert starts(plan) == [utc(2027, 5, 9, 14, 0), utc(2027, 5, 9, 14, 30)]


@pytest.mark.parametrize(("case", "segments", "words"), [
    ("gap between soft segments",
     [segment("a", "14:00", 10), segment("b", "14:20", 10)], "gap"),
    ("overlap",
     [segment("a", "14:00", 30), segment("b", "14:20", 10)], "overlaps"),
    ("hard segment overlapping",
     [segment("a", "14:00", 30), segment("b", "14:20", 10, hard=True)], "overlaps"),
    ("gap in the repeated hour of the autumn change",
     [segment("a", "02:00", 30), segment("b", "02:00", 30)], "gap"),
])
def test_a_running_order_with_a_gap_or_an_overlap_is_refused_naming_the_key(
        tmp_path, case, segments, words):
    start = "2027-10-31T02:00" if "autumn" in case else "2027-05-09T14:00"
    with pytest.raises(ConfigError) as caught:
        settings_for(start, segments, tmp_path)

    assert "segments[1].start" in str(caught.value)
    assert words in str(caught.value)


def test_a_gap_before_a_hard_start_is_allowed(tmp_path):
    plan = settings_for("2027-05-09T14:00", [segment("a", "14:00", 10),
                                             segment("b", "14:20", 10, hard=True)],
                        tmp_path).plan

    assert run_whole_show(plan) == [("a", utc(2027, 5, 9, 12, 0)), ("b", utc(2027, 5, 9, 12, 20)),
                                    (None, utc(2027, 5, 9, 12, 30))]
