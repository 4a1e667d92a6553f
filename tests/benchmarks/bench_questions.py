"""Questions accepted per second, and POST → moderator delay, with thousands of viewers.

    .venv/bin/python -m tests.benchmarks.bench_questions \
        [--viewers 2000 --moderators 5 --questions 4000 --concurrency 48 --runs 3]

One ``run.py`` process serves everything (SQLite, in-process Socket.IO), as at
the show. Viewers connect to ``/`` from helper processes and stay connected;
moderators sign in over HTTP and listen on ``/moderation`` from another. This
process drives ``POST /api/questions`` over keep-alive connections with a
bounded number in flight, then joins each 201's id with the moderators'
receive times (one clock: CLOCK_MONOTONIC is shared by every process).

Each run also drives a bare aiohttp handler (read the JSON body, answer 201) in
its own process with the same bodies and concurrency, and reports questions/s ÷
baseline req/s beside the absolute figures. The 2-core machine is noisy (both
figures can move by half from one minute to the next), hence a fresh server per
run and medians of ``--runs`` runs. Progress goes to stderr, one JSON object to
stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from server.http import VIEWER_COOKIE
from tests.benchmarks.fleet import viewer_id
from tests.benchmarks.procs import (
    Child,
    add_moderators,
    bench_config,
    cpu_s,
    free_port,
    nearest_rank,
    raise_nofile,
    run_bench,
    say,
    start_server,
)
from tests.helpers import PASSWORD

AIM = {"questions_per_s": 1000, "delay_ms_p99": 100}
THEMES = ("cooperatives", "growth", "fair-price")
# Real questions share words ("prix", "producteurs"), and the duplicate detector
# compares a new question with every earlier one of its theme sharing a word:
# each question here shares its domain word with 1/20 of its theme's questions,
# and otherwise uses rare words (a vocabulary of 4,000), so that cost is
# realistic and known.
DOMAIN = ("producteurs", "cooperative", "prix", "marge", "label", "cafe", "cacao", "coton",
          "salaire", "importateur", "distributeur", "supermarche", "certification",
          "transport", "paysans", "exportation", "consommateurs", "qualite", "contrat",
          "prefinancement")
SYLLABLES = ("ka", "lo", "mi", "ra", "te", "vu", "zo", "pe", "ni", "sa", "do", "fu", "gi",
             "ba", "ke", "lu", "mo", "ri", "sy", "ta")


# --- load ----------------------------------------------------------------------


def question_bodies(rng: random.Random, n: int, tag: str) -> list[bytes]:
    """Distinct questions; the last word is unique, so no two are duplicates."""
    vocabulary = list({"".join(rng.choices(SYLLABLES, k=rng.randint(3, 4)))
                       for _ in range(4100)})[:4000]
    return [json.dumps({
        "theme": rng.choice(THEMES),
        "text": f"{rng.choice(DOMAIN)} {' '.join(rng.sample(vocabulary, 7))} ? {tag}x{i}",
        "author": f"Viewer {i}",
    }).encode() for i in range(n)]


@dataclass
class Load:
    """What one phase of ``drive`` measured; lists are per measured request."""

    sent: list[float]
    latency_ms: list[float]
    ids: list[int | None]
    statuses: Counter[int]
    wall_s: float

    @property
    def accepted(self) -> int:
        return self.statuses[201]

    def non_201(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(self.statuses.items()) if k != 201}


async def drive(url: str, bodies: list[bytes], cookies: list[str], concurrency: int,
                warmup: int) -> Load:
    """POST ``bodies`` with ``concurrency`` requests in flight; the first ``warmup`` untimed.

    Status 0 counts a request that failed without an answer (reset, timeout).
    """
    n = len(bodies) - warmup
    load = Load([0.0] * n, [0.0] * n, [None] * n, Counter(), 0.0)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def phase(first: int, stop: int, record: bool) -> None:
            counter = itertools.count(first)

            async def worker(w: int) -> None:
                headers = {"Content-Type": "application/json", "Cookie": cookies[w]}
                while (i := next(counter)) < stop:
                    t0 = time.monotonic()
                    status, answer = 0, None
                    try:
                        async with session.post(url, data=bodies[i], headers=headers) as resp:
                            status, raw = resp.status, await resp.read()
                        answer = json.loads(raw) if status == 201 else None
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    if record:
                        k = i - first
                        load.sent[k] = t0
                        load.latency_ms[k] = (time.monotonic() - t0) * 1000
                        load.ids[k] = answer.get("id") if isinstance(answer, dict) else None
                        load.statuses[status] += 1

            await asyncio.gather(*(worker(w) for w in range(concurrency)))

        await phase(0, warmup, record=False)
        start = time.monotonic()
        await phase(warmup, len(bodies), record=True)
        load.wall_s = time.monotonic() - start
    return load


# --- figures ---------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Nearest rank; None for no values or when the rank falls on a missing (inf) one."""
    value = nearest_rank(values, p)
    return None if value is None or math.isinf(value) else round(value, 2)


def delays_ms(load: Load, ids: list[int], stamps: list[list[float | None]]) -> list[float]:
    """POST sent → each moderator's receipt; a push that never came counts as infinite."""
    sent = {qid: t for qid, t in zip(load.ids, load.sent, strict=True) if qid is not None}
    return [math.inf if stamp is None else (stamp - sent[qid]) * 1000
            for per_moderator in stamps for qid, stamp in zip(ids, per_moderator, strict=True)]


def cpu_pct(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    return {name: round((after[name] - before[name]) / wall_s * 100, 1) for name in before}


def median_of(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        if value is not None:
            values.append(value)
    return round(statistics.median(values), 2) if len(values) == len(runs) else None


# --- the benchmark -----------------------------------------------------------------


@dataclass
class Stage:
    """What every run shares: a database template with the staff accounts, the baseline."""

    tmp: Path
    template: Path
    names: list[str]
    baseline: Child
    baseline_url: str


@dataclass
class Show:
    """One run's server, with its moderators and viewers connected."""

    stage: Stage
    server: Child
    moderators: Child
    viewers: list[Child]
    server_url: str

    def cpu(self) -> dict[str, float]:
        return {"server": self.server.cpu_s(), "bench": cpu_s(),
                "moderators": self.moderators.cpu_s(), "baseline": self.stage.baseline.cpu_s(),
                "viewers": sum(v.cpu_s() for v in self.viewers)}


@contextlib.asynccontextmanager
async def stage(args: argparse.Namespace) -> AsyncIterator[Stage]:
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-q-")))
        template = tmp / "template.sqlite3"
        (tmp / "password").write_text(PASSWORD + "\n", "utf-8")
        names = [f"moderator{i + 1}" for i in range(args.moderators)]
        say(f"creating {len(names)} moderator accounts")
        await add_moderators(bench_config(tmp, template), names, tmp / "password")
        port = free_port()
        baseline = await Child.start("baseline", *_fleet_cmd("baseline", "--port", str(port)))
        stack.push_async_callback(baseline.stop)
        await baseline.read(within=30)
        yield Stage(tmp, template, names, baseline, f"http://127.0.0.1:{port}/api/questions")


@contextlib.asynccontextmanager
async def show(args: argparse.Namespace, st: Stage, run: int,
               info: dict[str, Any]) -> AsyncIterator[Show]:
    """A fresh server on a copy of the template, so every run starts from the same state.

    Every process is stopped, in reverse order, whatever happens.
    """
    db = st.tmp / f"run{run}.sqlite3"
    _copy_database(st.template, db)
    async with contextlib.AsyncExitStack() as stack:
        port = free_port()
        server = await start_server(bench_config(st.tmp, db), port)
        stack.push_async_callback(server.stop)
        url = f"http://127.0.0.1:{port}"
        say(f"run {run}: server pid {server.pid} on {url}, {server.rss_mb():.0f} MB")

        moderators = await Child.start("moderators", *_fleet_cmd("moderators", url, *st.names))
        stack.push_async_callback(moderators.stop)
        await moderators.read(within=60)

        viewers = await _connect_viewers(args, url, stack, info)
        info["server_rss_mb_with_viewers"] = round(server.rss_mb())
        say(f"server {info['server_rss_mb_with_viewers']} MB with "
            f"{info['viewers_connected']} viewers")
        yield Show(st, server, moderators, viewers, url + "/api/questions")
        status = await asyncio.gather(*(v.ask({"cmd": "status"}, within=30) for v in viewers))
        info["viewers_connected_at_end"] = sum(s["connected"] for s in status)
        # Each asker is a connected viewer: one my_question push per accepted question.
        info["viewer_my_question_events"] = sum(s["my_question_events"] for s in status)
        info["server_rss_mb_at_end"] = round(server.rss_mb())
        say(f"run {run}: stopping the server and its clients")


def _copy_database(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")


def _fleet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.benchmarks.fleet", *args]


async def _connect_viewers(args: argparse.Namespace, url: str, stack: contextlib.AsyncExitStack,
                           info: dict[str, Any]) -> list[Child]:
    procs = max(1, min(args.viewer_procs, args.viewers)) if args.viewers else 0
    say(f"connecting {args.viewers} viewers from {procs} process(es), "
        f"{args.connect_concurrency} at a time per process")
    viewers: list[Child] = []
    first = 0
    for p in range(procs):
        count = args.viewers // procs + (1 if p < args.viewers % procs else 0)
        child = await Child.start(f"viewers{p}", *_fleet_cmd(
            "viewers", url, "--first", str(first), "--count", str(count),
            "--concurrency", str(args.connect_concurrency)))
        stack.push_async_callback(child.stop, 20)
        viewers.append(child)
        first += count
    start = time.monotonic()
    ready = await asyncio.gather(*(v.read(within=120 + args.viewers * 0.1) for v in viewers))
    info["viewers_connected"] = sum(r["connected"] for r in ready)
    info["viewers_failed"] = sum(r["failed"] for r in ready)
    info["viewer_connect_s"] = round(time.monotonic() - start, 1)
    info["viewer_procs_rss_mb"] = [r["rss_mb"] for r in ready]
    return viewers


async def one_run(f: Show, args: argparse.Namespace, run: int,
                  profile: Path | None) -> dict[str, Any]:
    rng = random.Random(run)
    bodies = question_bodies(rng, args.warmup + args.questions, f"r{run}q")
    # Worker w asks as viewer w, who is connected: the server pushes my_question to them too.
    cookies = [f"{VIEWER_COOKIE}={viewer_id(w % max(1, args.viewers))}"
               for w in range(args.concurrency)]

    # The baseline is ~10 times faster: more requests keep its phase long enough to be steady.
    base_bodies = bodies[:args.warmup] + bodies[args.warmup:] * args.baseline_factor
    before = f.cpu()
    base = await drive(f.stage.baseline_url, base_bodies, cookies, args.concurrency,
                       args.warmup)
    base_cpu = cpu_pct(before, f.cpu(), base.wall_s)

    spy = await _py_spy(f.server.pid, profile / f"server-run{run}.txt") if profile else None
    before = f.cpu()
    load = await drive(f.server_url, bodies, cookies, args.concurrency, args.warmup)
    q_cpu = cpu_pct(before, f.cpu(), load.wall_s)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        await asyncio.wait_for(spy.wait(), 30)

    ids = [qid for qid in load.ids if qid is not None]
    answer = await f.moderators.ask({"cmd": "collect", "ids": ids, "timeout": 15}, within=60)
    q = _question_figures(load, delays_ms(load, ids, answer["stamps"]), q_cpu)
    q["moderators_connected"] = answer["connected"]
    b = _figures(base, base_cpu, "baseline")
    ratio = round(q["per_s"] / b["per_s"], 3) if b["per_s"] else None
    say(f"run {run}: {q['per_s']} questions/s ({q['accepted']}/{q['sent']} accepted), delay "
        f"p50 {q['delay_ms_p50']} ms p99 {q['delay_ms_p99']} ms; baseline {b['per_s']} req/s; "
        f"ratio {ratio}; cpu % {q_cpu}")
    return {"run": run, "questions": q, "baseline": b, "ratio": ratio}


def _figures(load: Load, cpu: dict[str, float], serving: str) -> dict[str, Any]:
    served_cpu_s = cpu[serving] / 100 * load.wall_s
    return {"sent": len(load.sent), "accepted": load.accepted, "non_201": load.non_201(),
            "wall_s": round(load.wall_s, 3), "per_s": round(load.accepted / load.wall_s, 1),
            "ms_p50": percentile(load.latency_ms, 50), "ms_p99": percentile(load.latency_ms, 99),
            # CPU the serving process spent per request: what a faster server must cut.
            "cpu_ms_per_request": round(served_cpu_s * 1000 / max(1, len(load.sent)), 3),
            "cpu_pct": cpu}


def _question_figures(load: Load, delays: list[float], cpu: dict[str, float]) -> dict[str, Any]:
    figures = _figures(load, cpu, "server")
    missing = sum(1 for d in delays if math.isinf(d))
    figures["post_ms_p50"] = figures.pop("ms_p50")
    figures["post_ms_p99"] = figures.pop("ms_p99")
    figures.update({
        "delay_ms_p50": percentile(delays, 50), "delay_ms_p99": percentile(delays, 99),
        "delay_ms_max": percentile(delays, 100),
        "deliveries": len(delays) - missing, "deliveries_missing": missing})
    return figures


def _py_spy_exe() -> str | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return exe if Path(exe).exists() else None


async def _py_spy(pid: int, output: Path) -> asyncio.subprocess.Process | None:
    """Sample the server during the question phase (``--py-spy DIR``), if py-spy exists."""
    exe = _py_spy_exe()
    if exe is None:
        say("py-spy not found: .venv/bin/pip install py-spy")
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    spy = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--idle", "--threads",
        "--format", "raw",
        "--output", str(output), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(1)  # let it attach
    return spy


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    async with stage(args) as st:
        for run in range(1, args.runs + 1):
            info: dict[str, Any] = {}
            async with show(args, st, run, info) as f:
                result = await one_run(f, args, run, args.py_spy)
            runs.append({**result, "fleet": info})
    median = {
        "questions_per_s": median_of(runs, "questions", "per_s"),
        "delay_ms_p50": median_of(runs, "questions", "delay_ms_p50"),
        "delay_ms_p99": median_of(runs, "questions", "delay_ms_p99"),
        "post_ms_p50": median_of(runs, "questions", "post_ms_p50"),
        "post_ms_p99": median_of(runs, "questions", "post_ms_p99"),
        "baseline_req_per_s": median_of(runs, "baseline", "per_s"),
        "baseline_ms_p50": median_of(runs, "baseline", "ms_p50"),
        "baseline_ms_p99": median_of(runs, "baseline", "ms_p99"),
        "ratio": median_of(runs, "ratio"),
        "server_cpu_ms_per_question": median_of(runs, "questions", "cpu_ms_per_request"),
        "baseline_cpu_ms_per_request": median_of(runs, "baseline", "cpu_ms_per_request"),
        "non_201": statistics.median(sum(r["questions"]["non_201"].values()) for r in runs),
        "deliveries_missing": statistics.median(
            r["questions"]["deliveries_missing"] for r in runs),
    }
    p99, qps = median["delay_ms_p99"], median["questions_per_s"]
    return {
        "viewers": args.viewers, "moderators": args.moderators,
        "questions_per_run": args.questions, "warmup_per_run": args.warmup,
        "baseline_requests_per_run": args.questions * args.baseline_factor,
        "concurrency": args.concurrency, "viewer_procs": args.viewer_procs,
        "viewers_connected_min": min(r["fleet"]["viewers_connected_at_end"] for r in runs),
        "runs": runs, "median": median, "aim": AIM,
        "meets_aim": bool(qps is not None and qps >= AIM["questions_per_s"]
                          and p99 is not None and p99 < AIM["delay_ms_p99"]
                          and all(r["fleet"]["viewers_connected"] == args.viewers
                                  and r["fleet"]["viewers_connected_at_end"] == args.viewers
                                  for r in runs)),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_questions",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--viewers", type=int, default=2000)
    parser.add_argument("--moderators", type=int, default=5)
    parser.add_argument("--questions", type=int, default=4000, help="measured, per run")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed requests before each measured phase")
    parser.add_argument("--concurrency", type=int, default=48, help="requests in flight")
    parser.add_argument("--baseline-factor", type=int, default=4,
                        help="the baseline phase sends this many times --questions requests")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--viewer-procs", type=int, default=2,
                        help="processes the viewers are spread over")
    parser.add_argument("--connect-concurrency", type=int, default=50,
                        help="viewer connections opened at once, per process")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="record a py-spy profile of the server in each question phase")
    args = parser.parse_args(argv)
    if min(args.moderators, args.questions, args.runs, args.concurrency,
           args.baseline_factor) < 1:
        parser.error("--moderators, --questions, --runs, --concurrency and --baseline-factor "
                     "must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    return run_bench(bench, args)


if __name__ == "__main__":
    sys.exit(main())
