"""Show soak: a real show's load against real servers, figures minute by minute.

    .venv/bin/python -m tests.benchmarks.bench_show [--minutes 10 --db sqlite|postgres] \
        [--scale 1 | --ramp 1,2,3 --step-minutes 2] [--viewers 1000 --whep-viewers 30]

The mix, every rate multiplied by the scale: 1,000 Socket.IO viewers on ``/``
(fleet processes), 3 moderators on ``/moderation`` (a fleet process), two
contributors publishing over WHIP (aiortc: a moving pattern and a tone,
bench_video's publisher), 30 WHEP viewers (bench_video's cheap viewers: aiortc
peers that count frames without decoding) of whom 5 leave and 5 arrive every
30 s; and from this process (show_load.Audience): 20 questions/s with a burst of
100 in one second every minute, 20 votes/s on approved questions, 2 approvals/s,
a take every minute, GET /healthz and /metrics every second per process.

``--db sqlite``: one ``run.py``. ``--db postgres``: a fresh database made
through ``--pg-url`` (dropped at the end), Redis at ``--redis-url`` on a channel
of its own, and two ``run.py`` processes: the video process (WHIP, WHEP, the
director) and a ``--no-video`` one; viewers, questions, votes and approvals are
spread over both.

Exit status 1 when a take was late (HTTP answer or a viewer's ``programme``
push over 1 s, or a push missing), a question answered 201 is missing from the
staff CSV export, or the /healthz delay p99 is over 1 s: ``failures`` says
which. Progress on stderr, one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.settings import load_settings
from tests.benchmarks import bench_video
from tests.benchmarks.procs import (
    Child,
    add_moderators,
    bench_config,
    cpu_s,
    free_port,
    raise_nofile,
    run_bench,
    say,
    start_server,
)
from tests.benchmarks.show_load import Audience, Minute, Tally, pct, sleep_until, split_steps
from tests.helpers import PASSWORD, Http

MODERATORS = ["moderator1", "moderator2", "moderator3"]
DIRECTOR = "bench-director"
FEEDS = (("afrique", "red"), ("studio", "blue"))
RATES = {"questions": 20.0, "votes": 20.0, "approvals": 2.0, "burst": 100}
LATE_MS = 1000.0
"""A take answered or heard later than this is late; the /healthz p99 limit too."""
TAKE_AT_S, BURST_AT_S, CHURN_AT_S = 15.0, 40.0, (5.0, 35.0)
"""Offsets within each minute: the take, the burst of questions, the WHEP churn."""
HEARD_WITHIN_S = 5.0


def fleet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.benchmarks.fleet", *args]


@dataclass
class Show:
    """The processes of one soak, and the locks that keep their conversations apart."""

    servers: list[Child]
    bases: list[str]
    viewers: list[Child]
    moderators: Child
    whep: Child
    publisher: Child
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    cpu_at: tuple[float, dict[str, Any]] | None = None

    def cpu(self) -> dict[str, Any]:
        """CPU seconds so far: each server, the client processes, this one, the machine."""
        return {"servers": [s.cpu_s() for s in self.servers],
                "socket_viewers": sum(v.cpu_s() for v in self.viewers),
                "whep_viewers": self.whep.cpu_s(), "publisher": self.publisher.cpu_s(),
                "moderators": self.moderators.cpu_s(), "bench": cpu_s(),
                "machine": bench_video.machine_busy_s()}

    def cpu_pct(self) -> dict[str, Any]:
        """Each one's CPU since the last call (100 = one core; the machine has 200)."""
        now, after = time.monotonic(), self.cpu()
        before = self.cpu_at
        self.cpu_at = (now, after)
        if before is None:
            return {}
        span = now - before[0]

        def pct_of(a: float, b: float) -> float:
            return round((b - a) / span * 100, 1)

        out: dict[str, Any] = {
            k: [pct_of(a, b) for a, b in zip(before[1][k], v, strict=True)]
            if isinstance(v, list) else pct_of(before[1][k], v) for k, v in after.items()}
        # Whatever else ran on the machine meanwhile (other jobs): ±5, counted differently.
        clients = sum(v for k, v in out.items() if k not in ("servers", "machine"))
        out["others"] = round(out["machine"] - sum(out["servers"]) - clients, 1)
        return out

    async def ask(self, child: Child, command: dict[str, Any], within: float) -> dict[str, Any]:
        async with self.locks.setdefault(child.name, asyncio.Lock()):
            return await child.ask(command, within)


# --- setting the stage ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def database(args: argparse.Namespace, tmp: Path) -> AsyncIterator[str | None]:
    """None for SQLite; for PostgreSQL a fresh database's URL, dropped afterwards."""
    if args.db == "sqlite":
        yield None
        return
    import asyncpg  # type: ignore[import-untyped]  # only PostgreSQL runs need it

    name = f"bench_show_{os.getpid()}_{int(time.time())}"
    admin = await asyncpg.connect(args.pg_url, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        say(f"PostgreSQL database {name} created through {args.pg_url}")
        yield args.pg_url.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def show_config(args: argparse.Namespace, tmp: Path, database_url: str | None) -> Path:
    # Each viewer's own X-Forwarded-For, as separate homes would have: the
    # per-address limits on votes and WHEP then apply as at the show.
    extra: dict[str, dict[str, Any]] = {"http": {"trust_forwarded": True}}
    if database_url:
        extra["redis"] = {"url": args.redis_url, "channel": f"bench-show-{os.getpid()}"}
    path = bench_config(tmp, tmp / "show.sqlite3", database_url, extra)
    settings = load_settings(path)
    assert settings.http.trust_forwarded
    return path


async def accounts(config: Path, tmp: Path) -> dict[str, str]:
    """The staff accounts and the feeds' tokens, made before the servers start."""
    password = tmp / "password"
    password.write_text(PASSWORD + "\n", "utf-8")
    await add_moderators(config, MODERATORS, password)
    await bench_video.run_py(config, "adduser", DIRECTOR, "--role", "director",
                             "--password-file", str(password))
    return {feed: (await bench_video.run_py(config, "feed-token", feed)).strip().splitlines()[-1]
            for feed, _ in FEEDS}


@contextlib.asynccontextmanager
async def staged(args: argparse.Namespace) -> AsyncIterator[tuple[Show, Audience, dict[str, Any]]]:
    """Servers, publishers, viewers and staff, all started; stopped in reverse order."""
    info: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-show-")))
        url = await stack.enter_async_context(database(args, tmp))
        config = show_config(args, tmp, url)
        tokens = await accounts(config, tmp)
        servers, bases = [], []
        for i in range(2 if url else 1):
            port = free_port()
            server = await start_server(config, port, *(["--no-video"] if i else []),
                                        name=f"server{i + 1}")
            stack.push_async_callback(server.stop, 10)
            servers.append(server)
            bases.append(f"http://127.0.0.1:{port}")
            say(f"{server.name} pid {server.pid} on {bases[-1]}"
                f"{' (--no-video)' if i else ' (video)'}, {server.rss_mb():.0f} MB")
        video = load_settings(config).video

        publisher = await bench_video.child("publisher", "--role", "publisher")
        stack.push_async_callback(publisher.stop)
        for feed, colour in FEEDS:
            await bench_video.publish(publisher, f"{bases[0]}/whip/{feed}", tokens[feed],
                                      colour, (640, 360), video.fps, True, "VP8")
        director = await Http.open(bases[0])
        stack.push_async_callback(director.close)
        await director.sign_in(DIRECTOR)
        await bench_video.until_live(director, [f for f, _ in FEEDS], 30)
        say(f"{len(FEEDS)} contributors live: {', '.join(f for f, _ in FEEDS)}")

        whep = await bench_video.child("whep", "--role", "viewers", "--proc", "0")
        stack.push_async_callback(whep.stop)
        opened = await whep.ask({"open": args.whep_viewers, "url": f"{bases[0]}/whep"},
                                within=60 + 2 * args.whep_viewers)
        info["whep_viewers_at_start"] = opened["viewers"]
        say(f"{opened['viewers']} WHEP viewers ({opened['failed']} failed)")

        moderators = await Child.start("moderators", *fleet_cmd("moderators", bases[0],
                                                                 *MODERATORS))
        stack.push_async_callback(moderators.stop)
        await moderators.read(within=60)
        viewers = await socket_viewers(args, bases, stack, info)

        staff = []
        for base in bases:
            for name in MODERATORS:
                http = await Http.open(base)
                stack.push_async_callback(http.close)
                await http.sign_in(name)
                staff.append(http)
        audience = Audience(bases, staff, director, args.timeout)
        stack.push_async_callback(audience.close)
        info["server_rss_mb_at_start"] = [round(s.rss_mb()) for s in servers]
        yield Show(servers, bases, viewers, moderators, whep, publisher), audience, info
        say("stopping every process")


async def socket_viewers(args: argparse.Namespace, bases: list[str],
                         stack: contextlib.AsyncExitStack, info: dict[str, Any]) -> list[Child]:
    """``--viewers`` Socket.IO viewers on ``/``, spread over the processes and servers."""
    procs = max(args.viewer_procs, len(bases)) if args.viewers else 0
    children, first = [], 0
    for p in range(procs):
        count = args.viewers // procs + (1 if p < args.viewers % procs else 0)
        child = await Child.start(f"viewers{p}@{p % len(bases)}", *fleet_cmd(
            "viewers", bases[p % len(bases)], "--first", str(first), "--count", str(count)))
        stack.push_async_callback(child.stop, 20)
        children.append(child)
        first += count
    start = time.monotonic()
    ready = await asyncio.gather(*(c.read(within=120 + args.viewers * 0.1) for c in children))
    info["viewers_connected_at_start"] = sum(r["connected"] for r in ready)
    info["viewer_connect_s"] = round(time.monotonic() - start, 1)
    say(f"{info['viewers_connected_at_start']} Socket.IO viewers connected in "
        f"{info['viewer_connect_s']} s")
    return children


# --- one minute -----------------------------------------------------------------------


async def take(show: Show, audience: Audience, row: Minute) -> None:
    """Take, then ask every ``/`` viewer when it heard the segment on air."""
    segment, sent, http_ms, status = await audience.take()
    await asyncio.sleep(HEARD_WITHIN_S)
    answers = await asyncio.gather(*(show.ask(v, {"cmd": "programme", "on_air": segment,
                                                  "after": sent}, 30) for v in show.viewers))
    heard = [t for a in answers for t in a["heard"]]
    delays = [(t - sent) * 1000 for t in heard if t is not None]
    missing = len(heard) - len(delays)
    worst = max([http_ms, *delays]) if delays else http_ms
    record = {"segment": segment, "status": status, "http_ms": round(http_ms, 1),
              "push_ms_p50": pct(delays, 50), "push_ms_p99": pct(delays, 99),
              "push_ms_max": pct(delays, 100), "viewers": len(heard), "missing": missing,
              "on_time": status == 200 and missing == 0 and worst <= LATE_MS}
    row.takes.append(record)
    say(f"  take {segment}: HTTP {status} in {http_ms:.0f} ms, heard by {len(delays)}/"
        f"{len(heard)} viewers, p99 {record['push_ms_p99']} ms, max {record['push_ms_max']} ms")


async def churn(show: Show, n: int, url: str) -> None:
    """``n`` WHEP viewers leave (the oldest) and ``n`` new ones arrive."""
    if n <= 0:
        return
    await show.ask(show.whep, {"leave": n}, 60)
    got = await show.ask(show.whep, {"open": n, "url": url}, 60 + 2 * n)
    if got["failed"]:
        say(f"  {got['failed']} new WHEP viewers failed to connect")


async def minute(show: Show, audience: Audience, args: argparse.Namespace, row: Minute,
                 start: float) -> None:
    """The load of one minute, sent from ``start`` on; returns at its end."""
    stop = start + 60
    audience.row = row
    s = row.scale

    async def at(offset: float, work: Any) -> None:
        await sleep_until(start + offset)
        await work

    async def polls() -> None:
        await audience.paced(1.0, audience.poll, start, stop)

    jobs = [audience.paced(RATES["questions"] * s, audience.ask, start, stop),
            audience.paced(RATES["votes"] * s, audience.vote, start, stop),
            audience.paced(RATES["approvals"] * s, audience.approve, start, stop),
            polls(),
            audience.burst(round(RATES["burst"] * s), start + BURST_AT_S)]
    tasks = [asyncio.create_task(j) for j in jobs]
    # Tracked with the requests, so that the end of the soak waits for them too.
    audience.spawn(at(TAKE_AT_S, take(show, audience, row)))
    for t in CHURN_AT_S:
        audience.spawn(at(t, churn(show, args.whep_churn, f"{show.bases[0]}/whep")))
    await sleep_until(stop)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def measure(show: Show, audience: Audience, row: Minute) -> None:
    """At the end of a minute: RSS, frame rates, viewers still connected, moderator pushes."""
    f = row.figures
    f["rss_mb"] = [round(s.rss_mb(), 1) for s in show.servers]
    f["cpu_pct"] = show.cpu_pct()
    window = (await show.ask(show.whep, {"window": True}, 30))["viewers"]
    full = [w for w in window if w["span_s"] >= 5]
    f["whep_viewers"] = len(window)
    f["fps_median"] = round(statistics.median(w["fps"] for w in full), 1) if full else None
    f["fps_min"] = round(min(w["fps"] for w in full), 1) if full else None
    f["frame_gap_ms_max"] = round(max(w["max_gap_ms"] for w in window), 1) if window else None
    status = await asyncio.gather(*(show.ask(v, {"cmd": "status"}, 30) for v in show.viewers))
    f["viewers_connected"] = sum(s["connected"] for s in status)
    # Per server: which process's viewers were dropped, if any.
    f["viewers_connected_per_server"] = [
        sum(s["connected"] for v, s in zip(show.viewers, status, strict=True)
            if v.name.endswith(f"@{i}")) for i in range(len(show.servers))]
    f["feeds"] = await feeds(audience)
    f["publishers"] = (await show.ask(show.publisher, {"state": True}, 30))["states"]
    progress(row)
    await collect_moderators(show, audience, 10)


async def feeds(audience: Audience) -> dict[str, Any]:
    """The contributors as the director sees them (GET /api/feeds): state and frame rate."""
    try:
        status, body, _ = await audience.director.request("GET", "/api/feeds",
                                                          timeout=audience.timeout)
    except (TimeoutError, OSError) as e:
        return {"error": repr(e)}
    if status != 200 or not isinstance(body, list):
        return {"error": f"GET /api/feeds answered {status}"}
    return {f["feed"]: {"state": f["state"], "fps": f.get("fps")} for f in body
            if f["feed"] in dict(FEEDS)}


async def collect_moderators(show: Show, audience: Audience, within: float) -> None:
    """Each accepted question's push to each moderator, charged to the minute it was sent."""
    batch, audience.uncollected = audience.uncollected, []
    if not batch:
        return
    got = await show.ask(show.moderators, {"cmd": "collect", "ids": [i for i, _, _ in batch],
                                           "timeout": within, "keep_others": True},
                         within + 30)
    for per_moderator in got["stamps"]:
        for (_, sent, row), stamp in zip(batch, per_moderator, strict=True):
            if stamp is None:
                row.moderator_missing += 1
            else:
                row.moderator_ms.append((stamp - sent) * 1000)


def progress(row: Minute) -> None:
    f = row.figures
    q, v, a, h = (x.row() for x in (row.questions, row.votes, row.approvals, row.healthz))
    takes = ", ".join(f"{t['segment']} {t['http_ms']:.0f}/{t['push_ms_max']} ms"
                      for t in row.takes) or "none yet"
    say(f"minute {row.index + 1} (scale {row.scale:g}): questions {q['accepted']}/{q['sent']} "
        f"p99 {q['p99_ms']} ms refused {q['refused']}; votes {v['accepted']}/{v['sent']} "
        f"p99 {v['p99_ms']} ms refused {v['refused']}; approvals {a['accepted']}/{a['sent']}; "
        f"take {takes}; healthz p99 {row.healthz.delay_row()['p99_ms']} ms "
        f"({dict(row.healthz_status)}); RSS {f['rss_mb']} MB; fps {f['fps_median']} "
        f"(min {f['fps_min']}), gap max {f['frame_gap_ms_max']} ms; "
        f"viewers {f['viewers_connected_per_server']}; feeds {f['feeds']}, publishers "
        f"{f['publishers']}; "
        f"in flight {h['in_flight'] + q['in_flight']}; "
        f"cpu % {f['cpu_pct']}")


# --- figures --------------------------------------------------------------------------


def minute_row(row: Minute) -> dict[str, Any]:
    take_ms = [max(t["http_ms"], t["push_ms_max"] or 0) if not t["missing"] else math.inf
               for t in row.takes]
    return {
        "minute": row.index + 1, "scale": row.scale,
        "questions": row.questions.row(), "votes": row.votes.row(),
        "approvals": row.approvals.row(),
        "votes_skipped": row.votes_skipped, "approvals_skipped": row.approvals_skipped,
        "takes": row.takes,
        "take_ms_max": None if not take_ms or math.isinf(max(take_ms)) else max(take_ms),
        "take_push_ms_p99": max((t["push_ms_p99"] or 0 for t in row.takes), default=None),
        "takes_on_time": all(t["on_time"] for t in row.takes),
        "healthz": row.healthz.delay_row(), "healthz_status": dict(row.healthz_status),
        "healthz_not_ok": dict(row.healthz_why),
        "metrics": row.metrics.delay_row(),
        "moderator_push_ms": {"p50": pct(row.moderator_ms, 50),
                              "p99": pct(row.moderator_ms, 99),
                              "max": pct(row.moderator_ms, 100),
                              "missing": row.moderator_missing},
        **row.figures,
    }


def totals(rows: list[Minute]) -> dict[str, Any]:
    tallies = {k: Tally() for k in ("questions", "votes", "approvals", "healthz", "metrics")}
    for row in rows:
        for k, tally in tallies.items():
            tally.merge(getattr(row, k))
    takes = [t for r in rows for t in r.takes]
    return {**{k: tallies[k].row() for k in ("questions", "votes", "approvals")},
            "healthz": tallies["healthz"].delay_row(), "metrics": tallies["metrics"].delay_row(),
            "takes": len(takes), "takes_late": sum(1 for t in takes if not t["on_time"]),
            "take_http_ms_max": max((t["http_ms"] for t in takes), default=None),
            "take_push_ms_max": max((t["push_ms_max"] or 0 for t in takes), default=None),
            "moderator_push_ms_p99": pct([m for r in rows for m in r.moderator_ms], 99),
            "moderator_push_missing": sum(r.moderator_missing for r in rows)}


def rss_growth(rows: list[Minute], servers: int) -> list[float | None]:
    """MB per minute, least squares over the minutes, per server process."""
    out: list[float | None] = []
    for i in range(servers):
        line = bench_video.fit([(r.index, r.figures["rss_mb"][i]) for r in rows
                                if "rss_mb" in r.figures])
        out.append(round(line["slope"], 2) if line else None)
    return out


def step_summary(rows: list[Minute]) -> dict[str, Any]:
    t = totals(rows)
    healthz_p99 = t["healthz"]["p99_ms"]
    ok = t["takes_late"] == 0 and healthz_p99 is not None and healthz_p99 <= LATE_MS
    return {"scale": rows[0].scale, "minutes": [r.index + 1 for r in rows],
            "takes_on_time": t["takes_late"] == 0, "take_http_ms_max": t["take_http_ms_max"],
            "take_push_ms_max": t["take_push_ms_max"], "healthz_p99_ms": healthz_p99,
            "questions_accepted": t["questions"]["accepted"],
            "questions_refused": t["questions"]["refused"],
            "votes_accepted": t["votes"]["accepted"], "votes_refused": t["votes"]["refused"],
            "ok": ok}


async def verify(audience: Audience) -> dict[str, Any]:
    """Every question answered 201, looked for in the staff CSV export and listing."""
    moderator = audience.staff[0]
    exported: dict[int, dict[str, str]] = {}
    listed: set[int] = set()
    for attempt in range(10):  # a check, not load: a refused read may be retried
        status, body, _ = await moderator.request("GET", "/api/questions/export.csv")
        if status == 200 and isinstance(body, bytes):
            text = body.decode("utf-8-sig")
            exported = {int(r["id"]): r for r in csv.DictReader(io.StringIO(text))}
            break
        say(f"export.csv answered {status}; again in 2 s (attempt {attempt + 1})")
        await asyncio.sleep(2)
    for _ in range(10):
        status, body, _ = await moderator.request("GET", "/api/questions")
        if status == 200 and isinstance(body, list):
            listed = {q["id"] for q in body}
            break
        await asyncio.sleep(2)
    lost = sorted(set(audience.accepted) - set(exported))
    # The staff listing stops at the newest 1,000: compare the ids it covers.
    covered = {i for i in audience.accepted if listed and i >= min(listed)}
    return {"accepted_201": len(audience.accepted), "exported": len(exported),
            "lost_201": len(lost), "lost_ids": lost[:50],
            "listed": len(listed), "missing_from_listing": len(covered - listed),
            "votes_counted_200": audience.votes_counted,
            "votes_in_export": sum(int(r.get("votes") or 0) for r in exported.values())}


# --- the benchmark --------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    steps = [(s, args.step_minutes) for s in args.ramp] if args.ramp else [
        (args.scale, args.minutes)]
    rows: list[Minute] = []
    async with staged(args) as (show, audience, info):
        await audience.start_programme()
        say(f"programme started: {audience.programme.get('on_air')} on air; soak of "
            f"{sum(m for _, m in steps)} minutes, steps {steps}")
        t0 = time.monotonic()
        show.cpu_pct()
        measures = []
        for step, (scale, minutes) in enumerate(steps):
            for _ in range(minutes):
                row = Minute(len(rows), scale, step)
                rows.append(row)
                await minute(show, audience, args, row, t0 + row.index * 60)
                measures.append(asyncio.create_task(measure(show, audience, row)))
        unanswered = await audience.drain(args.timeout + 10)
        await asyncio.gather(*measures)
        await collect_moderators(show, audience, 10)
        check = await verify(audience)
        info["server_rss_mb_at_end"] = [round(s.rss_mb()) for s in show.servers]
        info["unanswered_at_end"] = unanswered
    return result(args, rows, check, info)


def result(args: argparse.Namespace, rows: list[Minute], check: dict[str, Any],
           info: dict[str, Any]) -> dict[str, Any]:
    total = totals(rows)
    servers = len(info["server_rss_mb_at_start"])
    failures = []
    late = [f"minute {r.index + 1}: {t['segment']} (HTTP {t['status']} {t['http_ms']} ms, "
            f"push max {t['push_ms_max']} ms, {t['missing']} viewers did not hear it)"
            for r in rows for t in r.takes if not t["on_time"]]
    if late:
        failures.append({"check": "take_late", "limit_ms": LATE_MS, "takes": late})
    if check["lost_201"]:
        failures.append({"check": "lost_201", "count": check["lost_201"]})
    p99 = total["healthz"]["p99_ms"]
    if p99 is None or p99 > LATE_MS:
        failures.append({"check": "healthz_p99", "p99_ms": p99, "limit_ms": LATE_MS,
                         "minutes": [r.index + 1 for r in rows
                                     if (r.healthz.delay_row()["p99_ms"] or 0) > LATE_MS]})
    steps = [step_summary(group) for group in split_steps(rows)]
    breaking = None
    for s in steps:
        if not s["ok"]:
            break
        breaking = s["scale"]
    out: dict[str, Any] = {
        "db": args.db, "processes": servers, "viewers": args.viewers,
        "whep_viewers": args.whep_viewers, "whep_churn_per_30s": args.whep_churn,
        "rates_at_scale_1": RATES, "minutes": [minute_row(r) for r in rows],
        "totals": {**total, **check}, "lost_201": check["lost_201"],
        "server_rss_mb_start": info["server_rss_mb_at_start"],
        "server_rss_mb_end": info["server_rss_mb_at_end"],
        "server_rss_mb_per_minute": rss_growth(rows, servers),
        "viewers_connected_at_end": rows[-1].figures.get("viewers_connected") if rows else None,
        "fleet": info, "failures": failures,
    }
    if args.ramp:
        out["steps"] = steps
        out["highest_scale_on_time"] = breaking
    return out


def scales(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x.strip()]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError("a comma-separated list of positive scales")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_show",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every rate")
    parser.add_argument("--ramp", type=scales, help="scales to run in turn, e.g. 1,2,3")
    parser.add_argument("--step-minutes", type=int, default=2, help="minutes per ramp step")
    parser.add_argument("--viewers", type=int, default=1000, help="Socket.IO viewers on /")
    parser.add_argument("--whep-viewers", type=int, default=30)
    parser.add_argument("--whep-churn", type=int, default=5,
                        help="WHEP viewers who leave, and new ones who arrive, every 30 s")
    parser.add_argument("--viewer-procs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds a request may take before it counts as no answer")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL to make the run's fresh database through")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    if min(args.minutes, args.step_minutes, args.viewer_procs) < 1 or args.scale <= 0 \
            or args.viewers < 0 or args.whep_viewers < 1 \
            or not 0 <= args.whep_churn <= args.whep_viewers:
        parser.error("--minutes, --step-minutes, --viewer-procs, --whep-viewers >= 1, "
                     "--scale > 0, 0 <= --whep-churn <= --whep-viewers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    outcome: dict[str, Any] = {}

    async def kept(a: argparse.Namespace) -> dict[str, Any]:
        outcome.update(await bench(a))
        return outcome

    code = run_bench(kept, args)
    return 1 if code == 0 and outcome.get("failures") else code


if __name__ == "__main__":
    sys.exit(main())
