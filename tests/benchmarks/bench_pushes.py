"""Pushes to every viewer: what one broadcast costs the server, ours against python-socketio's.

A question approved or a vote count changed is pushed to every viewer on
``/``. python-socketio's manager sends a broadcast through one asyncio task
per recipient; ours (``server.realtime``) queues the packet, encoded once,
for each recipient in one task, and bounds each client's queue. Both run
here in turn in a bare aiohttp + Socket.IO server process (no other work),
with the same viewers (``fleet viewers`` processes) and the same pushes,
so the difference is the broadcast path alone.

    .venv/bin/python -m tests.benchmarks.bench_pushes \
        [--viewers 1000 --pushes 100 --rate 20 --runs 3]

For each variant and run: the server's CPU seconds from the first push until
every viewer has received every push, divided by the pushes (``cpu_ms_per_push``),
the longest the server's event loop was held during that time
(``loop_held_max_ms``, sampled every 5 ms), and the time for the last push to
reach the last viewer (``delivered_s``). Exits 1 unless ours costs less CPU
per push than python-socketio's (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web

from server.realtime import create_sio
from tests.benchmarks.fleet import serve_commands
from tests.benchmarks.procs import Child, free_port, raise_nofile, run_bench, say
from tests.helpers import test_settings

# What a viewer receives when a vote count changes (a public question).
QUESTION = {"id": 4242, "theme": "prix-juste", "text": "Combien paie-t-on vraiment en plus "
            "pour un café équitable, et qui en profite ?", "author": "Camille",
            "status": "approved", "votes": 37, "created_at": "2027-05-09T18:42:07+00:00",
            "segment_id": "debat-prix", "on_air": False, "merged_into": None}


# --- the server under test (a child process) ----------------------------------


async def serve(variant: str, port: int) -> None:
    if variant == "ours":
        with tempfile.TemporaryDirectory() as tmp:
            sio = create_sio(test_settings(Path(tmp)))
    else:
        sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=20, ping_timeout=20)
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    loop = asyncio.get_running_loop()
    held = 0.0

    async def watch_loop() -> None:
        nonlocal held
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            held = max(held, loop.time() - before - 0.005)

    watcher = asyncio.create_task(watch_loop())

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        nonlocal held
        if command["do"] == "reset":
            held = 0.0
            return {"held_ms": 0.0}
        gap = 1.0 / command["rate"]
        start = loop.time()
        for i in range(command["pushes"]):
            await asyncio.sleep(max(0.0, start + i * gap - loop.time()))
            # fleet viewers count "my_question" pushes.
            await sio.emit("my_question", dict(QUESTION, votes=i), namespace="/")
        return {"sent_s": round(loop.time() - start, 3)}

    await serve_commands(lambda c: handle(c) if c["do"] != "held" else _held(held))
    watcher.cancel()
    await runner.cleanup()


async def _held(held: float) -> dict[str, Any]:
    return {"held_ms": round(held * 1000, 2)}


# --- the benchmark -------------------------------------------------------------


async def listening(port: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def one_run(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    server = await Child.start(f"server ({variant})", sys.executable, "-m",
                               "tests.benchmarks.bench_pushes", "serve", variant, str(port))
    procs: list[Child] = []
    try:
        await listening(port)
        per = args.viewers // args.viewer_procs
        for p in range(args.viewer_procs):
            procs.append(await Child.start(
                f"viewers {p}", sys.executable, "-m", "tests.benchmarks.fleet", "viewers",
                f"http://127.0.0.1:{port}", "--first", str(p * per), "--count", str(per)))
        ready = [await v.read(180) for v in procs]
        connected = sum(r["connected"] for r in ready)
        await server.ask({"do": "reset"}, 10)
        cpu0, t0 = server.cpu_s(), time.monotonic()
        await server.ask({"do": "push", "pushes": args.pushes, "rate": args.rate}, 120)
        want = args.pushes * connected
        while True:
            got = sum([(await v.ask({}, 30))["my_question_events"] for v in procs])
            if got >= want or time.monotonic() - t0 > 120:
                break
            await asyncio.sleep(0.05)
        delivered_s = time.monotonic() - t0
        cpu = server.cpu_s() - cpu0
        held = (await server.ask({"do": "held"}, 10))["held_ms"]
        return {"variant": variant, "viewers": connected, "received": got, "expected": want,
                "cpu_ms_per_push": round(cpu * 1000 / args.pushes, 2),
                "loop_held_max_ms": held, "delivered_s": round(delivered_s, 2),
                "server_rss_mb": round(server.rss_mb())}
    finally:
        for child in procs:
            await child.stop()
        await server.stop()


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("cpu_ms_per_push", "loop_held_max_ms", "delivered_s"):
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    out["every_push_delivered"] = all(r["received"] >= r["expected"] for r in runs)
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"stock": [], "ours": []}
    for n in range(args.runs):
        for variant in ("stock", "ours"):  # interleaved: the machine's noise hits both
            result = await one_run(variant, args)
            say(f"run {n + 1}/{args.runs} {variant}: {json.dumps(result)}")
            runs[variant].append(result)
    stock, ours = summary(runs["stock"]), summary(runs["ours"])
    ratio = ours["cpu_ms_per_push"]["median"] / stock["cpu_ms_per_push"]["median"]
    return {"viewers": args.viewers, "pushes": args.pushes, "rate_per_s": args.rate,
            "python_socketio": stock, "ours": ours, "cpu_ratio_ours_to_stock": round(ratio, 3),
            "meets_aim": ratio < 1.0 and ours["every_push_delivered"], "runs": runs}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        raise_nofile()
        asyncio.run(serve(sys.argv[2], int(sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_pushes")
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--viewer-procs", type=int, default=2)
    parser.add_argument("--pushes", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="pushes per second")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    raise_nofile()
    results: list[dict[str, Any]] = []

    async def keep(a: argparse.Namespace) -> dict[str, Any]:
        results.append(await bench(a))
        return results[-1]

    status = run_bench(keep, args)
    return status or (0 if results and results[0]["meets_aim"] else 1)


if __name__ == "__main__":
    sys.exit(main())
