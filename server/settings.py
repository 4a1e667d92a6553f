"""Settings read from TOML into frozen dataclasses, validated at load.

Every error names the key at fault, so that a bad ``config.toml`` stops the
server at start-up with a sentence an operator can act on.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schedule.model import Kind, Plan, Segment


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the key."""


@dataclass(frozen=True)
class Theme:
    id: str
    title_fr: str
    title_en: str

    def title(self, lang: str) -> str:
        return self.title_en if lang == "en" and self.title_en else self.title_fr


@dataclass(frozen=True)
class EventSettings:
    title: str
    timezone: str
    planned_start: datetime
    """Aware datetime in the event's time zone."""
    duration_s: int


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    secure_cookies: bool = False
    """Set the ``Secure`` flag on cookies (true behind HTTPS in production)."""
    trust_forwarded: bool = False
    """Take the client address from ``X-Forwarded-For`` (only behind a proxy you run)."""
    forwarded_hops: int = 1
    """How many proxies of yours append to ``X-Forwarded-For``: the client's address is the
    entry that many places from the right (entries further left are the client's own words)."""
    session_hours: float = 12.0
    public_url: str = ""
    """The site's address as viewers type it (``https://tv.example.org``): calendar links,
    and the origin that public writes must come from. Empty: the request's own host."""
    allowed_origins: tuple[str, ...] = ()
    """Other origins whose pages may write (ask, vote) through a visitor's browser."""
    frame_ancestors: tuple[str, ...] = ()
    """Origins that may show the public pages in a frame (staff pages: never)."""


@dataclass(frozen=True)
class RateLimit:
    count: int
    window_s: float


@dataclass(frozen=True)
class QaSettings:
    text_max: int = 500
    author_max: int = 60
    per_viewer: RateLimit = RateLimit(5, 600)
    per_ip: RateLimit = RateLimit(100, 600)
    votes_per_viewer: RateLimit = RateLimit(120, 600)
    votes_per_ip: RateLimit = RateLimit(600, 600)
    """Every vote from one address (a venue behind one NAT votes a lot, a script more)."""
    votes_per_ip_question: RateLimit = RateLimit(40, 3600)
    """Votes one address may add to one question: fresh cookies cost nothing."""
    profanity: tuple[str, ...] = ()
    """Extra words or phrases, added to the built-in French and English lists."""
    duplicate_threshold: float = 0.75


@dataclass(frozen=True)
class AuthSettings:
    login_failures: RateLimit = RateLimit(5, 900)
    """Sign-in attempts per user name and address (a success gives its attempt back)."""
    login_failures_per_user: RateLimit = RateLimit(50, 900)
    """Sign-in attempts per user name from all addresses together (many-address guessing)."""


@dataclass(frozen=True)
class VideoSettings:
    """The programme output, encoded once for every viewer."""

    width: int = 1280
    height: int = 720
    fps: int = 30
    bitrate_kbps: int = 2500
    keyframe_interval_s: float = 2.0
    audio_frame_ms: int = 60
    """Opus frame (and RTP packet) duration: 20, 40 or 60 ms."""
    serve: bool = True
    """Whether this process takes WHIP and WHEP (run.py --no-video: the others)."""
    max_viewers: int = 300
    """WHEP viewers at most in this process (0: no limit); the next ones wait."""
    viewers_per_address: int = 20
    """Public WHEP sessions one address (one IPv6 /64) may hold at once (0: no limit)."""
    whep_rate: RateLimit = RateLimit(30, 60)
    """Public WHEP offers one address (one IPv6 /64) may make per window."""


@dataclass(frozen=True)
class LoadSettings:
    """How much audience work this process takes on before it refuses more (issue 9).

    The programme comes first: audience requests wait a bounded time in a
    bounded queue, and are answered 503 ``overloaded`` with ``Retry-After`` at
    once when that queue is full or the event loop (which sends the picture)
    is late.
    """

    max_wait_s: float = 1.0
    """The longest an audience request waits for the database (connection, lock, queue)."""
    question_queue: int = 1024
    """Questions waiting to be written; over this, 503 ``overloaded``."""
    vote_queue: int = 2048
    """Votes waiting to be written; over this, 503 ``overloaded``."""
    read_concurrency: int = 3
    """Audience reads (question lists) on the database at once."""
    read_queue: int = 200
    """Audience reads waiting for one of those; over this, 503 ``overloaded``."""
    loop_lag_ms: float = 60.0
    """Event-loop lateness above which new audience work is refused."""
    client_backlog: int = 512
    """Pushes waiting for one Socket.IO client; past this it is disconnected (it reconnects)."""


@dataclass(frozen=True)
class DatabasePool:
    """The audience's connections; the programme has a small pool of its own."""

    size: int = 0
    """Connections kept open (0: 5 on SQLite, 10 on PostgreSQL)."""
    overflow: int = -1
    """Extra connections opened under load (-1: 10 on SQLite, 20 on PostgreSQL)."""


@dataclass(frozen=True)
class WebRtcSettings:
    host_addresses: tuple[str, ...] = ()
    ice_servers: tuple[dict[str, Any], ...] = ()
    connect_timeout_s: float = 15.0
    """A WHIP or WHEP session not connected this long after its offer is closed."""
    consent_timeout_s: float = 30.0
    """A connected peer that answers no ICE consent check for this long is dropped (RFC 7675)."""
    max_candidates: int = 8
    """ICE candidates taken from each media section of an offer; the rest are dropped."""


@dataclass(frozen=True)
class Feed:
    """One video source: a duplex site, or the studio camera."""

    id: str
    name_fr: str
    name_en: str
    site: str
    timezone: str

    def name(self, lang: str) -> str:
        return self.name_en if lang == "en" and self.name_en else self.name_fr


@dataclass(frozen=True)
class Settings:
    event: EventSettings
    themes: tuple[Theme, ...]
    database_url: str
    plan: Plan
    feeds: tuple[Feed, ...] = ()
    auto_start: bool = True
    rehearsal_database_url: str = ""
    rehearsal_speed: float | None = None
    """Set by ``run.py --rehearsal``: the show runs from now, this many times faster."""
    redis_url: str = ""
    redis_channel: str = "tv"
    redis_timeout_s: float = 0.5
    """How long one Redis command may take before Redis counts as unreachable."""
    redis_retry_s: float = 1.0
    """After a Redis failure, how long to do without it before trying again."""
    http: HttpSettings = HttpSettings()
    qa: QaSettings = QaSettings()
    auth: AuthSettings = AuthSettings()
    webrtc: WebRtcSettings = WebRtcSettings()
    video: VideoSettings = VideoSettings()
    load: LoadSettings = LoadSettings()
    pool: DatabasePool = DatabasePool()
    log_format: str = "json"
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)

    def theme(self, theme_id: str) -> Theme | None:
        return next((t for t in self.themes if t.id == theme_id), None)

    def feed(self, feed_id: str) -> Feed | None:
        return next((f for f in self.feeds if f.id == feed_id), None)

    def with_overrides(self, **kwargs: Any) -> Settings:
        return replace(self, **kwargs)


def load_settings(path: str | Path) -> Settings:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"configuration file {path} does not exist") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    return parse_settings(raw, base_dir=path.parent)


def parse_settings(raw: dict[str, Any], base_dir: Path) -> Settings:
    r = _Reader(raw)
    event = _event(r)
    themes = _themes(r)
    db_url = r.string("database.url", "")
    if not db_url:
        db_url = f"sqlite+aiosqlite:///{(base_dir / 'data' / 'tv.sqlite3').resolve()}"
    db_url = _normalise_db_url(db_url)
    rehearsal_url = r.string("database.rehearsal_url", "")
    if rehearsal_url:
        rehearsal_url = _normalise_db_url(rehearsal_url, "database.rehearsal_url")
    elif db_url.startswith("sqlite"):
        rehearsal_url = f"sqlite+aiosqlite:///{(base_dir / 'data' / 'rehearsal.sqlite3').resolve()}"
    feeds = _feeds(r)
    plan = _plan(r, event, themes, feeds)
    http = HttpSettings(
        host=r.string("http.host", "127.0.0.1"),
        port=r.integer("http.port", 8080, lo=1, hi=65535),
        secure_cookies=r.boolean("http.secure_cookies", False),
        trust_forwarded=r.boolean("http.trust_forwarded", False),
        forwarded_hops=r.integer("http.forwarded_hops", 1, lo=1, hi=10),
        session_hours=r.number("http.session_hours", 12.0, lo=0.1),
        public_url=_public_url(r.string("http.public_url", "")),
        allowed_origins=tuple(_origin("http.allowed_origins", o)
                              for o in r.str_list("http.allowed_origins", [])),
        frame_ancestors=tuple(_origin("http.frame_ancestors", o)
                              for o in r.str_list("http.frame_ancestors", [])),
    )
    qa = QaSettings(
        text_max=r.integer("qa.text_max", 500, lo=10, hi=10_000),
        author_max=r.integer("qa.author_max", 60, lo=1, hi=500),
        per_viewer=r.rate("qa.rate_per_viewer", RateLimit(5, 600)),
        per_ip=r.rate("qa.rate_per_ip", RateLimit(100, 600)),
        votes_per_viewer=r.rate("qa.votes_per_viewer", RateLimit(120, 600)),
        votes_per_ip=r.rate("qa.votes_per_ip", RateLimit(600, 600)),
        votes_per_ip_question=r.rate("qa.votes_per_ip_question", RateLimit(40, 3600)),
        profanity=tuple(r.str_list("qa.profanity", [])),
        duplicate_threshold=r.number("qa.duplicate_threshold", 0.75, lo=0.1, hi=1.0),
    )
    auth = AuthSettings(
        login_failures=r.rate("auth.login_failures", RateLimit(5, 900)),
        login_failures_per_user=r.rate("auth.login_failures_per_user", RateLimit(50, 900)))
    webrtc = WebRtcSettings(
        host_addresses=tuple(r.str_list("webrtc.host_addresses", [])),
        ice_servers=tuple(r.table_list("webrtc.ice_servers")),
        connect_timeout_s=r.number("webrtc.connect_timeout_s", 15.0, lo=1.0, hi=120.0),
        consent_timeout_s=r.number("webrtc.consent_timeout_s", 30.0, lo=2.0, hi=300.0),
        max_candidates=r.integer("webrtc.max_candidates", 8, lo=1, hi=64),
    )
    video = VideoSettings(
        width=r.integer("video.width", 1280, lo=160, hi=3840),
        height=r.integer("video.height", 720, lo=90, hi=2160),
        fps=r.integer("video.fps", 30, lo=1, hi=60),
        bitrate_kbps=r.integer("video.bitrate_kbps", 2500, lo=100, hi=20_000),
        keyframe_interval_s=r.number("video.keyframe_interval_s", 2.0, lo=0.2, hi=10.0),
        audio_frame_ms=r.integer("video.audio_frame_ms", 60, lo=20, hi=60),
        serve=r.boolean("video.serve", True),
        max_viewers=r.integer("video.max_viewers", 300, lo=0, hi=100_000),
        viewers_per_address=r.integer("video.viewers_per_address", 20, lo=0, hi=100_000),
        whep_rate=r.rate("video.whep_rate", RateLimit(30, 60)),
    )
    if video.audio_frame_ms not in (20, 40, 60):
        raise ConfigError("video.audio_frame_ms must be 20, 40 or 60")
    if video.width % 2 or video.height % 2:
        raise ConfigError("video.width and video.height must be even numbers")
    load = LoadSettings(
        max_wait_s=r.number("load.max_wait_s", 1.0, lo=0.05, hi=30.0),
        question_queue=r.integer("load.question_queue", 1024, lo=1, hi=1_000_000),
        vote_queue=r.integer("load.vote_queue", 2048, lo=1, hi=1_000_000),
        read_concurrency=r.integer("load.read_concurrency", 3, lo=1, hi=100),
        read_queue=r.integer("load.read_queue", 200, lo=0, hi=1_000_000),
        loop_lag_ms=r.number("load.loop_lag_ms", 60.0, lo=5.0, hi=10_000.0),
        client_backlog=r.integer("load.client_backlog", 512, lo=8, hi=100_000),
    )
    pool = DatabasePool(
        size=r.integer("database.pool_size", 0, lo=0, hi=1000),
        overflow=r.integer("database.max_overflow", -1, lo=-1, hi=1000),
    )
    log_format = r.string("logging.format", "json")
    if log_format not in ("json", "text"):
        raise ConfigError('logging.format must be "json" or "text"')
    log_level = r.string("logging.level", "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("logging.level must be one of DEBUG, INFO, WARNING, ERROR")
    return Settings(
        event=event,
        themes=themes,
        database_url=db_url,
        plan=plan,
        feeds=feeds,
        auto_start=r.boolean("programme.auto_start", True),
        rehearsal_database_url=rehearsal_url,
        redis_url=r.string("redis.url", ""),
        redis_channel=r.string("redis.channel", "tv"),
        redis_timeout_s=r.number("redis.timeout_s", 0.5, lo=0.05, hi=10.0),
        redis_retry_s=r.number("redis.retry_s", 1.0, lo=0.1, hi=60.0),
        http=http,
        qa=qa,
        auth=auth,
        webrtc=webrtc,
        video=video,
        load=load,
        pool=pool,
        log_format=log_format,
        log_level=log_level,
        extra={k: v for k, v in raw.items() if k not in _KNOWN_SECTIONS},
    )


_KNOWN_SECTIONS = {"event", "themes", "database", "redis", "http", "qa", "auth", "webrtc",
                   "logging", "programme", "segments", "feeds", "video", "load"}


def _origin(key: str, value: str) -> str:
    """``scheme://host[:port]``, lower-cased, as browsers send it in ``Origin``."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"{key}: {value!r} must be an origin like https://tv.example.org")
    default_port = {"http": 80, "https": 443}[parts.scheme]
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{key}: {value!r} has an invalid port") from e
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default_port else "")


def _public_url(value: str) -> str:
    return _origin("http.public_url", value) if value else ""


def _normalise_db_url(url: str, key: str = "database.url") -> str:
    """Accept the plain ``sqlite:///`` and ``postgresql://`` forms, use async drivers."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith(("sqlite+aiosqlite:///", "postgresql+asyncpg://")):
        return url
    raise ConfigError(f"{key} must start with sqlite:/// or postgresql://")


def _event(r: _Reader) -> EventSettings:
    tz_name = r.string("event.timezone", "Europe/Paris")
    tz = _zone("event.timezone", tz_name)
    start_raw = r.string("event.start", None)
    try:
        start = datetime.fromisoformat(start_raw)
    except ValueError as e:
        raise ConfigError(
            f"event.start: {start_raw!r} is not a date and time like 2027-05-09T14:00"
        ) from e
    start = start.replace(tzinfo=tz) if start.tzinfo is None else start.astimezone(tz)
    return EventSettings(
        title=r.string("event.title", None),
        timezone=tz_name,
        planned_start=start,
        duration_s=r.integer("event.duration_minutes", 240, lo=1, hi=24 * 60) * 60,
    )


def _themes(r: _Reader) -> tuple[Theme, ...]:
    items = r.table_list("themes")
    if not items:
        raise ConfigError("themes: at least one [[themes]] entry is required")
    themes: list[Theme] = []
    for i, item in enumerate(items):
        key = f"themes[{i}]"
        tid, fr, en = item.get("id"), item.get("title_fr"), item.get("title_en", "")
        if not isinstance(tid, str) or not tid or not tid.replace("-", "").isalnum():
            raise ConfigError(f"{key}.id must be a non-empty string of letters, digits and -")
        if not isinstance(fr, str) or not fr.strip():
            raise ConfigError(f"{key}.title_fr must be a non-empty string")
        if not isinstance(en, str):
            raise ConfigError(f"{key}.title_en must be a string")
        if any(t.id == tid for t in themes):
            raise ConfigError(f"{key}.id {tid!r} is used twice")
        themes.append(Theme(tid, fr.strip(), en.strip()))
    return tuple(themes)


_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def _new_id(item: dict[str, Any], key: str, taken: Iterable[str]) -> str:
    """The ``id`` of a feed or segment: lower-case, and not one of ``taken``."""
    value = item.get("id")
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ConfigError(f"{key}.id must be lower-case letters, digits and -")
    if value in taken:
        raise ConfigError(f"{key}.id {value!r} is used twice")
    return value


def _zone(key: str, name: Any) -> ZoneInfo:
    if not isinstance(name, str):
        raise ConfigError(f"{key} must be a time zone name such as Europe/Paris")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(f"{key}: unknown time zone {name!r}") from e


def _feeds(r: _Reader) -> tuple[Feed, ...]:
    feeds: list[Feed] = []
    for i, item in enumerate(r.table_list("feeds")):
        key = f"feeds[{i}]"
        fid = _new_id(item, key, (f.id for f in feeds))
        texts = {}
        for name in ("name_fr", "name_en", "site"):
            value = item.get(name, "")
            if not isinstance(value, str):
                raise ConfigError(f"{key}.{name} must be a string")
            texts[name] = value
        if not texts["name_fr"]:
            raise ConfigError(f"{key}.name_fr is required")
        tz = item.get("timezone", "UTC")
        _zone(f"{key}.timezone", tz)
        feeds.append(Feed(fid, texts["name_fr"], texts["name_en"], texts["site"], tz))
    return tuple(feeds)


def _plan(r: _Reader, event: EventSettings, themes: tuple[Theme, ...],
          feeds: tuple[Feed, ...]) -> Plan:
    items = r.table_list("segments")
    if not items:
        raise ConfigError("segments: the running order needs at least one [[segments]] entry")
    tz = event.planned_start.tzinfo
    assert tz is not None
    day = event.planned_start.date()
    segments: list[Segment] = []
    for i, item in enumerate(items):
        key = f"segments[{i}]"
        sid = _new_id(item, key, (seg.id for seg in segments))
        start_raw = item.get("start")
        try:
            hh, mm = str(start_raw).split(":")
            local = datetime.combine(day, time(int(hh), int(mm)), tzinfo=tz)
        except ValueError as e:
            raise ConfigError(f"{key}.start must be a time of day like \"14:30\"") from e
        start = local.astimezone(UTC)
        if segments:
            # The hour an autumn change repeats shows each time of day twice:
            # the second one is meant when the first is behind the running order.
            again = local.replace(fold=1)
            if start < segments[-1].planned_end <= again.astimezone(UTC):
                local, start = again, again.astimezone(UTC)
        while segments and start < segments[-1].planned_start:
            # Past midnight: the next day, on the wall clock of the event.
            local = datetime.combine(local.date() + timedelta(days=1), local.time(), tzinfo=tz)
            start = local.astimezone(UTC)
        minutes = item.get("minutes")
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= 600:
            raise ConfigError(f"{key}.minutes must be a whole number from 1 to 600")
        try:
            kind = Kind(str(item.get("kind")))
        except ValueError as e:
            raise ConfigError(f"{key}.kind must be studio, debate or duplex") from e
        feed = item.get("feed")
        if feed is not None and (not isinstance(feed, str) or not any(f.id == feed
                                                                       for f in feeds)):
            raise ConfigError(f"{key}.feed {feed!r} is not one of the [[feeds]] ids")
        if kind == Kind.DUPLEX and feed is None:
            raise ConfigError(f"{key}.feed is required for a duplex segment")
        theme = item.get("theme")
        if theme is not None and not any(t.id == theme for t in themes):
            raise ConfigError(f"{key}.theme {theme!r} is not one of the [[themes]] ids")
        hard = item.get("hard", False)
        if not isinstance(hard, bool):
            raise ConfigError(f"{key}.hard must be true or false")
        title_fr, title_en = item.get("title_fr"), item.get("title_en", "")
        if not isinstance(title_fr, str) or not title_fr.strip() or not isinstance(title_en, str):
            raise ConfigError(f"{key}.title_fr is required (and title_en must be a string)")
        if segments:
            prev_end = segments[-1].planned_end
            if start < prev_end:
                raise ConfigError(f"{key}.start overlaps the previous segment, which ends at "
                                  f"{prev_end.astimezone(tz):%H:%M}")
            if start > prev_end and not hard:
                raise ConfigError(f"{key}.start leaves a gap after the previous segment "
                                  f"(ends {prev_end.astimezone(tz):%H:%M}); soft segments "
                                  "follow each other")
        segments.append(Segment(sid, title_fr.strip(), title_en.strip(), kind, feed, theme,
                                start, minutes * 60, hard))
    return Plan(tuple(segments))


class _Reader:
    """Typed access to dotted keys, raising ConfigError that names the key."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def _get(self, key: str) -> Any:
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node

    def _required(self, key: str, default: Any) -> Any:
        value = self._get(key)
        if value is _MISSING:
            if default is None:
                raise ConfigError(f"{key} is required")
            return default
        return value

    def string(self, key: str, default: str | None) -> str:
        value = self._required(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._required(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false")
        return value

    def integer(self, key: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
        value = self._required(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be a whole number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{key} must be between {lo} and {hi}")
        return value

    def number(self, key: str, default: float, lo: float | None = None,
              hi: float | None = None) -> float:
        value = self._required(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{key} must be between {lo} and {hi}")
        return float(value)

    def str_list(self, key: str, default: list[str]) -> list[str]:
        value = self._required(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings")
        return list(value)

    def table_list(self, key: str) -> list[dict[str, Any]]:
        value = self._get(key)
        if value is _MISSING:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{key} must be a list of tables")
        return list(value)

    def rate(self, key: str, default: RateLimit) -> RateLimit:
        value = self._get(key)
        if value is _MISSING:
            return default
        if (not isinstance(value, dict) or not isinstance(value.get("count"), int)
                or not isinstance(value.get("window_s"), int | float)
                or value["count"] < 1 or value["window_s"] <= 0):
            raise ConfigError(f"{key} must be a table {{count = N, window_s = S}} with N >= 1")
        return RateLimit(int(value["count"]), float(value["window_s"]))


_MISSING = object()
