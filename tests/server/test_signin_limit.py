"""The sign-in limit holds for guesses sent all at once, in one process or many.

Each attempt is counted before its password is checked; the checks that
happened are the answers that are not 429 (a 401 or a 200).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from server import keys
from server.auth import Role
from tests import helpers
from tests.helpers import PASSWORD, Http
from tests.server.test_multiprocess import Cluster, cluster  # noqa: F401 (fixture)

LIMIT = {"count": 5, "window_s": 900}
GUESSES = 40
RIGHT_AT = 17  # the right password hides among the guesses


@pytest.fixture
async def channel(redis_url: str) -> AsyncIterator[str]:
    """A private Redis prefix for the limiter's keys, removed afterwards."""
    name = f"tvtest-{uuid.uuid4().hex[:12]}"
    yield name
    client = aioredis.Redis.from_url(redis_url)
    try:
        found = [k async for k in client.scan_iter(match=f"{name}:*")]
        if found:
            await client.delete(*found)
    finally:
        await client.aclose()


async def guess_all_at_once(bases: list[str], http: Any,
                            username: str = "marie") -> list[tuple[int, Any, Any]]:
    """GUESSES sign-ins sent together, spread over ``bases``; one has the right password."""
    clients: list[Http] = [await http(bases[i % len(bases)]) for i in range(GUESSES)]

    async def one(i: int) -> tuple[int, Any, Any]:
        password = PASSWORD if i == RIGHT_AT else f"guess number {i}"
        status, body, resp = await clients[i].request(
            "POST", "/api/session", {"username": username, "password": password})
        return status, body, resp.headers.get("Retry-After")

    return await asyncio.gather(*(one(i) for i in range(GUESSES)))


def assert_at_most_five_checked(answers: list[tuple[int, Any, Any]]) -> None:
    checked = [i for i, (status, _, _) in enumerate(answers) if status != 429]
    assert len(checked) <= LIMIT["count"], [a[0] for a in answers]
    for i, (status, body, retry_after) in enumerate(answers):
        if status == 429:
            assert body["error"] == "too_many_attempts" and body["message"]
            assert retry_after is not None and 0 < int(retry_after) <= LIMIT["window_s"]
        else:
            assert status == (200 if i == RIGHT_AT else 401), (i, status, body)
    # The right password got in only if its check was one of the five.
    assert answers[RIGHT_AT][0] in (200, 429)
    assert (answers[RIGHT_AT][0] == 200) == (RIGHT_AT in checked)


async def test_forty_guesses_at_once_get_at_most_five_checks(start_server, tmp_path, http):
    settings = helpers.test_settings(tmp_path, http={"trust_forwarded": True},
                                     auth={"login_failures": LIMIT})
    server = await start_server(settings)
    await server.app[keys.AUTH].add_user("marie", PASSWORD, Role.MODERATOR)

    answers = await guess_all_at_once([str(server.make_url(""))], http)

    assert_at_most_five_checked(answers)
    # Another address is not locked out by these guesses.
    status, body, _ = await (await http(str(server.make_url("")), "192.0.2.7")).request(
        "POST", "/api/session", {"username": "marie", "password": PASSWORD})
    assert (status, body.get("username")) == (200, "marie")


async def test_two_apps_sharing_redis_share_the_limit(start_server, tmp_path, database_url,
                                                      redis_url, channel, http):
    settings = helpers.test_settings(tmp_path, database_url=database_url, redis_url=redis_url,
                                     redis_channel=channel, auth={"login_failures": LIMIT})
    first, second = await start_server(settings), await start_server(settings)
    await first.app[keys.AUTH].add_user("marie", PASSWORD, Role.MODERATOR)

    answers = await guess_all_at_once([str(first.make_url("")), str(second.make_url(""))],
                                      http)

    assert_at_most_five_checked(answers)


async def test_two_processes_sharing_redis_share_the_limit(cluster: Cluster, http):  # noqa: F811
    # The cluster runs config.toml's own limit, five per quarter of an hour.
    answers = await guess_all_at_once([cluster.a.base, cluster.b.base], http, "mod")

    assert_at_most_five_checked(answers)


async def test_a_success_gives_its_attempt_back(start_server, tmp_path, http):
    settings = helpers.test_settings(tmp_path, auth={"login_failures": LIMIT})
    server = await start_server(settings)
    await server.app[keys.AUTH].add_user("marie", PASSWORD, Role.MODERATOR)
    base = str(server.make_url(""))
    marie = await http(base)

    # Four failures, then a director signing in from several tabs all day long.
    for _ in range(4):
        assert (await marie.request("POST", "/api/session",
                                    {"username": "marie", "password": "oops"}))[0] == 401
    for _ in range(8):
        assert (await marie.request("POST", "/api/session",
                                    {"username": "marie", "password": PASSWORD}))[0] == 200
    # The fifth failure is still allowed, the sixth attempt is not.
    assert (await marie.request("POST", "/api/session",
                                {"username": "marie", "password": "oops"}))[0] == 401
    status, body, _ = await marie.request("POST", "/api/session",
                                          {"username": "marie", "password": PASSWORD})
    assert (status, body["error"]) == (429, "too_many_attempts")


async def test_many_addresses_meet_the_looser_per_user_limit(start_server, tmp_path, http):
    settings = helpers.test_settings(
        tmp_path, http={"trust_forwarded": True},
        auth={"login_failures": LIMIT, "login_failures_per_user": {"count": 12, "window_s": 900}})
    server = await start_server(settings)
    await server.app[keys.AUTH].add_user("marie", PASSWORD, Role.MODERATOR)
    await server.app[keys.AUTH].add_user("paul", PASSWORD, Role.MODERATOR)
    base = str(server.make_url(""))

    statuses = []
    for n in range(6):  # six addresses, three guesses each: 18 guesses
        guesser = await http(base, f"198.51.100.{n + 1}")
        for _ in range(3):
            statuses.append((await guesser.request(
                "POST", "/api/session", {"username": "marie", "password": "guess"}))[0])

    assert statuses.count(401) == 12 and statuses.count(429) == 6
    # Only that account is held; another one signs in from one of those addresses.
    paul = await http(base, "198.51.100.1")
    assert (await paul.request("POST", "/api/session",
                               {"username": "paul", "password": PASSWORD}))[0] == 200


@pytest.mark.parametrize("raw,answer", [
    # Text no database can hold is refused at the edge, before any sign-in logic.
    (b'{"username": "\\ud800", "password": "x"}', (422, "invalid_unicode")),
    (b'{"username": "marie", "password": "\\udfff\\ud800"}', (422, "invalid_unicode")),
    (b'{"username": "' + b"m" * 3000 + b'", "password": "x"}', (401, "bad_credentials")),
])
async def test_unstorable_credentials_are_bad_credentials(server, base_url, http, raw, answer):
    await server.app[keys.AUTH].add_user("marie", PASSWORD, Role.MODERATOR)
    client = await http(base_url)
    status, body, _ = await client.request("POST", "/api/session", data=raw,
                                           headers={"Content-Type": "application/json"})
    assert (status, body["error"]) == answer
    status, _, _ = await client.request("POST", "/api/session",
                                        {"username": "marie", "password": PASSWORD})
    assert status == 200  # nothing counted against the real account


async def test_a_stranger_filling_the_per_user_limit_cannot_lock_out_a_known_address(
        start_server, tmp_path, http):
    settings = helpers.test_settings(
        tmp_path, http={"trust_forwarded": True},
        auth={"login_failures": LIMIT, "login_failures_per_user": {"count": 12, "window_s": 900}})
    server = await start_server(settings)
    await server.app[keys.AUTH].add_user("paul", PASSWORD, Role.DIRECTOR)
    base = str(server.make_url(""))
    desk = await http(base, "203.0.113.10")
    await desk.sign_in("paul")  # the director's usual desk, yesterday
    for n in range(6):
        stranger = await http(base, f"198.51.100.{n + 1}")
        for _ in range(2):
            await stranger.request("POST", "/api/session",
                                   {"username": "paul", "password": "guess"})
    elsewhere = await http(base, "192.0.2.99")
    status, _, _ = await elsewhere.request("POST", "/api/session",
                                           {"username": "paul", "password": PASSWORD})
    assert status == 429  # the per-user limit is full: a new address waits

    assert (await desk.sign_in("paul"))["role"] == "director"
