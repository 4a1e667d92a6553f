"""Server-rendered pages (Jinja2, autoescaped) and the staff sign-in API."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlsplit, urlunsplit

import jinja2
from aiohttp import web

from server import keys
from server.auth import SESSION_COOKIE, BadCredentials, Role, TooManyAttempts, csrf_ok
from server.http import (
    ApiError,
    client_ip,
    current_staff,
    json_response,
    read_json,
    require_staff,
    retry_later,
)
from server.i18n import LANGUAGES

routes = web.RouteTableDef()


def make_jinja(templates: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        autoescape=jinja2.select_autoescape(["html", "xml"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
    )


def _render(request: web.Request, template: str, page_config: dict[str, Any] | None = None,
            staff: dict[str, str] | None = None, csrf_token: str | None = None) -> web.Response:
    app = request.app
    settings, catalog, lang = app[keys.SETTINGS], app[keys.CATALOG], request[keys.LANG]
    themes = [{"id": t.id, "title": t.title(lang)} for t in settings.themes]
    limits = {"text_max": settings.qa.text_max, "author_max": settings.qa.author_max}
    config: dict[str, Any] = {"lang": lang, "themes": themes, "limits": limits,
                              "event_title": settings.event.title,
                              "event_timezone": settings.event.timezone,
                              "programme": app[keys.PROGRAMME_VIEW](), **(page_config or {})}
    if staff is not None:
        config["staff"] = staff
        config["csrf_token"] = csrf_token
    html = app[keys.JINJA].get_template(template).render(
        lang=lang, t=lambda key: catalog.t(lang, key), strings=catalog.get(lang),
        event_title=settings.event.title, themes=themes, limits=limits,
        page_config=config, staff=staff)
    return web.Response(text=html, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


@routes.get("/")
async def watch(request: web.Request) -> web.Response:
    return _render(request, "watch.html")


@routes.get("/overlay")
async def overlay(request: web.Request) -> web.Response:
    # The overlay is burnt into a French broadcast: the browser source's own
    # language (often English) must not choose it; only ?lang= does.
    wanted = request.query.get("lang", "")
    request[keys.LANG] = wanted if wanted in LANGUAGES else "fr"
    return _render(request, "overlay.html")


_HOME = "https://site.invalid"


def safe_next(value: str | None, default: str = "/moderation") -> str:
    """A path on this site, read as a browser reads a URL, or ``default``.

    Browsers drop tabs and line breaks anywhere in a URL and read ``\\`` as
    ``/``, so ``/%09/evil.example`` is ``//evil.example``: another site.
    The value is resolved the way a browser would against this site, and
    kept only if it stays here; what is returned is that resolved path.
    """
    if not value:
        return default
    cleaned = "".join(ch for ch in value if ch not in "\t\n\r").replace("\\", "/")
    if not cleaned.startswith("/") or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in cleaned):
        return default
    resolved = urlsplit(urljoin(_HOME + "/", cleaned))
    if f"{resolved.scheme}://{resolved.netloc}" != _HOME or resolved.path.startswith("//"):
        return default
    return urlunsplit(("", "", resolved.path or "/", resolved.query, resolved.fragment))


@routes.get("/login")
async def login_page(request: web.Request) -> web.Response:
    return _render(request, "login.html", {"next": safe_next(request.query.get("next"))})


@routes.get("/logout")
async def logout_page(request: web.Request) -> web.Response:
    """A page with a sign-out button: a link from anywhere must not sign anyone out."""
    staff = await current_staff(request)
    if staff is None:
        raise web.HTTPFound("/")
    return _render(request, "logout.html", staff={"username": staff.username,
                                                  "role": staff.role.value},
                   csrf_token=staff.csrf_token)


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    """The staff bar's sign-out form: the session's CSRF token, from this site only."""
    staff = await current_staff(request)
    if staff is not None:
        if not csrf_ok(staff.csrf_token, await _form_field(request, "csrf_token")):
            raise ApiError(403, "csrf_failed")
        await request.app[keys.AUTH].sign_out(request.cookies[SESSION_COOKIE])
    response = web.HTTPSeeOther("/")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


_FORM_MAX_BYTES = 4096


async def _form_field(request: web.Request, name: str) -> str | None:
    """One field of a small url-encoded form, or None for anything else.

    Not ``request.post()``: a multipart body without its boundary, or bytes
    that are not UTF-8, make it raise; a form this page never sends is
    simply a form without the field.
    """
    if request.content_type != "application/x-www-form-urlencoded":
        return None
    raw = await request.content.read(_FORM_MAX_BYTES + 1)
    if len(raw) > _FORM_MAX_BYTES:
        return None
    values = parse_qs(raw.decode("latin-1"), encoding="utf-8", errors="replace").get(name)
    return values[0] if values else None


async def _staff_page(request: web.Request, template: str, role: Role) -> web.Response:
    staff = await current_staff(request)
    if staff is None or not staff.role.allows(role):
        redirect = web.HTTPFound("/login")
        # Set after construction: aiohttp would normalise %2F back to a bare "/".
        redirect.headers["Location"] = f"/login?next={quote(request.path_qs, safe='')}"
        raise redirect
    return _render(request, template, staff={"username": staff.username,
                                             "role": staff.role.value},
                   csrf_token=staff.csrf_token)


@routes.get("/moderation")
async def moderation(request: web.Request) -> web.Response:
    return await _staff_page(request, "moderation.html", Role.MODERATOR)


@routes.get("/control")
async def control(request: web.Request) -> web.Response:
    return await _staff_page(request, "control.html", Role.DIRECTOR)


@routes.get("/programme")
async def programme(request: web.Request) -> web.Response:
    # Public, but signed-in staff keep their navigation between pages.
    staff = await current_staff(request)
    if staff is None:
        return _render(request, "programme.html")
    return _render(request, "programme.html",
                   staff={"username": staff.username, "role": staff.role.value},
                   csrf_token=staff.csrf_token)


# --- the sign-in API ---------------------------------------------------------

@routes.post("/api/session")
async def sign_in(request: web.Request) -> web.Response:
    body = await read_json(request, max_bytes=4096)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError(401, "bad_credentials")
    try:
        token, staff = await request.app[keys.AUTH].sign_in(username, password,
                                                            client_ip(request))
    except TooManyAttempts as e:
        raise retry_later(429, "too_many_attempts", e.retry_after_s,
                          minutes=max(1, math.ceil(e.retry_after_s / 60))) from e
    except BadCredentials as e:
        raise ApiError(401, "bad_credentials") from e
    settings = request.app[keys.SETTINGS]
    response = json_response({"username": staff.username, "role": staff.role.value,
                              "csrf_token": staff.csrf_token})
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Lax",
                        secure=settings.http.secure_cookies, path="/",
                        max_age=int(settings.http.session_hours * 3600))
    return response


@routes.get("/api/session")
async def who_am_i(request: web.Request) -> web.Response:
    staff = await require_staff(request, Role.MODERATOR)
    return json_response({"username": staff.username, "role": staff.role.value,
                          "csrf_token": staff.csrf_token})


@routes.delete("/api/session")
async def sign_out(request: web.Request) -> web.Response:
    await require_staff(request, Role.MODERATOR)
    await request.app[keys.AUTH].sign_out(request.cookies[SESSION_COOKIE])
    response = json_response({"status": "signed_out"})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
