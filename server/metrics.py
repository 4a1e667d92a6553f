"""Prometheus metrics, one registry per app (no module-level collectors)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from server import keys
from server.http import Handler
from tv.model import FeedState


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.questions = Gauge("tv_questions", "Questions by theme and status (merged left out)",
                               ["theme", "status"], registry=self.registry)
        self.sockets = Gauge("tv_socketio_clients",
                             "Socket.IO clients connected to this process, by namespace",
                             ["namespace"], registry=self.registry)
        self.latency = Histogram(
            "tv_http_request_duration_seconds", "HTTP request latency",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.feeds_live = Gauge("tv_feeds_live", "Video sources publishing to this process",
                                registry=self.registry)
        self.viewers = Gauge("tv_whep_viewers", "WHEP viewers connected to this process",
                             registry=self.registry)
        self.feed_fps = Gauge("tv_feed_fps", "Frames per second received, by feed", ["feed"],
                              registry=self.registry)
        self.feed_kbps = Gauge("tv_feed_kbps", "Kilobits per second received, by feed",
                               ["feed"], registry=self.registry)
        self.packets = Counter(
            "tv_whep_packets", "RTP packets for viewers: sent in the stream, sent again after "
            "a viewer reported a loss (repaired), or dropped at this server's socket",
            ["outcome"], registry=self.registry)
        self._packets_seen: dict[str, int] = {}
        self.errors = Counter("tv_http_errors_total", "HTTP responses with status >= 500",
                              ["route"], registry=self.registry)
        self.queued = Gauge("tv_load_queued", "Audience work waiting, by queue",
                            ["queue"], registry=self.registry)
        self.shed = Gauge("tv_load_shed_total",
                          "Audience requests refused at once (503 overloaded), by queue",
                          ["queue"], registry=self.registry)
        self.db_p99 = Gauge("tv_load_db_p99_seconds",
                            "Recent p99 time of the database work of each queue "
                            "(a batch write, or a read with its wait)", ["queue"],
                            registry=self.registry)
        self.loop_lag = Gauge("tv_event_loop_lag_seconds",
                              "Median lateness of the event loop over the last second",
                              registry=self.registry)
        self.clients_cut = Gauge("tv_socketio_slow_clients_cut_total",
                                 "Socket.IO clients disconnected because they had stopped "
                                 "reading their pushes", registry=self.registry)
        self.counts_age = Gauge("tv_questions_counts_age_seconds",
                                "Age of the tv_questions figures (read in the background)",
                                registry=self.registry)

    def observe_load(self, report: dict[str, Any]) -> None:
        """Copy ``server.app.load_report`` into the gauges."""
        self.loop_lag.set(report["loop"]["lag_ms"] / 1000)
        self.clients_cut.set(report["sockets"]["slow_clients_cut"])
        for name in ("questions", "votes", "reads"):
            queue = report[name]
            self.queued.labels(name).set(queue.get("queued", queue.get("waiting", 0)))
            self.shed.labels(name).set(queue["shed"])
            timing = queue.get("write_ms") or queue.get("db_ms") or {}
            self.db_p99.labels(name).set((timing.get("p99") or 0) / 1000)

    def count_packets(self, outcome: str, total: int) -> None:
        """Advance the counter to ``total`` (the service keeps the running totals)."""
        seen = self._packets_seen.get(outcome, 0)
        child = self.packets.labels(outcome)  # shown from the start, at 0
        if total > seen:
            child.inc(total - seen)
        self._packets_seen[outcome] = total


class CachedCounts:
    """Question counts for /metrics, read in the background: a scrape never
    waits on the database for longer than ``wait_s``, and gets the last figures
    (with their age) when the read takes longer."""

    MAX_AGE_S = 2.0

    def __init__(self, fetch: Callable[[], Awaitable[list[tuple[str, str, int]]]]) -> None:
        self.fetch = fetch
        self.rows: list[tuple[str, str, int]] = []
        self.read_at = float("-inf")
        self._task: asyncio.Task[None] | None = None

    async def latest(self, wait_s: float = 0.1) -> list[tuple[str, str, int]]:
        if time.monotonic() - self.read_at > self.MAX_AGE_S and (
                self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._read(), name="metrics-question-counts")
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), wait_s)
        return self.rows

    async def _read(self) -> None:
        with contextlib.suppress(Exception):  # the last figures stand; their age says so
            self.rows = await self.fetch()
            self.read_at = time.monotonic()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics = request.app[keys.METRICS]
    metrics.latency.labels(request.method, route, str(response.status)).observe(
        time.perf_counter() - start)
    if response.status >= 500:
        metrics.errors.labels(route).inc()
    return response


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[keys.METRICS]
    rows = await request.app[keys.COUNTS].latest()
    metrics.questions.clear()
    for theme, status, count in rows:
        metrics.questions.labels(theme, status).set(count)
    metrics.counts_age.set(round(max(0.0, time.monotonic() - request.app[keys.COUNTS].read_at),
                                 3) if rows else 0)
    metrics.observe_load(request.app[keys.LOAD_REPORT]())
    if keys.TV in request.app:
        tv = request.app[keys.TV]
        stats = tv.feed_stats()
        metrics.feeds_live.set(sum(1 for s in stats if s.state is FeedState.LIVE))
        metrics.viewers.set(tv.viewer_count)
        delivery = tv.delivery()
        metrics.count_packets("sent", delivery.sent)
        metrics.count_packets("repaired", delivery.repaired)
        metrics.count_packets("dropped", delivery.dropped)
        for s in stats:
            metrics.feed_fps.labels(s.feed).set(s.fps or 0)
            metrics.feed_kbps.labels(s.feed).set(s.kbps or 0)
    return web.Response(body=generate_latest(metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
