"""Take accuracy: due instant → ``programme`` push at a client, against the loop's timers.

    .venv/bin/python -m tests.benchmarks.bench_takes [--speed 480 --runs 3]

Each run starts ``run.py --rehearsal --speed S`` on a temporary copy of
config.toml (its own SQLite files, logging at WARNING) and connects one
python-socketio client to ``/`` over a websocket as soon as the port opens.
The show starts while the server starts up, so the takes measured are those
due after the client began to connect (the opening is always missed), up to
and including the end of the show. 12 segments over 4 hours last 30 s at 480×.

When each take was due: its ``actual_start`` (``actual_end`` for the end),
which the engine logs at the instant it was due, in show time. SpeedClock maps
show time to CLOCK_MONOTONIC, the one clock every process shares, linearly:
``mono = offset + show / S``. Only ``offset`` is unknown, and it is bracketed:

- every push carries ``server_time``, read just before it is sent, so
  ``offset <= receive - server_time / S`` (the minimum over all pushes is the
  "minimum-delay fit"; the first payload alone gives a looser bound);
- after the show ends, raw keep-alive ``GET /api/programme`` probes give
  ``send - server_time / S <= offset <= first byte - server_time / S``.

The midpoint of the tightest bracket is used; ``anchor.uncertainty_ms`` (half
its width, typically well under 0.1 ms) bounds the error it adds to every delay,
and ``anchor.consistent`` says the bounds from both sides agree. Each take's
delay is split at the push's ``server_time``, which needs no anchor at all:
``server_ms`` (due → push built: the timer, the take log in SQLite, the event
bus) and ``delivery_ms`` (push built → in the client's handler: emit,
websocket, decoding).

Baseline, in the same run: the event loop's own timer accuracy. This process
and a bare asyncio subprocess each sleep to absolute deadlines with the spacing
of the takes measured (shifted by a third and two thirds of the shortest
spacing, so nobody wakes together), exactly as SpeedClock.sleep_until does: one
``asyncio.sleep`` for the time left. Lateness is the time past the deadline.
``ratio_p50`` is take delay p50 ÷ timer lateness p50. With a dozen takes a run,
p99 is the largest value of the run (nearest rank); ``pooled`` ranks every
run's values together. Progress goes to stderr, one JSON object to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import socketio

from server.settings import load_settings
from tests.benchmarks.fleet import reply
from tests.benchmarks.procs import Child, bench_config, free_port, nearest_rank, run_bench, say

END = "(end)"


# --- timers ------------------------------------------------------------------------


async def sleep_until(target: float) -> float | None:
    """Sleep to a CLOCK_MONOTONIC instant as SpeedClock does; ms late, None if already past."""
    delay = target - time.monotonic()
    if delay <= 0:
        return None
    await asyncio.sleep(delay)
    return (time.monotonic() - target) * 1000


async def sleep_through(deadlines: list[float]) -> list[float]:
    late = [await sleep_until(t) for t in deadlines]
    return [x for x in late if x is not None]


async def timer_child() -> None:
    """``--timer-child``: answer {"deadlines": [...]} with {"late_ms": [...]}; leave at EOF.

    While it sleeps, a closed stdin ends it at once (the benchmark was interrupted).
    """
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    reply({"ready": True})
    while line := await stdin.readline():
        work = asyncio.create_task(sleep_through(json.loads(line)["deadlines"]))
        closed = asyncio.create_task(stdin.read(1))  # one command at a time: only EOF comes
        done, _ = await asyncio.wait({work, closed}, return_when=asyncio.FIRST_COMPLETED)
        if closed in done:
            work.cancel()
            return
        closed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closed  # so that the next readline may wait for data
        reply({"late_ms": work.result()})


# --- the server and its client --------------------------------------------------------


def rehearsal_config(tmp: Path, run: int) -> Path:
    """bench_config, with the rehearsal's own SQLite file beside the run's database."""
    path = bench_config(tmp, tmp / f"run{run}.sqlite3")
    rehearsal = tmp / f"rehearsal{run}.sqlite3"
    text, count = re.subn(r"(?m)^rehearsal_url\s*=.*$",
                          f"rehearsal_url = {json.dumps(f'sqlite:///{rehearsal}')}",
                          path.read_text("utf-8"))
    assert count == 1, "config.toml has no [database] rehearsal_url line"
    path.write_text(text, "utf-8")
    assert load_settings(path).rehearsal_database_url.endswith(str(rehearsal))
    return path


@dataclass
class Push:
    t: float
    """time.monotonic() on entering the client's handler."""
    body: dict[str, Any]


@dataclass
class Listener:
    client: socketio.AsyncClient = field(
        default_factory=lambda: socketio.AsyncClient(reconnection=False))
    pushes: list[Push] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.client.on("programme", self._on_programme)

    async def _on_programme(self, body: dict[str, Any]) -> None:
        self.pushes.append(Push(time.monotonic(), body))
        self.first.set()
        if body.get("state") == "ended":
            self.ended.set()


async def wait_for_port(server: Child, port: int, within: float) -> None:
    """Poll the port every 10 ms: the show is already running when it opens."""
    deadline = time.monotonic() + within
    while True:
        if server.proc.returncode is not None:
            raise RuntimeError(f"the server exited with status {server.proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not listen within {within:.0f} s") from None
            await asyncio.sleep(0.01)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def probe(port: int, count: int) -> list[tuple[float, float, str]]:
    """(sent, answer's first bytes, server_time) of ``count`` keep-alive GET /api/programme."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /api/programme HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    out = []
    try:
        for _ in range(count):
            sent = time.monotonic()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            first = time.monotonic()
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if not head.startswith(b"HTTP/1.1 200") or length is None:
                raise RuntimeError(f"unexpected answer: {head[:200]!r}")
            body = json.loads(await asyncio.wait_for(reader.readexactly(int(length[1])), 10))
            out.append((sent, first, body["server_time"]))
            await asyncio.sleep(0.005)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return out


# --- figures ---------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float | None:
    value = nearest_rank(values, p)
    return None if value is None else round(value, 3)


def stats(values: list[float]) -> dict[str, Any]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": pct(values, 100),
            "n": len(values)}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 1) if a is not None and b else None


class ShowTime:
    """Show instants as seconds after a reference, and the bracket on ``offset``."""

    def __init__(self, reference: str, speed: float) -> None:
        self.ref = datetime.fromisoformat(reference)
        self.speed = speed
        self.lo, self.hi = -math.inf, math.inf

    def s(self, iso: str) -> float:
        return (datetime.fromisoformat(iso) - self.ref).total_seconds()

    def bound(self, before: float | None, after: float, server_time: str) -> None:
        """The server read ``server_time`` between ``before`` and ``after`` (monotonic)."""
        show = self.s(server_time)
        self.hi = min(self.hi, after - show / self.speed)
        if before is not None:  # server_time is truncated to the (show) millisecond
            self.lo = max(self.lo, before - (show + 0.001) / self.speed)

    @property
    def offset(self) -> float:
        if math.isinf(self.lo) or self.lo > self.hi:
            return self.hi
        return (self.lo + self.hi) / 2

    def mono(self, show_s: float) -> float:
        return self.offset + show_s / self.speed


@dataclass
class Take:
    segment: str
    due_s: float
    """Show seconds after the reference."""
    push: Push


def takes_in(pushes: list[Push], clock: ShowTime) -> list[Take]:
    """Each take, with the first push that showed it; those in the first payload are skipped."""
    seen: set[str] = set()
    takes: list[Take] = []
    for i, push in enumerate(pushes):
        for seg in push.body["segments"]:
            if seg["actual_start"] and seg["id"] not in seen:
                seen.add(seg["id"])
                if i:
                    takes.append(Take(seg["id"], clock.s(seg["actual_start"]), push))
        if push.body["state"] == "ended" and END not in seen:
            seen.add(END)
            ends = [clock.s(seg["actual_end"]) for seg in push.body["segments"]
                    if seg["actual_end"]]
            if i and ends:
                takes.append(Take(END, max(ends), push))
    return takes


def future_dues(first: dict[str, Any], clock: ShowTime) -> list[float]:
    """Monotonic instants of the takes still to come, by the first payload's expectations."""
    segs = first["segments"]
    dues = {clock.s(s["expected_start"]) for s in segs if not s["actual_start"]}
    last = segs[-1]
    dues.add(clock.s(last["expected_start"]) + last["planned_duration_s"])
    return sorted(clock.mono(d) for d in dues)


# --- one run ---------------------------------------------------------------------------


async def one_run(args: argparse.Namespace, tmp: Path, timers: Child,
                  run: int) -> dict[str, Any]:
    port = free_port()
    config = rehearsal_config(tmp, run)
    show_real_s = load_settings(config).event.duration_s / args.speed
    async with contextlib.AsyncExitStack() as stack:
        server = await Child.start("server", sys.executable, "run.py", "--config", str(config),
                                   "--host", "127.0.0.1", "--port", str(port), "--rehearsal",
                                   "--speed", str(args.speed), talks=False)
        stack.push_async_callback(server.stop, 5)
        await wait_for_port(server, port, within=60)
        listener = Listener()
        connecting = time.monotonic()
        await listener.client.connect(f"http://127.0.0.1:{port}", transports=["websocket"],
                                      wait_timeout=10)
        stack.push_async_callback(listener.client.disconnect)
        await asyncio.wait_for(listener.first.wait(), 10)
        first = listener.pushes[0]
        clock = ShowTime(first.body["server_time"], args.speed)
        clock.bound(None, first.t, first.body["server_time"])
        say(f"run {run}: connected {(first.t - connecting) * 1000:.0f} ms after the port "
            f"opened, on air: {first.body['on_air']}")

        dues = [d for d in future_dues(first.body, clock) if d > time.monotonic() + 0.1]
        spacing = min((b - a for a, b in itertools.pairwise(dues)), default=1.0)
        mine = asyncio.create_task(sleep_through([d + spacing / 3 for d in dues]))
        child = asyncio.create_task(timers.ask(
            {"deadlines": [d + 2 * spacing / 3 for d in dues]},
            within=show_real_s + 60))
        stack.callback(mine.cancel)
        stack.callback(child.cancel)
        await asyncio.wait_for(listener.ended.wait(), show_real_s + 30)
        bench_late, child_late = await mine, (await child)["late_ms"]
        for sent, answered, server_time in await probe(port, args.probes):
            clock.bound(sent, answered, server_time)
        say(f"run {run}: the show ended; stopping the server")
    return figures(run, listener, clock, connecting, bench_late, child_late)


def figures(run: int, listener: Listener, clock: ShowTime, connecting: float,
            bench_late: list[float], child_late: list[float]) -> dict[str, Any]:
    for push in listener.pushes:
        clock.bound(None, push.t, push.body["server_time"])
    takes = [t for t in takes_in(listener.pushes, clock) if clock.mono(t.due_s) >= connecting]
    delay, server, per_take = [], [], []
    for take in takes:
        d = (take.push.t - clock.mono(take.due_s)) * 1000
        s = (clock.s(take.push.body["server_time"]) - take.due_s) / clock.speed * 1000
        delay.append(d)
        server.append(s)
        per_take.append({"segment": take.segment, "delay_ms": round(d, 3),
                         "server_ms": round(s, 3)})
    timer = bench_late + child_late
    out: dict[str, Any] = {
        "run": run, "takes": len(takes),
        "take_delay_ms": stats(delay), "server_ms": stats(server),
        "delivery_ms": stats([d - s for d, s in zip(delay, server, strict=True)]),
        "timer_late_ms": stats(timer), "timer_bench_late_ms": stats(bench_late),
        "timer_child_late_ms": stats(child_late),
        "anchor": {
            "uncertainty_ms": round((clock.hi - clock.lo) / 2 * 1000, 4),
            "consistent": clock.lo <= clock.hi,
            # How far the simpler anchors are from the one used (> 0: they make delays shorter).
            "first_payload_minus_used_ms": round(
                (listener.pushes[0].t - clock.offset) * 1000, 3),
            "min_delay_fit_minus_used_ms": round((clock.hi - clock.offset) * 1000, 3)},
        "per_take": per_take,
    }
    out["ratio_p50"] = ratio(out["take_delay_ms"]["p50"], out["timer_late_ms"]["p50"])
    say(f"run {run}: {len(takes)} takes, delay p50 {out['take_delay_ms']['p50']} ms "
        f"p99 {out['take_delay_ms']['p99']} ms (server {out['server_ms']['p50']} ms p50); "
        f"timer late p50 {out['timer_late_ms']['p50']} ms p99 {out['timer_late_ms']['p99']} "
        f"ms; ratio {out['ratio_p50']}; anchor ±{out['anchor']['uncertainty_ms']} ms")
    if not out["anchor"]["consistent"]:
        say(f"run {run}: the anchor's bounds disagree; the minimum-delay fit is used")
    return out


# --- the benchmark -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stage() -> AsyncIterator[tuple[Path, Child]]:
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-takes-")))
        timers = await Child.start("timers", sys.executable, "-m", "tests.benchmarks.bench_takes",
                                   "--timer-child")
        stack.push_async_callback(timers.stop)
        await timers.read(within=60)
        yield tmp, timers


def median(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        if value is None:
            return None
        values.append(float(value))
    return round(statistics.median(values), 3)


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    delay = [t["delay_ms"] for r in runs for t in r["per_take"]]
    server = [t["server_ms"] for r in runs for t in r["per_take"]]
    return {"take_delay_ms": stats(delay), "server_ms": stats(server)}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    async with stage() as (tmp, timers):
        for run in range(1, args.runs + 1):
            say(f"run {run}: rehearsal at {args.speed:g}×")
            runs.append(await one_run(args, tmp, timers, run))
    med = {
        "take_delay_ms_p50": median(runs, "take_delay_ms", "p50"),
        "take_delay_ms_p99": median(runs, "take_delay_ms", "p99"),
        "timer_late_ms_p50": median(runs, "timer_late_ms", "p50"),
        "timer_late_ms_p99": median(runs, "timer_late_ms", "p99"),
        "ratio_p50": median(runs, "ratio_p50"),
        "server_ms_p50": median(runs, "server_ms", "p50"),
        "server_ms_p99": median(runs, "server_ms", "p99"),
        "delivery_ms_p50": median(runs, "delivery_ms", "p50"),
        "delivery_ms_p99": median(runs, "delivery_ms", "p99"),
        "anchor_uncertainty_ms": median(runs, "anchor", "uncertainty_ms"),
    }
    return {"speed": args.speed, "runs": runs, "median": med, "pooled": pooled(runs),
            "takes_per_run": [r["takes"] for r in runs]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_takes",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--speed", type=float, default=480.0,
                        help="rehearsal speed (480: a 4-hour show in 30 s)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--probes", type=int, default=50,
                        help="GET /api/programme probes after each show, for the anchor")
    parser.add_argument("--timer-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.speed <= 10_000 or args.runs < 1 or args.probes < 1:
        parser.error("--speed must be in (0, 10000], --runs and --probes >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.timer_child:
        asyncio.run(timer_child())
        return 0
    return run_bench(bench, args)


if __name__ == "__main__":
    sys.exit(main())
