"""A rehearsal of the whole show through ``run.py --rehearsal --speed 240``: four hours in a minute.

A real server process, a real Socket.IO viewer collecting every ``programme``
push, and the real show's database checked untouched afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from schedule.model import Action, Entry
from schedule.store import TakeLog
from server import db
from server.settings import load_settings
from tests.helpers import ROOT, Listener

SPEED = 240  # 4 h of show in 60 s
SHOW_TIMEOUT_S = 120
START_TIMEOUT_S = 30
ORDER = [s.id for s in load_settings(ROOT / "config.toml").plan.segments]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Runs in the child: SIGTERM it if pytest itself dies, so nothing outlives a run."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def write_config(path: Path, show_db: Path, rehearsal_db: Path) -> Path:
    """The real config.toml with both databases in ``tmp_path``, kept on loopback."""
    text = (ROOT / "config.toml").read_text("utf-8")
    section = text.index("[database]")
    head, tail = text[:section], text[section:]
    tail = tail.replace('url = ""', f"url = {json.dumps(f'sqlite:///{show_db}')}", 1)
    tail = tail.replace('rehearsal_url = ""',
                        f"rehearsal_url = {json.dumps(f'sqlite:///{rehearsal_db}')}", 1)
    tail = tail.replace("host_addresses = []", 'host_addresses = ["127.0.0.1"]', 1)
    tail = tail.replace('format = "json"', 'format = "text"', 1)
    path.write_text(head + tail, "utf-8")
    return path


def text_of(path: Path) -> str:
    """The server's output, for failure messages."""
    return path.read_text("utf-8", errors="replace")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def load_log(url: str, show: str) -> list[Entry]:
    engine = db.make_engine(url)
    try:
        return await TakeLog(engine, show).load()
    finally:
        await engine.dispose()


async def wait_healthy(base: str, proc: asyncio.subprocess.Process, output: Path) -> None:
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(START_TIMEOUT_S):
            while True:
                if proc.returncode is not None:
                    pytest.fail(f"run.py exited with {proc.returncode}:\n{text_of(output)}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)  # start-up polling, not synchronisation
    except TimeoutError:
        pytest.fail(f"run.py did not answer /healthz:\n{text_of(output)}")


async def test_a_rehearsal_runs_the_whole_show_in_a_minute_apart_from_the_real_show(tmp_path):
    show_db, rehearsal_db = tmp_path / "show.sqlite3", tmp_path / "rehearsal.sqlite3"
    config = write_config(tmp_path / "config.toml", show_db, rehearsal_db)
    settings = load_settings(config)
    # The real show's log already holds the director's start; the rehearsal must not touch it.
    engine = db.make_engine(settings.database_url)
    try:
        await db.migrate(engine)
        real_start = Entry(1, datetime(2027, 5, 9, 12, 0, tzinfo=UTC), Action.START,
                           "ouverture", by="paul")
        await TakeLog(engine, "show").append([real_start], real_start.at)
    finally:
        await engine.dispose()
    show_before = digest(show_db)

    port, output = _free_port(), tmp_path / "server.log"
    with output.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "run.py", "--config", str(config), "--rehearsal",
            "--speed", str(SPEED), "--host", "127.0.0.1", "--port", str(port),
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_die_with_parent)
    viewer: Listener | None = None
    pushes: list[dict[str, Any]] = []
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_healthy(base, proc, output)
        viewer = await Listener.connect(base, "/", events=("programme",))
        began = time.monotonic()
        try:
            async with asyncio.timeout(SHOW_TIMEOUT_S):
                while not pushes or pushes[-1]["state"] != "ended":
                    pushes.append(await viewer.next("programme", within=SHOW_TIMEOUT_S))
        except TimeoutError:
            pytest.fail(f"the rehearsal did not end within {SHOW_TIMEOUT_S} s; last push: "
                        f"{pushes[-1:]}\n{text_of(output)}")
        lasted = time.monotonic() - began
    finally:
        if viewer is not None:
            await viewer.close()
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()

    # Every segment went on air, in the running order, none skipped.
    on_air: list[str] = []
    for push in pushes:
        if push["on_air"] and (not on_air or on_air[-1] != push["on_air"]):
            on_air.append(push["on_air"])
    first = ORDER.index(on_air[0])
    assert first <= 1, f"the viewer joined late, at {on_air[0]}"  # 12.5 s in, at most
    assert on_air == ORDER[first:]
    final = pushes[-1]
    assert final["event"]["rehearsal"] is True and final["event"]["speed"] == SPEED
    assert [s["id"] for s in final["segments"]] == ORDER
    for seg, after in pairwise(final["segments"]):
        assert seg["actual_end"] == after["actual_start"], seg["id"]
    for seg in final["segments"]:
        assert not seg["skipped"], seg["id"]
        assert seg["actual_start"] == seg["planned_start"], seg["id"]  # on time, every one
    assert final["over_under_s"] == 0
    assert 45 <= lasted <= SHOW_TIMEOUT_S, f"{lasted:.1f} s for four hours at x{SPEED}"
    assert proc.returncode == 0, text_of(output)
    assert "Traceback" not in text_of(output)

    # The rehearsal kept its own log, in its own database; the real show's is untouched.
    rehearsal_log = await load_log(settings.rehearsal_database_url, "rehearsal")
    assert [e.segment_id for e in rehearsal_log
            if e.action in (Action.START, Action.TAKE)] == ORDER
    assert rehearsal_log[-1].action == Action.END
    assert await load_log(settings.rehearsal_database_url, "show") == []
    assert digest(show_db) == show_before
    assert await load_log(settings.database_url, "show") == [real_start]
    assert await load_log(settings.database_url, "rehearsal") == []
