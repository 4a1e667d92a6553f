"""The HTTP edge against a stranger (issue 8, defects 4, 7, 10, 11): real app, real socket."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from server.auth import Role
from tests.conftest import StartServer
from tests.helpers import Http
from tests.helpers import test_settings as settings_for

OpenHttp = Callable[..., Awaitable[Http]]
Staff = Callable[..., Awaitable[Http]]


async def _ask(client: Http, n: int) -> int:
    status, _, _ = await client.request("POST", "/api/questions",
                                        {"theme": "growth", "text": f"Question numéro {n}"})
    return status


# --- 4. X-Forwarded-For: only the entry our own proxy appended counts ---------------


async def test_made_up_forwarded_entries_do_not_reset_the_limits(
        tmp_path: Path, start_server: StartServer, http: OpenHttp) -> None:
    settings = settings_for(tmp_path, http={"trust_forwarded": True, "forwarded_hops": 1},
                            qa={"rate_per_ip": {"count": 3, "window_s": 600}})
    base = str((await start_server(settings)).make_url("")).rstrip("/")

    # One client behind the proxy (which appends 203.0.113.9), inventing a new
    # address before it each time, and a new cookie each time.
    statuses = [await _ask(await http(base, f"198.51.100.{n}, 203.0.113.9"), n)
                for n in range(5)]
    assert statuses == [201, 201, 201, 429, 429]

    # Another real client of the same proxy is somebody else.
    assert await _ask(await http(base, "203.0.113.77"), 9) == 201
    # Two hops of ours: the entry the first proxy appended is the client's.
    two = settings_for(tmp_path / "two", http={"trust_forwarded": True, "forwarded_hops": 2},
                       qa={"rate_per_ip": {"count": 1, "window_s": 600}})
    base2 = str((await start_server(two)).make_url("")).rstrip("/")
    assert await _ask(await http(base2, "1.1.1.1, 203.0.113.5, 10.0.0.2"), 1) == 201
    assert await _ask(await http(base2, "2.2.2.2, 203.0.113.5, 10.0.0.3"), 2) == 429
    assert await _ask(await http(base2, "2.2.2.2, 203.0.113.6, 10.0.0.3"), 3) == 201


async def test_an_ipv6_client_is_known_by_its_64(tmp_path: Path, start_server: StartServer,
                                                 http: OpenHttp) -> None:
    settings = settings_for(tmp_path, http={"trust_forwarded": True},
                            qa={"rate_per_ip": {"count": 2, "window_s": 600}})
    base = str((await start_server(settings)).make_url("")).rstrip("/")
    # One subscriber holds a whole /64: hopping inside it is the same client.
    statuses = [await _ask(await http(base, f"2001:db8:1:2::{n:x}"), n) for n in range(1, 4)]
    assert statuses == [201, 201, 429]
    assert await _ask(await http(base, "2001:db8:1:3::1"), 9) == 201
    # Garbage where the proxy's entry should be is one shared, tightly limited bucket.
    assert await _ask(await http(base, "not-an-address"), 10) == 201


async def test_sign_in_limits_follow_the_trusted_entry(tmp_path: Path,
                                                       start_server: StartServer,
                                                       http: OpenHttp) -> None:
    settings = settings_for(tmp_path, http={"trust_forwarded": True},
                            auth={"login_failures": {"count": 2, "window_s": 900}})
    server = await start_server(settings)
    base = str(server.make_url("")).rstrip("/")
    statuses = []
    for n in range(4):
        client = await http(base, f"10.9.9.{n}, 203.0.113.9")
        status, _, _ = await client.request("POST", "/api/session",
                                            {"username": "chef", "password": f"guess {n}"})
        statuses.append(status)
    assert statuses == [401, 401, 429, 429]


# --- 7. the sign-in redirect stays on this site --------------------------------------


def _page_config(html: bytes) -> dict[str, object]:
    match = re.search(rb'<script type="application/json" id="page-config">(.*?)</script>',
                      html, re.S)
    assert match is not None
    config: dict[str, object] = json.loads(match.group(1))
    return config


@pytest.mark.parametrize("wanted,kept", [
    ("/%09/other.host/steal", "/moderation"),
    ("/%0a/other.host/", "/moderation"),
    ("/%0d/other.host/", "/moderation"),
    ("/%5Cother.host/", "/moderation"),
    ("//other.host/", "/moderation"),
    ("https://other.host/", "/moderation"),
    ("/.//other.host/", "/moderation"),
    ("/control?tab=feeds", "/control?tab=feeds"),
    ("/moderation%23q12", "/moderation#q12"),
])
async def test_the_sign_in_page_only_goes_back_to_this_site(base_url: str, http: OpenHttp,
                                                           wanted: str, kept: str) -> None:
    status, html, _ = await (await http(base_url)).request("GET", f"/login?next={wanted}")
    assert status == 200
    assert _page_config(html)["next"] == kept


# --- 10. malformed input gets a 4xx with the JSON shape --------------------------------


@pytest.mark.parametrize("raw,status,code", [
    (b'{"theme": "growth", "text": ' + b"9" * 5000 + b"}", 400, "invalid_json"),
    (b'{"theme": "growth", "text": NaN}', 400, "invalid_json"),
    (b'{"theme": "growth", "text": "a", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
     400, "invalid_json"),
    (b'{"a": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, 400, "invalid_json"),
    (b'{"theme": "growth", "text": "\\udfff hello"}', 422, "invalid_unicode"),
    (b'{"theme": "growth", "text": "ok", "\\ud800": 1}', 422, "invalid_unicode"),
    (b'{"theme": "growth", "text": "\xff\xfe"}', 400, "invalid_json"),
])
async def test_hostile_json_bodies_get_a_4xx(base_url: str, http: OpenHttp, raw: bytes,
                                            status: int, code: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    viewer = await http(base_url)
    async with viewer.session.post(base_url + "/api/questions", data=raw,
                                   headers={"Content-Type": "application/json"}) as resp:
        body = await resp.json()
        assert (resp.status, body["error"]) == (status, code)
        assert body["message"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_extend_by_a_huge_number_is_422(base_url: str, staff: Staff) -> None:
    director = await staff("chef", Role.DIRECTOR)
    status, before, _ = await director.request("POST", "/api/programme/start")
    assert status == 200
    for seconds in (10**400, -(10**400), 1e308):
        status, body, _ = await director.request("POST", "/api/programme/extend",
                                                 {"seconds": seconds})
        assert (status, body["error"]) == (422, "invalid_seconds")
    status, after, _ = await director.request("GET", "/api/programme")
    assert after["over_under_s"] == before["over_under_s"]


# --- 11. frames, calendar links, sign-out, headers on errors -------------------------


async def test_staff_pages_refuse_to_be_framed(base_url: str, http: OpenHttp,
                                               staff: Staff) -> None:
    director = await staff("chef", Role.DIRECTOR)
    for path in ("/moderation", "/control", "/logout"):
        status, _, resp = await director.request("GET", path)
        assert status == 200, path
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY"
    status, _, resp = await (await http(base_url)).request("GET", "/login")
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    status, _, resp = await (await http(base_url)).request("GET", "/")
    assert "frame-ancestors 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "SAMEORIGIN"


async def test_public_pages_may_be_framed_by_the_configured_sites(
        tmp_path: Path, start_server: StartServer, http: OpenHttp) -> None:
    settings = settings_for(tmp_path, http={"frame_ancestors": ["https://coop.example"]})
    base = str((await start_server(settings)).make_url("")).rstrip("/")
    _, _, resp = await (await http(base)).request("GET", "/")
    assert "frame-ancestors 'self' https://coop.example" in resp.headers[
        "Content-Security-Policy"]
    assert "X-Frame-Options" not in resp.headers
    _, _, resp = await (await http(base)).request("GET", "/login")
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_the_calendar_never_carries_the_request_host(
        tmp_path: Path, start_server: StartServer, http: OpenHttp) -> None:
    settings = settings_for(tmp_path, http={"public_url": "https://tv.example.org"})
    base = str((await start_server(settings)).make_url("")).rstrip("/")
    status, raw, _ = await (await http(base)).request(
        "GET", "/programme.ics", headers={"Host": "evil.example"})
    assert status == 200
    assert b"evil.example" not in raw
    assert b"URL:https://tv.example.org/programme\r\n" in raw
    assert re.search(rb"UID:[a-z0-9-]+-\d{8}T\d{6}Z@tv\.example\.org", raw)


async def test_a_link_cannot_sign_anyone_out(base_url: str, staff: Staff) -> None:
    mod = await staff()
    # Another site's <img src=/logout>, or a link: a GET only shows the button.
    status, page, _ = await mod.request("GET", "/logout")
    assert status == 200 and b'action="/logout"' in page
    assert (await mod.request("GET", "/api/session"))[0] == 200
    # A POST without the session's token (another site's form) does nothing.
    async with mod.session.post(base_url + "/logout", data={"csrf_token": "forged"},
                                allow_redirects=False) as resp:
        assert resp.status == 403
    async with mod.session.post(base_url + "/logout", data={"csrf_token": mod.csrf},
                                headers={"Origin": "https://evil.example"},
                                allow_redirects=False) as resp:
        assert resp.status == 403
    assert (await mod.request("GET", "/api/session"))[0] == 200
    # The page's own form signs out.
    async with mod.session.post(base_url + "/logout", data={"csrf_token": mod.csrf},
                                headers={"Origin": base_url},
                                allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"]) == (303, "/")
    assert (await mod.request("GET", "/api/session"))[0] == 401


async def test_error_answers_carry_the_security_headers(base_url: str, http: OpenHttp) -> None:
    viewer = await http(base_url)
    for method, path in (("GET", "/api/nothing-here"), ("GET", "/api/questions/999"),
                         ("POST", "/api/questions"), ("PATCH", "/api/questions/1"),
                         ("GET", "/api/feeds")):
        status, body, resp = await viewer.request(method, path)
        assert 400 <= status < 500 and body["error"], (method, path)
        assert resp.headers["X-Content-Type-Options"] == "nosniff", (method, path)
        assert resp.headers["Referrer-Policy"] == "same-origin", (method, path)


async def test_concurrent_hostile_requests_leave_a_viewer_unharmed(
        base_url: str, http: OpenHttp) -> None:
    """While a stranger sends junk, a viewer asking at the same time is served."""
    attacker, viewer = await http(base_url), await http(base_url)

    async def junk(n: int) -> int:
        raw = [b"9" * 6000, b"[" * 60_000, b'"\\ud800"', b"\xff"][n % 4]
        async with attacker.session.post(base_url + "/api/questions", data=raw,
                                         headers={"Content-Type": "application/json"}) as r:
            return r.status

    statuses, mine = await asyncio.gather(asyncio.gather(*(junk(n) for n in range(80))),
                                          _ask(viewer, 1))
    assert mine == 201
    assert all(400 <= s < 500 for s in statuses), statuses


@pytest.mark.parametrize("content_type,raw", [
    ("application/x-www-form-urlencoded", b"csrf_token=%ff%fe"),
    ("application/x-www-form-urlencoded", b"\xff\xfe=\xed\xa0\x80"),
    ("application/x-www-form-urlencoded", b"csrf_token=" + b"x" * 10_000),
    ("multipart/form-data; boundary=x", b"--x\r\ngarbage"),
    ("multipart/form-data", b"no boundary at all"),
    ("application/json", b'{"csrf_token": 1}'),
])
async def test_a_mangled_sign_out_form_is_refused_and_signs_nobody_out(
        base_url: str, staff: Staff, content_type: str, raw: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    mod = await staff()
    async with mod.session.post(base_url + "/logout", data=raw,
                                headers={"Content-Type": content_type},
                                allow_redirects=False) as resp:
        body = await resp.json()
        assert (resp.status, body["error"]) == (403, "csrf_failed")
    assert (await mod.request("GET", "/api/session"))[0] == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
