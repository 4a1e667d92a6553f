"""Helper processes of the benchmarks: viewers, moderators and a bare aiohttp baseline.

Each runs as ``python -m tests.benchmarks.fleet ROLE ...``, prints progress on
stderr, answers JSON-line commands read from stdin on stdout, and exits when
its stdin closes (so it never outlives the benchmark that started it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web

from server.http import VIEWER_COOKIE
from tests.benchmarks.procs import raise_nofile, rss_mb
from tests.helpers import PASSWORD, Http, Listener

Command = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

MODERATION = "/moderation"


def viewer_id(index: int) -> str:
    """A valid, stable viewer id, so the load generator can ask as a connected viewer."""
    return f"bench-viewer-{index:08d}"


def say(role: str, message: str) -> None:
    print(f"[{role}] {message}", file=sys.stderr, flush=True)


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve_commands(handle: Command | None = None) -> None:
    """Answer one JSON line per command line until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if handle is not None:
            reply(await handle(json.loads(line)))


# --- viewers -----------------------------------------------------------------


PROGRAMME_KEPT = 16
"""``programme`` pushes remembered per viewer (receive time, segment on air)."""


async def viewers(url: str, first: int, count: int, concurrency: int) -> None:
    """Connect ``count`` viewers to ``/`` and keep them connected until stdin closes.

    Each viewer time-stamps its ``programme`` pushes; {"cmd": "programme",
    "on_air": id, "after": t} answers, per connected viewer, when it first heard
    that segment on air at or after ``t`` (None: not yet).
    """
    role = f"viewers {first}..{first + count - 1}"
    listeners: list[Listener] = []
    heard: list[collections.deque[tuple[float, str | None]]] = []
    received = failed = 0
    gate = asyncio.Semaphore(concurrency)
    start = time.monotonic()
    step = max(1, count // 10)

    def on_my_question(_data: Any) -> None:
        nonlocal received
        received += 1

    async def connect(index: int) -> None:
        nonlocal failed
        async with gate:
            for attempt in range(3):
                try:
                    # As the watch page does: vote counts in one push a second.
                    listener = await Listener.connect(
                        url, "/", cookies=f"{VIEWER_COOKIE}={viewer_id(index)}", events=(),
                        auth={"votes": "batched"})
                except (socketio.exceptions.ConnectionError, OSError, TimeoutError) as e:
                    say(role, f"viewer {index} failed to connect ({e!r}), attempt {attempt + 1}")
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                listener.client.on("my_question", on_my_question, namespace="/")
                pushes: collections.deque[tuple[float, str | None]] = collections.deque(
                    maxlen=PROGRAMME_KEPT)

                def on_programme(data: dict[str, Any], pushes: Any = pushes) -> None:
                    pushes.append((time.monotonic(), data.get("on_air")))

                listener.client.on("programme", on_programme, namespace="/")
                listeners.append(listener)
                heard.append(pushes)
                if len(listeners) % step == 0:
                    say(role, f"{len(listeners)}/{count} connected in "
                              f"{time.monotonic() - start:.1f} s, {rss_mb():.0f} MB")
                return
            failed += 1

    await asyncio.gather(*(connect(first + i) for i in range(count)))
    reply({"ready": True, "connected": len(listeners), "failed": failed,
           "connect_s": round(time.monotonic() - start, 2), "rss_mb": round(rss_mb())})

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        if command.get("cmd") == "programme":
            after, on_air = command["after"], command["on_air"]
            return {"heard": [
                next((t for t, seg in pushes if t >= after and seg == on_air), None)
                for pushes, x in zip(heard, listeners, strict=True) if x.client.connected]}
        return {"connected": sum(1 for x in listeners if x.client.connected),
                "my_question_events": received, "rss_mb": round(rss_mb())}

    await serve_commands(handle)
    # Closing every socket politely is only a courtesy: the OS closes them anyway.
    with_timeout = [asyncio.wait_for(x.close(), 5) for x in listeners]
    await asyncio.gather(*with_timeout, return_exceptions=True)


# --- moderators --------------------------------------------------------------


async def moderators(url: str, names: list[str]) -> None:
    """Sign in each moderator, listen on ``/moderation``, time every ``question`` push."""
    stamps: list[dict[int, float]] = []
    arrived = asyncio.Event()
    sessions: list[Http] = []
    listeners: list[Listener] = []
    for name in names:
        http = await Http.open(url)
        sessions.append(http)
        await http.sign_in(name, PASSWORD)
        listener = await Listener.connect(url, MODERATION, http.cookie_header(), events=())
        listeners.append(listener)
        seen: dict[int, float] = {}
        stamps.append(seen)

        def on_question(data: dict[str, Any], seen: dict[int, float] = seen) -> None:
            # time.monotonic() is CLOCK_MONOTONIC on Linux: one clock for every process.
            seen.setdefault(data["id"], time.monotonic())
            arrived.set()

        listener.client.on("question", on_question, namespace=MODERATION)
    say("moderators", f"{len(listeners)} signed in and listening on {MODERATION}")
    reply({"ready": True, "connected": len(listeners)})

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        """Wait (bounded) for every id, then hand back the receive times and forget them
        (only those ids with ``keep_others``)."""
        ids: list[int] = command.get("ids", [])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(float(command.get("timeout", 10))):
                while not all(all(i in seen for i in ids) for seen in stamps):
                    arrived.clear()
                    await arrived.wait()
        result = [[seen.get(i) for i in ids] for seen in stamps]
        for seen in stamps:
            if command.get("keep_others"):
                # Pushes of questions not asked about yet stay for a later command.
                for i in ids:
                    seen.pop(i, None)
            else:
                seen.clear()
        return {"stamps": result,
                "connected": sum(1 for x in listeners if x.client.connected)}

    try:
        await serve_commands(handle)
    finally:
        for listener in listeners:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.close(), 5)
        for http in sessions:
            await http.close()


# --- baseline ----------------------------------------------------------------


async def baseline(port: int) -> None:
    """The cheapest useful JSON endpoint aiohttp can serve: the ceiling for the ratio."""

    async def ok(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"ok": True}, status=201)

    app = web.Application()
    app.router.add_post("/api/questions", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        reply({"ready": True, "port": port})
        await serve_commands()
    finally:
        await runner.cleanup()


# --- entry point -------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.fleet")
    sub = parser.add_subparsers(dest="role", required=True)
    v = sub.add_parser("viewers")
    v.add_argument("url")
    v.add_argument("--first", type=int, default=0)
    v.add_argument("--count", type=int, required=True)
    v.add_argument("--concurrency", type=int, default=50)
    m = sub.add_parser("moderators")
    m.add_argument("url")
    m.add_argument("names", nargs="+")
    b = sub.add_parser("baseline")
    b.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    raise_nofile()
    logging.basicConfig(level=logging.ERROR)
    if args.role == "viewers":
        asyncio.run(viewers(args.url, args.first, args.count, args.concurrency))
    elif args.role == "moderators":
        asyncio.run(moderators(args.url, args.names))
    else:
        asyncio.run(baseline(args.port))


if __name__ == "__main__":
    main()
