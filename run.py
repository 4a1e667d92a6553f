"""Command line: run the server, add a staff account, print a feed's token."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import sys
from dataclasses import replace
from pathlib import Path

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from server import db
from server.app import create_app
from server.auth import AccountError, AuthService, Role
from server.clock import SystemClock
from server.logs import configure
from server.ratelimit import MemoryRateLimiter
from server.settings import ConfigError, Settings, load_settings
from tv.store import FeedTokenStore

log = logging.getLogger("tv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run.py", description=(
        "Live web-TV event server: duplex feeds, programme, audience questions."))
    parser.add_argument("--config", default="config.toml", help="configuration file")
    parser.add_argument("--host", help="address to listen on (overrides [http] host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides [http] port)")
    parser.add_argument("--rehearsal", action="store_true",
                        help="run the running order from now, apart from the real show's data")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="with --rehearsal: how many times faster than real time")
    parser.add_argument("--no-video", action="store_true",
                        help="leave WHIP and WHEP to another process of the same show "
                             "(several processes: one video process, the others with this)")
    sub = parser.add_subparsers(dest="command")
    add = sub.add_parser("adduser", help="create a staff account (or reset its password)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--password-file", type=Path,
                     help="read the password from this file's first line instead of asking")
    # "run.py adduser NAME ... --config F" works as well as "run.py --config F adduser ...";
    # SUPPRESS keeps the main parser's value when the option is not repeated here.
    add.add_argument("--config", default=argparse.SUPPRESS, help="configuration file")
    tok = sub.add_parser("feed-token", help="print a feed's bearer token (made on first use)")
    tok.add_argument("feed", help="the feed id, as in [[feeds]] (e.g. afrique, studio)")
    tok.add_argument("--rotate", action="store_true",
                     help="replace the token; the live session that used the old one ends")
    tok.add_argument("--config", default=argparse.SUPPRESS, help="configuration file")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    configure(settings.log_format, settings.log_level)
    if args.command == "adduser":
        return _adduser(settings, args.name, Role(args.role), args.password_file)
    if args.command == "feed-token":
        return _feed_token(settings, args.feed, args.rotate)

    if args.rehearsal:
        if not settings.rehearsal_database_url:
            print("configuration error: database.rehearsal_url is required for a rehearsal "
                  "with PostgreSQL, to keep its data apart from the real show's",
                  file=sys.stderr)
            return 2
        if not 0 < args.speed <= 10_000:
            print("--speed must be between 0 and 10000", file=sys.stderr)
            return 2
        settings = settings.with_overrides(database_url=settings.rehearsal_database_url,
                                           rehearsal_speed=args.speed)
        log.info("rehearsal: the running order starts now", extra={"speed": args.speed})
    elif args.speed != 1.0:
        print("--speed only applies with --rehearsal", file=sys.stderr)
        return 2
    if args.no_video:
        settings = settings.with_overrides(video=replace(settings.video, serve=False))
    host = args.host or settings.http.host
    port = args.port or settings.http.port
    log.info("starting the server", extra={"host": host, "port": port,
                                           "database": settings.database_url.split("@")[-1],
                                           "redis": bool(settings.redis_url),
                                           "video": settings.video.serve})
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)
    try:
        web.run_app(app, host=host, port=port, print=None, access_log=None,
                    shutdown_timeout=5)
    except (SQLAlchemyError, OSError) as e:
        # A read-only or missing database, a refused PostgreSQL, a port in
        # use: one line that says what, not a traceback.
        return _cannot_start(e)
    return 0


def _cannot_start(error: BaseException) -> int:
    reason = str(getattr(error, "orig", None) or error).splitlines()[0][:300]
    what = "the database cannot be used" if isinstance(error, SQLAlchemyError) \
        else "the server cannot start"
    log.critical(f"{what}: {reason}", extra={"error": type(error).__name__})
    return 3


async def _freeze_startup_objects(_app: web.Application) -> None:
    """Keep what start-up made (modules, metadata, templates) out of the collector.

    They live as long as the process; a full collection walking them again
    and again only lengthens the pauses a live audience notices.
    """
    gc.collect()
    gc.freeze()
    # With thousands of open sockets a full collection walks ~330,000 objects
    # (250 ms, a pause every viewer and moderator notices). Under load the
    # default young-generation size (700) promotes every in-flight request's
    # objects, which soon triggers one; a larger young generation lets them die
    # young. Measured with tests/benchmarks/bench_questions.py (2,000 viewers):
    # p99 POST-to-moderator delay 290 ms -> 56 ms, 870 -> 1,200 questions/s.
    gc.set_threshold(50_000, 20, 10)


def _read_password(password_file: Path | None) -> str:
    if password_file is not None:
        return password_file.read_text("utf-8").splitlines()[0] if password_file.stat().st_size \
            else ""
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password again: "):
        raise AccountError("the two passwords differ")
    return first


def _adduser(settings: Settings, name: str, role: Role, password_file: Path | None) -> int:
    try:
        password = _read_password(password_file)
    except (OSError, AccountError) as e:
        print(f"cannot read the password: {e}", file=sys.stderr)
        return 2

    async def go() -> bool:
        # Disposed of here, in the running loop: returning from inside
        # ``async for engine in db.engine_context(...)`` left that to the
        # generator's finaliser, which printed a traceback on PostgreSQL.
        engine = db.make_engine(settings.database_url)
        try:
            await db.migrate(engine)
            clock = SystemClock()
            auth = AuthService(engine, clock, MemoryRateLimiter(clock), 1,
                               settings.auth.login_failures)
            return await auth.add_user(name, password, role)
        finally:
            await engine.dispose()

    try:
        created = asyncio.run(go())
    except AccountError as e:
        print(f"cannot add {name}: {e}", file=sys.stderr)
        return 2
    except (SQLAlchemyError, OSError) as e:
        return _cannot_start(e)
    print(f"{'created' if created else 'updated'} {role.value} account {name!r}")
    return 0


def _feed_token(settings: Settings, feed: str, rotate: bool) -> int:
    if settings.feed(feed) is None:
        known = ", ".join(f.id for f in settings.feeds) or "none configured"
        print(f"unknown feed {feed!r}; the feeds are: {known}", file=sys.stderr)
        return 2

    async def go() -> str:
        engine = db.make_engine(settings.database_url)
        try:
            await db.migrate(engine)
            tokens = FeedTokenStore(engine, SystemClock())
            return await (tokens.rotate(feed) if rotate else tokens.get_or_create(feed))
        finally:
            await engine.dispose()

    try:
        token = asyncio.run(go())
    except (SQLAlchemyError, OSError) as e:
        return _cannot_start(e)
    if rotate:
        # The running server notices within seconds and ends the session
        # that was published with the old token.
        print(f"new token for {feed}; the old one no longer works", file=sys.stderr)
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
