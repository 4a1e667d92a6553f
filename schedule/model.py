"""The schedule engine as pure functions of (plan, take log, now).

Nothing here keeps time or counts: the state at any instant is derived by
replaying the append-only take log over the plan, and the next automatic
action is an absolute instant computed from the same two. Restarting the
server therefore resumes exactly where the show is.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from schedule.errors import (
    AlreadyEnded,
    AlreadyStarted,
    InvalidSeconds,
    NotLive,
    UnknownSegment,
)


class Kind(enum.StrEnum):
    STUDIO = "studio"
    DEBATE = "debate"
    DUPLEX = "duplex"


class State(enum.StrEnum):
    BEFORE = "before"
    LIVE = "live"
    HOLD = "hold"
    ENDED = "ended"


class Action(enum.StrEnum):
    START = "start"
    TAKE = "take"
    HOLD = "hold"
    EXTEND = "extend"
    END = "end"


@dataclass(frozen=True)
class Segment:
    id: str
    title_fr: str
    title_en: str
    kind: Kind
    feed: str | None
    theme: str | None
    planned_start: datetime
    """Aware instant (UTC) at which the plan puts this segment."""
    planned_duration_s: int
    hard_start: bool = False
    """Taken at its time of day whatever is on air (a link fixed at the far end)."""

    @property
    def planned_end(self) -> datetime:
        return self.planned_start + timedelta(seconds=self.planned_duration_s)

    def title(self, lang: str) -> str:
        return self.title_en if lang == "en" and self.title_en else self.title_fr

    @property
    def source(self) -> str:
        """The video source this segment shows: its feed, or the studio camera."""
        return self.feed or "studio"


@dataclass(frozen=True)
class Plan:
    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("a plan needs at least one segment")

    @property
    def planned_start(self) -> datetime:
        return self.segments[0].planned_start

    @property
    def planned_end(self) -> datetime:
        return self.segments[-1].planned_end

    def index(self, segment_id: str) -> int:
        for i, seg in enumerate(self.segments):
            if seg.id == segment_id:
                return i
        raise UnknownSegment(segment_id)

    def get(self, segment_id: str) -> Segment:
        return self.segments[self.index(segment_id)]

    def shifted(self, delta: timedelta) -> Plan:
        """The same running order moved in time (for a rehearsal starting now)."""
        return Plan(tuple(
            Segment(s.id, s.title_fr, s.title_en, s.kind, s.feed, s.theme,
                    s.planned_start + delta, s.planned_duration_s, s.hard_start)
            for s in self.segments))


@dataclass(frozen=True)
class Entry:
    """One line of the append-only take log."""

    seq: int
    at: datetime
    action: Action
    segment_id: str | None = None
    seconds: float | None = None
    by: str = "auto"
    """Who did it: a staff user name, or "auto" for the engine itself."""


@dataclass(frozen=True)
class Replay:
    """The log replayed: what has happened so far."""

    state: State
    on_air: int | None
    """Index in the plan of the segment on air."""
    on_air_since: datetime | None
    extension_s: float
    actual_start: dict[int, datetime] = field(default_factory=dict)
    actual_end: dict[int, datetime] = field(default_factory=dict)
    ended_at: datetime | None = None
    held_since: datetime | None = None


def replay(plan: Plan, log: Sequence[Entry]) -> Replay:
    state, cur, since, ext = State.BEFORE, None, None, 0.0
    held: datetime | None = None
    starts: dict[int, datetime] = {}
    ends: dict[int, datetime] = {}
    ended_at = None
    for e in log:
        if e.action in (Action.START, Action.TAKE):
            target = plan.index(e.segment_id) if e.segment_id else 0
            if cur is not None:
                ends[cur] = e.at
            cur, since, ext, state = target, e.at, 0.0, State.LIVE
            starts[target] = e.at
            ends.pop(target, None)
        elif e.action == Action.HOLD and cur is not None:
            if state != State.HOLD:
                held = e.at
            state = State.HOLD
        elif e.action == Action.EXTEND and cur is not None:
            if state == State.HOLD:
                # Held past its end, the segment runs the extension from the
                # moment it is released, not from an end already behind us.
                assert since is not None
                run_s = (e.at - since).total_seconds()
                ext = max(ext, run_s - plan.segments[cur].planned_duration_s)
            ext += e.seconds or 0.0
            state = State.LIVE
        elif e.action == Action.END:
            if cur is not None:
                ends[cur] = e.at
            cur, since, state, ended_at = None, None, State.ENDED, e.at
    return Replay(state, cur, since, ext, starts, ends, ended_at,
                  held if state == State.HOLD else None)


def _nominal_end(plan: Plan, r: Replay) -> datetime:
    assert r.on_air is not None and r.on_air_since is not None
    seg = plan.segments[r.on_air]
    return r.on_air_since + timedelta(seconds=seg.planned_duration_s + r.extension_s)


def _is_hard(seg: Segment, since: datetime | None) -> bool:
    """A hard start still binds if its instant comes after the take now on air.

    Once the director goes back to an earlier segment after the link's time
    has passed, the link follows in running order instead of cutting in.
    """
    return seg.hard_start and (since is None or seg.planned_start > since)


def _next_hard(plan: Plan, after: int, since: datetime | None = None) -> int | None:
    for i in range(after + 1, len(plan.segments)):
        if _is_hard(plan.segments[i], since):
            return i
    return None


@dataclass(frozen=True)
class Due:
    """The next thing the engine will do by itself, and when."""

    at: datetime
    action: Action
    segment_id: str | None


def next_due(plan: Plan, log: Sequence[Entry], auto_start: bool) -> Due | None:
    """The next automatic action: start, the take at a segment's end, a hard start, the end."""
    return _next_due(plan, replay(plan, log), log[-1].at if log else None, auto_start)


def _next_due(plan: Plan, r: Replay, last_at: datetime | None, auto_start: bool) -> Due | None:
    if r.state == State.ENDED:
        return None
    if r.state == State.BEFORE:
        first = plan.segments[0]
        hard = _next_hard(plan, 0) if first.hard_start is False else None
        if auto_start:
            return Due(first.planned_start, Action.START, first.id)
        if hard is not None:
            seg = plan.segments[hard]
            return Due(seg.planned_start, Action.TAKE, seg.id)
        return None
    assert r.on_air is not None
    candidates: list[Due] = []
    hard = _next_hard(plan, r.on_air, r.on_air_since)
    if hard is not None:
        seg = plan.segments[hard]
        candidates.append(Due(seg.planned_start, Action.TAKE, seg.id))
    if r.state == State.LIVE:
        end = _nominal_end(plan, r)
        if r.on_air + 1 >= len(plan.segments):
            candidates.append(Due(end, Action.END, None))
        elif not _is_hard(plan.segments[r.on_air + 1], r.on_air_since):
            candidates.append(Due(end, Action.TAKE, plan.segments[r.on_air + 1].id))
        # Before a hard start the segment on air runs on until that instant:
        # the far end is not ready earlier.
    if not candidates:
        return None
    # On a tie the hard start wins: it is the same instant and the same segment
    # or one that must cut in anyway.
    due = min(candidates, key=lambda d: d.at)
    # A segment shortened past now ends now: the log never goes back in time.
    floor = last_at or due.at
    return due if due.at >= floor else Due(floor, due.action, due.segment_id)


def catch_up(plan: Plan, log: Sequence[Entry], now: datetime,
             auto_start: bool) -> list[Entry]:
    """Entries the engine owes up to ``now``, each at its due instant.

    Used by the running engine at every deadline and after a restart: a
    segment whose time passed while the server was down is logged at the
    instant it was due, so the state is the one the show really is in.
    """
    owed: list[Entry] = []
    full = list(log)
    while True:
        due = next_due(plan, full, auto_start)
        if due is None or due.at > now:
            return owed
        entry = Entry(len(full) + 1, due.at, due.action, due.segment_id)
        owed.append(entry)
        full.append(entry)


def command(plan: Plan, log: Sequence[Entry], now: datetime, action: Action, by: str,
            segment_id: str | None = None, seconds: float | None = None) -> Entry:
    """Check a director's command against the current state; the entry to append."""
    r = replay(plan, log)
    seq = len(log) + 1
    if r.state == State.ENDED and action != Action.START:
        raise AlreadyEnded()
    if action == Action.START:
        if r.state in (State.LIVE, State.HOLD):
            raise AlreadyStarted()
        target = plan.get(segment_id).id if segment_id else plan.segments[0].id
        return Entry(seq, now, Action.START, target, by=by)
    if action == Action.TAKE:
        if segment_id is None:
            nxt = 0 if r.on_air is None else r.on_air + 1
            if nxt >= len(plan.segments):
                return Entry(seq, now, Action.END, by=by)
            segment_id = plan.segments[nxt].id
        return Entry(seq, now, Action.TAKE, plan.get(segment_id).id, by=by)
    if action in (Action.HOLD, Action.EXTEND) and r.on_air is None:
        raise NotLive()
    if action == Action.HOLD:
        return Entry(seq, now, Action.HOLD, by=by)
    if action == Action.EXTEND:
        if seconds is None or not (-3600 <= seconds <= 3600) or seconds == 0:
            raise InvalidSeconds()
        return Entry(seq, now, Action.EXTEND, seconds=float(seconds), by=by)
    return Entry(seq, now, Action.END, by=by)


# --- what everybody sees ---------------------------------------------------------

@dataclass(frozen=True)
class SegmentView:
    segment: Segment
    expected_start: datetime
    actual_start: datetime | None
    actual_end: datetime | None
    skipped: bool


@dataclass(frozen=True)
class HardStart:
    segment_id: str
    at: datetime
    time_to_s: float
    heavy_s: float
    """How much the segments before it must shrink (> 0, heavy) or may grow (< 0, light)."""


@dataclass(frozen=True)
class Snapshot:
    state: State
    on_air: str | None
    next: str | None
    over_under_s: float
    segments: tuple[SegmentView, ...]
    next_hard: HardStart | None
    on_air_ends: datetime | None
    """When the segment on air will be taken off by itself (None while held)."""
    next_due: Due | None
    held_since: datetime | None = None


def snapshot(plan: Plan, log: Sequence[Entry], now: datetime, auto_start: bool) -> Snapshot:
    """The whole programme at ``now``: the function every page and push is made of."""
    r = replay(plan, log)
    segs = plan.segments
    expected: dict[int, datetime] = {}
    skipped: set[int] = set()
    on_air_ends = None
    since = r.on_air_since

    if r.state == State.BEFORE:
        cursor, first_future = max(now, plan.planned_start), 0
        if not auto_start and now > plan.planned_start:
            cursor = now
    elif r.state == State.ENDED:
        cursor, first_future = now, len(segs)
    else:
        assert r.on_air is not None
        nominal = _nominal_end(plan, r)
        cursor = nominal if r.state == State.LIVE else max(now, nominal)
        first_future = r.on_air + 1

    hard = _next_hard(plan, first_future - 1, since) if first_future < len(segs) else None
    # Where the next hard segment would start if it were soft: every segment
    # before it counted whole, those that will be skipped for lack of time too.
    soft_cursor = cursor + timedelta(seconds=sum(
        s.planned_duration_s for s in segs[first_future:hard if hard is not None else 0]))
    for i in range(first_future, len(segs)):
        seg = segs[i]
        if _is_hard(seg, since):
            # Taken at its time of day: the segments before it are cut if late,
            # and the one before it runs on if early.
            cursor = seg.planned_start
        else:
            nh = _next_hard(plan, i, since)
            if nh is not None and cursor >= segs[nh].planned_start:
                skipped.add(i)
                cursor = segs[nh].planned_start
                expected[i] = cursor
                continue
        expected[i] = cursor
        cursor = cursor + timedelta(seconds=seg.planned_duration_s)

    views = []
    for i, seg in enumerate(segs):
        start = r.actual_start.get(i)
        never = start is None and i < first_future
        views.append(SegmentView(
            seg, start or expected.get(i, seg.planned_start), start, r.actual_end.get(i),
            skipped=i in skipped or never))

    due = _next_due(plan, r, log[-1].at if log else None, auto_start)
    if r.state == State.LIVE and due is not None:
        # Its nominal end, or earlier if a hard start cuts it, or later if it
        # runs on until one (while held: None, it runs until the director says).
        on_air_ends = due.at

    next_hard_view = None
    if hard is not None:
        h = segs[hard]
        next_hard_view = HardStart(h.id, h.planned_start, (h.planned_start - now).total_seconds(),
                                   (soft_cursor - h.planned_start).total_seconds())

    return Snapshot(
        state=r.state,
        on_air=segs[r.on_air].id if r.on_air is not None else None,
        next=_next_id(plan, r, skipped),
        over_under_s=_over_under(plan, r, now, auto_start),
        segments=tuple(views),
        next_hard=next_hard_view,
        on_air_ends=on_air_ends,
        next_due=due,
        held_since=r.held_since,
    )


def _next_id(plan: Plan, r: Replay, skipped: set[int]) -> str | None:
    if r.state == State.ENDED:
        return None
    start = 0 if r.on_air is None else r.on_air + 1
    for i in range(start, len(plan.segments)):
        if i not in skipped:
            return plan.segments[i].id
    return None


def _over_under(plan: Plan, r: Replay, now: datetime, auto_start: bool) -> float:
    """Seconds late (> 0) or early (< 0) against the plan."""
    if r.state == State.BEFORE:
        late = (now - plan.planned_start).total_seconds()
        return max(0.0, late) if not auto_start else 0.0
    if r.state == State.ENDED:
        assert r.ended_at is not None
        return (r.ended_at - plan.planned_end).total_seconds()
    assert r.on_air is not None
    seg = plan.segments[r.on_air]
    # Where the plan wanted this segment to end: the next one's planned start.
    planned_end = (plan.segments[r.on_air + 1].planned_start
                   if r.on_air + 1 < len(plan.segments) else seg.planned_end)
    expected_end = _nominal_end(plan, r)
    if r.state == State.HOLD:
        expected_end = max(now, expected_end)
    return (expected_end - planned_end).total_seconds()


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    text = dt.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class EventInfo:
    title: str
    timezone: str
    rehearsal: bool = False
    speed: float = 1.0
    auto_start: bool = True


def view(snap: Snapshot, now: datetime, event: EventInfo,
         sites: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """The ``GET /api/programme`` body and the ``programme`` push (CONTRACT.md)."""
    sites = sites or {}
    segments = []
    for v in snap.segments:
        s = v.segment
        segments.append({
            "id": s.id, "title": s.title_fr, "title_en": s.title_en, "kind": s.kind.value,
            "feed": s.feed, "theme": s.theme, "planned_start": _iso(s.planned_start),
            "planned_duration_s": s.planned_duration_s, "hard_start": s.hard_start,
            "expected_start": _iso(v.expected_start), "actual_start": _iso(v.actual_start),
            "actual_end": _iso(v.actual_end), "skipped": v.skipped,
            "site": sites.get(s.feed) if s.feed else None,
        })
    hard = snap.next_hard
    return {
        "event": {"title": event.title, "timezone": event.timezone,
                  "planned_start": _iso(snap.segments[0].segment.planned_start),
                  "planned_end": _iso(snap.segments[-1].segment.planned_end),
                  "rehearsal": event.rehearsal, "speed": event.speed,
                  "auto_start": event.auto_start},
        "server_time": _iso(now),
        "state": snap.state.value,
        "on_air": snap.on_air,
        "next": snap.next,
        "over_under_s": round(snap.over_under_s, 3),
        "on_air_ends": _iso(snap.on_air_ends),
        "held_since": _iso(snap.held_since),
        "next_hard_start": None if hard is None else {
            "segment_id": hard.segment_id, "at": _iso(hard.at),
            "time_to_s": round(hard.time_to_s, 3), "heavy_s": round(hard.heavy_s, 3)},
        "segments": segments,
    }
