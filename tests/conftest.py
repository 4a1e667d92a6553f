"""Shared fixtures: the real app on a real socket, real databases, real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from server import keys
from server.app import create_app
from server.auth import Role
from server.settings import Settings
from tests.helpers import PASSWORD, Http, Listener, services_required, test_settings

PG_ADMIN_URL = os.environ.get("TV_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unavailable(what: str, error: BaseException) -> None:
    reason = f"{what} is not reachable ({error}); start it or set the TV_TEST_* URL"
    if services_required():
        pytest.fail(f"TV_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"tv_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError) as e:
        _unavailable(f"PostgreSQL at {PG_ADMIN_URL}", e)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as e:
        await client.aclose()
        _unavailable(f"Redis at {REDIS_URL}", e)
    await client.aclose()
    yield REDIS_URL


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tv.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return test_settings(tmp_path)


StartServer = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start the real app on a real loopback port; every one is closed at the end."""
    servers: list[TestServer] = []

    async def start(settings: Settings, **kwargs: Any) -> TestServer:
        server = TestServer(create_app(settings, **kwargs), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def server(start_server: StartServer, settings: Settings) -> TestServer:
    return await start_server(settings)


@pytest.fixture
def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def http() -> AsyncIterator[Callable[..., Awaitable[Http]]]:
    """Open as many independent HTTP clients (viewers, staff) as a test needs."""
    opened: list[Http] = []

    async def open_(base: str, forwarded_for: str | None = None) -> Http:
        client = await Http.open(base, forwarded_for)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        await client.close()


@pytest.fixture
async def listen() -> AsyncIterator[Callable[..., Awaitable[Listener]]]:
    """Connect real Socket.IO clients; all are disconnected at the end."""
    opened: list[Listener] = []

    async def connect(base: str, namespace: str = "/", cookies: str = "",
                      auth: dict[str, Any] | None = None) -> Listener:
        listener = await Listener.connect(base, namespace, cookies, auth=auth)
        opened.append(listener)
        return listener

    yield connect
    for listener in opened:
        await listener.close()


async def add_staff(app: web.Application, username: str, role: Role) -> None:
    await app[keys.AUTH].add_user(username, PASSWORD, role)


@pytest.fixture
async def staff(server: TestServer, base_url: str,
                http: Callable[..., Awaitable[Http]]) -> Callable[..., Awaitable[Http]]:
    """Create a staff account with ``role`` and return a signed-in client."""

    async def make(username: str = "marie", role: Role = Role.MODERATOR) -> Http:
        await add_staff(server.app, username, role)
        client = await http(base_url)
        await client.sign_in(username)
        return client

    return make
