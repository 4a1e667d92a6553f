"""Every typed application key, in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    import jinja2
    import socketio
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

    from qa.service import QuestionService
    from schedule.service import ProgrammeService
    from server.admission import LoopMonitor
    from server.auth import AuthService
    from server.clock import Clock
    from server.db import WriteGate, WriteHealth
    from server.events import EventBus
    from server.i18n import Catalog
    from server.metrics import CachedCounts, Metrics
    from server.ratelimit import RateLimiter
    from server.settings import Settings
    from tv.routes import Publishers
    from tv.service import TvService
    from tv.store import FeedTokenStore

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
ENGINE: web.AppKey[AsyncEngine] = web.AppKey("engine")
"""The audience's path to the database: questions, votes, lists."""
CONTROL_ENGINE: web.AppKey[AsyncEngine] = web.AppKey("control_engine")
WRITE_GATE: web.AppKey[WriteGate] = web.AppKey("write_gate")
"""On SQLite, this process's writers take turns, the programme's first (server.db.WriteGate)."""
"""The programme's own path: take log, feed tokens, staff sign-in (server.db.control_engine)."""
DB_WRITES: web.AppKey[WriteHealth] = web.AppKey("db_writes")
REDIS: web.AppKey[Redis | None] = web.AppKey("redis")
BUS: web.AppKey[EventBus] = web.AppKey("bus")
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter")
AUTH: web.AppKey[AuthService] = web.AppKey("auth")
QUESTIONS: web.AppKey[QuestionService] = web.AppKey("questions")
PROGRAMME: web.AppKey[ProgrammeService] = web.AppKey("programme")
PROGRAMME_VIEW: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("programme_view")
SIO: web.AppKey[socketio.AsyncServer] = web.AppKey("sio")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
LOOP: web.AppKey[LoopMonitor] = web.AppKey("loop")
COUNTS: web.AppKey[CachedCounts] = web.AppKey("counts")
"""Question counts for /metrics, read in the background on the programme's connections."""
LOAD_REPORT: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("load_report")
"""How late the event loop runs; audience work is refused while it stays late."""
JINJA: web.AppKey[jinja2.Environment] = web.AppKey("jinja")
CATALOG: web.AppKey[Catalog] = web.AppKey("catalog")
TV: web.AppKey[TvService] = web.AppKey("tv")
FEED_TOKENS: web.AppKey[FeedTokenStore] = web.AppKey("feed_tokens")
PUBLISHERS: web.AppKey[Publishers] = web.AppKey("publishers")

# Per-request values set by middleware.
LANG: web.RequestKey[str] = web.RequestKey("lang", str)
VIEWER_ID: web.RequestKey[str] = web.RequestKey("viewer_id", str)
