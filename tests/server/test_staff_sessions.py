"""Staff sockets end with their session: sign-out, password or role reset, expiry.

Real apps on real sockets, real Socket.IO clients; the reset comes from
another app instance, from ``run.py adduser`` (another process) or straight
from the database, as the command does. Malformed session cookies are sent as
raw bytes on a raw TCP socket, since no HTTP client will write them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import socketio
from aiohttp.test_utils import TestServer
from sqlalchemy import text

from server import keys
from server.auth import Role
from tests import helpers
from tests.fakes import FakeClock
from tests.helpers import PASSWORD, Http, raw_http
from tests.server.test_auth import config_with_database, run_py
from tests.server.test_multiprocess import Cluster, cluster  # noqa: F401 (fixture)

OpenHttp = Callable[..., Awaitable[Http]]
GONE_WITHIN_S = 2.0


@dataclass
class StaffSocket:
    """A real Socket.IO client on one staff namespace, noting what it gets and its end."""

    client: socketio.AsyncClient
    namespace: str
    events: dict[str, asyncio.Queue[Any]] = field(default_factory=dict)
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    async def next(self, event: str, where: Callable[[Any], bool] = lambda _: True,
                   within: float = 5.0) -> Any:
        async with asyncio.timeout(within):
            while True:
                item = await self.events[event].get()
                if where(item):
                    return item

    async def wait_gone(self, within: float = GONE_WITHIN_S) -> None:
        async with asyncio.timeout(within):
            await self.gone.wait()


Connect = Callable[[str, str, str], Awaitable[StaffSocket]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    opened: list[socketio.AsyncClient] = []

    async def open_(base: str, namespace: str, cookie: str) -> StaffSocket:
        client = socketio.AsyncClient(reconnection=False)
        sock = StaffSocket(client, namespace)
        for name in ("question", "signed_out", "programme", "feeds"):
            sock.events[name] = asyncio.Queue()
            client.on(name, sock.events[name].put_nowait, namespace=namespace)
        client.on("disconnect", lambda *_: sock.gone.set(), namespace=namespace)
        opened.append(client)
        await client.connect(base, namespaces=[namespace], transports=["websocket"],
                             headers={"Cookie": cookie}, wait_timeout=5)
        return sock

    yield open_
    for client in opened:
        await client.disconnect()


async def ask(base: str, http: OpenHttp, words: str) -> dict[str, Any]:
    viewer = await http(base)
    status, body, _ = await viewer.request("POST", "/api/questions",
                                           {"theme": "growth", "text": words})
    assert status == 201, body
    return dict(body)


async def signed_in(server: TestServer, http: OpenHttp, name: str, role: Role) -> Http:
    await server.app[keys.AUTH].add_user(name, PASSWORD, role)
    client = await http(str(server.make_url("")))
    await client.sign_in(name)
    return client


async def test_signing_out_disconnects_the_moderation_socket_at_once(
        server, base_url, http, connect):
    marie = await signed_in(server, http, "marie", Role.MODERATOR)
    paul = await signed_in(server, http, "paul", Role.MODERATOR)
    old_cookie = marie.cookie_header()
    console = await connect(base_url, "/moderation", old_cookie)
    other = await connect(base_url, "/moderation", paul.cookie_header())

    status, _, _ = await marie.request("DELETE", "/api/session")

    assert status == 200
    await console.wait_gone()
    assert (await console.next("signed_out")) == {"reason": "signed_out"}
    q = await ask(base_url, http, "Une question posée après la déconnexion ?")
    # Paul, still signed in, gets it: had Marie's console been told, it would be by now.
    assert (await other.next("question", lambda x: x["id"] == q["id"]))["text"]
    assert console.events["question"].empty()
    assert not console.client.connected
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect(base_url, "/moderation", old_cookie)


@pytest.mark.parametrize("new_role", [Role.MODERATOR, Role.DIRECTOR])
async def test_an_account_reset_elsewhere_ends_its_sockets(
        start_server, tmp_path, database_url, http, connect, new_role):
    """adduser's reset, run by another app on the same database, reaches this one's sockets."""
    settings = helpers.test_settings(tmp_path, database_url=database_url)
    show, other = await start_server(settings), await start_server(settings)
    base = str(show.make_url(""))
    paul = await signed_in(show, http, "paul", Role.DIRECTOR)
    control = await connect(base, "/control", paul.cookie_header())
    await control.next("programme")

    await other.app[keys.AUTH].add_user("paul", "un tout autre mot de passe", new_role)

    await control.wait_gone()
    reason = "role_changed" if new_role != Role.DIRECTOR else "signed_out"
    assert (await control.next("signed_out")) == {"reason": reason}
    assert (await paul.request("GET", "/api/session"))[0] == 401


async def test_the_adduser_command_ends_a_directors_control_socket(
        tmp_path, start_server, http, connect):
    database = tmp_path / "show.sqlite3"
    config = config_with_database(tmp_path, database)
    show = await start_server(helpers.test_settings(tmp_path, database_url=f"sqlite:///{database}"))
    paul = await signed_in(show, http, "paul", Role.DIRECTOR)
    control = await connect(str(show.make_url("")), "/control", paul.cookie_header())
    password_file = tmp_path / "password.txt"
    password_file.write_text(PASSWORD + "\n", "utf-8")

    code, _, err = await run_py("adduser", "paul", "--role", "moderator",
                                "--password-file", str(password_file), "--config", str(config))

    assert code == 0, err
    await control.wait_gone()
    assert (await control.next("signed_out")) == {"reason": "role_changed"}


async def test_a_demotion_in_the_database_closes_control_but_keeps_moderation(
        server, base_url, http, connect):
    paul = await signed_in(server, http, "paul", Role.DIRECTOR)
    control = await connect(base_url, "/control", paul.cookie_header())
    console = await connect(base_url, "/moderation", paul.cookie_header())

    async with server.app[keys.ENGINE].begin() as conn:
        await conn.execute(text("UPDATE staff SET role = 'moderator' WHERE username = 'paul'"))

    await control.wait_gone()
    assert (await control.next("signed_out")) == {"reason": "role_changed"}
    # A moderator may still moderate: that socket stays, and keeps its pushes.
    q = await ask(base_url, http, "Toujours là pour modérer ?")
    assert (await console.next("question", lambda x: x["id"] == q["id"]))["text"]
    assert console.client.connected and not console.gone.is_set()


async def test_an_expired_session_disconnects_its_socket(start_server, tmp_path, http, connect):
    clock = FakeClock(datetime(2027, 5, 9, 11, 0, tzinfo=UTC))
    settings = helpers.test_settings(tmp_path)
    server = await start_server(settings, clock=clock)
    base = str(server.make_url(""))
    marie = await signed_in(server, http, "marie", Role.MODERATOR)
    console = await connect(base, "/moderation", marie.cookie_header())

    clock.advance(timedelta(hours=settings.http.session_hours, seconds=1))

    await console.wait_gone()
    assert (await console.next("signed_out")) == {"reason": "expired"}
    assert (await marie.request("GET", "/api/session"))[0] == 401


async def test_across_processes_sign_out_and_adduser_end_the_other_process_sockets(
        cluster: Cluster, http, connect):  # noqa: F811
    mod, paul = await http(cluster.a.base), await http(cluster.a.base)
    await mod.sign_in("mod")
    await paul.sign_in("paul")
    console = await connect(cluster.b.base, "/moderation", mod.cookie_header())
    control = await connect(cluster.b.base, "/control", paul.cookie_header())
    await control.next("programme")

    assert (await mod.request("DELETE", "/api/session"))[0] == 200
    await console.wait_gone()
    assert (await console.next("signed_out")) == {"reason": "signed_out"}

    password_file = Path(cluster.config).parent / "password"
    code, _, err = await run_py("adduser", "paul", "--role", "moderator",
                                "--password-file", str(password_file),
                                "--config", str(cluster.config))
    assert code == 0, err
    await control.wait_gone()
    assert (await control.next("signed_out")) == {"reason": "role_changed"}


# --- malformed session cookies ------------------------------------------------------------

BAD_COOKIES = {
    "not_utf8": b"\xff\xfe\xfd",
    "lone_surrogate": b"\xed\xa0\x80",  # U+D800 as UTF-8 would write it, if it could
    "absurdly_long": b"A" * 7000,
}


def request_bytes(method: str, path: str, cookie: bytes, body: bytes = b"") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\nContent-Type: text/plain\r\n").encode() \
        + b"Cookie: tv_session=" + cookie + b"\r\n\r\n" + body


@pytest.mark.parametrize("cookie", BAD_COOKIES.values(), ids=BAD_COOKIES.keys())
async def test_a_malformed_session_cookie_is_not_signed_in(server, cookie, caplog):
    caplog.set_level(logging.INFO)
    port = server.port
    for method, path in (("GET", "/api/session"), ("DELETE", "/api/session"),
                         ("GET", "/api/questions/export.csv"), ("PUT", "/api/on-air"),
                         ("POST", "/api/programme/hold")):
        status, headers, body = await raw_http(port, request_bytes(method, path, cookie))
        assert status == 401, (method, path, body)
        assert json.loads(body)["error"] == "not_authenticated"
    for page in ("/moderation", "/control"):
        status, headers, _ = await raw_http(port, request_bytes("GET", page, cookie))
        assert (status, headers["location"]) == (302, f"/login?next=%2F{page[1:]}")
    status, headers, _ = await raw_http(port, request_bytes("GET", "/logout", cookie))
    assert status in (302, 303, 405)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize("cookie", BAD_COOKIES.values(), ids=BAD_COOKIES.keys())
async def test_a_staff_socket_with_a_malformed_cookie_is_refused_cleanly(server, cookie,
                                                                         caplog):
    """Engine.IO's long-polling, by hand: the cookie of the handshake is the socket's."""
    caplog.set_level(logging.INFO)
    port, path = server.port, "/socket.io/?EIO=4&transport=polling"
    status, _, body = await raw_http(port, request_bytes("GET", path, cookie))
    assert status == 200 and body.startswith(b"0")
    sid = json.loads(body[1:])["sid"]
    polling = f"{path}&sid={sid}"

    status, _, _ = await raw_http(port, request_bytes("POST", polling, cookie,
                                                         b"40/moderation,"))
    assert status == 200
    status, _, body = await raw_http(port, request_bytes("GET", polling, cookie))

    assert status == 200
    assert body.startswith(b"44/moderation,"), body
    refusal = json.loads(body.split(b",", 1)[1])
    assert refusal["data"]["error"] == "not_authenticated" and refusal["message"], refusal
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_malformed_csrf_header_is_refused_not_a_crash(server, base_url, http, caplog):
    caplog.set_level(logging.INFO)
    marie = await signed_in(server, http, "marie", Role.MODERATOR)
    cookie = marie.cookie_header().encode()
    request = (b"DELETE /api/session HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               b"Cookie: " + cookie + b"\r\nX-CSRF-Token: \xff\xed\xa0\x80\r\n\r\n")

    status, _, body = await raw_http(server.port, request)

    assert (status, json.loads(body)["error"]) == (403, "csrf_failed")
    assert (await marie.request("GET", "/api/session"))[0] == 200  # still signed in
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
