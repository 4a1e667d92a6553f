"""Test helpers: real HTTP viewers, real Socket.IO clients, staff sign-in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
import socketio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.settings import Settings, parse_settings

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"


def test_settings(tmp_path: Path, database_url: str | None = None, redis_url: str = "",
                  redis_channel: str = "tvtest", **sections: dict[str, Any]) -> Settings:
    """The real config.toml, pointed at a private database and kept on loopback."""
    raw = tomllib.loads((ROOT / "config.toml").read_text("utf-8"))
    raw["database"] = {"url": database_url or f"sqlite:///{tmp_path / 'tv.sqlite3'}"}
    raw["redis"] = {"url": redis_url, "channel": redis_channel}
    raw["webrtc"] = {"host_addresses": ["127.0.0.1"], "ice_servers": []}
    raw["logging"] = {"format": "text", "level": "WARNING"}
    # The test's own clients share the server's event loop here, so its lag is
    # theirs as much as the server's: lag-based shedding is left to the tests
    # that set it (tests/server/test_load.py), and to run.py's processes.
    raw["load"] = {"loop_lag_ms": 10_000}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_settings(raw, base_dir=tmp_path)


def services_required() -> bool:
    """In CI a missing PostgreSQL, Redis or Chromium is a failure, not a skip."""
    return os.environ.get("TV_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip for want of ``reason``; in CI (TV_REQUIRE_SERVICES=1), fail instead."""
    if services_required():
        pytest.fail(f"TV_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def require_namespace() -> None:
    """Root, ``unshare`` and ``ip`` make a private network namespace with only ``lo``;
    a container may refuse one."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        unavailable("a private network namespace (unshare -n) needs root")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        unavailable("unshare (util-linux) and ip (iproute2) are needed")
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"],
                           capture_output=True, text=True, timeout=10, check=False)
    if probe.returncode != 0:
        unavailable(f"cannot make a network namespace here: {probe.stderr.strip()}")


def run_in_namespace(script: Path, timeout: float = 180) -> dict[str, Any]:
    """Run ``script`` with this Python in a network namespace that has only ``lo``;
    its last JSON line on stdout, with its exit code and the end of its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = f"ip link set lo up && exec {sys.executable} {script.relative_to(ROOT)}"
    done = subprocess.run(["unshare", "-n", "sh", "-c", command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result line (exit {done.returncode}); stderr:\n{done.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["exit_code"] = done.returncode
    result["stderr_tail"] = done.stderr[-4000:]
    return result


async def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request written byte for byte on loopback (bad header bytes and all),
    read to the end: (status, lower-cased headers, body). Send ``Connection: close``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
    return int(status_line.split()[1]), headers, body


@dataclass
class Http:
    """One browser-like HTTP client with its own cookie jar (one viewer or staff member)."""

    base: str
    session: aiohttp.ClientSession
    csrf: str | None = None

    @classmethod
    async def open(cls, base: str, forwarded_for: str | None = None) -> Http:
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                        headers=headers)
        return cls(base.rstrip("/"), session)

    async def request(self, method: str, path: str, body: Any = None,
                      **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(kwargs.pop("headers", {}))
        if self.csrf and method not in ("GET", "HEAD"):
            headers.setdefault("X-CSRF-Token", self.csrf)
        async with self.session.request(method, self.base + path, json=body, headers=headers,
                                        allow_redirects=False, **kwargs) as resp:
            raw = await resp.read()
            data: Any = json.loads(raw) if resp.content_type == "application/json" else raw
            return resp.status, data, resp

    async def sign_in(self, username: str, password: str = PASSWORD) -> dict[str, Any]:
        status, body, _ = await self.request("POST", "/api/session",
                                             {"username": username, "password": password})
        assert status == 200, body
        self.csrf = body["csrf_token"]
        return dict(body)

    def cookie_header(self) -> str:
        return "; ".join(f"{c.key}={c.value}" for c in self.session.cookie_jar)

    async def close(self) -> None:
        await self.session.close()


@dataclass
class Listener:
    """A real Socket.IO client whose pushes are collected per event name."""

    client: socketio.AsyncClient
    namespace: str
    queues: dict[str, asyncio.Queue[Any]] = field(default_factory=dict)

    @classmethod
    async def connect(cls, base: str, namespace: str = "/", cookies: str = "",
                      events: tuple[str, ...] = ("question", "question_removed", "on_air",
                                                 "my_question", "programme", "votes"),
                      auth: dict[str, Any] | None = None) -> Listener:
        client = socketio.AsyncClient(reconnection=False)
        listener = cls(client, namespace)
        for name in events:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            listener.queues[name] = queue
            client.on(name, queue.put_nowait, namespace=namespace)
        headers = {"Cookie": cookies} if cookies else {}
        await client.connect(base, namespaces=[namespace], transports=["websocket"],
                             headers=headers, wait_timeout=5, auth=auth)
        return listener

    async def next(self, event: str, within: float = 5.0,
                   where: Any = None) -> Any:
        """The next push of ``event`` (matching ``where`` if given), or TimeoutError."""
        async with asyncio.timeout(within):
            while True:
                item = await self.queues[event].get()
                if where is None or where(item):
                    return item

    def drain(self, event: str) -> list[Any]:
        items = []
        while not self.queues[event].empty():
            items.append(self.queues[event].get_nowait())
        return items

    async def close(self) -> None:
        await self.client.disconnect()


async def hold_every_connection(engine: AsyncEngine, stack: contextlib.AsyncExitStack) -> int:
    """Check out ``engine``'s connections until its pool has none left (as a
    saturating audience would); they go back when ``stack`` closes. How many."""
    held = 0
    while True:
        try:
            async with asyncio.timeout(0.5):
                conn: AsyncConnection = await engine.connect()
        except TimeoutError:
            return held  # the next one would wait for the pool: it is saturated
        stack.push_async_callback(conn.close)
        held += 1
