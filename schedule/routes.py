"""HTTP adapters for the programme: read it, run it (directors), add it to a calendar."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from schedule import ics
from schedule.errors import (
    AlreadyEnded,
    AlreadyStarted,
    ConcurrentChange,
    InvalidSeconds,
    NotLive,
    ProgrammeError,
    UnknownSegment,
)
from schedule.model import Action
from server import keys
from server.auth import Role
from server.http import ApiError, json_response, read_json, require_staff

routes = web.RouteTableDef()


def programme_body(app: web.Application) -> dict[str, Any]:
    return app[keys.PROGRAMME_VIEW]()


@asynccontextmanager
async def _domain_errors() -> AsyncIterator[None]:
    try:
        yield
    except UnknownSegment as e:
        raise ApiError(404, e.code) from e
    except InvalidSeconds as e:
        raise ApiError(422, e.code, extra={"field": "seconds"}) from e
    except (AlreadyStarted, AlreadyEnded, NotLive, ConcurrentChange) as e:
        raise ApiError(409, e.code) from e
    except ProgrammeError as e:
        raise ApiError(409, e.code) from e


@routes.get("/api/programme")
async def get_programme(request: web.Request) -> web.Response:
    return json_response(programme_body(request.app))


async def _command(request: web.Request, action: Action, segment_id: str | None = None,
                   seconds: float | None = None) -> web.Response:
    staff = await require_staff(request, Role.DIRECTOR)
    async with _domain_errors():
        await request.app[keys.PROGRAMME].command(action, staff.username, segment_id, seconds)
    return json_response(programme_body(request.app))


@routes.post("/api/programme/start")
async def start(request: web.Request) -> web.Response:
    return await _command(request, Action.START)


@routes.post("/api/programme/take")
async def take_next(request: web.Request) -> web.Response:
    return await _command(request, Action.TAKE)


@routes.post("/api/programme/take/{segment_id}")
async def take(request: web.Request) -> web.Response:
    return await _command(request, Action.TAKE, request.match_info["segment_id"])


@routes.post("/api/programme/hold")
async def hold(request: web.Request) -> web.Response:
    return await _command(request, Action.HOLD)


@routes.post("/api/programme/extend")
async def extend(request: web.Request) -> web.Response:
    await require_staff(request, Role.DIRECTOR)
    body = await read_json(request)
    seconds = body.get("seconds")
    # An integer of 400 digits does not fit a float: out of range, like 3,601.
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
            or not -3600 <= seconds <= 3600:
        raise ApiError(422, "invalid_seconds", extra={"field": "seconds"})
    return await _command(request, Action.EXTEND, seconds=float(seconds))


@routes.post("/api/programme/end")
async def end(request: web.Request) -> web.Response:
    return await _command(request, Action.END)


@routes.get("/programme.ics")
async def calendar(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    public = settings.http.public_url
    url = f"{public}/programme" if public else ""
    text = ics.calendar(request.app[keys.PROGRAMME].plan, settings.event.title, url,
                        request.app[keys.CLOCK].now(), request[keys.LANG])
    return web.Response(
        body=text.encode("utf-8"), content_type="text/calendar", charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="programme.ics"'})
