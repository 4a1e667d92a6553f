"""The programme through the real app: HTTP, Socket.IO pushes, iCalendar.

The app runs on a loopback port with a fake clock set an hour before the show,
so nothing happens by itself until a test moves time on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import socketio
from aiohttp.test_utils import TestServer

from server.auth import Role
from tests.fakes import FakeClock
from tests.helpers import test_settings as settings_for

PARIS = ZoneInfo("Europe/Paris")

PROGRAMME_FIELDS = {"event", "server_time", "state", "on_air", "next", "over_under_s",
                    "segments"}
EVENT_FIELDS = {"title", "timezone", "planned_start", "planned_end"}
SEGMENT_FIELDS = {"id", "title", "kind", "feed", "theme", "planned_start", "planned_duration_s",
                  "hard_start", "expected_start", "actual_start", "actual_end"}


def paris(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2027, 5, 9, hh, mm, ss, tzinfo=PARIS).astimezone(UTC)


def instant(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.removesuffix("Z") + "+00:00")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(paris(13, 0))


@pytest.fixture
async def server(start_server, tmp_path: Path, clock: FakeClock) -> TestServer:
    """The real app (base_url, staff and http use this one), on show time."""
    return await start_server(settings_for(tmp_path), clock=clock)


@pytest.fixture
async def director(staff):
    return await staff("paul", Role.DIRECTOR)


def on_air_is(segment_id: str | None):
    return lambda body: body["on_air"] == segment_id


async def test_a_directors_take_reaches_viewers_and_moderators(base_url, http, staff, director,
                                                                listen):
    marie = await staff("marie", Role.MODERATOR)
    viewer = await listen(base_url, "/")
    console = await listen(base_url, "/moderation", marie.cookie_header())
    control = await listen(base_url, "/control", director.cookie_header())
    for client in (viewer, console, control):
        first = await client.next("programme")  # the programme on connect
        assert (first["state"], first["on_air"]) == ("before", None)

    status, body, _ = await director.request("POST", "/api/programme/start")
    assert status == 200 and body["on_air"] == "ouverture"
    for client in (viewer, console, control):
        pushed = await client.next("programme", where=on_air_is("ouverture"))
        assert pushed["state"] == "live"

    status, body, _ = await director.request("POST", "/api/programme/take")

    assert status == 200
    assert (body["on_air"], body["next"]) == ("debat-cooperatives", "duplex-afrique")
    for client in (viewer, console, control):
        pushed = await client.next("programme", where=on_air_is("debat-cooperatives"))
        assert pushed["next"] == "duplex-afrique"
        debate = next(s for s in pushed["segments"] if s["id"] == "debat-cooperatives")
        assert instant(debate["actual_start"]) == paris(13, 0)


async def test_the_engine_takes_by_itself_when_show_time_comes(base_url, clock, listen):
    viewer = await listen(base_url, "/")
    assert (await viewer.next("programme"))["state"] == "before"

    clock.set(paris(14, 0))
    pushed = await viewer.next("programme", where=on_air_is("ouverture"))
    assert instant(pushed["server_time"]) == paris(14, 0)

    clock.set(paris(15, 50))  # everything due meanwhile is caught up, the link on time
    pushed = await viewer.next("programme", where=on_air_is("duplex-equateur"))
    ecuador = next(s for s in pushed["segments"] if s["id"] == "duplex-equateur")
    assert instant(ecuador["actual_start"]) == paris(15, 50)
    assert [instant(s["actual_start"]) for s in pushed["segments"][:7]] == [
        paris(14, 0), paris(14, 10), paris(14, 30), paris(14, 50), paris(15, 10),
        paris(15, 30), paris(15, 50)]


async def test_only_directors_run_the_programme(base_url, http, staff, director):
    marie = await staff("marie", Role.MODERATOR)
    anonymous = await http(base_url)

    status, body, _ = await marie.request("POST", "/api/programme/take")
    assert (status, body["error"]) == (403, "forbidden")
    status, body, _ = await anonymous.request("POST", "/api/programme/take")
    assert (status, body["error"]) == (401, "not_authenticated")
    status, body, _ = await director.request("POST", "/api/programme/take",
                                             headers={"X-CSRF-Token": "forged"})
    assert status == 403

    status, body, _ = await anonymous.request("GET", "/api/programme")
    assert (status, body["state"], body["on_air"]) == (200, "before", None)


async def test_control_namespace_refuses_moderators_and_viewers_accepts_directors(
        base_url, staff, director, listen):
    marie = await staff("marie", Role.MODERATOR)
    for cookies in (marie.cookie_header(), ""):
        with pytest.raises(socketio.exceptions.ConnectionError):
            await listen(base_url, "/control", cookies)

    control = await listen(base_url, "/control", director.cookie_header())
    assert (await control.next("programme"))["state"] == "before"


async def test_the_programme_has_every_contract_field(base_url, http):
    status, body, resp = await (await http(base_url)).request("GET", "/api/programme")

    assert status == 200 and resp.content_type == "application/json"
    assert set(body) >= PROGRAMME_FIELDS
    assert set(body["event"]) >= EVENT_FIELDS
    assert body["event"]["title"] == "Le Tour du Monde du Commerce Équitable"
    assert body["event"]["timezone"] == "Europe/Paris"
    assert instant(body["event"]["planned_start"]) == paris(14, 0)
    assert instant(body["event"]["planned_end"]) == paris(18, 0)
    assert instant(body["server_time"]) == paris(13, 0)
    assert (body["state"], body["on_air"], body["next"]) == ("before", None, "ouverture")
    assert body["over_under_s"] == 0
    assert len(body["segments"]) == 12
    for seg in body["segments"]:
        assert set(seg) >= SEGMENT_FIELDS
        assert seg["kind"] in ("studio", "debate", "duplex")
        assert instant(seg["planned_start"]) == instant(seg["expected_start"])
        assert seg["actual_start"] is None and seg["actual_end"] is None
    ecuador = next(s for s in body["segments"] if s["id"] == "duplex-equateur")
    assert ecuador["hard_start"] is True
    assert (ecuador["kind"], ecuador["feed"], ecuador["theme"]) == ("duplex", "amerique-du-sud",
                                                                    "fair-price")
    assert instant(ecuador["planned_start"]) == paris(15, 50)
    assert ecuador["planned_duration_s"] == 30 * 60


async def test_extend_hold_and_end_through_the_api(base_url, clock, director, listen):
    viewer = await listen(base_url, "/")
    clock.set(paris(14, 0))
    await viewer.next("programme", where=on_air_is("ouverture"))
    clock.set(paris(14, 5))

    status, body, _ = await director.request("POST", "/api/programme/extend", {"seconds": 300})
    assert status == 200
    assert body["over_under_s"] == 300
    debate = next(s for s in body["segments"] if s["id"] == "debat-cooperatives")
    assert instant(debate["expected_start"]) == paris(14, 15)
    pushed = await viewer.next("programme", where=lambda b: b["over_under_s"] == 300)
    assert pushed["on_air"] == "ouverture"

    status, body, _ = await director.request("POST", "/api/programme/hold")
    assert (status, body["state"]) == (200, "hold")
    assert (await viewer.next("programme", where=lambda b: b["state"] == "hold"))["on_air"] == \
        "ouverture"

    status, body, _ = await director.request("POST", "/api/programme/take/duplex-afrique")
    assert (status, body["state"], body["on_air"]) == (200, "live", "duplex-afrique")

    status, body, _ = await director.request("POST", "/api/programme/end")
    assert (status, body["state"], body["on_air"], body["next"]) == (200, "ended", None, None)
    pushed = await viewer.next("programme", where=lambda b: b["state"] == "ended")
    assert pushed["on_air"] is None

    status, body, _ = await director.request("POST", "/api/programme/hold")
    assert (status, body["error"]) == (409, "programme_ended")


async def test_commands_refused_in_the_wrong_state_answer_409(base_url, director):
    for path in ("/api/programme/hold", "/api/programme/extend"):
        status, body, _ = await director.request("POST", path, {"seconds": 60})
        assert (status, body["error"]) == (409, "programme_not_live")
    assert (await director.request("POST", "/api/programme/start"))[0] == 200
    status, body, _ = await director.request("POST", "/api/programme/start")
    assert (status, body["error"]) == (409, "programme_already_started")


async def test_an_unknown_segment_is_404(base_url, director):
    status, body, _ = await director.request("POST", "/api/programme/take/duplex-lune")
    assert (status, body["error"]) == (404, "unknown_segment")
    assert body["message"]


@pytest.mark.parametrize("seconds", ["ten", None, True, 0, 3601, -99999, [60]])
async def test_bad_seconds_are_422(base_url, director, seconds):
    status, before, _ = await director.request("POST", "/api/programme/start")
    assert status == 200

    status, body, _ = await director.request("POST", "/api/programme/extend",
                                             {"seconds": seconds})

    assert (status, body["error"]) == (422, "invalid_seconds")
    status, after, _ = await director.request("GET", "/api/programme")
    assert after == before  # nothing extended


async def test_the_calendar_is_valid_icalendar(base_url, http):
    status, raw, resp = await (await http(base_url)).request("GET", "/programme.ics")

    assert status == 200
    assert resp.content_type == "text/calendar"
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line ends only
    lines = raw.split(b"\r\n")[:-1]
    assert all(len(line) <= 75 for line in lines), max(lines, key=len)
    text = "\r\n".join(line.decode("utf-8") for line in lines)  # no character cut in two
    unfolded = re.sub(r"\r\n[ \t]", "", text).split("\r\n")
    assert (unfolded[0], unfolded[-1]) == ("BEGIN:VCALENDAR", "END:VCALENDAR")
    assert "VERSION:2.0" in unfolded and any(u.startswith("PRODID:") for u in unfolded)
    events = text_events(unfolded)
    assert len(events) == 12
    assert events[0]["DTSTART"] == "20270509T120000Z"
    assert events[0]["DTEND"] == "20270509T121000Z"
    assert events[0]["SUMMARY"] == "Ouverture : le Tour du Monde du Commerce Équitable"
    assert events[6]["DTSTART"] == "20270509T135000Z"  # the Ecuador link
    assert events[-1]["DTEND"] == "20270509T160000Z"
    assert len({e["UID"] for e in events}) == 12
    assert all({"UID", "DTSTAMP", "DTSTART", "DTEND", "SUMMARY"} <= set(e) for e in events)


def text_events(lines: list[str]) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in lines:
        if line == "BEGIN:VEVENT":
            current = {}
        elif line == "END:VEVENT":
            assert current is not None
            events.append(current)
            current = None
        elif current is not None:
            name, _, value = line.partition(":")
            current[name.split(";")[0]] = value
    assert current is None, "a VEVENT is not closed"
    return events
