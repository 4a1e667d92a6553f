"""HTTP edge helpers: the JSON error shape, viewer identity, JSON bodies, staff checks."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from sqlalchemy import exc as sa_exc

from server import i18n, keys
from server.admission import Overloaded
from server.auth import SESSION_COOKIE, Role, Staff, csrf_ok
from server.dbtypes import database_unavailable

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


_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# How long a client is asked to wait when the database cannot take a write.
STORAGE_RETRY_S = 5

def retry_later(status: int, code: str, wait_s: float, **params: Any) -> ApiError:
    """An error that tells the client when to try again: ``Retry-After`` and
    ``retry_after_s`` (whole seconds, at least 1)."""
    whole = max(1, math.ceil(wait_s))
    return ApiError(status, code, headers={"Retry-After": str(whole)},
                    extra={"retry_after_s": whole}, **params)


def storage_unavailable() -> ApiError:
    """503 ``storage_unavailable``: the database cannot take the write now."""
    return retry_later(503, "storage_unavailable", STORAGE_RETRY_S)


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
    except Overloaded as e:
        # Load shedding: answered at once, with when to come back (logged by
        # the queue that refused, once per burst, not here per request).
        error = retry_later(503, "overloaded", e.retry_after_s)
        return error_response(request, error.status, error.code, error.headers, error.extra)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "internal_error")
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(request, e.status, code, headers)
    except (sa_exc.DBAPIError, sa_exc.TimeoutError) as e:
        if not database_unavailable(e):
            log.exception("request failed", extra={"path": request.path,
                                                   "method": request.method})
            return error_response(request, 500, "internal_error")
        # The database is away, full, read-only or saturated: nothing the client did.
        # Say so, and when to try again, instead of a 500 that reads as a bug.
        log.warning("the database could not serve a request",
                    extra={"path": request.path, "method": request.method,
                           "reason": str(getattr(e, "orig", None) or e)[:200]})
        error = storage_unavailable()
        return error_response(request, error.status, error.code, error.headers, error.extra)
    except Exception as e:
        if isinstance(e, ValueError) and request.path.startswith("/socket.io/"):
            # Engine.IO's own frame parser raises on a frame that is not its
            # protocol (``\x00…``); the connection is over, and it was that client's.
            log.warning("a Socket.IO client sent a frame that cannot be read: its "
                        "connection was closed", extra={"reason": str(e)[:120]})
            return error_response(request, 400, "invalid_frame")
        log.exception("request failed", extra={"path": request.path, "method": request.method})
        return error_response(request, 500, "internal_error")


def client_ip(request: web.Request) -> str:
    """The client's address, as rate limits and logs know it.

    Behind ``forwarded_hops`` proxies of ours, each appends the address it saw
    to ``X-Forwarded-For``; the client writes whatever it likes before those,
    so only the entry that many places from the right is believed. An IPv6
    client is known by its /64, which one subscriber usually holds whole.
    """
    http = request.app[keys.SETTINGS].http
    address = request.remote or ""
    if http.trust_forwarded:
        entries = [e.strip() for header in request.headers.getall("X-Forwarded-For", [])
                   for e in header.split(",")]
        entries = [e for e in entries if e]
        if len(entries) >= http.forwarded_hops:
            address = entries[-http.forwarded_hops]
    return address_bucket(address)


def address_bucket(address: str) -> str:
    """An IPv4 address as it is; an IPv6 one as its /64; anything else as "unknown"."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


# Browser-facing writes that other sites may make on purpose: WHIP and WHEP
# (bearer token or an unguessable session id; CORS answers them) and
# Engine.IO's polling transport (which checks Origin itself).
_CROSS_ORIGIN_PATHS = ("/whip/", "/whep/", "/socket.io/")


def _origin_of(value: str) -> str | None:
    parts = urlsplit(value.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc.removesuffix(":443" if parts.scheme == "https" else ":80")


def _own_hosts(request: web.Request) -> set[str]:
    """The host[:port] names this site answers to, as a browser would write them."""
    http = request.app[keys.SETTINGS].http
    hosts = {request.host.lower()}
    if http.trust_forwarded and (forwarded := request.headers.get("X-Forwarded-Host")):
        hosts.add(forwarded.split(",")[-1].strip().lower())
    hosts = {h.removesuffix(":80").removesuffix(":443") for h in hosts}
    # Configured origins are already scheme://host[:port], default port dropped (settings).
    hosts.update(o.split("://", 1)[1] for o in (http.public_url, *http.allowed_origins) if o)
    return hosts


def check_same_origin(request: web.Request) -> None:
    """Refuse a write that a page of another site makes through a visitor's browser.

    Browsers say where a request comes from (``Origin`` on every POST, and
    ``Sec-Fetch-Site``); a tool that sends neither is not a visitor's browser
    being used against them. 403 ``cross_origin`` otherwise.
    """
    origin = request.headers.get("Origin")
    if origin is not None:
        host = _origin_of(origin)
        if host is None or host not in _own_hosts(request):
            raise ApiError(403, "cross_origin")
        return
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise ApiError(403, "cross_origin")


@web.middleware
async def origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every state-changing request, public or staff, comes from this site's own pages."""
    if request.method not in _SAFE_METHODS and not (
            request.path == "/whep" or request.path.startswith(_CROSS_ORIGIN_PATHS)):
        check_same_origin(request)
    return await handler(request)


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
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        # ValueError covers bad UTF-8, bad JSON and integers over Python's
        # 4,300-digit limit; RecursionError, arrays nested thousands deep.
        raise ApiError(400, "invalid_json") from e
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json")
    for key, value in body.items():
        if problem := _unstorable(key) or _unstorable(value):
            field = key.encode("utf-8", "replace").decode("utf-8")
            raise ApiError(422 if problem == "invalid_unicode" else 400, problem,
                           extra={"field": field})
    return body


_MAX_DEPTH = 16


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON, though Python's parser takes them."""
    raise ValueError(f"{name} is not JSON")


def _unstorable(value: Any, depth: int = 0) -> str | None:
    """Why a JSON value cannot be taken as it is, or None.

    JSON may escape half of a surrogate pair (``"\\ud800"``), which no UTF-8
    database or socket can carry: such text is refused here, before it joins
    other people's writes.
    """
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "invalid_unicode"
        return None
    if depth >= _MAX_DEPTH and isinstance(value, dict | list):
        return "invalid_json"
    if isinstance(value, dict):
        items: list[Any] = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    else:
        return None
    for item in items:
        if problem := _unstorable(item, depth + 1):
            return problem
    return None


async def current_staff(request: web.Request) -> Staff | None:
    if _STAFF not in request:
        token = request.cookies.get(SESSION_COOKIE)
        request[_STAFF] = await request.app[keys.AUTH].staff_for_token(token)
    return request[_STAFF]


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
