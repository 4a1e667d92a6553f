"""A Redis outage under two real server processes (issue 8, defect 9).

Each test starts its own ``redis-server`` on a free loopback port (never the
shared one) and stops it while two ``run.py`` processes share it and one
PostgreSQL database. What a user would notice: questions are still taken (no
500), ``/healthz`` says Redis is down, and once Redis is back the moderators'
consoles on both processes are told to catch up and see every question.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from server.settings import ConfigError
from tests.helpers import PASSWORD, Http, Listener, unavailable
from tests.helpers import test_settings as settings_for
from tests.server.test_multiprocess import (
    ServerProcess,
    _adduser,
    _free_port,
    _spawn,
    _write_config,
)

OUTAGE_S = 4.0
# Within this, a health check answers; a question is answered even while Redis is away.
PROMPT_S = 1.5
# Within this after Redis is back, everything works as before (retry_s is 1 s).
RECOVERY_S = 6.0

OpenHttp = Callable[..., Awaitable[Http]]
Listen = Callable[..., Awaitable[Listener]]


class PrivateRedis:
    """A throw-away redis-server of this test's own, stopped and started at will."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = aioredis.Redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(OSError, aioredis.RedisError):
                        await client.ping()
                        return
                    await asyncio.sleep(0.05)  # start-up polling, not synchronisation
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """Kill it, as a crash or a lost host would: no goodbye to its clients."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted, nothing is answered (a hung host)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    async def counts(self, pattern: str) -> list[int]:
        """How many hits each rate-limit key matching ``pattern`` holds."""
        client = aioredis.Redis.from_url(self.url)
        try:
            return [int(await client.zcard(key)) async for key in client.scan_iter(match=pattern)]
        finally:
            await client.aclose()

    async def subscribers(self, channel: str) -> int:
        client = aioredis.Redis.from_url(self.url)
        try:
            counts = await client.pubsub_numsub(channel)
            return int(counts[0][1])
        finally:
            await client.aclose()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is needed to stage a Redis outage")
    redis = PrivateRedis(tmp_path)
    try:
        yield redis
    finally:
        await redis.stop()


async def _start(tmp_path: Path, postgres_url: str, redis: PrivateRedis,
                 names: tuple[str, ...]) -> tuple[str, list[ServerProcess]]:
    """``run.py`` processes (without video: not needed here) on one database and Redis;
    the Redis channel (key prefix) they use."""
    channel = f"tvtest-{uuid.uuid4().hex[:12]}"
    config = _write_config(tmp_path / "config.toml", postgres_url, redis.url, channel)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n", "utf-8")
    servers = [await _spawn(name, config, tmp_path, "--no-video") for name in names]
    await _adduser(config, "mod", "moderator", password_file)
    return channel, servers


async def _consoles_on_both(a: ServerProcess, b: ServerProcess, redis: PrivateRedis,
                            channel: str, http: OpenHttp,
                            consoles: dict[str, Listener]) -> Http:
    """Once both are healthy: a moderator signed in on A, with a console on each process
    (into ``consoles``), both processes listening on Redis."""
    await asyncio.gather(a.wait_healthy(), b.wait_healthy())
    mod = await http(a.base)
    await mod.sign_in("mod")
    for server in (a, b):
        consoles[server.name] = await Listener.connect(
            server.base, "/moderation", mod.cookie_header(), events=("question", "resync"))
    await _until(lambda: _subscribed(redis, f"{channel}:socketio", 2), 10,
                 "both processes listening on Redis")
    return mod


async def _until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``condition`` until true; how long it took."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(within):
            while True:
                if await condition():
                    break
                await asyncio.sleep(0.1)  # polling an outside state, not synchronisation
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {within} s")
    return time.monotonic() - started


async def _health(base: str, path: str = "/healthz") -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(base + path) as resp:
        body = await resp.json()
        return resp.status, body, time.monotonic() - started


async def _ask(viewer: Http, text: str) -> tuple[int, Any, aiohttp.ClientResponse, float]:
    started = time.monotonic()
    status, body, resp = await viewer.request("POST", "/api/questions",
                                              {"theme": "growth", "text": text})
    return status, body, resp, time.monotonic() - started


def _assert_no_500(status: int, body: Any, resp: aiohttp.ClientResponse) -> None:
    assert status != 500, body
    if status == 503:  # allowed: a clear "try again", never a crash
        assert body["error"] and "Retry-After" in resp.headers, body


async def test_questions_survive_a_redis_outage_and_consoles_catch_up(
        tmp_path: Path, postgres_url: str, private_redis: PrivateRedis,
        http: OpenHttp, listen: Listen) -> None:
    await private_redis.start()
    channel, (a, b) = await _start(tmp_path, postgres_url, private_redis, ("a", "b"))
    consoles: dict[str, Listener] = {}
    try:
        mod = await _consoles_on_both(a, b, private_redis, channel, http, consoles)

        # --- Redis goes away ------------------------------------------------------
        await private_redis.stop()
        for server in (a, b):
            status, body, took = await _health(server.base)
            assert status == 503, body
            assert body["checks"]["redis"] == "down" and body["checks"]["database"] == "ok"
            assert "Redis" in body["message"] and took < PROMPT_S, (body, took)
            status, body, took = await _health(server.base, "/healthz/serving")
            assert (status, body["status"]) == (200, "degraded") and took < PROMPT_S

        accepted: list[int] = []
        ends = time.monotonic() + OUTAGE_S
        n = 0
        while time.monotonic() < ends:
            server = (a, b)[n % 2]
            viewer = await http(server.base)
            status, body, resp, took = await _ask(viewer, f"Pendant la panne, question {n} ?")
            _assert_no_500(status, body, resp)
            assert took < PROMPT_S, f"a question waited {took:.1f} s on a dead Redis"
            if status == 201:
                accepted.append(body["id"])
                # This process's own moderators still hear of it at once.
                pushed = await consoles[server.name].next(
                    "question", within=2, where=lambda q, i=body["id"]: q["id"] == i)
                assert pushed["status"] == "pending"
            n += 1
            await asyncio.sleep(0.2)  # a steady audience, not a flood
        assert len(accepted) >= 4, accepted
        # Signing in is rate-limited too, and works as well.
        late = await http(b.base)
        await late.sign_in("mod")

        # --- Redis is back --------------------------------------------------------
        await private_redis.start()
        for server in (a, b):
            await _until(lambda s=server: _healthy(s.base), RECOVERY_S, f"{server.name} healthy")
        for name, console in consoles.items():
            told = await console.next("resync", within=RECOVERY_S)
            assert told["reason"], name
        status, listed, _ = await mod.request("GET", "/api/questions")
        assert status == 200
        assert set(accepted) <= {q["id"] for q in listed}
        # Once the circuit breaker's pause (retry_s) is over, Redis counts again.
        for server in (a, b):
            await _until(lambda s=server: _counted_in_redis(private_redis, channel, s, http),
                         RECOVERY_S, f"questions on {server.name} counted in Redis")

        # Pushes between the processes work again, both ways.
        for server in (a, b):
            status, body, _, _ = await _ask(await http(server.base), "Et après la panne ?")
            assert status == 201, body
            for console in consoles.values():
                await console.next("question", within=2,
                                   where=lambda q, i=body["id"]: q["id"] == i)
    finally:
        # The consoles leave first: aiohttp waits out its shutdown for open websockets.
        for console in consoles.values():
            await console.close()
        codes = await asyncio.gather(a.stop(), b.stop())
    for server in (a, b):
        output = server.output()
        assert "Traceback" not in output, output
        assert "Task was destroyed" not in output, output
        # Said once when it went, once when it came back, per part concerned.
        for words in ("each process counts the rate limits", "the rate limits are shared",
                      "pushes from other processes are held", "pushes reach the clients"):
            assert output.count(words) == 1, (words, output)
    assert codes == [0, 0]


async def test_a_process_started_while_redis_is_down_serves_and_picks_it_up(
        tmp_path: Path, postgres_url: str, private_redis: PrivateRedis,
        http: OpenHttp) -> None:
    channel, (a,) = await _start(tmp_path, postgres_url, private_redis, ("a",))
    try:
        await _until(lambda: _serving(a), 30, "the process serving without Redis")
        status, body, _ = await _health(a.base)
        assert status == 503 and body["checks"]["redis"] == "down", body
        status, body, _, _ = await _ask(await http(a.base), "Sans Redis au démarrage ?")
        assert status == 201, body

        await private_redis.start()
        await _until(lambda: _healthy(a.base), RECOVERY_S, "healthy once Redis is up")
        # Once the circuit breaker's pause (retry_s) is over, Redis counts again.
        await _until(lambda: _counted_in_redis(private_redis, channel, a, http),
                     RECOVERY_S, "questions counted in Redis")
        viewer = await http(a.base)
        for n in range(5):
            status, body, _, _ = await _ask(viewer, f"Question {n} avec Redis ?")
            assert status == 201, body
        # The limit is Redis's again: Redis holds the count, and the sixth is refused.
        assert 5 in await private_redis.counts(f"{channel}:rl:ask:viewer:*")
        status, body, _, _ = await _ask(viewer, "Une sixième ?")
        assert status == 429, body
    finally:
        code = await a.stop()
    output = a.output()
    assert "Redis cannot be reached at start-up" in output, output
    assert "Traceback" not in output, output
    assert code == 0


async def _counted_in_redis(redis: PrivateRedis, channel: str, server: ServerProcess,
                            http: OpenHttp) -> bool:
    """Ask from a new viewer on ``server``: did its per-viewer count land in Redis?"""
    pattern = f"{channel}:rl:ask:viewer:*"
    before = len(await redis.counts(pattern))
    status, body, _, _ = await _ask(await http(server.base), "Redis compte-t-il ?")
    assert status == 201, body
    return len(await redis.counts(pattern)) > before


async def _subscribed(redis: PrivateRedis, channel: str, count: int) -> bool:
    return await redis.subscribers(channel) == count


async def _healthy(base: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        status, _, _ = await _health(base)
        return status == 200
    return False


async def _serving(server: ServerProcess) -> bool:
    if server.proc.returncode is not None:
        pytest.fail(f"server {server.name} exited:\n{server.output()}")
    with contextlib.suppress(aiohttp.ClientError):
        status, _, _ = await _health(server.base, "/healthz/serving")
        return status == 200
    return False



async def test_a_redis_that_stops_answering_costs_one_request_a_moment_at_most(
        tmp_path: Path, postgres_url: str, private_redis: PrivateRedis,
        http: OpenHttp) -> None:
    """A hung Redis (no refusal, no answer) is met by timeouts and a circuit breaker."""
    await private_redis.start()
    channel, (a, b) = await _start(tmp_path, postgres_url, private_redis, ("a", "b"))
    consoles: dict[str, Listener] = {}
    try:
        mod = await _consoles_on_both(a, b, private_redis, channel, http, consoles)

        private_redis.pause()
        status, body, took = await _health(a.base)
        assert (status, body["checks"]["redis"]) == (503, "down") and took < PROMPT_S, took
        accepted, times = [], []
        for n in range(8):
            status, body, _, took = await _ask(await http(a.base), f"Redis muet, {n} ?")
            assert status == 201, body
            accepted.append(body["id"])
            times.append(took)
            await consoles["a"].next("question", within=2,
                                     where=lambda q, i=body["id"]: q["id"] == i)
            await asyncio.sleep(0.25)  # a steady audience over about three seconds
        # The first question met the timeouts (limit, then push): later ones do not wait.
        assert times[0] < 2 * PROMPT_S and max(times[1:]) < 0.5, times

        private_redis.resume()
        # B's subscription never broke: A, whose pushes were lost, asks B to resync.
        await consoles["b"].next("resync", within=RECOVERY_S)
        status, listed, _ = await mod.request("GET", "/api/questions")
        assert set(accepted) <= {q["id"] for q in listed}
        await _until(lambda: _healthy(a.base), RECOVERY_S, "healthy once Redis answers")
        status, body, _, _ = await _ask(await http(a.base), "Et Redis répond ?")
        await consoles["b"].next("question", within=2, where=lambda q: q["id"] == body["id"])
    finally:
        private_redis.resume()
        for console in consoles.values():
            await console.close()
        codes = await asyncio.gather(a.stop(), b.stop())
    for server in (a, b):
        assert "Traceback" not in server.output(), server.output()
    assert codes == [0, 0]


@pytest.mark.parametrize(("key", "value"), [("timeout_s", 0), ("retry_s", "soon")])
def test_a_wrong_redis_timing_names_its_key(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"redis.{key}"):
        settings_for(tmp_path, redis={key: value})
