"""The audience and the staff of bench_show: paced HTTP load and its per-minute tallies.

One asyncio process drives every HTTP request of the soak: questions, votes and
approvals at fixed rates (open loop: a request is sent at its time whether or
not the earlier ones were answered, and never retried), the director's takes,
and the health polls. Each answer is counted in the minute its request was sent.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from server.http import VIEWER_COOKIE
from tests.benchmarks.bench_questions import question_bodies
from tests.benchmarks.procs import nearest_rank
from tests.helpers import Http

ASKERS = 128 << 16
"""Askers come from 10.128.0.0/9 upwards, voters from 10.192.0.0 (X-Forwarded-For)."""
VOTERS = 192 << 16


def pct(values: list[float], p: float) -> float | None:
    value = nearest_rank(values, p)
    return None if value is None else round(value, 1)


def address(n: int) -> str:
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def identity(kind: str, n: int, base: int) -> dict[str, str]:
    """A distinct viewer (cookie) from a distinct address, as a real audience is."""
    return {"Cookie": f"{VIEWER_COOKIE}=soak-{kind}-{n:012d}",
            "X-Forwarded-For": address(base + n)}


async def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


# --- tallies -------------------------------------------------------------------------


@dataclass
class Tally:
    """The answers to one kind of request sent within one minute."""

    sent: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    """"503" (load shed: 503 with Retry-After), "429", "other", "no_answer"."""
    other: Counter[int] = field(default_factory=Counter)
    ok_ms: list[float] = field(default_factory=list)
    all_ms: list[float] = field(default_factory=list)

    def add(self, status: int, ms: float, ok: bool, retry_after: bool) -> None:
        self.all_ms.append(ms)
        if ok:
            self.accepted += 1
            self.ok_ms.append(ms)
        elif status == 0:
            self.refused["no_answer"] += 1
        elif status == 503 and retry_after:
            self.refused["503"] += 1
        elif status == 429:
            self.refused["429"] += 1
        else:
            self.refused["other"] += 1
            self.other[status] += 1

    def merge(self, other: Tally) -> None:
        self.sent += other.sent
        self.accepted += other.accepted
        self.refused.update(other.refused)
        self.other.update(other.other)
        self.ok_ms += other.ok_ms
        self.all_ms += other.all_ms

    def row(self) -> dict[str, Any]:
        """Accepted and refused counts, latency of the accepted (ms)."""
        return {"sent": self.sent, "accepted": self.accepted,
                "refused": {k: self.refused[k] for k in ("503", "429", "other", "no_answer")},
                "other_statuses": {str(k): v for k, v in sorted(self.other.items())},
                "in_flight": self.sent - len(self.all_ms),
                "p50_ms": pct(self.ok_ms, 50), "p99_ms": pct(self.ok_ms, 99),
                "max_ms": pct(self.ok_ms, 100)}

    def delay_row(self) -> dict[str, Any]:
        """For polls: every answer's delay (a request that got none counts its timeout)."""
        return {"sent": self.sent, "ok": self.accepted,
                "not_ok": {str(k): v for k, v in sorted(self.other.items())}
                | ({"no_answer": self.refused["no_answer"]} if self.refused["no_answer"] else {}),
                "p50_ms": pct(self.all_ms, 50), "p99_ms": pct(self.all_ms, 99),
                "max_ms": pct(self.all_ms, 100)}


@dataclass
class Minute:
    """Everything measured in one minute of the soak; ``figures`` fills the rest."""

    index: int
    scale: float
    step: int = 0
    questions: Tally = field(default_factory=Tally)
    votes: Tally = field(default_factory=Tally)
    approvals: Tally = field(default_factory=Tally)
    healthz: Tally = field(default_factory=Tally)
    metrics: Tally = field(default_factory=Tally)
    healthz_status: Counter[str] = field(default_factory=Counter)
    healthz_why: Counter[str] = field(default_factory=Counter)
    """The message and failing checks of each /healthz answer other than 200."""
    takes: list[dict[str, Any]] = field(default_factory=list)
    moderator_ms: list[float] = field(default_factory=list)
    moderator_missing: int = 0
    votes_skipped: int = 0
    """Votes not sent: no question approved yet."""
    approvals_skipped: int = 0
    """Approvals not sent: no pending question left."""
    figures: dict[str, Any] = field(default_factory=dict)


# --- the load -------------------------------------------------------------------------


class Bodies:
    """Realistic, distinct question bodies (bench_questions'), made a chunk at a time."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.chunks = itertools.count()
        self.queue: collections.deque[bytes] = collections.deque()

    def next(self) -> bytes:
        if not self.queue:
            self.queue.extend(question_bodies(self.rng, 2000, f"c{next(self.chunks)}"))
        return self.queue.popleft()


@dataclass
class Answer:
    status: int
    body: Any
    sent: float
    ms: float


class Audience:
    """The HTTP side of the show: viewers asking and voting, moderators, director, polls.

    ``bases`` are the server processes; the audience and the moderators'
    approvals go to each in turn, the director and the staff checks to the
    first (the video process).
    """

    def __init__(self, bases: list[str], staff: list[Http], director: Http,
                 timeout_s: float, seed: int = 1) -> None:
        self.bases = bases
        self.staff = staff
        self.director = director
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512), cookie_jar=aiohttp.DummyCookieJar(),
            timeout=self.timeout)
        # Health polls have their own connections: a full audience pool must not delay them.
        self.polls = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16),
                                           cookie_jar=aiohttp.DummyCookieJar(),
                                           timeout=self.timeout)
        self.bodies = Bodies(seed)
        self.rng = random.Random(seed)
        self.asked = itertools.count()
        self.voted = itertools.count()
        self.approving = itertools.count()
        self.row = Minute(-1, 0)
        self.accepted: dict[int, Minute] = {}
        """Every question answered 201, with the minute it was sent in."""
        self.votes_counted = 0
        """Votes answered 200 that added a vote (``voted`` true)."""
        self.pending: collections.deque[tuple[int, int]] = collections.deque()
        self.approved: list[int] = []
        self.uncollected: list[tuple[int, float, Minute]] = []
        """Accepted questions whose moderator pushes are still to be fetched."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.programme: dict[str, Any] = {}

    async def close(self) -> None:
        await self.session.close()
        await self.polls.close()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, within: float) -> int:
        """Wait for the requests in flight; how many were still unanswered after ``within``."""
        if not self.tasks:
            return 0
        _, late = await asyncio.wait(set(self.tasks), timeout=within)
        for task in late:
            task.cancel()
        return len(late)

    async def send(self, session: aiohttp.ClientSession, tally: Tally, method: str, url: str,
                   body: bytes | None, headers: dict[str, str],
                   ok: Callable[[int], bool]) -> Answer:
        """One request, never retried, counted in ``tally``; status 0: no answer."""
        tally.sent += 1
        t0 = time.monotonic()
        status, raw, retry_after = 0, b"", False
        try:
            async with session.request(method, url, data=body, headers=headers,
                                       timeout=self.timeout) as resp:
                raw = await resp.read()
                status, retry_after = resp.status, "Retry-After" in resp.headers
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
        ms = (time.monotonic() - t0) * 1000
        tally.add(status, ms, ok(status), retry_after)
        data: Any = None
        if raw[:1] in (b"{", b"["):
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
        return Answer(status, data, t0, ms)

    def _json_headers(self, base: str) -> dict[str, str]:
        return {"Content-Type": "application/json", "Origin": base}

    # --- the audience

    async def ask(self) -> None:
        n = next(self.asked)
        base = self.bases[n % len(self.bases)]
        row = self.row
        headers = self._json_headers(base) | identity("asker", n, ASKERS)
        got = await self.send(self.session, row.questions, "POST", base + "/api/questions",
                              self.bodies.next(), headers, lambda s: s == 201)
        if got.status == 201 and isinstance(got.body, dict):
            self.accepted[got.body["id"]] = row
            self.pending.append((got.body["id"], got.body["version"]))
            self.uncollected.append((got.body["id"], got.sent, row))

    async def vote(self) -> None:
        row = self.row
        if not self.approved:
            row.votes_skipped += 1
            return
        n = next(self.voted)
        base = self.bases[n % len(self.bases)]
        qid = self.rng.choice(self.approved)
        headers = {"Origin": base} | identity("voter", n, VOTERS)
        got = await self.send(self.session, row.votes, "POST",
                              f"{base}/api/questions/{qid}/vote", None, headers,
                              lambda s: s == 200)
        if got.status == 200 and isinstance(got.body, dict) and got.body.get("voted"):
            self.votes_counted += 1

    async def approve(self) -> None:
        row = self.row
        if not self.pending:
            row.approvals_skipped += 1
            return
        qid, version = self.pending.popleft()
        moderator = self.staff[next(self.approving) % len(self.staff)]
        headers = self._json_headers(moderator.base) | {"X-CSRF-Token": moderator.csrf or ""}
        body = json.dumps({"status": "approved", "version": version}).encode()
        got = await self.send(moderator.session, row.approvals, "PATCH",
                              f"{moderator.base}/api/questions/{qid}", body, headers,
                              lambda s: s == 200)
        if got.status == 200:
            self.approved.append(qid)

    async def poll(self) -> None:
        row = self.row
        for base in self.bases:
            self.spawn(self._healthz(base, row))
            self.spawn(self._metrics(base, row))

    async def _healthz(self, base: str, row: Minute) -> None:
        got = await self.send(self.polls, row.healthz, "GET", base + "/healthz", None, {},
                              lambda s: s == 200)
        status = got.body.get("status") if isinstance(got.body, dict) else None
        row.healthz_status[str(status or got.status)] += 1
        if got.status != 200 and isinstance(got.body, dict):
            # What was down, as the server says it (checks: database, redis, programme...).
            down = {k: v for k, v in (got.body.get("checks") or {}).items() if v != "ok"}
            row.healthz_why[f"{got.body.get('message')} {down}"] += 1

    async def _metrics(self, base: str, row: Minute) -> None:
        await self.send(self.polls, row.metrics, "GET", base + "/metrics", None, {},
                        lambda s: s == 200)

    # --- pacing

    async def paced(self, rate: float, action: Callable[[], Coroutine[Any, Any, None]],
                    start: float, stop: float) -> None:
        """``rate`` requests a second from ``start`` to ``stop``, each in its own task."""
        if rate <= 0:
            return
        for k in itertools.count():
            t = start + k / rate
            if t >= stop:
                return
            await sleep_until(t)
            self.spawn(action())

    async def burst(self, count: int, at: float) -> None:
        """``count`` questions spread evenly over one second from ``at``."""
        for k in range(count):
            await sleep_until(at + k / count)
            self.spawn(self.ask())

    # --- the director

    async def start_programme(self) -> None:
        status, body, _ = await self.director.request(
            "POST", "/api/programme/start", headers={"Origin": self.director.base})
        if status != 200:
            raise RuntimeError(f"POST /api/programme/start answered {status}: {body}")
        self.programme = body

    async def take(self) -> tuple[str, float, float, int]:
        """Take the next segment (the first again after the last): (segment, sent, ms, status).

        The answer's ``on_air`` names the segment taken; without an answer, the
        one that was next.
        """
        nxt = self.programme.get("next")
        target = nxt or self.programme["segments"][0]["id"]
        path = "/api/programme/take" if nxt else f"/api/programme/take/{target}"
        t0 = time.monotonic()
        status = 0
        try:
            status, body, _ = await self.director.request(
                "POST", path, headers={"Origin": self.director.base}, timeout=self.timeout)
        except (aiohttp.ClientError, TimeoutError, OSError):
            body = None
        ms = (time.monotonic() - t0) * 1000
        if status == 200 and isinstance(body, dict):
            self.programme = body
            target = body.get("on_air") or target
        return target, t0, ms, status


def split_steps(rows: list[Minute]) -> Iterator[list[Minute]]:
    """The minutes of each step of a ramp (one step without --ramp)."""
    for _, group in itertools.groupby(rows, key=lambda r: r.step):
        yield list(group)
