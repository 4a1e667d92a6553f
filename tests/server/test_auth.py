"""Staff sign-in, sessions, CSRF, roles and the adduser command, through the real app."""

from __future__ import annotations

import asyncio
import sys
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import socketio
from sqlalchemy import text

from server import keys
from server.auth import SESSION_COOKIE, Role
from tests import helpers
from tests.helpers import PASSWORD, ROOT


def session_cookie(resp: Any) -> Any:
    """The Set-Cookie of the staff session in a response, parsed, or None."""
    for header in resp.headers.getall("Set-Cookie", []):
        cookie = SimpleCookie()
        cookie.load(header)
        if SESSION_COOKIE in cookie:
            return cookie[SESSION_COOKIE]
    return None


async def ask(viewer: Any) -> dict[str, Any]:
    status, body, _ = await viewer.request(
        "POST", "/api/questions",
        {"theme": "growth", "text": "Le bio et l'équitable, même combat ?"})
    assert status == 201, body
    return dict(body)


async def test_sign_in_answers_role_and_token_with_a_safe_cookie(server, base_url, http):
    await server.app[keys.AUTH].add_user("marie", PASSWORD, Role.MODERATOR)
    client = await http(base_url)

    status, body, resp = await client.request("POST", "/api/session",
                                              {"username": "marie", "password": PASSWORD})

    assert status == 200
    assert (body["username"], body["role"]) == ("marie", "moderator")
    assert isinstance(body["csrf_token"], str) and len(body["csrf_token"]) >= 16
    cookie = session_cookie(resp)
    assert cookie is not None and len(cookie.value) >= 16
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert PASSWORD not in resp.headers.get("Set-Cookie", "")
    status, me, _ = await client.request("GET", "/api/session")
    assert (status, me["username"], me["role"]) == (200, "marie", "moderator")


async def test_bad_credentials_are_401_and_all_alike(server, base_url, http):
    await server.app[keys.AUTH].add_user("marie", PASSWORD, Role.MODERATOR)
    client = await http(base_url)
    answers = []
    for username, password in (("marie", "not the right password"), ("nobody", PASSWORD),
                               ("marie", ""), ("", "")):
        status, body, resp = await client.request(
            "POST", "/api/session", {"username": username, "password": password})
        assert (status, body["error"]) == (401, "bad_credentials"), username
        assert session_cookie(resp) is None
        answers.append(body)
    # Nothing tells an unknown user name from a wrong password.
    assert all(a == answers[0] for a in answers)
    status, body, _ = await client.request("POST", "/api/session", {"username": "marie"})
    assert (status, body["error"]) == (401, "bad_credentials")
    assert (await client.request("GET", "/api/session"))[0] == 401


async def test_sign_in_is_429_after_five_failures(server, base_url, http, settings):
    assert settings.auth.login_failures.count == 5
    await server.app[keys.AUTH].add_user("marie", PASSWORD, Role.MODERATOR)
    await server.app[keys.AUTH].add_user("paul", PASSWORD, Role.MODERATOR)
    client = await http(base_url)
    for _ in range(5):
        status, _, _ = await client.request("POST", "/api/session",
                                            {"username": "marie", "password": "guess"})
        assert status == 401

    status, body, resp = await client.request("POST", "/api/session",
                                              {"username": "marie", "password": PASSWORD})

    assert status == 429
    assert body["error"] == "too_many_attempts" and body["message"]
    retry_after = resp.headers["Retry-After"]
    assert retry_after.isdigit() and 0 < int(retry_after) <= 900
    assert session_cookie(resp) is None
    # Another account is not locked out by guesses at this one.
    status, body, _ = await client.request("POST", "/api/session",
                                           {"username": "paul", "password": PASSWORD})
    assert (status, body["username"]) == (200, "paul")


async def test_staff_writes_need_the_csrf_token(base_url, http, staff):
    mod = await staff()
    q = await ask(await http(base_url))
    path = f"/api/questions/{q['id']}"
    change = {"status": "approved", "version": q["version"]}
    token, mod.csrf = mod.csrf, None

    status, body, _ = await mod.request("PATCH", path, change)
    assert (status, body["error"]) == (403, "csrf_failed") and body["message"]
    status, body, _ = await mod.request("PATCH", path, change,
                                        headers={"X-CSRF-Token": token[::-1]})
    assert (status, body["error"]) == (403, "csrf_failed")
    status, body, _ = await mod.request("DELETE", "/api/session")
    assert (status, body["error"]) == (403, "csrf_failed")
    status, body, _ = await mod.request("GET", path)
    assert (status, body["status"], body["version"]) == (200, "pending", q["version"])

    status, body, _ = await mod.request("PATCH", path, change, headers={"X-CSRF-Token": token})
    assert (status, body["status"]) == (200, "approved")


async def test_a_viewer_cannot_triage(base_url, http):
    viewer = await http(base_url)
    q = await ask(viewer)
    for method, path, body in (
            ("PATCH", f"/api/questions/{q['id']}", {"status": "approved", "version": 1}),
            ("PUT", "/api/on-air", {"question_id": q["id"]}),
            ("POST", f"/api/questions/{q['id']}/merge", {"into": q["id"]}),
            ("GET", "/api/session", None)):
        status, answer, _ = await viewer.request(method, path, body)
        assert (status, answer["error"]) == (401, "not_authenticated"), path
        assert answer["message"]
    assert [x["status"] for x in (await viewer.request("GET", "/api/questions/mine"))[1]] == [
        "pending"]


async def test_sign_out_ends_the_session_on_the_server(base_url, http, staff, listen):
    mod = await staff()
    old_cookie = mod.cookie_header()
    q = await ask(await http(base_url))

    status, body, _ = await mod.request("DELETE", "/api/session")

    assert status == 200, body
    assert (await mod.request("GET", "/api/session"))[0] == 401
    status, body, _ = await mod.request("PATCH", f"/api/questions/{q['id']}",
                                        {"status": "approved", "version": q["version"]})
    assert (status, body["error"]) == (401, "not_authenticated")
    # Someone who kept a copy of the cookie gets nothing from it either.
    replay = await http(base_url)
    status, _, _ = await replay.request("GET", "/api/session", headers={"Cookie": old_cookie})
    assert status == 401
    with pytest.raises(socketio.exceptions.ConnectionError):
        await listen(base_url, "/moderation", old_cookie)


async def test_moderation_page_redirects_viewers_to_login(base_url, http, staff):
    viewer = await http(base_url)
    status, _, resp = await viewer.request("GET", "/moderation")
    assert status == 302
    assert resp.headers["Location"] == "/login?next=%2Fmoderation"
    status, page, resp = await viewer.request("GET", "/login?next=%2Fmoderation")
    assert status == 200 and resp.content_type == "text/html"

    mod = await staff()
    status, page, resp = await mod.request("GET", "/moderation")
    assert status == 200 and resp.content_type == "text/html"
    assert b"marie" in page


@pytest.mark.parametrize("role", list(Role))
async def test_every_staff_role_can_moderate(base_url, http, staff, listen, role):
    member = await staff(f"staff-{role.value}", role)
    moderators = await listen(base_url, "/moderation", member.cookie_header())
    q = await ask(await http(base_url))
    assert (await moderators.next("question", within=2))["id"] == q["id"]

    status, body, _ = await member.request("PATCH", f"/api/questions/{q['id']}",
                                           {"status": "approved", "version": q["version"]})
    assert (status, body["status"]) == (200, "approved")
    status, body, _ = await member.request("PUT", "/api/on-air", {"question_id": q["id"]})
    assert (status, body["on_air"]) == (200, True)
    assert (await member.request("GET", "/moderation"))[0] == 200
    status, me, _ = await member.request("GET", "/api/session")
    assert me["role"] == role.value


async def test_passwords_are_stored_as_argon2_hashes(server, staff):
    await staff("marie")
    async with server.app[keys.ENGINE].connect() as conn:
        rows = (await conn.execute(text("SELECT username, password_hash FROM staff"))).all()
    assert [r.username for r in rows] == ["marie"]
    assert rows[0].password_hash.startswith("$argon2")
    assert PASSWORD not in rows[0].password_hash


def config_with_database(tmp_path: Path, database: Path) -> Path:
    """A copy of the real config.toml whose [database] url is a private SQLite file."""
    head, tail = (ROOT / "config.toml").read_text("utf-8").split("[database]\n", 1)
    assert 'url = ""' in tail
    config = tmp_path / "config.toml"
    config.write_text(head + "[database]\n" + tail.replace(
        'url = ""', f'url = "sqlite:///{database}"', 1), "utf-8")
    return config


async def run_py(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "run.py"), *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_adduser_command_creates_an_account_that_signs_in(tmp_path, start_server, http):
    database = tmp_path / "show.sqlite3"
    config = config_with_database(tmp_path, database)
    password_file = tmp_path / "password.txt"
    password_file.write_text("une phrase de passe solide\n", "utf-8")

    code, out, err = await run_py("adduser", "claire", "--role", "director",
                                  "--password-file", str(password_file), "--config", str(config))

    assert code == 0, err
    assert "claire" in out
    server = await start_server(helpers.test_settings(tmp_path,
                                                      database_url=f"sqlite:///{database}"))
    client = await http(str(server.make_url("")))
    assert (await client.sign_in("claire", "une phrase de passe solide"))["role"] == "director"


async def test_adduser_command_refuses_a_short_password(tmp_path, start_server, http):
    database = tmp_path / "show.sqlite3"
    config = config_with_database(tmp_path, database)
    password_file = tmp_path / "password.txt"
    password_file.write_text("court\n", "utf-8")

    code, _, err = await run_py("adduser", "claire", "--role", "moderator",
                                  "--password-file", str(password_file), "--config", str(config))

    assert code != 0
    assert "password" in err and "10" in err
    server = await start_server(helpers.test_settings(tmp_path,
                                                      database_url=f"sqlite:///{database}"))
    client = await http(str(server.make_url("")))
    status, _, _ = await client.request("POST", "/api/session",
                                        {"username": "claire", "password": "court"})
    assert status == 401
