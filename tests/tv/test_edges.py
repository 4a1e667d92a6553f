"""The video's other edges: feed tokens and their command, the contributors'
socket (tally, cues, status), the control room's feeds, snapshots and the page.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import socketio
from aiohttp.test_utils import TestServer

from server import keys
from server.auth import Role
from server.settings import Settings
from tests.fakes import FakeClock
from tests.helpers import PASSWORD, Listener
from tests.helpers import test_settings as settings_for
from tests.server.test_auth import config_with_database, run_py
from tests.tv.peers import COLOURS, colour_name
from tests.tv.test_protocol import SMALL_VIDEO, Publisher, Viewer, closing, send

PARIS = ZoneInfo("Europe/Paris")
FEED_FIELDS = {"feed", "state", "width", "height", "fps", "kbps", "packet_loss",
               "last_frame_age_ms"}
FEEDS = {"afrique", "amerique-du-nord", "amerique-du-sud", "asie", "europe", "oceanie", "studio"}


def paris(hh: int, mm: int) -> datetime:
    return datetime(2027, 5, 9, hh, mm, tzinfo=PARIS).astimezone(UTC)


class Contributor(Listener):
    """A contributor page's socket: its feed's token as ``auth``."""

    @classmethod
    async def join(cls, base: str, auth: dict[str, Any]) -> Contributor:
        client = socketio.AsyncClient(reconnection=False)
        contributor = cls(client, "/contribute")
        for name in ("programme", "tally", "cue", "feed_status"):
            queue: asyncio.Queue[Any] = asyncio.Queue()
            contributor.queues[name] = queue
            client.on(name, queue.put_nowait, namespace="/contribute")
        await client.connect(base, namespaces=["/contribute"], transports=["websocket"],
                             auth=auth, wait_timeout=5)
        return contributor


Join = Callable[..., Awaitable[Contributor]]


@pytest.fixture
async def join() -> AsyncIterator[Join]:
    opened: list[Listener] = []

    async def connect(base: str, auth: dict[str, Any]) -> Contributor:
        contributor = await Contributor.join(base, auth)
        opened.append(contributor)
        return contributor

    yield connect
    for item in opened:
        await item.close()


@pytest.fixture
async def control(base_url: str) -> AsyncIterator[Callable[[str], Awaitable[Listener]]]:
    opened: list[Listener] = []

    async def connect(cookies: str) -> Listener:
        listener = await Listener.connect(base_url, "/control", cookies,
                                          events=("programme", "feeds"))
        opened.append(listener)
        return listener

    yield connect
    for item in opened:
        await item.close()


async def token_for(server: TestServer, feed: str) -> str:
    value: str = await server.app[keys.FEED_TOKENS].get_or_create(feed)
    return value


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 8.0) -> None:
    """Poll ``check`` every 0.1 s until it holds; AssertionError after ``within`` s."""
    for _ in range(int(within * 10)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"still not true after {within} s")


def feed_state(server: TestServer, feed: str) -> str:
    return next(s.state.value for s in server.app[keys.TV].feed_stats() if s.feed == feed)


# --- feed tokens -----------------------------------------------------------------------

async def test_the_feed_token_command_prints_creates_and_rotates(tmp_path, start_server):
    config = config_with_database(tmp_path, tmp_path / "show.sqlite3")

    code, out, err = await run_py("feed-token", "afrique", "--config", str(config))
    assert code == 0, err
    first = out.strip()
    assert len(first) >= 43 and "\n" not in first
    code, out, _ = await run_py("feed-token", "afrique", "--config", str(config))
    assert (code, out.strip()) == (0, first)  # printable again: the same token
    code, out, _ = await run_py("--config", str(config), "feed-token", "afrique", "--rotate")
    rotated = out.strip()
    assert code == 0 and rotated != first and len(rotated) >= 43
    code, out, err = await run_py("feed-token", "mars", "--config", str(config))
    assert code == 2 and out == "" and "mars" in err

    server = await start_server(settings_for(
        tmp_path, database_url=f"sqlite:///{tmp_path / 'show.sqlite3'}", video=SMALL_VIDEO))
    tokens = server.app[keys.FEED_TOKENS]
    assert await tokens.verify("afrique", rotated)
    assert not await tokens.verify("afrique", first)
    assert not await tokens.verify("europe", rotated)
    assert not await tokens.verify("europe", "")


async def test_rotating_a_token_ends_the_session_it_let_in(tmp_path, start_server, join):
    database = tmp_path / "show.sqlite3"
    config = config_with_database(tmp_path, database)
    server = await start_server(settings_for(tmp_path, database_url=f"sqlite:///{database}",
                                             video=SMALL_VIDEO))
    base = str(server.make_url("")).rstrip("/")
    code, out, err = await run_py("feed-token", "afrique", "--config", str(config))
    assert code == 0, err
    old = out.strip()
    site = await join(base, {"feed": "afrique", "token": old})  # the contributor's page
    revoked: asyncio.Queue[Any] = asyncio.Queue()
    site.client.on("revoked", revoked.put_nowait, namespace="/contribute")
    other = await join(base, {"feed": "europe", "token": await token_for(server, "europe")})
    publisher = await Publisher.start(base, "afrique", old)
    async with closing(publisher):
        await eventually(lambda: _is(server, "afrique", "live"))

        code, out, err = await run_py("feed-token", "afrique", "--rotate", "--config",
                                      str(config))
        assert code == 0, err
        new = out.strip()

        await eventually(lambda: _is(server, "afrique", "offline"), within=6)

        async def cut_off() -> bool:  # ended by the server, not by a DELETE
            return publisher.pc.connectionState == "closed"

        await eventually(cut_off, within=5)
        status, _, _ = await send(base, "DELETE", publisher.location, new)
        assert status == 200  # ended already: answered as on a live one (CONTRACT.md)
        status, _, _ = await send(base, "DELETE", publisher.location, old)
        assert status == 401

    # The page that came in with the old token is told, then let go; another site's stays.
    assert await asyncio.wait_for(revoked.get(), 3) == {"feed": "afrique"}
    async def let_go() -> bool:
        return not site.client.connected

    await eventually(let_go, within=3)
    assert other.client.connected
    with pytest.raises(socketio.exceptions.ConnectionError):
        await join(base, {"feed": "afrique", "token": old})
    fresh = await join(base, {"feed": "afrique", "token": new})
    assert fresh.client.connected


async def _is(server: TestServer, feed: str, state: str) -> bool:
    return feed_state(server, feed) == state


# --- the contributors' socket ----------------------------------------------------

async def test_the_contribute_socket_wants_the_feeds_token(server, base_url, join):
    token = await token_for(server, "afrique")
    for auth in ({}, {"feed": "afrique"}, {"feed": "afrique", "token": "nope"},
                 {"feed": "europe", "token": token}, {"feed": "mars", "token": token},
                 {"token": "nope"}):
        with pytest.raises(socketio.exceptions.ConnectionError):
            await join(base_url, auth)

    by_feed = await join(base_url, {"feed": "afrique", "token": token})
    by_token = await join(base_url, {"token": token})  # the token says which feed
    for contributor in (by_feed, by_token):
        assert (await contributor.next("programme"))["state"] == "before"
        assert await contributor.next("tally") == {"feed": "afrique", "state": "off"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path, video=SMALL_VIDEO)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(paris(13, 0))


@pytest.fixture
async def show(start_server, settings: Settings, clock: FakeClock) -> TestServer:
    return await start_server(settings, clock=clock)


async def test_tally_follows_the_directors_takes(show, http, join):
    base = str(show.make_url("")).rstrip("/")
    await show.app[keys.AUTH].add_user("paul", PASSWORD, Role.DIRECTOR)
    director = await http(base)
    await director.sign_in("paul")
    sites = {feed: await join(base, {"feed": feed, "token": await token_for(show, feed)})
             for feed in ("studio", "afrique", "asie")}

    async def lights() -> dict[str, str]:
        return {feed: (await c.next("tally"))["state"] for feed, c in sites.items()}

    # Before the show the opening (studio) is next.
    assert await lights() == {"studio": "next", "afrique": "off", "asie": "off"}

    async def take(path: str, on_air: str | None) -> None:
        status, body, _ = await director.request("POST", path)
        assert status == 200 and body["on_air"] == on_air, body

    await take("/api/programme/start", "ouverture")
    tally = await sites["studio"].next("tally")
    assert tally == {"feed": "studio", "state": "on_air"}
    await take("/api/programme/take", "debat-cooperatives")  # studio again, Afrique next
    assert await sites["afrique"].next("tally") == {"feed": "afrique", "state": "next"}
    await take("/api/programme/take", "duplex-afrique")
    assert await sites["afrique"].next("tally") == {"feed": "afrique", "state": "on_air"}
    assert await sites["asie"].next("tally") == {"feed": "asie", "state": "next"}
    assert await sites["studio"].next("tally") == {"feed": "studio", "state": "off"}
    await take("/api/programme/end", None)
    assert await sites["afrique"].next("tally") == {"feed": "afrique", "state": "off"}
    assert await sites["asie"].next("tally") == {"feed": "asie", "state": "off"}
    # A change that moves no light sends none.
    await asyncio.sleep(0.2)
    assert sites["studio"].drain("tally") == []
    # Contributors follow the programme itself as well.
    assert sites["studio"].drain("programme")[-1]["state"] == "ended"


async def test_a_cue_reaches_that_sites_contributor_only(server, base_url, staff, join):
    director = await staff("paul", Role.DIRECTOR)
    afrique = await join(base_url, {"feed": "afrique", "token": await token_for(server, "afrique")})
    europe = await join(base_url, {"feed": "europe", "token": await token_for(server, "europe")})

    status, body, _ = await director.request("POST", "/api/feeds/afrique/cue",
                                             {"text": "30 secondes avant l'antenne"})

    assert status == 200
    assert (body["feed"], body["text"]) == ("afrique", "30 secondes avant l'antenne")
    assert body["sent_at"].endswith("Z")
    cue = await afrique.next("cue")
    assert (cue["text"], cue["sent_at"]) == (body["text"], body["sent_at"])
    with pytest.raises(TimeoutError):
        await europe.next("cue", within=0.5)


async def test_cues_are_checked(server, base_url, staff, http):
    director = await staff("paul", Role.DIRECTOR)
    for text, code in (("", "cue_text_required"), ("   ", "cue_text_required"),
                       (None, "cue_text_required"), ("x" * 201, "cue_text_too_long"),
                       ("antenne\x07", "cue_text_control_characters"),
                       ("\u202eenrieta", "cue_text_control_characters")):
        status, body, _ = await director.request("POST", "/api/feeds/afrique/cue",
                                                 {"text": text})
        assert (status, body["error"]) == (422, code), text
    status, body, _ = await director.request("POST", "/api/feeds/mars/cue", {"text": "go"})
    assert (status, body["error"]) == (404, "unknown_feed")
    status, body, _ = await director.request("POST", "/api/feeds/afrique/cue", {"text": "go"},
                                             headers={"X-CSRF-Token": "wrong"})
    assert (status, body["error"]) == (403, "csrf_failed")
    moderator = await staff("marie", Role.MODERATOR)
    status, _, _ = await moderator.request("POST", "/api/feeds/afrique/cue", {"text": "go"})
    assert status == 403
    anonymous = await http(base_url)
    status, _, _ = await anonymous.request("POST", "/api/feeds/afrique/cue", {"text": "go"})
    assert status == 401


# --- the control room ----------------------------------------------------------

async def test_feeds_need_a_director(server, base_url, staff, http):
    anonymous = await http(base_url)
    assert (await anonymous.request("GET", "/api/feeds"))[0] == 401
    assert (await anonymous.request("GET", "/api/feeds/afrique/snapshot.jpg"))[0] == 401
    moderator = await staff("marie", Role.MODERATOR)
    assert (await moderator.request("GET", "/api/feeds"))[0] == 403
    assert (await moderator.request("GET", "/api/feeds/afrique/snapshot.jpg"))[0] == 403
    director = await staff("paul", Role.DIRECTOR)
    status, body, _ = await director.request("GET", "/api/feeds")
    assert status == 200
    assert {item["feed"] for item in body} == FEEDS
    assert all(set(item) >= FEED_FIELDS and item["state"] == "offline" for item in body)
    status, body, _ = await director.request("GET", "/api/feeds/afrique/snapshot.jpg")
    assert (status, body["error"]) == (404, "no_frame")
    status, body, _ = await director.request("GET", "/api/feeds/mars/snapshot.jpg")
    assert (status, body["error"]) == (404, "unknown_feed")


async def test_a_live_feed_shows_in_the_control_room_and_on_its_contributor_page(
        server, base_url, staff, control, join):
    director = await staff("paul", Role.DIRECTOR)
    room = await control(director.cookie_header())
    first = await room.next("feeds")  # on connect
    assert {item["feed"] for item in first} == FEEDS
    loop = asyncio.get_running_loop()
    start = loop.time()
    await room.next("feeds", within=2.5)
    await room.next("feeds", within=2.5)
    assert loop.time() - start < 3.5  # about one a second

    token = await token_for(server, "afrique")
    site = await join(base_url, {"feed": "afrique", "token": token})
    publisher = await Publisher.start(base_url, "afrique", token)
    async with closing(publisher):
        feeds = await room.next("feeds", within=10, where=lambda body: any(
            f["feed"] == "afrique" and f["state"] == "live" and f["fps"] for f in body))
        afrique = next(f for f in feeds if f["feed"] == "afrique")
        assert set(afrique) >= FEED_FIELDS
        assert (afrique["width"], afrique["height"]) == (320, 240)
        assert afrique["fps"] > 0
        status = await site.next("feed_status", within=10,
                                 where=lambda s: s["state"] == "live" and s["fps"])
        assert status["feed"] == "afrique"
        assert set(status) >= {"feed", "state", "width", "height", "fps"}
        assert (status["width"], status["height"]) == (320, 240)

        # The latest frame, as a JPEG.
        async def snapshot() -> bool:
            got, body, resp = await director.request("GET", "/api/feeds/afrique/snapshot.jpg")
            return got == 200 and resp.content_type == "image/jpeg" and body[:2] == b"\xff\xd8"

        await eventually(snapshot)
        status, metrics, _ = await director.request("GET", "/metrics")
        assert status == 200
        assert "tv_feeds_live 1.0" in metrics.decode()
        assert 'tv_feed_fps{feed="afrique"}' in metrics.decode()


# --- the contributor's page -------------------------------------------------------

async def test_the_contributor_page_needs_the_feeds_token(server, base_url, http):
    token = await token_for(server, "afrique")
    browser = await http(base_url)

    status, html, resp = await browser.request("GET", f"/contribute/afrique?token={token}")
    assert status == 200 and resp.content_type == "text/html"
    assert token in html.decode()
    assert resp.headers["Referrer-Policy"] == "no-referrer"

    for query in ("", "?token=wrong", f"?token={token}x"):
        status, html, _ = await browser.request("GET", f"/contribute/afrique{query}")
        assert status == 401, query
        assert token not in html.decode()
    status, body, _ = await browser.request("GET", f"/contribute/mars?token={token}")
    assert (status, body["error"]) == (404, "unknown_feed")


# --- the programme video follows the running order -------------------------------------

async def sees(viewer: Viewer, colour: str, within: float = 5.0) -> None:
    def seen() -> str:
        frame = viewer.last
        if frame is None:
            return "none"
        image = frame.to_image()
        return colour_name(image.getpixel((frame.width // 10, frame.height // 10)))

    async def check() -> bool:
        return seen() == colour

    await eventually(check, within)


async def test_the_programme_follows_the_takes_and_a_restart(start_server, settings, clock,
                                                              http):
    first = await start_server(settings, clock=clock)
    base = str(first.make_url("")).rstrip("/")
    await first.app[keys.AUTH].add_user("paul", PASSWORD, Role.DIRECTOR)
    director = await http(base)
    await director.sign_in("paul")
    token = await token_for(first, "afrique")
    publisher = await Publisher.start(base, "afrique", token, COLOURS["red"])
    viewer = await Viewer.start(base)
    async with closing(viewer, publisher):
        await sees(viewer, "slate")  # before the show
        status, _, _ = await director.request("POST", "/api/programme/take/duplex-afrique")
        assert status == 200
        await sees(viewer, "red")
        status, _, _ = await director.request("POST", "/api/programme/take/duplex-asie")
        assert status == 200
        await sees(viewer, "slate")  # Asia sends nothing
        status, _, _ = await director.request("POST", "/api/programme/take/duplex-afrique")
        assert status == 200
        await sees(viewer, "red")
        # What an operator reads: one viewer, packets flowing to it, none dropped.
        status, metrics, _ = await director.request("GET", "/metrics")
        text = metrics.decode()
        assert "tv_whep_viewers 1.0" in text
        sent = re.search(r'^tv_whep_packets_total\{outcome="sent"\} (\S+)$', text, re.M)
        assert sent and float(sent.group(1)) > 0, text
        assert 'tv_whep_packets_total{outcome="dropped"} 0.0' in text
    await first.close()

    # After a restart nothing is announced: the video still shows what is on air.
    again = await start_server(settings, clock=clock)
    base = str(again.make_url("")).rstrip("/")
    publisher = await Publisher.start(base, "afrique", token, COLOURS["red"])
    viewer = await Viewer.start(base)
    async with closing(viewer, publisher):
        await sees(viewer, "red")
