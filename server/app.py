"""The app factory: the one place where settings, resources and packages meet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from qa import routes as qa_routes
from qa.service import QuestionService
from qa.store import QuestionStore
from schedule import model as schedule_model
from schedule import routes as schedule_routes
from schedule.events import ProgrammeEnded, SegmentTaken
from schedule.model import EventInfo, State
from schedule.service import ProgrammeService
from schedule.store import TakeLog
from server import db, keys, pages, redisconn
from server.admission import LoopMonitor
from server.auth import AuthService
from server.clock import Clock, SpeedClock, SystemClock
from server.events import EventBus
from server.http import (
    Handler,
    errors_middleware,
    identity_middleware,
    json_response,
    origin_middleware,
)
from server.i18n import Catalog
from server.logs import quiet_refused_requests
from server.metrics import CachedCounts, Metrics, metrics_handler, metrics_middleware
from server.ratelimit import (
    FallbackRateLimiter,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)
from server.realtime import Broadcaster, create_sio, register_namespaces
from server.settings import Settings
from server.staffsockets import StaffSockets
from tv import routes as tv_routes
from tv.namespace import VideoPushes
from tv.service import TvService
from tv.store import FeedTokenStore

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("server.app")

_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self' ws: wss:; "
        "object-src 'none'; base-uri 'self'; form-action 'self'")
# Pages that only staff see, or that take a password: never inside another site's frame
# (a transparent frame over them would steer a moderator's clicks).
_UNFRAMED = ("/login", "/logout", "/moderation", "/control")


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On every answer, errors included (this middleware is the outermost)."""
    response = await handler(request)
    if not response.prepared:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.content_type == "text/html":
            allowed = request.app[keys.SETTINGS].http.frame_ancestors
            if request.path.startswith(_UNFRAMED):
                ancestors, legacy = "'none'", "DENY"
            else:
                ancestors, legacy = " ".join(("'self'", *allowed)), "SAMEORIGIN"
            response.headers.setdefault("Content-Security-Policy",
                                        f"{_CSP}; frame-ancestors {ancestors}")
            if legacy == "DENY" or not allowed:
                # Older browsers know only this header, which cannot list origins.
                response.headers.setdefault("X-Frame-Options", legacy)
    return response


def create_app(settings: Settings, clock: Clock | None = None) -> web.Application:
    """Build the whole server for ``settings``; resources open on startup."""
    quiet_refused_requests()
    app = web.Application(middlewares=[security_headers, identity_middleware,
                                       metrics_middleware, tv_routes.cors_middleware,
                                       errors_middleware, origin_middleware],
                          client_max_size=256 * 1024)
    app[keys.SETTINGS] = settings
    if clock is None:
        clock = SpeedClock(settings.rehearsal_speed) if settings.rehearsal_speed else SystemClock()
    app[keys.CLOCK] = clock
    app[keys.BUS] = EventBus()
    app[keys.METRICS] = Metrics()
    app[keys.LOOP] = LoopMonitor(settings.load.loop_lag_ms / 1000)
    app[keys.CATALOG] = Catalog(ROOT / "static" / "i18n")
    app[keys.JINJA] = pages.make_jinja(ROOT / "templates")
    sio = create_sio(settings)
    app[keys.SIO] = sio
    sio.attach(app)
    video = VideoPushes(sio, app)
    video.subscribe(app[keys.BUS])
    staff_sockets = StaffSockets(sio, clock, lambda sessions: app[keys.AUTH].snapshot(sessions))
    staff_sockets.subscribe(app[keys.BUS])
    register_namespaces(sio, app, video, staff_sockets)
    broadcaster = Broadcaster(sio, lambda: app[keys.PROGRAMME_VIEW]())
    broadcaster.subscribe(app[keys.BUS])

    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_services)
    app.cleanup_ctx.append(_programme)
    app.cleanup_ctx.append(lambda _app: broadcaster.run())
    app.cleanup_ctx.append(lambda _app: staff_sockets.run())
    app.cleanup_ctx.append(_video)
    app.cleanup_ctx.append(video.run)
    app.cleanup_ctx.append(tv_routes.rotation_watcher)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/healthz/{serving:serving}", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_routes(pages.routes)
    app.router.add_routes(qa_routes.routes)
    app.router.add_routes(schedule_routes.routes)
    app.router.add_routes(tv_routes.routes)
    app.router.add_static("/static", ROOT / "static", append_version=False)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    url = settings.database_url
    async for engine in db.engine_context(url, settings.pool, settings.load.max_wait_s):
        app[keys.ENGINE] = engine
        control = app[keys.CONTROL_ENGINE] = db.control_engine(url)
        app[keys.WRITE_GATE] = db.WriteGate.for_url(url)
        app[keys.DB_WRITES] = db.WriteHealth(control, engine)
        try:
            yield
        finally:
            await control.dispose()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    """The shared Redis client; a Redis away at start-up is waited for, not fatal.

    Everything that uses Redis copes without it (limits per process, pushes
    resumed later, see README), so a process that starts during an outage
    serves degraded rather than refusing to start.
    """
    settings = app[keys.SETTINGS]
    client = None
    if settings.redis_url:
        client = redisconn.fast_client(settings.redis_url, settings.redis_timeout_s)
        try:
            async with asyncio.timeout(redisconn.deadline(settings.redis_timeout_s)):
                await client.ping()
        except redisconn.UNREACHABLE as e:
            log.warning("Redis cannot be reached at start-up: starting without it; "
                        "limits are per process and pushes stay in this process until it answers",
                        extra={"redis": settings.redis_url.split("@")[-1],
                               "error": str(e) or type(e).__name__})
    app[keys.REDIS] = client
    yield
    if client is not None:
        await client.aclose()


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings, clock = app[keys.SETTINGS], app[keys.CLOCK]
    redis = app[keys.REDIS]
    limiter: RateLimiter = MemoryRateLimiter(clock)
    if redis is not None:
        limiter = FallbackRateLimiter(RedisRateLimiter(redis, settings.redis_channel, clock),
                                      limiter, clock, redisconn.deadline(settings.redis_timeout_s),
                                      settings.redis_retry_s)
    app[keys.LIMITER] = limiter
    app[keys.AUTH] = AuthService(app[keys.CONTROL_ENGINE], clock, limiter,
                                 settings.http.session_hours, settings.auth.login_failures,
                                 user_failures=settings.auth.login_failures_per_user,
                                 publish=app[keys.BUS].publish, gate=app[keys.WRITE_GATE])
    questions = QuestionService(QuestionStore(app[keys.ENGINE]), limiter, clock,
                                app[keys.BUS].publish, [t.id for t in settings.themes],
                                settings.qa, shared=bool(settings.redis_url),
                                segment_ids=[seg.id for seg in settings.plan.segments],
                                load=settings.load, loop=app[keys.LOOP],
                                gate=app[keys.WRITE_GATE])
    app[keys.QUESTIONS] = questions
    counts = app[keys.COUNTS] = CachedCounts(QuestionStore(app[keys.CONTROL_ENGINE]).counts)
    app[keys.LOAD_REPORT] = lambda: load_report(app)
    await questions.start()
    async with app[keys.LOOP].running():
        yield
    await counts.aclose()
    await questions.stop()
    if isinstance(limiter, FallbackRateLimiter):
        await limiter.aclose()


async def _programme(app: web.Application) -> AsyncIterator[None]:
    settings, clock = app[keys.SETTINGS], app[keys.CLOCK]
    plan, show = settings.plan, "show"
    speed = settings.rehearsal_speed or 1.0
    if settings.rehearsal_speed:
        # The same running order, moved to start now, in a log of its own.
        plan, show = plan.shifted(clock.now() - plan.planned_start), "rehearsal"
    store = TakeLog(app[keys.CONTROL_ENGINE], show, app[keys.WRITE_GATE])
    if settings.rehearsal_speed:
        await store.clear()
    service = ProgrammeService(store, plan, clock, app[keys.BUS].publish,
                               settings.auto_start or bool(settings.rehearsal_speed), speed)
    event = EventInfo(settings.event.title, settings.event.timezone,
                      rehearsal=bool(settings.rehearsal_speed), speed=speed,
                      auto_start=service.auto_start)
    sites = {f.id: {"name": f.name_fr, "name_en": f.name_en, "site": f.site,
                    "timezone": f.timezone} for f in settings.feeds}
    app[keys.PROGRAMME] = service
    app[keys.PROGRAMME_VIEW] = lambda: schedule_model.view(service.snapshot(), clock.now(),
                                                           event, sites)
    await service.start()
    yield
    await service.stop()


# The slate after the show (before it, the slate says the show starts soon).
_THE_END = "Merci et à bientôt !"


async def _video(app: web.Application) -> AsyncIterator[None]:
    """The media core; it follows the programme, which started before it."""
    settings, clock, bus = app[keys.SETTINGS], app[keys.CLOCK], app[keys.BUS]
    app[keys.FEED_TOKENS] = FeedTokenStore(app[keys.CONTROL_ENGINE], clock, app[keys.WRITE_GATE])
    app[keys.PUBLISHERS] = tv_routes.Publishers()
    if not settings.video.serve:
        # Another process (the video process) takes WHIP and WHEP; through
        # Redis its pushes reach this process's control rooms and contributors.
        log.info("video is served by another process (--no-video)")
        yield
        return
    tv = TvService(settings, clock, bus.publish)
    app[keys.TV] = tv
    await tv.start()
    running = True

    # Every process switches its own programme video, whoever made the take.
    async def on_taken(event: SegmentTaken) -> None:
        if running:
            await tv.switch(event.source, event.segment.title_fr)

    async def on_ended(event: ProgrammeEnded) -> None:
        if running:
            await tv.switch(None, _THE_END)

    bus.subscribe(SegmentTaken, on_taken)
    bus.subscribe(ProgrammeEnded, on_ended)
    # After a restart nothing is announced: show what is on air now.
    programme = app[keys.PROGRAMME]
    snap = programme.snapshot()
    if snap.on_air is not None and snap.state in (State.LIVE, State.HOLD):
        segment = programme.plan.get(snap.on_air)
        await tv.switch(segment.source, segment.title_fr)
    else:
        await tv.switch(None, _THE_END if snap.state == State.ENDED else "")
    yield
    running = False
    await tv.stop()


# A health check answers within about a second, even when the database pool
# is contended or Redis is blackholed: a load balancer's check times out too.
_DATABASE_CHECK_S = 1.0


async def healthz(request: web.Request) -> web.Response:
    """200 when every dependency answers; 503 naming the ones that do not.

    ``/healthz/serving`` is the same check, but answers 200 while this
    process can still serve (Redis down is "degraded"): point a load
    balancer there, or a Redis outage, which every process sees at once,
    would take every process out of the pool (README).
    """
    checks = await _checks(request.app)
    load = load_report(request.app)
    down = [name for name, state in checks.items() if state == "down"]
    if request.match_info.get("serving"):
        down = [name for name in down if name != "redis"]
    if down:
        return json_response({"status": "unavailable", "error": "service_unavailable",
                              "message": _down_message(down), "checks": checks,
                              "load": load}, status=503)
    # Overloaded is still serving: it refuses the excess fast (503 + Retry-After)
    # and keeps the programme going; pulling it would only move the load.
    status = ("degraded" if "down" in checks.values()
              else "overloaded" if load["shedding"] else "ok")
    return json_response({"status": status, "checks": checks, "load": load})


def load_report(app: web.Application) -> dict[str, Any]:
    """How busy this process is, read from memory only (no I/O, no waiting)."""
    loop = app[keys.LOOP].stats()
    queues = app[keys.QUESTIONS].load_stats()
    pools = {name: _pool_status(app[key]) for name, key in
             (("audience", keys.ENGINE), ("programme", keys.CONTROL_ENGINE))}
    shedding = bool(loop["overloaded"]) or any(
        q["queued"] >= q["capacity"] if "queued" in q
        else q["running"] >= q["concurrency"] and q["waiting"] >= q["queue"]
        for q in queues.values())
    eio = app[keys.SIO].eio
    sockets = {"slow_clients_cut": getattr(eio, "clients_cut", 0)}
    return {"shedding": shedding, "loop": loop, **queues, "pools": pools, "sockets": sockets}


def _pool_status(engine: AsyncEngine) -> dict[str, int]:
    pool = engine.sync_engine.pool
    if not isinstance(pool, QueuePool):
        return {}
    return {"size": pool.size(), "checked_out": pool.checkedout(), "overflow": pool.overflow()}


async def _checks(app: web.Application) -> dict[str, str]:
    database, writes, redis = await asyncio.gather(
        _database_answers(app), _database_writes(app), _redis_answers(app))
    checks = {"database": database, "database_writes": writes, "redis": redis,
              "programme": "ok" if app[keys.PROGRAMME].running else "down"}
    if keys.TV in app:
        checks["video"] = "ok" if app[keys.TV].running else "down"
    return checks


async def _database_answers(app: web.Application) -> str:
    # On the programme's own connections: the audience's may all be busy, which
    # is load (reported under "load"), not the database being away.
    try:
        async with asyncio.timeout(_DATABASE_CHECK_S):
            return "ok" if await db.ping(app[keys.CONTROL_ENGINE]) else "down"
    except TimeoutError:
        return "down"


async def _database_writes(app: web.Application) -> str:
    """A ping only reads: a full disk or a read-only file shows in the last write."""
    writes = app[keys.DB_WRITES]
    try:
        async with asyncio.timeout(_DATABASE_CHECK_S):
            await writes.probe(app[keys.CLOCK].now())
    except TimeoutError:
        pass  # the probe's verdict waits for the next check; the last one stands
    return "ok" if writes.failure is None else "down"


async def _redis_answers(app: web.Application) -> str:
    client = app[keys.REDIS]
    if client is None:
        return "not_configured"
    try:
        async with asyncio.timeout(redisconn.deadline(app[keys.SETTINGS].redis_timeout_s)):
            await client.ping()
    except redisconn.UNREACHABLE:
        return "down"
    return "ok"


_DOWN_WORDS = {"database": "the database cannot be reached",
               "database_writes": "the database refuses writes (disk full or read-only?)",
               "redis": "Redis cannot be reached",
               "programme": "the programme engine is not running",
               "video": "the programme video is not running"}


def _down_message(down: list[str]) -> str:
    return "; ".join(_DOWN_WORDS[name] for name in down)
