"""A full disk and a read-only database, for real (issue 8, defect 10).

Each runs ``run.py`` in a private mount namespace (``unshare -m``) whose data
folder is a small tmpfs (a disk that fills up) or a read-only bind mount: the
server meets the same errors as on a real machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import ROOT, unavailable

SERVER_SCRIPT = """
set -e
mount -t tmpfs -o size=3m tmpfs "$DATA"
"$PY" run.py --config "$CFG" --port "$PORT" &
server=$!
trap 'kill $server 2>/dev/null' EXIT
until [ -e "$CTL/fill" ]; do sleep 0.05; done
dd if=/dev/zero of="$DATA/filler" bs=16k 2>/dev/null || true
touch "$CTL/filled"
until [ -e "$CTL/free" ]; do sleep 0.05; done
rm -f "$DATA/filler"
touch "$CTL/freed"
wait $server
"""


def _require_mount_namespace() -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None:
        unavailable("a private mount namespace (unshare -m) needs root and util-linux")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True, text=True, timeout=10, check=False)
    if probe.returncode != 0:
        unavailable(f"cannot make a mount namespace here: {probe.stderr.strip()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(tmp_path: Path, data: Path, **qa: Any) -> Path:
    raw = (ROOT / "config.toml").read_text("utf-8")
    settings = tomllib.loads(raw)
    assert settings["database"]["url"] == ""  # replaced below, line for line
    raw = raw.replace('url = ""\n# Where', f'url = "sqlite:///{data}/tv.sqlite3"\n# Where', 1)
    raw = raw.replace('host_addresses = []', 'host_addresses = ["127.0.0.1"]', 1)
    raw = raw.replace("rate_per_ip = { count = 100, window_s = 600 }",
                      "rate_per_ip = { count = 10000, window_s = 600 }", 1)
    path = tmp_path / "config.toml"
    path.write_text(raw, "utf-8")
    assert tomllib.loads(raw)["database"]["url"].endswith("tv.sqlite3")
    return path


def _poll_file(path: Path, within: float) -> None:
    # The file is made by a process in another mount namespace: nothing to await but it.
    deadline = time.monotonic() + within
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} never appeared")
        time.sleep(0.05)


async def _wait_for(path: Path, within: float = 15.0) -> None:
    await asyncio.to_thread(_poll_file, path, within)


@pytest.fixture
async def full_disk_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path, Path]]:
    _require_mount_namespace()
    data, ctl = tmp_path / "data", tmp_path / "ctl"
    data.mkdir()
    ctl.mkdir()
    port = _free_port()
    env = {**os.environ, "DATA": str(data), "CTL": str(ctl), "PY": sys.executable,
           "CFG": str(_config(tmp_path, data)), "PORT": str(port)}
    log = (tmp_path / "server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        "unshare", "-m", "sh", "-c", SERVER_SCRIPT, cwd=ROOT, env=env, stdout=log, stderr=log,
        start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", ctl, tmp_path / "server.log"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        async with asyncio.timeout(15):
            await proc.wait()
        log.close()


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def _healthz_becomes(session: aiohttp.ClientSession, base: str, wanted: int,
                           within: float, calm: bool = False) -> dict[str, Any]:
    """/healthz answers ``wanted``; with ``calm``, also not shedding load (a
    process just started may be late for a moment, and refuse the audience)."""
    async with asyncio.timeout(within):
        while True:
            try:
                status, body = await _get(session, base + "/healthz")
                if status == wanted and not (calm and body.get("status") != "ok"):
                    return dict(body)
            except aiohttp.ClientConnectionError:
                pass  # not listening yet
            await asyncio.sleep(0.1)


async def test_a_full_disk_is_a_clear_503_and_healthz_says_so(
        full_disk_server: tuple[str, Path, Path]) -> None:
    base, ctl, log = full_disk_server
    async with aiohttp.ClientSession() as probe:
        await _healthz_becomes(probe, base, 200, within=30, calm=True)
    stored: list[tuple[aiohttp.ClientSession, int]] = []
    viewers: list[aiohttp.ClientSession] = []

    async def ask(n: int) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
        viewer = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        viewers.append(viewer)
        async with viewer.post(base + "/api/questions", json={
                "theme": "fair-price", "text": f"Question {n} : " + "prix juste ? " * 30}) as r:
            body = await r.json()
            if r.status == 201:
                stored.append((viewer, body["id"]))
            return r.status, body, r

    try:
        status, body, _ = await ask(0)
        assert status == 201, body
        (ctl / "fill").touch()
        await _wait_for(ctl / "filled")

        refused = None
        for n in range(1, 400):
            status, body, resp = await ask(n)
            assert status in (201, 503), (status, body)
            if status == 503:
                refused = (body, resp)
                break
        assert refused is not None, "the disk never filled up"
        body, resp = refused
        assert body["error"] == "storage_unavailable" and body["message"]
        assert int(resp.headers["Retry-After"]) > 0
        async with aiohttp.ClientSession() as probe:
            health = await _healthz_becomes(probe, base, 503, within=5)
            assert "refuses writes" in health["message"]

            (ctl / "free").touch()
            await _wait_for(ctl / "freed")
            await _healthz_becomes(probe, base, 200, within=15, calm=True)
        status, body, _ = await ask(1000)
        assert status == 201, body
        # Every question answered 201 is there, for its own viewer.
        for viewer, qid in stored:
            status, mine = await _get(viewer, base + "/api/questions/mine")
            assert status == 200 and [q["id"] for q in mine] == [qid]
    finally:
        for viewer in viewers:
            await viewer.close()
    text = log.read_text("utf-8", "replace")
    assert "Traceback" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["message"] == "the database refuses writes" for line in lines)
    assert any(line["message"] == "the database takes writes again" for line in lines)


def test_a_read_only_database_stops_the_server_with_one_clear_line(tmp_path: Path) -> None:
    _require_mount_namespace()
    data = tmp_path / "data"
    data.mkdir()
    script = ('mount --bind "$DATA" "$DATA" && mount -o remount,bind,ro "$DATA" && '
              'exec "$PY" run.py --config "$CFG" --port "$PORT"')
    env = {**os.environ, "DATA": str(data), "PY": sys.executable,
           "CFG": str(_config(tmp_path, data)), "PORT": str(_free_port())}
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    last = json.loads(done.stderr.strip().splitlines()[-1])
    assert last["level"] == "critical"
    assert "Read-only file system" in last["message"] or "readonly" in last["message"]
