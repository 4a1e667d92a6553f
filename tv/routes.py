"""HTTP adapters for the video: WHIP (contributors), WHEP (viewers), the feeds (directors).

WHIP and WHEP follow RFC 9725 and the WHEP draft: an SDP offer POSTed as
``application/sdp`` is answered 201 with the SDP answer and the session's
``Location``; DELETE on that location ends it. Trickle ICE and ICE restarts
(PATCH) are not supported, which both allow: the offer must carry its
candidates. The endpoints answer CORS, for browser publishers and players
served from other origins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC

from aiohttp import web
from multidict import CIMultiDict

from server import keys
from server.auth import Role
from server.http import (
    ApiError,
    Handler,
    client_ip,
    json_response,
    read_json,
    require_staff,
    retry_later,
)
from server.pages import _render
from tv.errors import (
    InvalidSdp,
    SessionNotFound,
    TooManySessions,
    TvError,
    UnknownFeed,
    UnsupportedMedia,
    ViewersFull,
)
from tv.events import FeedCued
from tv.namespace import CONTRIBUTE
from tv.service import TvService
from tv.store import same_token, well_formed_token

log = logging.getLogger("tv.video")

routes = web.RouteTableDef()

SDP = "application/sdp"
MAX_SDP_BYTES = 64 * 1024
# When the process has all the viewers it may serve, or the viewer's address
# all the sessions it may hold, a new one is told to come back in this many
# seconds (players retry by themselves).
FULL_RETRY_S = 15
CUE_MAX = 200
# How often the server looks for rotated tokens (run.py feed-token --rotate
# runs in another process and only changes the database).
ROTATION_CHECK_S = 2.0

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match, X-CSRF-Token",
    "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Post, Retry-After, "
                                     "WWW-Authenticate",
    "Access-Control-Max-Age": "86400",
}


def _is_webrtc_path(path: str) -> bool:
    return path.startswith("/whip/") or path == "/whep" or path.startswith("/whep/")


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS on every WHIP/WHEP answer, errors included (placed outside the errors one)."""
    response = await handler(request)
    if _is_webrtc_path(request.path) and not response.prepared:
        response.headers.update(_CORS)
    return response


# --- which token let each live publisher in --------------------------------------

@dataclass(frozen=True)
class _Publisher:
    session_id: str
    token: str


class Publishers:
    """The token that let in each feed's live WHIP session and each contributor's
    page (its /contribute socket), in this process.

    Rotating a feed's token must end what the old one let in; the rotation is
    made by another process, so a loop compares these with the database.
    """

    def __init__(self) -> None:
        self._live: dict[str, _Publisher] = {}
        self._sockets: dict[str, tuple[str, str]] = {}

    def __bool__(self) -> bool:
        return bool(self._live) or bool(self._sockets)

    def socket_joined(self, sid: str, feed: str, token: str) -> None:
        self._sockets[sid] = (feed, token)

    def socket_left(self, sid: str) -> None:
        self._sockets.pop(sid, None)

    def stale_sockets(self, current: dict[str, str]) -> list[tuple[str, str]]:
        """(sid, feed) of the contributor sockets whose token is no longer their feed's."""
        gone = [(sid, feed) for sid, (feed, token) in self._sockets.items()
                if not same_token(current.get(feed, ""), token)]
        for sid, _ in gone:
            del self._sockets[sid]
        return gone

    def authorised(self, feed: str, session_id: str, token: str) -> None:
        self._live[feed] = _Publisher(session_id, token)

    def ended(self, feed: str, session_id: str) -> None:
        if (current := self._live.get(feed)) is not None and current.session_id == session_id:
            del self._live[feed]

    def stale(self, current: dict[str, str]) -> list[str]:
        """Feeds whose session came in with a token that is no longer the feed's."""
        gone = [feed for feed, pub in self._live.items()
                if not same_token(current.get(feed, ""), pub.token)]
        for feed in gone:
            del self._live[feed]
        return gone


async def end_rotated_sessions(app: web.Application) -> list[str]:
    """End every live session whose token was rotated; the feeds ended."""
    publishers = app[keys.PUBLISHERS]
    if not publishers:
        return []
    current = await app[keys.FEED_TOKENS].current_all([f.id for f in app[keys.SETTINGS].feeds])
    stale = publishers.stale(current)
    for feed in stale:
        log.info("feed token rotated: ending its live session", extra={"feed": feed})
        await app[keys.TV].end_feed(feed)
    for sid, feed in publishers.stale_sockets(current):
        log.info("feed token rotated: closing a contributor page's link",
                 extra={"feed": feed})
        sio = app[keys.SIO]
        await sio.emit("revoked", {"feed": feed}, to=sid, namespace=CONTRIBUTE)
        await sio.disconnect(sid, namespace=CONTRIBUTE)
    return stale


async def watch_rotations(app: web.Application) -> None:
    while True:
        await asyncio.sleep(ROTATION_CHECK_S)
        try:
            await end_rotated_sessions(app)
        except Exception:
            # The database may be away for a moment; try again next round.
            log.exception("checking the feed tokens failed")


async def rotation_watcher(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the loop above, cancelled and awaited at shutdown."""
    task = asyncio.create_task(watch_rotations(app), name="feed-token-watcher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- helpers -------------------------------------------------------------------

@asynccontextmanager
async def _tv_errors() -> AsyncIterator[None]:
    try:
        yield
    except UnknownFeed as e:
        raise ApiError(404, "unknown_feed") from e
    except InvalidSdp as e:
        raise ApiError(400, "invalid_sdp") from e
    except UnsupportedMedia as e:
        raise ApiError(422, "unsupported_media") from e
    except SessionNotFound as e:
        raise ApiError(404, "session_not_found") from e
    except ViewersFull as e:
        log.warning("viewer turned away: this process is full", extra={"reason": str(e)})
        raise retry_later(503, "viewers_full", FULL_RETRY_S) from e
    except TooManySessions as e:
        log.warning("viewer turned away: its address holds its share of the places",
                    extra={"reason": str(e)})
        raise retry_later(429, "too_many_sessions", FULL_RETRY_S) from e
    except TvError as e:
        raise ApiError(409, e.code) from e


def _tv(request: web.Request) -> TvService:
    tv = request.app.get(keys.TV)
    if tv is None:  # run.py --no-video: another process has the video
        raise ApiError(503, "video_elsewhere")
    return tv


def _feed(request: web.Request) -> str:
    feed = request.match_info["feed"]
    if request.app[keys.SETTINGS].feed(feed) is None:
        raise ApiError(404, "unknown_feed")
    return feed


def _require_sdp(request: web.Request) -> None:
    if request.content_type != SDP:
        raise ApiError(415, "sdp_required", headers={"Accept-Post": SDP})


def _bearer(request: web.Request) -> str | None:
    """The bearer token, if the header holds one that could be a feed's.

    aiohttp reads header bytes that are not UTF-8 as lone surrogates, which
    no token holds: refused here, before any comparison or database.
    """
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and well_formed_token(token) else None


async def _require_token(request: web.Request, feed: str) -> str:
    token = _bearer(request)
    if token is None or not await request.app[keys.FEED_TOKENS].verify(feed, token):
        raise ApiError(401, "invalid_token",
                       headers={"WWW-Authenticate": 'Bearer realm="whip", error="invalid_token"'})
    return token


async def _read_sdp(request: web.Request) -> str:
    if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
        raise ApiError(413, "request_too_large")
    raw = await request.content.read(MAX_SDP_BYTES + 1)
    if len(raw) > MAX_SDP_BYTES:
        raise ApiError(413, "request_too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, "invalid_sdp") from e
    if not text.strip():
        raise ApiError(400, "invalid_sdp")
    return text


def _links(request: web.Request) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for link in _tv(request).ice_servers_link_headers():
        headers.add("Link", link)
    return headers


def _created(request: web.Request, answer: str, location: str) -> web.Response:
    headers = _links(request)
    headers["Location"] = location
    headers["Cache-Control"] = "no-store"
    return web.Response(status=201, body=answer.encode("utf-8"), content_type=SDP,
                        headers=headers)


def _options(request: web.Request, accept_post: bool) -> web.Response:
    headers = _links(request) if accept_post else CIMultiDict()
    if accept_post:
        headers["Accept-Post"] = SDP
    return web.Response(status=204, headers=headers)


def _no_trickle() -> ApiError:
    return ApiError(405, "trickle_not_supported", headers={"Allow": "DELETE, OPTIONS"})


# --- WHIP: contributors publish ---------------------------------------------------

@routes.post("/whip/{feed}")
async def whip_publish(request: web.Request) -> web.Response:
    _tv(request)  # 503 at once in a process without video (--no-video)
    # An unknown feed first: no token can exist for it, so 401 would mislead.
    feed = _feed(request)
    _require_sdp(request)
    token = await _require_token(request, feed)
    offer = await _read_sdp(request)
    async with _tv_errors():
        answer, session_id = await _tv(request).publish(feed, offer)
    request.app[keys.PUBLISHERS].authorised(feed, session_id, token)
    log.info("feed published", extra={"feed": feed, "session_id": session_id,
                                      "ip": client_ip(request)})
    return _created(request, answer, f"/whip/{feed}/sessions/{session_id}")


@routes.delete("/whip/{feed}/sessions/{session_id}")
async def whip_unpublish(request: web.Request) -> web.Response:
    feed = _feed(request)
    await _require_token(request, feed)
    session_id = request.match_info["session_id"]
    async with _tv_errors():
        await _tv(request).unpublish(feed, session_id)
    request.app[keys.PUBLISHERS].ended(feed, session_id)
    return json_response({"status": "ended"})


@routes.patch("/whip/{feed}/sessions/{session_id}")
async def whip_patch(request: web.Request) -> web.Response:
    raise _no_trickle()


@routes.route("OPTIONS", "/whip/{feed}")
async def whip_options(request: web.Request) -> web.Response:
    _feed(request)
    return _options(request, accept_post=True)


@routes.route("OPTIONS", "/whip/{feed}/sessions/{session_id}")
async def whip_session_options(request: web.Request) -> web.Response:
    return _options(request, accept_post=False)


# --- WHEP: viewers watch -------------------------------------------------------

async def _watch(request: web.Request, feed: str | None,
                 origin: str | None = None) -> web.Response:
    offer = await _read_sdp(request)
    async with _tv_errors():
        answer, session_id = await _tv(request).watch(offer, feed, origin)
    return _created(request, answer, f"/whep/sessions/{session_id}")


@routes.post("/whep")
async def whep_programme(request: web.Request) -> web.Response:
    _tv(request)  # 503 at once in a process without video (--no-video)
    _require_sdp(request)
    origin = client_ip(request)  # an IPv6 client by its /64, as every limit counts it
    limit = request.app[keys.SETTINGS].video.whep_rate
    wait = await request.app[keys.LIMITER].hit(f"whep:{origin}", limit)
    if wait is not None:
        raise retry_later(429, "watch_rate_limited", wait, seconds=max(1, math.ceil(wait)))
    return await _watch(request, None, origin)


@routes.post("/whep/{feed}")
async def whep_feed(request: web.Request) -> web.Response:
    # A browser POST with the staff cookie: require_staff checks X-CSRF-Token.
    await require_staff(request, Role.MODERATOR)
    _tv(request)
    feed = _feed(request)
    _require_sdp(request)
    return await _watch(request, feed)


@routes.delete("/whep/sessions/{session_id}")
async def whep_stop(request: web.Request) -> web.Response:
    # The session id is an unguessable capability, as the Location is for WHIP.
    async with _tv_errors():
        await _tv(request).stop_watching(request.match_info["session_id"])
    return json_response({"status": "ended"})


@routes.patch("/whep/sessions/{session_id}")
async def whep_patch(request: web.Request) -> web.Response:
    raise _no_trickle()


@routes.route("OPTIONS", "/whep")
async def whep_options(request: web.Request) -> web.Response:
    return _options(request, accept_post=True)


@routes.route("OPTIONS", "/whep/{feed}")
async def whep_feed_options(request: web.Request) -> web.Response:
    _feed(request)
    return _options(request, accept_post=True)


@routes.route("OPTIONS", "/whep/sessions/{session_id}")
async def whep_session_options(request: web.Request) -> web.Response:
    return _options(request, accept_post=False)


# --- the control room ----------------------------------------------------------

@routes.get("/api/feeds")
async def list_feeds(request: web.Request) -> web.Response:
    await require_staff(request, Role.DIRECTOR)
    return json_response([s.view() for s in _tv(request).feed_stats()])


@routes.get("/api/feeds/{feed}/snapshot.jpg")
async def snapshot(request: web.Request) -> web.Response:
    await require_staff(request, Role.DIRECTOR)
    feed = _feed(request)
    # Encoding a JPEG of a full-size picture takes a while: not on the event loop.
    jpeg = await asyncio.to_thread(_tv(request).snapshot_jpeg, feed)
    if jpeg is None:
        raise ApiError(404, "no_frame")
    return web.Response(body=jpeg, content_type="image/jpeg",
                        headers={"Cache-Control": "no-store"})


# Characters that reorder the text around them: a cue must read as it was typed.
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                           "\u2066\u2067\u2068\u2069")


def clean_cue(value: object) -> str:
    """The cue's text, checked: 1 to CUE_MAX characters on one line, nothing invisible."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "cue_text_required", extra={"field": "text"})
    text = value.strip()
    if any(unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS for ch in text):
        raise ApiError(422, "cue_text_control_characters", extra={"field": "text"})
    if len(text) > CUE_MAX:
        raise ApiError(422, "cue_text_too_long", extra={"field": "text"}, max=CUE_MAX)
    return text


@routes.post("/api/feeds/{feed}/cue")
async def cue(request: web.Request) -> web.Response:
    staff = await require_staff(request, Role.DIRECTOR)
    feed = _feed(request)
    text = clean_cue((await read_json(request, max_bytes=4096)).get("text"))
    now = request.app[keys.CLOCK].now().astimezone(UTC)
    sent_at = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    await request.app[keys.BUS].publish(FeedCued(feed, text, sent_at, staff.username))
    return json_response({"feed": feed, "text": text, "sent_at": sent_at})


# --- the contributor's page ----------------------------------------------------

@routes.get("/contribute/{feed}")
async def contribute_page(request: web.Request) -> web.Response:
    feed_id = request.match_info["feed"]
    feed = request.app[keys.SETTINGS].feed(feed_id)
    if feed is None:
        raise ApiError(404, "unknown_feed")
    given = request.query.get("token", "")
    valid = well_formed_token(given) and await request.app[keys.FEED_TOKENS].verify(feed_id,
                                                                                     given)
    lang = request[keys.LANG]
    response = _render(request, "contribute.html", {
        "feed": feed.id, "feed_name": feed.name(lang), "feed_name_fr": feed.name_fr,
        "feed_name_en": feed.name_en, "site": feed.site, "timezone": feed.timezone,
        "token": given if valid else None, "token_valid": valid,
        "ice_servers": list(request.app[keys.SETTINGS].webrtc.ice_servers),
    })
    if not valid:
        response.set_status(401)
    # The token is in this page's address: never pass it on to another site.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
