"""Every public route and socket against generated hostile input (issue 8).

The assertion is always the same: a 4xx with the JSON error shape (or a
success that stored nothing unfit), no traceback in the log, and a viewer and
a moderator who arrive afterwards are served as usual.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import socketio
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import keys
from server.auth import Role
from tests.conftest import StartServer, add_staff
from tests.helpers import PASSWORD, Http, Listener, raw_http
from tests.helpers import test_settings as settings_for

# --- what a stranger sends -------------------------------------------------------

NASTY_TEXT = st.sampled_from([
    "\ud800", "a\udfffb", "\x00", "\u202e evil", "\ufeff", "\U0010ffff", "😀" * 300,
    "x" * 9000, "", " ", "\n" * 50, "<script>alert(1)</script>", "'; DROP TABLE questions;--",
    "%00", "../../etc/passwd", "{{7*7}}", "=cmd|' /C calc'!A0",
])
TEXT = st.one_of(NASTY_TEXT, st.text(max_size=600),
                 st.text(alphabet=st.characters(), max_size=40))
SCALAR = st.one_of(st.none(), st.booleans(), TEXT,
                   st.integers(min_value=-(2**70), max_value=2**70),
                   st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from([10**300, -(10**300), 2**31, 2**63, -1, 0]))
JSON = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
RAW_JSON = st.sampled_from([
    b"9" * 5000, b"[" * 30_000, b'{"text": NaN}', b'{"text": Infinity}', b"\xff\xfe\x00",
    b'{"a": "\\ud800"}', b'{"theme": ' + b"1" * 4400 + b"}", b"", b"null", b"[]", b'"x"',
    b'{"theme": "growth", "text": "ok"' + b" " * 60_000 + b"}",
])


def question_body() -> st.SearchStrategy[Any]:
    fields = st.fixed_dictionaries({}, optional={
        "theme": st.one_of(st.sampled_from(["growth", "fair-price", "cooperatives"]), JSON),
        "text": st.one_of(TEXT, JSON), "author": st.one_of(TEXT, JSON),
        "segment_id": st.one_of(TEXT, JSON)})
    return st.one_of(fields, JSON)


PATH_PIECE = st.one_of(st.sampled_from(["0", "-1", "1e9", "99999999999999999999", "%00",
                                        "%ff", "..", "1;2", "NaN", "%F0%9F%98%80"]),
                       st.text(min_size=1, max_size=30).map(lambda s: quote(s, safe="")))
HEADER_VALUE = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=200),
    st.sampled_from(["x" * 8000, "null", "https://evil.example", "' OR 1=1", "Bearer ",
                     "Bearer " + "a" * 5000, "tv_session=; tv_viewer=" + "A" * 300]))

RAW_HEADER_BYTES = [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"caf\xe9", b"\x80" * 100]


# --- the server and its bystanders ------------------------------------------------


@pytest.fixture
async def target(start_server: StartServer,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TestServer]:
    tmp = tmp_path_factory.mktemp("hostile")
    server = await start_server(settings_for(
        tmp, qa={"rate_per_viewer": {"count": 100_000, "window_s": 600},
                 "rate_per_ip": {"count": 100_000, "window_s": 600},
                 "votes_per_ip": {"count": 100_000, "window_s": 600}},
        auth={"login_failures": {"count": 100_000, "window_s": 900}}))
    await add_staff(server.app, "marie", Role.ADMIN)
    yield server


def _base(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


async def _check(resp: aiohttp.ClientResponse, what: Any) -> None:
    raw = await resp.read()
    assert resp.status < 500, (what, resp.status, raw[:300])
    if resp.status >= 400 and resp.content_type == "application/json":
        body = json.loads(raw)
        assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), what
    elif resp.status >= 400:
        pytest.fail(f"{what}: {resp.status} answered {resp.content_type}, not the JSON shape")


async def _bystanders_are_served(base: str) -> None:
    """A viewer asks and a moderator hears of it, as if nothing had happened."""
    staff = await Http.open(base)
    viewer = await Http.open(base)
    try:
        await staff.sign_in("marie", PASSWORD)
        listener = await Listener.connect(base, "/moderation", staff.cookie_header())
        try:
            status, q, _ = await viewer.request("POST", "/api/questions", {
                "theme": "growth", "text": "Une question ordinaire, après la tempête ?"})
            assert status == 201, q
            pushed = await listener.next("question", where=lambda x: x["id"] == q["id"])
            assert pushed["text"] == q["text"]
        finally:
            await listener.close()
    finally:
        await staff.close()
        await viewer.close()


async def _stored_questions_are_clean(server: TestServer) -> None:
    for q in await server.app[keys.QUESTIONS].export():
        q.text.encode("utf-8")  # a lone surrogate would raise here
        assert 0 < len(q.text) <= 500 and "\x00" not in q.text
        assert q.author is None or len(q.author) <= 60


async def _as_staff(target: TestServer, method: str, path: str, what: Any,
                    headers: dict[str, str] | None = None, **kwargs: Any) -> None:
    """Send a request as the signed-in admin, with the CSRF token, and check the answer."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        staff = Http(_base(target), client)
        await staff.sign_in("marie", PASSWORD)
        async with client.request(method, _base(target) + path, headers={
                **(headers or {}), "X-CSRF-Token": staff.csrf or ""}, **kwargs) as resp:
            await _check(resp, what)


FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


# --- HTTP ----------------------------------------------------------------------


@FUZZ
@given(body=question_body())
async def test_questions_take_any_json(target: TestServer, body: Any,
                                       caplog: pytest.LogCaptureFixture) -> None:
    async with aiohttp.ClientSession() as client, client.post(
            _base(target) + "/api/questions", json=body) as resp:
        await _check(resp, body)
    _no_tracebacks(caplog)


@FUZZ
@given(raw=RAW_JSON, route=st.sampled_from([
    ("POST", "/api/questions"), ("POST", "/api/session"), ("PATCH", "/api/questions/1"),
    ("PUT", "/api/on-air"), ("POST", "/api/programme/extend"), ("POST", "/api/questions/1/merge"),
    ("POST", "/api/feeds/europe/cue")]))
async def test_raw_bodies_on_every_json_route(target: TestServer, raw: bytes,
                                              route: tuple[str, str],
                                              caplog: pytest.LogCaptureFixture) -> None:
    method, path = route
    await _as_staff(target, method, path, (route, raw[:80]), data=raw,
                    headers={"Content-Type": "application/json"})
    _no_tracebacks(caplog)


@FUZZ
@given(body=JSON, piece=PATH_PIECE, route=st.sampled_from([
    ("PATCH", "/api/questions/{}"), ("POST", "/api/questions/{}/merge"), ("PUT", "/api/on-air"),
    ("POST", "/api/programme/extend"), ("POST", "/api/programme/take/{}"),
    ("POST", "/api/feeds/{}/cue"), ("POST", "/api/session")]))
async def test_staff_routes_take_any_json(target: TestServer, body: Any, piece: str,
                                          route: tuple[str, str],
                                          caplog: pytest.LogCaptureFixture) -> None:
    method, path = route
    await _as_staff(target, method, path.format(piece), (route, piece, body), json=body)
    _no_tracebacks(caplog)


# aiohttp refuses a request line over 8,190 bytes itself, with a plain-text 400,
# before any handler runs (test_a_huge_url_is_refused covers it).
QUERY_TEXT = TEXT.filter(lambda s: len(quote(s.encode("utf-8", "replace"))) < 2000)


@FUZZ
@given(piece=PATH_PIECE, query=st.dictionaries(
    st.sampled_from(["theme", "status", "sort", "lang", "next", "token"]), QUERY_TEXT,
    max_size=3),
    route=st.sampled_from([
        ("GET", "/api/questions"), ("GET", "/api/questions/{}"), ("POST", "/api/questions/{}/vote"),
        ("DELETE", "/api/questions/{}/vote"), ("GET", "/login"), ("GET", "/contribute/{}"),
        ("GET", "/api/programme"), ("GET", "/programme.ics"), ("DELETE", "/whep/sessions/{}"),
        ("DELETE", "/whip/europe/sessions/{}"), ("GET", "/api/on-air"), ("GET", "/")]))
async def test_paths_and_queries(target: TestServer, piece: str, query: dict[str, str],
                                 route: tuple[str, str],
                                 caplog: pytest.LogCaptureFixture) -> None:
    method, path = route
    query = {k: v.encode("utf-8", "replace").decode() for k, v in query.items()}
    async with aiohttp.ClientSession() as client, client.request(
            method, _base(target) + path.format(piece), params=query,
            allow_redirects=False) as resp:
        if resp.content_type == "text/html":
            assert resp.status in (200, 302, 303), (route, piece, query, resp.status)
        else:
            await _check(resp, (route, piece, query))
    _no_tracebacks(caplog)


@FUZZ
@given(name=st.sampled_from(["Cookie", "Authorization", "Origin", "X-Forwarded-For",
                             "Accept-Language", "Sec-Fetch-Site", "Content-Type"]),
       value=HEADER_VALUE, route=st.sampled_from([
           ("POST", "/api/questions"), ("GET", "/api/session"), ("GET", "/moderation"),
           ("POST", "/whip/europe"), ("POST", "/whep"), ("GET", "/api/questions/mine"),
           ("DELETE", "/api/session"), ("POST", "/api/session")]))
async def test_headers(target: TestServer, name: str, value: str, route: tuple[str, str],
                       caplog: pytest.LogCaptureFixture) -> None:
    method, path = route
    body = b'{"theme": "growth", "text": "Une question"}'
    headers = {"Content-Type": "application/json", name: value}
    async with aiohttp.ClientSession() as client, client.request(
            method, _base(target) + path, data=body, headers=headers,
            allow_redirects=False) as resp:
        if resp.content_type == "text/html":
            assert resp.status in (200, 302), (name, value[:80], resp.status)
        else:
            await _check(resp, (name, value[:80], route))
    _no_tracebacks(caplog)


async def test_a_huge_url_is_refused(target: TestServer,
                                     caplog: pytest.LogCaptureFixture) -> None:
    async with aiohttp.ClientSession() as client, client.get(
            _base(target) + "/api/questions", params={"theme": "x" * 9000}) as resp:
        assert resp.status == 400
    _no_tracebacks(caplog)
    assert any("malformed HTTP request refused" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("header", [b"Authorization: Bearer ", b"Cookie: tv_session=",
                                    b"Cookie: tv_viewer=", b"Cookie: lang=",
                                    b"X-Forwarded-For: ", b"Origin: https://",
                                    b"Accept-Language: "])
@pytest.mark.parametrize("path", [b"POST /whip/europe", b"GET /api/session",
                                  b"POST /api/questions", b"GET /moderation",
                                  b"GET /api/questions/mine", b"DELETE /api/session"])
async def test_header_bytes_that_are_not_utf8(target: TestServer, header: bytes, path: bytes,
                                              caplog: pytest.LogCaptureFixture) -> None:
    for junk in RAW_HEADER_BYTES:
        body = b'{"theme": "growth", "text": "Bonjour"}'
        content_type = b"application/sdp" if b"whip" in path else b"application/json"
        request = (path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + junk + b"\r\n"
                   b"Content-Type: " + content_type + b"\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        status, _, raw = await raw_http(target.port, request)
        assert status < 500, (path, header, junk, raw[:200])
    _no_tracebacks(caplog)


# --- Socket.IO -----------------------------------------------------------------


COOKIE = st.builds("{}={}".format, st.sampled_from(["tv_session", "tv_viewer", "lang", "x"]),
                   st.one_of(NASTY_TEXT, st.text(max_size=80)).map(
                       lambda v: "".join(c for c in v if 0x20 < ord(c) < 0x7f and c not in ";,")))


@FUZZ
@given(auth=JSON, namespace=st.sampled_from(["/", "/moderation", "/control", "/contribute"]),
       cookie=COOKIE)
async def test_socket_connections_with_any_auth_and_cookie(
        target: TestServer, auth: Any, namespace: str, cookie: str,
        caplog: pytest.LogCaptureFixture) -> None:
    client = socketio.AsyncClient(reconnection=False)
    try:
        await client.connect(_base(target), namespaces=[namespace], transports=["websocket"],
                             auth=auth, headers={"Cookie": cookie}, wait_timeout=5)
        # Let in: only the public namespace takes strangers. Events it does not
        # know are ignored, whatever they carry.
        assert namespace == "/", (namespace, auth, cookie)
        await client.emit("question", auth, namespace=namespace)
        await client.emit("on_air", {"question_id": 1}, namespace=namespace)
    except socketio.exceptions.ConnectionError:
        # Strangers are refused only from staff rooms, and a CONNECT whose
        # payload is not an object breaks the protocol itself.
        assert namespace != "/" or not isinstance(auth, dict | None), (auth, cookie)
    finally:
        await client.disconnect()
    _no_tracebacks(caplog)


@pytest.mark.parametrize("frames", [
    ["40", "42[", '42["x", ' + "[" * 5000, "4" + "9" * 5000, '42["question", "\\ud800"]',
     "40/moderation,{}", "40/contribute," + '{"token": "\\ud800"}',
     '40/contribute,{"token": ["a"]}', "41/nowhere,", "\x00\xff", "6", "2probe" * 1000],
])
async def test_malformed_socket_frames(target: TestServer, frames: list[str],
                                       caplog: pytest.LogCaptureFixture) -> None:
    async with aiohttp.ClientSession() as client, client.ws_connect(
            _base(target) + "/socket.io/?EIO=4&transport=websocket",
            timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
        await ws.receive(timeout=5)  # the Engine.IO open packet
        for frame in frames:
            if ws.closed:
                break
            await ws.send_str(frame)
    _no_tracebacks(caplog)
    await _bystanders_are_served(_base(target))


async def test_after_all_that_the_bystanders_are_served(
        target: TestServer, caplog: pytest.LogCaptureFixture) -> None:
    """Hostile traffic from many clients at once, then an ordinary viewer and moderator."""
    base = _base(target)

    async def stranger(n: int) -> None:
        async with aiohttp.ClientSession() as client:
            raw = [b"9" * 6000, b"[" * 30_000, b'{"theme":"growth","text":"\\ud800"}',
                   b'{"theme": "growth", "text": "' + b"x" * 2000 + b'"}'][n % 4]
            async with client.post(base + "/api/questions", data=raw,
                                   headers={"Content-Type": "application/json"}) as resp:
                await _check(resp, raw[:40])

    await asyncio.gather(*(stranger(n) for n in range(60)))
    await _bystanders_are_served(base)
    await _stored_questions_are_clean(target)
    _no_tracebacks(caplog)

