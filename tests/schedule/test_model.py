"""The schedule engine's pure core, driven through the real four-hour running order.

Time is a parameter: a ``Show`` steps the model from instant to instant the
way the running engine does (``catch_up`` at every deadline, the director's
``command`` in between), so the whole show runs in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from schedule import model
from schedule.errors import AlreadyEnded, AlreadyStarted, InvalidSeconds, NotLive, UnknownSegment
from schedule.model import Action, Entry, EventInfo, Plan, Snapshot, State
from server.settings import load_settings
from tests.helpers import ROOT

PARIS = ZoneInfo("Europe/Paris")
PLAN: Plan = load_settings(ROOT / "config.toml").plan
ORDER = [s.id for s in PLAN.segments]


def paris(hh: int, mm: int, ss: int = 0) -> datetime:
    """An instant on the day of the show, read on a Paris wall clock, as UTC."""
    return datetime(2027, 5, 9, hh, mm, ss, tzinfo=PARIS).astimezone(UTC)


@dataclass
class Show:
    """The take log and the time, moved forward the way the engine moves them."""

    plan: Plan = PLAN
    auto_start: bool = True
    log: list[Entry] = field(default_factory=list)
    now: datetime = field(default_factory=lambda: paris(13, 0))

    def run_to(self, when: datetime) -> list[Entry]:
        """Let time pass until ``when``; the entries the engine appended meanwhile."""
        assert when >= self.now
        owed = model.catch_up(self.plan, self.log, when, self.auto_start)
        self.log += owed
        self.now = when
        return owed

    def do(self, when: datetime, action: Action, segment_id: str | None = None,
           seconds: float | None = None, by: str = "paul") -> Entry:
        """The director acts at ``when`` (time runs up to it first)."""
        self.run_to(when)
        entry = model.command(self.plan, self.log, self.now, action, by, segment_id, seconds)
        self.log.append(entry)
        return entry

    def snap(self) -> Snapshot:
        return model.snapshot(self.plan, self.log, self.now, self.auto_start)

    def takes(self) -> list[tuple[str | None, datetime]]:
        """(segment, instant) of every segment put on air, then (None, end)."""
        return [(e.segment_id if e.action != Action.END else None, e.at) for e in self.log
                if e.action in (Action.START, Action.TAKE, Action.END)]

    def view(self, segment_id: str) -> model.SegmentView:
        return next(v for v in self.snap().segments if v.segment.id == segment_id)


def assert_chronological(log: list[Entry]) -> None:
    """The take log is a history: numbered in order and never going back in time."""
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    for before, after in pairwise(log):
        assert after.at >= before.at, f"{after} is logged before {before}"


# --- the plan ------------------------------------------------------------------------


def test_the_running_order_is_the_real_four_hour_show():
    assert len(PLAN.segments) == 12
    assert PLAN.planned_start == paris(14, 0)
    assert PLAN.planned_end == paris(18, 0)
    ecuador = PLAN.get("duplex-equateur")
    assert ecuador.hard_start
    assert ecuador.planned_start == datetime(2027, 5, 9, 13, 50, tzinfo=UTC)
    assert [s.id for s in PLAN.segments if s.hard_start] == ["duplex-equateur"]


# --- on time -------------------------------------------------------------------------


def test_before_the_show_everything_is_on_plan():
    show = Show()
    snap = show.snap()

    assert snap.state == State.BEFORE
    assert (snap.on_air, snap.next) == (None, "ouverture")
    assert snap.over_under_s == 0
    assert [v.expected_start for v in snap.segments] == [s.planned_start for s in PLAN.segments]
    assert not any(v.skipped or v.actual_start for v in snap.segments)
    assert snap.next_due == model.Due(paris(14, 0), Action.START, "ouverture")
    assert snap.next_hard is not None
    assert snap.next_hard.segment_id == "duplex-equateur"
    assert snap.next_hard.time_to_s == (paris(15, 50) - paris(13, 0)).total_seconds()
    assert snap.next_hard.heavy_s == 0


def test_the_whole_show_runs_by_itself_each_segment_at_its_planned_instant():
    show = Show()
    show.run_to(paris(13, 59, 59))
    assert show.log == []

    show.run_to(paris(18, 30))

    assert show.takes() == [*((s.id, s.planned_start) for s in PLAN.segments),
                            (None, paris(18, 0))]
    assert show.log[0].action == Action.START
    assert all(e.by == "auto" for e in show.log)
    snap = show.snap()
    assert snap.state == State.ENDED
    assert (snap.on_air, snap.next, snap.next_due) == (None, None, None)
    assert snap.over_under_s == 0
    for v in snap.segments:
        assert (v.actual_start, v.actual_end) == (v.segment.planned_start, v.segment.planned_end)
        assert not v.skipped
    assert_chronological(show.log)


def test_every_instant_of_the_show_has_one_segment_on_air_and_the_right_next():
    show = Show()
    for i, seg in enumerate(PLAN.segments):
        show.run_to(seg.planned_start + timedelta(minutes=1))
        snap = show.snap()
        assert snap.state == State.LIVE
        assert snap.on_air == seg.id
        assert snap.next == (ORDER[i + 1] if i + 1 < len(ORDER) else None)
        assert snap.over_under_s == 0
        assert snap.on_air_ends == seg.planned_end


# --- late, early, cut ----------------------------------------------------------------


def test_an_overrun_pushes_the_soft_segments_and_the_ecuador_link_still_cuts_in_at_1550():
    show = Show()
    show.do(paris(14, 5), Action.EXTEND, seconds=300)

    snap = show.snap()
    expected = {v.segment.id: v.expected_start for v in snap.segments}
    assert snap.over_under_s == 300
    assert expected["debat-cooperatives"] == paris(14, 15)
    assert expected["duplex-europe"] == paris(15, 35)
    assert expected["duplex-equateur"] == paris(15, 50)
    assert expected["duplex-amerique-du-nord"] == paris(16, 20)  # back on plan after the link

    show.run_to(paris(15, 49, 59))
    snap = show.snap()
    assert snap.on_air == "duplex-europe"
    assert show.view("duplex-europe").actual_start == paris(15, 35)
    assert snap.over_under_s == 300  # reported as over: the show runs five minutes late

    show.run_to(paris(15, 50))
    assert show.takes()[-1] == ("duplex-equateur", paris(15, 50))
    europe = show.view("duplex-europe")
    assert europe.actual_end == paris(15, 50)  # cut after 15 of its 20 minutes
    assert show.snap().over_under_s == 0

    show.run_to(paris(19, 0))
    assert show.takes()[-6:] == [("duplex-amerique-du-nord", paris(16, 20)),
                                 ("debat-prix", paris(16, 40)), ("duplex-oceanie", paris(17, 0)),
                                 ("questions", paris(17, 20)), ("cloture", paris(17, 50)),
                                 (None, paris(18, 0))]
    assert [sid for sid, _ in show.takes()][:-1] == ORDER
    assert_chronological(show.log)


def test_a_light_show_keeps_the_segment_before_the_link_on_air_until_1550():
    show = Show()
    show.do(paris(15, 0), Action.TAKE)  # debat-croissance ten minutes early

    assert show.snap().on_air == "debat-croissance"
    assert show.snap().next_hard.heavy_s == -600  # the segments before may grow ten minutes

    show.run_to(paris(15, 20))
    assert show.takes()[-1] == ("duplex-europe", paris(15, 20))

    show.run_to(paris(15, 49, 59))
    snap = show.snap()
    assert snap.on_air == "duplex-europe"  # past its 20 minutes, never taken early
    assert snap.next == "duplex-equateur"
    assert snap.next_due == model.Due(paris(15, 50), Action.TAKE, "duplex-equateur")

    show.run_to(paris(15, 50))
    assert show.takes()[-1] == ("duplex-equateur", paris(15, 50))
    assert show.view("duplex-europe").actual_end == paris(15, 50)
    assert_chronological(show.log)


def test_back_time_to_the_next_hard_start():
    show = Show()
    show.run_to(paris(14, 30))
    hard = show.snap().next_hard
    assert hard is not None
    assert (hard.segment_id, hard.at) == ("duplex-equateur", paris(15, 50))
    assert hard.time_to_s == 80 * 60
    assert hard.heavy_s == 0

    show.do(paris(14, 31), Action.EXTEND, seconds=90)
    assert show.snap().next_hard.heavy_s == 90
    assert show.snap().next_hard.time_to_s == 79 * 60

    show.do(paris(14, 45), Action.TAKE)  # asie 6.5 minutes early: 90 s heavy → 300 s light
    assert show.snap().next_hard.heavy_s == -300

    show.run_to(paris(15, 50))
    assert show.snap().on_air == "duplex-equateur"
    assert show.snap().next_hard is None  # no other hard start in the running order


def test_a_late_show_skips_the_soft_segments_that_no_longer_fit_before_the_link():
    show = Show()
    show.do(paris(14, 5), Action.EXTEND, seconds=2000)  # 33 min 20 s late

    snap = show.snap()
    views = {v.segment.id: v for v in snap.segments}
    assert views["debat-croissance"].expected_start == paris(15, 43, 20)
    assert not views["debat-croissance"].skipped
    assert views["duplex-europe"].skipped  # no time left for it before 15:50
    assert views["duplex-equateur"].expected_start == paris(15, 50)
    assert snap.over_under_s == 2000
    # Back-time: everything before the link must shrink by the whole overrun.
    assert snap.next_hard.heavy_s == 2000

    show.run_to(paris(18, 30))
    taken = [sid for sid, _ in show.takes()][:-1]
    assert taken == [s for s in ORDER if s != "duplex-europe"]
    assert ("duplex-equateur", paris(15, 50)) in show.takes()
    assert show.view("debat-croissance").actual_end == paris(15, 50)
    europe = show.view("duplex-europe")
    assert europe.skipped and europe.actual_start is None
    assert_chronological(show.log)


def test_an_hour_late_three_segments_are_skipped():
    show = Show()
    show.do(paris(14, 5), Action.EXTEND, seconds=3600)

    snap = show.snap()
    skipped = [v.segment.id for v in snap.segments if v.skipped]
    assert skipped == ["duplex-asie", "debat-croissance", "duplex-europe"]
    assert snap.next == "debat-cooperatives"
    assert snap.next_hard.heavy_s == 3600

    show.run_to(paris(18, 30))
    taken = [sid for sid, _ in show.takes()][:-1]
    assert taken == [s for s in ORDER if s not in skipped]
    assert show.view("duplex-afrique").actual_end == paris(15, 50)


# --- the director --------------------------------------------------------------------


def test_the_director_starts_late_and_the_show_follows():
    show = Show(auto_start=False)
    show.run_to(paris(14, 3))
    assert show.log == []
    snap = show.snap()
    assert snap.state == State.BEFORE and snap.over_under_s == 180

    show.do(paris(14, 3), Action.START)
    show.run_to(paris(14, 20))
    assert show.takes() == [("ouverture", paris(14, 3)), ("debat-cooperatives", paris(14, 13))]
    assert show.snap().over_under_s == 180


def test_hold_keeps_the_segment_on_air_until_the_director_takes():
    show = Show()
    show.do(paris(14, 5), Action.HOLD)

    show.run_to(paris(14, 30))
    snap = show.snap()
    assert snap.state == State.HOLD
    assert snap.on_air == "ouverture"
    assert show.takes() == [("ouverture", paris(14, 0))]  # nothing taken by itself
    assert snap.on_air_ends is None
    assert snap.held_since == paris(14, 5)
    assert snap.over_under_s == 20 * 60
    assert show.view("debat-cooperatives").expected_start == paris(14, 30)

    show.do(paris(14, 30), Action.TAKE)
    show.run_to(paris(14, 51))
    assert show.takes()[1:] == [("debat-cooperatives", paris(14, 30)),
                                ("duplex-afrique", paris(14, 50))]
    assert show.snap().state == State.LIVE


def test_a_hold_does_not_stop_the_ecuador_link():
    show = Show()
    show.do(paris(15, 40), Action.HOLD)  # duplex-europe held

    show.run_to(paris(15, 50))
    assert show.takes()[-1] == ("duplex-equateur", paris(15, 50))
    assert show.snap().state == State.LIVE


def test_extending_a_held_segment_resumes_the_running_order_from_now():
    show = Show()
    show.do(paris(14, 5), Action.HOLD)
    show.run_to(paris(14, 30))

    show.do(paris(14, 30), Action.EXTEND, seconds=120)

    snap = show.snap()
    assert snap.state == State.LIVE and snap.on_air == "ouverture"
    assert snap.on_air_ends == paris(14, 32)
    assert snap.over_under_s == 22 * 60  # the hold made the show 22 minutes late
    show.run_to(paris(14, 31, 59))
    assert show.snap().on_air == "ouverture"  # two more minutes, as asked
    show.run_to(paris(14, 32))
    assert show.takes()[-1] == ("debat-cooperatives", paris(14, 32))
    assert_chronological(show.log)


def test_extend_lengthens_or_shortens_the_segment_on_air():
    show = Show()
    show.do(paris(14, 2), Action.EXTEND, seconds=120)
    show.do(paris(14, 3), Action.EXTEND, seconds=-300)  # net three minutes shorter
    assert show.snap().on_air_ends == paris(14, 7)
    assert show.snap().over_under_s == -180

    show.run_to(paris(14, 8))
    assert show.takes()[-1] == ("debat-cooperatives", paris(14, 7))


def test_shortening_past_now_takes_the_next_segment_now_not_in_the_past():
    show = Show()
    show.do(paris(14, 8), Action.EXTEND, seconds=-600)

    show.run_to(paris(14, 8))
    assert show.takes()[-1] == ("debat-cooperatives", paris(14, 8))
    assert_chronological(show.log)


def test_ending_early():
    show = Show()
    show.do(paris(17, 30), Action.END)

    snap = show.snap()
    assert snap.state == State.ENDED
    assert (snap.on_air, snap.next, snap.next_due) == (None, None, None)
    assert snap.over_under_s == -30 * 60
    assert show.view("questions").actual_end == paris(17, 30)
    assert show.view("cloture").skipped and show.view("cloture").actual_start is None

    assert show.run_to(paris(19, 0)) == []  # nothing more happens by itself


def test_taking_next_on_the_last_segment_ends_the_show():
    show = Show()
    show.do(paris(17, 55), Action.TAKE)
    assert show.snap().state == State.ENDED
    assert show.takes()[-1] == (None, paris(17, 55))


def test_the_director_takes_any_segment():
    show = Show()
    show.do(paris(14, 15), Action.TAKE, "duplex-asie")  # jump over afrique

    snap = show.snap()
    assert snap.on_air == "duplex-asie" and snap.next == "debat-croissance"
    assert show.view("debat-cooperatives").actual_end == paris(14, 15)
    assert show.view("duplex-afrique").skipped
    show.run_to(paris(14, 35))
    assert show.takes()[-1] == ("debat-croissance", paris(14, 35))

    show.do(paris(14, 40), Action.TAKE, "duplex-afrique")  # and back to it
    snap = show.snap()
    assert snap.on_air == "duplex-afrique" and not show.view("duplex-afrique").skipped
    assert show.view("duplex-afrique").actual_start == paris(14, 40)
    assert snap.next == "duplex-asie"

    show.run_to(paris(15, 50))
    assert show.takes()[-1] == ("duplex-equateur", paris(15, 50))
    assert_chronological(show.log)


def test_going_back_before_a_passed_hard_start_is_not_overridden_by_the_link():
    show = Show()
    show.run_to(paris(16, 25))
    show.do(paris(16, 25), Action.TAKE, "duplex-europe")  # replay the Brussels link

    assert show.run_to(paris(16, 25)) == []
    assert show.snap().on_air == "duplex-europe"


def test_commands_refused_in_the_wrong_state():
    show = Show()
    for action in (Action.HOLD, Action.EXTEND):
        with pytest.raises(NotLive):
            model.command(PLAN, show.log, show.now, action, "paul", seconds=60)
    with pytest.raises(UnknownSegment):
        model.command(PLAN, show.log, show.now, Action.TAKE, "paul", "duplex-lune")

    show.run_to(paris(14, 0))  # started by itself
    assert show.snap().state == State.LIVE
    with pytest.raises(AlreadyStarted):
        model.command(PLAN, show.log, show.now, Action.START, "paul")
    for seconds in (None, 0, 3601, -3601):
        with pytest.raises(InvalidSeconds):
            model.command(PLAN, show.log, show.now, Action.EXTEND, "paul", seconds=seconds)
    show.do(paris(14, 1), Action.HOLD)
    with pytest.raises(AlreadyStarted):
        model.command(PLAN, show.log, show.now, Action.START, "paul")

    show.do(paris(14, 2), Action.END)
    for action in (Action.TAKE, Action.HOLD, Action.EXTEND, Action.END):
        with pytest.raises(AlreadyEnded):
            model.command(PLAN, show.log, show.now, action, "paul", seconds=60)


def test_refused_commands_change_nothing():
    show = Show()
    show.run_to(paris(14, 5))
    before = show.snap()
    with pytest.raises(InvalidSeconds):
        show.do(paris(14, 5), Action.EXTEND, seconds=0)
    assert show.snap() == before


# --- a restart is a replay -----------------------------------------------------------


def test_catch_up_logs_what_was_missed_at_the_instants_it_was_due():
    show = Show()
    show.do(paris(14, 5), Action.EXTEND, seconds=60)
    kept = list(show.log)

    owed = model.catch_up(PLAN, kept, paris(15, 0), auto_start=True)

    assert [(e.seq, e.action, e.segment_id, e.at) for e in owed] == [
        (3, Action.TAKE, "debat-cooperatives", paris(14, 11)),
        (4, Action.TAKE, "duplex-afrique", paris(14, 31)),
        (5, Action.TAKE, "duplex-asie", paris(14, 51)),
    ]
    assert model.catch_up(PLAN, kept + owed, paris(15, 0), auto_start=True) == []


# --- the view --------------------------------------------------------------------------


def test_the_view_is_the_contract_body():
    show = Show()
    show.do(paris(14, 5), Action.EXTEND, seconds=300)

    body = model.view(show.snap(), show.now, EventInfo("Le Tour", "Europe/Paris"))

    assert set(body) >= {"event", "server_time", "state", "on_air", "next", "over_under_s",
                         "segments"}
    assert body["event"] == {"title": "Le Tour", "timezone": "Europe/Paris",
                             "planned_start": "2027-05-09T12:00:00.000Z",
                             "planned_end": "2027-05-09T16:00:00.000Z",
                             "rehearsal": False, "speed": 1.0, "auto_start": True}
    assert (body["state"], body["on_air"], body["next"]) == ("live", "ouverture",
                                                             "debat-cooperatives")
    assert body["over_under_s"] == 300
    assert body["server_time"] == "2027-05-09T12:05:00.000Z"
    first, second = body["segments"][:2]
    assert first["actual_start"] == "2027-05-09T12:00:00.000Z" and first["actual_end"] is None
    assert second["expected_start"] == "2027-05-09T12:15:00.000Z"
    assert body["next_hard_start"] == {"segment_id": "duplex-equateur",
                                       "at": "2027-05-09T13:50:00.000Z",
                                       "time_to_s": 105 * 60, "heavy_s": 300}
