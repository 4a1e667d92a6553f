"""HTTP adapters for questions: parse, call the service, map domain errors."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from qa.errors import (
    CannotMerge,
    InvalidQuestion,
    NotPublishable,
    QaError,
    QuestionNotFound,
    QuestionNotStored,
    RateLimited,
    StaleVersion,
    StorageUnavailable,
)
from qa.model import staff_view, viewer_view
from qa.service import QuestionService
from server import keys
from server.auth import Role
from server.http import (
    ApiError,
    client_ip,
    current_staff,
    json_response,
    read_json,
    require_staff,
    retry_later,
    storage_unavailable,
)

routes = web.RouteTableDef()


@asynccontextmanager
async def _domain_errors(rate_code: str = "rate_limited") -> AsyncIterator[None]:
    try:
        yield
    except InvalidQuestion as e:
        raise ApiError(422, e.code, extra={"field": e.field}, **e.params) from e
    except QuestionNotFound as e:
        raise ApiError(404, e.code) from e
    except StaleVersion as e:
        current = staff_view(e.current)
        raise ApiError(409, e.code, extra={**current, "current": current}) from e
    except StorageUnavailable as e:
        raise storage_unavailable() from e
    except QuestionNotStored as e:
        raise ApiError(422, e.code) from e
    except (CannotMerge, NotPublishable) as e:
        raise ApiError(409, e.code) from e
    except RateLimited as e:
        raise retry_later(429, rate_code, e.retry_after_s,
                          minutes=max(1, math.ceil(e.retry_after_s / 60))) from e
    except QaError as e:
        raise ApiError(422, e.code) from e


def _service(request: web.Request) -> QuestionService:
    return request.app[keys.QUESTIONS]


def _question_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError as e:
        raise ApiError(404, "question_not_found") from e


@routes.get("/api/themes")
async def themes(request: web.Request) -> web.Response:
    lang = request[keys.LANG]
    return json_response([{"id": t.id, "title": t.title(lang), "title_fr": t.title_fr,
                           "title_en": t.title_en}
                          for t in request.app[keys.SETTINGS].themes])


@routes.post("/api/questions")
async def submit(request: web.Request) -> web.Response:
    body = await read_json(request)
    async with _domain_errors():
        question = await _service(request).submit(request[keys.VIEWER_ID], client_ip(request), body)
    return json_response(viewer_view(question), status=201)


@routes.get("/api/questions")
async def list_questions(request: web.Request) -> web.Response:
    q = request.query
    staff = await current_staff(request)
    async with _domain_errors():
        if staff is not None:
            items = await _service(request).list_all(q.get("theme"), q.get("status"),
                                                     q.get("sort", "recent"))
            return json_response([staff_view(x) for x in items])
        pairs = await _service(request).list_public(request[keys.VIEWER_ID], q.get("theme"),
                                                    q.get("sort", "recent"), q.get("status"))
    return json_response([{**viewer_view(x), "voted": voted} for x, voted in pairs])


@routes.get("/api/questions/mine")
async def mine(request: web.Request) -> web.Response:
    items = await _service(request).mine(request[keys.VIEWER_ID])
    return json_response([viewer_view(x) for x in items])


@routes.get("/api/questions/export.csv")
async def export_csv(request: web.Request) -> web.Response:
    await require_staff(request, Role.MODERATOR)
    items = await _service(request).export()
    out = io.StringIO()
    fields = list(staff_view(items[0]).keys()) if items else [
        "id", "theme", "text", "author", "segment_id", "status", "starred", "queue_position",
        "on_air", "votes", "merged_into", "flags", "duplicate_of", "note", "viewer_id",
        "created_at", "updated_at", "version"]
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    for item in items:
        row = staff_view(item)
        row["flags"] = " ".join(row["flags"])
        # A leading = + - @ would run as a formula in a spreadsheet.
        for key in ("text", "author", "note"):
            if isinstance(row[key], str) and row[key][:1] in ("=", "+", "-", "@"):
                row[key] = "'" + row[key]
        writer.writerow(row)
    return web.Response(
        body=("\ufeff" + out.getvalue()).encode("utf-8"),
        content_type="text/csv", charset="utf-8",
        headers={"Content-Disposition": 'attachment; filename="questions.csv"'})


@routes.get(r"/api/questions/{id}")
async def get_question(request: web.Request) -> web.Response:
    staff = await current_staff(request)
    async with _domain_errors():
        question = await _service(request).get(_question_id(request))
        if staff is None and not question.is_public:
            raise QuestionNotFound()
    return json_response(staff_view(question) if staff else viewer_view(question))


@routes.patch(r"/api/questions/{id}")
async def patch_question(request: web.Request) -> web.Response:
    staff = await require_staff(request, Role.MODERATOR)
    body = await read_json(request)
    async with _domain_errors():
        question = await _service(request).patch(_question_id(request), body, staff.username)
    return json_response(staff_view(question))


@routes.post(r"/api/questions/{id}/merge")
async def merge(request: web.Request) -> web.Response:
    staff = await require_staff(request, Role.MODERATOR)
    body = await read_json(request)
    async with _domain_errors():
        target = await _service(request).merge(_question_id(request), body.get("into"),
                                               staff.username)
    return json_response(staff_view(target))


async def _vote(request: web.Request, add: bool) -> web.Response:
    qid = _question_id(request)
    async with _domain_errors("vote_rate_limited"):
        votes, voted = await _service(request).vote(qid, request[keys.VIEWER_ID], add,
                                                    client_ip(request))
    return json_response({"id": qid, "votes": votes, "voted": voted})


@routes.post(r"/api/questions/{id}/vote")
async def vote(request: web.Request) -> web.Response:
    return await _vote(request, True)


@routes.delete(r"/api/questions/{id}/vote")
async def unvote(request: web.Request) -> web.Response:
    return await _vote(request, False)


@routes.get("/api/on-air")
async def get_on_air(request: web.Request) -> web.Response:
    question = await _service(request).on_air()
    return json_response(viewer_view(question) if question else None)


@routes.put("/api/on-air")
async def put_on_air(request: web.Request) -> web.Response:
    staff = await require_staff(request, Role.MODERATOR)
    body = await read_json(request)
    async with _domain_errors():
        question = await _service(request).set_on_air(body.get("question_id"), staff.username)
    return json_response(staff_view(question) if question else None)


@routes.delete("/api/on-air")
async def clear_on_air(request: web.Request) -> web.Response:
    staff = await require_staff(request, Role.MODERATOR)
    await _service(request).set_on_air(None, staff.username)
    return json_response(None)
