"""Two real server processes sharing one Redis and one PostgreSQL database.

Each test starts ``run.py`` twice with a private Redis channel and a fresh
database, as a show spread over several processes runs: A is the video process,
B is started with ``--no-video`` (README: one video process, the others without).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import socketio

from server.settings import load_settings
from tests.helpers import PASSWORD, ROOT, Http, Listener
from tests.tv.test_protocol import Publisher
from tv.webrtc import restrict_host_addresses

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10
_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


# --- processes ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def _write_config(path: Path, database_url: str, redis_url: str, channel: str) -> Path:
    """The real config.toml, pointed at the shared database and Redis, kept on loopback."""
    raw = tomllib.loads((ROOT / "config.toml").read_text("utf-8"))
    raw["database"]["url"] = database_url
    raw["redis"].update(url=redis_url, channel=channel)
    raw["webrtc"]["host_addresses"] = ["127.0.0.1"]
    raw["logging"]["format"] = "text"
    lines: list[str] = []
    for name, section in raw.items():
        for table in section if isinstance(section, list) else [section]:
            lines.append(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
            lines.append("")
    path.write_text("\n".join(lines), "utf-8")
    settings = load_settings(path)  # a bad rewrite fails here, naming the key
    assert (settings.redis_url, settings.redis_channel) == (redis_url, channel)
    return path


def _die_with_parent() -> None:
    """Runs in the child: SIGTERM it if pytest itself dies, so nothing outlives a run."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


@dataclass
class ServerProcess:
    name: str
    port: int
    proc: asyncio.subprocess.Process
    log_path: Path
    log: IO[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")

    async def wait_healthy(self) -> None:
        """Poll /healthz until 200; fail with the process's output if it never comes."""
        url = f"{self.base}/healthz"
        try:
            async with aiohttp.ClientSession() as session, asyncio.timeout(START_TIMEOUT_S):
                while True:
                    if self.proc.returncode is not None:
                        pytest.fail(f"server {self.name} exited with status "
                                    f"{self.proc.returncode}:\n{self.output()}")
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(url) as resp:
                            if resp.status == 200:
                                return
                    await asyncio.sleep(0.1)  # start-up polling, not synchronisation
        except TimeoutError:
            pytest.fail(f"server {self.name} did not answer /healthz within "
                        f"{START_TIMEOUT_S} s:\n{self.output()}")

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL after a grace period; the exit status."""
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.log.close()
        assert self.proc.returncode is not None
        return self.proc.returncode


async def _spawn(name: str, config: Path, tmp_path: Path, *extra: str) -> ServerProcess:
    port = _free_port()
    log_path = tmp_path / f"server-{name}.log"
    log = _open_log(log_path)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "run.py", "--config", str(config),
            "--host", "127.0.0.1", "--port", str(port), *extra,
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=_ENV,
            preexec_fn=_die_with_parent)
    except BaseException:
        log.close()
        raise
    return ServerProcess(name, port, proc, log_path, log)


async def _adduser(config: Path, name: str, role: str, password_file: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "adduser", name, "--role", role,
        "--password-file", str(password_file), "--config", str(config),
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=_ENV, preexec_fn=_die_with_parent)
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"run.py adduser did not finish:\n{out.decode(errors='replace')}")
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert f"{role} account {name!r}" in text and "Traceback" not in text, text


async def _feed_token(config: Path, feed: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "feed-token", feed, "--config", str(config),
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_ENV, preexec_fn=_die_with_parent)
    async with asyncio.timeout(START_TIMEOUT_S):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    return out.decode().strip()


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    channel: str
    config: Path


@pytest.fixture
async def cluster(tmp_path: Path, postgres_url: str, redis_url: str) -> AsyncIterator[Cluster]:
    """Processes A and B on one PostgreSQL and one Redis, plus a moderator account "mod"."""
    channel = f"tvtest-{uuid.uuid4().hex[:12]}"
    config = _write_config(tmp_path / "config.toml", postgres_url, redis_url, channel)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n", "utf-8")
    servers: list[ServerProcess] = []
    try:
        servers.append(await _spawn("a", config, tmp_path))
        servers.append(await _spawn("b", config, tmp_path, "--no-video"))
        # Three processes migrating the fresh database at once: one does, the others wait.
        results = await asyncio.gather(_adduser(config, "mod", "moderator", password_file),
                                       *(s.wait_healthy() for s in servers),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await _adduser(config, "paul", "director", password_file)
        yield Cluster(servers[0], servers[1], channel, config)
    finally:
        for server in servers:
            await server.stop()
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = [k async for k in client.scan_iter(match=f"{channel}:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


OpenHttp = Callable[..., Awaitable[Http]]
Listen = Callable[..., Awaitable[Listener]]


async def _ask(viewer: Http, text: str, theme: str = "cooperatives") -> dict[str, Any]:
    status, body, _ = await viewer.request("POST", "/api/questions",
                                           {"theme": theme, "text": text, "author": "Awa"})
    assert status == 201, body
    return dict(body)


# --- tests --------------------------------------------------------------------------


async def test_a_question_asked_on_one_process_reaches_moderators_on_both(
        cluster: Cluster, http: OpenHttp, listen: Listen) -> None:
    mod = await http(cluster.b.base)
    await mod.sign_in("mod")
    # The session made on B is good on A too: both read the same database.
    on_b = await listen(cluster.b.base, "/moderation", mod.cookie_header())
    on_a = await listen(cluster.a.base, "/moderation", mod.cookie_header())
    viewer = await http(cluster.a.base)

    body = await _ask(viewer, "Comment une coopérative fixe-t-elle ses prix ? 🌾")

    for console in (on_b, on_a):
        pushed = await console.next("question", within=2, where=lambda q: q["id"] == body["id"])
        assert pushed["text"] == "Comment une coopérative fixe-t-elle ses prix ? 🌾"
        assert pushed["theme"] == "cooperatives"
        assert pushed["status"] == "pending" and pushed["author"] == "Awa"
        assert "viewer_id" in pushed  # the moderators' full representation


async def test_an_approval_on_one_process_reaches_viewers_on_the_other(
        cluster: Cluster, http: OpenHttp, listen: Listen) -> None:
    mod = await http(cluster.b.base)
    await mod.sign_in("mod")
    console = await listen(cluster.b.base, "/moderation", mod.cookie_header())
    asker = await http(cluster.a.base)
    await asker.request("GET", "/api/themes")  # receives its viewer cookie
    asker_socket = await listen(cluster.a.base, "/", asker.cookie_header())
    audience = await listen(cluster.a.base, "/")

    body = await _ask(asker, "Le prix minimum garanti suit-il l'inflation ?", "fair-price")
    seen = await console.next("question", within=2, where=lambda q: q["id"] == body["id"])
    status, approved, _ = await mod.request("PATCH", f"/api/questions/{body['id']}",
                                            {"status": "approved", "version": seen["version"]})
    assert status == 200, approved

    public = await audience.next("question", within=2, where=lambda q: q["id"] == body["id"])
    assert public["status"] == "approved"
    assert public["text"] == "Le prix minimum garanti suit-il l'inflation ?"
    assert not {"viewer_id", "flags", "note"} & set(public)
    # The asker hears of their own question twice: received, then approved.
    mine = [await asker_socket.next("my_question", within=2) for _ in range(2)]
    assert [(q["id"], q["status"]) for q in mine] == [(body["id"], "pending"),
                                                      (body["id"], "approved")]

    # On air from B, shown and then cleared on A's viewers.
    status, _, _ = await mod.request("PUT", "/api/on-air", {"question_id": body["id"]})
    assert status == 200
    on_air = await audience.next("on_air", within=2, where=lambda q: q is not None)
    assert on_air["id"] == body["id"] and "viewer_id" not in on_air
    status, _, _ = await mod.request("DELETE", "/api/on-air")
    assert status == 200
    assert await audience.next("on_air", within=2) is None
    status, shown, _ = await asker.request("GET", "/api/on-air")
    assert (status, shown) == (200, None)


async def test_the_per_viewer_limit_holds_across_processes(
        cluster: Cluster, http: OpenHttp) -> None:
    viewer = await http(cluster.a.base)
    for n in range(5):
        await _ask(viewer, f"Question numéro {n} sur les labels ?")

    same_viewer_on_b = Http(cluster.b.base, viewer.session)  # same cookie jar, other process
    status, body, resp = await same_viewer_on_b.request(
        "POST", "/api/questions", {"theme": "growth", "text": "Et une sixième ?"})

    assert status == 429, body
    assert body["error"] == "rate_limited"
    assert 0 < int(resp.headers["Retry-After"]) <= 600
    # Only that viewer is held back: another one asks on B freely.
    other = await http(cluster.b.base)
    await _ask(other, "Une autre personne peut-elle encore demander ?", "growth")
    status, mine, _ = await same_viewer_on_b.request("GET", "/api/questions/mine")
    assert status == 200 and len(mine) == 5


async def test_both_processes_stop_cleanly_on_sigterm(
        cluster: Cluster, http: OpenHttp, listen: Listen) -> None:
    mod = await http(cluster.b.base)
    await mod.sign_in("mod")
    console = await listen(cluster.b.base, "/moderation", mod.cookie_header())
    body = await _ask(await http(cluster.a.base), "Qui paie la certification ?")
    await console.next("question", within=2, where=lambda q: q["id"] == body["id"])
    # The console leaves first: with a Socket.IO client still connected, aiohttp
    # waits out its shutdown_timeout for the websocket (about 10 s, see the report).
    await console.close()

    codes = await asyncio.gather(cluster.a.stop(), cluster.b.stop())

    assert codes == [0, 0], cluster.a.output() + cluster.b.output()
    for server in (cluster.a, cluster.b):
        output = server.output()
        assert "Traceback" not in output, output
        assert "Task was destroyed" not in output, output


async def test_the_video_process_serves_the_control_rooms_and_sites_of_every_process(
        cluster: Cluster, http: OpenHttp) -> None:
    """A has the video; a director and a site connected to B see what A receives."""
    token = await _feed_token(cluster.config, "afrique")
    director = await http(cluster.b.base)
    await director.sign_in("paul")
    control = await Listener.connect(cluster.b.base, "/control", director.cookie_header(),
                                     events=("programme", "feeds"))
    site = socketio.AsyncClient(reconnection=False)
    statuses: asyncio.Queue[Any] = asyncio.Queue()
    site.on("feed_status", statuses.put_nowait, namespace="/contribute")
    await site.connect(cluster.b.base, namespaces=["/contribute"], transports=["websocket"],
                       auth={"feed": "afrique", "token": token}, wait_timeout=5)
    # This test's own WebRTC peer offers 127.0.0.1 only, like the servers.
    undo = restrict_host_addresses(["127.0.0.1"])
    publisher = await Publisher.start(cluster.a.base, "afrique", token)
    try:
        def afrique(feeds: list[dict[str, Any]]) -> str:
            return next(f["state"] for f in feeds if f["feed"] == "afrique")

        await control.next("feeds", within=10, where=lambda feeds: afrique(feeds) == "live")
        status = await asyncio.wait_for(statuses.get(), 5)
        while status["state"] != "live":
            status = await asyncio.wait_for(statuses.get(), 5)
        assert status["feed"] == "afrique" and status["fps"] is not None

        # Only the video process reports: no push from B says the feed is offline.
        control.drain("feeds")
        pushes = [await control.next("feeds", within=2.5) for _ in range(3)]
        assert [afrique(p) for p in pushes] == ["live"] * 3

        # B sends the media requests away, in words.
        for method, path in (("POST", "/whep"), ("GET", "/api/feeds")):
            got, body, _ = await director.request(method, path)
            assert got == 503, (path, body)
            assert body["error"] == "video_elsewhere" and "/whep" in body["message"]
    finally:
        await publisher.close()
        undo()
        await site.disconnect()
        await control.close()
