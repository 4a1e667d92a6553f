"""Prometheus metrics, one registry per app (no module-level collectors)."""

from __future__ import annotations

import time

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


    def count_packets(self, outcome: str, total: int) -> None:
        """Advance the counter to ``total`` (the service keeps the running totals)."""
        seen = self._packets_seen.get(outcome, 0)
        child = self.packets.labels(outcome)  # shown from the start, at 0
        if total > seen:
            child.inc(total - seen)
        self._packets_seen[outcome] = total


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
    metrics.questions.clear()
    for theme, status, count in await request.app[keys.QUESTIONS].counts():
        metrics.questions.labels(theme, status).set(count)
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
