"""HTTP edge helpers: the JSON error shape, viewer identity, JSON bodies, staff checks."""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server import i18n, keys
from server.auth import SESSION_COOKIE, Role, Staff, csrf_ok

log = logging.getLogger("tv.http")

VIEWER_COOKIE = "tv_viewer"
_VIEWER_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_ONE_YEAR = 365 * 24 * 3600

_STAFF: web.RequestKey[Staff | None] = web.RequestKey("staff", object)  # type: ignore[arg-type]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered as ``{"error", "message"}`` with a status code."""

    def __init__(self, status: int, code: str, *, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None, **params: Any) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}
        self.params = params


def error_response(request: web.Request, status: int, code: str,
                   headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
                   **params: Any) -> web.Response:
    lang = request.get(keys.LANG, "fr")
    body = {"error": code, "message": i18n.message(code, lang, **params), **(extra or {})}
    return web.json_response(body, status=status, headers=headers,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


_HTTP_CODES = {400: "invalid_json", 401: "not_authenticated", 403: "forbidden",
               404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
               415: "unsupported_media_type"}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, ours or aiohttp's, leaves as the contract's JSON shape."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(request, e.status, e.code, e.headers, e.extra, **e.params)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "internal_error")
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(request, e.status, code, headers)
    except Exception:
        log.exception("request failed", extra={"path": request.path, "method": request.method})
        return error_response(request, 500, "internal_error")


def client_ip(request: web.Request) -> str:
    settings = request.app[keys.SETTINGS]
    if settings.http.trust_forwarded:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return first
    return request.remote or "unknown"


@web.middleware
async def identity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every visitor a language and an anonymous, long-lived viewer id."""
    request[keys.LANG] = i18n.pick_language(request.query.get("lang"),
                                         request.cookies.get(i18n.LANG_COOKIE),
                                         request.headers.get("Accept-Language"))
    viewer = request.cookies.get(VIEWER_COOKIE, "")
    is_new = not _VIEWER_RE.fullmatch(viewer)
    if is_new:
        viewer = secrets.token_urlsafe(16)
    request[keys.VIEWER_ID] = viewer
    response = await handler(request)
    secure = request.app[keys.SETTINGS].http.secure_cookies
    if is_new and not response.prepared:
        response.set_cookie(VIEWER_COOKIE, viewer, max_age=_ONE_YEAR, httponly=True,
                            samesite="Lax", secure=secure, path="/")
    if request.query.get("lang") in i18n.LANGUAGES and not response.prepared:
        response.set_cookie(i18n.LANG_COOKIE, request[keys.LANG], max_age=_ONE_YEAR,
                            samesite="Lax", secure=secure, path="/")
    return response


async def read_json(request: web.Request, max_bytes: int = 64 * 1024) -> dict[str, Any]:
    """The body as a JSON object; 415 for another content type, 400 if unreadable."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type")
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "request_too_large")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ApiError(413, "request_too_large")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, "invalid_json") from e
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json")
    return body


async def current_staff(request: web.Request) -> Staff | None:
    if _STAFF not in request:
        token = request.cookies.get(SESSION_COOKIE)
        request[_STAFF] = await request.app[keys.AUTH].staff_for_token(token)
    return request[_STAFF]


_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


async def require_staff(request: web.Request, role: Role) -> Staff:
    """The signed-in staff member with at least ``role``; checks CSRF on writes."""
    staff = await current_staff(request)
    if staff is None:
        raise ApiError(401, "not_authenticated")
    if not staff.role.allows(role):
        raise ApiError(403, "forbidden")
    if request.method not in _SAFE_METHODS and not csrf_ok(
            staff.csrf_token, request.headers.get("X-CSRF-Token")):
        raise ApiError(403, "csrf_failed")
    return staff


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))
